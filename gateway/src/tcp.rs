//! The egress's listeners on the ports services name (opened and closed as
//! the config changes): on a TCP port each connection is joined to a local
//! endpoint or to a CONNECT tunnel through a peer gateway, in plan order (a
//! shared port picks its service by the TLS server name); on an HTTP
//! service port other than 80 it is served as an HTTP client of the egress.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::access::{name_caller, name_subset};
use crate::proxy::Gateway;
use crate::refusal::{Refusal, TryError};
use crate::route::Route;

/// Copy buffer of each direction of a passed-through TCP connection.
const TCP_BUFFER: usize = 64 * 1024;

impl Gateway {
    /// Listens on `ip` on every TCP port and HTTP service port the config
    /// names (opening and closing listeners as the config changes): TCP is
    /// passed through to the chosen cluster, HTTP served as at the egress.
    /// `shared`: the ports are bound with `SO_REUSEPORT`, one listener per
    /// worker. The gateway's own ports (`reserved`: its egress, ingress,
    /// public and admin listeners) are never taken for a service. Runs
    /// until aborted.
    pub async fn serve_tcp(
        self: Arc<Self>,
        ip: std::net::IpAddr,
        shared: bool,
        reserved: Vec<u16>,
    ) {
        let mut ports = self.listen_ports.subscribe();
        let mut listeners: HashMap<u16, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let mut wanted = ports.borrow_and_update().clone();
            wanted.retain(|port| {
                let own = reserved.contains(port);
                if own {
                    tracing::warn!(
                        port,
                        "a service port is one of the gateway's own; not served"
                    );
                }
                !own
            });
            listeners.retain(|port, task| {
                let keep = wanted.contains(port);
                if !keep {
                    task.abort();
                }
                keep
            });
            let missing: Vec<u16> = wanted
                .iter()
                .copied()
                .filter(|p| !listeners.contains_key(p))
                .collect();
            for port in &missing {
                let bound = crate::listen::bind(SocketAddr::new(ip, *port), shared)
                    .and_then(TcpListener::from_std);
                match bound {
                    Ok(listener) => {
                        tracing::info!(%ip, port, "egress listening on a service port");
                        let gw = Arc::clone(&self);
                        listeners.insert(*port, tokio::spawn(gw.accept_tcp(listener, *port)));
                    }
                    Err(e) => tracing::warn!(%ip, port, error = %e, "cannot listen for TCP"),
                }
            }
            if ports.changed().await.is_err() {
                return;
            }
        }
    }

    pub(crate) async fn accept_tcp(self: Arc<Self>, listener: TcpListener, port: u16) {
        let acceptor = crate::listen::Acceptor::new(listener, self.max_connections(), "tcp");
        loop {
            let (tcp, client, slot) = acceptor.accept().await;
            // The port's role is the config's now (it may change).
            if self.routes.load().serves_http_on(port) {
                self.serve_client(tcp, client, slot, crate::metrics::Entry::Egress);
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let gw = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(refusal) = gw.tcp_egress(tcp, port).await {
                    refusal.count();
                    tracing::debug!(port, error = %refusal, "TCP connection not passed through");
                }
                drop(slot);
            });
        }
    }

    /// One TCP connection: to a local endpoint, or through a CONNECT tunnel
    /// on the HTTP/2 connection to a peer gateway, in plan order; or why
    /// it was not passed through.
    pub(crate) async fn tcp_egress(&self, mut client: TcpStream, port: u16) -> Result<(), Refusal> {
        self.counters
            .tcp_connections
            .fetch_add(1, Ordering::Relaxed);
        let routes = self.routes.load_full();
        // Several services on one port: a TLS client's server name picks one.
        let sni = if routes.tcp_port_shared(port) {
            server_name(&client).await
        } else {
            None
        };
        let route = routes
            .tcp_route(port, sni.as_deref())
            .ok_or_else(|| Refusal::UnknownService(format!(":{port}")))?;
        let client_ip = client
            .peer_addr()
            .map_err(|e| Refusal::Try {
                cluster: self.cluster.clone(),
                error: TryError::Reset(format!("client gone: {e}")),
            })?
            .ip();
        let service = format!("{}.{}", route.config.service, route.config.gns);
        let caller = self.local_caller(&routes, &route, client_ip, &service)?;
        let mut caller_headers = http::HeaderMap::new();
        name_caller(&mut caller_headers, caller.and_then(|c| c.header.clone()));
        let no_headers = http::HeaderMap::new();
        let request = crate::route::RequestFacts {
            callers: caller.map_or(&[][..], |c| c.services.as_slice()),
            ..crate::route::RequestFacts::headers(&no_headers)
        };
        let plan = routes.plan(&route, &request, fastrand::u64(..));
        let host = format!("{}.{}:{port}", route.config.service, route.config.gns);
        for target in &plan {
            let cluster = target.cluster;
            if cluster == self.cluster {
                match self.connect_local_tcp(&route, port, target.subset).await {
                    Ok(mut upstream) => {
                        let copied = pipe(&mut client, &mut upstream).await;
                        count_tcp(&route, cluster, copied);
                        return Ok(());
                    }
                    Err(e) => tracing::debug!(cluster, error = %e, "TCP try failed"),
                }
                continue;
            }
            let Ok(connection) = self.peer_connection(cluster).await else {
                continue;
            };
            let mut headers = caller_headers.clone();
            name_subset(&mut headers, target.subset);
            match connection.tunnel(&host, headers).await {
                Ok(mut tunnel) => {
                    let copied = pipe(&mut client, &mut tunnel).await;
                    count_tcp(&route, cluster, copied);
                    return Ok(());
                }
                Err(e) => tracing::debug!(cluster, error = %e, "CONNECT tunnel failed"),
            }
        }
        Err(Refusal::NoEndpoints(host))
    }
}

/// Copies both ways between `a` and `b` until both ends are done; the bytes
/// each way (a → b, b → a).
pub(crate) async fn pipe<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, TCP_BUFFER, TCP_BUFFER).await
}

/// Counts the bytes a TCP connection carried each way (when it ended cleanly).
pub(crate) fn count_tcp(route: &Route, cluster: &str, copied: std::io::Result<(u64, u64)>) {
    let Ok((sent, received)) = copied else {
        return;
    };
    let service = format!("{}.{}", route.config.service, route.config.gns);
    metrics::counter!(
        "gns_gateway_tcp_bytes_total",
        "service" => service.clone(),
        "cluster" => cluster.to_owned(),
        "direction" => "sent"
    )
    .increment(sent);
    metrics::counter!(
        "gns_gateway_tcp_bytes_total",
        "service" => service,
        "cluster" => cluster.to_owned(),
        "direction" => "received"
    )
    .increment(received);
}

/// The TLS server name a client sends first, read without consuming it
/// (`None` if it is not TLS, names nothing, or says nothing within 3 s).
pub(crate) async fn server_name(client: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let n = tokio::time::timeout_at(deadline, client.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        match crate::sni::peek(&buf[..n]) {
            crate::sni::Peek::Hello(name) => return name,
            crate::sni::Peek::NotTls => return None,
            crate::sni::Peek::Incomplete if n == 0 || n == buf.len() => return None,
            crate::sni::Peek::Incomplete => {
                // peek returns what is buffered now; wait a little for more.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
