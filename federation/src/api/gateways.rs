//! Gateway instances: a gateway's report of itself every few seconds
//! (`PUT /v1/clusters/{name}/gateway-instances/{instance}`, by that
//! cluster's gateway token or an admin) is a liveness fact, not a revision;
//! `GET /v1/clusters/{name}/gateway-instances` shows what each instance
//! last said, its traffic included. The cluster's status shows the
//! instances without their traffic (see `resources::overlay_liveness`).

use axum::Json;
use axum::extract::{Path, State};
use gns_contract::report::{BUCKETS, INSTANCE_NAME_RULE, MAX_RECORDS, Report, valid_instance_name};
use serde_json::{Value, json};

use super::body::JsonObject;
use super::resources::PathParams;
use super::{ApiError, AppState, now_millis};
use crate::liveness::cluster as gateway_liveness;
use crate::model::Kind;
use crate::store::ObjectKey;

/// Checks an instance name (a pod or host name).
fn check_instance(name: &str) -> Result<(), ApiError> {
    if valid_instance_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid_field("instance", INSTANCE_NAME_RULE))
    }
}

/// Checks what the types cannot.
fn check_report(report: &Report) -> Result<(), ApiError> {
    if report.version.is_empty() || report.version.len() > 64 {
        return Err(ApiError::invalid_field("version", "1 to 64 characters"));
    }
    if let Some(at) = &report.certificate_expires_at
        && humantime::parse_rfc3339_weak(at).is_err()
    {
        return Err(ApiError::invalid_field(
            "certificateExpiresAt",
            "an RFC 3339 time, e.g. 2026-12-07T10:00:00Z",
        ));
    }
    if report.traffic.len() > MAX_RECORDS {
        return Err(ApiError::invalid_field(
            "traffic",
            format!("at most {MAX_RECORDS} records"),
        ));
    }
    // Counts of one interval need not add up exactly: a request counted
    // while the gateway drained its tallies may have its class in one report
    // and its latency in the next.
    for (i, record) in report.traffic.iter().enumerate() {
        if record.latency_buckets.len() != BUCKETS {
            return Err(ApiError::invalid_field(
                format!("traffic[{i}].latencyBuckets"),
                format!("{BUCKETS} counts, one per bucket"),
            ));
        }
        if record.responses.total() != Some(record.requests) {
            return Err(ApiError::invalid_field(
                format!("traffic[{i}].requests"),
                "must equal the sum of responses",
            ));
        }
    }
    Ok(())
}

/// `PUT /v1/clusters/{name}/gateway-instances/{instance}`: records a report.
pub async fn report(
    State(state): State<AppState>,
    Path(params): PathParams,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    let cluster = params.get("name").cloned().unwrap_or_default();
    let instance = params.get("instance").cloned().unwrap_or_default();
    check_instance(&instance)?;
    let report: Report = body.into_typed()?;
    check_report(&report)?;
    let key = ObjectKey::global(Kind::Cluster, cluster.clone());
    let Some(object) = state.store.get(&key).await? else {
        return Err(ApiError::NotFound(format!("cluster {cluster} not found")));
    };
    let now = now_millis();
    // The traffic also goes to the telemetry window every replica reads.
    if !report.traffic.is_empty() {
        let sample = crate::store::TelemetrySample {
            cluster: cluster.clone(),
            instance: instance.clone(),
            at_ms: now,
            interval_ms: i64::try_from(report.interval_millis).unwrap_or(i64::MAX),
            traffic: report.traffic.clone(),
        };
        state.store.record_telemetry(&sample).await?;
    }
    let data = serde_json::to_value(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
    let fact = gateway_liveness::instance_report(
        &cluster,
        &instance,
        data,
        now,
        state.gateway_timeout_ms(),
    );
    let view = gateway_liveness::instance_view(&fact, now, state.gateway_timeout_ms(), false);
    state.beats.record(fact).await?;
    gateway_liveness::reported(state.store.as_ref(), &object).await?;
    metrics::counter!("gns_gateway_reports_received_total").increment(1);
    Ok(Json(view))
}

/// `GET /v1/clusters/{name}/gateway-instances`: every instance as it last
/// reported, newest first.
pub async fn list(
    State(state): State<AppState>,
    Path(params): PathParams,
) -> Result<Json<Value>, ApiError> {
    let cluster = params.get("name").cloned().unwrap_or_default();
    let key = ObjectKey::global(Kind::Cluster, cluster.clone());
    if state.store.get(&key).await?.is_none() {
        return Err(ApiError::NotFound(format!("cluster {cluster} not found")));
    }
    let mut facts = state
        .store
        .liveness(Kind::Cluster, Some(&cluster), None)
        .await?;
    facts.sort_by_key(|f| std::cmp::Reverse(f.beat_ms));
    let now = now_millis();
    let timeout = state.gateway_timeout_ms();
    let refs: Vec<_> = facts.iter().collect();
    let items: Vec<Value> = facts
        .iter()
        .map(|f| gateway_liveness::instance_view(f, now, timeout, true))
        .collect();
    Ok(Json(json!({
        "cluster": cluster,
        "gatewayHealth": gateway_liveness::health(&refs, now, timeout).as_str(),
        "items": items,
    })))
}
