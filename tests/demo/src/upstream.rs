//! Echo upstreams: HTTP/1.1 servers that answer every request with the
//! service, version and cluster they stand for, so a user can see where a
//! request landed. A TCP listener stands in for the VM's database.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Starts an HTTP upstream on `addr` answering `"<service> <version> in <cluster>\n"`.
pub async fn http_echo(addr: SocketAddr, text: String) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind upstream {addr}"))?;
    let body = Bytes::from(format!("{text}\n"));
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/plain")
                                .body(Full::new(body))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }))
}

/// A TCP listener that greets each connection with `text` (the "database" on the VM).
pub async fn tcp_banner(addr: SocketAddr, text: String) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    Ok(tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let line = format!("{text}\n");
            tokio::spawn(async move {
                let _ = tcp.write_all(line.as_bytes()).await;
            });
        }
    }))
}
