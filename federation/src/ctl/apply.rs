//! `gnsctl apply`: makes the server hold what a manifest says, one object at
//! a time, clusters first, then global namespaces, then what lives in them.
//!
//! For each object: GET it; absent → create (POST, or PUT for routing, which
//! is create-or-replace); present → PUT it without a `resourceVersion`. The
//! server makes no new revision for a write that changes nothing, so an equal
//! `resourceVersion` before and after means `unchanged`, else `configured`.
//! A failing object is reported and the rest still apply.

use std::io::Write;

use serde_json::Value;

use super::manifest::{Document, DocumentError};
use super::{Client, CtlError, CtlKind};

/// What applying one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist and was created.
    Created,
    /// It existed and was changed.
    Configured,
    /// It existed and already matched.
    Unchanged,
}

impl Outcome {
    /// The word printed after the object's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

fn resource_version(value: &Value) -> Option<String> {
    match value.get("resourceVersion")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Applies one object.
pub async fn apply_one(client: &Client, doc: &Document) -> Result<Outcome, CtlError> {
    let gns = doc.gns.as_deref();
    let object_path = doc.kind.object_path(gns, &doc.name)?;
    let body = Value::Object(doc.body.clone());
    match client.get_optional(&object_path).await? {
        None if doc.kind == CtlKind::Routing => {
            let (_, created, _) = client.put(&object_path, &body).await?;
            // Someone may have created it between our GET and PUT; then it was replaced.
            Ok(if created {
                Outcome::Created
            } else {
                Outcome::Configured
            })
        }
        None => {
            client.post(&doc.kind.collection_path(gns)?, &body).await?;
            Ok(Outcome::Created)
        }
        Some(existing) => {
            let before = resource_version(&existing);
            let (after, _, changed) = client.put(&object_path, &body).await?;
            // The server says whether it changed anything; without that, compare
            // versions (a status write in between would then read as a change).
            let unchanged = match changed {
                Some(changed) => !changed,
                None => before.is_some() && before == resource_version(&after),
            };
            Ok(if unchanged {
                Outcome::Unchanged
            } else {
                Outcome::Configured
            })
        }
    }
}

/// Applies every document, printing one line per object to `out` and each
/// failure to `err`. Fails at once if the server can't be reached; otherwise
/// fails at the end if any document failed.
pub async fn apply(
    client: &Client,
    documents: Vec<Result<Document, DocumentError>>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CtlError> {
    let total = documents.len();
    let mut failed = 0;
    let mut valid = Vec::with_capacity(total);
    for doc in documents {
        match doc {
            Ok(doc) => valid.push(doc),
            Err(e) => {
                failed += 1;
                writeln!(err, "error: {e}")?;
            }
        }
    }
    // Stable: file order within each rank.
    valid.sort_by_key(|d| d.kind.apply_rank());
    for doc in &valid {
        match apply_one(client, doc).await {
            Ok(outcome) => {
                writeln!(out, "{} {}", doc.display(), outcome.as_str())?;
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                failed += 1;
                writeln!(err, "error: {}: {e}", doc.display())?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        return Err(CtlError::ApplyFailed { failed, total });
    }
    if total == 0 {
        writeln!(err, "warning: the manifest holds no objects")?;
    }
    Ok(())
}
