//! Solver: turns a batch into a plan. It snapshots the caches, builds the solver input (pure, in
//! `rafter::state`, counting the claims it planned that the cache does not show yet), runs `solve` on
//! a blocking thread, tells pods where they will go (`Nominated`)
//! or why they cannot go anywhere (once per pod and reason), and hands new claims to the Launcher.

use kube::ResourceExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::api::nodeclaim::NodeClaim;
use rafter::scheduling::solver::Plan;
use rafter::state::provisionable;
use tracing::Instrument;

use crate::context::Ctx;
pub use crate::messages::SolverMessage;
use crate::messages::{LauncherMessage, peer};
use crate::planning::{plan_claims, solve_now};
use crate::timeline::Mark;

#[derive(Debug)]
pub struct Solver;

pub struct SolverState {
    ctx: Ctx,
    recorder: Recorder,
    /// (pod uid, message) already reported, so each appears once.
    reported: HashSet<(String, String)>,
}

impl std::fmt::Debug for SolverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SolverState").field("reported", &self.reported.len()).finish_non_exhaustive()
    }
}

pub type SolverArgs = Ctx;

/// Bound on remembered reports before the memory is cleared (it only suppresses duplicates).
const REPORTED_LIMIT: usize = 200_000;

fn reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

impl Solver {
    async fn run(&self, state: &mut SolverState, span: tracing::Span) {
        let ctx = state.ctx.clone();
        let pods = ctx.caches.pods.all();
        let mut claims = ctx.caches.claims.all();
        let cached: HashSet<String> = claims.iter().filter_map(|c| c.metadata.name.clone()).collect();
        claims.extend(ctx.in_flight.pending(&cached));
        let pools = ctx.caches.effective_pools();
        let pools_by_name: HashMap<String, rafter::api::NodePool> =
            pools.iter().map(|p| (p.name_any(), p.clone())).collect();
        let pending: Vec<Pod> = pods.iter().filter(|p| provisionable(p)).map(|p| p.as_ref().clone()).collect();
        if pending.is_empty() {
            return;
        }
        let solve_span =
            tracing::info_span!(parent: &span, "solve", pods = pending.len(), claims = tracing::field::Empty);
        let started = StdInstant::now();
        let result = solve_now(&ctx, pods.clone(), pending, claims, pools).instrument(solve_span.clone()).await;
        let (plan, problems, count) = match result {
            Ok(r) => r,
            Err(error) => {
                tracing::error!(parent: &solve_span, %error, "the solver failed; the batch will be retried");
                return;
            }
        };
        let took = started.elapsed();
        ctx.metrics.solve_duration.observe(took.as_secs_f64());
        solve_span.record("claims", plan.claims.len());
        for p in &problems {
            tracing::warn!(parent: &solve_span, pool = %p.pool, "NodePool cannot be used: {}", p.message);
        }
        let mut options: Vec<String> = Vec::new();
        for c in &plan.claims {
            for o in c.instance_types.iter().take(3) {
                if !options.contains(&o.name) {
                    options.push(o.name.clone());
                }
            }
        }
        if !plan.claims.is_empty() {
            let shown: Vec<&str> = options.iter().take(5).map(String::as_str).collect();
            let more = if options.len() > shown.len() { " …" } else { "" };
            tracing::info!(parent: &solve_span,
                "Computed packing of {} node(s) for {} pod(s) with instance type option(s) [{}{more}] in {:.1} ms",
                plan.claims.len(),
                plan.claims.iter().map(|c| c.pods.len()).sum::<usize>(),
                shown.join(" "),
                took.as_secs_f64() * 1000.0
            );
        }
        ctx.timeline.mark(Mark::Solved { pods: count, claims: plan.claims.len(), price: plan.price(), types: options });
        self.report(state, &pods, &plan).instrument(solve_span.clone()).await;
        drop(solve_span);
        if plan.claims.is_empty() {
            return;
        }
        match peer(&ctx.peers.launcher) {
            Some(launcher) => {
                let planned = plan_claims(&pools_by_name, plan.claims, None);
                let claims: Vec<Arc<NodeClaim>> = planned.iter().map(|p| Arc::new(p.claim.clone())).collect();
                if launcher.cast(LauncherMessage::Launch { claims: planned, span }).is_ok() {
                    ctx.in_flight.record(claims);
                }
            }
            None => tracing::warn!("the launcher is restarting; the pods stay pending and are batched again"),
        }
    }

    /// Events on pods: where they are going (once per destination), or why nothing fits (once per
    /// reason). Sent concurrently and in the background: they must not delay the launch.
    async fn report(&self, state: &mut SolverState, pods: &[Arc<Pod>], plan: &Plan) {
        if state.reported.len() > REPORTED_LIMIT {
            state.reported.clear();
        }
        let by_key: std::collections::HashMap<String, &Arc<Pod>> =
            pods.iter().map(|p| (rafter::scheduling::solver::pod_key(p), p)).collect();
        let mut events = Vec::new();
        let mut push = |key: &str, type_: EventType, reason: &str, note: String| {
            let Some(pod) = by_key.get(key) else { return };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if state.reported.insert((uid, note.clone())) {
                events.push((
                    reference(pod),
                    Event {
                        type_,
                        reason: reason.into(),
                        note: Some(note),
                        action: "Provisioning".into(),
                        secondary: None,
                    },
                ));
            }
        };
        for c in &plan.claims {
            let note = format!(
                "Pod should schedule on a new nodeclaim of NodePool {} ({})",
                c.node_pool,
                c.instance_types.first().map(|o| o.name.as_str()).unwrap_or("?")
            );
            for pod in &c.pods {
                push(pod, EventType::Normal, "Nominated", note.clone());
            }
        }
        for p in &plan.placements {
            push(&p.pod, EventType::Normal, "Nominated", format!("Pod should schedule on {}", p.node));
        }
        for u in &plan.unplaced {
            tracing::warn!(pod = %u.pod, "cannot place pod: {}", u.reason);
            push(&u.pod, EventType::Warning, "FailedScheduling", format!("Failed to schedule pod, {}", u.reason));
        }
        if events.is_empty() {
            return;
        }
        let recorder = state.recorder.clone();
        let parallelism = state.ctx.config.parallelism;
        tokio::spawn(
            async move {
                futures::stream::iter(events)
                    .for_each_concurrent(parallelism, |(reference, event)| {
                        let recorder = recorder.clone();
                        async move {
                            if let Err(error) = recorder.publish(&event, &reference).await {
                                tracing::debug!(%error, "cannot record an event");
                            }
                        }
                    })
                    .await;
            }
            .in_current_span(),
        );
    }
}

impl Actor for Solver {
    type Msg = SolverMessage;
    type State = SolverState;
    type Arguments = SolverArgs;

    async fn pre_start(&self, _: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let reporter = Reporter { controller: "rafter".into(), instance: Some(ctx.config.identity.clone()) };
        let recorder = Recorder::new(ctx.client.clone(), reporter);
        Ok(SolverState { ctx, recorder, reported: HashSet::new() })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SolverMessage::Solve { span } = message;
        self.run(state, span).await;
        Ok(())
    }
}
