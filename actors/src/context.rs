//! What every actor of one replica shares: clients, the cloud, the watched caches, the instance
//! catalog, metrics, the timeline, the clock, and the current address of each leader-group actor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use rafter::cloud::CloudProvider;
use rafter::interruption::plan::RebalancePolicy;
use rafter::interruption::queue::MessageQueue;

use crate::caches::Caches;
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::in_flight::InFlight;
use crate::messages::Peers;
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
    /// Concurrent long polls of the interruption queue.
    pub interruption_workers: usize,
    /// What a rebalance recommendation leads to.
    pub rebalance: RebalancePolicy,
    /// The disruption engine's tunables (the replacement threshold, the spot-to-spot rule, the
    /// search's limits).
    pub disruption: rafter::disruption::Settings,
    /// How long a disruption command waits before it is computed again and carried out only if it
    /// still holds (Karpenter waits 15 s).
    pub disruption_validation: std::time::Duration,
    /// How long a replacement may take to initialize before its command is abandoned.
    pub replacement_timeout: std::time::Duration,
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
            interruption_workers: 4,
            rebalance: RebalancePolicy::Replace,
            disruption: rafter::disruption::Settings::default(),
            disruption_validation: Duration::from_secs(15),
            replacement_timeout: rafter::state::disruption::REGISTRATION_TTL,
        }
    }
}

/// The open `interruption` span of each affected claim, so the actors that continue the work
/// (replacement, drain, termination) add to one trace.
#[derive(Debug, Default)]
pub struct Traces(Mutex<HashMap<String, tracing::Span>>);

impl Traces {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, tracing::Span>) -> T) -> T {
        match self.0.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub fn get(&self, claim: &str) -> Option<tracing::Span> {
        self.with(|m| m.get(claim).cloned())
    }

    /// The claim's span, or `make()`'s, which is kept.
    pub fn get_or_insert(&self, claim: &str, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
        self.with(|m| m.entry(claim.to_string()).or_insert_with(make).clone())
    }

    pub fn insert(&self, claim: &str, span: tracing::Span) {
        self.with(|m| m.insert(claim.to_string(), span));
    }

    /// Ends the claim's trace.
    pub fn remove(&self, claim: &str) {
        self.with(|m| m.remove(claim));
    }

    /// Forgets claims that no longer exist.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.with(|m| m.retain(|k, _| live(k)));
    }
}

/// What the elector last heard from the API server about the lease. A replica that cannot read
/// or write it can neither lead nor stand by, so it is not ready, and says why.
#[derive(Debug)]
pub struct LeaseHealth(Mutex<LeaseSeen>);

#[derive(Debug)]
struct LeaseSeen {
    started: Instant,
    ok_at: Option<Instant>,
    error: Option<String>,
    failures: u64,
}

impl Default for LeaseHealth {
    fn default() -> Self {
        Self(Mutex::new(LeaseSeen { started: Instant::now(), ok_at: None, error: None, failures: 0 }))
    }
}

impl LeaseHealth {
    fn with<T>(&self, f: impl FnOnce(&mut LeaseSeen) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn succeeded(&self) {
        self.with(|s| {
            s.ok_at = Some(Instant::now());
            s.error = None;
            s.failures = 0;
        });
    }

    /// Records a failed lease request; whether it is one to log at warn (the first of a run of
    /// failures, then one in 20, so a lasting problem is visible without flooding the log).
    pub fn failed(&self, error: String) -> bool {
        self.with(|s| {
            s.error = Some(error);
            s.failures += 1;
            s.failures % 20 == 1
        })
    }

    /// Why this replica is not ready, if it is not: no lease request has succeeded for `window`.
    pub fn problem(&self, window: Duration) -> Option<String> {
        self.with(|s| {
            let since = s.ok_at.unwrap_or(s.started);
            (since.elapsed() >= window).then(|| {
                let why = s.error.clone().unwrap_or_else(|| "no answer".into());
                format!("the leader lease has not been reachable for {:?}: {why}", since.elapsed())
            })
        })
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
    /// The interruption queue, when one is configured.
    pub queue: Option<Arc<dyn MessageQueue>>,
    pub traces: Arc<Traces>,
    /// Whether the lease answers: part of readiness.
    pub lease: Arc<LeaseHealth>,
    /// Claims planned and not yet in the cache.
    pub in_flight: Arc<InFlight>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("identity", &self.config.identity).finish_non_exhaustive()
    }
}
