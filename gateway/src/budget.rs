//! The buffer budget: how many bytes of request bodies the whole gateway
//! process may hold kept for a retry at once (see [`crate::body`]: only a
//! body a retry may send again is kept). [`BufferBudget`] owns the count;
//! it is one value in the [`Gateway`](crate::Gateway), shared by every
//! data-path worker, so the bound is the process's, not a worker's.
//!
//! A kept body's declared length is reserved whole before it is read (no
//! waiting: when the budget has no room the body streams instead and the
//! request is not retried), and held by a [`Reservation`] that travels with
//! the body ([`Buffered`]) until the request is done with it (every try
//! made). Dropping it gives the bytes back, so nothing leaks on an early
//! return, a cancelled request (its client went away) or a panic.
//!
//! Joining the chunks of a body that came in several pieces copies it once,
//! so for that moment the body takes twice its size; the budget counts it once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};

use crate::proxy::BoxError;

/// The budget a gateway starts with (`--buffer-budget`).
pub const DEFAULT_BUFFER_BUDGET: usize = 64 * 1024 * 1024;

/// Request-body bytes buffered by the whole process, against a limit.
#[derive(Debug)]
pub struct BufferBudget {
    /// Bytes that may be buffered at once.
    limit: AtomicUsize,
    /// Bytes held by reservations now.
    in_use: AtomicUsize,
    /// Bodies refused because the budget was spent.
    refusals: AtomicU64,
}

impl Default for BufferBudget {
    fn default() -> Self {
        Self::new(DEFAULT_BUFFER_BUDGET)
    }
}

/// Why bytes could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// Other requests hold the budget now; the same body may fit later.
    #[error("gateway buffer budget exhausted ({in_use} of {limit} bytes in use); retry later")]
    Exhausted {
        /// Bytes buffered when the reservation was refused.
        in_use: usize,
        /// The budget.
        limit: usize,
    },
    /// The body is larger than the whole budget: it can never fit.
    #[error("request body larger than the gateway's buffer budget ({limit} bytes)")]
    LargerThanBudget {
        /// The budget.
        limit: usize,
    },
}

impl BufferBudget {
    /// A budget of `limit` bytes, none in use.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            in_use: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    /// Changes the limit. Reservations already made are kept; while more
    /// than the new limit is in use, new bytes are refused.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes that may be buffered at once.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes buffered now (`gns_gateway_buffered_bytes`).
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Bodies refused because the budget was spent
    /// (`gns_gateway_buffer_budget_refusals_total`).
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// The series exported on `/metrics`: bytes in use, the limit and the
    /// refusals, by name.
    pub fn metrics(&self) -> [(&'static str, u64); 3] {
        [
            ("gns_gateway_buffered_bytes", self.in_use() as u64),
            ("gns_gateway_buffer_budget_bytes", self.limit() as u64),
            ("gns_gateway_buffer_budget_refusals_total", self.refusals()),
        ]
    }

    /// An empty reservation, to grow as a body arrives.
    pub fn reserve(&self) -> Reservation<'_> {
        Reservation {
            budget: self,
            held: 0,
        }
    }
}

/// Bytes of the budget held for one request body; given back when dropped.
#[derive(Debug)]
#[must_use = "the bytes are given back when the reservation is dropped"]
pub struct Reservation<'b> {
    budget: &'b BufferBudget,
    held: usize,
}

impl Reservation<'_> {
    /// Reserves `n` more bytes, without waiting: refused when the budget
    /// has not that many left (counted), or when this body alone would be
    /// larger than the whole budget (not counted: it could never fit).
    pub fn grow(&mut self, n: usize) -> Result<(), BudgetError> {
        let limit = self.budget.limit();
        if self.held.checked_add(n).is_none_or(|total| total > limit) {
            return Err(BudgetError::LargerThanBudget { limit });
        }
        let reserved =
            self.budget
                .in_use
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |in_use| {
                    in_use.checked_add(n).filter(|total| *total <= limit)
                });
        match reserved {
            Ok(_) => {
                self.held += n;
                Ok(())
            }
            Err(in_use) => {
                self.budget.refusals.fetch_add(1, Ordering::Relaxed);
                Err(BudgetError::Exhausted { in_use, limit })
            }
        }
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.in_use.fetch_sub(self.held, Ordering::Relaxed);
        }
    }
}

/// A request body read whole, with the budget it holds: the bytes are
/// counted as buffered for as long as this lives.
#[derive(Debug)]
pub struct Buffered<'b> {
    bytes: Bytes,
    _reservation: Reservation<'b>,
}

impl<'b> Buffered<'b> {
    /// An empty body (holds nothing).
    pub fn empty(budget: &'b BufferBudget) -> Self {
        Self {
            bytes: Bytes::new(),
            _reservation: budget.reserve(),
        }
    }

    /// The body, to be cloned into each try (a clone shares the bytes).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Why a request body was not kept.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Longer than it declared.
    #[error("request body larger than the {0} bytes it declared")]
    TooLarge(usize),
    /// The body broke off (the client went away, or sent a bad body).
    #[error("request body: {0}")]
    Broken(#[source] BoxError),
}

/// Collects the chunks of a body of declared length, the whole of which is
/// held in the budget from the start.
#[derive(Debug)]
pub struct Collector<'b> {
    limit: usize,
    chunks: Vec<Bytes>,
    /// Bytes taken so far.
    taken: usize,
    reservation: Reservation<'b>,
}

impl<'b> Collector<'b> {
    /// A collector for a body of `len` bytes (its declared length), the
    /// whole of which is reserved in `budget` at once: once this succeeds,
    /// reading the body cannot be refused for want of budget.
    pub fn reserved(len: usize, budget: &'b BufferBudget) -> Result<Self, BudgetError> {
        let mut reservation = budget.reserve();
        reservation.grow(len)?;
        Ok(Self {
            limit: len,
            chunks: Vec::new(),
            taken: 0,
            reservation,
        })
    }

    /// Takes the next chunk (refused beyond the declared length).
    pub fn push(&mut self, chunk: Bytes) -> Result<(), BodyError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let taken = self.taken + chunk.len();
        if taken > self.limit {
            return Err(BodyError::TooLarge(self.limit));
        }
        self.taken = taken;
        self.chunks.push(chunk);
        Ok(())
    }

    /// The whole body (one chunk is not copied), still holding its budget.
    pub fn finish(mut self) -> Buffered<'b> {
        let bytes = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut whole = BytesMut::with_capacity(self.taken);
                for chunk in &self.chunks {
                    whole.extend_from_slice(chunk);
                }
                whole.freeze()
            }
        };
        Buffered {
            bytes,
            _reservation: self.reservation,
        }
    }
}

/// Why a size (`--buffer-budget`) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number before the unit.
    #[error(
        "{0:?} is not a size: expected a whole number of bytes, optionally with a unit (B, KiB, MiB, GiB), e.g. 64MiB"
    )]
    NotANumber(String),
    /// A unit other than the binary ones.
    #[error("{0:?} has an unknown unit: use B, KiB, MiB or GiB (e.g. 64MiB, 512KiB, 1GiB)")]
    UnknownUnit(String),
    /// More bytes than this machine can count.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Reads a size in bytes: a whole number, optionally followed by `B`,
/// `KiB`, `MiB` or `GiB` (case is ignored; space before the unit allowed):
/// `64MiB`, `512KiB`, `1GiB`, `1048576`.
pub fn parse_size(text: &str) -> Result<usize, SizeError> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    if number.is_empty() || unit.starts_with(['.', ',']) {
        return Err(SizeError::NotANumber(text.to_owned()));
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" => 10,
        "mib" => 20,
        "gib" => 30,
        _ => return Err(SizeError::UnknownUnit(text.to_owned())),
    };
    let too_large = || SizeError::TooLarge(text.to_owned());
    let number: usize = number.parse().map_err(|_| too_large())?;
    number.checked_mul(1usize << shift).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn sizes_are_read_in_binary_units_or_plain_bytes() {
        assert_eq!(parse_size("64MiB"), Ok(64 * MIB));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1024 * MIB));
        assert_eq!(parse_size("1048576"), Ok(MIB));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size(" 2 mib "), Ok(2 * MIB));
    }

    #[test]
    fn bad_sizes_are_refused_with_what_is_accepted() {
        for bad in ["", "MiB", "-1MiB", "1.5GiB", "ten"] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::NotANumber(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_size("64MB"),
            Err(SizeError::UnknownUnit("64MB".into()))
        );
        let message = parse_size("64MB").expect_err("unknown unit").to_string();
        assert!(message.contains("KiB, MiB or GiB"), "{message}");
        assert_eq!(
            parse_size("99999999999999999999GiB"),
            Err(SizeError::TooLarge("99999999999999999999GiB".into()))
        );
        assert!(matches!(
            parse_size(&format!("{}GiB", usize::MAX >> 20)),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn reservations_are_refused_when_the_budget_is_spent_and_given_back_when_dropped() {
        let budget = BufferBudget::new(2 * MIB);
        let mut first = budget.reserve();
        first.grow(MIB).expect("fits");
        first.grow(MIB / 2).expect("fits");
        assert_eq!(budget.in_use(), 3 * MIB / 2);
        let mut second = budget.reserve();
        second.grow(MIB / 4).expect("fits");
        assert_eq!(
            second.grow(MIB / 2),
            Err(BudgetError::Exhausted {
                in_use: 7 * MIB / 4,
                limit: 2 * MIB
            })
        );
        assert_eq!(budget.refusals(), 1);
        assert_eq!(second.held(), MIB / 4, "a refused grow holds nothing more");
        drop(first);
        assert_eq!(budget.in_use(), MIB / 4);
        second.grow(MIB).expect("fits once the first is gone");
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_body_larger_than_the_whole_budget_is_refused_as_such_and_not_counted() {
        let budget = BufferBudget::new(MIB);
        let mut reservation = budget.reserve();
        reservation.grow(MIB).expect("fits exactly");
        assert_eq!(
            reservation.grow(1),
            Err(BudgetError::LargerThanBudget { limit: MIB })
        );
        assert_eq!(budget.refusals(), 0);
    }

    #[test]
    fn a_panic_while_holding_gives_the_bytes_back() {
        let budget = BufferBudget::new(MIB);
        let outcome = std::panic::catch_unwind(|| {
            let mut reservation = budget.reserve();
            reservation.grow(1000).expect("fits");
            panic!("while buffering");
        });
        assert!(outcome.is_err());
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_lowered_limit_refuses_new_bytes_until_enough_are_given_back() {
        let budget = BufferBudget::new(2 * MIB);
        let mut held = budget.reserve();
        held.grow(MIB).expect("fits");
        budget.set_limit(MIB / 2);
        assert!(matches!(
            budget.reserve().grow(1),
            Err(BudgetError::Exhausted { .. })
        ));
        drop(held);
        budget.reserve().grow(MIB / 2).expect("fits the new limit");
        assert_eq!(budget.in_use(), 0);
        assert_eq!(
            budget.metrics(),
            [
                ("gns_gateway_buffered_bytes", 0),
                ("gns_gateway_buffer_budget_bytes", (MIB / 2) as u64),
                ("gns_gateway_buffer_budget_refusals_total", 1),
            ]
        );
    }

    #[test]
    fn collected_chunks_are_joined_in_order_and_hold_the_declared_size_until_dropped() {
        let budget = BufferBudget::new(MIB);
        let mut collector = Collector::reserved(10, &budget).expect("room");
        assert_eq!(budget.in_use(), 10, "the declared length is held at once");
        collector.push(Bytes::from_static(b"hello")).expect("fits");
        collector.push(Bytes::new()).expect("empty");
        collector.push(Bytes::from_static(b" you")).expect("fits");
        assert!(matches!(
            collector.push(Bytes::from_static(b"!!")),
            Err(BodyError::TooLarge(10))
        ));
        let body = collector.finish();
        assert_eq!(&body.bytes()[..], b"hello you");
        assert_eq!(budget.in_use(), 10);
        drop(body);
        assert_eq!(budget.in_use(), 0);
    }
}
