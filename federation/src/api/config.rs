//! Config distribution to the data planes: `GET /v1/config/dns?after=V`, the
//! long-poll by which DNS replicas (`gns-dns`) follow the compiled zone snapshot.
//!
//! The handler reads the snapshot feed (a `tokio::sync::watch` receiver of
//! the builder, installed with [`super::router_with_snapshots`]); it never
//! touches the store. A snapshot newer than `after` is answered at once with
//! its pre-encoded JSON; otherwise the request waits for one until `timeout`
//! seconds pass and then answers `304 Not Modified`.

use std::collections::HashMap;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::{ApiError, AppState};
use crate::snapshot::{Snapshot, SnapshotReceiver};

/// Wait when `timeout` is not given, seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Longest accepted `timeout`, seconds.
pub const MAX_TIMEOUT_SECS: u64 = 60;
/// Response header carrying the snapshot version.
pub const VERSION_HEADER: &str = "x-gns-snapshot-version";

fn parse_query(query: &HashMap<String, String>) -> Result<(Option<u64>, Duration), ApiError> {
    let after = match query.get("after") {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::invalid_field(
                "after",
                "must be a snapshot version (a non-negative integer)",
            )
        })?),
    };
    let timeout = match query.get("timeout") {
        None => DEFAULT_TIMEOUT_SECS,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|t| *t <= MAX_TIMEOUT_SECS)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "timeout",
                    format!("must be whole seconds from 0 to {MAX_TIMEOUT_SECS}"),
                )
            })?,
    };
    Ok((after, Duration::from_secs(timeout)))
}

/// What a config watch serves of a snapshot: the DNS zones or the gateway
/// config, each with the version at which it last changed.
#[derive(Debug, Clone, Copy)]
enum Output {
    Dns,
    Gateways,
}

impl Output {
    fn version(self, snapshot: &Snapshot) -> u64 {
        match self {
            Output::Dns => snapshot.dns.version,
            Output::Gateways => snapshot.gateways.version,
        }
    }

    fn encode(self, snapshot: &Snapshot) -> Result<bytes::Bytes, crate::snapshot::SnapshotError> {
        match self {
            Output::Dns => snapshot.dns_json(),
            Output::Gateways => snapshot.gateways_json(),
        }
    }
}

fn snapshot_response(snapshot: &Snapshot, output: Output) -> Result<Response, ApiError> {
    let body = output
        .encode(snapshot)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            HeaderName::from_static(VERSION_HEADER),
            HeaderValue::from(output.version(snapshot)),
        ),
    ];
    Ok((StatusCode::OK, headers, body).into_response())
}

/// The current snapshot if its `output` is newer than `after` (any, without `after`).
fn newer(
    rx: &mut SnapshotReceiver,
    after: Option<u64>,
    output: Output,
) -> Option<std::sync::Arc<Snapshot>> {
    rx.borrow_and_update()
        .as_ref()
        .filter(|s| after.is_none_or(|a| output.version(s) > a))
        .cloned()
}

/// The long-poll shared by the config watches: `encode(snapshot)` as soon as
/// a snapshot newer than `after` exists, `304` when none came within
/// `timeout`, `503` when none has been built at all.
async fn long_poll(
    snapshots: Option<Extension<SnapshotReceiver>>,
    query: &HashMap<String, String>,
    output: Output,
) -> Result<Response, ApiError> {
    let (after, timeout) = parse_query(query)?;
    let Some(Extension(mut rx)) = snapshots else {
        return Err(ApiError::NotReady(
            "this server does not build snapshots".into(),
        ));
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(snapshot) = newer(&mut rx, after, output) {
            return snapshot_response(&snapshot, output);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // Timed out, or the builder stopped (shutting down): answer with what there is.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    if let Some(snapshot) = newer(&mut rx, after, output) {
        return snapshot_response(&snapshot, output);
    }
    if rx.borrow().is_some() {
        Ok(StatusCode::NOT_MODIFIED.into_response())
    } else {
        Err(ApiError::NotReady(
            "no snapshot has been built yet; retry later".into(),
        ))
    }
}

/// `GET /v1/config/dns?after=V&timeout=S`: the zone snapshot (JSON) when its
/// version (the revision at which the zones last changed) is newer than `V`, else `304` after waiting up to `S` seconds
/// (default 30, at most 60) for one. `503` when no snapshot has been built
/// within the wait, or this server builds none.
pub async fn dns(
    snapshots: Option<Extension<SnapshotReceiver>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    long_poll(snapshots, &query, Output::Dns).await
}

/// `GET /v1/config/gateways/{cluster}`: the gateway config, long-polled like
/// `GET /v1/config/dns` (compiled from the same snapshot, so DNS and routing
/// agree; its version moves only when the config changed).
/// `404` for a cluster that is not registered.
pub async fn gateways(
    State(state): State<AppState>,
    snapshots: Option<Extension<SnapshotReceiver>>,
    Path(params): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let cluster = params.get("cluster").cloned().unwrap_or_default();
    let key = crate::store::ObjectKey::global(crate::model::Kind::Cluster, cluster.clone());
    if state.store.get(&key).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "cluster {cluster} is not registered"
        )));
    }
    long_poll(snapshots, &query, Output::Gateways).await
}

/// `GET /v1/config/status`: the current snapshot's version and the objects left
/// out of it, with why (the operator's view of what did not compile).
pub async fn status(
    snapshots: Option<Extension<SnapshotReceiver>>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let Some(Extension(rx)) = snapshots else {
        return Err(ApiError::NotReady(
            "this server compiles no snapshots".into(),
        ));
    };
    let current = rx.borrow().clone();
    let Some(snapshot) = current else {
        return Err(ApiError::NotReady("no snapshot built yet".into()));
    };
    let problems: Vec<serde_json::Value> = snapshot
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "kind": p.kind.as_str(),
                "globalNamespace": if p.scope.is_empty() { None } else { Some(&p.scope) },
                "name": p.name,
                "message": p.message,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({
        "version": snapshot.version,
        "zones": snapshot.dns.zones.len(),
        "problems": problems,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::query_of as query;

    #[test]
    fn query_defaults_and_limits() {
        let (after, timeout) = parse_query(&query(&[])).expect("ok");
        assert_eq!(after, None);
        assert_eq!(timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        let (after, timeout) =
            parse_query(&query(&[("after", "7"), ("timeout", "60")])).expect("ok");
        assert_eq!(after, Some(7));
        assert_eq!(timeout, Duration::from_secs(60));
        for (field, value) in [
            ("after", "-1"),
            ("after", "x"),
            ("timeout", "61"),
            ("timeout", "1.5"),
        ] {
            match parse_query(&query(&[(field, value)])) {
                Err(ApiError::Invalid { details, .. }) => assert_eq!(details[0].field, field),
                other => panic!("{field}={value}: {other:?}"),
            }
        }
    }
}
