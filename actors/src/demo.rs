//! `rafter demo`: the scenes of DESIGN.md on a laptop. The simulator, its kubelets, scheduler and
//! workload controllers, and the fake cloud; two Rafter replicas; inflate scaled 0 → 100; the
//! leader killed; a spot node interrupted; scaled to 30% and consolidated; scaled to 0; a timeline
//! and a summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rafter::cloud::Instance;
use rafter::cloud::fake::FakeConfig;
use rafter::interruption::Envelope;
use rafter::interruption::queue::MemoryQueue;
use rafter::scheduling::instance_types::CapacityType;
use tokio::time::Instant;

use crate::context::{BindingMode, ControllerConfig};
use crate::controller::Replica;
use crate::timeline::Mark;
use crate::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig, WorldError};

/// What the demo is run with.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub replicas: usize,
    pub pods: u32,
    pub boot_delay: Duration,
    pub binding: BindingMode,
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Run on EC2 as an emulator at this endpoint emulates it (seeded like an EKS cluster).
    pub aws_endpoint: Option<String>,
    /// The NodePool's `consolidateAfter` for the demo (the example says 1m).
    pub consolidate_after: Duration,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            replicas: 2,
            pods: 100,
            boot_delay: Duration::from_secs(2),
            binding: BindingMode::Scheduler,
            kubeconfig: None,
            aws_endpoint: None,
            consolidate_after: Duration::from_secs(10),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub pods: u32,
    pub nodes: usize,
    pub instance_types: BTreeMap<String, usize>,
    pub price_per_hour: f64,
    pub to_batch: Duration,
    pub solve: Duration,
    pub to_launch: Duration,
    pub all_running: Duration,
    pub failover: Duration,
    pub scale_down: Duration,
    pub launches: u64,
    pub interruption: Option<InterruptionScene>,
    pub consolidation: Option<ConsolidationScene>,
    pub timeline: Vec<(Duration, String)>,
}

/// What the spot interruption scene measured, from the moment the warning was on the queue.
#[derive(Debug, Clone, Default)]
pub struct InterruptionScene {
    /// `i-… (m5.large spot in us-east-1a)`.
    pub instance: String,
    /// Pods on the node when it was warned.
    pub pods: usize,
    pub to_taint: Duration,
    pub to_drain: Duration,
    /// Whether the drain began with the replacement ready (rather than forced by the deadline).
    pub replacement_ready: bool,
    /// Until the instance was terminated and every pod Running again.
    pub to_gone: Duration,
}

/// What the consolidation scene measured: the fleet when inflate was scaled down, and once it
/// settled.
#[derive(Debug, Clone, Default)]
pub struct ConsolidationScene {
    pub pods: usize,
    pub nodes_before: usize,
    pub price_before: f64,
    pub nodes_after: usize,
    pub price_after: f64,
    /// What a fresh solve of the remaining pods costs.
    pub fresh: f64,
    /// From the scale-down until the fleet settled.
    pub took: Duration,
}

/// How long the demo's disruption commands wait to be validated.
const DEMO_VALIDATION: Duration = Duration::from_secs(2);

/// The two minutes EC2 gives between a spot warning and the reclaim.
const SPOT_NOTICE: Duration = Duration::from_secs(120);

impl Summary {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nTimeline");
        for (at, what) in &self.timeline {
            let _ = writeln!(out, "  {:>7.2}s  {what}", at.as_secs_f64());
        }
        let types: Vec<String> = self.instance_types.iter().map(|(t, n)| format!("{n}× {t}")).collect();
        let _ = writeln!(out, "\nSummary");
        let _ = writeln!(out, "  pods               {}", self.pods);
        let _ = writeln!(out, "  nodes              {} ({})", self.nodes, types.join(", "));
        let _ = writeln!(out, "  cost               ${:.4}/h", self.price_per_hour);
        let _ = writeln!(out, "  cloud launches     {} (none twice)", self.launches);
        let _ = writeln!(out, "  time to batch      {:.2}s (scale → batch closed)", self.to_batch.as_secs_f64());
        let _ = writeln!(out, "  solve              {:.1} ms", self.solve.as_secs_f64() * 1000.0);
        let _ = writeln!(
            out,
            "  time to launch     {:.2}s (scale → first instance launched)",
            self.to_launch.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  all running        {:.2}s (scale → {} pods Running)",
            self.all_running.as_secs_f64(),
            self.pods
        );
        let _ =
            writeln!(out, "  failover           {:.2}s (leader killed → standby leads)", self.failover.as_secs_f64());
        if let Some(i) = &self.interruption {
            let ready = if i.replacement_ready { "replacement Ready first" } else { "forced by the deadline" };
            let _ = writeln!(
                out,
                "  interruption       {}, {} pods: tainted {:.2}s, drain {:.2}s ({ready}), gone {:.2}s after the warning \
                 ({:.1}s before the reclaim)",
                i.instance,
                i.pods,
                i.to_taint.as_secs_f64(),
                i.to_drain.as_secs_f64(),
                i.to_gone.as_secs_f64(),
                SPOT_NOTICE.saturating_sub(i.to_gone).as_secs_f64()
            );
        }
        if let Some(c) = &self.consolidation {
            let _ = writeln!(
                out,
                "  consolidation      {} nodes ${:.4}/h → {} nodes ${:.4}/h in {:.2}s after scaling to {} pods \
                 (a fresh solve of them: ${:.4}/h)",
                c.nodes_before,
                c.price_before,
                c.nodes_after,
                c.price_after,
                c.took.as_secs_f64(),
                c.pods,
                c.fresh
            );
        }
        let _ = writeln!(out, "  scale-down         {:.2}s (scale to 0 → nodes gone)", self.scale_down.as_secs_f64());
        out
    }
}

fn since(t0: Instant, t: Instant) -> Duration {
    t.saturating_duration_since(t0)
}

/// Runs the demo, printing progress through `say`.
pub async fn run(config: DemoConfig, say: impl Fn(&str)) -> Result<Summary, WorldError> {
    let t0 = Instant::now();
    let mut events: Vec<(Duration, String)> = Vec::new();
    let note = |what: String, events: &mut Vec<(Duration, String)>| {
        say(&format!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64()));
        events.push((t0.elapsed(), what));
    };
    let fake = FakeConfig { cluster: "rafter-demo".into(), boot_delay: config.boot_delay, ..FakeConfig::default() };
    let mut pool = NODEPOOL_DEFAULT.to_string();
    let aws = match &config.aws_endpoint {
        None => None,
        Some(endpoint) => {
            // The emulator gets what an EKS cluster has; its images stand in for the alias's.
            let seeded = rafter_sim::moto::seed(endpoint, None, "demo", "1.33")
                .await
                .map_err(|e| WorldError::Manifest(e.to_string()))?;
            let ids: Vec<String> = seeded.amis.values().map(|id| format!("    - id: {id}")).collect();
            pool = pool.replace(
                "  amiSelectorTerms:\n    - alias: al2023@latest",
                &format!("  amiFamily: AL2023\n  amiSelectorTerms:\n{}", ids.join("\n")),
            );
            let mut aws = rafter_aws::AwsConfig::new("rafter-demo", "us-east-1");
            aws.endpoint = Some(endpoint.clone());
            aws.credentials =
                Some((rafter_sim::moto::TEST_CREDENTIALS.0.into(), rafter_sim::moto::TEST_CREDENTIALS.1.into()));
            Some(aws)
        }
    };
    let cloud_name = if aws.is_some() { "EC2 at the emulator" } else { "fake cloud" };
    let mut world =
        World::start(WorldConfig { fake, aws, kubeconfig: config.kubeconfig.clone(), ..WorldConfig::default() })
            .await?;
    note(
        format!("API server at {} (CRDs installed; simulated kubelets, scheduler, workloads; {cloud_name})", world.url),
        &mut events,
    );
    if config.aws_endpoint.is_some() {
        note(
            "seeded the emulator: VPC, a subnet per zone and a security group tagged karpenter.sh/discovery=demo, \
             role KarpenterNodeRole-demo (moto prices every spot offering at $0.00001/h, so spot plans look free)"
                .into(),
            &mut events,
        );
    }
    let after = rafter::api::duration::format_duration(config.consolidate_after);
    let pool = pool.replace("consolidateAfter: 1m", &format!("consolidateAfter: {after}"));
    world.apply(&pool).await?;
    world.apply(INFLATE).await?;
    note(
        format!(
            "applied NodePool default (consolidateAfter {after}), EC2NodeClass default, Deployment inflate (0 replicas)"
        ),
        &mut events,
    );

    // EventBridge and SQS in miniature: the interruption scene puts EC2's warning here.
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(20), Duration::from_secs(20)));
    world.queue = Some(queue.clone());
    let mut replicas: Vec<Option<Replica>> = Vec::new();
    for i in 0..config.replicas.max(1) {
        let cfg = ControllerConfig {
            // A disruption command is computed again this long after it is found (15 s in
            // production, as Karpenter): the demo's short consolidateAfter wants a short one too.
            disruption_validation: DEMO_VALIDATION,
            lease_duration: config.lease_duration,
            renew_deadline: config.renew_deadline,
            retry_period: config.retry_period,
            binding: config.binding,
            ..world.config(&format!("rafter-{i}"))
        };
        replicas.push(Some(world.replica(cfg).await?));
    }
    let leader_index =
        |replicas: &[Option<Replica>]| replicas.iter().position(|r| r.as_ref().is_some_and(Replica::is_leader));
    world
        .wait_for("a leader", config.lease_duration * 2, || {
            let found = leader_index(&replicas).is_some();
            async move { Ok(found) }
        })
        .await?;
    let first = leader_index(&replicas).unwrap_or(0);
    note(format!("{} replicas running; rafter-{first} holds the lease", replicas.len()), &mut events);

    world.scale(config.pods).await?;
    let scaled = Instant::now();
    note(format!("scaled inflate to {}", config.pods), &mut events);
    let pods = config.pods as usize;
    let running_after = world
        .wait_for("all pods Running", Duration::from_secs(120), || async { Ok(world.running().await? == pods) })
        .await?;
    note(format!("all {} pods Running", config.pods), &mut events);
    let mut summary = Summary { pods: config.pods, all_running: running_after, ..Summary::default() };
    let instances = world.instances().await?;
    summary.nodes = instances.len();
    summary.price_per_hour = instances.iter().map(|i| i.price).sum();
    for i in &instances {
        *summary.instance_types.entry(format!("{} {}", i.instance_type, i.capacity_type.as_str())).or_default() += 1;
    }
    if let Some(leader) = replicas[first].as_ref() {
        let tl = &leader.ctx.timeline;
        if let Some((at, _)) = tl.first(|m| matches!(m, Mark::BatchClosed { .. })) {
            summary.to_batch = since(scaled, at);
        }
        if let Some((at, Mark::Solved { .. })) = tl.first(|m| matches!(m, Mark::Solved { claims, .. } if *claims > 0)) {
            let closed = tl.first(|m| matches!(m, Mark::BatchClosed { .. })).map(|(t, _)| t).unwrap_or(at);
            summary.solve = since(closed, at);
        }
        if let Some((at, _)) = tl.first(|m| matches!(m, Mark::Launched { .. })) {
            summary.to_launch = since(scaled, at);
        }
        events.extend(leader_lines(tl, t0));
    }

    // Kill the leader as SIGKILL would: it releases nothing; a standby takes over when the lease expires.
    if replicas.len() > 1 {
        if let Some(leader) = replicas[first].take() {
            leader.kill();
        }
        let killed = Instant::now();
        note(format!("killed rafter-{first} (the leader) without releasing its lease"), &mut events);
        world
            .wait_for("a new leader", config.lease_duration * 3, || {
                let found = leader_index(&replicas).is_some();
                async move { Ok(found) }
            })
            .await?;
        summary.failover = killed.elapsed();
        let next = leader_index(&replicas).unwrap_or(0);
        note(format!("rafter-{next} took over after {:.2}s", summary.failover.as_secs_f64()), &mut events);
    }

    let leader = leader_index(&replicas).and_then(|i| replicas[i].as_ref());
    if let Some((scene, lines)) =
        interruption_scene(&world, &queue, leader, pods, t0, &mut |what| note(what, &mut events)).await?
    {
        summary.interruption = Some(scene);
        events.extend(lines);
    }

    let scene_started = since(t0, Instant::now());
    summary.consolidation =
        Some(consolidation_scene(&world, pods, config.consolidate_after, &mut |what| note(what, &mut events)).await?);
    if let Some(leader) = leader_index(&replicas).and_then(|i| replicas[i].as_ref()) {
        events.extend(leader_lines(&leader.ctx.timeline, t0).into_iter().filter(|(at, _)| *at >= scene_started));
    }

    world.scale(0).await?;
    let down = Instant::now();
    note("scaled inflate to 0".into(), &mut events);
    world
        .wait_for("nodes gone", config.consolidate_after + Duration::from_secs(90), || async {
            Ok(world.nodes().await?.is_empty() && world.instances().await?.is_empty())
        })
        .await?;
    summary.scale_down = down.elapsed();
    note(
        format!("all nodes gone; instances terminated ({:.2}s after scale-down)", summary.scale_down.as_secs_f64()),
        &mut events,
    );
    summary.launches = if config.aws_endpoint.is_some() { summary.nodes as u64 } else { world.cloud.create_calls() };
    for r in replicas.into_iter().flatten() {
        r.shutdown().await;
    }
    world.stop();
    events.sort_by_key(|(at, _)| *at);
    summary.timeline = events;
    Ok(summary)
}

/// The timeline lines worth showing from a leader's marks.
fn leader_lines(timeline: &crate::timeline::Timeline, t0: Instant) -> Vec<(Duration, String)> {
    let mut lines = Vec::new();
    for (at, mark) in timeline.marks() {
        let line = match mark {
            Mark::BatchClosed { pods } => format!("batch of {pods} pods closed"),
            Mark::Solved { pods, claims, price, types } if claims > 0 => {
                format!(
                    "packed {pods} pods onto {claims} node(s) at ${price:.4}/h, options [{}]",
                    types.iter().take(4).cloned().collect::<Vec<_>>().join(" ")
                )
            }
            Mark::Launched { claim, instance_type } => format!("launched {claim} as {instance_type}"),
            Mark::Registered { claim, node } => format!("{claim} registered as {node}"),
            Mark::Interrupted { claim, .. } => format!("interruption recorded on {claim}"),
            Mark::ReplacementPlanned { claim, claims } => format!("planned {claims} replacement node(s) for {claim}"),
            Mark::Tainted { claim } => format!("tainted {claim}'s node karpenter.sh/disrupted:NoSchedule"),
            Mark::DrainStarted { claim, replacement_ready: true } => {
                format!("draining {claim}: its replacement is Ready")
            }
            Mark::DrainStarted { claim, replacement_ready: false } => {
                format!("draining {claim}: the deadline will not wait for its replacement")
            }
            Mark::Drained { claim } => format!("{claim} drained"),
            Mark::Terminated { claim } => format!("{claim} terminated"),
            Mark::Disrupted { claims, replacements: 0, savings } => {
                format!("consolidated {claims} node(s) away, saving ${savings:.4}/h")
            }
            Mark::Disrupted { claims, replacements, savings } => {
                format!("consolidated {claims} node(s) onto {replacements} cheaper node(s), saving ${savings:.4}/h")
            }
            _ => continue,
        };
        lines.push((since(t0, at), line));
    }
    lines
}

/// Scales inflate to 30% of its pods and waits until consolidation has settled: no claim created
/// or deleted for longer than a command takes to be found and validated, every pod Running.
async fn consolidation_scene(
    world: &World,
    pods: usize,
    consolidate_after: Duration,
    note: &mut dyn FnMut(String),
) -> Result<ConsolidationScene, WorldError> {
    let target = (pods * 3 / 10).max(1);
    let fleet = |instances: &[Instance]| (instances.len(), instances.iter().map(|i| i.price).sum::<f64>());
    let (nodes_before, price_before) = fleet(&world.instances().await?);
    world.scale(target as u32).await?;
    let started = Instant::now();
    note(format!("scaled inflate to {target}: {nodes_before} nodes at ${price_before:.4}/h hold them"));
    // Settled: nothing changed for longer than a command takes to be found and validated.
    let quiet = consolidate_after * 2 + DEMO_VALIDATION + Duration::from_secs(5);
    let limit = Duration::from_secs(240);
    let mut last: Option<(Vec<String>, Instant)> = None;
    let took = loop {
        let claims = world.claims().await?;
        let names: Vec<String> = claims.iter().filter_map(|c| c.metadata.name.clone()).collect();
        let deleting = claims.iter().any(|c| c.metadata.deletion_timestamp.is_some());
        let running = world.running().await? == target && world.pods().await?.len() == target;
        match &last {
            Some((before, since)) if *before == names && !deleting && running => {
                if since.elapsed() >= quiet {
                    break since.saturating_duration_since(started);
                }
            }
            _ => last = Some((names, Instant::now())),
        }
        if started.elapsed() > limit {
            return Err(WorldError::Timeout(limit, "consolidation to settle".into()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (nodes_after, price_after) = fleet(&world.instances().await?);
    let fresh = world.fresh_plan(world.pods().await?).await?.price();
    note(format!(
        "consolidation settled: {nodes_after} nodes at ${price_after:.4}/h ({:.2}s); a fresh solve of {target} pods costs ${fresh:.4}/h",
        took.as_secs_f64()
    ));
    Ok(ConsolidationScene { pods: target, nodes_before, price_before, nodes_after, price_after, fresh, took })
}

/// Warns of a spot reclaim for the spot node with the most pods, as EC2 does through EventBridge,
/// and waits until Rafter has replaced it, drained it and given it back. On the fake cloud the
/// instance is reclaimed two minutes after the warning unless Rafter is done first. Returns the
/// scene's figures and the leader's timeline lines from the warning on.
async fn interruption_scene(
    world: &World,
    queue: &MemoryQueue,
    leader: Option<&Replica>,
    pods: usize,
    t0: Instant,
    note: &mut dyn FnMut(String),
) -> Result<Option<(InterruptionScene, Vec<(Duration, String)>)>, WorldError> {
    let instances = world.instances().await?;
    let nodes = world.nodes().await?;
    let all_pods = world.pods().await?;
    let pods_on = |instance: &Instance| {
        let node = nodes
            .iter()
            .find(|n| n.spec.as_ref().and_then(|s| s.provider_id.as_deref()) == Some(instance.provider_id.as_str()))
            .and_then(|n| n.metadata.name.as_deref());
        all_pods
            .iter()
            .filter(|p| node.is_some() && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == node)
            .count()
    };
    let Some(victim) =
        instances.iter().filter(|i| i.capacity_type == CapacityType::Spot).max_by_key(|i| (pods_on(i), i.id.clone()))
    else {
        note("no spot node to interrupt; the interruption scene is skipped".into());
        return Ok(None);
    };
    let on_node = pods_on(victim);
    let warning = Envelope::spot_warning(
        format!("demo-{}", victim.id),
        "123456789012",
        "us-east-1",
        &victim.id,
        jiff::Timestamp::now(),
    );
    let body = serde_json::to_string(&warning).map_err(|e| WorldError::Manifest(format!("spot warning: {e}")))?;
    let warned = Instant::now();
    // The fake cloud reclaims it at the deadline, as EC2 would; an emulator's instance stays.
    world.cloud.interrupt(&victim.id);
    queue.send(body);
    let instance = format!("{} ({} spot in {})", victim.id, victim.instance_type, victim.zone);
    note(format!("EC2 spot interruption warning for {instance}, {on_node} pods on it; reclaimed in 2 min"));
    world
        .wait_for("the interrupted node replaced and gone", SPOT_NOTICE, || async {
            let gone = !world.instances().await?.iter().any(|i| i.id == victim.id);
            Ok(gone && world.running().await? == pods)
        })
        .await?;
    let mut scene = InterruptionScene { instance, pods: on_node, to_gone: warned.elapsed(), ..Default::default() };
    note(format!(
        "{} terminated and all {pods} pods Running again, {:.2}s after the warning",
        victim.id,
        scene.to_gone.as_secs_f64()
    ));
    let Some(leader) = leader else { return Ok(Some((scene, Vec::new()))) };
    for (at, mark) in leader.ctx.timeline.marks() {
        match mark {
            Mark::Tainted { .. } if at >= warned => scene.to_taint = since(warned, at),
            Mark::DrainStarted { replacement_ready, .. } if at >= warned => {
                scene.to_drain = since(warned, at);
                scene.replacement_ready = replacement_ready;
            }
            _ => {}
        }
    }
    let from = since(t0, warned);
    let lines = leader_lines(&leader.ctx.timeline, t0).into_iter().filter(|(at, _)| *at >= from).collect();
    Ok(Some((scene, lines)))
}
