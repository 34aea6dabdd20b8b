//! The messages the leader-group actors send one another, and where each of them lives now: a
//! sender names its peer here, never the peer's module, so the actors import no one but this.

use std::sync::RwLock;

use ractor::ActorRef;
use rafter::api::nodeclaim::NodeClaim;

#[derive(Debug)]
pub enum BatcherMessage {
    /// A pod needs capacity (or an earlier batch left some pods without it).
    Pending,
    /// Check whether the window is due.
    Tick,
}

#[derive(Debug)]
pub enum SolverMessage {
    /// Plan capacity for every pod pending now, within the batch's `provision` span.
    Solve { span: tracing::Span },
}

#[derive(Debug)]
pub enum LauncherMessage {
    /// Create and launch these claims (built by `planning::plan_claims`), inside the batch's `provision`
    /// span (or an interruption's `replace` span).
    Launch { claims: Vec<Planned>, span: tracing::Span },
    /// Follow every claim one step further.
    Reconcile,
}

/// A claim a solve planned, built and named before it is created, and the pods it is for.
#[derive(Debug, Clone)]
pub struct Planned {
    pub claim: NodeClaim,
    pub pods: Vec<String>,
}

#[derive(Debug)]
pub enum TerminatorMessage {
    Reconcile,
}

/// Addresses of the leader-group actors, replaced when the supervisor restarts one, so a sender
/// always reaches the live instance.
#[derive(Debug, Default)]
pub struct Peers {
    pub batcher: RwLock<Option<ActorRef<BatcherMessage>>>,
    pub solver: RwLock<Option<ActorRef<SolverMessage>>>,
    pub launcher: RwLock<Option<ActorRef<LauncherMessage>>>,
    pub terminator: RwLock<Option<ActorRef<TerminatorMessage>>>,
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
