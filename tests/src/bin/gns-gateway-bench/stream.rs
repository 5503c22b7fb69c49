//! Streaming throughput: one large HTTP/1.1 upload and one large download
//! through east's egress → west (HTTP/2 over mTLS between the gateways) to
//! an upstream in west, and the same directly to the upstream, in MB/s.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The global service name of the bulk upstream.
pub const HOST: &str = "bulk.production.app.acme.com";
/// Size of the pieces the client writes and the upstream sends.
const PIECE: usize = 256 * 1024;

/// An HTTP/1.1 upstream: a POST's body is read to its end and its length
/// answered; `GET /<n>` answers `n` bytes.
pub async fn upstream() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body: http_body_util::combinators::BoxBody<
                            Bytes,
                            std::convert::Infallible,
                        > = if req.method() == hyper::Method::POST {
                            let mut body = req.into_body();
                            let mut total: u64 = 0;
                            while let Some(Ok(frame)) = body.frame().await {
                                if let Some(data) = frame.data_ref() {
                                    total += data.len() as u64;
                                }
                            }
                            http_body_util::Full::new(Bytes::from(total.to_string())).boxed()
                        } else {
                            let n: u64 = req.uri().path()[1..].parse().unwrap_or(0);
                            let piece = Bytes::from(vec![7u8; PIECE]);
                            let pieces = futures::stream::unfold(0u64, move |sent| {
                                let piece = piece.clone();
                                async move {
                                    if sent >= n {
                                        return None;
                                    }
                                    let len = (n - sent).min(PIECE as u64) as usize;
                                    let frame = hyper::body::Frame::data(piece.slice(..len));
                                    Some((Ok(frame), sent + len as u64))
                                }
                            });
                            http_body_util::StreamBody::new(pieces).boxed()
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// Uploads `mib` MiB to `addr` (with `host`) and waits for the upstream's
/// count; MB/s.
pub async fn upload(addr: SocketAddr, host: &str, mib: u64) -> anyhow::Result<f64> {
    let total = mib * 1024 * 1024;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let (mut reading, mut writing) = tcp.split();
    let piece = vec![7u8; PIECE];
    let write = async {
        writing
            .write_all(
                format!(
                    "POST /sink HTTP/1.1\r\nhost: {host}\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut sent = 0;
        while sent < total {
            let n = (total - sent).min(PIECE as u64) as usize;
            writing.write_all(&piece[..n]).await?;
            sent += n as u64;
        }
        Ok::<_, std::io::Error>(())
    };
    let mut answer = Vec::new();
    let (written, read) = tokio::join!(write, reading.read_to_end(&mut answer));
    written.with_context(|| format!("upload to {addr}"))?;
    read.with_context(|| format!("the answer from {addr}"))?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 200") || !text.ends_with(&total.to_string()) {
        bail!("upload to {addr}: {text}");
    }
    Ok(total as f64 / 1e6 / elapsed.as_secs_f64())
}

/// Downloads `mib` MiB from `addr` (with `host`); MB/s.
pub async fn download(addr: SocketAddr, host: &str, mib: u64) -> anyhow::Result<f64> {
    let total = mib * 1024 * 1024;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    tcp.write_all(
        format!("GET /{total} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; PIECE];
    let mut received: u64 = 0;
    loop {
        let n = tcp
            .read(&mut buf)
            .await
            .with_context(|| format!("download from {addr}"))?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    let elapsed = started.elapsed();
    // The head and the chunk framing come on top of the data.
    if received < total {
        bail!("download from {addr}: {received} of {total} bytes");
    }
    Ok(total as f64 / 1e6 / elapsed.as_secs_f64())
}
