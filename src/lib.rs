//! Rafter's domain library: the Karpenter-compatible API types and the pure logic around them.
//!
//! The API types, the scheduling library and the parsers are synchronous and free of I/O, so they
//! are tested without a cluster, a cloud or a runtime. `cloud` is the async seam to the cloud (the
//! `CloudProvider` trait and its implementations); the actor tree in `rafter-actors` supplies the
//! effects.
#![forbid(unsafe_code)]

pub mod api;
pub mod cloud;
pub mod disruption;
pub mod interruption;
pub mod mix;
pub mod scheduling;
pub mod state;
