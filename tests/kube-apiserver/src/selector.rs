//! Label and field selectors as kube-apiserver parses them from the
//! `labelSelector` and `fieldSelector` query parameters, and matching them
//! against stored objects (JSON).
//!
//! Label selectors: equality (`a=b`, `a==b`, `a!=b`), sets (`a in (x,y)`,
//! `a notin (x,y)`) and existence (`a`, `!a`), comma-separated, all of which
//! must hold. Field selectors: `metadata.name` and `metadata.namespace` with
//! `=`, `==` or `!=`; any other field is refused as the real server refuses a
//! field label it does not index.

use std::collections::BTreeSet;

use serde_json::Value;

/// A selector that could not be parsed; the message is the one sent to the
/// client in a `400 Bad Request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the label is absent).
    NotEquals(String, String),
    /// `key in (v1,v2)`.
    In(String, BTreeSet<String>),
    /// `key notin (v1,v2)` (also true when the label is absent).
    NotIn(String, BTreeSet<String>),
    /// `key`: the label exists.
    Exists(String),
    /// `!key`: the label does not exist.
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    /// True when the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, in the order given.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether an object (its `metadata.labels`) satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|req| match req {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    let invalid =
        |why: &str| SelectorError(format!("unable to parse requirement: {why}: {part:?}"));
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_key(key).map_err(|e| invalid(&e))?;
        return Ok(Requirement::DoesNotExist(key.to_owned()));
    }
    if let Some((key, value)) = part.split_once("!=") {
        let (key, value) = (key.trim(), value.trim());
        check_key(key).map_err(|e| invalid(&e))?;
        check_value(value).map_err(|e| invalid(&e))?;
        return Ok(Requirement::NotEquals(key.to_owned(), value.to_owned()));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        let (key, value) = (key.trim(), value.trim());
        check_key(key).map_err(|e| invalid(&e))?;
        check_value(value).map_err(|e| invalid(&e))?;
        return Ok(Requirement::Equals(key.to_owned(), value.to_owned()));
    }
    if let Some(open) = part.find('(') {
        let head = part[..open].trim();
        let Some(body) = part[open + 1..].trim_end().strip_suffix(')') else {
            return Err(invalid("found '(', expected ')'"));
        };
        let (key, negated) = if let Some(key) = head.strip_suffix(" notin") {
            (key.trim(), true)
        } else if let Some(key) = head.strip_suffix(" in") {
            (key.trim(), false)
        } else {
            return Err(invalid("expected 'in' or 'notin' before '('"));
        };
        check_key(key).map_err(|e| invalid(&e))?;
        let mut values = BTreeSet::new();
        for value in body.split(',') {
            let value = value.trim();
            check_value(value).map_err(|e| invalid(&e))?;
            values.insert(value.to_owned());
        }
        if values.is_empty() {
            return Err(invalid(
                "for 'in', 'notin' operators, values set can't be empty",
            ));
        }
        return Ok(if negated {
            Requirement::NotIn(key.to_owned(), values)
        } else {
            Requirement::In(key.to_owned(), values)
        });
    }
    if part.contains(['<', '>']) {
        return Err(invalid(
            "numeric comparisons are not supported by this test server",
        ));
    }
    check_key(part).map_err(|e| invalid(&e))?;
    Ok(Requirement::Exists(part.to_owned()))
}

/// A label key: optional DNS prefix and `/`, then a name of up to 63
/// characters of alphanumerics, `-`, `_`, `.`, starting and ending with an
/// alphanumeric.
fn check_key(key: &str) -> Result<(), String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty()
                || prefix.len() > 253
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                return Err(format!("invalid label key prefix {prefix:?}"));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || name.len() > 63 || !is_label_text(name) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(())
}

/// A label value: empty, or like a key name.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_text(value)) {
        Ok(())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

fn is_label_text(text: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    text.chars()
        .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && text.chars().next().is_some_and(alnum)
        && text.chars().last().is_some_and(alnum)
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldRequirement {
    Equals(Field, String),
    NotEquals(Field, String),
}

/// The fields a field selector may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

impl Field {
    fn of(self, object: &Value) -> &str {
        let pointer = match self {
            Field::Name => "/metadata/name",
            Field::Namespace => "/metadata/namespace",
        };
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, false)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => return Err(SelectorError(format!("field label not supported: {other}"))),
            };
            let value = value.trim().to_owned();
            requirements.push(if negated {
                FieldRequirement::NotEquals(field, value)
            } else {
                FieldRequirement::Equals(field, value)
            });
        }
        Ok(Self { requirements })
    }

    /// True when the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|req| match req {
            FieldRequirement::Equals(f, v) => f.of(object) == v,
            FieldRequirement::NotEquals(f, v) => f.of(object) != v,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "prod", "labels": labels}})
    }

    #[test]
    fn equality_and_existence() {
        let sel = LabelSelector::parse("app=web,tier!=db,env,!canary").expect("parses");
        assert_eq!(sel.requirements().len(), 4);
        assert!(sel.matches(&obj(json!({"app": "web", "env": "p"}))));
        assert!(!sel.matches(&obj(json!({"app": "web"}))));
        assert!(!sel.matches(&obj(json!({"app": "web", "env": "p", "canary": "1"}))));
        assert!(!sel.matches(&obj(json!({"app": "web", "env": "p", "tier": "db"}))));
        assert!(
            LabelSelector::parse("app==web")
                .expect("parses")
                .matches(&obj(json!({"app": "web"})))
        );
    }

    #[test]
    fn sets() {
        let sel = LabelSelector::parse("app in (web, api),zone notin (a)").expect("parses");
        assert!(sel.matches(&obj(json!({"app": "api"}))));
        assert!(!sel.matches(&obj(json!({"app": "api", "zone": "a"}))));
        assert!(!sel.matches(&obj(json!({"app": "db"}))));
    }

    #[test]
    fn prefixed_keys_and_errors() {
        let sel = LabelSelector::parse("kubernetes.io/service-name=web").expect("parses");
        assert!(sel.matches(&obj(json!({"kubernetes.io/service-name": "web"}))));
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(LabelSelector::parse("app in (web").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        assert!(LabelSelector::parse("").expect("empty").is_empty());
    }

    #[test]
    fn fields() {
        let sel =
            FieldSelector::parse("metadata.name=web,metadata.namespace!=dev").expect("parses");
        assert!(sel.matches(&obj(json!({}))));
        assert!(
            !FieldSelector::parse("metadata.name=api")
                .expect("parses")
                .matches(&obj(json!({})))
        );
        assert_eq!(
            FieldSelector::parse("spec.clusterIP=None")
                .expect_err("unsupported")
                .0,
            "field label not supported: spec.clusterIP"
        );
    }
}
