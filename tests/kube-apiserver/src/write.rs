//! The write verbs over HTTP: create (POST), update (PUT), patch (PATCH:
//! JSON merge patch, strategic merge patch treated as a merge patch, JSON
//! patch, and server-side apply), delete (DELETE; a Namespace takes what is
//! in it along), the `status` subresource, and `TokenRequest`. Each write is
//! one atomic [`crate::store::Store::write`], so watches see `ADDED`,
//! `MODIFIED` and `DELETED`; field ownership is kept by the `managed`
//! module. Every refusal is a `Status` as the real server words it.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::managed::{self, Apply, Conflict, Part};
use crate::registry::{ResourceType, Target};
use crate::server::Shared;
use crate::status;
use crate::store::{Key, WriteError};
use crate::tokens::{self, MintRequest};

/// A write's answer: the HTTP status code and body, or a `Status`.
pub(crate) type Outcome = Result<(u16, Value), Value>;

/// One write request.
pub(crate) struct Write<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) target: &'a Target,
    pub(crate) body: &'a [u8],
    pub(crate) content_type: &'a str,
    /// The `fieldManager` query parameter.
    pub(crate) field_manager: Option<&'a str>,
    /// The manager name when none is given (from the user agent).
    pub(crate) default_manager: String,
    pub(crate) force: bool,
    pub(crate) dry_run: bool,
}

impl Write<'_> {
    fn rt(&self) -> &ResourceType {
        self.shared.registry.get(self.target.resource)
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn namespace(&self) -> &str {
        self.target.namespace.as_deref().unwrap_or("")
    }

    fn key(&self, name: &str) -> Key {
        let namespace = if self.rt().namespaced {
            self.namespace().to_owned()
        } else {
            String::new()
        };
        (namespace, name.to_owned())
    }

    fn manager(&self) -> &str {
        self.field_manager
            .filter(|m| !m.is_empty())
            .unwrap_or(&self.default_manager)
    }

    fn part(&self) -> Part {
        match self.target.subresource.as_deref() {
            Some("status") => Part::Status,
            _ => Part::Main,
        }
    }

    fn not_found(&self) -> Value {
        let rt = self.rt();
        status::not_found(rt.group, rt.plural, self.name())
    }

    fn write_error(&self, name: &str, error: WriteError) -> Value {
        match error {
            WriteError::Invalid(why) => {
                let rt = self.rt();
                status::invalid(rt.group, rt.kind, name, &why)
            }
            WriteError::Rejected(status) => status,
        }
    }

    /// Parses the body (JSON; YAML for apply), as an object.
    fn body(&self, yaml: bool) -> Result<Value, Value> {
        let parsed = match serde_json::from_slice::<Value>(self.body) {
            Ok(value) => Ok(value),
            Err(e) if yaml => serde_yaml_ng::from_slice::<Value>(self.body)
                .map_err(|y| format!("error decoding YAML: {y} (and as JSON: {e})")),
            Err(e) => Err(format!("error decoding body: {e}")),
        };
        let value = parsed.map_err(|m| status::bad_request(&m))?;
        if !value.is_object() {
            return Err(status::bad_request(
                "error decoding body: the object must be a JSON object",
            ));
        }
        Ok(value)
    }

    /// Checks that the body's kind, name and namespace agree with the URL.
    fn check_identity(&self, body: &Value, name: Option<&str>) -> Result<(), Value> {
        let rt = self.rt();
        let text = |p: &str| {
            body.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(kind) = text("/kind").filter(|k| *k != rt.kind) {
            return Err(status::bad_request(&format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        if let Some(version) = text("/apiVersion").filter(|v| *v != rt.api_version) {
            return Err(status::bad_request(&format!(
                "the API version in the data ({version}) does not match the expected API version ({})",
                rt.api_version
            )));
        }
        if let (Some(url), Some(body)) = (name, text("/metadata/name"))
            && url != body
        {
            return Err(status::bad_request(&format!(
                "the name of the object ({body}) does not match the name on the URL ({url})"
            )));
        }
        if rt.namespaced && text("/metadata/namespace").is_some_and(|ns| ns != self.namespace()) {
            return Err(status::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(())
    }

    /// Objects are created only in existing namespaces (when Namespaces
    /// are served).
    fn check_namespace(&self) -> Result<(), Value> {
        let shared = self.shared;
        if !self.rt().namespaced {
            return Ok(());
        }
        let Some(index) = shared.registry.by_kind("v1", "Namespace") else {
            return Ok(());
        };
        match shared.store.get(index, "", self.namespace()) {
            Some(_) => Ok(()),
            None => Err(status::not_found("", "namespaces", self.namespace())),
        }
    }

    /// A `resourceVersion` the client sent must be the stored one.
    fn check_version(&self, sent: &Value, live: &Value) -> Result<(), WriteError> {
        let sent = sent
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let stored = live
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        match sent {
            Some(rv) if Some(rv) != stored => {
                let rt = self.rt();
                Err(WriteError::Rejected(status::modified(
                    rt.group,
                    rt.plural,
                    self.name(),
                )))
            }
            _ => Ok(()),
        }
    }
}

fn now() -> Value {
    tokens::timestamp(SystemTime::now())
}

/// What the server sets or keeps on every write, by kind: the stored status
/// for main-resource writes of kinds with a status subresource (none on
/// create), and defaults.
fn prepare(rt: &ResourceType, name: &str, live: Option<&Value>, new: &mut Value, part: Part) {
    let Some(map) = new.as_object_mut() else {
        return;
    };
    if part == Part::Main && rt.has_status() {
        match live.and_then(|l| l.get("status")) {
            Some(status) => map.insert("status".to_owned(), status.clone()),
            None => map.remove("status"),
        };
    }
    match (rt.group, rt.kind) {
        ("", "Namespace") => {
            if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if let Some(labels) = labels.as_object_mut() {
                    labels.insert("kubernetes.io/metadata.name".to_owned(), json!(name));
                }
            }
            if live.is_none() {
                new["spec"] = json!({"finalizers": ["kubernetes"]});
                new["status"] = json!({"phase": "Active"});
            }
        }
        ("", "Secret") => {
            if new.get("type").is_none_or(Value::is_null) {
                new["type"] = json!("Opaque");
            }
            // Like the real server: stringData is written into data (base64) and not kept.
            if let Some(Value::Object(strings)) =
                new.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine;
                let data = new
                    .as_object_mut()
                    .map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (key, value) in strings {
                        let text = value.as_str().map(str::to_owned).unwrap_or_default();
                        data.insert(
                            key,
                            json!(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                }
            }
        }
        ("", "Service") => {
            // Like the real server: a Service gets a cluster IP, kept across writes.
            let kept = live
                .and_then(|l| l.pointer("/spec/clusterIP"))
                .cloned()
                .unwrap_or_else(|| json!(cluster_ip(new)));
            let external =
                new.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
                && !external
            {
                spec.entry("clusterIP").or_insert(kept);
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("replicas").or_insert(json!(1));
            }
        }
        _ => {}
    }
}

/// A cluster IP in 10.96.0.0/16 derived from the Service's namespace and name.
fn cluster_ip(service: &Value) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let meta = |f: &str| {
        service
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let hash =
        BuildHasherDefault::<DefaultHasher>::default().hash_one((meta("namespace"), meta("name")));
    format!("10.96.{}.{}", (hash >> 8) & 0xff, (hash & 0xfe).max(2))
}

/// What an update or non-apply patch of an existing object adds: the
/// server's fields and defaults, and `Update` ownership of what changed.
fn update_existing(w: &Write<'_>, name: &str, live: &Value, new: &mut Value, part: Part) {
    let rt = w.rt();
    prepare(rt, name, Some(live), new, part);
    managed::update(Some(live), new, w.manager(), rt.api_version, part, &now());
}

/// The object a status write makes: the stored object with `status` taken
/// from `new`.
fn status_only(live: &Value, new: &Value) -> Value {
    let mut out = live.clone();
    if let Some(map) = out.as_object_mut() {
        match new.get("status") {
            Some(status) => map.insert("status".to_owned(), status.clone()),
            None => map.remove("status"),
        };
    }
    out
}

/// POST: creates an object (`201`).
pub(crate) fn create(w: &Write<'_>) -> Outcome {
    let rt = w.rt();
    let mut body = w.body(false)?;
    w.check_identity(&body, None)?;
    if body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(status::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let text = |p: &str| {
        body.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let name = match (text("/metadata/name"), text("/metadata/generateName")) {
        (Some(name), _) => name,
        (None, Some(prefix)) => w.shared.store.generate_name(&prefix),
        (None, None) => {
            return Err(status::invalid(
                rt.group,
                rt.kind,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    w.check_namespace()?;
    managed::strip(&mut body);
    let written = w
        .shared
        .store
        .write(w.target.resource, rt, &w.key(&name), w.dry_run, |live| {
            if live.is_some() {
                return Err(WriteError::Rejected(status::already_exists(
                    rt.group, rt.plural, &name,
                )));
            }
            if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("name".to_owned(), json!(name));
                for field in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                ] {
                    meta.remove(field);
                }
            }
            prepare(rt, &name, None, &mut body, Part::Main);
            managed::update(
                None,
                &mut body,
                w.manager(),
                rt.api_version,
                Part::Main,
                &now(),
            );
            Ok(body)
        })
        .map_err(|e| w.write_error(&name, e))?;
    Ok((201, (*written.object).clone()))
}

/// PUT: replaces an object or its status (`200`).
pub(crate) fn update(w: &Write<'_>) -> Outcome {
    let rt = w.rt();
    let name = w.name().to_owned();
    let mut body = w.body(false)?;
    w.check_identity(&body, Some(&name))?;
    let part = w.part();
    let written = w
        .shared
        .store
        .write(w.target.resource, rt, &w.key(&name), w.dry_run, |live| {
            let live = live.ok_or_else(|| WriteError::Rejected(w.not_found()))?;
            w.check_version(&body, live)?;
            managed::strip(&mut body);
            let mut new = match part {
                Part::Main => body,
                Part::Status => status_only(live, &body),
            };
            update_existing(w, &name, live, &mut new, part);
            Ok(new)
        })
        .map_err(|e| w.write_error(&name, e))?;
    Ok((200, (*written.object).clone()))
}

/// PATCH: merge, strategic merge (as merge), JSON patch, or apply.
pub(crate) fn patch(w: &Write<'_>) -> Outcome {
    let content_type = w
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        "application/apply-patch+yaml" | "application/apply-patch+json" => apply(w),
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let patch = w.body(false)?;
            patch_with(w, &patch, |target| {
                merge_patch(target, &patch);
                Ok(())
            })
        }
        "application/json-patch+json" => {
            let patch: Value = serde_json::from_slice(w.body)
                .map_err(|e| status::bad_request(&format!("error decoding body: {e}")))?;
            patch_with(w, &Value::Null, |target| json_patch(target, &patch))
        }
        _ => Err(status::failure(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml (got {content_type:?})"
            ),
            None,
        )),
    }
}

/// A non-apply patch: `change` edits a copy of the stored object.
fn patch_with(
    w: &Write<'_>,
    sent: &Value,
    change: impl FnOnce(&mut Value) -> Result<(), String>,
) -> Outcome {
    let rt = w.rt();
    let name = w.name().to_owned();
    let part = w.part();
    let written = w
        .shared
        .store
        .write(w.target.resource, rt, &w.key(&name), w.dry_run, |live| {
            let live = live.ok_or_else(|| WriteError::Rejected(w.not_found()))?;
            w.check_version(sent, live)?;
            let mut patched = (**live).clone();
            change(&mut patched)
                .map_err(|m| WriteError::Rejected(status::failure(422, "Invalid", &m, None)))?;
            let mut new = match part {
                Part::Main => patched,
                Part::Status => status_only(live, &patched),
            };
            if new.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
                return Err(WriteError::Rejected(status::bad_request(
                    "the name of the object may not be changed by a patch",
                )));
            }
            update_existing(w, &name, live, &mut new, part);
            Ok(new)
        })
        .map_err(|e| w.write_error(&name, e))?;
    Ok((200, (*written.object).clone()))
}

/// Server-side apply (`201` when it created the object).
fn apply(w: &Write<'_>) -> Outcome {
    let rt = w.rt();
    let name = w.name().to_owned();
    let Some(manager) = w.field_manager.filter(|m| !m.is_empty()) else {
        return Err(status::failure(
            400,
            "BadRequest",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: \
             is required for apply patch",
            None,
        ));
    };
    let mut config = w.body(true)?;
    w.check_identity(&config, Some(&name))?;
    managed::strip(&mut config);
    let part = w.part();
    if w.shared
        .store
        .get(w.target.resource, &w.key(&name).0, &name)
        .is_none()
    {
        if part == Part::Status {
            return Err(w.not_found());
        }
        w.check_namespace()?;
    }
    let written = w
        .shared
        .store
        .write(w.target.resource, rt, &w.key(&name), w.dry_run, |live| {
            if part == Part::Status && live.is_none() {
                return Err(WriteError::Rejected(w.not_found()));
            }
            if let Some(live) = live {
                w.check_version(&config, live)?;
            }
            let how = Apply {
                manager,
                api_version: rt.api_version,
                part,
                force: w.force,
                now: &now(),
            };
            let mut new = managed::apply(live.map(|l| &**l), &config, &how)
                .map_err(|c| WriteError::Rejected(conflicts(rt, &name, &c)))?;
            prepare(rt, &name, live.map(|l| &**l), &mut new, part);
            Ok(new)
        })
        .map_err(|e| w.write_error(&name, e))?;
    let code = if written.created { 201 } else { 200 };
    Ok((code, (*written.object).clone()))
}

/// The `409` of an apply with conflicts.
pub(crate) fn conflicts(rt: &ResourceType, name: &str, conflicts: &[Conflict]) -> Value {
    let with = |c: &Conflict| format!("conflict with \"{}\" using {}", c.manager, c.api_version);
    let message = match conflicts {
        [one] => format!(
            "Apply failed with 1 conflict: {}: {}",
            with(one),
            managed::path_string(&one.path)
        ),
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|c| format!("{}: {}", with(c), managed::path_string(&c.path)))
                .collect();
            format!(
                "Apply failed with {} conflicts: {}",
                many.len(),
                lines.join("\n")
            )
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": with(c),
                "field": managed::path_string(&c.path),
            })
        })
        .collect();
    let mut details = status::details(Some(name), rt.group, rt.plural);
    details["causes"] = Value::Array(causes);
    status::failure(409, "Conflict", &message, Some(details))
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(map) = target.as_object_mut() {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let operations = patch
        .as_array()
        .ok_or_else(|| "a JSON patch must be a list of operations".to_owned())?;
    for operation in operations {
        let field = |f: &str| operation.get(f).and_then(Value::as_str);
        let path = field("path").ok_or_else(|| "a JSON patch operation needs a path".to_owned())?;
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| format!("the operation on {path} needs a value"))
        };
        match field("op").unwrap_or("") {
            "add" => pointer_insert(target, path, value()?, true)?,
            "replace" => {
                pointer_take(target, path)?;
                pointer_insert(target, path, value()?, true)?;
            }
            "remove" => {
                pointer_take(target, path)?;
            }
            "test" => {
                if target.pointer(path) != Some(&value()?) {
                    return Err(format!("the test of {path} failed"));
                }
            }
            op @ ("move" | "copy") => {
                let from = field("from").ok_or_else(|| format!("{op} needs from"))?;
                let moved = if op == "move" {
                    pointer_take(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or_else(|| format!("{from} does not exist"))?
                };
                pointer_insert(target, path, moved, true)?;
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn pointer_insert(target: &mut Value, path: &str, value: Value, add: bool) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let parent = target
        .pointer_mut(parent)
        .ok_or_else(|| format!("the parent of {path} does not exist"))?;
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid index in {path}"))?
            };
            if index > items.len() {
                return Err(format!("index out of range in {path}"));
            }
            if add {
                items.insert(index, value);
            }
            Ok(())
        }
        _ => Err(format!("the parent of {path} is not a container")),
    }
}

fn pointer_take(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("{path} does not exist");
    match target.pointer_mut(parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(items) => {
            let index = last.parse::<usize>().map_err(|_| missing())?;
            (index < items.len())
                .then(|| items.remove(index))
                .ok_or_else(missing)
        }
        _ => Err(missing()),
    }
}

/// DELETE of one object: `200` with a `Success` status (a Namespace: the
/// namespace, terminating; what was in it is deleted with it).
pub(crate) fn delete(w: &Write<'_>) -> Outcome {
    let rt = w.rt();
    let name = w.name().to_owned();
    let options: Value = if w.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(w.body)
            .map_err(|e| status::bad_request(&format!("error decoding DeleteOptions: {e}")))?
    };
    let dry_run = w.dry_run
        || options
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let (namespace, _) = w.key(&name);
    let live = w
        .shared
        .store
        .get(w.target.resource, &namespace, &name)
        .ok_or_else(|| w.not_found())?;
    for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        let wanted = options
            .pointer(&format!("/preconditions/{field}"))
            .and_then(Value::as_str);
        let actual = live
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(wanted) = wanted.filter(|w| *w != actual) {
            return Err(status::precondition_failed(
                rt.group,
                rt.plural,
                &name,
                &format!(
                    "Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}"
                ),
            ));
        }
    }
    let is_namespace = rt.group.is_empty() && rt.kind == "Namespace";
    let mut answer = if is_namespace {
        let mut terminating = (*live).clone();
        terminating["status"] = json!({"phase": "Terminating"});
        if let Some(meta) = terminating
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            meta.insert("deletionTimestamp".to_owned(), now());
        }
        terminating
    } else {
        let mut details = status::details(Some(&name), rt.group, rt.plural);
        details["uid"] = live
            .pointer("/metadata/uid")
            .cloned()
            .unwrap_or(Value::Null);
        status::success(details)
    };
    if dry_run {
        return Ok((200, answer));
    }
    if is_namespace {
        delete_namespace_contents(w.shared, &name);
    }
    let last = w
        .shared
        .store
        .delete(w.target.resource, rt, &namespace, &name)
        .map_err(|_| w.not_found())?;
    if is_namespace && let Some(rv) = last.pointer("/metadata/resourceVersion") {
        answer["metadata"]["resourceVersion"] = rv.clone();
    }
    Ok((200, answer))
}

/// Deletes every object in a namespace (as the namespace controller does).
pub(crate) fn delete_namespace_contents(shared: &Shared, namespace: &str) {
    for (index, rt) in shared.registry.types().iter().enumerate() {
        if !rt.namespaced {
            continue;
        }
        for object in shared.store.all(index) {
            let (ns, name) = crate::store::object_key(&object);
            if ns == namespace {
                // Already gone is fine: someone else deleted it meanwhile.
                let _ = shared.store.delete(index, rt, &ns, &name);
            }
        }
    }
}

/// `POST .../serviceaccounts/{name}/token`: a `TokenRequest` (`201`).
pub(crate) fn token_request(w: &Write<'_>) -> Outcome {
    let rt = w.rt();
    let name = w.name().to_owned();
    let namespace = w.namespace().to_owned();
    let body = if w.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        w.body(false)?
    };
    if let Err(e) =
        serde_json::from_value::<k8s_openapi::api::authentication::v1::TokenRequest>(body.clone())
    {
        return Err(status::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            &name,
            &e.to_string(),
        ));
    }
    let account = w
        .shared
        .store
        .get(w.target.resource, &namespace, &name)
        .ok_or_else(|| status::not_found(rt.group, rt.plural, &name))?;
    let uid = account
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Validated as kube-apiserver validates it, once the account is found:
    // 10 minutes to 2^32 seconds (an absent one defaults to an hour; 0 is
    // not absent). The TokenRequest parsed above, so a given one is an integer.
    let seconds = body
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(tokens::DEFAULT_EXPIRATION_SECONDS);
    let lifetime = tokens::expiration(seconds).map_err(|why| invalid_token_request(&why))?;
    let mut audiences: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(tokens::DEFAULT_AUDIENCE.to_owned());
    }
    // One reading of the server's clock for the token's claims, its
    // expirationTimestamp and the answer's creationTimestamp.
    let minted_at = w.shared.tokens.clock.now();
    let (token, expires) = if w.dry_run {
        (String::new(), minted_at.checked_add(lifetime))
    } else {
        w.shared.tokens.mint_at(
            &MintRequest {
                namespace: &namespace,
                name: &name,
                uid,
                audiences: &audiences,
                lifetime: Some(lifetime),
                secret: None,
                pod: None,
            },
            minted_at,
        )
    };
    let expires = expires.map_or(Value::Null, tokens::timestamp);
    Ok((
        201,
        json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": tokens::timestamp(minted_at)},
            "spec": {
                "audiences": audiences,
                "expirationSeconds": seconds,
                "boundObjectRef": body.pointer("/spec/boundObjectRef").cloned().unwrap_or(Value::Null),
            },
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

/// The 422 kube-apiserver answers a TokenRequest whose
/// `spec.expirationSeconds` is out of bounds with (`why`: the field's
/// message). It names no object: the real server reports it for `""`.
fn invalid_token_request(why: &str) -> Value {
    const GROUP: &str = "authentication.k8s.io";
    let field = tokens::EXPIRATION_FIELD;
    let mut details = status::details(None, GROUP, "TokenRequest");
    details["causes"] = json!([{"reason": "FieldValueInvalid", "message": why, "field": field}]);
    status::failure(
        422,
        "Invalid",
        &format!("TokenRequest.{GROUP} \"\" is invalid: {field}: {why}"),
        Some(details),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_json_patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
        json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/l/-", "value": 4},
                {"op": "replace", "path": "/a/c", "value": 5},
                {"op": "remove", "path": "/a/d"},
                {"op": "move", "from": "/a/c", "path": "/m"},
                {"op": "test", "path": "/m", "value": 5}
            ]),
        )
        .expect("patch");
        assert_eq!(v, json!({"a": {}, "l": [3, 4], "m": 5}));
        assert!(json_patch(&mut v, &json!([{"op": "remove", "path": "/x"}])).is_err());
    }
}
