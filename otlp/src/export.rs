//! Spans to an OTLP/HTTP collector (`POST <endpoint>/v1/traces`, protobuf
//! `ExportTraceServiceRequest`). A span is handed to a bounded queue and
//! never waited for: a task of its own sends the queue in batches (every
//! [`FLUSH_EVERY`], or as soon as [`BATCH`] spans wait); a span that finds
//! the queue full is dropped and counted ([`DROPPED`]),
//! and a batch the collector refuses is logged and counted
//! ([`FAILED`]), so a slow or absent collector costs
//! requests nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use prost::Message;
use tokio::sync::mpsc;

use crate::TraceContext;

/// Spans that may wait to be sent.
const QUEUE: usize = 8_192;
/// Spans per request to the collector at most.
const BATCH: usize = 512;
/// How often waiting spans are sent.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// What a span's attribute holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
}

/// The role of a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// It served a request that came in.
    Server,
    /// It sent a request out.
    Client,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Where it stands in its trace.
    pub context: TraceContext,
    /// Its name, e.g. `egress web.production`.
    pub name: String,
    /// Its role.
    pub kind: Kind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// Whether it ended in an error (a 5xx, a refusal).
    pub error: bool,
}

/// Why an exporter could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The endpoint is not an http(s) URL.
    #[error("--otlp-endpoint {0:?} is not an http:// or https:// URL")]
    BadEndpoint(String),
    /// The HTTP client could not be built.
    #[error("OTLP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Where finished spans go; cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Span>,
    /// Share of new traces sampled (a caller's decision is kept).
    ratio: f64,
}

impl Exporter {
    /// An exporter sending to `endpoint` (its `/v1/traces`) as service
    /// `service` (resource attribute `service.name`), sampling new traces
    /// with probability `ratio`; its task runs on the current runtime.
    pub fn spawn(
        endpoint: &str,
        service: &str,
        ratio: f64,
        client: reqwest::Client,
    ) -> Result<Exporter, ExporterError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ExporterError::BadEndpoint(endpoint.to_owned()));
        }
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(spans, url, service.to_owned(), client));
        Ok(Exporter {
            queue,
            ratio: ratio.clamp(0.0, 1.0),
        })
    }

    /// The share of new traces sampled.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Queues `span` for export (sampled ones only; dropped when full).
    pub fn record(&self, span: Span) {
        if !span.context.sampled {
            return;
        }
        if self.queue.try_send(span).is_err() {
            metrics_dropped();
        }
    }
}

fn metrics_dropped() {
    tracing::debug!("OTLP queue full: a span was dropped");
    DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Spans dropped because the queue was full (`gns_otlp_spans_dropped_total`
/// on the binaries' `/metrics`).
pub static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Batches the collector did not take (`gns_otlp_export_failures_total`).
pub static FAILED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends what arrives on `spans` in batches until every sender is gone.
async fn send_batches(
    mut spans: mpsc::Receiver<Span>,
    url: String,
    service: String,
    client: reqwest::Client,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        let open = tokio::select! {
            got = spans.recv_many(&mut batch, BATCH) => got > 0,
            _ = tick.tick() => true,
        };
        if batch.len() >= BATCH || (!batch.is_empty() && (!open || spans.is_empty())) {
            let body = encode(&service, &batch).encode_to_vec();
            batch.clear();
            let sent = client
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = sent {
                FAILED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(error = %e, "OTLP export failed");
            }
        }
        if !open && spans.is_closed() && spans.is_empty() {
            return;
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn key_value(key: &str, value: &Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(match value {
                Value::Text(t) => any_value::Value::StringValue(t.clone()),
                Value::Int(i) => any_value::Value::IntValue(*i),
            }),
        }),
        ..Default::default()
    }
}

/// The OTLP request carrying `spans` of `service`.
pub fn encode(service: &str, spans: &[Span]) -> ExportTraceServiceRequest {
    let spans = spans
        .iter()
        .map(|s| opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: s.context.trace_id.to_vec(),
            span_id: s.context.span_id.to_vec(),
            parent_span_id: if s.context.parent_span_id == [0; 8] {
                Vec::new()
            } else {
                s.context.parent_span_id.to_vec()
            },
            flags: u32::from(s.context.sampled),
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Server => span::SpanKind::Server,
                Kind::Client => span::SpanKind::Client,
            } as i32,
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
            status: Some(Status {
                message: String::new(),
                code: if s.error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                } as i32,
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![key_value("service.name", &Value::Text(service.to_owned()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "gns".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_encoded_with_its_ids_kind_attributes_and_status() {
        let headers = http::HeaderMap::new();
        let context = TraceContext::of(&headers, 1.0);
        let start = SystemTime::now();
        let span = Span {
            context,
            name: "egress web.production".into(),
            kind: Kind::Server,
            start,
            end: start + Duration::from_millis(3),
            attributes: vec![
                ("gns.service", Value::Text("web.production".into())),
                ("http.response.status_code", Value::Int(503)),
            ],
            error: true,
        };
        let request = encode("gns-gateway", &[span]);
        let decoded =
            ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).expect("decode");
        let resource = &decoded.resource_spans[0];
        assert_eq!(
            resource
                .resource
                .as_ref()
                .map(|r| r.attributes[0].key.as_str()),
            Some("service.name")
        );
        let s = &resource.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, context.trace_id.to_vec());
        assert_eq!(s.span_id, context.span_id.to_vec());
        assert!(
            s.parent_span_id.is_empty(),
            "a new trace's first span has no parent"
        );
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 3_000_000);
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(
            s.status.as_ref().map(|st| st.code),
            Some(status::StatusCode::Error as i32)
        );
    }

    #[test]
    fn an_endpoint_must_be_an_http_url() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let client = reqwest::Client::new();
        assert!(matches!(
            Exporter::spawn("collector:4318", "x", 1.0, client.clone()),
            Err(ExporterError::BadEndpoint(_))
        ));
        assert!(Exporter::spawn("http://127.0.0.1:4318", "x", 1.0, client).is_ok());
    }
}
