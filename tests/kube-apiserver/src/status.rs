//! `Status` bodies: how kube-apiserver reports every failure, in HTTP error
//! responses and inside watch streams (`ERROR` events).

use serde_json::{Value, json};

/// A `Status` failure object as kube-apiserver writes it.
pub(crate) fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let (Some(details), Some(map)) = (details, status.as_object_mut()) {
        map.insert("details".to_owned(), details);
    }
    status
}

/// `details` naming the object (and the group) a failure is about.
pub(crate) fn details(name: Option<&str>, group: &str, plural: &str) -> Value {
    let mut details = serde_json::Map::new();
    if let Some(name) = name {
        details.insert("name".to_owned(), json!(name));
    }
    if !group.is_empty() {
        details.insert("group".to_owned(), json!(group));
    }
    details.insert("kind".to_owned(), json!(plural));
    Value::Object(details)
}

/// The message of a `410 Gone` for a watch from a compacted resourceVersion.
pub(crate) fn too_old_resource_version(requested: u64, oldest: u64) -> Value {
    failure(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({oldest})"),
        None,
    )
}

/// The `410 Gone` for a list continued from a token whose snapshot is compacted.
pub(crate) fn continue_expired() -> Value {
    failure(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter, or use the continue token \
         in this response to retrieve the remainder of the results. Continuing with the \
         provided token results in an inconsistent list - objects that were created, \
         modified, or deleted between the time the first chunk was returned and now may \
         show up in the list.",
        None,
    )
}

/// A `400 Bad Request`.
pub(crate) fn bad_request(message: &str) -> Value {
    failure(400, "BadRequest", message, None)
}

/// `404 NotFound` for a named object: `deployments.apps "web" not found`.
pub(crate) fn not_found(group: &str, plural: &str, name: &str) -> Value {
    failure(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", qualified(group, plural)),
        Some(details(Some(name), group, plural)),
    )
}

/// `409 AlreadyExists` for a create of an existing object.
pub(crate) fn already_exists(group: &str, plural: &str, name: &str) -> Value {
    failure(
        409,
        "AlreadyExists",
        &format!("{} \"{name}\" already exists", qualified(group, plural)),
        Some(details(Some(name), group, plural)),
    )
}

/// `409 Conflict` for a write with a stale resourceVersion, worded as the
/// real server words it.
pub(crate) fn modified(group: &str, plural: &str, name: &str) -> Value {
    failure(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            qualified(group, plural)
        ),
        Some(details(Some(name), group, plural)),
    )
}

/// `409 Conflict` for a failed precondition (delete options).
pub(crate) fn precondition_failed(group: &str, plural: &str, name: &str, message: &str) -> Value {
    failure(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": {message}",
            qualified(group, plural)
        ),
        Some(details(Some(name), group, plural)),
    )
}

/// `422 Invalid`: `Deployment.apps "web" is invalid: <why>`.
pub(crate) fn invalid(group: &str, kind: &str, name: &str, why: &str) -> Value {
    let subject = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    let mut details = details(Some(name), group, kind);
    details["causes"] = json!([{"reason": "FieldValueInvalid", "message": why, "field": ""}]);
    failure(
        422,
        "Invalid",
        &format!("{subject} \"{name}\" is invalid: {why}"),
        Some(details),
    )
}

/// A `Success` status, as a delete answers for most kinds.
pub(crate) fn success(details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}
