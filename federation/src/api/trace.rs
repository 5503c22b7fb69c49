//! `POST /v1/trace`: what happens to one request, explained from the newest
//! snapshot ([`crate::trace`]) with the clusters' gateway addresses and
//! withdrawals from the store. Any token that may read the service's global
//! namespace may trace it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;

use super::auth::Principal;
use super::body::JsonObject;
use super::{ApiError, AppState};
use crate::model::{Cluster, Kind, cluster_status::ClusterStatus};
use crate::snapshot::{Snapshot, SnapshotReceiver};
use crate::store::PageRequest;
use crate::trace::{
    ClusterFacts, DnsViews, DnsViewsQuery, Trace, TraceError, TraceQuery, dns_views, trace,
};

/// `POST /v1/trace`.
pub async fn post(
    State(state): State<AppState>,
    snapshots: Option<Extension<SnapshotReceiver>>,
    Extension(principal): Extension<Principal>,
    body: JsonObject,
) -> Result<Json<Trace>, ApiError> {
    let query: TraceQuery = body.into_typed()?;
    let snapshot = snapshot_showing(snapshots, &principal, &query.host)?;
    let unknown = || ApiError::NotFound(format!("no global service {:?}", query.host));
    let clusters = cluster_facts(&state).await?;
    trace(&snapshot, &clusters, &query)
        .map(Json)
        .map_err(|e| match e {
            TraceError::UnknownService(_) => unknown(),
            TraceError::UnknownCluster(_) => ApiError::invalid_field("from", e.to_string()),
            TraceError::BadHeader(_) => ApiError::invalid_field("headers", e.to_string()),
            TraceError::BadMethod(_) => ApiError::invalid_field("method", e.to_string()),
        })
}

/// The newest snapshot, when it holds `host` and the token may see its
/// global namespace; outside the token's scope a service is as absent as
/// any other (404).
fn snapshot_showing(
    snapshots: Option<Extension<SnapshotReceiver>>,
    principal: &Principal,
    host: &str,
) -> Result<Arc<Snapshot>, ApiError> {
    let Some(Extension(rx)) = snapshots else {
        return Err(ApiError::NotReady(
            "this server compiles no snapshots".into(),
        ));
    };
    let Some(snapshot) = rx.borrow().clone() else {
        return Err(ApiError::NotReady("no snapshot built yet".into()));
    };
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    match snapshot.gateways.services.get(&name) {
        Some(service) if principal.sees(&service.gns) => Ok(snapshot),
        _ => Err(ApiError::NotFound(format!("no global service {host:?}"))),
    }
}

/// What the trace needs of every cluster: gateway addresses, withdrawal.
async fn cluster_facts(state: &AppState) -> Result<BTreeMap<String, ClusterFacts>, ApiError> {
    let mut clusters = BTreeMap::new();
    for object in state
        .store
        .list(Kind::Cluster, "", &PageRequest::default())
        .await?
        .items
    {
        let Ok(cluster) = serde_json::from_value::<Cluster>(object.spec.clone()) else {
            continue;
        };
        clusters.insert(
            object.key.name.clone(),
            ClusterFacts {
                egress: cluster.gateway.as_ref().map(|g| g.egress_address),
                public: cluster.gateway.as_ref().and_then(|g| g.public_address),
                withdrawn: ClusterStatus::of(&object.status).withdrawn(),
            },
        );
    }
    Ok(clusters)
}

/// `POST /v1/trace/dns`: the DNS answers for one name in every view (each
/// cluster's, then outside's), as `POST /v1/trace` gives them one
/// view at a time.
pub async fn dns(
    State(state): State<AppState>,
    snapshots: Option<Extension<SnapshotReceiver>>,
    Extension(principal): Extension<Principal>,
    body: JsonObject,
) -> Result<Json<DnsViews>, ApiError> {
    let query: DnsViewsQuery = body.into_typed()?;
    let snapshot = snapshot_showing(snapshots, &principal, &query.host)?;
    let clusters = cluster_facts(&state).await?;
    dns_views(&snapshot, &clusters, &query.host)
        .map(Json)
        .map_err(|_| ApiError::NotFound(format!("no global service {:?}", query.host)))
}
