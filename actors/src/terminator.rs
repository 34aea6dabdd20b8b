//! Terminator: the finalizer flow of a deleted NodeClaim. Taint the node
//! `karpenter.sh/disrupted:NoSchedule`, remove its pods as the core's drain plan says
//! (`rafter::state::drain`: Karpenter's four tiers through the Eviction API, 429 → retry with
//! backoff, `do-not-disrupt` waited for unless the claim's `terminationGracePeriod` has run out or
//! an interruption deadline cuts it short), terminate the instance until the cloud says it is gone,
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
use rafter::interruption::plan::Record;
use rafter::state::drain::{self, DrainOf, Removal};
use serde_json::json;
use tokio::time::Instant;
use tracing::Instrument;

use crate::context::Ctx;
pub use crate::messages::TerminatorMessage;
use crate::timeline::Mark;
use crate::writes::{node_of, taint_disrupted};

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
            let on_node: Vec<&Arc<Pod>> =
                pods.iter().filter(|p| rafter::state::node_name(p) == Some(node_name.as_str())).collect();
            let on_node_pods: Vec<&Pod> = on_node.iter().map(|p| p.as_ref()).collect();
            let of = DrainOf::new(claim, rafter::state::node_ready(node), ctx.clock.now());
            let now = Instant::now();
            let plan = drain::plan(&on_node_pods, &of, |p| {
                let uid = p.metadata.uid.as_deref().unwrap_or_default();
                state.backoff.get(uid).is_some_and(|(at, _)| *at > now)
            });
            if !plan.drained {
                let client = ctx.client.clone();
                let overrides = plan.budget_overrides;
                let batch: Vec<(Arc<Pod>, Removal)> = plan
                    .removals
                    .iter()
                    // The plan hands back the node's own pods: find each among them, not in the cache.
                    .filter_map(|(p, removal)| {
                        on_node.iter().find(|q| std::ptr::eq(q.as_ref(), *p)).map(|q| ((*q).clone(), *removal))
                    })
                    .collect();
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
                            entry.0 = now + drain::retry_after(entry.1, of.deadline.is_some());
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
