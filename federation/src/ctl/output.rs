//! Output of `gnsctl get`: a table with a few columns per kind, or the
//! server's objects as JSON or YAML (a list prints its items array).

use std::io::Write;

use clap::ValueEnum;
use serde_json::Value;

use super::{CtlError, CtlKind};

/// `-o` of `gnsctl get`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// The server's JSON, pretty-printed.
    Json,
    /// The server's objects as YAML.
    Yaml,
}

/// Shown for a missing value in a table.
const NONE: &str = "-";

/// Column headers of a kind's table.
pub fn columns(kind: CtlKind) -> &'static [&'static str] {
    match kind {
        CtlKind::Cluster => &["NAME", "REGION", "PHASE", "GATEWAYS", "INGRESS"],
        CtlKind::GlobalNamespace => &["NAME", "DOMAIN", "MEMBERS"],
        CtlKind::Service => &["NAME", "CLUSTERS", "READY"],
        CtlKind::Routing => &["SERVICE", "RULES", "FAILOVER"],
        CtlKind::ExternalWorkload => &["NAME", "SERVICE", "ADDRESS", "PHASE"],
        CtlKind::AccessPolicy => &["NAME", "FROM", "TO", "ACTION"],
    }
}

/// A scalar as table text.
fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => NONE.to_owned(),
    }
}

/// A JSON pointer lookup as table text.
fn at(object: &Value, pointer: &str) -> String {
    text(object.pointer(pointer))
}

/// Comma-joined strings of an array (built by `each` from every element).
fn joined(value: Option<&Value>, each: impl Fn(&Value) -> Option<String>) -> String {
    let parts: Vec<String> = value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(each).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        NONE.to_owned()
    } else {
        parts.join(",")
    }
}

fn string(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn array_len(value: Option<&Value>) -> usize {
    value.and_then(Value::as_array).map_or(0, Vec::len)
}

/// One table row for an object of `kind`.
pub fn row(kind: CtlKind, object: &Value) -> Vec<String> {
    match kind {
        CtlKind::Cluster => vec![
            at(object, "/name"),
            at(object, "/labels/region"),
            at(object, "/status/phase"),
            at(object, "/status/gatewayHealth"),
            at(object, "/gateway/ingressAddress"),
        ],
        CtlKind::GlobalNamespace => vec![
            at(object, "/name"),
            at(object, "/domain"),
            joined(object.get("members"), |m| {
                let cluster = m.get("cluster")?.as_str()?;
                let namespace = m.get("namespace")?.as_str()?;
                Some(format!("{cluster}/{namespace}"))
            }),
        ],
        CtlKind::Service => {
            let clusters = object.get("clusters").and_then(Value::as_object);
            let names: Vec<&str> = clusters
                .map(|c| c.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let (ready, total) = clusters.into_iter().flat_map(|c| c.values()).fold(
                (0, 0),
                |(ready, total), endpoints| {
                    let r = array_len(endpoints.get("ready"));
                    let n = array_len(endpoints.get("notReady"));
                    (ready + r, total + r + n)
                },
            );
            vec![
                at(object, "/name"),
                if names.is_empty() {
                    NONE.to_owned()
                } else {
                    names.join(",")
                },
                format!("{ready}/{total}"),
            ]
        }
        CtlKind::Routing => vec![
            at(object, "/service"),
            array_len(object.get("rules")).to_string(),
            joined(object.get("failover"), string),
        ],
        CtlKind::ExternalWorkload => vec![
            at(object, "/name"),
            at(object, "/service"),
            at(object, "/address"),
            at(object, "/status/phase"),
        ],
        CtlKind::AccessPolicy => vec![
            at(object, "/name"),
            joined(object.get("from"), string),
            at(object, "/to"),
            at(object, "/action"),
        ],
    }
}

/// Writes rows under headers, columns padded to their widest cell.
pub fn write_table(
    out: &mut dyn Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> Result<(), CtlError> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}   "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut headers.iter().copied())?;
    for row in rows {
        line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Writes objects of `kind` in `format`; `single` prints one object rather than an array.
pub fn write_objects(
    out: &mut dyn Write,
    kind: CtlKind,
    format: OutputFormat,
    objects: &[Value],
    single: bool,
) -> Result<(), CtlError> {
    let value = match (single, objects) {
        (true, [one]) => one.clone(),
        _ => Value::Array(objects.to_vec()),
    };
    match format {
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = objects.iter().map(|o| row(kind, o)).collect();
            write_table(out, columns(kind), &rows)?;
        }
        OutputFormat::Json => {
            let text = serde_json::to_string_pretty(&value)
                .map_err(|e| CtlError::Render(e.to_string()))?;
            writeln!(out, "{text}")?;
        }
        OutputFormat::Yaml => {
            let text =
                serde_yaml_ng::to_string(&value).map_err(|e| CtlError::Render(e.to_string()))?;
            write!(out, "{text}")?;
            if !text.ends_with('\n') {
                writeln!(out)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(kind: CtlKind, format: OutputFormat, objects: &[Value], single: bool) -> String {
        let mut out = Vec::new();
        write_objects(&mut out, kind, format, objects, single).expect("renders");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn cluster_table() {
        let clusters = [
            json!({"name":"east","labels":{"region":"us-east-1"},
                   "status":{"phase":"Pending","gatewayHealth":"Silent"},
                   "gateway":{"ingressAddress":"203.0.113.10:15443"}}),
            json!({"name":"west-long-name"}),
        ];
        let text = render(CtlKind::Cluster, OutputFormat::Table, &clusters, false);
        assert_eq!(
            text,
            "NAME             REGION      PHASE     GATEWAYS   INGRESS\n\
             east             us-east-1   Pending   Silent     203.0.113.10:15443\n\
             west-long-name   -           -         -          -\n"
        );
    }

    #[test]
    fn rows_per_kind() {
        let gns = json!({"name":"p","domain":"p.example.com",
            "members":[{"cluster":"east","namespace":"shop"},{"cluster":"west","namespace":"shop"}]});
        assert_eq!(
            row(CtlKind::GlobalNamespace, &gns),
            ["p", "p.example.com", "east/shop,west/shop"]
        );
        let svc = json!({"name":"db","clusters":{
            "east":{"ready":[{"address":"10.8.0.1"}],"notReady":[{"address":"10.8.0.2"}]},
            "external":{"ready":[{"address":"192.0.2.10"}],"notReady":[]}}});
        assert_eq!(row(CtlKind::Service, &svc), ["db", "east,external", "2/3"]);
        let routing = json!({"service":"web","rules":[{},{}],"failover":["east","west"]});
        assert_eq!(row(CtlKind::Routing, &routing), ["web", "2", "east,west"]);
        let policy = json!({"name":"a","from":["web","external"],"to":"api","action":"allow"});
        assert_eq!(
            row(CtlKind::AccessPolicy, &policy),
            ["a", "web,external", "api", "allow"]
        );
        let workload = json!({"name":"vm","service":"db","address":"192.0.2.10",
                              "status":{"phase":"Expired"}});
        assert_eq!(
            row(CtlKind::ExternalWorkload, &workload),
            ["vm", "db", "192.0.2.10", "Expired"]
        );
    }

    #[test]
    fn json_and_yaml_print_objects_or_items() {
        let one = [json!({"name":"east"})];
        assert_eq!(
            render(CtlKind::Cluster, OutputFormat::Json, &one, true),
            "{\n  \"name\": \"east\"\n}\n"
        );
        assert_eq!(
            render(CtlKind::Cluster, OutputFormat::Json, &one, false),
            "[\n  {\n    \"name\": \"east\"\n  }\n]\n"
        );
        assert_eq!(
            render(CtlKind::Cluster, OutputFormat::Yaml, &one, true),
            "name: east\n"
        );
        assert_eq!(
            render(CtlKind::Cluster, OutputFormat::Yaml, &one, false),
            "- name: east\n"
        );
    }
}
