//! Disrupter: carries out the core's disruption engine (`rafter::disruption`), one command at a
//! time. Each round it expires claims past `expireAfter` (forceful, as in Karpenter v1, outside
//! the budgets), records when each node last gained or lost a pod (`status.lastPodEventTime`),
//! and — when no command is in progress — asks the engine for the next one. A command is computed,
//! then computed again after `disruption_validation` and carried out only if it still holds. To
//! carry it out: taint the candidates `karpenter.sh/disrupted`, launch the replacement and wait
//! until it is initialized, then delete the candidates' claims (the Terminator drains them). A
//! replacement that fails to launch or does not initialize within `replacement_timeout` abandons
//! the command: the candidates are untainted and keep their pods. Every node that stays says why,
//! once per change of reason: an `Unconsolidatable` Event on the Node and the NodeClaim, and the
//! claim's `Consolidatable` condition.

use kube::{Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::nodeclaim::{NodeClaim, conditions};
use rafter::disruption::{Command, Decision, Kept, View, decide};
use rafter::state::disruption::{expired, is_workload};
use rafter::state::{condition_true, node_name};
use serde_json::json;
use tokio::time::Instant;

use crate::clock::age;
use crate::context::Ctx;
use crate::messages::{LauncherMessage, peer};
use crate::metrics::DecisionLabel;
use crate::writes::{delete_claim, node_of, patch_status, record_event, taint_disrupted, untaint_disrupted};

#[derive(Debug)]
pub struct Disrupter;

#[derive(Debug)]
pub enum DisrupterMessage {
    Reconcile,
}

/// A command being carried out.
#[derive(Debug)]
struct Active {
    command: Command,
    /// The replacement claims' names.
    replacements: Vec<String>,
    /// The command's `disrupt` span: the root of its trace.
    span: tracing::Span,
}

pub struct DisrupterState {
    ctx: Ctx,
    /// Per claim, the workload pods its node had last round (for `lastPodEventTime`).
    seen: HashMap<String, BTreeSet<String>>,
    /// Per claim, the reason last reported for keeping it.
    reported: HashMap<String, String>,
    /// A command waiting to be validated, and since when.
    proposed: Option<(Command, Instant)>,
    active: Option<Active>,
    /// Whether taints a previous leader left on nodes it never disrupted were cleared.
    swept: bool,
    /// Where the last decision's single-node scan stopped (it goes on from there).
    resume_after: Option<String>,
    /// Candidate sets whose command was abandoned, and until when they are not tried again (a
    /// replacement that cannot come up would otherwise be launched again every round).
    abandoned: HashMap<BTreeSet<String>, Instant>,
}

/// How long an abandoned command's candidates wait before the same command is tried again.
pub const ABANDON_BACKOFF: std::time::Duration = std::time::Duration::from_secs(300);

fn claim_set(command: &Command) -> BTreeSet<String> {
    command.candidates.iter().map(|t| t.claim.clone()).collect()
}

impl std::fmt::Debug for DisrupterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisrupterState")
            .field("proposed", &self.proposed)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

pub type DisrupterArgs = Ctx;

fn label(command: &Command, outcome: &str) -> DecisionLabel {
    DecisionLabel {
        reason: format!("{:?}", command.reason),
        decision: command.decision().into(),
        outcome: outcome.into(),
    }
}

/// Whether two computations of a command agree on what to do.
fn same(a: &Command, b: &Command) -> bool {
    claim_set(a) == claim_set(b) && a.replacements.len() == b.replacements.len()
}

/// Computes a decision off the actor's thread, over the caches and the claims planned but not yet
/// cached.
pub async fn decision(ctx: &Ctx, resume_after: Option<String>) -> Option<Decision> {
    let mut claims = ctx.caches.claims.all();
    let cached: HashSet<String> = claims.iter().filter_map(|c| c.metadata.name.clone()).collect();
    claims.extend(ctx.in_flight.pending(&cached));
    let inputs = (ctx.caches.pods.all(), ctx.caches.nodes.all(), claims, ctx.caches.effective_pools());
    let pdbs = ctx.caches.pdbs.all();
    let (now, settings) = (ctx.clock.now(), ctx.config.disruption);
    let started = StdInstant::now();
    let result = crate::planning::off_thread(ctx, inputs, move |snapshot, types| {
        decide(View { snapshot, pdbs: &pdbs, types: &types, now, settings, resume_after: resume_after.as_deref() })
    })
    .await;
    ctx.metrics.disruption_decision_duration.observe(started.elapsed().as_secs_f64());
    result.ok()
}

impl Disrupter {
    /// Expiry is forceful in v1: it does not wait for budgets or emptiness; the Terminator honours
    /// do-not-disrupt pods up to the claim's terminationGracePeriod.
    async fn expire(&self, ctx: &Ctx, claims: &[Arc<NodeClaim>]) {
        for claim in claims.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
            let created =
                claim.metadata.creation_timestamp.as_ref().map(|t| age(ctx.clock.as_ref(), t)).unwrap_or_default();
            let expire_after = claim.spec.template.expire_after().parse().ok().flatten();
            if expired(created, expire_after) {
                let name = claim.name_any();
                tracing::info!(
                    "Triggering termination for expired nodeclaim {name} (expireAfter {:?})",
                    expire_after.unwrap_or_default()
                );
                let _ = delete_claim(ctx, &name).await;
            }
        }
    }

    /// Writes `lastPodEventTime` on claims whose node gained or lost a workload pod since the last
    /// round (the first round only learns the pods).
    async fn record_pod_events(&self, state: &mut DisrupterState, claims: &[Arc<NodeClaim>], pods: &[Arc<Pod>]) {
        let ctx = state.ctx.clone();
        let mut by_node: HashMap<&str, BTreeSet<String>> = HashMap::new();
        for pod in pods.iter().filter(|p| is_workload(p)) {
            if let Some(node) = node_name(pod) {
                by_node.entry(node).or_default().insert(pod.metadata.uid.clone().unwrap_or_else(|| pod.name_any()));
            }
        }
        let mut live = HashSet::new();
        for claim in claims {
            let Some(node) = claim.status.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            let name = claim.name_any();
            let now_pods = by_node.remove(node).unwrap_or_default();
            live.insert(name.clone());
            let before = state.seen.insert(name.clone(), now_pods.clone());
            let changed = before.as_ref().is_some_and(|before| *before != now_pods);
            if changed {
                let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ctx.clock.now());
                let patch = json!({"status": {"lastPodEventTime": time}});
                let api = kube::Api::<NodeClaim>::all(ctx.client.clone());
                if let Err(error) = api.patch_status(&name, &Default::default(), &kube::api::Patch::Merge(patch)).await
                {
                    tracing::debug!(%error, "cannot record the pod event time of {name}");
                    // Still a change next round, so it is written then.
                    if let Some(before) = before {
                        state.seen.insert(name.clone(), before);
                    }
                }
            }
        }
        state.seen.retain(|k, _| live.contains(k));
    }

    /// Clears disrupted taints that no command of this leader owns: a previous leader's command
    /// that never finished (interrupted claims keep theirs: the interruption handler owns them).
    async fn sweep(&self, ctx: &Ctx, claims: &[Arc<NodeClaim>], nodes: &[Arc<Node>]) {
        for claim in claims {
            if claim.metadata.deletion_timestamp.is_some()
                || rafter::interruption::plan::Record::of(claim.metadata.annotations.as_ref()).is_some()
            {
                continue;
            }
            let provider = claim.status.as_ref().and_then(|s| s.provider_id.as_deref());
            if let Some(node) = node_of(provider, nodes) {
                let _ = untaint_disrupted(ctx, node).await;
            }
        }
    }

    /// Says why each kept node stays, once per change of reason; marks candidates Consolidatable.
    async fn report(&self, state: &mut DisrupterState, decision: &Decision) {
        let ctx = state.ctx.clone();
        let claims = ctx.caches.claims.all();
        let by_name: HashMap<&str, &Arc<NodeClaim>> =
            claims.iter().map(|c| (c.metadata.name.as_deref().unwrap_or_default(), c)).collect();
        let nodes = ctx.caches.nodes.all();
        let kept: HashMap<&str, &Kept> = decision.kept.iter().map(|k| (k.claim.as_str(), k)).collect();
        ctx.metrics
            .disruption_budget_blocked
            .set(decision.kept.iter().filter(|k| k.why.contains("budget")).count() as i64);
        for claim in claims.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
            if !condition_true(claim, conditions::INITIALIZED) {
                continue;
            }
            let name = claim.name_any();
            let condition =
                claim.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::CONSOLIDATABLE));
            match kept.get(name.as_str()) {
                Some(k) => {
                    if state.reported.get(&name) == Some(&k.why) {
                        continue;
                    }
                    tracing::debug!(nodeclaim = %name, "Unconsolidatable: {}", k.why);
                    let provider = claim.status.as_ref().and_then(|s| s.provider_id.as_deref());
                    let mut regarding = vec![claim.object_ref(&())];
                    regarding.extend(node_of(provider, &nodes).map(|n| n.object_ref(&())));
                    for reference in regarding {
                        if let Err(error) =
                            record_event(&ctx, reference, false, "Unconsolidatable", "Consolidate", &k.why).await
                        {
                            tracing::debug!(%error, "cannot record an event");
                        }
                    }
                    let stale = condition.is_none_or(|c| c.status != "False" || c.message != k.why);
                    if stale {
                        let set = [(conditions::CONSOLIDATABLE, false, "Unconsolidatable", k.why.as_str())];
                        let _ = patch_status(&ctx, claim, json!({}), &set).await;
                    }
                    state.reported.insert(name, k.why.clone());
                }
                None if condition.is_none_or(|c| c.status != "True") => {
                    let set = [(conditions::CONSOLIDATABLE, true, "Consolidatable", "")];
                    if patch_status(&ctx, claim, json!({}), &set).await.is_ok() {
                        state.reported.remove(&name);
                    }
                }
                None => {
                    state.reported.remove(&name);
                }
            }
        }
        // Claims that are gone; the pools' warnings (`pool/…`) stay reported while they hold.
        state.reported.retain(|k, _| k.starts_with("pool/") || by_name.contains_key(k.as_str()));
        for (pool, warning) in &decision.warnings {
            if state.reported.get(&format!("pool/{pool}")) != Some(warning) {
                tracing::warn!(pool = %pool, "{warning}");
                let reference = ObjectReference {
                    api_version: Some("karpenter.sh/v1".into()),
                    kind: Some("NodePool".into()),
                    name: Some(pool.clone()),
                    ..ObjectReference::default()
                };
                let _ = record_event(&ctx, reference, true, "InvalidAnnotation", "Consolidate", warning).await;
                state.reported.insert(format!("pool/{pool}"), warning.clone());
            }
        }
    }

    /// Starts a validated command: taints its candidates, then deletes them or launches the
    /// replacement.
    async fn start(&self, state: &mut DisrupterState, command: Command) {
        let ctx = state.ctx.clone();
        let names: Vec<&str> = command.candidates.iter().map(|t| t.node.as_str()).collect();
        let span = tracing::info_span!(
            "disrupt",
            method = command.method.as_str(),
            reason = ?command.reason,
            decision = command.decision(),
            nodes = %names.join(","),
            savings = command.savings,
        );
        span.in_scope(|| {
            tracing::info!(
                "Disrupting via {} {} {} ({:?}), saving ${:.4}/h: {}",
                command.method.as_str(),
                command.decision(),
                command.candidates.len(),
                command.reason,
                command.savings,
                names.join(", ")
            )
        });
        let nodes = ctx.caches.nodes.all();
        let taint_span = tracing::info_span!(parent: &span, "taint", nodes = command.candidates.len());
        let mut tainted = Vec::new();
        for target in &command.candidates {
            let Some(node) = nodes.iter().find(|n| n.name_any() == target.node) else { continue };
            match taint_disrupted(&ctx, node).await {
                Ok(_) => tainted.push(target.node.clone()),
                Err(error) => {
                    tracing::info!(parent: &taint_span, %error, "cannot taint {}; the command is dropped", target.node);
                    drop(taint_span);
                    self.untaint(&ctx, &tainted).await;
                    ctx.metrics.disruption_decisions.get_or_create(&label(&command, "invalidated")).inc();
                    return;
                }
            }
        }
        drop(taint_span);
        for target in &command.candidates {
            ctx.traces.insert(&target.claim, span.clone());
        }
        if command.replacements.is_empty() {
            self.finish(&ctx, &command).await;
            return;
        }
        let Some(launcher) = peer(&ctx.peers.launcher) else {
            tracing::warn!("the launcher is restarting; the command is computed again shortly");
            self.abandon(&ctx, &command, &[], "the launcher was restarting").await;
            return;
        };
        let replace = tracing::info_span!(parent: &span, "replace", claims = command.replacements.len());
        let pools = ctx.caches.pools_by_name();
        let planned = crate::planning::plan_claims(&pools, command.replacements.clone(), None);
        let replacements: Vec<String> = planned.iter().map(|p| p.claim.name_any()).collect();
        ctx.in_flight.record(planned.iter().map(|p| Arc::new(p.claim.clone())).collect());
        if replacements.is_empty() || launcher.cast(LauncherMessage::Launch { claims: planned, span: replace }).is_err()
        {
            self.abandon(&ctx, &command, &replacements, "the replacement could not be handed to the launcher").await;
            return;
        }
        state.active = Some(Active { command, replacements, span });
    }

    async fn untaint(&self, ctx: &Ctx, node_names: &[String]) {
        let nodes = ctx.caches.nodes.all();
        for name in node_names {
            if let Some(node) = nodes.iter().find(|n| &n.name_any() == name) {
                // The cache may lag the taint just written: read the node fresh.
                let fresh = kube::Api::<Node>::all(ctx.client.clone())
                    .get(name)
                    .await
                    .map(Arc::new)
                    .unwrap_or_else(|_| node.clone());
                if let Err(error) = untaint_disrupted(ctx, &fresh).await {
                    tracing::warn!(%error, "cannot untaint {name}; a new leader clears it");
                }
            }
        }
    }

    /// Deletes a command's candidates (the Terminator drains them) and counts the saving.
    async fn finish(&self, ctx: &Ctx, command: &Command) {
        for target in &command.candidates {
            if let Err(error) = delete_claim(ctx, &target.claim).await {
                tracing::warn!(%error, "cannot delete nodeclaim {}; retried by a later command", target.claim);
            }
        }
        ctx.metrics.disruption_decisions.get_or_create(&label(command, "executed")).inc();
        ctx.metrics.disruption_savings.inc_by(command.savings);
        ctx.timeline.mark(crate::timeline::Mark::Disrupted {
            claims: command.candidates.len(),
            replacements: command.replacements.len(),
            savings: command.savings,
        });
    }

    /// Gives a command up: the candidates are untainted, replacements that never initialized go.
    async fn abandon(&self, ctx: &Ctx, command: &Command, replacements: &[String], why: &str) {
        tracing::warn!(
            "Abandoning the disruption of {:?}: {why}",
            command.candidates.iter().map(|t| &t.node).collect::<Vec<_>>()
        );
        let nodes: Vec<String> = command.candidates.iter().map(|t| t.node.clone()).collect();
        self.untaint(ctx, &nodes).await;
        for target in &command.candidates {
            ctx.traces.remove(&target.claim);
        }
        for name in replacements {
            let _ = delete_claim(ctx, name).await;
        }
        ctx.metrics.disruption_abandoned.inc();
        ctx.metrics.disruption_decisions.get_or_create(&label(command, "abandoned")).inc();
    }

    /// Follows the command in progress: done once every replacement is initialized; abandoned when
    /// one is gone, failed to launch, or timed out.
    async fn follow(&self, state: &mut DisrupterState) {
        let ctx = state.ctx.clone();
        let Some(active) = state.active.take() else { return };
        let claims = ctx.caches.claims.all();
        let mut ready = true;
        let mut failure: Option<String> = None;
        // Claims planned but not cached yet: read once, not per replacement.
        let planned: HashSet<String> =
            ctx.in_flight.pending(&HashSet::new()).iter().filter_map(|c| c.metadata.name.clone()).collect();
        for name in &active.replacements {
            let claim = claims.iter().find(|c| c.metadata.name.as_ref() == Some(name));
            match claim {
                // Not cached yet: planned moments ago, or deleted after a failed launch.
                None if planned.contains(name) => ready = false,
                None => failure = Some(format!("replacement {name} is gone (its launch failed)")),
                Some(c) if c.metadata.deletion_timestamp.is_some() => {
                    failure = Some(format!("replacement {name} is being deleted"))
                }
                Some(c) if condition_true(c, conditions::INITIALIZED) => {}
                Some(c) => {
                    ready = false;
                    let launched =
                        c.status.as_ref().and_then(|s| s.conditions.iter().find(|k| k.type_ == conditions::LAUNCHED));
                    let waited =
                        c.metadata.creation_timestamp.as_ref().map(|t| age(ctx.clock.as_ref(), t)).unwrap_or_default();
                    if let Some(l) = launched.filter(|l| l.status == "False") {
                        failure = Some(format!("replacement {name} failed to launch: {}", l.message));
                    } else if waited >= ctx.config.replacement_timeout {
                        failure = Some(format!(
                            "replacement {name} did not initialize within {}s",
                            ctx.config.replacement_timeout.as_secs()
                        ));
                    }
                }
            }
        }
        if let Some(why) = failure {
            self.abandon(&ctx, &active.command, &active.replacements, &why).await;
            state.abandoned.insert(claim_set(&active.command), Instant::now() + ABANDON_BACKOFF);
            return;
        }
        if ready {
            tracing::info!(parent: &active.span, "Replacement initialized; deleting the replaced nodeclaims");
            self.finish(&ctx, &active.command).await;
            return;
        }
        state.active = Some(active);
    }

    async fn reconcile(&self, state: &mut DisrupterState) {
        let ctx = state.ctx.clone();
        if !ctx.caches.synced() {
            return;
        }
        let claims = ctx.caches.claims.all();
        let pods = ctx.caches.pods.all();
        self.expire(&ctx, &claims).await;
        self.record_pod_events(state, &claims, &pods).await;
        if !state.swept {
            self.sweep(&ctx, &claims, &ctx.caches.nodes.all()).await;
            state.swept = true;
            return;
        }
        if state.active.is_some() {
            self.follow(state).await;
            return;
        }
        let Some(decision) = decision(&ctx, state.resume_after.take()).await else { return };
        state.resume_after.clone_from(&decision.resume_after);
        self.report(state, &decision).await;
        let now = Instant::now();
        state.abandoned.retain(|_, until| *until > now);
        let command = decision.command.filter(|c| {
            let backing_off = state.abandoned.contains_key(&claim_set(c));
            if backing_off {
                tracing::debug!("a command over {:?} was abandoned lately; not tried again yet", claim_set(c));
            }
            !backing_off
        });
        let Some(command) = command else {
            if let Some((dropped, _)) = state.proposed.take() {
                tracing::info!("A disruption command no longer holds; dropped");
                ctx.metrics.disruption_decisions.get_or_create(&label(&dropped, "invalidated")).inc();
            }
            return;
        };
        let validation = ctx.config.disruption_validation;
        match state.proposed.take() {
            Some((before, since)) if same(&before, &command) => {
                if since.elapsed() >= validation {
                    self.start(state, command).await;
                } else {
                    state.proposed = Some((before, since));
                }
            }
            Some((before, _)) => {
                ctx.metrics.disruption_decisions.get_or_create(&label(&before, "invalidated")).inc();
                state.proposed = Some((command, Instant::now()));
            }
            None if validation.is_zero() => self.start(state, command).await,
            None => state.proposed = Some((command, Instant::now())),
        }
    }
}

impl Actor for Disrupter {
    type Msg = DisrupterMessage;
    type State = DisrupterState;
    type Arguments = DisrupterArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(DisrupterMessage::Reconcile);
        Ok(DisrupterState {
            ctx,
            seen: HashMap::new(),
            reported: HashMap::new(),
            proposed: None,
            active: None,
            swept: false,
            abandoned: HashMap::new(),
            resume_after: None,
        })
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
