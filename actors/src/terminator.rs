//! Terminator: the finalizer flow of a deleted NodeClaim. Taint the node
//! `karpenter.sh/disrupted:NoSchedule`, evict its pods through the Eviction API in Karpenter's four
//! tiers (429 → retry with backoff), wait for `do-not-disrupt` pods unless the claim's
//! `terminationGracePeriod` has run out, terminate the instance until the cloud says it is gone,
//! delete the Node, and remove the finalizer. Every step is read back from the API server, so a
//! crash anywhere resumes where it stopped.

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
use rafter::state::disruption::{blocks_disruption, eviction_backoff, next_evictions};
use serde_json::json;
use tokio::time::Instant;

use crate::clock::age;
use crate::context::Ctx;
use crate::launcher::condition_true;
use crate::timeline::Mark;

#[derive(Debug)]
pub struct Terminator;

#[derive(Debug)]
pub enum TerminatorMessage {
    Reconcile,
}

#[derive(Debug)]
pub struct TerminatorState {
    ctx: Ctx,
    /// Pod uid → (next eviction attempt, failures), for PDB refusals.
    backoff: HashMap<String, (Instant, u32)>,
}

pub type TerminatorArgs = Ctx;

fn pod_key(pod: &Pod) -> (String, String) {
    (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default())
}

enum Evicted {
    Done,
    Refused,
    Failed,
}

async fn evict(client: kube::Client, pod: Arc<Pod>, force: bool) -> (String, Evicted) {
    let (ns, name) = pod_key(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let result = if force {
        api.delete(&name, &DeleteParams::default().grace_period(0)).await.map(|_| ())
    } else {
        api.evict(&name, &EvictParams::default()).await.map(|_| ())
    };
    let outcome = match result {
        Ok(()) => Evicted::Done,
        Err(kube::Error::Api(s)) if s.code == 404 => Evicted::Done,
        Err(kube::Error::Api(s)) if s.code == 429 => Evicted::Refused,
        Err(error) => {
            tracing::debug!(pod = %format!("{ns}/{name}"), %error, "eviction failed");
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
        let name = claim.metadata.name.clone().unwrap_or_default();
        let provider = claim.status.as_ref().and_then(|s| s.provider_id.clone());
        let node = node_of(provider.as_deref(), nodes);
        if let Some(node) = node {
            let node_name = node.metadata.name.clone().unwrap_or_default();
            let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            if !taints.iter().any(|t| t.key == labels::DISRUPTED_TAINT_KEY) {
                let mut next: Vec<serde_json::Value> =
                    taints.iter().filter_map(|t| serde_json::to_value(t).ok()).collect();
                next.push(json!({"key": labels::DISRUPTED_TAINT_KEY, "effect": "NoSchedule"}));
                let patch = json!({"spec": {"taints": next}});
                match Api::<Node>::all(ctx.client.clone())
                    .patch(&node_name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => tracing::info!("Cordoned node {node_name}"),
                    Err(error) => {
                        tracing::debug!(%error, "cannot taint {node_name}; retrying");
                        return false;
                    }
                }
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
            let never_ready = !condition_true(claim, rafter::api::nodeclaim::conditions::INITIALIZED);
            let force = deadline_passed || never_ready;
            let candidates: Vec<&Pod> =
                on_node.iter().map(|p| p.as_ref()).filter(|p| force || !blocks_disruption(p)).collect();
            let now = Instant::now();
            let batch: Vec<Arc<Pod>> = next_evictions(candidates.iter().copied())
                .into_iter()
                .filter(|p| {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    state.backoff.get(&uid).is_none_or(|(at, _)| *at <= now)
                })
                .filter_map(|p| on_node.iter().find(|q| q.metadata.uid == p.metadata.uid).map(|q| (*q).clone()))
                .collect();
            // Wait until every pod the drain is responsible for is gone (terminating ones included).
            let still_there = on_node_all.iter().any(|p| rafter::state::disruption::eviction_tier(p).is_some());
            if still_there {
                let client = ctx.client.clone();
                let drain_span = tracing::info_span!("drain", nodeclaim = %name, node = %node_name, pods = batch.len());
                let results: Vec<(String, Evicted)> = futures::stream::iter(batch)
                    .map(|p| evict(client.clone(), p, force))
                    .buffer_unordered(ctx.config.parallelism)
                    .collect()
                    .await;
                let _entered = drain_span.enter();
                for (uid, outcome) in results {
                    match outcome {
                        Evicted::Done => {
                            ctx.metrics.evictions.inc();
                            state.backoff.remove(&uid);
                        }
                        Evicted::Refused | Evicted::Failed => {
                            let entry = state.backoff.entry(uid).or_insert((now, 0));
                            entry.0 = now + eviction_backoff(entry.1);
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

/// The Node registered for a provider ID.
fn node_of<'a>(provider: Option<&str>, nodes: &'a [Arc<Node>]) -> Option<&'a Arc<Node>> {
    provider.and_then(|p| nodes.iter().find(|n| n.spec.as_ref().and_then(|s| s.provider_id.as_deref()) == Some(p)))
}

/// The rest of a drained claim's termination: the instance terminated until the cloud says it is
/// gone, the node deleted, the finalizer removed; true once it is finished.
async fn finish(ctx: &Ctx, claim: &NodeClaim, nodes: &[Arc<Node>]) -> bool {
    let name = claim.metadata.name.clone().unwrap_or_default();
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
        let node_name = node.metadata.name.clone().unwrap_or_default();
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
        Ok(TerminatorState { ctx, backoff: HashMap::new() })
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
        if !deleting.is_empty() {
            let nodes = ctx.caches.nodes.all();
            let pods = ctx.caches.pods.all();
            let mut drained = Vec::new();
            for claim in deleting {
                let span = tracing::info_span!("terminate", nodeclaim = ?claim.metadata.name);
                if tracing::Instrument::instrument(self.drain(state, claim, &nodes, &pods), span.clone()).await {
                    drained.push((claim, span));
                }
            }
            // Every drained claim's cloud delete goes out at once, so the provider can batch them.
            let finishing = drained
                .into_iter()
                .map(|(claim, span)| tracing::Instrument::instrument(finish(&ctx, claim, &nodes), span));
            futures::future::join_all(finishing).await;
        }
        myself.send_after(ctx.config.reconcile_period, || TerminatorMessage::Reconcile);
        Ok(())
    }
}
