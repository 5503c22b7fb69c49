//! A client's request body as the egress and the public entry see it
//! ([`ClientBody`]), and, for HTTP/1.1, the connection's side of it
//! ([`Pump`]): the bytes after a request head decoded (by length or
//! chunked) and handed over one frame at a time, only once the body is
//! first read (so `Expect: 100-continue` is answered only then) and only
//! as fast as it is read.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt as _;
use futures::channel::mpsc;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::h1::{Decoded, Framing};
use crate::outgoing::Outbox;
use crate::proxy::BoxError;

/// How much is read from a client at a time while its body streams.
const BODY_READ: usize = 64 * 1024;

/// The most of a body nobody read that is read and dropped after the
/// response, so that its connection can carry the next request.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// What `Expect: 100-continue` is answered with.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One frame of an HTTP/1.1 request body, or why it broke off.
type Piece = Result<Frame<Bytes>, std::io::Error>;

/// A request body from a client of the egress or the public entry.
#[derive(Debug)]
pub enum ClientBody {
    /// The request has none.
    Empty,
    /// HTTP/1.1: read from the connection by its [`Pump`].
    H1(H1Body),
    /// h2c with prior knowledge: hyper's HTTP/2 server reads it.
    H2(hyper::body::Incoming),
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(body) => body.poll_frame(cx).map_err(Into::into),
            ClientBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(body) => body.ended || body.complete,
            ClientBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(body) => body
                .left
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            ClientBody::H2(body) => body.size_hint(),
        }
    }
}

/// The reading end of an HTTP/1.1 request body.
#[derive(Debug)]
pub struct H1Body {
    pieces: mpsc::Receiver<Piece>,
    /// Told when the body is first read.
    wanted: Option<oneshot::Sender<()>>,
    /// What a body of declared length still has to come.
    left: Option<u64>,
    /// The whole body came (its length, or a chunked body's end).
    complete: bool,
    ended: bool,
}

impl H1Body {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Piece>> {
        if let Some(wanted) = self.wanted.take() {
            let _ = wanted.send(());
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let piece = ready!(self.pieces.poll_next_unpin(cx));
        match &piece {
            Some(Ok(frame)) => match (frame.data_ref(), &mut self.left) {
                (Some(data), Some(left)) => {
                    *left = left.saturating_sub(data.len() as u64);
                    self.complete = *left == 0;
                }
                // A chunked body's end: an empty frame, or its trailers.
                (Some(data), None) => self.complete = data.is_empty(),
                (None, _) => self.complete = true,
            },
            Some(Err(_)) => self.ended = true,
            None if self.complete => self.ended = true,
            None => {
                // The connection's side went away before the body's end
                // (the connection broke): not a whole body.
                self.ended = true;
                return Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())));
            }
        }
        Poll::Ready(piece)
    }
}

/// A body of `framing` (a length or chunked) for a request just read, and
/// the pump that fills it from the connection; `expect_continue`: the
/// client waits to be told to send it.
pub(crate) fn channel(framing: Framing, expect_continue: bool) -> (ClientBody, Pump) {
    let (sender, pieces) = mpsc::channel(0);
    let (wanted, want) = oneshot::channel();
    let left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let body = H1Body {
        pieces,
        wanted: Some(wanted),
        left,
        complete: false,
        ended: false,
    };
    let pump = Pump {
        state: PumpState::Unwanted(want),
        sender,
        framing,
        continue_: if expect_continue {
            Continue::Owed
        } else {
            Continue::NotAwaited
        },
    };
    (ClientBody::H1(body), pump)
}

/// Where a request body's pump stands.
#[derive(Debug)]
enum PumpState {
    /// Nobody has read the body yet.
    Unwanted(oneshot::Receiver<()>),
    /// Handing over what the client sends.
    Pumping,
    /// The whole body was read from the connection.
    Done,
    /// The body was dropped before its end, or the client broke it off:
    /// the connection cannot carry another request.
    Abandoned,
}

/// The connection's end of an HTTP/1.1 request body.
#[derive(Debug)]
pub(crate) struct Pump {
    state: PumpState,
    sender: mpsc::Sender<Piece>,
    framing: Framing,
    continue_: Continue,
}

/// Where `Expect: 100-continue` stands for a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Continue {
    /// The client sends the body without waiting (it did not ask, or it
    /// has had its `100 Continue`).
    NotAwaited,
    /// The client waits: `100 Continue` goes out when the body is first read.
    Owed,
    /// The client waits, but the response came first: it is not told to go on.
    Withheld,
}

impl Pump {
    /// Whether the whole body was read from the connection (which may then
    /// carry the next request).
    pub(crate) fn done(&self) -> bool {
        matches!(self.state, PumpState::Done)
    }

    /// Whether the body was dropped before its end (the connection then
    /// closes after the response).
    pub(crate) fn abandoned(&mut self) -> bool {
        match &mut self.state {
            PumpState::Unwanted(want) => match want.try_recv() {
                Ok(()) => {
                    self.state = PumpState::Pumping;
                    false
                }
                Err(oneshot::error::TryRecvError::Empty) => false,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.state = PumpState::Abandoned;
                    true
                }
            },
            PumpState::Pumping => self.sender.is_closed(),
            PumpState::Done => false,
            PumpState::Abandoned => true,
        }
    }

    /// Whether the rest of a body nobody read is small enough to read and
    /// drop after the response (and is coming: the client does not wait
    /// for a `100 Continue` it never had).
    pub(crate) fn drainable(&self) -> bool {
        matches!(self.framing, Framing::Length(left) if left <= DRAIN_LIMIT)
            && self.continue_ == Continue::NotAwaited
    }

    /// Reads the rest of a [`Self::drainable`] body and drops it.
    pub(crate) async fn drain(
        &mut self,
        io: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> std::io::Result<()> {
        let Framing::Length(left) = &mut self.framing else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        loop {
            let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            buf.advance(take);
            *left -= take as u64;
            if *left == 0 {
                self.state = PumpState::Done;
                return Ok(());
            }
            buf.reserve(BODY_READ.min(usize::try_from(*left).unwrap_or(BODY_READ)));
            if std::future::poll_fn(|cx| crate::downstream::poll_read_buf(io, cx, buf)).await? == 0
            {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The response is on its way: a body wanted from now on is not asked
    /// for with `100 Continue` (the client sends it anyway, or not at all).
    pub(crate) fn answered(&mut self) {
        if self.continue_ == Continue::Owed {
            self.continue_ = Continue::Withheld;
        }
    }

    /// Moves the body along: reads from `io` into `buf` and hands frames
    /// over while the body takes them; queues `100 Continue` on `out` when
    /// the body is first read. `Ready` once there is nothing more to do.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut TcpStream,
        buf: &mut BytesMut,
        out: &mut Outbox,
    ) -> Poll<()> {
        loop {
            match &mut self.state {
                PumpState::Unwanted(want) => match ready!(Pin::new(want).poll(cx)) {
                    Ok(()) => {
                        if self.continue_ == Continue::Owed {
                            out.push(Bytes::from_static(CONTINUE));
                            self.continue_ = Continue::NotAwaited;
                        }
                        self.state = PumpState::Pumping;
                    }
                    Err(_) => self.state = PumpState::Abandoned,
                },
                PumpState::Pumping => {
                    if ready!(self.sender.poll_ready(cx)).is_err() {
                        self.state = PumpState::Abandoned;
                        continue;
                    }
                    match self.next_piece(buf) {
                        Ok(Some((piece, last))) => {
                            let _ = self.sender.start_send(Ok(piece));
                            if last {
                                self.sender.close_channel();
                                self.state = PumpState::Done;
                            }
                        }
                        Ok(None) => {
                            if buf.capacity() - buf.len() < BODY_READ / 2 {
                                buf.reserve(BODY_READ);
                            }
                            match ready!(crate::downstream::poll_read_buf(io, cx, buf)) {
                                Ok(0) => self.break_off(std::io::ErrorKind::UnexpectedEof.into()),
                                Ok(_) => {}
                                Err(e) => self.break_off(e),
                            }
                        }
                        Err(e) => self.break_off(e),
                    }
                }
                PumpState::Done | PumpState::Abandoned => return Poll::Ready(()),
            }
        }
    }

    /// The body's next frame from `buf` (and whether it is the last), or
    /// `None` when more must be read first.
    fn next_piece(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<(Frame<Bytes>, bool)>> {
        match &mut self.framing {
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                Ok(Some((Frame::data(buf.split_to(take).freeze()), *left == 0)))
            }
            Framing::Chunked(chunked) => match chunked.decode(buf) {
                Ok(Decoded::Data(data)) => Ok(Some((Frame::data(data), false))),
                Ok(Decoded::Trailers(trailers)) => Ok(Some((Frame::trailers(trailers), true))),
                Ok(Decoded::End) => Ok(Some((Frame::data(Bytes::new()), true))),
                Ok(Decoded::More) => Ok(None),
                Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            },
            Framing::Empty | Framing::UntilClose => Ok(Some((Frame::data(Bytes::new()), true))),
        }
    }

    /// The client broke the body off: the body ends with `error`.
    fn break_off(&mut self, error: std::io::Error) {
        let _ = self.sender.start_send(Err(error));
        self.sender.close_channel();
        self.state = PumpState::Abandoned;
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_body_whose_connection_went_away_before_its_end_ends_in_an_error() {
        let (mut body, pump) = channel(Framing::Chunked(Default::default()), false);
        drop(pump);
        let frame = body.frame().await.expect("a frame");
        assert!(frame.is_err(), "a cut body must not look whole: {frame:?}");
        assert!(body.frame().await.is_none(), "and then it has ended");
    }
}
