//! Routing of one service (`…/services/{svc}/routing`): get, create-or-replace, delete,
//! and a list per global namespace. A routing may name a service not discovered yet.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::auth::Principal;
use super::body::JsonObject;
use super::paging::{continue_token, page_request};
use super::render::{list_body, render_with_status};
use super::resources::{PathParams, changed_header, require_gns};
use super::{ApiError, AppState};
use crate::model::{Kind, Name, Resource, Routing};
use crate::store::{ObjectKey, ObjectWrite, StoreError, StoredObject};

fn render(object: &StoredObject) -> Value {
    let mut value = render_with_status(object, object.status.clone());
    if let Some(map) = value.as_object_mut() {
        map.insert("service".into(), Value::String(object.key.name.clone()));
    }
    value
}

fn routing_key(params: &HashMap<String, String>) -> Result<ObjectKey, ApiError> {
    let gns = params.get("gns").cloned().unwrap_or_default();
    let svc = params.get("svc").cloned().unwrap_or_default();
    Name::try_from(svc.clone()).map_err(|e| ApiError::invalid_field("service", e))?;
    Ok(ObjectKey::scoped(Kind::Routing, gns, svc))
}

fn not_found(key: &ObjectKey) -> ApiError {
    ApiError::NotFound(format!(
        "no routing for service {} in global namespace {}",
        key.name, key.scope
    ))
}

/// `GET …/services/{svc}/routing`.
pub async fn get(
    State(state): State<AppState>,
    snapshots: Option<Extension<crate::snapshot::SnapshotReceiver>>,
    Path(params): PathParams,
) -> Result<Json<Value>, ApiError> {
    let key = routing_key(&params)?;
    match state.store.get(&key).await? {
        Some(object) => {
            let mut out = render(&object);
            // Why the compiler left it out (e.g. a split to a cluster without
            // a gateway), as of the newest snapshot; other routes are unaffected.
            if let Some(Extension(rx)) = snapshots
                && let Some(snapshot) = rx.borrow().clone()
            {
                let problems: Vec<&str> = snapshot
                    .problems
                    .iter()
                    .filter(|p| p.kind == key.kind && p.scope == key.scope && p.name == key.name)
                    .map(|p| p.message.as_str())
                    .collect();
                // What each destination reaches, by the compiled config:
                // one selecting no ready endpoint is named in `unmatched`.
                let reach = serde_json::from_value::<Routing>(object.spec.clone())
                    .ok()
                    .zip(
                        snapshot
                            .gateways
                            .services
                            .values()
                            .find(|s| s.gns == key.scope && s.service == key.name),
                    )
                    .map(|(routing, service)| crate::snapshot::reach::reach(&routing, service))
                    .unwrap_or_default();
                let unmatched: Vec<String> = reach
                    .iter()
                    .filter(|r| r.ready_endpoints == 0)
                    .map(crate::snapshot::reach::DestinationReach::unmatched)
                    .collect();
                if !out.get("status").is_some_and(Value::is_object) {
                    out["status"] = serde_json::json!({});
                }
                if let Some(status) = out.get_mut("status").and_then(Value::as_object_mut) {
                    status.insert("snapshotVersion".into(), snapshot.version.into());
                    status.insert("problems".into(), problems.into());
                    status.insert("destinations".into(), serde_json::json!(reach));
                    status.insert("unmatched".into(), unmatched.into());
                }
            }
            Ok(Json(out))
        }
        None => {
            require_gns(&state, &key.scope).await?;
            Err(not_found(&key))
        }
    }
}

/// `PUT …/services/{svc}/routing`: creates (201) or replaces (200).
pub async fn put(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(params): PathParams,
    mut body: JsonObject,
) -> Result<(StatusCode, axum::http::HeaderMap, Json<Value>), ApiError> {
    let key = routing_key(&params)?;
    let expected = body.take_resource_version()?;
    // `service` is output-only (the URL names the service); accept it if it matches.
    if let Some(svc) = body.0.remove("service")
        && svc.as_str() != Some(key.name.as_str())
    {
        return Err(ApiError::invalid_field(
            "service",
            "must match the service in the URL",
        ));
    }
    let routing: Routing = body.into_typed()?;
    routing.validate()?;
    let write = ObjectWrite {
        key: key.clone(),
        spec: serde_json::to_value(&routing).map_err(|e| ApiError::Internal(e.to_string()))?,
        secret: None,
        cluster_refs: routing.cluster_refs(),
        domain: None,
        status: None,
        actor: principal.name.clone(),
    };
    match state.store.update(write.clone(), expected).await {
        Ok(outcome) => Ok((
            StatusCode::OK,
            changed_header(outcome.changed),
            Json(render(&outcome.object)),
        )),
        Err(StoreError::NotFound(_)) if expected.is_none() => {
            let object = state.store.create(write).await?;
            Ok((
                StatusCode::CREATED,
                changed_header(true),
                Json(render(&object)),
            ))
        }
        Err(StoreError::NotFound(_)) => {
            require_gns(&state, &key.scope).await?;
            Err(not_found(&key))
        }
        Err(e) => Err(e.into()),
    }
}

/// `DELETE …/services/{svc}/routing`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(params): PathParams,
) -> Result<Json<Value>, ApiError> {
    let key = routing_key(&params)?;
    let object = state
        .store
        .delete(&key, None, &principal.name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => not_found(&key),
            other => other.into(),
        })?;
    Ok(Json(render(&object)))
}

/// `GET /v1/global-namespaces/{gns}/routing`: every routing object of a global namespace.
pub async fn list(
    State(state): State<AppState>,
    Path(params): PathParams,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let gns = params.get("gns").cloned().unwrap_or_default();
    require_gns(&state, &gns).await?;
    let page = state
        .store
        .list(Kind::Routing, &gns, &page_request(&query)?)
        .await?;
    let items = page.items.iter().map(render).collect();
    Ok(Json(list_body(items, continue_token(page.next))))
}
