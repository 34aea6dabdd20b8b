//! The root supervisor of one replica: starts the warm actors (elector, watchers, catalog), starts
//! the leader group on `Leader` and kills it on `Follower`, restarts any child that fails
//! (one-for-one, exponential backoff), and gives up (stopping with an error, so the process exits
//! non-zero and Kubernetes restarts the pod) after too many failures in a window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;

use crate::batcher::Batcher;
use crate::catalog_refresher::CatalogRefresher;
use crate::cluster_state::ClusterState;
use crate::context::Ctx;
use crate::disrupter::Disrupter;
use crate::elector::{LeaderElector, LeaderElectorArgs, LeaderElectorMessage, Leadership};
use crate::gc::GarbageCollector;
use crate::launcher::Launcher;
use crate::messages::set_peer;
use crate::pod_watcher::PodWatcher;
use crate::solver::Solver;
use crate::terminator::Terminator;
use crate::timeline::Mark;

/// The children, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    ClusterState,
    PodWatcher,
    Catalog,
    Elector,
    Terminator,
    Launcher,
    Solver,
    Batcher,
    Disrupter,
    GarbageCollector,
    NodeClassStatus,
    NodePoolStatus,
    ObjectValidation,
    InterruptionHandler,
}

const WARM: [Child; 4] = [Child::ClusterState, Child::PodWatcher, Child::Catalog, Child::Elector];
const LEADER_GROUP: [Child; 10] = [
    Child::Terminator,
    Child::Launcher,
    Child::Solver,
    Child::Batcher,
    Child::Disrupter,
    Child::GarbageCollector,
    Child::NodeClassStatus,
    Child::NodePoolStatus,
    Child::ObjectValidation,
    Child::InterruptionHandler,
];

impl Child {
    fn leader_only(self) -> bool {
        LEADER_GROUP.contains(&self)
    }
}

#[derive(Debug)]
pub struct Supervisor;

#[derive(Debug)]
pub enum SupervisorMessage {
    Leadership(Leadership),
    Restart(Child),
    /// Graceful shutdown: release the lease, stop everything, answer.
    Shutdown(RpcReplyPort<()>),
    /// Which children run now (for tests and the demo).
    Running(RpcReplyPort<Vec<Child>>),
}

#[derive(Debug)]
pub struct SupervisorState {
    ctx: Ctx,
    ids: HashMap<ActorId, Child>,
    cells: HashMap<Child, ActorCell>,
    failures: VecDeque<Instant>,
    attempts: HashMap<Child, u32>,
    leading: Option<i32>,
    shutting_down: bool,
    /// The elector's end of the leadership channel, handed to each elector the supervisor starts.
    leadership: tokio::sync::mpsc::UnboundedSender<Leadership>,
    /// Turns what the elector publishes into this actor's messages.
    forward: tokio::task::JoinHandle<()>,
}

pub type SupervisorArgs = Ctx;

/// Backoff before the n-th consecutive restart of one child: 100 ms doubling to 10 s.
pub fn restart_backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(7)).min(10_000))
}

impl Supervisor {
    async fn spawn(
        &self,
        myself: &ActorRef<SupervisorMessage>,
        state: &mut SupervisorState,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let cell = myself.get_cell();
        let ctx = state.ctx.clone();
        let peers = ctx.peers.clone();
        let spawned: ActorCell = match child {
            Child::ClusterState => Actor::spawn_linked(None, ClusterState, ctx, cell).await?.0.get_cell(),
            Child::PodWatcher => Actor::spawn_linked(None, PodWatcher, ctx, cell).await?.0.get_cell(),
            Child::Catalog => Actor::spawn_linked(None, CatalogRefresher, ctx, cell).await?.0.get_cell(),
            Child::Elector => {
                let args = LeaderElectorArgs { ctx, leadership: state.leadership.clone() };
                Actor::spawn_linked(None, LeaderElector, args, cell).await?.0.get_cell()
            }
            Child::Terminator => {
                let (r, _) = Actor::spawn_linked(None, Terminator, ctx, cell).await?;
                set_peer(&peers.terminator, Some(r.clone()));
                r.get_cell()
            }
            Child::Launcher => {
                let (r, _) = Actor::spawn_linked(None, Launcher, ctx, cell).await?;
                set_peer(&peers.launcher, Some(r.clone()));
                r.get_cell()
            }
            Child::Solver => {
                let (r, _) = Actor::spawn_linked(None, Solver, ctx, cell).await?;
                set_peer(&peers.solver, Some(r.clone()));
                r.get_cell()
            }
            Child::Batcher => {
                let (r, _) = Actor::spawn_linked(None, Batcher, ctx, cell).await?;
                set_peer(&peers.batcher, Some(r.clone()));
                r.get_cell()
            }
            Child::Disrupter => Actor::spawn_linked(None, Disrupter, ctx, cell).await?.0.get_cell(),
            Child::GarbageCollector => Actor::spawn_linked(None, GarbageCollector, ctx, cell).await?.0.get_cell(),
            Child::NodeClassStatus => {
                Actor::spawn_linked(None, crate::nodeclass::NodeClassStatus, ctx, cell).await?.0.get_cell()
            }
            Child::NodePoolStatus => {
                Actor::spawn_linked(None, crate::pool_status::NodePoolStatus, ctx, cell).await?.0.get_cell()
            }
            Child::ObjectValidation => {
                Actor::spawn_linked(None, crate::validation::ObjectValidation, ctx, cell).await?.0.get_cell()
            }
            Child::InterruptionHandler => {
                Actor::spawn_linked(None, crate::interruption::InterruptionHandler, ctx, cell).await?.0.get_cell()
            }
        };
        state.ids.insert(spawned.get_id(), child);
        state.cells.insert(child, spawned);
        Ok(())
    }

    /// Kills the leader group at once: a replica that may no longer lead must not finish a write.
    fn stop_leader_group(&self, state: &mut SupervisorState) {
        let peers = &state.ctx.peers;
        set_peer(&peers.batcher, None);
        set_peer(&peers.solver, None);
        set_peer(&peers.launcher, None);
        set_peer(&peers.terminator, None);
        for child in LEADER_GROUP {
            if let Some(cell) = state.cells.remove(&child) {
                state.ids.remove(&cell.get_id());
                cell.kill();
            }
        }
    }

    fn schedule_restart(
        &self,
        myself: &ActorRef<SupervisorMessage>,
        state: &mut SupervisorState,
        child: Child,
    ) -> bool {
        let now = Instant::now();
        let window = state.ctx.config.restart_window;
        state.failures.push_back(now);
        while state.failures.front().is_some_and(|t| now.duration_since(*t) > window) {
            state.failures.pop_front();
        }
        if state.failures.len() > state.ctx.config.max_restarts {
            return false;
        }
        let attempt = state.attempts.entry(child).or_insert(0);
        let delay = restart_backoff(*attempt);
        *attempt += 1;
        state.ctx.metrics.actor_restarts.inc();
        myself.send_after(delay, move || SupervisorMessage::Restart(child));
        true
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let (leadership, mut published) = tokio::sync::mpsc::unbounded_channel();
        let me = myself.clone();
        let forward = tokio::spawn(async move {
            while let Some(l) = published.recv().await {
                if me.cast(SupervisorMessage::Leadership(l)).is_err() {
                    break;
                }
            }
        });
        let mut state = SupervisorState {
            ctx,
            leadership,
            forward,
            ids: HashMap::new(),
            cells: HashMap::new(),
            failures: VecDeque::new(),
            attempts: HashMap::new(),
            leading: None,
            shutting_down: false,
        };
        for child in WARM {
            self.spawn(&myself, &mut state, child).await?;
        }
        Ok(state)
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.forward.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Leadership(Leadership::Leader(epoch)) if !state.shutting_down => {
                if state.leading.is_none() {
                    state.leading = Some(epoch);
                    state.ctx.metrics.leader.set(1);
                    state.ctx.metrics.leader_transitions.inc();
                    state.ctx.timeline.mark(Mark::Leading { epoch });
                    tracing::info!(identity = %state.ctx.config.identity, epoch, "leading: starting the leader group");
                    for child in LEADER_GROUP {
                        if let Err(error) = self.spawn(&myself, state, child).await {
                            tracing::error!(?child, %error, "cannot start a leader-group actor; retrying");
                            if !self.schedule_restart(&myself, state, child) {
                                myself.stop(Some(format!("{child:?} failed to start too often")));
                            }
                        }
                    }
                }
            }
            SupervisorMessage::Leadership(Leadership::Leader(_)) => {}
            SupervisorMessage::Leadership(Leadership::Follower) => {
                if state.leading.take().is_some() {
                    state.ctx.metrics.leader.set(0);
                    state.ctx.metrics.leader_transitions.inc();
                    state.ctx.timeline.mark(Mark::SteppedDown);
                    tracing::info!(identity = %state.ctx.config.identity, "following: leader group stopped");
                }
                self.stop_leader_group(state);
            }
            SupervisorMessage::Restart(child) => {
                if state.shutting_down
                    || state.cells.contains_key(&child)
                    || (child.leader_only() && state.leading.is_none())
                {
                    return Ok(());
                }
                tracing::info!(?child, "restarting actor");
                if let Err(error) = self.spawn(&myself, state, child).await {
                    tracing::error!(?child, %error, "restart failed");
                    if !self.schedule_restart(&myself, state, child) {
                        myself.stop(Some(format!("{child:?} failed to restart too often")));
                    }
                }
            }
            SupervisorMessage::Running(reply) => {
                let mut running: Vec<Child> = state.cells.keys().copied().collect();
                running.sort_by_key(|c| format!("{c:?}"));
                let _ = reply.send(running);
            }
            SupervisorMessage::Shutdown(reply) => {
                state.shutting_down = true;
                if let Some(cell) = state.cells.get(&Child::Elector) {
                    let elector: ActorRef<LeaderElectorMessage> = cell.clone().into();
                    let _ = ractor::call_t!(
                        elector,
                        LeaderElectorMessage::Release,
                        state.ctx.config.retry_period.as_millis() as u64 + 500
                    );
                }
                self.stop_leader_group(state);
                for (_, cell) in state.cells.drain() {
                    cell.stop(None);
                }
                state.ids.clear();
                let _ = reply.send(());
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match &event {
            SupervisionEvent::ActorFailed(cell, error) => (cell.clone(), format!("failed: {error}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.clone(), format!("stopped: {}", reason.as_deref().unwrap_or("no reason")))
            }
            _ => return Ok(()),
        };
        // Children we killed or stopped on purpose are no longer in `ids`.
        let Some(child) = state.ids.remove(&cell.get_id()) else { return Ok(()) };
        state.cells.remove(&child);
        if state.shutting_down {
            return Ok(());
        }
        tracing::error!(?child, "actor {why}; restarting it");
        if child.leader_only() {
            clear_peer(&state.ctx, child);
        }
        if !self.schedule_restart(&myself, state, child) {
            tracing::error!(
                "more than {} actor failures within {:?}; giving up so the process restarts",
                state.ctx.config.max_restarts,
                state.ctx.config.restart_window
            );
            myself.stop(Some(format!("{child:?} failed too often")));
        }
        Ok(())
    }
}

fn clear_peer(ctx: &Ctx, child: Child) {
    match child {
        Child::Batcher => set_peer(&ctx.peers.batcher, None),
        Child::Solver => set_peer(&ctx.peers.solver, None),
        Child::Launcher => set_peer(&ctx.peers.launcher, None),
        Child::Terminator => set_peer(&ctx.peers.terminator, None),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_from_100ms_to_10s() {
        assert_eq!(restart_backoff(0), Duration::from_millis(100));
        assert_eq!(restart_backoff(2), Duration::from_millis(400));
        assert_eq!(restart_backoff(20), Duration::from_secs(10));
    }
}
