//! InterruptionHandler: consumes the interruption queue (leader only) and sees each affected node
//! through replacement, taint and the start of its drain; the Terminator drains and terminates.
//!
//! Workers long-poll the queue. Each message is read (`rafter::interruption`), and its decision is
//! recorded on the affected NodeClaim as an annotation (or the claim is deleted) before the
//! message is deleted, so a re-delivery, a duplicate or a new leader finds the work already owned.
//! The actor then, for every claim with a record, runs one round of the core's stage machine
//! (`rafter::interruption::stage`): mark a reclaimed spot offering unavailable, launch replacement
//! capacity for the node's pods once (a solve that counts claims in flight), taint the node, and
//! delete the claim (starting the drain) once the replacement is Ready, or once the deadline
//! leaves only the time the drain needs. The machine decides; this module observes and executes.

use kube::ResourceExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::labels;
use rafter::api::nodeclaim::{NodeClaim, conditions};
use rafter::cloud::{OfferingKey, parse_provider_id};
use rafter::interruption::Message;
use rafter::interruption::plan::{
    ANNOTATION, Action, Decision, Kind, Merge, Notice, REPLACES_ANNOTATION, Record, decide, evacuees,
    latest_drain_start, merge, replacement, replacement_ready, unplaceable,
};
use rafter::interruption::queue::{MessageQueue, QueueMessage};
use rafter::interruption::stage::{Effect, Event, Observed, Stage, step};
use rafter::scheduling::instance_types::CapacityType;
use rafter::scheduling::solver::Plan;
use rafter::state::Snapshot;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::context::Ctx;
use crate::messages::{LauncherMessage, peer};
use crate::metrics::{KindLabel, ReadyLabel};
use crate::timeline::Mark;
use crate::writes::{delete_claim, node_of, rebatch, taint_disrupted};
use rafter::state::condition_true;

#[derive(Debug)]
pub struct InterruptionHandler;

#[derive(Debug)]
pub enum InterruptionHandlerMessage {
    /// A worker recorded an interruption on this claim: act on it now, within its trace (the
    /// record comes along, as the cache may not show it yet).
    Recorded { claim: String, record: Record, span: tracing::Span },
    /// Look at every claim with a record again.
    Reconcile,
}

#[derive(Debug)]
pub struct InterruptionHandlerState {
    ctx: Ctx,
    /// The queue workers; dropped (and so aborted) with the actor.
    _workers: JoinSet<()>,
    /// Each affected claim's stage, as this leader has seen it (a new leader starts afresh: every
    /// step is read back from the cluster).
    stages: HashMap<String, Stage>,
    /// The origin of the stage machine's monotonic clock.
    started: Instant,
}

pub type InterruptionHandlerArgs = Ctx;

/// Longest pause between failed receives.
const MAX_RECEIVE_BACKOFF: Duration = Duration::from_secs(30);

/// The instance a claim launched, from its provider ID.
fn instance_of(claim: &NodeClaim) -> Option<&str> {
    let provider = claim.status.as_ref()?.provider_id.as_deref()?;
    parse_provider_id(provider).map(|(_, id)| id)
}

/// Why an interruption could not be recorded (its message stays on the queue and comes back).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("nodeclaim {claim} kept changing while its interruption was recorded")]
    Contended { claim: String },
}

/// How a notice about one instance was recorded.
#[derive(Debug, PartialEq, Eq)]
enum Recorded {
    /// A claim now carries this record (or was deleted): act on it.
    Written(String, Record),
    /// The claim already has a record at least as urgent.
    Duplicate,
    /// No NodeClaim owns the instance.
    Unmanaged,
}

/// Records a notice on the claim that owns `instance`: the annotation is written with the claim's
/// resourceVersion, so two workers holding duplicates cannot both win; the loser reads the claim
/// again and finds the record.
async fn record(
    ctx: &Ctx,
    notice: &Notice,
    instance: &str,
    received_at: jiff::Timestamp,
) -> Result<Recorded, RecordError> {
    let cached = ctx.caches.claims.all().into_iter().find(|c| instance_of(c) == Some(instance));
    let Some(cached) = cached else { return Ok(Recorded::Unmanaged) };
    let api = Api::<NodeClaim>::all(ctx.client.clone());
    let name = cached.name_any();
    let mut claim = cached.as_ref().clone();
    for _ in 0..5 {
        let existing = Record::of(claim.metadata.annotations.as_ref());
        let Merge::Write(next) = merge(existing.as_ref(), Record::new(notice, received_at)) else {
            return Ok(Recorded::Duplicate);
        };
        let patch = json!({"metadata": {
            "resourceVersion": claim.metadata.resource_version,
            "annotations": {ANNOTATION: next.encode()}
        }});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                if next.action == Action::Remove {
                    delete_claim(ctx, &name).await?;
                    tracing::info!("Removing nodeclaim {name}: its instance {instance} is stopping or gone");
                }
                return Ok(Recorded::Written(name, next));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
                Some(fresh) => claim = fresh,
                None => return Ok(Recorded::Duplicate),
            },
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Recorded::Duplicate),
            Err(e) => return Err(e.into()),
        }
    }
    // Five conflicts in a row: leave the message on the queue; it comes back.
    Err(RecordError::Contended { claim: name })
}

/// Handles one delivery; true when it may be deleted (its action is recorded, or there is none).
async fn handle_message(ctx: &Ctx, message: &QueueMessage, handler: &ActorRef<InterruptionHandlerMessage>) -> bool {
    let (received, received_at) = (Instant::now(), ctx.clock.now());
    if let Some(sent) = message.sent_at {
        ctx.metrics.interruption_message_age.observe(received_at.duration_since(sent).as_secs_f64().max(0.0));
    }
    let decision = match Message::parse(&message.body)
        .map_err(|e| e.to_string())
        .and_then(|m| decide(&m, ctx.config.rebalance).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(error) => {
            ctx.metrics.interruption_malformed.inc();
            tracing::warn!(message_id = %message.id, %error, "deleting an interruption message Rafter cannot read");
            return true;
        }
    };
    let by_kind =
        |kind: Kind| ctx.metrics.interruption_messages.get_or_create(&KindLabel { kind: kind.as_str().into() }).inc();
    let notice = match decision {
        Decision::Ignore { kind, why } => {
            by_kind(kind);
            tracing::debug!(message_id = %message.id, kind = kind.as_str(), "ignoring an interruption message: {why}");
            return true;
        }
        Decision::Act(notice) => notice,
    };
    by_kind(notice.kind);
    let mut delete = true;
    for instance in &notice.instances {
        let span = tracing::info_span!(
            parent: None,
            "interruption",
            kind = notice.kind.as_str(),
            instance = %instance,
            event = %notice.event_id,
            message_id = %message.id,
            nodeclaim = tracing::field::Empty,
        );
        match record(ctx, &notice, instance, received_at).instrument(span.clone()).await {
            Ok(Recorded::Written(claim, record)) => {
                span.record("nodeclaim", claim.as_str());
                span.in_scope(|| {
                    tracing::info!(
                        "Interruption of {instance} ({}): recorded on nodeclaim {claim}, deadline {}",
                        notice.kind.as_str(),
                        notice.deadline.map_or("none".to_string(), |d| d.to_string())
                    )
                });
                ctx.timeline.mark(Mark::Interrupted { claim: claim.clone(), received });
                ctx.traces.insert(&claim, span.clone());
                let _ = handler.cast(InterruptionHandlerMessage::Recorded { claim, record, span });
            }
            Ok(Recorded::Duplicate) => {
                ctx.metrics.interruption_duplicates.inc();
            }
            Ok(Recorded::Unmanaged) => {
                ctx.metrics.interruption_unmanaged.inc();
                tracing::debug!(message_id = %message.id, %instance, "no NodeClaim owns this instance; deleting the message");
            }
            Err(error) => {
                tracing::warn!(message_id = %message.id, %instance, %error, "cannot record the interruption yet; the message stays on the queue");
                delete = false;
            }
        }
    }
    delete
}

/// One long-polling worker: receive, record every message concurrently, delete what is recorded.
async fn worker(ctx: Ctx, queue: Arc<dyn MessageQueue>, handler: ActorRef<InterruptionHandlerMessage>) {
    let mut failures: u32 = 0;
    loop {
        let batch = match queue.receive().await {
            Ok(batch) => {
                failures = 0;
                batch
            }
            Err(error) => {
                failures += 1;
                let pause = rafter::state::disruption::eviction_backoff(failures + 2).min(MAX_RECEIVE_BACKOFF);
                tracing::warn!(%error, "cannot receive from the interruption queue; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        ctx.metrics.interruption_received.inc_by(batch.len() as u64);
        let outcomes = futures::future::join_all(batch.iter().map(|m| handle_message(&ctx, m, &handler))).await;
        let done: Vec<QueueMessage> =
            batch.into_iter().zip(outcomes).filter(|(_, delete)| *delete).map(|(m, _)| m).collect();
        if done.is_empty() {
            continue;
        }
        match queue.delete(&done).await {
            Ok(failed) => {
                ctx.metrics.interruption_deleted.inc_by((done.len() - failed.len()) as u64);
                if !failed.is_empty() {
                    tracing::warn!(messages = ?failed, "the queue refused to delete recorded messages; they will be seen again as duplicates");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot delete recorded messages; they will be seen again as duplicates")
            }
        }
    }
}

/// The spot offering an instance was launched from.
fn spot_offering(claim: &NodeClaim) -> Option<OfferingKey> {
    let l = claim.metadata.labels.as_ref()?;
    (l.get(labels::CAPACITY_TYPE)?.as_str() == labels::CAPACITY_TYPE_SPOT).then(|| OfferingKey {
        instance_type: l.get(labels::INSTANCE_TYPE).cloned().unwrap_or_default(),
        zone: l.get(labels::ZONE).cloned().unwrap_or_default(),
        capacity_type: CapacityType::Spot,
    })
}

impl InterruptionHandler {
    async fn reconcile(&self, state: &mut InterruptionHandlerState) {
        let ctx = state.ctx.clone();
        let claims = ctx.caches.claims.all();
        let recorded: Vec<(Arc<NodeClaim>, Record)> =
            claims.iter().filter_map(|c| Record::of(c.metadata.annotations.as_ref()).map(|r| (c.clone(), r))).collect();
        let names: HashSet<String> = recorded.iter().map(|(c, _)| c.name_any()).collect();
        state.stages.retain(|k, _| names.contains(k));
        ctx.traces.retain(|k| claims.iter().any(|c| c.metadata.name.as_deref() == Some(k)));
        for (claim, record) in recorded {
            let name = claim.name_any();
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if record.action == Action::Remove {
                // Recorded, but the worker's delete did not happen (a crash in between).
                let _ = delete_claim(&ctx, &name).await;
                continue;
            }
            let span = ctx.traces.get_or_insert(&name, || {
                tracing::info_span!(parent: None, "interruption", kind = record.kind.as_str(), nodeclaim = %name, resumed = true)
            });
            self.advance(state, &claims, &claim, &record).instrument(span).await;
        }
    }

    /// One round for one affected claim: observe it, let the core's interruption stage machine
    /// decide (`rafter::interruption::stage`), carry out its effects in order, and feed each
    /// outcome back.
    async fn advance(
        &self,
        state: &mut InterruptionHandlerState,
        claims: &[Arc<NodeClaim>],
        claim: &NodeClaim,
        record: &Record,
    ) {
        let ctx = state.ctx.clone();
        let name = claim.name_any();
        let stage = state.stages.remove(&name).unwrap_or_default();
        if !matches!(stage, Stage::Acting(_)) {
            // Removed or draining: the cache has not caught up with this leader's delete yet.
            state.stages.insert(name, stage);
            return;
        }
        let provider = claim.status.as_ref().and_then(|s| s.provider_id.clone());
        let nodes = ctx.caches.nodes.all();
        let node = node_of(provider.as_deref(), &nodes).cloned();
        let node_name = node.as_ref().map(|n| n.name_any()).unwrap_or_default();
        let pods = ctx.caches.pods.all();
        let moving = evacuees(&pods, &node_name);
        // Live claims made to replace this one.
        let replacements: Vec<&Arc<NodeClaim>> = claims
            .iter()
            .filter(|c| c.metadata.annotations.as_ref().and_then(|a| a.get(REPLACES_ANNOTATION)) == Some(&name))
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .collect();
        let observed = Observed {
            now: state.started.elapsed(),
            has_node: node.is_some(),
            exhausts_spot_offering: record.kind.exhausts_spot_offering() && spot_offering(claim).is_some(),
            replacements: replacements.len(),
            replacements_initialized: !replacements.is_empty()
                && replacements.iter().all(|c| condition_true(c, conditions::INITIALIZED)),
            deadline_reached: record.deadline.is_some_and(|d| ctx.clock.now() >= latest_drain_start(d, &moving)),
        };
        let (effects, mut stage) = step(stage, Event::Observed(observed));
        let mut todo: VecDeque<Effect> = effects.into();
        let mut plan = None;
        while let Some(effect) = todo.pop_front() {
            let outcome = match (effect, &node) {
                (Effect::Remove, _) => {
                    tracing::info!("Interrupted nodeclaim {name} has no node; removing it and planning its pods again");
                    let ok = delete_claim(&ctx, &name).await.is_ok();
                    if ok {
                        rebatch(&ctx);
                    }
                    Some(Event::Removed { ok })
                }
                (Effect::MarkUnavailable, _) => {
                    if let Some(offering) = spot_offering(claim) {
                        let ttl = ctx.config.unavailable_offering_ttl;
                        ctx.cloud.mark_unavailable(std::slice::from_ref(&offering), ttl);
                    }
                    None
                }
                (Effect::PlanReplacement, _) => {
                    match self.plan_replacement(&ctx, claims, &pods, &nodes, &node_name).await {
                        Ok(p) => {
                            let event = Event::Planned { claims: p.claims.len(), unplaceable: unplaceable(&p) };
                            plan = Some(p);
                            Some(event)
                        }
                        Err(error) => {
                            tracing::error!(%error, "the replacement plan failed; trying again");
                            Some(Event::PlanFailed)
                        }
                    }
                }
                (Effect::HandOver, _) => {
                    let Some(plan) = plan.take() else { continue };
                    self.hand_over(&ctx, &name, moving.len(), plan, state.started.elapsed())
                }
                (Effect::Taint, Some(node)) => {
                    let span = tracing::info_span!("taint", node = %node_name);
                    match taint_disrupted(&ctx, node).instrument(span).await {
                        Ok(added) => {
                            if added {
                                let took = ctx.clock.now().duration_since(record.received_at);
                                ctx.metrics.interruption_taint_latency.observe(took.as_secs_f64().max(0.0));
                                ctx.timeline.mark(Mark::Tainted { claim: name.clone() });
                            }
                            Some(Event::Tainted { ok: true })
                        }
                        Err(error) => {
                            tracing::debug!(%error, "cannot taint {node_name} yet; retrying");
                            Some(Event::Tainted { ok: false })
                        }
                    }
                }
                (Effect::CheckReady { forced }, _) => {
                    let unplaceable = match &stage {
                        Stage::Acting(p) => p.unplaceable.clone(),
                        _ => Default::default(),
                    };
                    let ready = self.replacement_ready(&ctx, &pods, &nodes, &node_name, unplaceable).await;
                    Some(Event::ReadyChecked { ready, forced })
                }
                (Effect::StartDrain { replacement_ready: ready }, _) => match delete_claim(&ctx, &name).await {
                    Ok(()) => {
                        ctx.metrics
                            .interruption_drains
                            .get_or_create(&ReadyLabel { replacement_ready: ready.to_string() })
                            .inc();
                        ctx.timeline.mark(Mark::DrainStarted { claim: name.clone(), replacement_ready: ready });
                        if ready {
                            tracing::info!("Draining interrupted nodeclaim {name}: its replacement capacity is ready");
                        } else {
                            tracing::warn!(
                                "Draining interrupted nodeclaim {name} before its replacement is ready: the deadline leaves no more time"
                            );
                        }
                        Some(Event::DrainStarted { ok: true })
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot delete nodeclaim {name} yet; retrying");
                        Some(Event::DrainStarted { ok: false })
                    }
                },
                // The machine asks for a taint only of a claim it saw with a node.
                (Effect::Taint, None) => None,
            };
            if let Some(event) = outcome {
                let (more, next) = step(stage, event);
                stage = next;
                for effect in more.into_iter().rev() {
                    todo.push_front(effect);
                }
            }
        }
        state.stages.insert(name, stage);
    }

    /// The replacement plan: the node's pods planned as if it were gone, claims in flight counted
    /// as capacity; off the actor's thread, as it is a solve.
    async fn plan_replacement(
        &self,
        ctx: &Ctx,
        claims: &[Arc<NodeClaim>],
        pods: &[Arc<Pod>],
        nodes: &[Arc<Node>],
        node_name: &str,
    ) -> Result<Plan, tokio::task::JoinError> {
        let inputs = (pods.to_vec(), nodes.to_vec(), claims.to_vec(), ctx.caches.effective_pools());
        let node_name = node_name.to_string();
        crate::planning::off_thread(ctx, inputs, move |snapshot, mut types| {
            replacement(snapshot, &node_name, |p| {
                types.remove(p.metadata.name.as_deref().unwrap_or_default()).unwrap_or_default()
            })
        })
        .await
    }

    /// Reports a replacement plan, and hands the claims it buys to the launcher.
    fn hand_over(&self, ctx: &Ctx, name: &str, moving: usize, plan: Plan, now: Duration) -> Option<Event> {
        let span = tracing::info_span!("replace", nodeclaim = %name, pods = moving, claims = plan.claims.len());
        span.in_scope(|| {
            tracing::info!(
                "Replacing interrupted nodeclaim {name}: {moving} pod(s) to move, {} new nodeclaim(s), {} pod(s) fit nowhere",
                plan.claims.len(),
                plan.unplaced.len()
            )
        });
        if plan.claims.is_empty() {
            return None;
        }
        let count = plan.claims.len();
        let Some(launcher) = peer(&ctx.peers.launcher) else {
            tracing::warn!("the launcher is restarting; the replacement is planned again shortly");
            return None;
        };
        let claims = crate::planning::plan_claims(&ctx.caches.pools_by_name(), plan.claims, Some(name));
        if launcher.cast(LauncherMessage::Launch { claims, span }).is_err() {
            return None;
        }
        ctx.timeline.mark(Mark::ReplacementPlanned { claim: name.to_string(), claims: count });
        Some(Event::HandedOver { now, claims: count })
    }

    /// Whether the pods that must move fit on ready capacity now; off the actor's thread, like the
    /// plan: with many pods waiting it is a solve of its own.
    async fn replacement_ready(
        &self,
        ctx: &Ctx,
        pods: &[Arc<Pod>],
        nodes: &[Arc<Node>],
        node_name: &str,
        unplaceable: HashSet<String>,
    ) -> bool {
        let (pods, nodes, daemonsets, node_name) =
            (pods.to_vec(), nodes.to_vec(), ctx.caches.daemonsets.all(), node_name.to_string());
        let volumes = ctx.caches.volumes();
        let check = move || {
            let snapshot = Snapshot {
                pods: &pods,
                nodes: &nodes,
                daemonsets: &daemonsets,
                storage: volumes.view(),
                ..Snapshot::default()
            };
            replacement_ready(snapshot, &node_name, &unplaceable)
        };
        match tokio::task::spawn_blocking(check).await {
            Ok(ready) => ready,
            Err(error) => {
                tracing::error!(%error, "the readiness check failed; trying again");
                false
            }
        }
    }
}

impl Actor for InterruptionHandler {
    type Msg = InterruptionHandlerMessage;
    type State = InterruptionHandlerState;
    type Arguments = InterruptionHandlerArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let mut workers = JoinSet::new();
        if let Some(queue) = &ctx.queue {
            for _ in 0..ctx.config.interruption_workers.max(1) {
                workers.spawn(worker(ctx.clone(), queue.clone(), myself.clone()));
            }
        }
        let _ = myself.cast(InterruptionHandlerMessage::Reconcile);
        Ok(InterruptionHandlerState { ctx, _workers: workers, stages: HashMap::new(), started: Instant::now() })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            InterruptionHandlerMessage::Recorded { claim, record, span } => {
                // A removal was carried out by the worker; the Terminator takes it from there.
                let claims = state.ctx.caches.claims.all();
                let current = claims.iter().find(|c| c.metadata.name.as_deref() == Some(claim.as_str())).cloned();
                if let Some(current) = current.filter(|c| c.metadata.deletion_timestamp.is_none())
                    && record.action == Action::Replace
                {
                    self.advance(state, &claims, &current, &record).instrument(span).await;
                }
            }
            InterruptionHandlerMessage::Reconcile => {
                self.reconcile(state).await;
                myself.send_after(state.ctx.config.reconcile_period, || InterruptionHandlerMessage::Reconcile);
            }
        }
        Ok(())
    }
}
