//! The egress's per-service counters, in a test binary of its own: the
//! Prometheus recorder is process-wide, so exact totals are asserted only
//! where no other test sends traffic. The service (`counted`) is used by no
//! other test either.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const COUNTED: &str = "counted.production.app.acme.com";

/// The value of the series `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn http1_and_h2c_clients_are_routed_and_bytes_counted() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("recorder");
    let (port, _) = support::hello_upstream().await;
    let addr = support::egress_for(COUNTED, "counted", port, None).await;

    // HTTP/1.1 with a body.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!(
            "POST /x HTTP/1.1\r\nhost: {COUNTED}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nping"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from east"), "{answer}");

    // h2c with prior knowledge: the HTTP/2 preface on a plain connection.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .uri(format!("http://{COUNTED}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2c request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"hello from east");

    let text = prometheus.render();
    let labels = [
        "entry=\"egress\"",
        "service=\"counted.production\"",
        "cluster=\"east\"",
    ];
    assert_eq!(
        metric(&text, "gns_gateway_requests_total", &labels),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "gns_gateway_request_bytes_total", &labels),
        Some(4.0),
        "the 4-byte request body: {text}"
    );
    assert_eq!(
        metric(&text, "gns_gateway_response_bytes_total", &labels),
        Some(30.0),
        "two 15-byte responses: {text}"
    );
}
