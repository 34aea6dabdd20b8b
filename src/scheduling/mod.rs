//! Scheduling: what pods need, what machines offer, and (with the solver) which machines to buy.
//!
//! Everything here is a synchronous function of its inputs, with no clock and no I/O.

pub mod catalog;
pub mod input;
pub mod instance_types;
pub mod requirements;
pub mod resources;
pub mod solver;
pub mod taints;
pub mod topology;
