//! An in-memory Kubernetes API server speaking the REST and watch protocol kube-rs and kubectl use.

pub mod admission;
pub mod cel_cost;
pub mod error;
pub mod faults;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;

pub use error::ApiError;
pub use faults::{ErrorRule, FaultSpec, Faults, Partition, PartitionMode};
pub use server::{RunningServer, ServerConfig, ServerState};
