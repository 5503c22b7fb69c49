//! Generic CRUD handlers for the named resources (clusters, global namespaces,
//! external workloads, access policies), and what differs per resource:
//! write-only credentials, claimed domains and server-set status.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::auth::Principal;
use super::body::JsonObject;
use super::paging::{continue_token, page_request};
use super::render::{list_body, now_millis, render_with_status, rfc3339};
use super::{ApiError, AppState};
use crate::model::{
    AccessPolicy, Cluster, Domain, ExternalWorkload, GlobalNamespace, Kind, NamedResource,
    WorkloadPhase, WorkloadStatus,
};
use crate::store::{ObjectKey, ObjectWrite, PageRequest, StoredObject};

/// Path parameters of a resource route (`gns` for scoped kinds, `name` for one object).
pub type PathParams = Path<HashMap<String, String>>;

/// What the API does differently per resource.
pub trait ApiResource: NamedResource {
    /// Moves write-only credentials out of the spec (`None`: none given).
    fn take_secret(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        Ok(None)
    }
    /// Checks a create carries what only a create must (e.g. credentials).
    fn check_create(&self, _secret: &Option<Vec<u8>>) -> Result<(), ApiError> {
        Ok(())
    }
    /// Checks a replace of `current` carries what the change needs (e.g.
    /// credentials for a new server).
    fn check_replace(
        &self,
        _current: &StoredObject,
        _secret: &Option<Vec<u8>>,
    ) -> Result<(), ApiError> {
        Ok(())
    }
    /// The domain this object claims.
    fn claimed_domain(&self) -> Option<Domain> {
        None
    }
    /// Status stored at creation.
    fn initial_status(&self, _now: i64) -> Option<Value> {
        None
    }
    /// Status as shown, from the stored status and the spec.
    fn render_status(_object: &StoredObject, stored: &Value, _now: i64) -> Value {
        stored.clone()
    }
    /// Whether the status shown includes liveness facts (see [`overlay_liveness`]).
    const LIVENESS: bool = false;
}

/// Shows the liveness facts of `objects` in their status: a workload's last
/// heartbeat (`lastHeartbeatMillis`), what a cluster's sync last reported
/// (`lastSync`, counts). They are kept apart from the stored objects, so
/// beats and sync reports make no revision.
pub async fn overlay_liveness(
    state: &AppState,
    kind: Kind,
    scope: &str,
    objects: &mut [StoredObject],
) -> Result<(), ApiError> {
    let name = match objects {
        [one] => Some(one.key.name.clone()),
        _ => None,
    };
    let facts = state
        .store
        .liveness(kind, Some(scope), name.as_deref())
        .await?;
    if kind == Kind::Cluster {
        overlay_gateway_instances(state, name.as_deref(), objects).await?;
    }
    if facts.is_empty() {
        return Ok(());
    }
    let by_name: HashMap<&str, &crate::store::Liveness> =
        facts.iter().map(|f| (f.key.name.as_str(), f)).collect();
    for object in objects {
        let Some(fact) = by_name.get(object.key.name.as_str()) else {
            continue;
        };
        let Value::Object(status) = &mut object.status else {
            continue;
        };
        if kind == Kind::ExternalWorkload {
            let stored = status
                .get("lastHeartbeatMillis")
                .and_then(Value::as_i64)
                .unwrap_or(i64::MIN);
            if fact.beat_ms > stored {
                status.insert("lastHeartbeatMillis".into(), json!(fact.beat_ms));
            }
        } else {
            if let Value::Object(data) = &fact.data {
                for (field, value) in data {
                    status.insert(field.clone(), value.clone());
                }
            }
            // When discovery last reported, whatever it said.
            status.insert("lastReportMillis".into(), json!(fact.beat_ms));
        }
    }
    Ok(())
}

/// Shows each cluster's gateway instances (`gatewayInstances`, newest
/// first) and how they stand (`gatewayHealth`) in its status.
async fn overlay_gateway_instances(
    state: &AppState,
    name: Option<&str>,
    clusters: &mut [StoredObject],
) -> Result<(), ApiError> {
    use crate::liveness::cluster::{health, instance_view};
    let facts = match name {
        Some(name) => {
            state
                .store
                .liveness(Kind::Cluster, Some(name), None)
                .await?
        }
        None => state.store.liveness(Kind::Cluster, None, None).await?,
    };
    let mut by_cluster: HashMap<&str, Vec<&crate::store::Liveness>> = HashMap::new();
    for fact in facts.iter().filter(|f| !f.key.scope.is_empty()) {
        by_cluster
            .entry(fact.key.scope.as_str())
            .or_default()
            .push(fact);
    }
    let (now, timeout) = (now_millis(), state.gateway_timeout_ms());
    for cluster in clusters {
        let mut instances = by_cluster
            .remove(cluster.key.name.as_str())
            .unwrap_or_default();
        instances.sort_by_key(|f| std::cmp::Reverse(f.beat_ms));
        let Value::Object(status) = &mut cluster.status else {
            continue;
        };
        status.insert(
            "gatewayHealth".into(),
            json!(health(&instances, now, timeout).as_str()),
        );
        status.insert(
            "gatewayInstances".into(),
            Value::Array(
                instances
                    .iter()
                    .map(|f| instance_view(f, now, timeout, false))
                    .collect(),
            ),
        );
    }
    Ok(())
}

impl ApiResource for Cluster {
    fn take_secret(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        let creds = self.take_credentials();
        if creds.is_empty() {
            return Ok(None);
        }
        serde_json::to_vec(&creds)
            .map(Some)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn check_create(&self, secret: &Option<Vec<u8>>) -> Result<(), ApiError> {
        if secret.is_none() {
            return Err(ApiError::invalid_field(
                "kubernetes.token",
                "a new cluster needs credentials: a token, or clientCertificateData with clientKeyData",
            ));
        }
        Ok(())
    }

    fn initial_status(&self, _now: i64) -> Option<Value> {
        Some(crate::model::cluster_status::registered_status())
    }

    /// Credentials follow the server: a new server or CA without them again
    /// is refused, so stored credentials are never sent where they were not
    /// given for.
    fn check_replace(
        &self,
        current: &StoredObject,
        secret: &Option<Vec<u8>>,
    ) -> Result<(), ApiError> {
        if secret.is_some() {
            return Ok(());
        }
        // Read from the stored JSON as it is (fails closed: a stored spec
        // that no longer parses still has a server to compare with).
        let stored = &current.spec["kubernetes"];
        let old_server = stored["server"].as_str().unwrap_or_default();
        let old_ca = stored["caData"].as_str();
        let new = &self.kubernetes;
        let same_server = new.server.trim_end_matches('/') == old_server.trim_end_matches('/');
        if !same_server || new.ca_data.as_deref() != old_ca {
            return Err(ApiError::invalid_field(
                "kubernetes.token",
                "the API server or its CA changed: give the credentials again (stored credentials are only sent to the server they were given for)",
            ));
        }
        Ok(())
    }

    const LIVENESS: bool = true;
}

impl ApiResource for GlobalNamespace {
    fn claimed_domain(&self) -> Option<Domain> {
        Some(self.domain.clone())
    }
}

impl ApiResource for AccessPolicy {}

impl ApiResource for ExternalWorkload {
    fn initial_status(&self, now: i64) -> Option<Value> {
        Some(json!({ "lastHeartbeatMillis": now }))
    }

    fn render_status(object: &StoredObject, stored: &Value, now: i64) -> Value {
        workload_status(object, stored, now)
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_else(|| stored.clone())
    }

    const LIVENESS: bool = true;
}

/// Liveness of an external workload at `now`, from its TTL and last heartbeat.
pub fn workload_status(object: &StoredObject, stored: &Value, now: i64) -> Option<WorkloadStatus> {
    let workload: ExternalWorkload = serde_json::from_value(object.spec.clone()).ok()?;
    let last = stored.get("lastHeartbeatMillis")?.as_i64()?;
    let ttl = i64::try_from(workload.ttl.get().as_millis()).unwrap_or(i64::MAX);
    let expires = last.saturating_add(ttl);
    Some(WorkloadStatus {
        phase: if now < expires {
            WorkloadPhase::Healthy
        } else {
            WorkloadPhase::Expired
        },
        last_heartbeat: rfc3339(last),
        expires_at: rfc3339(expires),
    })
}

/// The API form of an object of kind `R`.
pub fn render<R: ApiResource>(object: &StoredObject) -> Value {
    let status = R::render_status(object, &object.status, now_millis());
    render_with_status(object, status)
}

fn scope_of<R: ApiResource>(params: &HashMap<String, String>) -> String {
    if R::KIND.is_scoped() {
        params.get("gns").cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn key_of<R: ApiResource>(params: &HashMap<String, String>) -> ObjectKey {
    // A global namespace's own routes name it `{gns}`, like the routes inside it.
    let name_param = if R::KIND == Kind::GlobalNamespace {
        "gns"
    } else {
        "name"
    };
    ObjectKey {
        kind: R::KIND,
        scope: scope_of::<R>(params),
        name: params.get(name_param).cloned().unwrap_or_default(),
    }
}

fn not_found(key: &ObjectKey) -> ApiError {
    let what = match key.kind {
        Kind::Cluster => "cluster",
        Kind::GlobalNamespace => "global namespace",
        Kind::ExternalWorkload => "external workload",
        Kind::AccessPolicy => "access policy",
        Kind::Routing => "routing",
        Kind::Service => "service",
    };
    if key.scope.is_empty() {
        ApiError::NotFound(format!("{what} {} not found", key.name))
    } else {
        ApiError::NotFound(format!(
            "{what} {} not found in global namespace {}",
            key.name, key.scope
        ))
    }
}

/// 404 unless global namespace `gns` exists.
pub async fn require_gns(state: &AppState, gns: &str) -> Result<StoredObject, ApiError> {
    let key = ObjectKey::global(Kind::GlobalNamespace, gns);
    state.store.get(&key).await?.ok_or_else(|| not_found(&key))
}

/// Validates a body into a write of `R`, returning it with the client's resourceVersion.
pub fn parse_write<R: ApiResource>(
    mut body: JsonObject,
    key_scope: &str,
    principal: &Principal,
) -> Result<(R, ObjectWrite, Option<u64>), ApiError> {
    let expected = body.take_resource_version()?;
    let mut resource: R = body.into_typed()?;
    resource.validate()?;
    let secret = resource.take_secret()?;
    let spec = serde_json::to_value(&resource).map_err(|e| ApiError::Internal(e.to_string()))?;
    let write = ObjectWrite {
        key: ObjectKey {
            kind: R::KIND,
            scope: key_scope.to_owned(),
            name: resource.name().to_string(),
        },
        spec,
        secret,
        cluster_refs: resource.cluster_refs(),
        domain: resource.claimed_domain(),
        status: None,
        actor: principal.name.clone(),
    };
    Ok((resource, write, expected))
}

/// `GET` a collection.
pub async fn list<R: ApiResource>(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(params): PathParams,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let scope = scope_of::<R>(&params);
    if R::KIND.is_scoped() {
        require_gns(&state, &scope).await?;
    }
    let request = page_request(&query)?;
    // A scoped token lists only the global namespaces it may see; the page
    // (and its continue key) is cut from those, so no hidden name leaks.
    let scoped = match (R::KIND, &principal) {
        (Kind::GlobalNamespace, Some(Extension(p))) if !p.global_namespaces.is_empty() => Some(p),
        _ => None,
    };
    let mut page = match scoped {
        None => state.store.list(R::KIND, &scope, &request).await?,
        Some(principal) => {
            let all = PageRequest {
                limit: None,
                after: request.after.clone(),
            };
            let mut visible = state.store.list(R::KIND, &scope, &all).await?.items;
            visible.retain(|o| principal.sees(&o.key.name));
            let limit = request.limit.map_or(usize::MAX, |l| l as usize);
            let next = (visible.len() > limit).then(|| visible[limit - 1].key.name.clone());
            visible.truncate(limit);
            crate::store::Page {
                items: visible,
                next,
            }
        }
    };
    if R::LIVENESS {
        overlay_liveness(&state, R::KIND, &scope, &mut page.items).await?;
    }
    let items = page.items.iter().map(render::<R>).collect();
    Ok(Json(list_body(items, continue_token(page.next))))
}

/// `GET` one object.
pub async fn get<R: ApiResource>(
    State(state): State<AppState>,
    Path(params): PathParams,
) -> Result<Json<Value>, ApiError> {
    let key = key_of::<R>(&params);
    match state.store.get(&key).await? {
        Some(object) => {
            let mut objects = [object];
            if R::LIVENESS {
                overlay_liveness(&state, R::KIND, &key.scope, &mut objects).await?;
            }
            Ok(Json(render::<R>(&objects[0])))
        }
        None => {
            if R::KIND.is_scoped() {
                require_gns(&state, &key.scope).await?;
            }
            Err(not_found(&key))
        }
    }
}

/// `POST` to a collection: create.
pub async fn create<R: ApiResource>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(params): PathParams,
    body: JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let scope = scope_of::<R>(&params);
    let (resource, mut write, _) = parse_write::<R>(body, &scope, &principal)?;
    resource.check_create(&write.secret)?;
    let now = now_millis();
    write.status = resource.initial_status(now);
    let object = state.store.create(write).await?;
    if R::KIND == Kind::ExternalWorkload {
        // Its first beat; should this write fail, the liveness sweeper gives
        // it one from the stored status.
        if let Err(e) = state
            .beats
            .record(crate::liveness::workload_beat(&object, now))
            .await
        {
            tracing::warn!(object = %object.key, error = %e, "cannot record the first heartbeat");
        }
    }
    Ok((StatusCode::CREATED, Json(render::<R>(&object))))
}

/// `PUT` one object: replace (404 if it does not exist; 409 on a stale resourceVersion).
pub async fn replace<R: ApiResource>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(params): PathParams,
    body: JsonObject,
) -> Result<(axum::http::HeaderMap, Json<Value>), ApiError> {
    let key = key_of::<R>(&params);
    let (resource, write, expected) = parse_write::<R>(body, &key.scope, &principal)?;
    if write.key.name != key.name {
        return Err(ApiError::invalid_field(
            "name",
            format!("must match the name in the URL ({})", key.name),
        ));
    }
    if let Some(current) = state.store.get(&key).await? {
        resource.check_replace(&current, &write.secret)?;
    }
    let outcome = state
        .store
        .update(write, expected)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => not_found(&key),
            other => other.into(),
        })?;
    Ok((
        changed_header(outcome.changed),
        Json(render::<R>(&outcome.object)),
    ))
}

/// The `x-gns-changed` header: whether a PUT changed anything (`gnsctl apply` says "unchanged" on false).
pub fn changed_header(changed: bool) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::HeaderName::from_static("x-gns-changed"),
        axum::http::HeaderValue::from_static(if changed { "true" } else { "false" }),
    );
    headers
}

/// `DELETE` one object; `?resourceVersion=` makes it conditional.
pub async fn remove<R: ApiResource>(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(params): PathParams,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let key = key_of::<R>(&params);
    let expected = query
        .get("resourceVersion")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::invalid_field("resourceVersion", "must be a resourceVersion")
            })
        })
        .transpose()?;
    let object = state
        .store
        .delete(&key, expected, &principal.name)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => not_found(&key),
            other => other.into(),
        })?;
    if key.kind == Kind::Cluster {
        // Its gateway tokens went with it (in the store): not trusted from
        // this replica's cache either.
        state.auth.forget_cluster(&key.name);
    }
    Ok(Json(render::<R>(&object)))
}

/// `PUT …/external-workloads/{name}/heartbeat`: renews the workload's TTL.
/// A beat is a liveness fact (batched with concurrent beats; no revision,
/// no audit row); only the beat of an expired workload writes a revision,
/// the transition back to alive.
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(params): PathParams,
) -> Result<Json<Value>, ApiError> {
    let key = key_of::<ExternalWorkload>(&params);
    let Some(object) = state.store.get(&key).await? else {
        require_gns(&state, &key.scope).await?;
        return Err(not_found(&key));
    };
    let now = now_millis();
    state
        .beats
        .record(crate::liveness::workload_beat(&object, now))
        .await?;
    let mut object = if crate::liveness::workload_expired(&object.status) {
        crate::liveness::mark_alive(state.store.as_ref(), &key)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound(_) => not_found(&key),
                other => other.into(),
            })?
    } else {
        object
    };
    if let Value::Object(status) = &mut object.status {
        status.insert("lastHeartbeatMillis".into(), json!(now));
    }
    Ok(Json(render::<ExternalWorkload>(&object)))
}
