//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! What is tracked, like the real server's structured-merge-diff but
//! simpler:
//!
//! * every field outside `apiVersion`, `kind`, `metadata` and `status`
//!   (for the main resource), or inside `status` (for the `status`
//!   subresource); in `metadata` only `labels` and `annotations` (one field
//!   per key) and `finalizers` and `ownerReferences` (atomic);
//! * maps are owned leaf by leaf (an empty map is a leaf);
//! * a list whose items are all maps with a distinct string `name`
//!   (containers, ports, env, volumes...) is keyed by `name`: each item is
//!   owned (`k:{"name":"web"}` with `.`) and so is each field in it; every
//!   other list is atomic (one leaf), whatever the real schema says.
//!
//! An apply sets the fields of the applied configuration, removes the fields
//! the manager applied before but no longer applies (unless another manager
//! owns them), and conflicts when a field it sets is owned by another
//! manager with a different value (unless forced: then ownership moves).
//! Other writes (create, update, patch) make their manager (operation
//! `Update`) own the fields they changed, taking them from other managers.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    /// A map key (`f:name`).
    Field(String),
    /// A list item by its `name` (`k:{"name":"web"}`).
    Key(String),
}

/// A field path from the object's root.
pub(crate) type Path = Vec<Seg>;

/// A set of owned fields.
pub(crate) type FieldSet = BTreeSet<Path>;

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Everything but `status`.
    Main,
    /// The `status` subresource.
    Status,
}

impl Part {
    fn subresource(self) -> Option<&'static str> {
        match self {
            Part::Main => None,
            Part::Status => Some("status"),
        }
    }
}

/// The tracked fields of an object.
pub(crate) fn fields(object: &Value, part: Part) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    for (key, value) in map {
        let path = vec![Seg::Field(key.clone())];
        match (part, key.as_str()) {
            (Part::Main, "apiVersion" | "kind" | "status") => {}
            (Part::Main, "metadata") => {
                for (field, value) in value.as_object().into_iter().flatten() {
                    let mut path = path.clone();
                    path.push(Seg::Field(field.clone()));
                    match field.as_str() {
                        "labels" | "annotations" => collect(value, path, &mut out),
                        "finalizers" | "ownerReferences" if !value.is_null() => {
                            out.insert(path);
                        }
                        _ => {}
                    }
                }
            }
            (Part::Main, _) | (Part::Status, "status") => collect(value, path, &mut out),
            (Part::Status, _) => {}
        }
    }
    out
}

fn collect(value: &Value, path: Path, out: &mut FieldSet) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let mut path = path.clone();
                path.push(Seg::Field(key.clone()));
                collect(value, path, out);
            }
        }
        Value::Array(items) if keyed(items) => {
            for item in items {
                let (Some(name), Some(map)) = (item_name(item), item.as_object()) else {
                    continue;
                };
                let mut item_path = path.clone();
                item_path.push(Seg::Key(name.to_owned()));
                out.insert(item_path.clone());
                for (key, value) in map {
                    let mut path = item_path.clone();
                    path.push(Seg::Field(key.clone()));
                    collect(value, path, out);
                }
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

fn item_name(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// Whether a list is keyed by `name`: non-empty, every item a map with a
/// distinct string `name`.
fn keyed(items: &[Value]) -> bool {
    let mut names = BTreeSet::new();
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.is_object() && item_name(i).is_some_and(|n| names.insert(n)))
}

/// The value at a path.
pub(crate) fn get<'a>(value: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut current = value;
    for seg in path {
        current = match seg {
            Seg::Field(f) => current.get(f)?,
            Seg::Key(k) => current
                .as_array()?
                .iter()
                .find(|i| item_name(i) == Some(k))?,
        };
    }
    Some(current)
}

/// Sets the value at a path, making the maps and list items on the way. A
/// path ending in a list item only makes sure the item exists.
fn set(target: &mut Value, path: &[Seg], new: &Value) {
    let Some((first, rest)) = path.split_first() else {
        *target = new.clone();
        return;
    };
    match first {
        Seg::Field(f) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(map) = target.as_object_mut() {
                let child = map.entry(f.clone()).or_insert(Value::Null);
                set(child, rest, new);
            }
        }
        Seg::Key(k) => {
            if !target.is_array() {
                *target = json!([]);
            }
            if let Some(items) = target.as_array_mut() {
                let index = match items.iter().position(|i| item_name(i) == Some(k)) {
                    Some(index) => index,
                    None => {
                        items.push(json!({"name": k}));
                        items.len() - 1
                    }
                };
                if !rest.is_empty() {
                    set(&mut items[index], rest, new);
                }
            }
        }
    }
}

fn empty_container(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Removes the field at a path; maps and lists it leaves empty go too.
fn remove(target: &mut Value, path: &[Seg]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match first {
        Seg::Field(f) => {
            let Some(map) = target.as_object_mut() else {
                return false;
            };
            if rest.is_empty() {
                return map.remove(f).is_some();
            }
            let Some(child) = map.get_mut(f) else {
                return false;
            };
            let removed = remove(child, rest);
            if removed && empty_container(child) {
                map.remove(f);
            }
            removed
        }
        Seg::Key(k) => {
            let Some(items) = target.as_array_mut() else {
                return false;
            };
            let Some(index) = items.iter().position(|i| item_name(i) == Some(k)) else {
                return false;
            };
            if rest.is_empty() {
                items.remove(index);
                return true;
            }
            let removed = remove(&mut items[index], rest);
            if removed && empty_container(&items[index]) {
                items.remove(index);
            }
            removed
        }
    }
}

/// A path as the real server prints it: `.spec.replicas`,
/// `.spec.template.spec.containers[name="web"].image`.
pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Seg::Key(k) => out.push_str(&format!("[name=\"{k}\"]")),
        }
    }
    out
}

/// `fieldsV1` of a field set.
fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        insert_path(&mut root, path);
    }
    Value::Object(root)
}

fn insert_path(node: &mut Map<String, Value>, path: &[Seg]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let key = match first {
        Seg::Field(f) => format!("f:{f}"),
        Seg::Key(k) => format!("k:{}", json!({"name": k})),
    };
    let child = node.entry(key).or_insert_with(|| json!({}));
    if !child.is_object() {
        *child = json!({});
    }
    if let Some(map) = child.as_object_mut() {
        if !rest.is_empty() {
            insert_path(map, rest);
        } else if matches!(first, Seg::Key(_)) {
            map.insert(".".to_owned(), json!({}));
        }
    }
}

/// The field set of a `fieldsV1` (unknown key kinds are skipped).
fn from_fields_v1(value: &Value, path: &Path, out: &mut FieldSet) {
    let Some(map) = value.as_object() else {
        return;
    };
    for (key, child) in map {
        let seg = if key == "." {
            out.insert(path.clone());
            continue;
        } else if let Some(f) = key.strip_prefix("f:") {
            Seg::Field(f.to_owned())
        } else if let Some(k) = key.strip_prefix("k:") {
            let parsed: Option<Value> = serde_json::from_str(k).ok();
            match parsed.as_ref().and_then(item_name) {
                Some(name) => Seg::Key(name.to_owned()),
                None => continue,
            }
        } else {
            continue;
        };
        let mut child_path = path.clone();
        child_path.push(seg);
        if child.as_object().is_some_and(Map::is_empty) {
            out.insert(child_path);
        } else {
            from_fields_v1(child, &child_path, out);
        }
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Value,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, part: Part) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == part.subresource()
    }

    fn in_part(&self, part: Part) -> bool {
        self.subresource.as_deref() == part.subresource()
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.fields),
        });
        if let (Some(sub), Some(map)) = (&self.subresource, entry.as_object_mut()) {
            map.insert("subresource".to_owned(), json!(sub));
        }
        entry
    }
}

fn entries(object: Option<&Value>) -> Vec<Entry> {
    let Some(list) = object
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let text = |f: &str| e.get(f).and_then(Value::as_str).map(str::to_owned);
            let mut fields = FieldSet::new();
            from_fields_v1(e.get("fieldsV1")?, &Vec::new(), &mut fields);
            Some(Entry {
                manager: text("manager")?,
                operation: text("operation").unwrap_or_else(|| "Update".to_owned()),
                api_version: text("apiVersion").unwrap_or_default(),
                time: e.get("time").cloned().unwrap_or(Value::Null),
                subresource: text("subresource"),
                fields,
            })
        })
        .collect()
}

fn store_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".to_owned(), Value::Array(list));
        }
    }
}

/// Removes `metadata.managedFields` (clients do not set it here).
pub(crate) fn strip(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

/// The object without its `managedFields`, for comparisons.
fn without_entries(object: &Value) -> Value {
    let mut object = object.clone();
    strip(&mut object);
    object
}

/// A field another manager owns with a different value than applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Conflict {
    /// The owning manager.
    pub(crate) manager: String,
    /// The API version it wrote with.
    pub(crate) api_version: String,
    /// The field.
    pub(crate) path: Path,
}

/// What an apply is.
pub(crate) struct Apply<'a> {
    /// The field manager.
    pub(crate) manager: &'a str,
    /// `apiVersion` the configuration was written in.
    pub(crate) api_version: &'a str,
    /// Main resource or status.
    pub(crate) part: Part,
    /// Take ownership of conflicting fields.
    pub(crate) force: bool,
    /// The time to record.
    pub(crate) now: &'a Value,
}

/// Server-side apply of `config` onto `live` (`None`: the object is new).
/// Returns the new object with its `managedFields`, or the conflicts.
pub(crate) fn apply(
    live: Option<&Value>,
    config: &Value,
    how: &Apply<'_>,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = entries(live);
    let applied = fields(config, how.part);
    let mut conflicts = Vec::new();
    if let Some(live) = live {
        for entry in entries
            .iter()
            .filter(|e| e.in_part(how.part) && e.manager != how.manager)
        {
            for path in entry.fields.intersection(&applied) {
                if matches!(path.last(), Some(Seg::Key(_))) {
                    continue;
                }
                let current = get(live, path);
                if current.is_some() && current != get(config, path) {
                    conflicts.push(Conflict {
                        manager: entry.manager.clone(),
                        api_version: entry.api_version.clone(),
                        path: path.clone(),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        if !how.force {
            return Err(conflicts);
        }
        for conflict in &conflicts {
            for entry in entries.iter_mut().filter(|e| e.manager == conflict.manager) {
                entry.fields.remove(&conflict.path);
            }
        }
    }
    let base = match live {
        Some(live) => live.clone(),
        None => json!({"metadata": {}}),
    };
    let mut new = base.clone();
    let position = entries
        .iter()
        .position(|e| e.is(how.manager, "Apply", how.part));
    let before = position
        .map(|i| entries[i].fields.clone())
        .unwrap_or_default();
    // Fields no longer applied go, children before their parents, unless
    // someone else owns them (or, for a list item, anything in it).
    let dropped: Vec<&Path> = before.difference(&applied).collect();
    for path in dropped.into_iter().rev() {
        let shared = entries.iter().enumerate().any(|(i, e)| {
            Some(i) != position
                && e.in_part(how.part)
                && e.fields.iter().any(|p| p.starts_with(path))
        });
        if !shared {
            remove(&mut new, path);
        }
    }
    for path in &applied {
        match get(config, path) {
            Some(value) if !matches!(path.last(), Some(Seg::Key(_))) => set(&mut new, path, value),
            _ => set(&mut new, path, &Value::Null),
        }
    }
    let changed = without_entries(&new) != without_entries(&base) || before != applied;
    match position {
        Some(i) => {
            if changed {
                entries[i].time = how.now.clone();
                entries[i].api_version = how.api_version.to_owned();
            }
            entries[i].fields = applied;
        }
        None => entries.push(Entry {
            manager: how.manager.to_owned(),
            operation: "Apply".to_owned(),
            api_version: how.api_version.to_owned(),
            time: how.now.clone(),
            subresource: how.part.subresource().map(str::to_owned),
            fields: applied,
        }),
    }
    forget_missing(&mut entries, &new, how.part);
    store_entries(&mut new, entries);
    Ok(new)
}

/// Drops owned fields the object no longer has.
fn forget_missing(entries: &mut [Entry], object: &Value, part: Part) {
    for entry in entries.iter_mut().filter(|e| e.in_part(part)) {
        entry.fields.retain(|p| get(object, p).is_some());
    }
}

/// Records a non-apply write by `manager` (operation `Update`): it owns the
/// fields it changed from `live` to `new`, which other managers lose.
/// `new`'s own `managedFields` are ignored.
pub(crate) fn update(
    live: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    part: Part,
    now: &Value,
) {
    let mut entries = entries(live);
    let changed: FieldSet = fields(new, part)
        .into_iter()
        .filter(|p| live.and_then(|l| get(l, p)) != get(new, p))
        .collect();
    for entry in entries.iter_mut().filter(|e| e.in_part(part)) {
        entry.fields.retain(|p| !changed.contains(p));
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| e.is(manager, "Update", part)) {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now.clone();
                api_version.clone_into(&mut entry.api_version);
            }
            None => entries.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".to_owned(),
                api_version: api_version.to_owned(),
                time: now.clone(),
                subresource: part.subresource().map(str::to_owned),
                fields: changed,
            }),
        }
    }
    forget_missing(&mut entries, new, part);
    store_entries(new, entries);
}

/// The owners of a field (manager and operation).
#[cfg(test)]
pub(crate) fn owners(object: &Value, path: &[Seg]) -> Vec<(String, String)> {
    entries(Some(object))
        .into_iter()
        .filter(|e| e.fields.iter().any(|p| p == path))
        .map(|e| (e.manager, e.operation))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str) -> Path {
        path.split('.').map(|s| Seg::Field(s.to_owned())).collect()
    }

    fn how<'a>(manager: &'a str, force: bool, now: &'a Value) -> Apply<'a> {
        Apply {
            manager,
            api_version: "apps/v1",
            part: Part::Main,
            force,
            now,
        }
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let object = json!({
            "metadata": {"name": "x", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx", "args": ["a"]}
            ]}}},
            "status": {"replicas": 2}
        });
        let set = fields(&object, Part::Main);
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {}}
                }}}}
            })
        );
        let mut back = FieldSet::new();
        from_fields_v1(&v1, &Vec::new(), &mut back);
        assert_eq!(back, set);
        assert!(set.contains(&f("spec.replicas")));
        assert!(
            !set.iter()
                .any(|p| p.first() == Some(&Seg::Field("status".into())))
        );
    }

    #[test]
    fn apply_sets_removes_and_conflicts() {
        let now = json!("2025-01-01T00:00:00Z");
        let config =
            json!({"spec": {"replicas": 2, "paused": false}, "metadata": {"labels": {"a": "1"}}});
        let first = apply(None, &config, &how("fed", false, &now)).expect("create");
        assert_eq!(first["spec"]["replicas"], 2);
        assert_eq!(first["metadata"]["managedFields"][0]["manager"], "fed");
        assert_eq!(first["metadata"]["managedFields"][0]["operation"], "Apply");
        // Identical: same object.
        assert_eq!(
            apply(Some(&first), &config, &how("fed", false, &now)).expect("same"),
            first
        );
        // Another manager changes replicas: it now owns it.
        let mut edited = first.clone();
        edited["spec"]["replicas"] = json!(5);
        update(
            Some(&first),
            &mut edited,
            "kubectl",
            "apps/v1",
            Part::Main,
            &now,
        );
        assert_eq!(
            owners(&edited, &f("spec.replicas")),
            [("kubectl".to_owned(), "Update".to_owned())]
        );
        let conflicts =
            apply(Some(&edited), &config, &how("fed", false, &now)).expect_err("conflict");
        assert_eq!(conflicts.len(), 1);
        assert_eq!(path_string(&conflicts[0].path), ".spec.replicas");
        assert_eq!(conflicts[0].manager, "kubectl");
        // Same value: shared, no conflict.
        let mut same = config.clone();
        same["spec"]["replicas"] = json!(5);
        let shared = apply(Some(&edited), &same, &how("fed", false, &now)).expect("shared");
        assert_eq!(owners(&shared, &f("spec.replicas")).len(), 2);
        // Forced: ownership moves.
        let forced = apply(Some(&edited), &config, &how("fed", true, &now)).expect("forced");
        assert_eq!(forced["spec"]["replicas"], 2);
        assert_eq!(
            owners(&forced, &f("spec.replicas")),
            [("fed".to_owned(), "Apply".to_owned())]
        );
        // A field dropped from the config goes; the emptied labels map too.
        let smaller = json!({"spec": {"replicas": 2}});
        let after = apply(Some(&forced), &smaller, &how("fed", false, &now)).expect("smaller");
        assert!(after["spec"].get("paused").is_none());
        assert!(after["metadata"].get("labels").is_none());
    }
}
