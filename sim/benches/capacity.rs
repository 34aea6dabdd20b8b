//! Capacity of the simulated API server: 2,000 nodes and 10,000 pods written over HTTP by concurrent
//! kube-rs clients (creates, then a status patch per pod) while three watchers follow pods and nodes.
//! Reports writes per second and the watch-delivery lag (request sent → event received by every watcher),
//! median of several runs, as JSON.
//!
//! `cargo bench -p rafter-sim --bench capacity` (env: BENCH_RUNS, BENCH_WARMUP, BENCH_PODS, BENCH_NODES,
//! BENCH_WRITERS, BENCH_OUT).

use std::collections::HashMap;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, WatchEvent, WatchParams};
use rafter_sim::{ServerConfig, Simulator};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    writes: usize,
    seconds: f64,
    writes_per_second: f64,
    request_p50_ms: f64,
    request_p99_ms: f64,
    watch_lag_p50_ms: f64,
    watch_lag_p99_ms: f64,
    watch_lag_max_ms: f64,
    events_delivered: usize,
}

/// Records, per watcher, when each (kind, name, resourceVersion) arrived.
type Seen = Arc<Mutex<Vec<HashMap<String, Instant>>>>;

async fn run_once(pods: usize, nodes: usize, writers: usize) -> Run {
    let config = ServerConfig {
        store: rafter_sim::apiserver::store::StoreConfig {
            history: 50_000,
            watch_buffer: 65_536,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let sim = Simulator::start_with(config).await.expect("simulator");
    let client = sim.client();
    let seen: Seen = Arc::new(Mutex::new(vec![HashMap::new(); 3]));
    let mut watch_tasks = Vec::new();
    for watcher in 0..3 {
        let seen = seen.clone();
        let client = sim.client_as(&format!("watcher-{watcher}")).expect("client");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        watch_tasks.push(tokio::spawn(async move {
            let pods: Api<Pod> = Api::all(client.clone());
            let nodes: Api<Node> = Api::all(client);
            let mut pod_events =
                pods.watch(&WatchParams::default().timeout(290), "0").await.expect("pod watch").boxed();
            let mut node_events =
                nodes.watch(&WatchParams::default().timeout(290), "0").await.expect("node watch").boxed();
            // Nodes are watched for load; the lag is measured on pods.
            tokio::spawn(async move { while let Ok(Some(_)) = node_events.try_next().await {} });
            let _ = ready_tx.send(());
            while let Ok(Some(event)) = pod_events.try_next().await {
                let now = Instant::now();
                let key = match event {
                    WatchEvent::Added(p) => format!("pod/{}/added", p.metadata.name.unwrap_or_default()),
                    WatchEvent::Modified(p) => format!("pod/{}/modified", p.metadata.name.unwrap_or_default()),
                    _ => continue,
                };
                seen.lock().expect("lock")[watcher].insert(key, now);
            }
        }));
        ready_rx.await.expect("watch ready");
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = client.clone();
        let sent = sent.clone();
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            // Writers send prepared JSON and read the answer as text, so the figure is the server's
            // (and HTTP's), not kube-rs's typed encoding; the watchers stay typed, as Rafter's are.
            let post = |uri: String, body: Vec<u8>| http::Request::post(uri).header("content-type", "application/json").body(body).expect("request");
            let mut i = w;
            while i < nodes {
                let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}"), "labels": {"bench": "true"}}, "status": {"capacity": {"cpu": "4", "pods": "110"}}});
                let t = Instant::now();
                client.request_text(post("/api/v1/nodes".into(), serde_json::to_vec(&node).expect("json"))).await.expect("node created");
                latencies.lock().expect("lock").push(t.elapsed().as_secs_f64() * 1000.0);
                i += writers;
            }
            let mut i = w;
            while i < pods {
                let name = format!("pod-{i}");
                let pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"app": "bench", "shard": (i % 16).to_string()}},
                    "spec": {"containers": [{"name": "c", "image": "pause:3.9", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
                });
                let body = serde_json::to_vec(&pod).expect("json");
                let t = Instant::now();
                sent.lock().expect("lock").insert(format!("pod/{name}/added"), t);
                client.request_text(post("/api/v1/namespaces/default/pods".into(), body)).await.expect("pod created");
                latencies.lock().expect("lock").push(t.elapsed().as_secs_f64() * 1000.0);
                let status = br#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#.to_vec();
                let patch = http::Request::patch(format!("/api/v1/namespaces/default/pods/{name}/status"))
                    .header("content-type", "application/merge-patch+json")
                    .body(status)
                    .expect("request");
                let t = Instant::now();
                sent.lock().expect("lock").insert(format!("pod/{name}/modified"), t);
                client.request_text(patch).await.expect("status patched");
                latencies.lock().expect("lock").push(t.elapsed().as_secs_f64() * 1000.0);
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let seconds = started.elapsed().as_secs_f64();
    let writes = nodes + 2 * pods;
    // Let the watchers drain, then compare.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = seen.lock().expect("lock").iter().all(|s| s.len() >= 2 * pods);
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in &watch_tasks {
        t.abort();
    }
    let sent = sent.lock().expect("lock").clone();
    let mut lags = Vec::new();
    for watcher in seen.lock().expect("lock").iter() {
        for (key, at) in watcher {
            if let Some(t) = sent.get(key) {
                lags.push(at.saturating_duration_since(*t).as_secs_f64() * 1000.0);
            }
        }
    }
    lags.sort_by(f64::total_cmp);
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    Run {
        writes,
        seconds,
        writes_per_second: writes as f64 / seconds,
        request_p50_ms: percentile(&lat, 0.5),
        request_p99_ms: percentile(&lat, 0.99),
        watch_lag_p50_ms: percentile(&lags, 0.5),
        watch_lag_p99_ms: percentile(&lags, 0.99),
        watch_lag_max_ms: lags.last().copied().unwrap_or(0.0),
        events_delivered: lags.len(),
    }
}

/// The store alone (no HTTP): commits per second for the same objects, to show where time goes.
fn store_only(pods: usize) -> f64 {
    use rafter_sim::apiserver::store::{Store, StoreConfig};
    let store = Store::new(StoreConfig { history: 50_000, ..StoreConfig::default() });
    let key = (String::new(), "namespaces".to_string());
    store.create(&key, false, json!({"metadata": {"name": "default"}}), "namespaces", "").expect("ns");
    let pods_key = (String::new(), "pods".to_string());
    let started = Instant::now();
    for i in 0..pods {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("pod-{i}"), "namespace": "default", "labels": {"app": "bench"}}, "spec": {"containers": [{"name": "c", "image": "pause:3.9"}]}});
        store.create(&pods_key, true, pod, "pods", "").expect("created");
    }
    pods as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runs = env("BENCH_RUNS", 3);
    let pods = env("BENCH_PODS", 10_000);
    let nodes = env("BENCH_NODES", 2_000);
    let writers = env("BENCH_WRITERS", 32);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // One untimed run first (as criterion warms up): the first run in a process pays for page
    // faults and allocator growth that a long-running server has long paid.
    for _ in 0..env("BENCH_WARMUP", 1) {
        runtime.block_on(run_once(pods, nodes, writers));
    }
    let mut results = Vec::new();
    for run in 0..runs {
        let r = runtime.block_on(run_once(pods, nodes, writers));
        eprintln!("run {run}: {r:?}");
        results.push(r);
    }
    let median = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let store = store_only(pods);
    let out = json!({
        "command": "cargo bench -p rafter-sim --bench capacity",
        "pods": pods, "nodes": nodes, "writers": writers, "watchers": 3, "runs": runs,
        "median": {
            "writes_per_second": median(|r| r.writes_per_second),
            "request_p50_ms": median(|r| r.request_p50_ms),
            "request_p99_ms": median(|r| r.request_p99_ms),
            "watch_lag_p50_ms": median(|r| r.watch_lag_p50_ms),
            "watch_lag_p99_ms": median(|r| r.watch_lag_p99_ms),
            "watch_lag_max_ms": median(|r| r.watch_lag_max_ms),
        },
        "store_only_creates_per_second": store,
        "runs_detail": results,
    });
    let text = serde_json::to_string_pretty(&out).expect("json");
    println!("{text}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(path, &text).expect("write BENCH_OUT");
    }
}
