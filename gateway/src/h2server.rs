//! The server side of peer connections: HTTP/2 (over the mTLS stream the
//! ingress accepted) driven with the `h2` crate directly. Every stream of a
//! connection is handled inside the connection's own task, polled beside the
//! connection (no task per stream, no wake-up of another task per request),
//! and what the streams send goes out in the connection's next write.

use std::future::{Future, poll_fn};
use std::task::Poll;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::peer::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW, strip_hop_by_hop};
use crate::proxy::Body;

/// Streams a peer may have open on one connection.
pub const MAX_STREAMS: u32 = 1024;

/// Serves one HTTP/2 connection: each request stream is passed with its
/// responder to `handle`, and the futures it returns run on this task until
/// the connection ends (the peer went away or it broke).
pub async fn serve<T, F, Fut>(io: T, mut handle: F) -> Result<(), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Bytes>(io)
        .await?;
    let mut streams = FuturesUnordered::new();
    let mut accepting = true;
    poll_fn(|cx| {
        loop {
            // The streams first: what they send is written by the
            // connection poll below, in one go.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if !accepting {
                // No new streams: finish the ones in flight, then close.
                return connection.poll_closed(cx);
            }
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => streams.push(handle(request, respond)),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => accepting = false,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Waits for `work`'s response and writes it on the stream; gives up when
/// the peer resets the stream first (it gave up on the request).
pub async fn respond<W>(mut respond: h2::server::SendResponse<Bytes>, work: W)
where
    W: Future<Output = Response<Body>>,
{
    let response = {
        // Scoped: the finished work's state is not kept beside the sending.
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(response) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            match respond.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    if let Some(response) = response {
        send_response(respond, response).await;
    }
}

/// Writes `response` on the stream: the head, then the body within the
/// peer's flow-control window, then trailers if any.
pub async fn send_response(mut respond: h2::server::SendResponse<Bytes>, response: Response<Body>) {
    let (mut parts, mut body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let end = body.is_end_stream();
    let Ok(mut stream) = respond.send_response(Response::from_parts(parts, ()), end) else {
        return;
    };
    if end {
        return;
    }
    loop {
        let Some(frame) = body.frame().await else {
            let _ = stream.send_data(Bytes::new(), true);
            return;
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "response body broke; resetting the stream");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                let last = body.is_end_stream();
                if send_data(&mut stream, data, last).await.is_err() || last {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = stream.send_trailers(trailers);
            return;
        }
    }
}

/// Sends `data` as the peer's window allows (`last`: it ends the stream).
pub async fn send_data(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    last: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if last {
            stream.send_data(data, true)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, last && data.is_empty())?;
    }
    Ok(())
}
