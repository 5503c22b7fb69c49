//! Request handling: authentication, authorization, routing, and the
//! responses — GET, LIST (selectors, paging, resourceVersion rules), WATCH
//! (a chunked stream of newline-delimited JSON events), discovery documents,
//! `/version`, health — and `Status` bodies for every failure. Write verbs
//! are routed here (the body is read with a size limit) and handled by the
//! `write` module.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::auth::{self, Attributes, Identity, Verb};
use crate::registry::{ResourceType, Route, Target};
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::{RequestRecord, Shared, WatchGuard, bump};
use crate::status;
use crate::store::{Change, ChangeKind, Key, ListError, ListFrom, WatchFrom, WatchStart};
use crate::write::{self, Write};

/// The response body type: a whole body or a watch stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The version `/version` reports.
const GIT_VERSION: &str = "v1.33.0";

/// The largest request body accepted (the real server's limit, 3 MiB).
pub(crate) const BODY_LIMIT: usize = 3 * 1024 * 1024;

/// One request, its body read.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a Query,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

/// Handles one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: u64,
    client: Option<Arc<(String, Vec<String>)>>,
    request: Request<Incoming>,
) -> Response<Body> {
    bump(&shared.counters.requests);
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    // A verified client certificate authenticates first, as with kube-apiserver's x509 authenticator.
    let identity = match &client {
        Some(cert) => Some(shared.certificate_identity(&cert.0, &cert.1)),
        None => bearer_token(&parts.headers).and_then(|t| shared.authenticate(t)),
    };
    let response = if shared.garbage() {
        garbage()
    } else {
        let query = Query::parse(&raw_query);
        match read_body(&method, body).await {
            Ok(body) => {
                let call = Call {
                    method: &method,
                    path: &path,
                    query: &query,
                    headers: &parts.headers,
                    body: &body,
                };
                respond(&shared, conn, &call, identity.as_ref())
            }
            Err(status) => status_response(&status),
        }
    };
    shared.record(RequestRecord {
        method: method.to_string(),
        path,
        query: raw_query,
        user: identity.map(|i| i.user),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = if name == header::AUTHORIZATION {
                    "<redacted>".to_owned()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_owned(), value)
            })
            .collect(),
        status: response.status().as_u16(),
    });
    response
}

/// Reads the body of a write (up to [`BODY_LIMIT`]); reads have none.
async fn read_body(method: &Method, body: Incoming) -> Result<Bytes, Value> {
    if !matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Ok(Bytes::new());
    }
    match http_body_util::Limited::new(body, BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(status::failure(
            413,
            "RequestEntityTooLarge",
            &format!("Request entity too large: limit is {BODY_LIMIT}"),
            None,
        )),
        Err(e) => Err(status::bad_request(&format!(
            "error reading the request body: {e}"
        ))),
    }
}

/// The field manager of a write that names none, as the real server
/// derives it: the user agent up to its first `/`, or `unknown`.
fn manager_from_user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map_or_else(|| "unknown".to_owned(), |s| s.chars().take(128).collect())
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn respond(
    shared: &Arc<Shared>,
    conn: u64,
    call: &Call<'_>,
    identity: Option<&Identity>,
) -> Response<Body> {
    let query = call.query;
    let route = shared.registry.route(call.path);
    // Health and version are public, as with the system:public-info-viewer role.
    match route {
        Route::Health => return text(StatusCode::OK, "ok"),
        Route::Version => return json_response(StatusCode::OK, &version()),
        _ => {}
    }
    let Some(identity) = identity else {
        bump(&shared.counters.unauthorized);
        return status_response(&auth::unauthorized());
    };
    let target = match route {
        Route::Resource(target) => target,
        Route::NotFound => return not_found_path(),
        discovery => return discovery_document(shared, discovery),
    };
    let rt = shared.registry.get(target.resource);
    let watch = query.flag("watch");
    let named = target.name.is_some();
    let sub = target.subresource.as_deref();
    let verb = match (call.method, named, watch, sub) {
        (&Method::GET, _, true, None) => Verb::Watch,
        (&Method::GET, true, false, None | Some("status")) => Verb::Get,
        (&Method::GET, false, false, None) => Verb::List,
        (&Method::POST, false, _, None) | (&Method::POST, true, _, Some("token")) => Verb::Create,
        (&Method::PUT, true, _, None | Some("status")) => Verb::Update,
        (&Method::PATCH, true, _, None | Some("status")) => Verb::Patch,
        (&Method::DELETE, true, _, None) => Verb::Delete,
        _ => {
            return status_response(&status::failure(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                Some(json!({})),
            ));
        }
    };
    if rt.create_only() && verb != Verb::Create {
        return status_response(&status::failure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        ));
    }
    let attributes = Attributes {
        verb,
        api_group: rt.group.to_owned(),
        resource: rt.plural.to_owned(),
        subresource: target.subresource.clone(),
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    };
    if !shared.authorize(identity, &attributes) {
        bump(&shared.counters.forbidden);
        return status_response(&auth::forbidden(&identity.user, &attributes));
    }
    let view = View::of(call.headers);
    let result = match verb {
        Verb::Get => Ok(get(shared, rt, &target, view)),
        Verb::List => list(shared, rt, &target, query, view),
        Verb::Watch => watch_response(shared, conn, rt, &target, query, view),
        _ => Ok(write_response(shared, verb, &target, call)),
    };
    result.unwrap_or_else(|status| status_response(&status))
}

/// How objects are shown: whole, or as `PartialObjectMetadata` (only
/// `metadata`) when the client's `Accept` header asks for it with
/// `as=PartialObjectMetadata` or `as=PartialObjectMetadataList` (what
/// kube-rs's `metadata_watcher` and `Api::list_metadata` send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Whole,
    Metadata,
}

impl View {
    fn of(headers: &HeaderMap) -> Self {
        let asks = headers
            .get_all(hyper::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("as=PartialObjectMetadata"));
        if asks { Self::Metadata } else { Self::Whole }
    }

    /// `object` as this view shows it.
    fn show(self, object: &Value) -> std::borrow::Cow<'_, Value> {
        match self {
            Self::Whole => std::borrow::Cow::Borrowed(object),
            Self::Metadata => std::borrow::Cow::Owned(json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })),
        }
    }
}

fn write_response(shared: &Shared, verb: Verb, target: &Target, call: &Call<'_>) -> Response<Body> {
    let query = call.query;
    let dry_run = match query.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return status_response(&status::bad_request(&format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )));
        }
    };
    let w = Write {
        shared,
        target,
        body: call.body,
        content_type: call
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        field_manager: query.get("fieldManager"),
        default_manager: manager_from_user_agent(call.headers),
        force: query.flag("force"),
        dry_run,
    };
    let counters = &shared.counters;
    let outcome = match verb {
        Verb::Create if shared.registry.get(target.resource).create_only() => {
            bump(&counters.creates);
            crate::review::token_review(shared, call.body)
        }
        Verb::Create if target.subresource.is_some() => {
            bump(&counters.creates);
            write::token_request(&w)
        }
        Verb::Create => {
            bump(&counters.creates);
            write::create(&w)
        }
        Verb::Update => {
            bump(&counters.updates);
            write::update(&w)
        }
        Verb::Patch => {
            bump(&counters.patches);
            write::patch(&w)
        }
        _ => {
            bump(&counters.deletes);
            write::delete(&w)
        }
    };
    match outcome {
        Ok((code, body)) => {
            json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), &body)
        }
        Err(status) => {
            if status.get("code").and_then(Value::as_u64) == Some(409) {
                bump(&counters.conflicts);
            }
            status_response(&status)
        }
    }
}

// ----- GET -----

fn get(shared: &Shared, rt: &ResourceType, target: &Target, view: View) -> Response<Body> {
    bump(&shared.counters.gets);
    let name = target.name.as_deref().unwrap_or("");
    let namespace = target.namespace.as_deref().unwrap_or("");
    match shared.store.get(target.resource, namespace, name) {
        Some(object) => json_response(StatusCode::OK, &*view.show(&object)),
        None => status_response(&status::failure(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", rt.qualified_plural()),
            Some(status::details(Some(name), rt.group, rt.plural)),
        )),
    }
}

// ----- LIST -----

/// What a list or watch selects: namespace, labels, fields (and the name,
/// for a watch of one object).
struct Filter {
    namespace: Option<String>,
    name: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(target: &Target, query: &Query) -> Result<Self, Value> {
        let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
            .map_err(|e| status::bad_request(&e.0))?;
        let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| status::bad_request(&e.0))?;
        Ok(Self {
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = |f: &str| {
            object
                .pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
        };
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta("namespace") == Some(ns))
            && self.name.as_deref().is_none_or(|n| meta("name") == Some(n))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    fn selects_all(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

fn list(
    shared: &Shared,
    rt: &ResourceType,
    target: &Target,
    query: &Query,
    view: View,
) -> Result<Response<Body>, Value> {
    bump(&shared.counters.lists);
    let filter = Filter::new(target, query)?;
    let limit = match query.get("limit") {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| status::bad_request(&format!("invalid limit: {text:?}")))?
                .max(0) as usize,
        ),
    };
    let from = list_from(rt, query, limit.is_some_and(|l| l > 0))?;
    let page = shared
        .store
        .list(target.resource, &from, limit, filter.selects_all(), &|o| {
            filter.matches(o)
        })
        .map_err(|e| {
            if matches!(e, ListError::Expired { .. }) {
                bump(&shared.counters.expired);
            }
            list_error(e)
        })?;
    let mut metadata = serde_json::Map::new();
    metadata.insert("resourceVersion".to_owned(), json!(page.rv.to_string()));
    if let Some(next) = &page.next {
        metadata.insert(
            "continue".to_owned(),
            json!(encode_continue(page.rv, next, rt)),
        );
    }
    if let Some(remaining) = page.remaining {
        metadata.insert("remainingItemCount".to_owned(), json!(remaining));
    }
    if view == View::Metadata {
        let items: Vec<Value> = page
            .items
            .iter()
            .map(|o| view.show(o).into_owned())
            .collect();
        let body = json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "items": items,
        });
        return Ok(json_response(StatusCode::OK, &body));
    }
    let body = ListBody {
        kind: rt.list_kind,
        api_version: rt.api_version,
        metadata: Value::Object(metadata),
        items: page.items.iter().map(|o| ListItem(o)).collect(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Where a list reads from, by the `continue`, `resourceVersion` and
/// `resourceVersionMatch` rules of kube-apiserver.
fn list_from(rt: &ResourceType, query: &Query, paged: bool) -> Result<ListFrom, Value> {
    let token = query.get("continue").filter(|s| !s.is_empty());
    let rv = query.get("resourceVersion").filter(|s| !s.is_empty());
    let rv_match = query.get("resourceVersionMatch").filter(|s| !s.is_empty());
    match (token, rv, rv_match) {
        (Some(_), Some(_), _) => Err(status::bad_request(
            "specifying resource version is not allowed when using continue",
        )),
        (Some(_), None, Some(_)) => Err(status::bad_request(
            "resourceVersionMatch is forbidden when continue is provided",
        )),
        (Some(token), None, None) => {
            let (rv, after) = decode_continue(token, rt).ok_or_else(|| {
                status::bad_request(&format!("continue key is not valid: {token:?}"))
            })?;
            Ok(ListFrom::Continue { rv, after })
        }
        (None, None, Some(_)) => Err(status::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        )),
        (None, None, None) => Ok(ListFrom::Current),
        (None, Some(text), rv_match) => {
            let rv = parse_rv(text)?;
            match rv_match {
                None if rv == 0 => Ok(ListFrom::Current),
                // A non-zero resourceVersion with a limit and no match is exact.
                None if paged => Ok(ListFrom::Exact(rv)),
                None => Ok(ListFrom::NotOlderThan(rv)),
                Some("NotOlderThan") if rv == 0 => Ok(ListFrom::Current),
                Some("NotOlderThan") => Ok(ListFrom::NotOlderThan(rv)),
                Some("Exact") if rv == 0 => Err(status::bad_request(
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                )),
                Some("Exact") => Ok(ListFrom::Exact(rv)),
                Some(other) => Err(status::bad_request(&format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                ))),
            }
        }
    }
}

fn parse_rv(text: &str) -> Result<u64, Value> {
    text.parse::<u64>().map_err(|_| {
        status::failure(
            400,
            "BadRequest",
            &format!("resourceVersion: Invalid value: {text:?}: must be a non-negative integer"),
            None,
        )
    })
}

fn list_error(error: ListError) -> Value {
    match error {
        ListError::Expired { continuing: true } => status::continue_expired(),
        ListError::Expired { continuing: false } => status::failure(
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.",
            None,
        ),
        ListError::TooLarge { requested, current } => status::failure(
            504,
            "Timeout",
            &format!("Timeout: Too large resource version: {requested}, current: {current}"),
            Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1
            })),
        ),
    }
}

/// A continue token as kube-apiserver writes it: base64url (no padding) of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<namespace>/<name>\u0000"}`.
fn encode_continue(rv: u64, after: &Key, rt: &ResourceType) -> String {
    let start = if rt.namespaced {
        format!("{}/{}\u{0}", after.0, after.1)
    } else {
        format!("{}\u{0}", after.1)
    };
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str, rt: &ResourceType) -> Option<(u64, Key)> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    if value.get("v")?.as_str()? != "meta.k8s.io/v1" {
        return None;
    }
    let rv = value.get("rv")?.as_u64()?;
    let start = value.get("start")?.as_str()?.strip_suffix('\u{0}')?;
    let key = if rt.namespaced {
        let (ns, name) = start.split_once('/')?;
        (ns.to_owned(), name.to_owned())
    } else {
        (String::new(), start.to_owned())
    };
    Some((rv, key))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListBody<'a> {
    kind: &'a str,
    api_version: &'a str,
    metadata: Value,
    items: Vec<ListItem<'a>>,
}

/// A list item: the object without `apiVersion` and `kind`, as
/// kube-apiserver writes items of built-in types in JSON lists.
struct ListItem<'a>(&'a Value);

impl Serialize for ListItem<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_object() {
            Some(map) => {
                let mut out = serializer.serialize_map(None)?;
                for (k, v) in map
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind"))
                {
                    out.serialize_entry(k, v)?;
                }
                out.end()
            }
            None => self.0.serialize(serializer),
        }
    }
}

// ----- WATCH -----

fn watch_response(
    shared: &Arc<Shared>,
    conn: u64,
    rt: &ResourceType,
    target: &Target,
    query: &Query,
    view: View,
) -> Result<Response<Body>, Value> {
    bump(&shared.counters.watches);
    let filter = Filter::new(target, query)?;
    let timeout = match query.get("timeoutSeconds").filter(|s| !s.is_empty()) {
        Some(text) => Duration::from_secs(
            text.parse::<u64>()
                .map_err(|_| status::bad_request(&format!("invalid timeoutSeconds: {text:?}")))?,
        ),
        None => shared.default_watch_timeout,
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let rv_match = query.get("resourceVersionMatch").filter(|s| !s.is_empty());
    let rv = match query.get("resourceVersion").filter(|s| !s.is_empty()) {
        Some(text) => parse_rv(text)?,
        None => 0,
    };
    if send_initial {
        if rv_match != Some("NotOlderThan") {
            return Err(status::bad_request(
                "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(status::bad_request(
                "allowWatchBookmarks must be set to true when sendInitialEvents is set",
            ));
        }
    } else if rv_match.is_some() {
        return Err(status::bad_request(
            "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    // resourceVersion unset or "0": the current state as ADDED events first.
    let from = if send_initial || rv == 0 {
        WatchFrom::Current
    } else {
        WatchFrom::After(rv)
    };
    let start = match shared.store.watch(target.resource, from) {
        Ok(start) => start,
        Err(oldest) => {
            // The real server answers 200 and sends the 410 as an event.
            bump(&shared.counters.expired);
            let line = event_line("ERROR", &status::too_old_resource_version(rv, oldest));
            return Ok(stream_response(Full::new(line).boxed_unsync()));
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let (kind, api_version) = match view {
        View::Whole => (rt.kind, rt.api_version),
        View::Metadata => ("PartialObjectMetadata", "meta.k8s.io/v1"),
    };
    let watch = Watch {
        shared: Arc::clone(shared),
        resource: target.resource,
        kind,
        api_version,
        view,
        filter,
        bookmarks,
        send_initial,
        after: rv,
        tx,
        _guard: shared.watch_started(conn),
    };
    tokio::spawn(watch.run(start, timeout));
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Ok(stream_response(StreamBody::new(frames).boxed_unsync()))
}

/// One streaming watch.
struct Watch {
    shared: Arc<Shared>,
    resource: usize,
    kind: &'static str,
    api_version: &'static str,
    view: View,
    filter: Filter,
    bookmarks: bool,
    send_initial: bool,
    /// Only changes after this revision are sent.
    after: u64,
    tx: mpsc::Sender<Bytes>,
    _guard: WatchGuard,
}

impl Watch {
    async fn run(mut self, start: WatchStart, timeout: Duration) {
        let WatchStart {
            initial,
            replay,
            rv,
            mut feed,
        } = start;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut sent_up_to = self.after.max(rv);
        for object in &initial {
            if self.filter.matches(object) && !self.send_event("ADDED", object).await {
                return;
            }
        }
        if self.send_initial && !self.send_bookmark(rv, true).await {
            return;
        }
        for change in &replay {
            if !self.send_change(change).await {
                return;
            }
        }
        let mut ticker = tokio::time::interval(self.shared.bookmark_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut stall = self.shared.stall.subscribe();
        loop {
            let stalled = *stall.borrow_and_update();
            tokio::select! {
                _ = &mut deadline => return,
                _ = self.tx.closed() => return,
                changed = stall.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                received = feed.recv(), if !stalled => match received {
                    Ok(change) => {
                        if change.rv <= sent_up_to {
                            continue;
                        }
                        sent_up_to = change.rv;
                        if change.resource == self.resource && !self.send_change(&change).await {
                            return;
                        }
                    }
                    // Fell too far behind: close, the client resumes from
                    // its last resourceVersion (as the real server does).
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if self.bookmarks && !stalled => {
                    if let Some(rv) = self.shared.store.bookmark_rv(&feed) {
                        sent_up_to = sent_up_to.max(rv);
                        if !self.send_bookmark(sent_up_to, false).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sends what a change looks like through this watch's filter: an object
    /// that starts or stops matching is ADDED or DELETED, as in the real
    /// watch cache.
    async fn send_change(&mut self, change: &Change) -> bool {
        let now = self.filter.matches(&change.object);
        let before = change
            .previous
            .as_deref()
            .is_some_and(|p| self.filter.matches(p));
        match change.kind {
            ChangeKind::Added if now => self.send_event("ADDED", &change.object).await,
            ChangeKind::Deleted if now => self.send_event("DELETED", &change.object).await,
            ChangeKind::Modified if now && before => {
                self.send_event("MODIFIED", &change.object).await
            }
            ChangeKind::Modified if now => self.send_event("ADDED", &change.object).await,
            ChangeKind::Modified if before => {
                // The previous content with the change's resourceVersion.
                let mut gone = change.previous.as_deref().cloned().unwrap_or(Value::Null);
                if let Some(meta) = gone.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".to_owned(), json!(change.rv.to_string()));
                }
                self.send_event("DELETED", &gone).await
            }
            _ => true,
        }
    }

    async fn send_event(&mut self, kind: &str, object: &Value) -> bool {
        bump(&self.shared.counters.watch_events);
        let line = event_line(kind, &self.view.show(object));
        self.send(line).await
    }

    async fn send_bookmark(&mut self, rv: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object =
            json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": metadata});
        bump(&self.shared.counters.bookmarks);
        self.send(event_line("BOOKMARK", &object)).await
    }

    async fn send(&mut self, line: Bytes) -> bool {
        self.tx.send(line).await.is_ok()
    }
}

/// `{"type":...,"object":...}` and a newline.
fn event_line(kind: &str, object: &Value) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        object: &'a Value,
    }
    let mut line = serde_json::to_vec(&Event { kind, object }).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn stream_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    set_common_headers(response.headers_mut());
    response
}

// ----- discovery, version -----

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn discovery_document(shared: &Shared, route: Route) -> Response<Body> {
    let registry = &shared.registry;
    let group_versions = |group: &str| -> Vec<Value> {
        let mut versions: Vec<&str> = registry
            .types()
            .iter()
            .filter(|t| t.group == group)
            .map(|t| t.version)
            .collect();
        versions.dedup();
        versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect()
    };
    let api_group = |group: &str| {
        let versions = group_versions(group);
        json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": versions,
            "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
        })
    };
    let body = match route {
        Route::Root => {
            let mut paths = vec![
                "/api".to_owned(),
                "/apis".to_owned(),
                "/healthz".to_owned(),
                "/version".to_owned(),
            ];
            for t in registry.types() {
                paths.push(if t.group.is_empty() {
                    format!("/api/{}", t.version)
                } else {
                    format!("/apis/{}/{}", t.group, t.version)
                });
            }
            paths.sort();
            paths.dedup();
            json!({"paths": paths})
        }
        Route::CoreVersions => {
            let versions: Vec<&str> = if registry.serves_group("", None) {
                vec!["v1"]
            } else {
                vec![]
            };
            json!({
                "kind": "APIVersions",
                "versions": versions,
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}]
            })
        }
        Route::GroupList => {
            let mut groups: Vec<&str> = registry
                .types()
                .iter()
                .map(|t| t.group)
                .filter(|g| !g.is_empty())
                .collect();
            groups.sort_unstable();
            groups.dedup();
            json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": groups.iter().map(|g| api_group(g)).collect::<Vec<_>>()
            })
        }
        Route::Group(group) if registry.serves_group(&group, None) => api_group(&group),
        Route::ResourceList { group, version } => {
            let mut resources: Vec<Value> = Vec::new();
            for t in registry
                .types()
                .iter()
                .filter(|t| t.group == group && t.version == version)
            {
                resources.push(json!({
                    "name": t.plural,
                    "singularName": t.kind.to_ascii_lowercase(),
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }));
                for sub in t.subresources {
                    let (kind, group, version, verbs) = match *sub {
                        "token" => (
                            "TokenRequest",
                            "authentication.k8s.io",
                            "v1",
                            json!(["create"]),
                        ),
                        _ => (
                            t.kind,
                            t.group,
                            t.version,
                            json!(["get", "patch", "update"]),
                        ),
                    };
                    let mut entry = json!({
                        "name": format!("{}/{sub}", t.plural),
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "kind": kind,
                        "verbs": verbs,
                    });
                    if group != t.group || version != t.version {
                        entry["group"] = json!(group);
                        entry["version"] = json!(version);
                    }
                    resources.push(entry);
                }
            }
            let group_version = if group.is_empty() {
                version
            } else {
                format!("{group}/{version}")
            };
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
        }
        _ => return not_found_path(),
    };
    json_response(StatusCode::OK, &body)
}

// ----- responses -----

fn set_common_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    headers.insert(
        "audit-id",
        HeaderValue::from_str(&audit_id()).unwrap_or(HeaderValue::from_static("0")),
    );
}

fn audit_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn json_response<T: Serialize + ?Sized>(code: StatusCode, body: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = code;
    set_common_headers(response.headers_mut());
    response
}

fn status_response(status: &Value) -> Response<Body> {
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, status)
}

fn not_found_path() -> Response<Body> {
    status_response(&status::failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    ))
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What a server answering garbage sends: 200, JSON content type, not JSON.
fn garbage() -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(b"{\"kind\": \x00garbage<<<\n")).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// ----- query -----

/// A decoded query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Self(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter, parsed like Go's `strconv.ParseBool`.
    fn flag(&self, name: &str) -> bool {
        matches!(
            self.get(name),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse("&labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&x=%zz&y=%4");
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(q.get("y"), Some("%4"));
        assert!(!q.flag("missing"));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let rt = ResourceType::of::<Service>();
        let key = ("prod".to_owned(), "web".to_owned());
        let token = encode_continue(42, &key, &rt);
        assert_eq!(decode_continue(&token, &rt), Some((42, key)));
        assert_eq!(decode_continue("not a token", &rt), None);
    }
}
