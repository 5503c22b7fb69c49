//! The demo's control listener (127.0.0.1, a free port written to
//! `<dir>/control`): `POST /fail/{cluster}`, `POST /heal/{cluster}` and
//! `POST /down`, sent by `gns-demo fail|heal|down` to the running demo.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::demo::Control;

/// Starts the listener; requests become [`Control`] messages on `tx`.
pub async fn serve(tx: mpsc::Sender<Control>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the control listener")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move { Ok::<_, Infallible>(handle(&tx, req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn handle(
    tx: &mpsc::Sender<Control>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_matches('/').to_owned();
    let answer = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    if req.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "POST only".into());
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    let control = match path.split_once('/') {
        Some(("fail", cluster)) => Control::Fail(cluster.to_owned(), reply_tx),
        Some(("heal", cluster)) => Control::Heal(cluster.to_owned(), reply_tx),
        None if path == "down" => {
            let _ = tx.send(Control::Down).await;
            return answer(StatusCode::OK, "stopping".into());
        }
        _ => return answer(StatusCode::NOT_FOUND, format!("unknown command {path:?}")),
    };
    if tx.send(control).await.is_err() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the demo is stopping".into(),
        );
    }
    match reply_rx.await {
        Ok(Ok(text)) => answer(StatusCode::OK, text),
        Ok(Err(text)) => answer(StatusCode::BAD_REQUEST, text),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the demo is stopping".into(),
        ),
    }
}

/// Sends `command` (`fail/west`, `down`…) to the demo running from `dir`.
pub async fn send(dir: &Path, command: &str) -> anyhow::Result<String> {
    let file = dir.join("control");
    let addr = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no demo is running from {} ({} is missing); start one with `gns-demo up`",
            dir.display(),
            file.display()
        )
    })?;
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?
        .post(format!("http://{}/{command}", addr.trim()))
        .send()
        .await
        .with_context(|| format!("the demo at {} does not answer", addr.trim()))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{text}");
    Ok(text)
}
