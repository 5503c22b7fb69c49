//! gnsctl
