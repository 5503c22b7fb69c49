//! Manifests for `gnsctl apply`: YAML (several documents separated by `---`)
//! or JSON (one object, an array of objects, or several concatenated objects).
//!
//! A document is the REST object plus `kind`, and for objects inside a global
//! namespace a `globalNamespace` field; routing documents name their service in
//! `service`. Only what gnsctl needs to address the object is checked here
//! (kind, name, global namespace); the server validates the rest.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{CtlError, CtlKind};

/// Fields that address an object rather than describe it; not sent to the server.
const KIND_FIELD: &str = "kind";
const GNS_FIELD: &str = "globalNamespace";

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based position in the manifest (after expanding arrays and lists).
    pub index: usize,
    /// Its kind.
    pub kind: CtlKind,
    /// Its global namespace (scoped kinds only).
    pub gns: Option<String>,
    /// Its name (the service, for routing).
    pub name: String,
    /// The body to send: the document without `kind` and `globalNamespace`.
    pub body: Map<String, Value>,
}

impl Document {
    /// How output names it, e.g. `cluster/east`.
    pub fn display(&self) -> String {
        self.kind.display(self.gns.as_deref(), &self.name)
    }
}

/// A document that can't be applied, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based position in the manifest.
    pub index: usize,
    /// `kind/name` when known.
    pub what: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.what {
            Some(what) => write!(f, "document {} ({what}): {}", self.index, self.message),
            None => write!(f, "document {}: {}", self.index, self.message),
        }
    }
}

/// Reads every document of a manifest. A syntax error fails the whole file
/// (`path` names it in the error); a document that can't be addressed becomes
/// an `Err` entry so the others can still be applied.
pub fn parse(
    text: &str,
    path: &str,
    default_gns: Option<&str>,
) -> Result<Vec<Result<Document, DocumentError>>, CtlError> {
    let values = values(text).map_err(|reason| CtlError::Syntax {
        path: path.to_owned(),
        reason,
    })?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| document(i + 1, value, default_gns))
        .collect())
}

/// The documents of a manifest as JSON values, with arrays and `kind: List` expanded.
fn values(text: &str) -> Result<Vec<Value>, String> {
    let raw = if text.trim_start().starts_with(['{', '[']) {
        match json_values(text) {
            Ok(values) => values,
            // A YAML flow mapping also starts with `{`; report JSON's complaint if YAML fails too.
            Err(json_error) => yaml_values(text).map_err(|_| json_error)?,
        }
    } else {
        yaml_values(text)?
    };
    let mut out = Vec::new();
    for value in raw {
        expand(value, &mut out);
    }
    Ok(out)
}

fn json_values(text: &str) -> Result<Vec<Value>, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid JSON: {e}"))
}

fn yaml_values(text: &str) -> Result<Vec<Value>, String> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(|e| format!("not valid YAML: {e}")))
        .collect()
}

fn expand(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Null => {}
        Value::Array(items) => items.into_iter().for_each(|v| expand(v, out)),
        Value::Object(map)
            if map
                .get(KIND_FIELD)
                .and_then(Value::as_str)
                .is_some_and(|k| k.eq_ignore_ascii_case("list"))
                && matches!(map.get("items"), Some(Value::Array(_))) =>
        {
            if let Some(Value::Array(items)) = map.get("items") {
                items.iter().cloned().for_each(|v| expand(v, out));
            }
        }
        other => out.push(other),
    }
}

fn document(
    index: usize,
    value: Value,
    default_gns: Option<&str>,
) -> Result<Document, DocumentError> {
    let fail = |what: Option<String>, message: String| DocumentError {
        index,
        what,
        message,
    };
    let Value::Object(mut body) = value else {
        return Err(fail(
            None,
            "must be a mapping (an object with a kind)".into(),
        ));
    };
    let kind = match body.remove(KIND_FIELD) {
        Some(Value::String(k)) => CtlKind::parse(&k).map_err(|e| fail(None, e.to_string()))?,
        Some(_) => return Err(fail(None, "kind must be a string".into())),
        None => {
            return Err(fail(
                None,
                "has no kind; add e.g. `kind: Cluster` (Cluster, GlobalNamespace, Routing, ExternalWorkload, AccessPolicy)"
                    .into(),
            ));
        }
    };
    if kind == CtlKind::Service {
        return Err(fail(
            None,
            "services are discovered from member clusters and can't be applied; write a Routing or ExternalWorkload instead"
                .into(),
        ));
    }
    let name_field = kind.name_field();
    let name = match body.get(name_field) {
        Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
        _ => {
            return Err(fail(
                None,
                format!("{kind} has no {name_field}; add `{name_field}: <name>`"),
            ));
        }
    };
    let gns = if kind.is_scoped() {
        let given = match body.remove(GNS_FIELD) {
            None => None,
            Some(Value::String(g)) if !g.trim().is_empty() => Some(g),
            Some(_) => {
                return Err(fail(
                    Some(kind.display(None, &name)),
                    format!("{GNS_FIELD} must be the name of a global namespace"),
                ));
            }
        };
        match given.or_else(|| default_gns.map(str::to_owned)) {
            Some(g) => Some(g),
            None => {
                return Err(fail(
                    Some(kind.display(None, &name)),
                    format!(
                        "{kind} objects live in a global namespace; add `{GNS_FIELD}: <name>` (or pass --gns)"
                    ),
                ));
            }
        }
    } else {
        None
    };
    // apply is declarative: never make the write conditional on a version from an old `get`.
    body.remove("resourceVersion");
    Ok(Document {
        index,
        kind,
        gns,
        name,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(docs: Vec<Result<Document, DocumentError>>) -> Vec<Document> {
        docs.into_iter()
            .map(|d| d.expect("document is valid"))
            .collect()
    }

    #[test]
    fn yaml_documents_are_read_and_addressed() {
        let text = r#"
# a comment
kind: Cluster
name: east
kubernetes: {server: "https://10.0.0.1:6443", token: t}
---
---
kind: routing
globalNamespace: production
service: web
rules: [{destinations: [{cluster: east, weight: 100}]}]
retries: {attempts: 3, on: [5xx, connect-failure], perTryTimeout: 500ms}
"#;
        let docs = ok(parse(text, "f.yaml", None).expect("parses"));
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].kind, CtlKind::Cluster);
        assert_eq!(docs[0].display(), "cluster/east");
        assert!(!docs[0].body.contains_key("kind"));
        assert_eq!(docs[1].display(), "routing/production/web");
        assert!(!docs[1].body.contains_key("globalNamespace"));
        assert!(!docs[1].body.contains_key("kind"));
        // `on` stays a string key (YAML 1.2), weights stay numbers.
        assert_eq!(
            docs[1].body["retries"]["on"],
            serde_json::json!(["5xx", "connect-failure"])
        );
        assert_eq!(
            docs[1].body["rules"][0]["destinations"][0]["weight"],
            serde_json::json!(100)
        );
    }

    #[test]
    fn json_object_array_and_stream() {
        let one = r#"{"kind":"gns","name":"p","domain":"p.example.com"}"#;
        assert_eq!(ok(parse(one, "-", None).expect("parses")).len(), 1);
        let array = r#"[{"kind":"Cluster","name":"a","kubernetes":{"server":"https://x"}},
                        {"kind":"Clusters","name":"b","kubernetes":{"server":"https://y"}}]"#;
        assert_eq!(ok(parse(array, "-", None).expect("parses")).len(), 2);
        let stream = format!("{one}\n{one}");
        assert_eq!(ok(parse(&stream, "-", None).expect("parses")).len(), 2);
        let list = r#"{"kind":"List","items":[{"kind":"cluster","name":"a"}]}"#;
        assert_eq!(ok(parse(list, "-", None).expect("parses")).len(), 1);
    }

    #[test]
    fn syntax_errors_fail_the_file() {
        let e = parse("kind: [unclosed", "bad.yaml", None).expect_err("syntax");
        assert!(e.to_string().starts_with("bad.yaml: not valid YAML"), "{e}");
        let e = parse("{\"kind\": ", "bad.json", None).expect_err("syntax");
        assert!(e.to_string().starts_with("bad.json: not valid JSON"), "{e}");
    }

    #[test]
    fn unaddressable_documents_are_reported_one_by_one() {
        let text = "name: x\n---\nkind: Deployment\nname: y\n---\nkind: Cluster\n---\n\
                    kind: AccessPolicy\nname: p\n---\nkind: Service\nname: s\n---\n\
                    kind: Cluster\nname: fine\n";
        let docs = parse(text, "f", None).expect("parses");
        let errors: Vec<String> = docs
            .iter()
            .filter_map(|d| d.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].contains("has no kind"));
        assert!(errors[1].contains("unknown kind \"Deployment\""));
        assert!(errors[2].contains("cluster has no name"));
        assert!(errors[3].contains("accesspolicy/p") && errors[3].contains("globalNamespace"));
        assert!(errors[4].contains("discovered"));
        assert!(docs[5].is_ok());
    }

    #[test]
    fn default_gns_and_resource_version() {
        let text = "kind: ExternalWorkload\nname: vm\nresourceVersion: \"7\"\n";
        let docs = ok(parse(text, "f", Some("staging")).expect("parses"));
        assert_eq!(docs[0].gns.as_deref(), Some("staging"));
        assert!(!docs[0].body.contains_key("resourceVersion"));
    }
}
