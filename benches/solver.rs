//! Solver benchmark: Karpenter's scheduling benchmark mix, reproduced, plus plan cost against a
//! lower bound. Writes JSON to stdout (and to `$BENCH_OUT` if set).
//!
//! `cargo bench --bench solver` (release mode). `BENCH_RUNS` sets the runs per size (default 5);
//! the median is reported. `BENCH_SIZES` overrides the pod counts (comma-separated).

use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use rafter::api::NodePool;
use rafter::scheduling::catalog::us_east_1;
use rafter::scheduling::instance_types::{InstanceType, KubeletSettings};
use rafter::scheduling::resources::Resources;
use rafter::scheduling::solver::{PoolInput, SchedulingInput, solve};
use serde_json::{Value, json};

/// A small deterministic generator (64-bit LCG) so every run sees the same pods.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

const CPUS: &[&str] = &["100m", "250m", "500m", "750m", "1", "1500m"];
const MEMORIES: &[&str] = &["100Mi", "256Mi", "512Mi", "1Gi", "2Gi", "4Gi"];

/// The 400 instance types: current-generation, virtualised, GPU-less, non-burstable types of the
/// catalog, evenly sampled by name, on-demand in every zone. Burstable (t) types are left out as
/// production pools leave them out: their vCPUs are priced for a baseline the model does not see.
fn instance_types() -> Vec<InstanceType> {
    let mut specs: Vec<_> = us_east_1()
        .expect("catalog")
        .into_iter()
        .filter(|s| s.current_generation && !s.bare_metal && s.gpu_count == 0 && !s.family.starts_with('t'))
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    let step = specs.len() as f64 / 400.0;
    (0..400.min(specs.len()))
        .map(|i| &specs[((i as f64) * step) as usize])
        .map(|s| InstanceType::new(s, &KubeletSettings::default(), |_| None))
        .collect()
}

fn pool(types: Vec<InstanceType>) -> PoolInput {
    let pool: NodePool = serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}}}
    }))
    .expect("pool");
    PoolInput::from_node_pool(&pool, types, &Resources::zero()).expect("pool input")
}

/// `count` pods in fifths: no constraints, zone spread, hostname spread, zone self-affinity,
/// hostname self-anti-affinity (or all generic when `generic_only`).
fn pods(count: usize, generic_only: bool) -> Vec<Pod> {
    let mut rng = Lcg(42);
    (0..count)
        .map(|i| {
            let kind = if generic_only { 0 } else { i % 5 };
            let app = format!("group-{kind}");
            let selector = json!({"matchLabels": {"app": app}});
            let constraint = match kind {
                1 => json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector}]}),
                2 => json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": selector}]}),
                3 => json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "topology.kubernetes.io/zone", "labelSelector": selector}]}}}),
                4 => json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname", "labelSelector": selector}]}}}),
                _ => json!({}),
            };
            let mut spec = json!({"containers": [{"name": "app", "resources": {"requests": {"cpu": rng.pick(CPUS), "memory": rng.pick(MEMORIES)}}}]});
            if let (Some(spec), Some(extra)) = (spec.as_object_mut(), constraint.as_object()) {
                spec.extend(extra.clone());
            }
            serde_json::from_value(json!({"metadata": {"name": format!("pod-{i}"), "namespace": "bench", "labels": {"app": app}}, "spec": spec}))
                .expect("pod")
        })
        .collect()
}

/// A lower bound on the hourly price of any set of nodes that holds the pods: the LP relaxation
/// min Σ price·x subject to Σ cpu·x ≥ C, Σ mem·x ≥ M, Σ pods·x ≥ P, x ≥ 0 over allocatable
/// resources. An optimal vertex has at most three non-zero variables with as many tight
/// constraints, so every single type, every pair (two constraints tight) and every triple (all
/// three tight) is tried. It ignores integrality and topology, so it is below any real plan.
fn lower_bound(types: &[InstanceType], input: &SchedulingInput) -> f64 {
    let mut need = [0f64; 3];
    for pod in &input.pods {
        let r = rafter::scheduling::resources::pod_requests(pod.spec.as_ref().expect("spec")).expect("requests");
        need[0] += r.cpu as f64;
        need[1] += r.memory as f64;
        need[2] += r.pods as f64;
    }
    let points: Vec<([f64; 3], f64)> = types
        .iter()
        .filter_map(|t| {
            let a = t.allocatable();
            let price = t.offerings.iter().map(|o| o.price).fold(f64::INFINITY, f64::min);
            (a.cpu > 0 && a.memory > 0 && a.pods > 0 && price.is_finite())
                .then_some(([a.cpu as f64, a.memory as f64, a.pods as f64], price))
        })
        .collect();
    let feasible = |x: &[(usize, f64)]| {
        (0..3).all(|r| x.iter().map(|&(i, v)| points[i].0[r] * v).sum::<f64>() >= need[r] * (1.0 - 1e-9))
            && x.iter().all(|&(_, v)| v >= -1e-12)
    };
    let cost = |x: &[(usize, f64)]| x.iter().map(|&(i, v)| points[i].1 * v).sum::<f64>();
    let mut best = f64::INFINITY;
    for (a, p) in &points {
        let v = (0..3).map(|r| need[r] / a[r]).fold(0.0, f64::max);
        best = best.min(p * v);
    }
    let n = points.len();
    for i in 0..n {
        for j in i + 1..n {
            for (r1, r2) in [(0, 1), (0, 2), (1, 2)] {
                let (a, b) = (points[i].0, points[j].0);
                let det = a[r1] * b[r2] - b[r1] * a[r2];
                if det.abs() < 1e-12 {
                    continue;
                }
                let x = [
                    (i, (need[r1] * b[r2] - b[r1] * need[r2]) / det),
                    (j, (a[r1] * need[r2] - need[r1] * a[r2]) / det),
                ];
                if feasible(&x) {
                    best = best.min(cost(&x));
                }
            }
        }
    }
    for i in 0..n {
        for j in i + 1..n {
            for k in j + 1..n {
                let (a, b, c) = (points[i].0, points[j].0, points[k].0);
                let det3 = |u: [f64; 3], v: [f64; 3], w: [f64; 3]| {
                    u[0] * (v[1] * w[2] - v[2] * w[1]) - v[0] * (u[1] * w[2] - u[2] * w[1])
                        + w[0] * (u[1] * v[2] - u[2] * v[1])
                };
                let det = det3(a, b, c);
                if det.abs() < 1e-12 {
                    continue;
                }
                let x = [(i, det3(need, b, c) / det), (j, det3(a, need, c) / det), (k, det3(a, b, need) / det)];
                if x.iter().all(|&(_, v)| v >= 0.0) && cost(&x) < best && feasible(&x) {
                    best = cost(&x);
                }
            }
        }
    }
    best
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 5_000, 20_000]);
    let types = instance_types();
    let mut results = Vec::new();
    for &count in &sizes {
        let input =
            SchedulingInput { pods: pods(count, false), pools: vec![pool(types.clone())], ..Default::default() };
        let mut seconds = Vec::new();
        let mut plan = None;
        for _ in 0..runs {
            let start = Instant::now();
            let p = solve(&input);
            seconds.push(start.elapsed().as_secs_f64());
            plan = Some(p);
        }
        let plan = plan.expect("at least one run");
        let s = median(seconds.clone());
        let entry = json!({
            "workload": "karpenter-mix",
            "pods": count,
            "runs": runs,
            "median_seconds": s,
            "all_seconds": seconds,
            "pods_per_second": count as f64 / s,
            "nodes": plan.claims.len(),
            "unplaced": plan.unplaced.len(),
            "price_per_hour": plan.price(),
            "lower_bound_per_hour": lower_bound(&types, &input),
        });
        eprintln!("{entry}");
        results.push(entry);
    }
    for (name, generic) in [("generic", true), ("mixed", false)] {
        let input =
            SchedulingInput { pods: pods(5_000, generic), pools: vec![pool(types.clone())], ..Default::default() };
        let plan = solve(&input);
        let bound = lower_bound(&types, &input);
        let entry = json!({
            "workload": format!("cost-{name}"),
            "pods": 5_000,
            "nodes": plan.claims.len(),
            "price_per_hour": plan.price(),
            "lower_bound_per_hour": bound,
            "ratio": plan.price() / bound,
        });
        eprintln!("{entry}");
        results.push(entry);
    }
    let report: Value = json!({"benchmark": "solver", "instance_types": types.len(), "results": results, "peak_rss_mib": peak_rss_mib()});
    let text = serde_json::to_string_pretty(&report).expect("json");
    println!("{text}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(&path, &text).expect("writes BENCH_OUT");
    }
}
