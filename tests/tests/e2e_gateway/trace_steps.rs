//! Distributed tracing end to end: both gateways and the federation export
//! spans over OTLP/HTTP (protobuf) to a receiver in this test, which
//! decodes them with opentelemetry-proto; an upstream in west answers the
//! `traceparent` it was sent, so the test sees that the trace id a client
//! sends is the one the endpoint gets, and that each hop's span is the
//! parent of the next.

use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

use super::*;

const TRACED_HOST: &str = "traced.production.app.acme.com";
/// The client's trace and span.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
    pub(crate) parent_span_id: String,
    pub(crate) attributes: BTreeMap<String, String>,
}

/// Spans the receiver got.
pub(crate) type Spans = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver: `POST /v1/traces` bodies decoded as
/// `ExportTraceServiceRequest`; its port and what it received.
pub(crate) async fn otlp_receiver() -> (u16, Spans) {
    let spans: Spans = Arc::default();
    let kept = Arc::clone(&spans);
    let port = serve_http1("the OTLP receiver", move |req| {
        let kept = Arc::clone(&kept);
        async move {
            let protobuf = req.uri().path() == "/v1/traces"
                && req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "application/x-protobuf");
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let decoded = body
                .ok()
                .filter(|_| protobuf)
                .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
            let status = match decoded {
                Some(request) => {
                    kept.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(received(request));
                    hyper::StatusCode::OK
                }
                None => hyper::StatusCode::BAD_REQUEST,
            };
            let mut resp = hyper::Response::new(boxed(http_body_util::Full::new(Bytes::new())));
            *resp.status_mut() = status;
            resp
        }
    })
    .await;
    (port, spans)
}

/// The spans of an export request, as [`Received`].
fn received(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| text(a.value.as_ref()))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .map(|a| (a.key.clone(), text(a.value.as_ref()).unwrap_or_default()))
                    .collect(),
            });
        }
    }
    out
}

/// An attribute's value as text.
fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// An HTTP upstream that answers the `traceparent` it was sent.
pub(crate) async fn traceparent_upstream() -> u16 {
    serve_http1("traceparent upstream", |req| async move {
        let seen = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        hyper::Response::new(boxed(http_body_util::Full::new(Bytes::from(seen))))
    })
    .await
}

/// The traceparent the upstream saw for a request through east's egress.
async fn through_east(w: &World, traceparent: Option<&str>) -> String {
    let mut request = gns_tests::client()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
        .get(format!("http://{}/", w.east_gw().egress))
        .header("host", TRACED_HOST);
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let response = request.send().await.expect("an answer");
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

pub(crate) async fn traces_cross_both_gateways_to_the_endpoint(w: &World) {
    w.east_config_has("traced", "west").await;
    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let seen = through_east(w, Some(&sent)).await;
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "the upstream got a traceparent: {seen}");
    assert_eq!(
        parts[1], CLIENT_TRACE,
        "the upstream sees the caller's trace id"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "its parent is west's ingress span, not the client"
    );
    assert_eq!(parts[3], "01");

    let spans_of = |trace: &str| -> Vec<Received> {
        w.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect()
    };
    eventually(
        "both gateways' spans of the trace",
        Duration::from_secs(10),
        async || {
            let spans = spans_of(CLIENT_TRACE);
            if spans.len() >= 2 {
                Ok(())
            } else {
                Err(format!("{spans:?}"))
            }
        },
    )
    .await;
    let spans = spans_of(CLIENT_TRACE);
    let egress = spans
        .iter()
        .find(|s| s.name == "egress traced.production")
        .unwrap_or_else(|| panic!("east's egress span: {spans:?}"));
    let ingress = spans
        .iter()
        .find(|s| s.name == "ingress traced.production")
        .unwrap_or_else(|| panic!("west's ingress span: {spans:?}"));
    assert_eq!(egress.service, "gns-gateway");
    assert_eq!(
        egress.parent_span_id, CLIENT_SPAN,
        "the client's span is the egress span's parent"
    );
    assert_eq!(
        ingress.parent_span_id, egress.span_id,
        "the egress span is the ingress span's parent"
    );
    assert_eq!(
        parts[2], ingress.span_id,
        "the ingress span is the endpoint's parent"
    );
    assert_eq!(egress.attributes["gns.gateway.cluster"], "east");
    assert_eq!(egress.attributes["gns.destination.cluster"], "west");
    assert_eq!(egress.attributes["http.response.status_code"], "200");
    assert_eq!(egress.attributes["gns.tries"], "1");
    assert_eq!(egress.attributes["gns.service"], "traced.production");
    assert_eq!(ingress.attributes["gns.gateway.cluster"], "west");
    assert_eq!(ingress.attributes["gns.source.cluster"], "east");

    // A client without a traceparent: the egress starts the trace.
    let seen = through_east(w, None).await;
    let started = seen.split('-').nth(1).expect("a trace id").to_owned();
    assert_eq!(started.len(), 32, "{seen}");
    eventually(
        "the started trace's spans",
        Duration::from_secs(10),
        async || {
            let spans = spans_of(&started);
            match spans.iter().find(|s| s.name.starts_with("egress ")) {
                Some(root) if root.parent_span_id.is_empty() => Ok(()),
                _ => Err(format!("{spans:?}")),
            }
        },
    )
    .await;

    // The federation's own API requests are spans too.
    eventually(
        "the federation's API spans",
        Duration::from_secs(10),
        async || {
            let spans = w
                .spans
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match spans.iter().find(|s| {
                s.service == "gns-federation" && s.name == "GET /v1/config/gateways/{cluster}"
            }) {
                Some(s) if s.attributes.contains_key("http.route") => Ok(()),
                _ => Err(format!(
                    "{} spans, none of the federation's config watch",
                    spans.len()
                )),
            }
        },
    )
    .await;
}
