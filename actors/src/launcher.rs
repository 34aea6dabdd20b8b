//! Launcher: turns planned claims into NodeClaim objects (intent first, with the termination
//! finalizer), then into instances (idempotent per claim), and follows each claim through
//! `Launched`, `Registered` (its Node appeared: labels, owner, `unregistered` taint lifted) and
//! `Initialized` (Ready, startup taints gone). Claims that never launch or never register are
//! deleted, and their pods are batched again.

use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::NodePool;
use rafter::api::labels;
use rafter::api::nodeclaim::{NodeClaim, NodeClaimSpec, NodeClaimTemplateSpec, ResourceRequirements, conditions};
use rafter::cloud::{CloudError, Instance};
use rafter::scheduling::solver::NewClaim;
use rafter::state::disruption::{ClaimTimeout, claim_timeout};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::Instrument;

use crate::batcher::BatcherMessage;
use crate::clock::{Clock, age};
use crate::context::{BindingMode, Ctx, peer};
use crate::timeline::Mark;

/// Why a launch step failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("NodePool {0} no longer exists")]
    PoolGone(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("cloud: {0}")]
    Cloud(#[source] CloudError),
}

#[derive(Debug)]
pub struct Launcher;

#[derive(Debug)]
pub enum LauncherMessage {
    /// Create and launch these claims (built by [`plan_claims`]), inside the batch's `provision`
    /// span (or an interruption's `replace` span).
    Launch { claims: Vec<Planned>, span: tracing::Span },
    /// Follow every claim one step further.
    Reconcile,
}

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

static NAMES: AtomicU64 = AtomicU64::new(0);

/// A fresh `<pool>-xxxxx` name.
fn claim_name(pool: &str) -> String {
    let seed = NAMES.fetch_add(1, Ordering::Relaxed)
        ^ jiff::Timestamp::now().as_nanosecond() as u64
        ^ (std::process::id() as u64).rotate_left(32);
    format!("{pool}-{}", rafter::mix::name_suffix(rafter::mix::splitmix64(seed), 5))
}

/// A fresh launch group: the claims of one plan share it, and may share launch calls.
pub fn launch_group() -> String {
    let seed = NAMES.fetch_add(1, Ordering::Relaxed)
        ^ (jiff::Timestamp::now().as_nanosecond() as u64).rotate_left(17)
        ^ (std::process::id() as u64).rotate_left(40);
    format!("{:016x}", rafter::mix::splitmix64(seed))
}

/// The NodeClaim for a planned machine: the pool's template with the plan's requirements, its
/// launch group, and the claim it replaces, if any.
pub fn build_claim(pool: &NodePool, planned: &NewClaim, replaces: Option<&str>, group: &str) -> NodeClaim {
    let pool_name = pool.name_any();
    let template = &pool.spec.template;
    let mut claim_labels: BTreeMap<String, String> =
        template.metadata.as_ref().map(|m| m.labels.clone()).unwrap_or_default();
    claim_labels.insert(labels::NODEPOOL.into(), pool_name.clone());
    let mut annotations = template.metadata.as_ref().map(|m| m.annotations.clone()).unwrap_or_default();
    annotations.insert(rafter::cloud::LAUNCH_GROUP.into(), group.into());
    if let Some(replaced) = replaces {
        annotations.insert(rafter::interruption::plan::REPLACES_ANNOTATION.into(), replaced.into());
    }
    let mut claim = NodeClaim::new(
        &claim_name(&pool_name),
        NodeClaimSpec {
            template: NodeClaimTemplateSpec {
                taints: template.spec.taints.clone(),
                startup_taints: template.spec.startup_taints.clone(),
                requirements: planned.requirements.clone(),
                node_class_ref: template.spec.node_class_ref.clone(),
                expire_after: template.spec.expire_after.clone(),
                termination_grace_period: template.spec.termination_grace_period.clone(),
            },
            resources: Some(ResourceRequirements {
                requests: planned.requests.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect(),
            }),
        },
    );
    claim.metadata.labels = Some(claim_labels);
    claim.metadata.annotations = Some(annotations);
    claim.metadata.finalizers = Some(vec![labels::TERMINATION_FINALIZER.into()]);
    claim.metadata.owner_references = pool.metadata.uid.clone().map(|uid| {
        vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "karpenter.sh/v1".into(),
            kind: "NodePool".into(),
            name: pool_name.clone(),
            uid,
            block_owner_deletion: Some(true),
            controller: None,
        }]
    });
    claim
}

/// A claim a solve planned, built and named before it is created, and the pods it is for.
#[derive(Debug, Clone)]
pub struct Planned {
    pub claim: NodeClaim,
    pub pods: Vec<String>,
}

/// The NodeClaims of one plan, in one launch group, named now: the planner can count them as in
/// flight before the Launcher has created them. Claims of pools that are gone are left out.
pub fn plan_claims(pools: &HashMap<String, NodePool>, planned: Vec<NewClaim>, replaces: Option<&str>) -> Vec<Planned> {
    let group = launch_group();
    planned
        .into_iter()
        .filter_map(|p| match pools.get(&p.node_pool) {
            Some(pool) => Some(Planned { claim: build_claim(pool, &p, replaces, &group), pods: p.pods }),
            None => {
                tracing::warn!("{}; its pods stay pending", LaunchError::PoolGone(p.node_pool.clone()));
                None
            }
        })
        .collect()
}

/// Sets one condition in a list (keeping `lastTransitionTime` when the status did not change).
pub fn set_condition(
    list: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    clock: &dyn Clock,
) {
    let status = if status { "True" } else { "False" };
    if let Some(c) = list.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(clock.now());
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        return;
    }
    list.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(clock.now()),
        observed_generation: None,
    });
}

pub use rafter::state::condition_true;

fn name_of(claim: &NodeClaim) -> String {
    claim.name_any()
}

/// Writes a claim's conditions (and optional other status fields) through the status subresource.
async fn patch_status(
    ctx: &Ctx,
    claim: &NodeClaim,
    extra: Value,
    set: &[(&str, bool, &str, &str)],
) -> Result<(), kube::Error> {
    let mut list = claim.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    for (t, s, r, m) in set {
        set_condition(&mut list, t, *s, r, m, ctx.clock.as_ref());
    }
    let mut status = extra;
    status["conditions"] = serde_json::to_value(&list).unwrap_or(Value::Null);
    Api::<NodeClaim>::all(ctx.client.clone())
        .patch_status(&name_of(claim), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .map(|_| ())
}

/// Deletes a claim (the Terminator finishes it through the finalizer).
pub async fn delete_claim(ctx: &Ctx, name: &str) -> Result<(), kube::Error> {
    // A claim going away is no longer capacity in flight, even if the cache never showed it.
    ctx.in_flight.forget(name);
    match Api::<NodeClaim>::all(ctx.client.clone()).delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Asks the batcher to look at pending pods again.
pub fn rebatch(ctx: &Ctx) {
    if let Some(b) = peer(&ctx.peers.batcher) {
        let _ = b.cast(BatcherMessage::Pending);
    }
}

/// Calls the cloud for a claim and records the result on it. Idempotent: a claim the cloud
/// already launched gets the same instance back.
async fn launch(ctx: &Ctx, claim: &NodeClaim, pods: &[String]) -> Result<Instance, LaunchError> {
    let name = name_of(claim);
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
    json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "name": name_of(claim), "uid": claim.metadata.uid, "blockOwnerDeletion": true})
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

impl Launcher {
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
                            ctx.in_flight.forget(&name_of(&planned.claim));
                            return (None, launch_span, Err(LaunchError::Kube(e)));
                        }
                    };
                    ctx.metrics.claims_created.inc();
                    let name = name_of(&created);
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
                ctx.catalog.mark_unavailable(offerings, ctx.config.unavailable_offering_ttl);
                tracing::warn!(nodeclaim = %name, %error, "no capacity; deleting the claim and planning again without these offerings");
                let _ = delete_claim(&ctx, name).await;
                rebatch(&ctx);
            }
            LaunchError::PoolGone(_) => {
                tracing::error!(nodeclaim = %name, %error, "cannot launch; deleting the claim");
                let _ = delete_claim(&ctx, name).await;
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
        let live: HashSet<String> = claims.iter().map(|c| name_of(c)).collect();
        state.spans.retain(|k, _| live.contains(k));
        state.retry.retain(|k, _| live.contains(k));
        let mut relaunch = Vec::new();
        for claim in &claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = name_of(claim);
            let created_age =
                claim.metadata.creation_timestamp.as_ref().map(|t| age(ctx.clock.as_ref(), t)).unwrap_or_default();
            let provider = claim.status.as_ref().and_then(|s| s.provider_id.as_deref());
            let registered = condition_true(claim, conditions::REGISTERED);
            if let Some(timeout) = claim_timeout(created_age, provider.is_some(), registered) {
                let why = match timeout {
                    ClaimTimeout::NotLaunched => "was not launched within 5m",
                    ClaimTimeout::NotRegistered => "did not register within 15m",
                };
                tracing::warn!("nodeclaim {name} {why}; deleting it and batching its pods again");
                if delete_claim(&ctx, &name).await.is_ok() {
                    rebatch(&ctx);
                }
                continue;
            }
            let Some(provider) = provider else {
                if state.retry.get(&name).is_none_or(|(at, _)| *at <= Instant::now()) {
                    relaunch.push(claim.clone());
                }
                continue;
            };
            let node = by_provider.get(provider);
            if !registered {
                let Some(node) = node else { continue };
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
                        if let Some(received) = replaced_received_at(claim, &claims) {
                            let took = ctx.clock.now().duration_since(received);
                            ctx.metrics.interruption_replacement_registered.observe(took.as_secs_f64().max(0.0));
                        }
                        state.spans.remove(&name);
                    }
                    Err(error) => tracing::debug!(nodeclaim = %name, %error, "registration failed; retrying"),
                }
                continue;
            }
            if !condition_true(claim, conditions::INITIALIZED)
                && let Some(node) = node
                && rafter::state::not_initialized(claim, node).is_none()
            {
                let node_name = node.name_any();
                let label = json!({"metadata": {"labels": {labels::INITIALIZED: "true"}}});
                let _ = Api::<Node>::all(ctx.client.clone())
                    .patch(&node_name, &PatchParams::default(), &Patch::Merge(label))
                    .await;
                let set = [(conditions::INITIALIZED, true, "Initialized", ""), (conditions::READY, true, "Ready", "")];
                if patch_status(&ctx, claim, json!({}), &set).await.is_ok() {
                    ctx.metrics.claims_initialized.inc();
                    tracing::info!("Initialized nodeclaim {name}: node {node_name} is ready");
                }
            }
        }
        // Claims without an instance: a previous leader's, or a transient failure. The cloud call is
        // idempotent per claim, so an instance launched before a crash is found, not bought again.
        let outcomes: Vec<(String, Result<Instance, LaunchError>)> = futures::stream::iter(relaunch)
            .map(|claim| {
                let ctx = ctx.clone();
                async move {
                    let name = name_of(&claim);
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
