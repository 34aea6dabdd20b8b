//! Disrupter: decides which nodes go. Its methods are emptiness (`consolidateAfter` on an empty
//! node, legacy `ttlSecondsAfterEmpty`) and expiry (`expireAfter`, legacy
//! `ttlSecondsUntilExpired`); each ends in deleting the NodeClaim, which the Terminator carries
//! out. An empty node that a solve would place pending pods on is kept: it is waiting for them.
//! Consolidation of under-used nodes, drift and disruption budgets are not built yet; they will be
//! further [`Method`]s, reusing the core's drain plan and claim lifecycle.

use kube::ResourceExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::nodeclaim::{NodeClaim, conditions};
use rafter::state::disruption::{Emptiness, blocks_disruption, emptiness, empty_ttl, expired, is_workload};
use serde_json::json;

use crate::clock::age;
use crate::context::Ctx;
use crate::writes::delete_claim;
use rafter::state::condition_true;

/// Condition recording since when a node has had no workload pods, so any leader counts on.
pub const EMPTY: &str = "Empty";

/// Why a node is disrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Empty,
    Expired,
}

#[derive(Debug)]
pub struct Disrupter;

#[derive(Debug)]
pub enum DisrupterMessage {
    Reconcile,
}

#[derive(Debug)]
pub struct DisrupterState {
    ctx: Ctx,
}

pub type DisrupterArgs = Ctx;

/// The nodes and in-flight claims a solve would place pending pods on now: an empty one of these
/// is waiting for pods (the scheduler has not bound them yet), not idle. Asked of the solver itself,
/// from the caches, so a new leader answers the same.
async fn awaited(ctx: &Ctx) -> HashSet<String> {
    let pods = ctx.caches.pods.all();
    let pending: Vec<Pod> =
        pods.iter().filter(|p| rafter::state::provisionable(p)).map(|p| p.as_ref().clone()).collect();
    if pending.is_empty() {
        return HashSet::new();
    }
    let solved =
        crate::planning::solve_now(ctx, pods, pending, ctx.caches.claims.all(), ctx.caches.effective_pools()).await;
    solved.map(|(plan, _, _)| plan.placements.into_iter().map(|p| p.node).collect()).unwrap_or_default()
}

fn empty_for(ctx: &Ctx, claim: &NodeClaim) -> Option<std::time::Duration> {
    let c = claim.status.as_ref()?.conditions.iter().find(|c| c.type_ == EMPTY && c.status == "True")?;
    Some(age(ctx.clock.as_ref(), &c.last_transition_time))
}

impl Disrupter {
    async fn reconcile(&self, state: &mut DisrupterState) {
        let ctx = state.ctx.clone();
        let pools = ctx.caches.pools_by_name();
        let pods = ctx.caches.pods.all();
        let mut by_node: HashMap<&str, Vec<&Arc<Pod>>> = HashMap::new();
        for pod in &pods {
            if let Some(node) = rafter::state::node_name(pod) {
                by_node.entry(node).or_default().push(pod);
            }
        }
        // Computed once per pass, and only when an empty node is due to go.
        let mut awaited_now: Option<HashSet<String>> = None;
        for claim in ctx.caches.claims.all() {
            if claim.metadata.deletion_timestamp.is_some() || !condition_true(&claim, conditions::INITIALIZED) {
                continue;
            }
            let name = claim.name_any();
            let Some(node) = claim.status.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            let Some(pool) = rafter::state::pool_of(claim.metadata.labels.as_ref()).and_then(|p| pools.get(p)) else {
                continue;
            };
            let on_node = by_node.get(node.as_str()).map(Vec::as_slice).unwrap_or_default();
            // Expiry is forceful in v1: it does not wait for emptiness; the Terminator honours
            // do-not-disrupt pods up to the claim's terminationGracePeriod.
            let created =
                claim.metadata.creation_timestamp.as_ref().map(|t| age(ctx.clock.as_ref(), t)).unwrap_or_default();
            let expire_after = claim.spec.template.expire_after().parse().ok().flatten();
            if expired(created, expire_after) {
                tracing::info!(
                    "Triggering termination for expired node {node} (nodeclaim {name}, expireAfter {:?})",
                    expire_after.unwrap_or_default()
                );
                let _ = delete_claim(&ctx, &name).await;
                continue;
            }
            let workload = on_node.iter().filter(|p| is_workload(p)).count();
            if on_node.iter().any(|p| blocks_disruption(p)) {
                continue;
            }
            let decision = emptiness(empty_ttl(pool), workload, empty_for(&ctx, &claim));
            match decision {
                Emptiness::Keep => {}
                Emptiness::MarkEmpty | Emptiness::ClearEmpty => {
                    let empty = decision == Emptiness::MarkEmpty;
                    let mut list = claim.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
                    let reason = if empty { "Empty" } else { "NotEmpty" };
                    crate::writes::set_condition(&mut list, EMPTY, empty, reason, "", ctx.clock.as_ref());
                    let patch = json!({"status": {"conditions": list}});
                    let api = kube::Api::<NodeClaim>::all(ctx.client.clone());
                    if api.patch_status(&name, &Default::default(), &kube::api::Patch::Merge(patch)).await.is_ok()
                        && empty
                    {
                        tracing::info!("Added TTL to empty node {node}");
                    }
                }
                Emptiness::Remove { after } => {
                    if awaited_now.is_none() {
                        awaited_now = Some(awaited(&ctx).await);
                    }
                    if awaited_now.as_ref().is_some_and(|a| a.contains(&node) || a.contains(&name)) {
                        tracing::debug!("empty node {node} is kept: pending pods are planned onto it");
                        continue;
                    }
                    tracing::info!("Triggering termination after {}s for empty node {node}", after.as_secs());
                    let _ = delete_claim(&ctx, &name).await;
                }
            }
        }
    }
}

impl Actor for Disrupter {
    type Msg = DisrupterMessage;
    type State = DisrupterState;
    type Arguments = DisrupterArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(DisrupterMessage::Reconcile);
        Ok(DisrupterState { ctx })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let DisrupterMessage::Reconcile = message;
        self.reconcile(state).await;
        myself.send_after(state.ctx.config.disruption_period, || DisrupterMessage::Reconcile);
        Ok(())
    }
}
