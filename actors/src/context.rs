//! What every actor of one replica shares: clients, the cloud, the watched caches, the instance
//! catalog, metrics, the timeline, the clock, and the current address of each leader-group actor.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::ActorRef;
use rafter::cloud::CloudProvider;

use crate::caches::Caches;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::timeline::Timeline;

/// How pods reach the nodes Rafter launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BindingMode {
    /// kube-scheduler binds pods once nodes register; Rafter only emits `Nominated` events.
    Scheduler,
    /// Rafter creates the Node with the launch and binds the batch's pods to it at once.
    Direct,
}

/// The controller's timings and switches. Defaults are the documented production values.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Tags every instance; garbage collection only touches its own cluster's.
    pub cluster_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub batch_idle: Duration,
    pub batch_max: Duration,
    /// How often the launcher, terminator and disrupter look at the cluster again.
    pub reconcile_period: Duration,
    /// How often the disrupter looks for empty and expired nodes.
    pub disruption_period: Duration,
    /// How often garbage collection lists the cloud's instances.
    pub gc_period: Duration,
    /// How long an instance without a NodeClaim is left alone before it is terminated.
    pub gc_grace: Duration,
    /// How long an instance type's offering is avoided after the cloud had no capacity for it.
    pub unavailable_offering_ttl: Duration,
    pub binding: BindingMode,
    /// Restarts of one actor tolerated within `restart_window` before the process gives up.
    pub max_restarts: usize,
    pub restart_window: Duration,
    /// Longest wait for an answer from another actor.
    pub call_timeout: Duration,
    /// Concurrent cloud launches and evictions.
    pub parallelism: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            cluster_name: "rafter".into(),
            identity: "rafter".into(),
            lease_namespace: "karpenter".into(),
            lease_name: "rafter-leader-election".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            batch_idle: Duration::from_secs(1),
            batch_max: Duration::from_secs(10),
            reconcile_period: Duration::from_millis(500),
            disruption_period: Duration::from_secs(2),
            gc_period: Duration::from_secs(10),
            gc_grace: Duration::from_secs(30),
            unavailable_offering_ttl: Duration::from_secs(180),
            binding: BindingMode::Scheduler,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
            parallelism: 32,
        }
    }
}

/// Addresses of the leader-group actors, replaced when the supervisor restarts one, so a sender
/// always reaches the live instance.
#[derive(Debug, Default)]
pub struct Peers {
    pub batcher: RwLock<Option<ActorRef<crate::batcher::BatcherMessage>>>,
    pub solver: RwLock<Option<ActorRef<crate::solver::SolverMessage>>>,
    pub launcher: RwLock<Option<ActorRef<crate::launcher::LauncherMessage>>>,
    pub terminator: RwLock<Option<ActorRef<crate::terminator::TerminatorMessage>>>,
}

/// Reads a peer's address, tolerating a poisoned lock (a panicking writer cannot corrupt an Option).
pub fn peer<T: Clone>(slot: &RwLock<Option<T>>) -> Option<T> {
    match slot.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Replaces a peer's address.
pub fn set_peer<T>(slot: &RwLock<Option<T>>, value: Option<T>) {
    match slot.write() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

/// One replica's shared handles.
#[derive(Clone)]
pub struct Ctx {
    /// For everything but the lease.
    pub client: kube::Client,
    /// The lease's own client, so throttling during a scale-up cannot cost the lease.
    pub lease_client: kube::Client,
    pub cloud: Arc<dyn CloudProvider>,
    pub caches: Arc<Caches>,
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    pub timeline: Arc<Timeline>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<ControllerConfig>,
    pub peers: Arc<Peers>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("identity", &self.config.identity).finish_non_exhaustive()
    }
}
