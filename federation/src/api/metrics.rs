//! Prometheus metrics: one process-wide recorder, and the per-route request
//! counter and latency histogram.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's Prometheus handle, installing the recorder on first use.
/// If another recorder is installed already, metrics render empty.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Histogram samples are kept until upkeep folds them into buckets;
            // without it they pile up between scrapes. A plain thread, so it
            // does not depend on which runtime first asked for the handle.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms grow until scraped");
            }
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Where API request spans go (`--otlp-endpoint`), once set.
static TRACER: OnceLock<gns_otlp::Exporter> = OnceLock::new();

/// Exports a span per API request to `exporter`; set once, at start.
pub fn set_tracer(exporter: gns_otlp::Exporter) {
    let _ = TRACER.set(exporter);
}

/// Middleware: counts requests and records latency by method, route and
/// status; with a tracer, exports the request's span (continuing the
/// caller's `traceparent`).
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let traced = TRACER.get().map(|exporter| {
        (
            exporter,
            gns_otlp::TraceContext::of(req.headers(), exporter.ratio()),
            std::time::SystemTime::now(),
        )
    });
    let response = next.run(req).await;
    if let Some((exporter, context, started)) = traced.filter(|(_, context, _)| context.sampled) {
        use gns_otlp::Value::{Int, Text};
        let status = response.status().as_u16();
        exporter.record(gns_otlp::Span {
            context,
            name: format!("{method} {route}"),
            kind: gns_otlp::Kind::Server,
            start: started,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("http.request.method", Text(method.clone())),
                ("http.route", Text(route.clone())),
                ("http.response.status_code", Int(i64::from(status))),
            ],
            error: status >= 500,
        });
    }
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("gns_http_requests_total", &labels).increment(1);
    metrics::histogram!("gns_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}
