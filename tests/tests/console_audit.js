// The console's accessibility audit, run in the page by e2e_console.rs
// (WebDriver "execute script"): the WCAG 2.1 AA checks a page can make of
// itself. Returns a list of problems, each naming the element; [] is a pass.
//   contrast  every visible text (HTML and SVG) against the background it is
//             drawn on: 4.5:1, or 3:1 for large text (1.4.3)
//   names     every link, button, form control and picture has a name a
//             screen reader can say (1.1.1, 4.1.2); the page has a language,
//             a title and one h1 (3.1.1, 2.4.2); tables have header cells
//   keyboard  every control can take the keyboard focus (2.1.1), nothing is
//             clickable without being a control, and focus draws an outline
//             (2.4.7)
//   screen    at the window's size (a laptop's 1366x768 in the test) the page
//             needs no sideways scrolling (1.4.10)
const problems = [];
const describe = (e) =>
  e.id ? `#${e.id}` : e.outerHTML.slice(0, 80).replace(/\s+/g, " ");
const visible = (e) => {
  if (e.closest("[hidden]")) return false;
  const style = getComputedStyle(e);
  return style.visibility !== "hidden" && style.display !== "none" && e.getClientRects().length > 0;
};

// --- contrast ---
const parseColor = (text) => {
  const m = /rgba?\(([^)]+)\)/.exec(text || "");
  if (!m) return null;
  const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
  return { rgb: p.slice(0, 3), a: p.length > 3 ? p[3] : 1 };
};
// The colour drawn behind `e`: its ancestors' backgrounds blended down to
// the page's white canvas.
const backgroundOf = (e) => {
  const layers = [];
  for (let n = e; n && n.nodeType === 1; n = n.parentElement) {
    const c = parseColor(getComputedStyle(n).backgroundColor);
    if (c && c.a > 0) {
      layers.push(c);
      if (c.a >= 1) break;
    }
  }
  let rgb = [255, 255, 255];
  for (const c of layers.reverse()) {
    rgb = rgb.map((v, i) => c.rgb[i] * c.a + v * (1 - c.a));
  }
  return rgb;
};
const luminance = (rgb) => {
  const [r, g, b] = rgb.map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4);
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const ratio = (a, b) => {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
};
for (const e of document.querySelectorAll("body *")) {
  const text = [...e.childNodes]
    .filter((n) => n.nodeType === 3)
    .map((n) => n.textContent)
    .join("")
    .trim();
  if (!text || !visible(e)) continue;
  const style = getComputedStyle(e);
  const isSvg = e instanceof SVGElement;
  const fg = parseColor(isSvg ? style.fill : style.color);
  if (!fg) {
    problems.push(`contrast: ${describe(e)} has a colour the audit cannot read (${isSvg ? style.fill : style.color})`);
    continue;
  }
  const bg = backgroundOf(isSvg ? e.ownerSVGElement || e : e);
  const size = parseFloat(style.fontSize);
  const bold = Number(style.fontWeight) >= 700;
  const large = size >= 24 || (bold && size >= 18.66);
  const need = large ? 3 : 4.5;
  const got = ratio(fg.rgb, bg);
  if (got < need) {
    problems.push(`contrast: ${describe(e)} ${got.toFixed(2)}:1, needs ${need}:1 ("${text.slice(0, 30)}")`);
  }
}

// --- names ---
const nameOf = (e) =>
  (e.getAttribute("aria-label") ||
    (e.getAttribute("aria-labelledby") || "")
      .split(/\s+/)
      .map((id) => document.getElementById(id)?.textContent || "")
      .join(" ") ||
    (e.labels && [...e.labels].map((l) => l.textContent).join(" ")) ||
    e.getAttribute("title") ||
    (e.tagName === "INPUT" && ["submit", "button"].includes(e.type) ? e.value : "") ||
    e.querySelector?.("title")?.textContent ||
    (e.tagName === "IMG" ? e.getAttribute("alt") : "") ||
    (["A", "BUTTON", "SUMMARY"].includes(e.tagName) ? e.textContent : "") ||
    "").trim();
// Live regions (role=status, alert) need no name; pictures and widgets do.
const named = "a[href], button, input, select, textarea, output, img, svg, " +
  ["img", "button", "link", "slider", "checkbox", "radio", "tab", "menuitem", "switch"]
    .map((r) => `[role=${r}]`).join(", ");
for (const e of document.querySelectorAll(named)) {
  if (!visible(e) || e.closest("[aria-hidden=true]") || e.closest("svg") !== e && e.closest("svg")) continue;
  if (e.tagName.toLowerCase() === "svg" && e.getAttribute("role") !== "img") {
    problems.push(`names: ${describe(e)} is a picture without role="img"`);
  }
  if (!nameOf(e)) problems.push(`names: ${describe(e)} has no accessible name`);
}
if (!document.documentElement.lang) problems.push("names: the page has no lang");
if (!document.title.trim()) problems.push("names: the page has no title");
const h1s = [...document.querySelectorAll("h1")].filter(visible).length;
if (h1s !== 1) problems.push(`names: ${h1s} visible h1 headings, not one`);
for (const t of document.querySelectorAll("table")) {
  if (visible(t) && t.rows.length > 0 && !t.querySelector("th")) {
    problems.push(`names: ${describe(t)} has no header cells`);
  }
}

// --- keyboard ---
const controls = "a[href], button, input, select, textarea, summary";
for (const e of document.querySelectorAll(controls)) {
  if (visible(e) && !e.disabled && e.tabIndex < 0) {
    problems.push(`keyboard: ${describe(e)} cannot take the focus`);
  }
}
for (const e of document.querySelectorAll("body *")) {
  if (!visible(e) || e.matches(controls) || e.closest(controls) || e.matches("label, label *")) continue;
  const clickable = e.hasAttribute("onclick") || getComputedStyle(e).cursor === "pointer";
  if (clickable && !(e.getAttribute("role") && e.tabIndex >= 0)) {
    problems.push(`keyboard: ${describe(e)} looks clickable but is no control`);
  }
}
const before = document.activeElement;
for (const e of document.querySelectorAll(controls)) {
  if (!visible(e) || e.disabled) continue;
  e.focus();
  const style = getComputedStyle(e);
  const ring = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
  if (document.activeElement === e && !ring && style.boxShadow === "none") {
    problems.push(`keyboard: ${describe(e)} draws no focus outline`);
  }
}
if (before && before.focus) before.focus();

// --- screen ---
const root = document.documentElement;
const overflow = root.scrollWidth - root.clientWidth;
if (overflow > 0) {
  problems.push(`screen: the page is ${overflow}px wider than the ${root.clientWidth}px window`);
}
return problems;
