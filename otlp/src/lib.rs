//! `gns-otlp`: distributed tracing for the gateways and the federation.
//!
//! - [`context`]: the W3C trace context (`traceparent`, `tracestate`):
//!   read from a request, made when absent (sampled by ratio), and the
//!   header a hop passes on with its own span as the parent.
//! - [`export`]: spans sent over OTLP/HTTP (protobuf,
//!   `POST <endpoint>/v1/traces`), batched by a task of their own; a span
//!   recorded when the queue is full is dropped and counted, never waited
//!   for, so tracing cannot slow a request down.

pub mod context;
pub mod export;

pub use context::{RatioError, TraceContext, parse_ratio};
pub use export::{Exporter, ExporterError, Kind, Span, Value};
