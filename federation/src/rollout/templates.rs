//! The gateway manifests the federation applies, rendered from
//! `deploy/gateway/gateway.yaml` (compiled in, so `deploy/` and the
//! federation can't drift apart).
//!
//! Rendering works on parsed YAML, not on text: a string that is exactly
//! `${NAME}` becomes the value (of any JSON type), and `${NAME}` inside a
//! longer string is replaced by the value's text. A value can't change the
//! document's structure, and an unknown name is an error.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The gateway template, as shipped in `deploy/gateway/gateway.yaml`.
pub const GATEWAY_TEMPLATE: &str = include_str!("../../../deploy/gateway/gateway.yaml");

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template is not YAML.
    #[error("template is not valid YAML: {0}")]
    Yaml(String),
    /// The template names a value that was not given.
    #[error("template uses ${{{0}}}, which has no value")]
    Unknown(String),
    /// A `${` without its `}`.
    #[error("template has an unterminated ${{ in {0:?}")]
    Unterminated(String),
}

/// Renders every document of `template` with `values`, in order.
pub fn render(template: &str, values: &BTreeMap<&str, Value>) -> Result<Vec<Value>, TemplateError> {
    let mut out = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(template) {
        let value = Value::deserialize(document).map_err(|e| TemplateError::Yaml(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        out.push(substitute(value, values)?);
    }
    Ok(out)
}

fn substitute(value: Value, values: &BTreeMap<&str, Value>) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(s) => substitute_str(&s, values)?,
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| substitute(v, values))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| Ok((k, substitute(v, values)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other,
    })
}

fn substitute_str(s: &str, values: &BTreeMap<&str, Value>) -> Result<Value, TemplateError> {
    if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
        && !name.contains(['$', '{', '}'])
    {
        return values
            .get(name)
            .cloned()
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| TemplateError::Unterminated(s.to_owned()))?;
        let name = &after[..end];
        match values.get(name) {
            Some(Value::String(v)) => out.push_str(v),
            Some(other) => out.push_str(&other.to_string()),
            None => return Err(TemplateError::Unknown(name.to_owned())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_strings_take_the_value_type_and_parts_are_text() {
        let values: BTreeMap<&str, Value> = [("N", json!(3)), ("C", json!("east"))]
            .into_iter()
            .collect();
        let docs = render(
            "a: \"${N}\"\nb: --cluster=${C}\nc: [\"${C}\"]\n---\n",
            &values,
        )
        .expect("renders");
        assert_eq!(
            docs,
            vec![json!({"a": 3, "b": "--cluster=east", "c": ["east"]})]
        );
        let err = render("a: \"${X}\"", &values).expect_err("unknown");
        assert!(err.to_string().contains("${X}"), "{err}");
        assert!(render("a: x${C", &values).is_err());
    }

    #[test]
    fn a_value_cannot_change_the_structure() {
        let values: BTreeMap<&str, Value> = [("C", json!("x\nkind: Secret"))].into_iter().collect();
        let docs = render("kind: ConfigMap\nname: \"${C}\"\n", &values).expect("renders");
        assert_eq!(docs[0]["kind"], "ConfigMap");
        assert_eq!(docs[0]["name"], "x\nkind: Secret");
    }
}
