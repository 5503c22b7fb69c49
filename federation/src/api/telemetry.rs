//! `GET /v1/telemetry/{services,links,instances}`: the telemetry window
//! ([`crate::telemetry`]) over the traffic samples every replica reads
//! from the store, for `?window=` (default and at most 15 minutes); and
//! the same aggregates over the last minute as gauges on `/metrics`.
//! Scoped tokens read the services of their global namespaces only.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};

use super::auth::Principal;
use super::{ApiError, AppState, now_millis};
use crate::telemetry::{
    InstancesWindow, LinksWindow, MAX_WINDOW_MS, RESOLUTION_MS, ServicesWindow, Window, window,
};

/// The window a request asks for, milliseconds.
fn window_ms(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    let Some(text) = query.get("window") else {
        return Ok(MAX_WINDOW_MS);
    };
    let bad = || {
        ApiError::invalid_field(
            "window",
            format!("a duration from 10s to 15m, e.g. 5m (got {text:?})"),
        )
    };
    let ms = humantime::parse_duration(text)
        .map_err(|_| bad())?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|_| bad())?;
    if !(RESOLUTION_MS..=MAX_WINDOW_MS).contains(&ms) {
        return Err(bad());
    }
    Ok(ms)
}

/// Which services a request asks for: `?globalNamespace=` (its services),
/// with `?service=` one of them; neither, every service the token sees.
struct Only {
    global_namespace: Option<String>,
    service: Option<String>,
}

impl Only {
    fn of(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let global_namespace = query.get("globalNamespace").cloned();
        let service = query.get("service").cloned();
        if service.is_some() && global_namespace.is_none() {
            return Err(ApiError::invalid_field(
                "service",
                "needs globalNamespace too (a service is named within its global namespace)",
            ));
        }
        for (field, value) in [
            ("globalNamespace", &global_namespace),
            ("service", &service),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(ApiError::invalid_field(field, "must not be empty"));
            }
        }
        Ok(Self {
            global_namespace,
            service,
        })
    }

    fn keeps(&self, gns: &str, service: &str) -> bool {
        self.global_namespace.as_deref().is_none_or(|g| g == gns)
            && self.service.as_deref().is_none_or(|s| s == service)
    }
}

/// The window a request asks for: its length and services, and only the
/// global namespaces a scoped `principal` sees.
async fn read(
    state: &AppState,
    principal: &Principal,
    query: &HashMap<String, String>,
) -> Result<Window, ApiError> {
    let window_ms = window_ms(query)?;
    let only = Only::of(query)?;
    let now = now_millis();
    let samples = state
        .telemetry
        .read(state.store.as_ref(), now, now - window_ms)
        .await?;
    Ok(window(
        samples.iter().map(AsRef::as_ref),
        now,
        window_ms,
        |gns, service| principal.sees(gns) && only.keeps(gns, service),
    ))
}

/// `GET /v1/telemetry/services`.
pub async fn services(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<ServicesWindow>, ApiError> {
    let w = read(&state, &principal, &query).await?;
    Ok(Json(ServicesWindow {
        from_ms: w.from_ms,
        to_ms: w.to_ms,
        resolution_ms: w.resolution_ms,
        items: w.services,
    }))
}

/// `GET /v1/telemetry/links`.
pub async fn links(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<LinksWindow>, ApiError> {
    let w = read(&state, &principal, &query).await?;
    Ok(Json(LinksWindow {
        from_ms: w.from_ms,
        to_ms: w.to_ms,
        resolution_ms: w.resolution_ms,
        items: w.links,
    }))
}

/// `GET /v1/telemetry/instances`.
pub async fn instances(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<InstancesWindow>, ApiError> {
    let w = read(&state, &principal, &query).await?;
    Ok(Json(InstancesWindow {
        from_ms: w.from_ms,
        to_ms: w.to_ms,
        resolution_ms: w.resolution_ms,
        items: w.instances,
    }))
}

/// The last minute of every service and link as Prometheus gauges (with
/// `# TYPE` lines), for `/metrics`; empty when the store cannot be read.
pub async fn metrics_text(state: &AppState) -> String {
    let now = now_millis();
    let Ok(samples) = state
        .telemetry
        .read(state.store.as_ref(), now, now - 60_000)
        .await
    else {
        return String::new();
    };
    let w = window(samples.iter().map(AsRef::as_ref), now, 60_000, |_, _| true);
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in rows {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    };
    let service = |s: &crate::telemetry::ServiceTraffic| {
        format!(
            "global_namespace=\"{}\",service=\"{}\"",
            s.global_namespace, s.service
        )
    };
    family(
        "gns_telemetry_service_requests_per_second",
        "Requests per second to the service over the last minute, from every gateway's reports.",
        w.services
            .iter()
            .map(|s| (service(s), s.totals.rps))
            .collect(),
    );
    family(
        "gns_telemetry_service_error_ratio",
        "Share of the service's responses that were 5xx over the last minute.",
        w.services
            .iter()
            .map(|s| (service(s), s.totals.error_rate))
            .collect(),
    );
    family(
        "gns_telemetry_service_latency_p99_seconds",
        "99th percentile latency of the service over the last minute (from the reports' buckets).",
        w.services
            .iter()
            .filter_map(|s| s.totals.p99_ms.map(|p| (service(s), p / 1000.0)))
            .collect(),
    );
    family(
        "gns_telemetry_link_requests_per_second",
        "Requests per second from one cluster's gateway to the cluster that served them, over the last minute.",
        w.links
            .iter()
            .map(|l| {
                (
                    format!("source=\"{}\",destination=\"{}\"", l.source, l.destination),
                    l.totals.rps,
                )
            })
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::query_of as query;

    #[test]
    fn a_service_is_narrowed_to_within_its_global_namespace() {
        let all = Only::of(&query(&[])).expect("no filter");
        assert!(all.keeps("production", "web") && all.keeps("staging", "db"));
        let gns = Only::of(&query(&[("globalNamespace", "production")])).expect("gns");
        assert!(gns.keeps("production", "web") && gns.keeps("production", "db"));
        assert!(!gns.keeps("staging", "web"));
        let one = Only::of(&query(&[
            ("globalNamespace", "production"),
            ("service", "web"),
        ]))
        .expect("one service");
        assert!(one.keeps("production", "web"));
        assert!(!one.keeps("production", "db") && !one.keeps("staging", "web"));
        assert!(Only::of(&query(&[("service", "web")])).is_err());
        assert!(Only::of(&query(&[("globalNamespace", "")])).is_err());
    }
}
