//! The discovered-service catalog of a global namespace: services found in
//! member clusters (written by discovery sync) merged with the external
//! workloads that are alive, which appear under the pseudo-cluster `external`.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::Value;

use super::paging::{continue_token, page_request};
use super::render::list_body;
use super::resources::{PathParams, require_gns};
use super::{ApiError, AppState};
use crate::model::{DiscoveredService, Endpoint, ExternalWorkload, Kind, Name, WorkloadPort};
use crate::store::{PageRequest, Store, StoreError};

/// Pseudo-cluster under which external workloads are listed.
pub const EXTERNAL_CLUSTER: &str = "external";

/// Every service of global namespace `gns`, by name.
pub async fn catalog(
    store: &dyn Store,
    gns: &str,
) -> Result<BTreeMap<String, DiscoveredService>, StoreError> {
    let all = PageRequest::default();
    let mut services: BTreeMap<String, DiscoveredService> = BTreeMap::new();
    for object in store.list(Kind::Service, gns, &all).await?.items {
        // One object per service and cluster (`<service>.<cluster>`): merge by service.
        match serde_json::from_value::<DiscoveredService>(object.spec) {
            Ok(svc) => match services.get_mut(svc.name.as_str()) {
                Some(merged) => {
                    merge_ports(&mut merged.ports, &svc.ports);
                    merged.clusters.extend(svc.clusters);
                }
                None => {
                    services.insert(svc.name.to_string(), svc);
                }
            },
            Err(e) => {
                tracing::warn!(gns, service = %object.key.name, error = %e, "skipping unreadable service")
            }
        }
    }
    mark_stale_clusters(store, &mut services).await?;
    for object in store.list(Kind::ExternalWorkload, gns, &all).await?.items {
        // As DNS has it: the recorded liveness state, not the beats.
        let alive = !crate::liveness::workload_expired(&object.status);
        let Ok(workload) = serde_json::from_value::<ExternalWorkload>(object.spec) else {
            continue;
        };
        if !alive {
            continue;
        }
        let entry = services
            .entry(workload.service.to_string())
            .or_insert_with(|| DiscoveredService {
                name: workload.service.clone(),
                ports: Vec::new(),
                clusters: Default::default(),
            });
        merge_ports(&mut entry.ports, &workload.ports);
        entry
            .clusters
            .entry(EXTERNAL_CLUSTER.to_owned())
            .or_default()
            .ready
            .push(Endpoint {
                address: workload.address,
                zone: workload.labels.get("zone").cloned(),
                source: Some(workload.name.to_string()),
                labels: workload.labels.clone(),
            });
    }
    Ok(services)
}

/// Marks the endpoints of clusters whose API is unreachable as `stale`, and
/// as `withdrawn` once the snapshot builder has recorded their withdrawal;
/// those of clusters whose gateways all went silent as `gatewaysSilent`
/// (out of other clusters' and outside clients' answers).
async fn mark_stale_clusters(
    store: &dyn Store,
    services: &mut BTreeMap<String, DiscoveredService>,
) -> Result<(), StoreError> {
    // Cluster → (stale, withdrawn, gateways silent).
    let mut marks: HashMap<String, (bool, bool, bool)> = HashMap::new();
    for object in store
        .list(Kind::Cluster, "", &PageRequest::default())
        .await?
        .items
    {
        let status = crate::model::ClusterStatus::of(&object.status);
        let mark = (
            status.unreachable(),
            status.withdrawn(),
            status.gateways_silent(),
        );
        if mark != (false, false, false) {
            marks.insert(object.key.name.clone(), mark);
        }
    }
    if marks.is_empty() {
        return Ok(());
    }
    for svc in services.values_mut() {
        for (cluster, endpoints) in &mut svc.clusters {
            if let Some(&(stale, withdrawn, silent)) = marks.get(cluster) {
                endpoints.stale = stale;
                endpoints.withdrawn = withdrawn;
                endpoints.gateways_silent = silent;
            }
        }
    }
    Ok(())
}

fn merge_ports(ports: &mut Vec<WorkloadPort>, more: &[WorkloadPort]) {
    for p in more {
        if !ports.iter().any(|q| q.name == p.name) {
            ports.push(p.clone());
        }
    }
}

fn to_json(svc: &DiscoveredService) -> Result<Value, ApiError> {
    serde_json::to_value(svc).map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /v1/global-namespaces/{gns}/services`.
pub async fn list(
    State(state): State<AppState>,
    Path(params): PathParams,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let gns = params.get("gns").cloned().unwrap_or_default();
    require_gns(&state, &gns).await?;
    let page = page_request(&query)?;
    let services = catalog(state.store.as_ref(), &gns).await?;
    let after = page.after.unwrap_or_default();
    let mut items = Vec::new();
    let mut next = None;
    let mut last_name = None;
    let remaining =
        services.range::<String, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded));
    for (name, svc) in remaining {
        if page.limit.is_some_and(|l| items.len() >= l as usize) {
            next = last_name;
            break;
        }
        items.push(to_json(svc)?);
        last_name = Some(name.clone());
    }
    Ok(Json(list_body(items, continue_token(next))))
}

/// `GET /v1/global-namespaces/{gns}/services/{svc}`.
pub async fn get(
    State(state): State<AppState>,
    Path(params): PathParams,
) -> Result<Json<Value>, ApiError> {
    let gns = params.get("gns").cloned().unwrap_or_default();
    let svc = params.get("svc").cloned().unwrap_or_default();
    require_gns(&state, &gns).await?;
    let services = catalog(state.store.as_ref(), &gns).await?;
    let found = Name::try_from(svc.clone())
        .ok()
        .and_then(|n| services.get(n.as_str()))
        .ok_or_else(|| {
            ApiError::NotFound(format!("service {svc} not found in global namespace {gns}"))
        })?;
    Ok(Json(to_json(found)?))
}
