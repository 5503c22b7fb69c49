//! Domain model: the validated types every resource is made of.
//!
//! Wire JSON is deserialized straight into these types; single-value rules
//! (names, domains, durations, CIDRs) are enforced by the newtypes while
//! deserializing, and whole-object rules (weights summing to 100, unreachable
//! rules, duplicate members) by each resource's `validate`. Either way the
//! failure names the offending field.

pub mod cluster_status;
mod primitives;
mod resources;
mod validation;

pub use cluster_status::{ClusterChange, ClusterPhase, ClusterStatus};
pub use primitives::{
    Cidr, Domain, DurationSpec, HeaderName, HostPort, LabelMap, Name, validate_labels,
};
pub use resources::*;
pub use validation::{FieldError, FieldErrors};
