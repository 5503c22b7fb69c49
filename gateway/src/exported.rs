//! The gateway's process-wide series on `/metrics`: one metrics system (the
//! `metrics` facade and its Prometheus exporter) renders every series with
//! its `# HELP` and `# TYPE` lines. The gateway's own counters stay atomics
//! in [`crate::proxy::Counters`] (its reports and tests read them); before
//! each scrape [`publish`] hands their values to the exporter.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proxy::Gateway;

/// Counters of [`crate::proxy::Counters`]: name, help, how to read it.
type CounterSeries = (&'static str, &'static str, fn(&Gateway) -> &AtomicU64);

const COUNTERS: [CounterSeries; 13] = [
    (
        "gns_gateway_egress_requests_total",
        "Requests from clients in this cluster.",
        |g| &g.counters.egress_requests,
    ),
    (
        "gns_gateway_public_requests_total",
        "Requests on the public entry.",
        |g| &g.counters.public_requests,
    ),
    (
        "gns_gateway_ingress_requests_total",
        "Requests and tunnels from peer gateways.",
        |g| &g.counters.ingress_requests,
    ),
    (
        "gns_gateway_peer_tries_total",
        "Tries sent to peer gateways.",
        |g| &g.counters.peer_tries,
    ),
    (
        "gns_gateway_local_tries_total",
        "Tries sent to local endpoints.",
        |g| &g.counters.local_tries,
    ),
    (
        "gns_gateway_retries_total",
        "Tries after a failed try.",
        |g| &g.counters.retries,
    ),
    (
        "gns_gateway_mtls_refused_total",
        "Peer connections refused at the mTLS handshake.",
        |g| &g.counters.mtls_refused,
    ),
    (
        "gns_gateway_access_denied_total",
        "Requests and connections refused by access policy.",
        |g| &g.counters.access_denied,
    ),
    (
        "gns_gateway_ejections_total",
        "Local endpoints ejected by outlier detection.",
        |g| &g.counters.ejections,
    ),
    (
        "gns_gateway_tcp_connections_total",
        "TCP connections accepted for passthrough.",
        |g| &g.counters.tcp_connections,
    ),
    (
        "gns_gateway_cert_renewals_total",
        "Gateway certificates renewed.",
        |g| &g.counters.cert_renewals,
    ),
    (
        "gns_gateway_trust_bundle_updates_total",
        "Trust bundles installed after start.",
        |g| &g.counters.bundle_updates,
    ),
    (
        "gns_gateway_trust_bundle_refusals_total",
        "Trust bundles refused (none of the current roots in them).",
        |g| &g.counters.bundle_refusals,
    ),
];

/// Describes every series the gateway exports (`# HELP`) and starts the
/// labelled counters at 0 for every label value (a dashboard's rate is 0,
/// not missing, until the first refusal); call once, after the exporter is
/// installed.
pub fn describe() {
    for reason in crate::refusal::Refusal::LABELS {
        metrics::counter!("gns_gateway_refusals_total", "reason" => reason).increment(0);
    }
    for reason in crate::ingress::IngressEnd::REFUSAL_REASONS {
        metrics::counter!("gns_gateway_mtls_handshake_failures_total", "reason" => reason)
            .increment(0);
    }
    metrics::describe_counter!(
        "gns_gateway_mtls_handshake_failures_total",
        "Peer connections refused at the ingress, by reason."
    );
    for (name, help, _) in COUNTERS {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_gauge!(
        "gns_gateway_trust_roots",
        "Roots in the trust bundle in use."
    );
    metrics::describe_gauge!(
        "gns_gateway_config_version",
        "Version of the config in use (0: none yet)."
    );
    metrics::describe_gauge!(
        "gns_gateway_buffered_bytes",
        "Request-body bytes kept for retries now."
    );
    metrics::describe_gauge!(
        "gns_gateway_buffer_budget_bytes",
        "Request-body bytes all requests may keep for retries (--buffer-budget)."
    );
    metrics::describe_counter!(
        "gns_gateway_buffer_budget_refusals_total",
        "Bodies the buffer budget had no room for (they streamed, not retried)."
    );
    metrics::describe_counter!(
        "gns_otlp_spans_dropped_total",
        "Spans dropped because the export queue was full (--otlp-endpoint)."
    );
    metrics::describe_counter!(
        "gns_otlp_export_failures_total",
        "Span batches the OTLP collector did not take."
    );
    metrics::describe_counter!(
        "gns_gateway_refusals_total",
        "Requests and connections the gateway ended itself, by reason."
    );
    metrics::describe_counter!(
        "gns_gateway_unreplayable_requests_total",
        "Bodies a retry could have used that streamed instead, by reason."
    );
}

/// Hands the gateway's counters and state to the exporter (before a scrape).
pub fn publish(gateway: &Gateway) {
    for (name, _, read) in COUNTERS {
        metrics::counter!(name).absolute(read(gateway).load(Ordering::Relaxed));
    }
    let roots = gateway.identity().map_or(0, |i| i.roots.len());
    metrics::gauge!("gns_gateway_trust_roots").set(roots as f64);
    let version = gateway.config().map_or(0, |c| c.version);
    metrics::gauge!("gns_gateway_config_version").set(version as f64);
    let otlp = [
        ("gns_otlp_spans_dropped_total", &gns_otlp::export::DROPPED),
        ("gns_otlp_export_failures_total", &gns_otlp::export::FAILED),
    ];
    for (name, count) in otlp {
        metrics::counter!(name).absolute(count.load(Ordering::Relaxed));
    }
    for (name, value) in gateway.buffer_budget().metrics() {
        if name.ends_with("_total") {
            metrics::counter!(name).absolute(value);
        } else {
            metrics::gauge!(name).set(value as f64);
        }
    }
}
