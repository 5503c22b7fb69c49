//! What a request body becomes on its way through a gateway: kept whole so
//! a retry can send it again ([`RequestBody::Replayable`]), or streamed
//! once to the one try that sends it ([`RequestBody::Streaming`]).
//!
//! A body is kept only when a retry may need it (the route's retry policy
//! retries this method on some failure after sending), its length is
//! declared, it is at most [`MAX_REPLAY`] and the process-wide buffer
//! budget has room for it, reserved whole before the first byte is read.
//! Every other body streams, in both directions, with no size limit and
//! with flow control end to end: such a request is not retried after it
//! was sent (a try that could not connect sent nothing, so it still moves
//! on along the plan). Why a body that a retry could have used streams
//! instead is counted ([`Unreplayable`], the variant is the metric label).

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::budget::{BodyError, BufferBudget, Buffered, Collector};
use crate::proxy::{Body, BoxError};

/// Largest request body a gateway keeps whole so that a retry can send it
/// again (32 MiB); a larger one streams and is not retried. What all
/// requests keep together is bounded by the gateway's
/// [`BufferBudget`] (`--buffer-budget`).
pub const MAX_REPLAY: u64 = 32 * 1024 * 1024;

/// A request body, as the tries will send it.
#[derive(Debug)]
pub(crate) enum RequestBody<'b> {
    /// Read whole (holding its share of the buffer budget): every try sends
    /// a copy.
    Replayable(Buffered<'b>),
    /// Not read yet: the try that sends it streams it, once.
    Streaming(Body),
}

/// The request-body bytes a request sent, counted as a streamed body goes
/// out (shared with the body); read when the request is recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct SentBytes(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl SentBytes {
    /// `n` more bytes.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bytes counted so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `body`, counting its data into these bytes as it streams.
    pub(crate) fn counting(&self, body: Body) -> Body {
        let sent = self.clone();
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                sent.add(data.len() as u64);
            }
            frame
        })
        .boxed()
    }
}

/// Why a body that a retry could have used streams instead (the request is
/// then not retried after it was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreplayable {
    /// No declared length (chunked, or HTTP/2 without `content-length`).
    UnknownLength,
    /// Declared longer than [`MAX_REPLAY`].
    TooLarge,
    /// The buffer budget had no room for it.
    BudgetSpent,
}

impl Unreplayable {
    /// The `reason` label of `gns_gateway_unreplayable_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Unreplayable::UnknownLength => "unknown-length",
            Unreplayable::TooLarge => "too-large",
            Unreplayable::BudgetSpent => "budget-spent",
        }
    }
}

/// Makes `body` a [`RequestBody`]: replayable when `replay` (a retry may
/// need it) and it fits, else streaming. Only reading a body that is kept
/// can fail (it broke off).
pub(crate) async fn prepare<'b, B>(
    body: B,
    replay: bool,
    budget: &'b BufferBudget,
) -> Result<RequestBody<'b>, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(RequestBody::Replayable(Buffered::empty(budget)));
    }
    if !replay {
        return Ok(RequestBody::Streaming(body.map_err(Into::into).boxed()));
    }
    match reserve(body.size_hint().exact(), budget) {
        Ok(collector) => read_whole(body, collector)
            .await
            .map(RequestBody::Replayable),
        Err(why) => {
            metrics::counter!(
                "gns_gateway_unreplayable_requests_total",
                "reason" => why.label()
            )
            .increment(1);
            Ok(RequestBody::Streaming(body.map_err(Into::into).boxed()))
        }
    }
}

/// Budget for a body of `declared` length, reserved whole.
fn reserve(declared: Option<u64>, budget: &BufferBudget) -> Result<Collector<'_>, Unreplayable> {
    let len = declared.ok_or(Unreplayable::UnknownLength)?;
    if len > MAX_REPLAY {
        return Err(Unreplayable::TooLarge);
    }
    let len = usize::try_from(len).map_err(|_| Unreplayable::TooLarge)?;
    Collector::reserved(len, budget).map_err(|_| Unreplayable::BudgetSpent)
}

/// Reads `body` into `collector` (trailers of a kept body are dropped).
async fn read_whole<B>(mut body: B, mut collector: Collector<'_>) -> Result<Buffered<'_>, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.into()))?;
        if let Ok(data) = frame.into_data() {
            collector.push(data)?;
        }
    }
    Ok(collector.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    /// Frames of a test body.
    type Frames =
        futures::stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, BoxError>>>;

    /// A body of `pieces` with no declared length (as chunked).
    fn chunked(pieces: &[&'static [u8]]) -> StreamBody<Frames> {
        let frames: Vec<Result<hyper::body::Frame<Bytes>, BoxError>> = pieces
            .iter()
            .map(|p| Ok(hyper::body::Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_no_retry_needs_streams_and_holds_no_budget() {
        let budget = BufferBudget::new(1024);
        let body = Full::new(Bytes::from_static(b"hello"));
        let prepared = prepare(body, false, &budget).await.expect("prepared");
        assert!(
            matches!(prepared, RequestBody::Streaming(_)),
            "{prepared:?}"
        );
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_declared_body_a_retry_needs_is_kept_whole_and_holds_its_length() {
        let budget = BufferBudget::new(1024);
        let body = Full::new(Bytes::from_static(b"hello"));
        let prepared = prepare(body, true, &budget).await.expect("prepared");
        let RequestBody::Replayable(kept) = prepared else {
            panic!("not kept: {prepared:?}");
        };
        assert_eq!(kept.bytes().as_ref(), b"hello");
        assert_eq!(budget.in_use(), 5);
        drop(kept);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_streams_even_when_a_retry_could_use_it() {
        let budget = BufferBudget::new(1024);
        let prepared = prepare(chunked(&[b"a", b"b"]), true, &budget)
            .await
            .expect("prepared");
        let RequestBody::Streaming(body) = prepared else {
            panic!("kept: {prepared:?}");
        };
        let whole = body.collect().await.expect("streamed").to_bytes();
        assert_eq!(whole.as_ref(), b"ab");
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_body_the_budget_has_no_room_for_streams_instead_of_being_refused() {
        let budget = BufferBudget::new(4);
        let body = Full::new(Bytes::from_static(b"hello"));
        let prepared = prepare(body, true, &budget).await.expect("prepared");
        assert!(
            matches!(prepared, RequestBody::Streaming(_)),
            "{prepared:?}"
        );
        assert_eq!(
            reserve(Some(5), &budget).err(),
            Some(Unreplayable::BudgetSpent)
        );
        assert_eq!(
            reserve(Some(MAX_REPLAY + 1), &BufferBudget::new(usize::MAX)).err(),
            Some(Unreplayable::TooLarge)
        );
        assert_eq!(
            reserve(None, &budget).err(),
            Some(Unreplayable::UnknownLength)
        );
    }

    #[tokio::test]
    async fn a_kept_body_that_breaks_off_is_refused_and_gives_its_budget_back() {
        let budget = BufferBudget::new(1024);
        let collector = Collector::reserved(8, &budget).expect("room");
        assert_eq!(budget.in_use(), 8, "the declared length is reserved whole");
        let frames = futures::stream::iter([
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("client went away")),
        ]);
        let broken = read_whole(StreamBody::new(frames), collector).await;
        assert!(matches!(broken, Err(BodyError::Broken(_))), "{broken:?}");
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn an_empty_body_is_kept_without_reading_or_budget() {
        let budget = BufferBudget::new(0);
        let prepared = prepare(Full::new(Bytes::new()), false, &budget)
            .await
            .expect("prepared");
        let RequestBody::Replayable(kept) = prepared else {
            panic!("not kept: {prepared:?}");
        };
        assert!(kept.bytes().is_empty());
    }
}
