//! Terminator: the finalizer flow of a deleted NodeClaim. Taint the node
//! `karpenter.sh/disrupted:NoSchedule`, evict its pods through the Eviction API in Karpenter's four
//! tiers (429 → retry with backoff), wait for `do-not-disrupt` pods unless the claim's
//! `terminationGracePeriod` has run out, terminate the instance until the cloud says it is gone,
//! delete the Node, and remove the finalizer. Every step is read back from the API server, so a
//! crash anywhere resumes where it stopped.

use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, EvictParams, Patch, PatchParams};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::labels;
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::{CloudError, InstanceState};
use rafter::interruption::plan::{Record, eviction_grace, grace_seconds, must_delete_now};
use rafter::state::disruption::{blocks_disruption, eviction_backoff, next_evictions};
use serde_json::json;
use tokio::time::Instant;
use tracing::Instrument;

use crate::clock::age;
use crate::context::Ctx;
pub use crate::messages::TerminatorMessage;
use crate::timeline::Mark;
use crate::writes::{node_of, taint_disrupted};
use rafter::state::condition_true;

#[derive(Debug)]
pub struct Terminator;

#[derive(Debug)]
pub struct TerminatorState {
    ctx: Ctx,
    /// Pod uid → (next eviction attempt, failures), for PDB refusals.
    backoff: HashMap<String, (Instant, u32)>,
    /// Each claim's open span: its `drain` while it drains, then its `terminate`.
    spans: HashMap<String, tracing::Span>,
    /// Interrupted claims whose drain has finished (their span is now `terminate`).
    drained: std::collections::HashSet<String>,
}

pub type TerminatorArgs = Ctx;

fn pod_key(pod: &Pod) -> (String, String) {
    (pod.metadata.namespace.clone().unwrap_or_default(), pod.name_any())
}

enum Evicted {
    Done,
    Refused,
    Failed,
}

/// How one pod leaves a draining node.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// Through the Eviction API (disruption budgets apply), with this grace period if not its own.
    Evict { grace: Option<i64> },
    /// Deleted outright with this grace period: the node never became ready, its termination grace
    /// period ran out, or its deadline leaves no more time to wait for a budget.
    Delete { grace: i64 },
}

async fn evict(client: kube::Client, pod: Arc<Pod>, removal: Removal) -> (String, Evicted) {
    let (ns, name) = pod_key(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let span = tracing::info_span!("evict", pod = %format!("{ns}/{name}"), how = tracing::field::Empty);
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let result = match removal {
        Removal::Delete { grace } => {
            span.record("how", "delete");
            api.delete(&name, &DeleteParams::default().grace_period(grace.try_into().unwrap_or(0)))
                .instrument(span.clone())
                .await
                .map(|_| ())
        }
        Removal::Evict { grace } => {
            span.record("how", "evict");
            let mut params = EvictParams::default();
            if let Some(grace) = grace {
                params.delete_options = Some(DeleteParams::default().grace_period(grace.try_into().unwrap_or(0)));
            }
            api.evict(&name, &params).instrument(span.clone()).await.map(|_| ())
        }
    };
    let outcome = match result {
        Ok(()) => Evicted::Done,
        Err(kube::Error::Api(s)) if s.code == 404 => Evicted::Done,
        Err(kube::Error::Api(s)) if s.code == 429 => Evicted::Refused,
        Err(error) => {
            tracing::debug!(parent: &span, pod = %format!("{ns}/{name}"), %error, "eviction failed");
            Evicted::Failed
        }
    };
    (uid, outcome)
}

impl Terminator {
    /// One drain step of one claim's termination: taint, then evict; true once the node is drained
    /// (or there is none).
    async fn drain(
        &self,
        state: &mut TerminatorState,
        claim: &NodeClaim,
        nodes: &[Arc<Node>],
        pods: &[Arc<Pod>],
    ) -> bool {
        let ctx = state.ctx.clone();
        let provider = claim.status.as_ref().and_then(|s| s.provider_id.clone());
        let node = node_of(provider.as_deref(), nodes);
        if let Some(node) = node {
            let node_name = node.name_any();
            if let Err(error) = taint_disrupted(&ctx, node).await {
                tracing::debug!(%error, "cannot taint {node_name}; retrying");
                return false;
            }
            let on_node_all: Vec<&Arc<Pod>> =
                pods.iter().filter(|p| rafter::state::node_name(p) == Some(node_name.as_str())).collect();
            let on_node: Vec<&Arc<Pod>> =
                on_node_all.iter().copied().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            // `terminationGracePeriod` bounds the drain: past it, pods are deleted, blocked or not.
            let deadline_passed = claim
                .spec
                .template
                .termination_grace_period
                .as_ref()
                .and_then(|g| g.parse().ok())
                .zip(claim.metadata.deletion_timestamp.as_ref())
                .is_some_and(|(grace, deleted)| age(ctx.clock.as_ref(), deleted) >= grace);
            // A node that never became ready (a failed launch with pods bound directly) has nothing
            // to drain gracefully: its pods are deleted so their controllers recreate them.
            let never_ready = !condition_true(claim, rafter::api::nodeclaim::conditions::INITIALIZED)
                && !rafter::state::node_ready(node);
            let force = deadline_passed || never_ready;
            // An interruption's deadline: the node goes then whatever its pods say, so
            // `do-not-disrupt` cannot hold the drain, and grace periods are cut to end before it.
            let deadline = Record::of(claim.metadata.annotations.as_ref()).and_then(|r| r.deadline);
            let wall = ctx.clock.now();
            let candidates: Vec<&Pod> = on_node
                .iter()
                .map(|p| p.as_ref())
                .filter(|p| force || deadline.is_some() || !blocks_disruption(p))
                .collect();
            let now = Instant::now();
            let batch: Vec<(Arc<Pod>, Removal)> = next_evictions(candidates.iter().copied())
                .into_iter()
                .filter(|p| {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    state.backoff.get(&uid).is_none_or(|(at, _)| *at <= now)
                })
                .filter_map(|p| on_node.iter().find(|q| q.metadata.uid == p.metadata.uid).map(|q| (*q).clone()))
                .map(|p| {
                    let grace = eviction_grace(&p, wall, deadline);
                    let removal = if force {
                        Removal::Delete { grace: 0 }
                    } else if must_delete_now(&p, wall, deadline) {
                        Removal::Delete { grace: grace.unwrap_or_else(|| grace_seconds(&p)) }
                    } else {
                        Removal::Evict { grace }
                    };
                    (p, removal)
                })
                .collect();
            // Wait until every pod the drain is responsible for is gone (terminating ones included).
            let still_there = on_node_all.iter().any(|p| rafter::state::disruption::eviction_tier(p).is_some());
            if still_there {
                let client = ctx.client.clone();
                let overrides =
                    if force { 0 } else { batch.iter().filter(|(_, r)| matches!(r, Removal::Delete { .. })).count() };
                let results: Vec<(String, Evicted)> = futures::stream::iter(batch)
                    .map(|(p, removal)| evict(client.clone(), p, removal))
                    .buffer_unordered(ctx.config.parallelism)
                    .collect()
                    .await;
                ctx.metrics.interruption_budget_overrides.inc_by(overrides as u64);
                for (uid, outcome) in results {
                    match outcome {
                        Evicted::Done => {
                            ctx.metrics.evictions.inc();
                            state.backoff.remove(&uid);
                        }
                        Evicted::Refused | Evicted::Failed => {
                            let entry = state.backoff.entry(uid).or_insert((now, 0));
                            // Against a deadline a budget is asked again every second at most.
                            let wait = eviction_backoff(entry.1);
                            entry.0 = now + if deadline.is_some() { wait.min(DEADLINE_RETRY) } else { wait };
                            entry.1 += 1;
                        }
                    }
                }
                return false;
            }
        }
        true
    }
}

/// The longest wait between eviction attempts of a pod whose node has a deadline.
const DEADLINE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// An interrupted claim's node is drained: how much time was left.
fn drained_interrupted(ctx: &Ctx, claim: &NodeClaim) {
    let name = claim.name_any();
    ctx.timeline.mark(Mark::Drained { claim: name.clone() });
    if let Some(deadline) = Record::of(claim.metadata.annotations.as_ref()).and_then(|r| r.deadline) {
        let left = deadline.duration_since(ctx.clock.now()).as_secs_f64();
        ctx.metrics.interruption_drain_margin.observe(left.max(0.0));
        tracing::info!("Drained interrupted nodeclaim {name}, {left:.1}s before its deadline");
    }
}

/// The rest of a drained claim's termination: the instance terminated until the cloud says it is
/// gone, the node deleted, the finalizer removed; true once it is finished.
async fn finish(ctx: &Ctx, claim: &NodeClaim, nodes: &[Arc<Node>]) -> bool {
    let name = claim.name_any();
    let provider = claim.status.as_ref().and_then(|s| s.provider_id.clone());
    let node = node_of(provider.as_deref(), nodes);
    // Drained (or no node): terminate the instance until the cloud says it is gone.
    match ctx.cloud.delete(claim).await {
        Ok(()) | Err(CloudError::NotFound { .. }) => {}
        Err(error) => {
            tracing::warn!(nodeclaim = %name, %error, "cannot terminate the instance yet; retrying");
            return false;
        }
    }
    if let Some(provider) = &provider {
        match ctx.cloud.get(provider).await {
            Err(CloudError::NotFound { .. }) => {}
            Ok(i) if i.state == InstanceState::Terminated => {}
            Ok(_) => return false,
            Err(error) => {
                tracing::debug!(%error, "cannot confirm termination; retrying");
                return false;
            }
        }
    }
    if let Some(node) = node {
        let node_name = node.name_any();
        match Api::<Node>::all(ctx.client.clone()).delete(&node_name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!("Deleted node {node_name}"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                tracing::debug!(%error, "cannot delete node {node_name}; retrying");
                return false;
            }
        }
    }
    let finalizers: Vec<String> =
        claim.metadata.finalizers.iter().flatten().filter(|f| *f != labels::TERMINATION_FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": claim.metadata.resource_version}});
    match Api::<NodeClaim>::all(ctx.client.clone()).patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => {
            if let Some(deadline) = Record::of(claim.metadata.annotations.as_ref()).and_then(|r| r.deadline)
                && ctx.clock.now() > deadline
            {
                ctx.metrics.interruption_deadline_misses.inc();
                tracing::warn!("nodeclaim {name} was still terminating at its interruption deadline {deadline}");
            }
            ctx.metrics.claims_terminated.inc();
            ctx.timeline.mark(Mark::Terminated { claim: name.clone() });
            tracing::info!("Terminated nodeclaim {name}");
            true
        }
        Err(kube::Error::Api(s)) if s.code == 404 => true,
        Err(error) => {
            tracing::debug!(%error, "cannot remove the finalizer of {name}; retrying");
            false
        }
    }
}

impl Actor for Terminator {
    type Msg = TerminatorMessage;
    type State = TerminatorState;
    type Arguments = TerminatorArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(TerminatorMessage::Reconcile);
        Ok(TerminatorState { ctx, backoff: HashMap::new(), spans: HashMap::new(), drained: Default::default() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let TerminatorMessage::Reconcile = message;
        let ctx = state.ctx.clone();
        let claims = ctx.caches.claims.all();
        let deleting: Vec<&Arc<NodeClaim>> = claims
            .iter()
            .filter(|c| {
                c.metadata.deletion_timestamp.is_some()
                    && c.metadata.finalizers.iter().flatten().any(|f| f == labels::TERMINATION_FINALIZER)
            })
            .collect();
        // A claim no longer terminating ends its spans.
        let live: std::collections::HashSet<String> = deleting.iter().filter_map(|c| c.metadata.name.clone()).collect();
        state.spans.retain(|k, _| live.contains(k));
        state.drained.retain(|k| live.contains(k));
        if !deleting.is_empty() {
            let nodes = ctx.caches.nodes.all();
            let pods = ctx.caches.pods.all();
            let mut drained = Vec::new();
            for claim in deleting {
                let name = claim.name_any();
                let interruption = ctx.traces.get(&name);
                let span = state
                    .spans
                    .entry(name.clone())
                    .or_insert_with(|| match &interruption {
                        Some(parent) => tracing::info_span!(parent: parent, "drain", nodeclaim = %name),
                        None => tracing::info_span!("terminate", nodeclaim = %name),
                    })
                    .clone();
                if self.drain(state, claim, &nodes, &pods).instrument(span.clone()).await {
                    let mut span = span;
                    if let Some(parent) = &interruption
                        && state.drained.insert(name.clone())
                    {
                        drained_interrupted(&ctx, claim);
                        span = tracing::info_span!(parent: parent, "terminate", nodeclaim = %name);
                        state.spans.insert(name.clone(), span.clone());
                    }
                    drained.push((claim, name, span));
                }
            }
            // Every drained claim's cloud delete goes out at once, so the provider can batch them.
            let nodes = &nodes;
            let finishing = drained.into_iter().map(|(claim, name, span)| {
                let ctx = ctx.clone();
                async move {
                    if finish(&ctx, claim, nodes).instrument(span).await {
                        ctx.traces.remove(&name);
                    }
                }
            });
            futures::future::join_all(finishing).await;
        }
        myself.send_after(ctx.config.reconcile_period, || TerminatorMessage::Reconcile);
        Ok(())
    }
}
