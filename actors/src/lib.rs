//! rafter-actors: the supervised actor tree that runs Rafter (one module per actor), the leader
//! elector, telemetry, the demo, and what the `rafter` binary needs.
#![forbid(unsafe_code)]

pub mod batcher;
pub mod caches;
pub mod catalog;
pub mod clock;
pub mod context;
pub mod controller;
pub mod demo;
pub mod disrupter;
pub mod elector;
pub mod gc;
pub mod interruption;
pub mod launcher;
pub mod metrics;
pub mod nodeclass;
pub mod solver;
pub mod supervisor;
pub mod telemetry;
pub mod terminator;
pub mod timeline;
pub mod validation;
pub mod world;
