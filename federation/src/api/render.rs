//! Turning stored objects into API JSON: the spec's fields plus the
//! server-set `resourceVersion`, `createdAt`, `updatedAt` and `status`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::store::StoredObject;

/// RFC 3339 (UTC, milliseconds) of a Unix-milliseconds time.
pub fn rfc3339(millis: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Now, in Unix milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The API form of `object`, with `status` as given.
pub fn render_with_status(object: &StoredObject, status: Value) -> Value {
    let mut out = match &object.spec {
        Value::Object(map) => map.clone(),
        other => {
            let mut m = Map::new();
            m.insert("spec".into(), other.clone());
            m
        }
    };
    out.insert(
        "resourceVersion".into(),
        Value::String(object.resource_version.to_string()),
    );
    out.insert(
        "createdAt".into(),
        Value::String(rfc3339(object.created_at)),
    );
    out.insert(
        "updatedAt".into(),
        Value::String(rfc3339(object.updated_at)),
    );
    let empty = status.as_object().is_some_and(Map::is_empty) || status.is_null();
    if !empty {
        out.insert("status".into(), status);
    }
    Value::Object(out)
}

/// A list response: `{"items": [...], "continue": TOKEN|null}`.
pub fn list_body(items: Vec<Value>, next: Option<String>) -> Value {
    json!({ "items": items, "continue": next })
}
