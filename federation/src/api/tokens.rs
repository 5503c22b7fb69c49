//! API tokens (`/v1/tokens`; the secret is shown once, only its hash is kept)
//! and the audit log (`/v1/audit`).

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::auth::{Principal, generate_token, hash_token};
use super::body::JsonObject;
use super::paging::{continue_token, page_request};
use super::render::{list_body, rfc3339};
use super::{ApiError, AppState};
use crate::model::{Kind, Role, TokenRequest};
use crate::store::{AuditEntry, ObjectKey, StoreError, TokenRecord};

fn render_token(t: &TokenRecord) -> Value {
    let mut out = json!({"name": t.name, "role": t.role, "createdAt": rfc3339(t.created_at), "createdBy": t.created_by});
    if let Some(cluster) = &t.cluster {
        out["cluster"] = json!(cluster);
    }
    if !t.global_namespaces.is_empty() {
        out["globalNamespaces"] = json!(t.global_namespaces);
    }
    out
}

/// Checks a token request's scope: a gateway token names an existing
/// cluster, no other role names one.
async fn check_scope(state: &AppState, request: &TokenRequest) -> Result<(), ApiError> {
    // Audit rows name tokens: none may pass for the bootstrap admin (names
    // with `:`, like `system:liveness`, are not valid token names anyway).
    if request.name.as_str() == super::auth::BOOTSTRAP_ADMIN {
        return Err(ApiError::invalid_field(
            "name",
            format!("{} is reserved", super::auth::BOOTSTRAP_ADMIN),
        ));
    }
    match (request.role, request.global_namespaces.as_deref()) {
        (Role::Workload, None | Some([])) => {
            return Err(ApiError::invalid_field(
                "globalNamespaces",
                "a workload token works in some global namespaces: name them",
            ));
        }
        (Role::Admin | Role::Gateway, Some(_)) => {
            return Err(ApiError::invalid_field(
                "globalNamespaces",
                "only viewer, editor and workload tokens are limited to global namespaces",
            ));
        }
        (_, Some([])) => {
            return Err(ApiError::invalid_field(
                "globalNamespaces",
                "name at least one global namespace (omit it for an unscoped token)",
            ));
        }
        _ => {}
    }
    match (request.role, &request.cluster) {
        (Role::Gateway, None) => Err(ApiError::invalid_field(
            "cluster",
            "a gateway token belongs to one cluster: give its name",
        )),
        (Role::Gateway, Some(cluster)) => {
            let key = ObjectKey::global(Kind::Cluster, cluster.as_str());
            if state.store.get(&key).await?.is_none() {
                return Err(ApiError::invalid_field(
                    "cluster",
                    format!("no cluster {cluster} is registered"),
                ));
            }
            Ok(())
        }
        (_, Some(_)) => Err(ApiError::invalid_field(
            "cluster",
            "only a gateway token belongs to a cluster",
        )),
        (_, None) => Ok(()),
    }
}

/// `POST /v1/tokens`: returns the secret once.
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: TokenRequest = body.into_typed()?;
    check_scope(&state, &request).await?;
    let secret = generate_token()?;
    let record = state
        .store
        .create_token(
            request.name.as_str(),
            request.role,
            request.cluster.as_ref().map(|c| c.as_str()),
            &request
                .global_namespaces
                .iter()
                .flatten()
                .map(|g| g.as_str().to_owned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>(),
            &hash_token(&secret),
            &principal.name,
        )
        .await?;
    let mut out = render_token(&record);
    out["token"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /v1/tokens`.
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let page = state.store.list_tokens(&page_request(&query)?).await?;
    let items = page.items.iter().map(render_token).collect();
    Ok(Json(list_body(items, continue_token(page.next))))
}

/// `DELETE /v1/tokens/{name}`: revokes at once.
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let name = params.get("name").cloned().unwrap_or_default();
    state
        .store
        .delete_token(&name, &principal.name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::NotFound(format!("token {name} not found")),
            other => other.into(),
        })?;
    state.auth.forget(&name);
    Ok(StatusCode::NO_CONTENT)
}

fn render_audit(a: &AuditEntry) -> Value {
    json!({
        "id": a.id, "at": rfc3339(a.at), "actor": a.actor, "action": a.action,
        "kind": a.kind, "globalNamespace": if a.scope.is_empty() { Value::Null } else { Value::String(a.scope.clone()) },
        "name": a.name, "revision": a.revision,
    })
}

/// `GET /v1/audit`: newest first.
pub async fn audit(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut page = page_request(&query)?;
    if page
        .after
        .as_deref()
        .is_some_and(|a| a.parse::<i64>().is_err())
    {
        return Err(ApiError::invalid_field(
            "continue",
            "not a continue token from this server",
        ));
    }
    if page.limit.is_none() {
        page.limit = Some(100);
    }
    let result = state.store.list_audit(&page).await?;
    let items = result.items.iter().map(render_audit).collect();
    Ok(Json(list_body(items, continue_token(result.next))))
}
