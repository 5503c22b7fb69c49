//! What of a request to a local endpoint is still to be written: queued
//! bytes (a head, a kept body, chunk framing), written several pieces per
//! system call, and a streamed body's frames, framed as its head said
//! (content-length or chunked, trailers only when chunked) and taken one at
//! a time, so that the endpoint's pace holds the body back.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::Body as HttpBody;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::h1::{H1Error, Sending};
use crate::proxy::Body;

/// A request body being sent, frame by frame.
pub(crate) struct Upload {
    pub(crate) body: Body,
    pub(crate) sending: Sending,
    /// Bytes of the body sent so far.
    pub(crate) sent: u64,
}

impl Upload {
    /// Queues the body's next frame on `out`; `false` once it has ended.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outbox,
    ) -> Poll<Result<bool, H1Error>> {
        let Some(frame) = ready!(Pin::new(&mut self.body).poll_frame(cx)) else {
            match self.sending {
                Sending::Chunked => out.push(Bytes::from_static(b"0\r\n\r\n")),
                Sending::Length(n) if n != self.sent => {
                    return Poll::Ready(Err(H1Error::LengthMismatch));
                }
                _ => {}
            }
            return Poll::Ready(Ok(false));
        };
        let frame = frame.map_err(H1Error::RequestBody)?;
        let frame = match frame.into_data() {
            Ok(data) => {
                self.sent += data.len() as u64;
                match self.sending {
                    Sending::Chunked if !data.is_empty() => {
                        let mut line = BytesMut::with_capacity(18);
                        crate::h1::encode_chunk_size(data.len(), &mut line);
                        out.push(line.freeze());
                        out.push(data);
                        out.push(Bytes::from_static(b"\r\n"));
                    }
                    Sending::Chunked => {}
                    Sending::Length(n) if self.sent <= n => out.push(data),
                    Sending::UntilClose => out.push(data),
                    Sending::Nothing if data.is_empty() => {}
                    Sending::Length(_) | Sending::Nothing => {
                        return Poll::Ready(Err(H1Error::LengthMismatch));
                    }
                }
                return Poll::Ready(Ok(true));
            }
            Err(frame) => frame,
        };
        match (frame.into_trailers(), self.sending) {
            // Trailers end the body; only chunked framing can carry them.
            (Ok(trailers), Sending::Chunked) => {
                let mut last = BytesMut::new();
                crate::h1::encode_last_chunk(Some(&trailers), &mut last);
                out.push(last.freeze());
                Poll::Ready(Ok(false))
            }
            (Ok(_), Sending::Length(n)) if n != self.sent => {
                Poll::Ready(Err(H1Error::LengthMismatch))
            }
            (Ok(_), _) => Poll::Ready(Ok(false)),
            (Err(_), _) => Poll::Ready(Ok(true)),
        }
    }
}

/// Bytes waiting to be written, in order.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Bytes>,
    /// The bytes queued.
    queued: usize,
    /// Whether any byte has been written.
    pub(crate) wrote: bool,
}

impl Outbox {
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.queued += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The bytes queued.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Writes everything queued (several pieces per system call).
    pub(crate) fn poll_write(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 8];
            let count = slices.len().min(self.queue.len());
            for (slice, bytes) in slices.iter_mut().zip(&self.queue) {
                *slice = IoSlice::new(bytes);
            }
            let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.wrote = true;
            self.queued -= written;
            while written > 0 {
                let Some(front) = self.queue.front_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    self.queue.pop_front();
                } else {
                    let _ = front.split_to(written);
                    written = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What of a request is still to be written: queued bytes, and the
/// body's frames still to come.
pub(crate) struct Outgoing {
    pub(crate) out: Outbox,
    pub(crate) upload: Option<Upload>,
}

impl Outgoing {
    /// Writes what is queued and queues the body's next frames until the
    /// body has ended (`Ready(Ok)`), it waits, or writing fails.
    pub(crate) fn poll(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), H1Error>> {
        loop {
            if !self.out.is_empty() {
                ready!(self.out.poll_write(io, cx))?;
            }
            let Some(upload) = &mut self.upload else {
                return Poll::Ready(Ok(()));
            };
            if !ready!(upload.poll_next(cx, &mut self.out))? {
                self.upload = None;
            }
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.out.is_empty() && self.upload.is_none()
    }
}
