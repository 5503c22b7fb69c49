//! Shared by the gateway's in-process tests: upstreams on free loopback
//! ports that count the connections they accept, and an egress listener
//! routing one host to one of them.

#![allow(dead_code, reason = "each test binary uses its own part")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gns_gateway::Gateway;
use gns_gateway::config::{GatewayConfig, ServiceConfig};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The host the tests route: `web` of the global namespace `production`.
pub const HOST: &str = "web.production.app.acme.com";

/// Service `service` of `production` with one endpoint, 127.0.0.1 in
/// east, its HTTP port `upstream_port`.
pub fn local_service(service: &str, upstream_port: u16) -> ServiceConfig {
    ServiceConfig {
        gns: "production".into(),
        service: service.into(),
        http_port: [("east".to_owned(), upstream_port)].into_iter().collect(),
        endpoints: [("east".to_owned(), vec!["127.0.0.1".parse().expect("ip")])]
            .into_iter()
            .collect(),
        ..ServiceConfig::default()
    }
}

/// A config (version 1) routing `host` to `service`.
pub fn config_routing(host: &str, service: ServiceConfig) -> GatewayConfig {
    GatewayConfig {
        version: 1,
        trust_domain: "acme.test".into(),
        services: [(host.to_owned(), Arc::new(service))].into_iter().collect(),
        ..GatewayConfig::default()
    }
}

/// A connection counter shared with an upstream.
pub type Count = Arc<AtomicUsize>;

/// Reads a counter.
pub fn count(counter: &Count) -> usize {
    counter.load(Ordering::SeqCst)
}

/// An upstream on a free port: counts the connections it accepted and
/// serves each with `serve` on a task of its own.
pub async fn counting_upstream<F, Fut>(serve: F) -> (u16, Count)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Count::default();
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    (port, accepted)
}

/// An HTTP/1.1 upstream (hyper, keep-alive) answering `hello from east`
/// (15 bytes) to every request; counts the connections it accepted.
pub async fn hello_upstream() -> (u16, Count) {
    counting_upstream(|tcp| async move {
        let svc = service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                b"hello from east",
            ))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    })
    .await
}

/// An egress on a free port routing `host` (of global namespace
/// `production`, service `service`) to the upstream on `upstream_port`,
/// closing client connections after `idle` without a request (`None`: the
/// default).
pub async fn egress_for(
    host: &str,
    service: &str,
    upstream_port: u16,
    idle: Option<Duration>,
) -> SocketAddr {
    let gateway = Gateway::new("east");
    if let Some(idle) = idle {
        gateway.set_client_idle_timeout(Some(idle));
    }
    gateway.apply_config(config_routing(host, local_service(service, upstream_port)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.serve_egress(listener));
    addr
}

/// An egress routing [`HOST`] to the upstream on `upstream_port`.
pub async fn egress(upstream_port: u16) -> SocketAddr {
    egress_for(HOST, "web", upstream_port, None).await
}
