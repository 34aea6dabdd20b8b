//! rafter-actors: the supervised actor tree that runs Rafter (one module per actor), the leader
//! elector, telemetry, the demo, and what the `rafter` binary needs.
#![forbid(unsafe_code)]

pub mod batcher;
pub mod caches;
pub mod catalog;
pub mod catalog_refresher;
pub mod clock;
pub mod cluster_state;
pub mod context;
pub mod controller;
pub mod demo;
pub mod disrupter;
pub mod dry_run;
pub mod elector;
pub mod gc;
pub mod in_flight;
pub mod interruption;
pub mod launcher;
pub mod messages;
pub mod metrics;
pub mod nodeclass;
pub mod planning;
pub mod pod_watcher;
pub mod pool_status;
pub mod solver;
pub mod supervisor;
pub mod telemetry;
pub mod terminator;
pub mod timeline;
pub mod validation;
pub mod world;
pub mod writes;
