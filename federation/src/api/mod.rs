//! The REST API: routes, shared state and the layers around them
//! (authentication, body limit, metrics, JSON errors for unknown routes).

pub mod auth;
mod body;
mod catalog;
pub mod config;
mod error;
mod gateways;
mod identity;
pub mod metrics;
pub mod openapi;
mod paging;
mod render;
mod resources;
mod routing;
mod telemetry;
mod tokens;
mod trace;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router, middleware};
use serde_json::json;

pub use auth::{Authenticator, Principal};
pub use body::MAX_BODY_BYTES;
pub use catalog::{EXTERNAL_CLUSTER, catalog};
pub use error::{ApiError, ErrorBody};
pub use render::{now_millis, rfc3339};

use crate::model::{AccessPolicy, Cluster, ExternalWorkload, GlobalNamespace};
use crate::snapshot::SnapshotReceiver;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Token verification.
    pub auth: Authenticator,
    /// Liveness facts (heartbeats), written in batches.
    pub beats: crate::liveness::BeatWriter,
    /// A gateway instance without a report for this long is silent.
    pub gateway_timeout: std::time::Duration,
    /// The telemetry samples this replica has read (only new ones are read again).
    pub telemetry: Arc<crate::telemetry_samples::Samples>,
}

impl AppState {
    /// The API's state over `store`; starts the heartbeat batcher on the
    /// current runtime.
    pub fn new(store: Arc<dyn Store>, auth: Authenticator) -> AppState {
        AppState {
            beats: crate::liveness::BeatWriter::spawn(Arc::clone(&store)),
            store,
            auth,
            gateway_timeout: DEFAULT_GATEWAY_TIMEOUT,
            telemetry: Arc::default(),
        }
    }

    /// Sets how long a gateway instance may go without a report.
    pub fn with_gateway_timeout(mut self, timeout: std::time::Duration) -> AppState {
        self.gateway_timeout = timeout;
        self
    }

    /// [`AppState::gateway_timeout`] in milliseconds.
    pub fn gateway_timeout_ms(&self) -> i64 {
        i64::try_from(self.gateway_timeout.as_millis()).unwrap_or(i64::MAX)
    }
}

/// `--gateway-timeout`'s default.
pub const DEFAULT_GATEWAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The complete HTTP router of `gns-federation`, serving config watches
/// (`/v1/config/…`) from `snapshots`, the receiver of
/// [`crate::snapshot::spawn_builder`].
pub fn router_with_snapshots(state: AppState, snapshots: SnapshotReceiver) -> Router {
    router(state).layer(Extension(snapshots))
}

/// The HTTP router of `gns-federation`; without a snapshot feed (see
/// [`router_with_snapshots`]) config watches answer 503.
pub fn router(state: AppState) -> Router {
    // Install the recorder before the first request so every request is counted.
    let _ = metrics::handle();
    use resources::{create, get as get_one, list, remove, replace};
    let v1 = Router::new()
        .route("/v1/clusters", get(list::<Cluster>).post(create::<Cluster>))
        .route(
            "/v1/clusters/{name}",
            get(get_one::<Cluster>)
                .put(replace::<Cluster>)
                .delete(remove::<Cluster>),
        )
        .route(
            "/v1/global-namespaces",
            get(list::<GlobalNamespace>).post(create::<GlobalNamespace>),
        )
        .route(
            "/v1/global-namespaces/{gns}",
            get(get_one::<GlobalNamespace>)
                .put(replace::<GlobalNamespace>)
                .delete(remove::<GlobalNamespace>),
        )
        .route("/v1/global-namespaces/{gns}/services", get(catalog::list))
        .route(
            "/v1/global-namespaces/{gns}/services/{svc}",
            get(catalog::get),
        )
        .route(
            "/v1/global-namespaces/{gns}/services/{svc}/routing",
            get(routing::get).put(routing::put).delete(routing::delete),
        )
        .route("/v1/global-namespaces/{gns}/routing", get(routing::list))
        .route(
            "/v1/global-namespaces/{gns}/external-workloads",
            get(list::<ExternalWorkload>).post(create::<ExternalWorkload>),
        )
        .route(
            "/v1/global-namespaces/{gns}/external-workloads/{name}",
            get(get_one::<ExternalWorkload>)
                .put(replace::<ExternalWorkload>)
                .delete(remove::<ExternalWorkload>),
        )
        .route(
            "/v1/global-namespaces/{gns}/external-workloads/{name}/heartbeat",
            put(resources::heartbeat),
        )
        .route(
            "/v1/global-namespaces/{gns}/access-policies",
            get(list::<AccessPolicy>).post(create::<AccessPolicy>),
        )
        .route(
            "/v1/global-namespaces/{gns}/access-policies/{name}",
            get(get_one::<AccessPolicy>)
                .put(replace::<AccessPolicy>)
                .delete(remove::<AccessPolicy>),
        )
        .route("/v1/clusters/{name}/gateway-instances", get(gateways::list))
        .route(
            "/v1/clusters/{name}/gateway-instances/{instance}",
            put(gateways::report),
        )
        .route(
            "/v1/clusters/{name}/join-tokens",
            post(identity::create_join_token),
        )
        .route("/v1/identity/root-rotation", post(identity::root_rotation))
        .route("/v1/identity/workloads/sign", post(identity::sign_workload))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{name}", axum::routing::delete(tokens::delete))
        .route("/v1/audit", get(tokens::audit))
        .route("/v1/config/dns", get(config::dns))
        .route("/v1/config/gateways/{cluster}", get(config::gateways))
        .route("/v1/config/status", get(config::status))
        .route("/v1/trace", post(trace::post))
        .route("/v1/trace/dns", post(trace::dns))
        .route("/v1/whoami", get(whoami))
        .route("/v1/telemetry/services", get(telemetry::services))
        .route("/v1/telemetry/links", get(telemetry::links))
        .route("/v1/telemetry/instances", get(telemetry::instances))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ));

    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .merge(crate::console::routes())
        // The join token is the credential of a signing request; the trust
        // bundle is public. Neither takes a bearer token.
        .route("/v1/identity/sign", post(identity::sign))
        .route("/v1/identity/trust-bundle", get(identity::trust_bundle))
        .merge(v1)
        .route_layer(middleware::from_fn(metrics::track))
        .fallback(|| async { ApiError::NotFound("no such route; see /openapi.json".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `GET /v1/whoami`: the token's name, role and scope (what the console
/// shows and hides).
async fn whoami(Extension(principal): Extension<auth::Principal>) -> Json<serde_json::Value> {
    Json(json!({
        "name": principal.name,
        "role": principal.role.as_str(),
        "globalNamespaces": principal.global_namespaces,
    }))
}

/// Ready when the store answers and, with a snapshot feed, the first snapshot is built.
async fn readyz(
    State(state): State<AppState>,
    snapshots: Option<Extension<crate::snapshot::SnapshotReceiver>>,
) -> impl IntoResponse {
    let version = snapshots
        .as_ref()
        .map(|Extension(rx)| rx.borrow().as_ref().map(|s| s.version));
    if version == Some(None) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": "no snapshot built yet"})),
        );
    }
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(
                json!({"status": "ready", "store": state.store.backend(), "snapshot": version.flatten()}),
            ),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not ready", "reason": "store unavailable"})),
            )
        }
    }
}

/// Prometheus text: HTTP and snapshot metrics, the in-process DNS server's
/// counters, and the gateways' traffic of the last minute (telemetry).
async fn metrics_text(
    State(state): State<AppState>,
    dns: Option<Extension<Arc<gns_dns::DnsServer>>>,
) -> impl IntoResponse {
    for (name, count) in [
        ("gns_otlp_spans_dropped_total", &gns_otlp::export::DROPPED),
        ("gns_otlp_export_failures_total", &gns_otlp::export::FAILED),
    ] {
        ::metrics::counter!(name).absolute(count.load(std::sync::atomic::Ordering::Relaxed));
    }
    let mut text = metrics::handle().render();
    if let Some(Extension(dns)) = dns {
        text.push_str(&dns.metrics_text());
    }
    text.push_str(&telemetry::metrics_text(&state).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// A query string's pairs as the handlers get them (for tests).
#[cfg(test)]
pub(crate) fn query_of(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
