//! Launcher: turns planned claims into NodeClaim objects (intent first, with the termination
//! finalizer), then into instances (idempotent per claim), and follows each claim through
//! `Launched`, `Registered` (its Node appeared: labels, owner, `unregistered` taint lifted) and
//! `Initialized` (Ready, startup taints gone). Claims that never launch or never register are
//! deleted, and their pods are batched again. Which step a claim needs is the core's lifecycle
//! machine's decision (`rafter::state::lifecycle`); this module observes and executes.

use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::labels;
use rafter::api::nodeclaim::{NodeClaim, conditions};
use rafter::cloud::{CloudError, Instance};
use rafter::state::disruption::ClaimTimeout;
use rafter::state::lifecycle::{self, Effect, Phase};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::Instrument;

use crate::clock::age;
use crate::context::{BindingMode, Ctx};
pub use crate::messages::LauncherMessage;
use crate::messages::Planned;
use crate::timeline::Mark;
use crate::writes::{delete_claim, patch_status, rebatch};

/// Why a launch step failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("cloud: {0}")]
    Cloud(#[source] CloudError),
}

#[derive(Debug)]
pub struct Launcher;

#[derive(Debug)]
pub struct LauncherState {
    ctx: Ctx,
    /// Each launch's span, so registration joins the batch's trace.
    spans: HashMap<String, tracing::Span>,
    /// Claims whose launch failed transiently: when to try again and how often it failed.
    retry: HashMap<String, (Instant, u32)>,
}

pub type LauncherArgs = Ctx;

/// How long a freshly launched claim is left out of relaunch checks while the watch catches up.
const CACHE_GRACE: Duration = Duration::from_secs(2);

/// Calls the cloud for a claim and records the result on it. Idempotent: a claim the cloud
/// already launched gets the same instance back.
async fn launch(ctx: &Ctx, claim: &NodeClaim, pods: &[String]) -> Result<Instance, LaunchError> {
    let name = claim.name_any();
    ctx.timeline.mark(Mark::CreateCalled { claim: name.clone() });
    let created = ctx.cloud.create(claim).instrument(tracing::info_span!("cloud.create", claim = %name)).await;
    let instance = match created {
        Ok(i) => i,
        Err(error) => {
            let reason = match &error {
                CloudError::InsufficientCapacity { .. } => "InsufficientCapacity",
                CloudError::Throttled { .. } => "Throttled",
                CloudError::NotFound { .. } => "NotFound",
                CloudError::InvalidConfiguration { .. } => "InvalidConfiguration",
                CloudError::Transient { .. } => "Transient",
            };
            ctx.metrics.launch_failures.get_or_create(&crate::metrics::ReasonLabel { reason: reason.into() }).inc();
            return Err(LaunchError::Cloud(error));
        }
    };
    let pool = rafter::state::pool_of(claim.metadata.labels.as_ref()).unwrap_or_default();
    let it = ctx.catalog.instance_type(pool, &instance.instance_type);
    let it = it.as_ref();
    let (capacity, allocatable) =
        it.map(|t| (t.capacity.to_quantities(), t.allocatable().to_quantities())).unwrap_or_default();
    let api = Api::<NodeClaim>::all(ctx.client.clone());
    let meta = json!({"metadata": {"labels": {
        labels::INSTANCE_TYPE: instance.instance_type,
        labels::ZONE: instance.zone,
        labels::CAPACITY_TYPE: instance.capacity_type.as_str(),
    }}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(meta)).await.map_err(LaunchError::Kube)?;
    let extra = json!({"providerID": instance.provider_id, "capacity": capacity, "allocatable": allocatable});
    patch_status(ctx, claim, extra, &[(conditions::LAUNCHED, true, "Launched", "")])
        .await
        .map_err(LaunchError::Kube)?;
    ctx.metrics.claims_launched.inc();
    ctx.timeline.mark(Mark::Launched { claim: name.clone(), instance_type: instance.instance_type.clone() });
    tracing::info!(
        "Launched nodeclaim {name}: {}, type {}, zone {}, capacity {}",
        instance.id,
        instance.instance_type,
        instance.zone,
        instance.capacity_type.as_str()
    );
    if ctx.config.binding == BindingMode::Direct && !pods.is_empty() {
        bind_direct(ctx, claim, &instance, it, pods).await.map_err(LaunchError::Kube)?;
    }
    Ok(instance)
}

/// Direct binding: create the Node with the launch and bind the batch's pods to it, so their
/// images can be pulled as soon as the kubelet starts.
async fn bind_direct(
    ctx: &Ctx,
    claim: &NodeClaim,
    instance: &Instance,
    it: Option<&rafter::scheduling::instance_types::InstanceType>,
    pods: &[String],
) -> Result<(), kube::Error> {
    let node_name = instance.private_dns_name.clone();
    let mut node_labels: BTreeMap<String, String> = claim.metadata.labels.clone().unwrap_or_default();
    if let Some(it) = it {
        for r in it.requirements.iter() {
            if let Some(v) = r.single_value() {
                node_labels.entry(r.key().to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    node_labels.insert(labels::HOSTNAME.into(), node_name.clone());
    node_labels.insert(labels::INSTANCE_TYPE.into(), instance.instance_type.clone());
    node_labels.insert(labels::ZONE.into(), instance.zone.clone());
    node_labels.insert(labels::CAPACITY_TYPE.into(), instance.capacity_type.as_str().into());
    node_labels.insert(labels::REGISTERED.into(), "true".into());
    let taints: Vec<Value> = claim
        .spec
        .template
        .taints
        .iter()
        .chain(&claim.spec.template.startup_taints)
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name, "labels": node_labels, "ownerReferences": [owner(claim)]},
        "spec": {"providerID": instance.provider_id, "taints": taints}
    }))
    .map_err(kube::Error::SerdeError)?;
    match Api::<Node>::all(ctx.client.clone()).create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let bound = futures::stream::iter(pods.iter().cloned())
        .map(|key| {
            let client = ctx.client.clone();
            let node_name = node_name.clone();
            async move {
                let (ns, name) = key.split_once('/').unwrap_or(("default", key.as_str()));
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": node_name}});
                let bound: Result<Value, kube::Error> = Api::<Pod>::namespaced(client, ns)
                    .create_subresource("binding", name, &PostParams::default(), &binding)
                    .await;
                bound.is_ok()
            }
        })
        .buffer_unordered(ctx.config.parallelism)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    tracing::info!("Bound {bound} pod(s) to node {node_name}");
    Ok(())
}

fn owner(claim: &NodeClaim) -> Value {
    json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "name": claim.name_any(), "uid": claim.metadata.uid, "blockOwnerDeletion": true})
}

/// Registration: the Node with the claim's provider ID joined. Adopt it: pool labels, owner
/// reference, `registered` label, and the `unregistered` taint lifted.
async fn register(ctx: &Ctx, claim: &NodeClaim, node: &Node) -> Result<(), kube::Error> {
    let node_name = node.name_any();
    let mut node_labels: BTreeMap<String, String> = claim.metadata.labels.clone().unwrap_or_default();
    node_labels.insert(labels::REGISTERED.into(), "true".into());
    let api = Api::<Node>::all(ctx.client.clone());
    let mut current = node.clone();
    // The taint list is replaced whole: the resourceVersion makes a list read before another writer's
    // change (the lifecycle controller lifting `not-ready`) fail; the node is read again and the
    // write redone at once, within this registration.
    for attempt in 1.. {
        let taints: Vec<Value> = current
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.key != labels::UNREGISTERED_TAINT_KEY)
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect();
        let patch = json!({
            "metadata": {"labels": node_labels, "ownerReferences": [owner(claim)], "resourceVersion": current.metadata.resource_version},
            "spec": {"taints": taints}
        });
        match api.patch(&node_name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => current = api.get(&node_name).await?,
            Err(e) => return Err(e),
        }
    }
    patch_status(ctx, claim, json!({"nodeName": node_name}), &[(conditions::REGISTERED, true, "Registered", "")]).await
}

/// When the interruption that a replacement claim answers was received.
fn replaced_received_at(claim: &NodeClaim, claims: &[Arc<NodeClaim>]) -> Option<jiff::Timestamp> {
    let replaced = claim.metadata.annotations.as_ref()?.get(rafter::interruption::plan::REPLACES_ANNOTATION)?;
    let old = claims.iter().find(|c| c.metadata.name.as_ref() == Some(replaced))?;
    rafter::interruption::plan::Record::of(old.metadata.annotations.as_ref()).map(|r| r.received_at)
}

/// Marks a claim whose Node is ready, and the Node, initialized.
async fn initialize(ctx: &Ctx, claim: &NodeClaim, node: &Node) {
    let name = claim.name_any();
    let node_name = node.name_any();
    let label = json!({"metadata": {"labels": {labels::INITIALIZED: "true"}}});
    let _ = Api::<Node>::all(ctx.client.clone()).patch(&node_name, &PatchParams::default(), &Patch::Merge(label)).await;
    let set = [(conditions::INITIALIZED, true, "Initialized", ""), (conditions::READY, true, "Ready", "")];
    if patch_status(ctx, claim, json!({}), &set).await.is_ok() {
        ctx.metrics.claims_initialized.inc();
        tracing::info!("Initialized nodeclaim {name}: node {node_name} is ready");
    }
}

impl Launcher {
    /// Registers a claim whose Node joined, within its launch's trace.
    async fn register_claim(
        &self,
        state: &mut LauncherState,
        claim: &NodeClaim,
        node: &Node,
        claims: &[Arc<NodeClaim>],
    ) {
        let ctx = state.ctx.clone();
        let name = claim.name_any();
        let span = match state.spans.get(&name) {
            Some(parent) => tracing::info_span!(parent: parent, "register", nodeclaim = %name),
            None => tracing::info_span!("register", nodeclaim = %name),
        };
        match register(&ctx, claim, node).instrument(span.clone()).await {
            Ok(()) => {
                let node_name = node.name_any();
                span.in_scope(|| tracing::info!("Registered nodeclaim {name}: node {node_name}"));
                ctx.metrics.claims_registered.inc();
                ctx.timeline.mark(Mark::Registered { claim: name.clone(), node: node_name });
                if let Some(received) = replaced_received_at(claim, claims) {
                    let took = ctx.clock.now().duration_since(received);
                    ctx.metrics.interruption_replacement_registered.observe(took.as_secs_f64().max(0.0));
                }
                state.spans.remove(&name);
            }
            Err(error) => tracing::debug!(nodeclaim = %name, %error, "registration failed; retrying"),
        }
    }

    async fn launch_planned(&self, state: &mut LauncherState, planned: Vec<Planned>, span: tracing::Span) {
        let ctx = state.ctx.clone();
        let results: Vec<(Option<String>, tracing::Span, Result<(), LaunchError>)> = futures::stream::iter(planned)
            .map(|planned| {
                let ctx = ctx.clone();
                let pool = rafter::state::pool_of(planned.claim.metadata.labels.as_ref()).unwrap_or_default().to_string();
                let launch_span = tracing::info_span!(parent: &span, "launch", nodeclaim = tracing::field::Empty, pool = %pool, instance_type = tracing::field::Empty);
                async move {
                    let created = match Api::<NodeClaim>::all(ctx.client.clone()).create(&PostParams::default(), &planned.claim).await {
                        Ok(c) => c,
                        Err(e) => {
                            ctx.in_flight.forget(&planned.claim.name_any());
                            return (None, launch_span, Err(LaunchError::Kube(e)));
                        }
                    };
                    ctx.metrics.claims_created.inc();
                    let name = created.name_any();
                    ctx.in_flight.created(&name);
                    launch_span.record("nodeclaim", name.as_str());
                    let result = launch(&ctx, &created, &planned.pods).instrument(launch_span.clone()).await;
                    if let Ok(instance) = &result {
                        launch_span.record("instance_type", instance.instance_type.as_str());
                    }
                    (Some(name), launch_span, result.map(|_| ()))
                }
            })
            .buffer_unordered(ctx.config.parallelism)
            .collect()
            .await;
        for (name, launch_span, result) in results {
            match (name, result) {
                (Some(name), Ok(())) => {
                    // The cache may not show the provider ID yet; don't relaunch until it can.
                    state.retry.insert(name.clone(), (Instant::now() + CACHE_GRACE, 0));
                    state.spans.insert(name, launch_span);
                }
                (Some(name), Err(error)) => {
                    self.failed(state, &name, &error).await;
                    state.spans.insert(name, launch_span);
                }
                (None, Err(error)) => {
                    tracing::warn!(parent: &launch_span, %error, "cannot create a NodeClaim; its pods stay pending");
                    rebatch(&ctx);
                }
                (None, Ok(())) => {}
            }
        }
    }

    /// What a failed launch leads to: capacity errors avoid the offerings and re-plan at once; a
    /// configuration error is written on the claim (`Launched=False`) and retried slowly, never a
    /// reason to delete it (a launch may have reached the cloud, and the configuration may be
    /// fixed, or be a start-up race); the rest is retried with backoff. The launch timeout
    /// removes a claim that never launches.
    async fn failed(&self, state: &mut LauncherState, name: &str, error: &LaunchError) {
        let ctx = state.ctx.clone();
        match error {
            LaunchError::Cloud(CloudError::InsufficientCapacity { offerings }) => {
                ctx.cloud.mark_unavailable(offerings, ctx.config.unavailable_offering_ttl);
                tracing::warn!(nodeclaim = %name, %error, "no capacity; deleting the claim and planning again without these offerings");
                let _ = delete_claim(&ctx, name).await;
                rebatch(&ctx);
            }
            LaunchError::Cloud(CloudError::InvalidConfiguration { message }) => {
                let entry = state.retry.entry(name.to_string()).or_insert((Instant::now(), 0));
                entry.1 += 1;
                entry.0 = Instant::now() + rafter::state::disruption::eviction_backoff(entry.1 + 5);
                let first = entry.1 == 1;
                if let Some(claim) = ctx.caches.claims.all().iter().find(|c| c.metadata.name.as_deref() == Some(name)) {
                    let set = [(conditions::LAUNCHED, false, "InvalidConfiguration", message.as_str())];
                    let _ = patch_status(&ctx, claim, json!({}), &set).await;
                }
                if first {
                    tracing::error!(nodeclaim = %name, %error, "cannot launch; retrying slowly until the NodePool or EC2NodeClass is fixed");
                } else {
                    tracing::debug!(nodeclaim = %name, %error, "cannot launch yet");
                }
            }
            _ => {
                let entry = state.retry.entry(name.to_string()).or_insert((Instant::now(), 0));
                entry.1 += 1;
                entry.0 = Instant::now() + rafter::state::disruption::eviction_backoff(entry.1 + 2);
                tracing::warn!(nodeclaim = %name, %error, "launch failed; retrying");
            }
        }
    }

    async fn reconcile(&self, state: &mut LauncherState) {
        let ctx = state.ctx.clone();
        let nodes = ctx.caches.nodes.all();
        let by_provider: HashMap<&str, &Arc<Node>> =
            nodes.iter().filter_map(|n| Some((n.spec.as_ref()?.provider_id.as_deref()?, n))).collect();
        let claims = ctx.caches.claims.all();
        let live: HashSet<String> = claims.iter().map(|c| c.name_any()).collect();
        state.spans.retain(|k, _| live.contains(k));
        state.retry.retain(|k, _| live.contains(k));
        let mut relaunch = Vec::new();
        for claim in &claims {
            let name = claim.name_any();
            let provider = claim.status.as_ref().and_then(|s| s.provider_id.as_deref());
            let node = provider.and_then(|p| by_provider.get(p)).copied();
            let phase = Phase::of(claim);
            let seen = lifecycle::Observed {
                age: claim.metadata.creation_timestamp.as_ref().map(|t| age(ctx.clock.as_ref(), t)).unwrap_or_default(),
                launch_due: state.retry.get(&name).is_none_or(|(at, _)| *at <= Instant::now()),
                node_joined: node.is_some(),
                // Only a registered claim's machine looks at this; the check walks taints and resources.
                node_initialized: phase == Phase::Registered
                    && node.is_some_and(|n| rafter::state::not_initialized(claim, n).is_none()),
            };
            let (effects, _) = lifecycle::step(phase, &seen);
            for effect in effects {
                match (effect, node) {
                    (Effect::Delete(timeout), _) => {
                        let why = match timeout {
                            ClaimTimeout::NotLaunched => "was not launched within 5m",
                            ClaimTimeout::NotRegistered => "did not register within 15m",
                        };
                        tracing::warn!("nodeclaim {name} {why}; deleting it and batching its pods again");
                        if delete_claim(&ctx, &name).await.is_ok() {
                            rebatch(&ctx);
                        }
                    }
                    (Effect::Launch, _) => relaunch.push(claim.clone()),
                    (Effect::Register, Some(node)) => self.register_claim(state, claim, node, &claims).await,
                    (Effect::Initialize, Some(node)) => initialize(&ctx, claim, node).await,
                    // The machine registers and initializes only claims it saw with a node.
                    (Effect::Register | Effect::Initialize, None) => {}
                }
            }
        }
        // Claims without an instance: a previous leader's, or a transient failure. The cloud call is
        // idempotent per claim, so an instance launched before a crash is found, not bought again.
        let outcomes: Vec<(String, Result<Instance, LaunchError>)> = futures::stream::iter(relaunch)
            .map(|claim| {
                let ctx = ctx.clone();
                async move {
                    let name = claim.name_any();
                    let result = launch(&ctx, &claim, &[]).await;
                    (name, result)
                }
            })
            .buffer_unordered(ctx.config.parallelism)
            .collect()
            .await;
        for (name, result) in outcomes {
            match result {
                Ok(_) => {
                    state.retry.remove(&name);
                }
                Err(error) => self.failed(state, &name, &error).await,
            }
        }
    }
}

impl Actor for Launcher {
    type Msg = LauncherMessage;
    type State = LauncherState;
    type Arguments = LauncherArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(LauncherMessage::Reconcile);
        Ok(LauncherState { ctx, spans: HashMap::new(), retry: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LauncherMessage::Launch { claims, span } => self.launch_planned(state, claims, span).await,
            LauncherMessage::Reconcile => {
                self.reconcile(state).await;
                let period = state.ctx.config.reconcile_period;
                myself.send_after(period, || LauncherMessage::Reconcile);
            }
        }
        Ok(())
    }
}
