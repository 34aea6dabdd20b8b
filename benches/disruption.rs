//! Disruption benchmark: one full consolidation decision (`rafter::disruption::decide`) over a
//! fleet of N nodes of ~20 pods each, and the fleet's cost once every command the engine issues has
//! been carried out (in memory), against a fresh solve of the same pods. JSON on stdout (and in
//! `$BENCH_OUT` if set).
//!
//! `cargo bench --bench disruption` (release mode). `BENCH_RUNS` sets the decisions timed per size
//! (default 5; the median is reported); `BENCH_SIZES` the node counts (default 500,2000,5000);
//! `BENCH_CONVERGE_MAX` the most commands carried out per size (default 400).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use rafter::api::NodePool;
use rafter::api::nodeclaim::NodeClaim;
use rafter::disruption::{Command, Settings, View, decide, fixture};
use rafter::scheduling::catalog::us_east_1;
use rafter::scheduling::instance_types::{InstanceType, KubeletSettings};
use rafter::scheduling::solver::solve;
use rafter::state::{Snapshot, scheduling_input};
use serde_json::{Value, json};

/// A small deterministic generator (64-bit LCG) so every run sees the same fleet.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CPUS: [i64; 4] = [100, 250, 500, 1000];
const MEMORY_MIB: [i64; 4] = [256, 512, 1024, 2048];
/// Types the fleet was bought as, over time.
const FLEET_TYPES: [&str; 4] = ["m5.2xlarge", "m5.4xlarge", "c5.4xlarge", "r5.2xlarge"];

fn pool() -> NodePool {
    serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {
            "requirements": [
                {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
                {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["4"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}],
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "0s"}}
    }))
    .expect("pool")
}

fn types() -> Vec<InstanceType> {
    us_east_1().expect("catalog").iter().map(|s| InstanceType::new(s, &KubeletSettings::default(), |_| None)).collect()
}

/// The cluster the engine sees.
#[derive(Default, Clone)]
struct Fleet {
    nodes: Vec<Arc<Node>>,
    claims: Vec<Arc<NodeClaim>>,
    pods: Vec<Arc<Pod>>,
    next: usize,
}

impl Fleet {
    /// Adds a node of `it` in `zone`, with its claim.
    fn add_node(&mut self, it: &InstanceType, zone: &str) -> String {
        let name = format!("node-{}", self.next);
        self.next += 1;
        let (node, claim) = fixture::node_and_claim(&name, it, zone, "on-demand");
        self.nodes.push(Arc::new(node));
        self.claims.push(Arc::new(claim));
        name
    }

    fn add_pod(&mut self, name: String, node: Option<&str>, cpu: i64, memory_mib: i64) {
        let mut pod = fixture::bound_pod(
            "bench",
            &name,
            node.unwrap_or_default(),
            &format!("{cpu}m"),
            &format!("{memory_mib}Mi"),
        );
        if let Some(spec) = pod.spec.as_mut().filter(|_| node.is_none()) {
            spec.node_name = None;
        }
        self.pods.push(Arc::new(pod));
    }

    fn price(&self, types: &[InstanceType]) -> f64 {
        self.nodes.iter().filter_map(|n| rafter::disruption::candidates::node_price(n, types)).sum()
    }
}

/// `nodes` nodes of the fleet's types, each with 10–30 pods (about 20), filled to 40–95% of its CPU
/// (`fill_from` 40) or to at least `fill_from`%.
fn fleet(nodes: usize, types: &[InstanceType], fill_from: u64) -> Fleet {
    let mut rng = Lcg(7);
    let mut fleet = Fleet::default();
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let mut pod = 0;
    for i in 0..nodes {
        let it = types.iter().find(|t| t.name == FLEET_TYPES[i % FLEET_TYPES.len()]).expect("type");
        let name = fleet.add_node(it, zones[i % zones.len()]);
        let a = it.allocatable();
        let target = 10 + rng.below(21) as usize;
        let fill = (fill_from + rng.below(96 - fill_from)) as i64;
        let (mut cpu, mut memory, mut count) = (0i64, 0i64, 0usize);
        while count < target {
            let (c, m) = (CPUS[rng.below(4) as usize], MEMORY_MIB[rng.below(4) as usize]);
            if (cpu + c) * 100 > a.cpu * fill || (memory + m) * 1024 * 1024 > a.memory || count as i64 + 1 > a.pods {
                break;
            }
            cpu += c;
            memory += m;
            count += 1;
            fleet.add_pod(format!("pod-{pod}"), Some(&name), c, m);
            pod += 1;
        }
    }
    fleet
}

/// `nodes` nodes of the pool's cheapest type with 7 allocatable cores, each running 7 one-core pods.
fn full_fleet(nodes: usize, types: &[InstanceType]) -> Fleet {
    let admitted = |t: &&InstanceType| {
        let label = |k: &str| t.requirements.get(k).and_then(|r| r.single_value()).map(str::to_string);
        let category = label("karpenter.k8s.aws/instance-category").unwrap_or_default();
        let generation: u32 = label("karpenter.k8s.aws/instance-generation").and_then(|g| g.parse().ok()).unwrap_or(0);
        ["c", "m", "r"].contains(&category.as_str())
            && generation > 4
            && label("kubernetes.io/arch").as_deref() == Some("amd64")
            && t.allocatable().cpu >= 7_000
    };
    let price = |t: &InstanceType| t.offerings.iter().map(|o| o.price).fold(f64::INFINITY, f64::min);
    let it = types.iter().filter(admitted).min_by(|a, b| price(a).total_cmp(&price(b))).expect("a type");
    let mut fleet = Fleet::default();
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    for i in 0..nodes {
        let name = fleet.add_node(it, zones[i % zones.len()]);
        for p in 0..7 {
            fleet.add_pod(format!("full-{i}-{p}"), Some(&name), 1_000, 256);
        }
    }
    fleet
}

/// Carries out a command in memory: the candidates go, the replacement joins (as its cheapest
/// type), and the candidates' pods are bound where the solver places them.
/// Returns the nodes bought for pods that found no room after all.
fn carry_out(
    fleet: &mut Fleet,
    command: &Command,
    pools: &[NodePool],
    types: &HashMap<String, Vec<InstanceType>>,
) -> usize {
    let gone: std::collections::HashSet<&str> = command.candidates.iter().map(|t| t.node.as_str()).collect();
    let all = &types["default"];
    for r in &command.replacements {
        let it = all.iter().find(|t| t.name == r.instance_types[0].name).expect("replacement type");
        fleet.add_node(it, "us-east-1a");
    }
    let (moving, staying): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = std::mem::take(&mut fleet.pods)
        .into_iter()
        .partition(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| gone.contains(n)));
    fleet.pods = staying;
    fleet.nodes.retain(|n| !gone.contains(n.metadata.name.as_deref().unwrap_or_default()));
    fleet.claims.retain(|c| !gone.contains(c.status.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default()));
    let pending: Vec<Pod> = moving.iter().map(|p| rafter::disruption::consolidation::as_pending(p)).collect();
    let snapshot =
        Snapshot { pods: &fleet.pods, nodes: &fleet.nodes, claims: &fleet.claims, pools, ..Snapshot::default() };
    let (input, _) = scheduling_input(snapshot, pending, |_| all.clone());
    let plan = solve(&input);
    assert!(plan.unplaced.is_empty(), "every moved pod has a place: {:?}", plan.unplaced.first());
    // Pods the scheduler's order leaves without room are provisioned for, as the controller would.
    let mut at: BTreeMap<String, String> = plan.placements.iter().map(|p| (p.pod.clone(), p.node.clone())).collect();
    for claim in &plan.claims {
        let it = all.iter().find(|t| t.name == claim.instance_types[0].name).expect("claim type");
        let node = fleet.add_node(it, "us-east-1a");
        for pod in &claim.pods {
            at.insert(pod.clone(), node.clone());
        }
    }
    let launched = plan.claims.len();
    for p in moving {
        let key = format!("bench/{}", p.metadata.name.as_deref().unwrap_or_default());
        let mut pod = p.as_ref().clone();
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = at.get(key.as_str()).cloned();
        }
        fleet.pods.push(Arc::new(pod));
    }
    launched
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let max_commands: usize = std::env::var("BENCH_CONVERGE_MAX").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![500, 2_000, 5_000]);
    let all = types();
    let pools = vec![pool()];
    let types: HashMap<String, Vec<InstanceType>> = HashMap::from([("default".to_string(), all.clone())]);
    let now: Timestamp = "2026-12-01T12:00:00Z".parse().expect("now");
    let settings = Settings::default();
    let mut results = Vec::new();
    for &size in &sizes {
        // The worst case: a fleet with nothing to consolidate, where a decision spends every solve
        // it may: each node is the cheapest type that holds its pods, full to the last core.
        let full = full_fleet(size, &all);
        let worst = {
            let snapshot = Snapshot {
                pods: &full.pods,
                nodes: &full.nodes,
                claims: &full.claims,
                pools: &pools,
                ..Snapshot::default()
            };
            let mut seconds = Vec::new();
            let mut last = None;
            for _ in 0..runs {
                let start = Instant::now();
                last = Some(decide(View { snapshot, pdbs: &[], types: &types, now, settings, resume_after: None }));
                seconds.push(start.elapsed().as_secs_f64());
            }
            let last = last.expect("a run");
            json!({"median_seconds": median(seconds.clone()), "all_seconds": seconds, "simulations": last.simulations,
                   "command": last.command.as_ref().map(|c| format!("{} {} of {}", c.method.as_str(), c.decision(), c.candidates.len()))})
        };
        let mut fleet = fleet(size, &all, 40);
        let decide_now = |fleet: &Fleet, resume_after: Option<&str>| {
            let snapshot = Snapshot {
                pods: &fleet.pods,
                nodes: &fleet.nodes,
                claims: &fleet.claims,
                pools: &pools,
                ..Snapshot::default()
            };
            decide(View { snapshot, pdbs: &[], types: &types, now, settings, resume_after })
        };
        let mut seconds = Vec::new();
        let mut first = None;
        for _ in 0..runs {
            let start = Instant::now();
            let d = decide_now(&fleet, None);
            seconds.push(start.elapsed().as_secs_f64());
            first = Some(d);
        }
        let first = first.expect("a run");
        // Carry out every command until the engine has none (or the cap).
        let price_before = fleet.price(&all);
        let (nodes_before, pods) = (fleet.nodes.len(), fleet.pods.len());
        let (mut commands, mut extra) = (0, 0);
        let mut decisions_seconds = Vec::new();
        let converge = Instant::now();
        // Until a decision finds nothing having tried every candidate: its scan either covered
        // them all at once, or went on round after round (from where the last stopped) until it
        // had tried as many as there are nodes.
        let (mut resume, mut tried_since_command) = (None::<String>, 0usize);
        while commands < max_commands {
            let start = Instant::now();
            let d = decide_now(&fleet, resume.as_deref());
            decisions_seconds.push(start.elapsed().as_secs_f64());
            match d.command {
                Some(command) => {
                    extra += carry_out(&mut fleet, &command, &pools, &types);
                    commands += 1;
                    (resume, tried_since_command) = (None, 0);
                }
                None => {
                    tried_since_command += d.simulations;
                    match d.resume_after {
                        Some(last) if tried_since_command < fleet.nodes.len() => resume = Some(last),
                        _ => break,
                    }
                }
            }
        }
        let converge_seconds = converge.elapsed().as_secs_f64();
        if std::env::var_os("BENCH_WHY").is_some() {
            let last = decide_now(&fleet, None);
            let mut why: BTreeMap<String, usize> = BTreeMap::new();
            for k in &last.kept {
                *why.entry(k.why.chars().take(60).collect()).or_default() += 1;
            }
            eprintln!("after convergence, {} simulations; why nodes stay: {why:#?}", last.simulations);
        }
        let price_after = fleet.price(&all);
        let pending: Vec<Pod> = fleet.pods.iter().map(|p| rafter::disruption::consolidation::as_pending(p)).collect();
        let empty = Snapshot { pools: &pools, ..Snapshot::default() };
        let (input, _) = scheduling_input(empty, pending, |_| all.clone());
        let fresh = solve(&input).price();
        let entry = json!({
            "nodes": size,
            "pods": pods,
            "runs": runs,
            "decision_median_seconds": median(seconds.clone()),
            "decision_all_seconds": seconds,
            "first_command": first.command.as_ref().map(|c| json!({
                "method": c.method.as_str(), "decision": c.decision(), "candidates": c.candidates.len(),
                "replacements": c.replacements.len(), "savings_per_hour": c.savings})),
            "first_decision_simulations": first.simulations,
            "full_fleet_decision": worst,
            "converge": {
                "commands": commands,
                "nodes_bought_for_pods_without_room": extra,
                "finished": commands < max_commands,
                "seconds": converge_seconds,
                "decision_max_seconds": decisions_seconds.iter().copied().fold(0.0, f64::max),
                "decision_median_seconds": median(decisions_seconds),
                "nodes_before": nodes_before,
                "nodes_after": fleet.nodes.len(),
                "price_before": price_before,
                "price_after": price_after,
                "fresh_solve_price": fresh,
                "after_over_fresh": price_after / fresh,
            },
        });
        eprintln!("{entry}");
        results.push(entry);
    }
    let out = Value::Array(results);
    let text = serde_json::to_string_pretty(&out).expect("json");
    println!("{text}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(&path, &text).expect("write BENCH_OUT");
    }
}
