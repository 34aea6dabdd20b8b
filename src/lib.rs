//! Rafter's domain library: the Karpenter-compatible API types and the pure logic around them.
//!
//! Everything in this crate is synchronous and free of I/O so it can be tested without a
//! cluster, a cloud or a runtime; the actor tree in `rafter-actors` supplies the effects.
#![forbid(unsafe_code)]

pub mod api;
pub mod cloud;
pub mod interruption;
pub mod scheduling;
