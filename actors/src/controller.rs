//! One Rafter replica: builds the shared context, starts the root supervisor and the metrics
//! endpoint, and offers graceful shutdown (the lease is released) and a hard kill (as SIGKILL would:
//! nothing is released) for tests and the demo.

use std::net::SocketAddr;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorRef};
use rafter::cloud::CloudProvider;
use tokio::task::JoinHandle;

use crate::caches::Caches;
use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::context::{ControllerConfig, Ctx};
use crate::messages::Peers;
use crate::metrics::Metrics;
use crate::supervisor::{Child, Supervisor, SupervisorMessage};
use crate::timeline::Timeline;

/// Why a replica could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot start the supervisor: {0}")]
    Spawn(#[source] ractor::SpawnErr),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor gave up: {0}")]
    Escalated(String),
}

/// What a replica is started with.
#[derive(Clone)]
pub struct ReplicaArgs {
    pub client: kube::Client,
    pub lease_client: kube::Client,
    pub cloud: Arc<dyn CloudProvider>,
    pub config: ControllerConfig,
    pub clock: Option<Arc<dyn Clock>>,
    /// Where to serve /metrics, /healthz and /readyz; none for in-process replicas of tests.
    pub metrics_addr: Option<SocketAddr>,
    /// The interruption queue the leader consumes, if any.
    pub queue: Option<Arc<dyn rafter::interruption::queue::MessageQueue>>,
}

/// A running replica.
#[derive(Debug)]
pub struct Replica {
    pub ctx: Ctx,
    supervisor: ActorRef<SupervisorMessage>,
    join: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    pub metrics_addr: Option<SocketAddr>,
    stop_reason: Arc<std::sync::Mutex<Option<String>>>,
}

/// Watches the supervisor so a give-up is reported with its reason.
#[derive(Debug)]
struct Watchdog;

impl Actor for Watchdog {
    type Msg = ();
    type State = Arc<std::sync::Mutex<Option<String>>>;
    type Arguments = Arc<std::sync::Mutex<Option<String>>>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        slot: Self::Arguments,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        Ok(slot)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: ractor::SupervisionEvent,
        slot: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        let reason = match event {
            ractor::SupervisionEvent::ActorTerminated(_, _, reason) => reason,
            ractor::SupervisionEvent::ActorFailed(_, e) => Some(e.to_string()),
            _ => return Ok(()),
        };
        if let Ok(mut s) = slot.lock() {
            *s = reason;
        }
        myself.stop(None);
        Ok(())
    }
}

fn kill_tree(cell: &ActorCell) {
    for child in cell.get_children() {
        kill_tree(&child);
    }
    cell.kill();
}

impl Replica {
    pub async fn start(args: ReplicaArgs) -> Result<Self, ControllerError> {
        let ctx = Ctx {
            client: args.client,
            lease_client: args.lease_client,
            cloud: args.cloud,
            caches: Arc::new(Caches::default()),
            catalog: Arc::new(Catalog::default()),
            metrics: Arc::new(Metrics::default()),
            timeline: Arc::new(Timeline::default()),
            clock: args.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            config: Arc::new(args.config),
            peers: Arc::new(Peers::default()),
            queue: args.queue,
            traces: Arc::default(),
            lease: Arc::default(),
            in_flight: Arc::default(),
        };
        ctx.metrics.watch_cloud(ctx.cloud.clone());
        let (mut http, mut metrics_addr) = (None, None);
        if let Some(addr) = args.metrics_addr {
            let listener =
                crate::metrics::bind(addr).await.map_err(|source| ControllerError::Metrics { addr, source })?;
            metrics_addr = listener.local_addr().ok();
            let check = ctx.clone();
            let ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = Arc::new(move || readiness(&check));
            http = Some(tokio::spawn(crate::metrics::serve(listener, ctx.metrics.clone(), ready)));
        }
        let stop_reason = Arc::new(std::sync::Mutex::new(None));
        let (watchdog, watchdog_join) =
            Actor::spawn(None, Watchdog, stop_reason.clone()).await.map_err(ControllerError::Spawn)?;
        let (supervisor, _) = Actor::spawn_linked(None, Supervisor, ctx.clone(), watchdog.get_cell())
            .await
            .map_err(ControllerError::Spawn)?;
        Ok(Self { ctx, supervisor, join: Some(watchdog_join), http, metrics_addr, stop_reason })
    }

    pub fn identity(&self) -> &str {
        &self.ctx.config.identity
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.ctx.metrics.leader.get() == 1
    }

    /// What `/readyz` reports: every cache synced, and the lease reachable.
    pub fn is_ready(&self) -> bool {
        readiness(&self.ctx).is_ok()
    }

    /// Why `/readyz` is red, if it is.
    pub fn readiness(&self) -> Result<(), String> {
        readiness(&self.ctx)
    }

    /// Children running now.
    pub async fn running(&self) -> Vec<Child> {
        ractor::call_t!(self.supervisor, SupervisorMessage::Running, 5_000).unwrap_or_default()
    }

    /// Graceful shutdown: the lease is released first so a standby takes over at once.
    pub async fn shutdown(mut self) {
        let timeout = self.ctx.config.retry_period.as_millis() as u64 + 2_000;
        let _ = ractor::call_t!(self.supervisor, SupervisorMessage::Shutdown, timeout);
        if let Some(join) = self.join.take() {
            let _ = join.await;
        }
        if let Some(http) = self.http.take() {
            http.abort();
        }
    }

    /// As SIGKILL: every actor and task stops where it is; nothing is released.
    pub fn kill(mut self) {
        kill_tree(&self.supervisor.get_cell());
        if let Some(http) = self.http.take() {
            http.abort();
        }
    }

    /// Resolves when the supervisor has stopped (it gave up, or was shut down).
    pub async fn stopped(&mut self) {
        if let Some(join) = self.join.as_mut() {
            let _ = join.await;
            self.join = None;
        }
    }

    /// Waits until the replica stops; an error when the supervisor gave up.
    pub async fn wait(mut self) -> Result<(), ControllerError> {
        if let Some(join) = self.join.take() {
            let _ = join.await;
        }
        let reason = self.stop_reason.lock().ok().and_then(|s| s.clone());
        match reason {
            Some(reason) => Err(ControllerError::Escalated(reason)),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for ReplicaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaArgs").field("identity", &self.config.identity).finish_non_exhaustive()
    }
}

/// Ready: warm (every cache has listed) and in touch with the leader lease, leading or not — a hot
/// standby is ready; one that cannot reach the lease can never take over.
fn readiness(ctx: &Ctx) -> Result<(), String> {
    if !ctx.caches.synced() {
        return Err("caches not synced".into());
    }
    match ctx.lease.problem(ctx.config.lease_duration) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}
