//! Interruption benchmark, release mode, JSON on stdout. `cargo bench -p rafter-e2e --bench interruption`
//!
//! Per run, a fresh world (simulator, fake cloud, moto SQS, one replica with 4 queue workers): one
//! spot node holding all of `PODS` inflate pods is interrupted. Measured: receipt → taint, receipt
//! → replacement Registered, and how long before its deadline (warning + 2 min) the drain
//! finished. 30-pod nodes are m5.xlarge, 100-pod nodes m5.4xlarge. BENCH_RUNS (default 5) repeats
//! each size; percentiles are over the runs. BENCH_SHUTDOWN_SECONDS (default 0) is how long each
//! pod takes to stop after SIGTERM (its grace period is 30 s), so the drain's finish reflects pods
//! that take time to go rather than the simulator's instant stop.

use rafter_e2e as common;

use std::time::Duration;

use common::{harness_with, instance_id, slow_inflate, spot};
use jiff::Timestamp;
use rafter::interruption::plan::REPLACES_ANNOTATION;
use rafter_actors::timeline::Mark;
use serde_json::json;
use tokio::time::Instant;

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

#[derive(Default)]
struct Samples {
    taint_ms: Vec<f64>,
    registered_ms: Vec<f64>,
    margin_s: Vec<f64>,
    ready_first: usize,
    nodes: usize,
}

async fn run(pods_per_node: u32, nodes: u32, instance_type: &str, inflate: &str, samples: &mut Samples) {
    let h = harness_with(instance_type, 4, inflate).await;
    h.scale_and_wait(pods_per_node * nodes).await;
    let claims = h.world.claims().await.expect("claims");
    assert_eq!(claims.len(), nodes as usize, "{nodes} node(s) for {} pods", pods_per_node * nodes);
    let sent = Instant::now();
    let now = Timestamp::now();
    let bodies: Vec<String> =
        claims.iter().enumerate().map(|(i, c)| spot(&format!("bench-{i}"), &instance_id(c), now)).collect();
    h.send(&bodies).await;
    let old: Vec<String> = claims.iter().filter_map(|c| c.metadata.name.clone()).collect();
    h.world
        .wait_for("every interrupted node replaced", Duration::from_secs(120), || async {
            let claims = h.world.claims().await?;
            let gone = claims.iter().all(|c| c.metadata.name.as_ref().is_none_or(|n| !old.contains(n)));
            Ok(gone && h.world.running().await? == (pods_per_node * nodes) as usize)
        })
        .await
        .expect("replaced");
    let marks = h.replica.ctx.timeline.marks();
    let replacements = h.world.claims().await.expect("claims");
    let deadline = sent + Duration::from_secs(120);
    for name in &old {
        let received = marks.iter().find_map(|(_, m)| match m {
            Mark::Interrupted { claim, received } if claim == name => Some(*received),
            _ => None,
        });
        let Some(received) = received else { continue };
        let at = |f: &dyn Fn(&Mark) -> bool| marks.iter().find(|(_, m)| f(m)).map(|(t, _)| *t);
        if let Some(t) = at(&|m| matches!(m, Mark::Tainted { claim } if claim == name)) {
            samples.taint_ms.push((t - received).as_secs_f64() * 1000.0);
        }
        let replacement: Vec<String> = replacements
            .iter()
            .filter(|c| c.metadata.annotations.as_ref().and_then(|a| a.get(REPLACES_ANNOTATION)) == Some(name))
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        if let Some(t) = at(&|m| matches!(m, Mark::Registered { claim, .. } if replacement.contains(claim))) {
            samples.registered_ms.push((t - received).as_secs_f64() * 1000.0);
        }
        if let Some(t) = at(&|m| matches!(m, Mark::Drained { claim } if claim == name)) {
            samples.margin_s.push((deadline - t).as_secs_f64());
        }
        if at(&|m| matches!(m, Mark::DrainStarted { claim, replacement_ready: true } if claim == name)).is_some() {
            samples.ready_first += 1;
        }
        samples.nodes += 1;
    }
    h.replica.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let shutdown: u32 = std::env::var("BENCH_SHUTDOWN_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let inflate = slow_inflate(30, shutdown);
    let mut out = serde_json::Map::new();
    out.insert("pod_shutdown_seconds".into(), json!(shutdown));
    for (pods, nodes, instance_type) in [(30u32, 1u32, "m5.xlarge"), (100, 1, "m5.4xlarge")] {
        let mut s = Samples::default();
        for _ in 0..runs {
            run(pods, nodes, instance_type, &inflate, &mut s).await;
        }
        let summary = json!({
            "instance_type": instance_type,
            "nodes_interrupted": s.nodes,
            "receipt_to_taint_ms": {"p50": percentile(&s.taint_ms, 0.5), "p99": percentile(&s.taint_ms, 0.99), "samples": s.taint_ms.len()},
            "receipt_to_replacement_registered_ms": {"p50": percentile(&s.registered_ms, 0.5), "p99": percentile(&s.registered_ms, 0.99)},
            "drain_finished_before_deadline_s": {"min": percentile(&s.margin_s, 0.0), "p50": percentile(&s.margin_s, 0.5)},
            "replacement_ready_before_drain": format!("{}/{}", s.ready_first, s.nodes),
        });
        eprintln!("{pods}-pod nodes: {summary}");
        out.insert(format!("{pods}_pod_nodes"), summary);
    }
    println!("{}", serde_json::to_string_pretty(&serde_json::Value::Object(out)).unwrap_or_default());
}
