//! Faults, through the HTTP admin endpoint and the in-process handle: injected errors, latency,
//! partitions, pause, dropped watches — and memory that stays flat across watch reconnects.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use rafter_sim::Simulator;
use rafter_sim::apiserver::{ErrorRule, FaultSpec, Partition, PartitionMode};
use serde_json::json;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).expect("config map")
}

async fn admin(sim: &Simulator, path: &str, body: serde_json::Value) -> serde_json::Value {
    let request = http::Request::post(format!("/_sim/{path}"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .expect("request");
    sim.client().request(request).await.expect("admin endpoint answers")
}

fn code(result: Result<ConfigMap, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(other) => panic!("expected an HTTP answer, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_follow_the_seed_and_spare_other_verbs() {
    let sim = Simulator::start().await.expect("simulator");
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let spec = json!({"seed": 42, "errors": [{"verb": "create", "resource": "configmaps", "code": 503, "rate": 0.5}]});
    let mut runs = Vec::new();
    for run in 0..2 {
        admin(&sim, "faults", spec.clone()).await;
        let mut codes = Vec::new();
        for i in 0..40 {
            codes.push(code(api.create(&PostParams::default(), &config_map(&format!("r{run}-{i}"))).await));
        }
        runs.push(codes);
    }
    assert_eq!(runs[0], runs[1], "the same seed gives the same failures");
    let failures = runs[0].iter().filter(|c| **c == 503).count();
    assert!((8..=32).contains(&failures), "{failures} of 40 failed at rate 0.5");
    assert!(runs[0].iter().all(|c| *c == 201 || *c == 200 || *c == 503));
    assert!(api.list(&Default::default()).await.is_ok(), "lists are not affected");
    sim.faults().set(FaultSpec {
        errors: vec![ErrorRule { verb: None, resource: Some("configmaps".into()), code: 429, rate: 1.0 }],
        ..FaultSpec::default()
    });
    assert_eq!(code(api.get("r0-0").await), 429);
    sim.faults().clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_partitions_and_pause_hold_requests() {
    let sim = Simulator::start().await.expect("simulator");
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    api.create(&PostParams::default(), &config_map("c")).await.expect("created");

    sim.faults().set(FaultSpec { latency_ms: 300, ..FaultSpec::default() });
    let started = Instant::now();
    api.get("c").await.expect("slow but answered");
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.faults().clear();

    let replica = Api::<ConfigMap>::namespaced(sim.client_as("rafter/replica-1").expect("client"), "default");
    admin(&sim, "faults", json!({"partitions": [{"client": "replica-1", "mode": "refuse"}]})).await;
    assert!(
        matches!(replica.get("c").await, Err(kube::Error::HyperError(_) | kube::Error::Service(_))),
        "the partitioned client is cut off"
    );
    api.get("c").await.expect("other clients are served");

    sim.faults().set(FaultSpec {
        partitions: vec![Partition { client: "replica-1".into(), mode: PartitionMode::Hang }],
        ..FaultSpec::default()
    });
    let held = tokio::spawn(async move { replica.get("c").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a hanging partition holds the request");
    sim.faults().clear();
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released when the partition lifts")
        .expect("task")
        .expect("answered");

    admin(&sim, "pause", json!({})).await;
    let paused_api = api.clone();
    let paused = tokio::spawn(async move { paused_api.get("c").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!paused.is_finished(), "a paused server answers nothing");
    admin(&sim, "resume", json!({})).await;
    tokio::time::timeout(Duration::from_secs(5), paused)
        .await
        .expect("answered after resume")
        .expect("task")
        .expect("ok");
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_across_100_watch_reconnects() {
    let sim = Simulator::start().await.expect("simulator");
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    for i in 0..200 {
        api.create(&PostParams::default(), &config_map(&format!("c{i}"))).await.expect("created");
    }
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(
        reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .applied_objects()
            .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.expect("synced");
    let mut baseline = 0;
    for round in 0..100 {
        if round == 10 {
            baseline = rss_kib();
        }
        sim.faults().drop_watches();
        let name = format!("after-{round}");
        api.create(&PostParams::default(), &config_map(&name)).await.expect("created");
        let started = Instant::now();
        while reader.get(&kube::runtime::reflector::ObjectRef::new(&name).within("default")).is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "the watcher did not resume after drop {round}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let after = rss_kib();
    let watchers = sim.state().store.watcher_count();
    println!("rss after 10 reconnects: {baseline} KiB; after 100: {after} KiB; open watches: {watchers}");
    assert_eq!(watchers, 1, "every dropped watch was released; only the live one remains");
    assert_eq!(reader.len(), 300);
    assert!(
        after.saturating_sub(baseline) < 16 * 1024,
        "memory grew by {} KiB over 90 reconnects",
        after.saturating_sub(baseline)
    );
    task.abort();
}

/// An admin POST with no body at all, as `curl -X POST …/_sim/pause` sends it.
async fn admin_without_body(sim: &Simulator, path: &str) -> Result<serde_json::Value, kube::Error> {
    let request = http::Request::post(format!("/_sim/{path}")).body(Vec::new()).expect("request");
    sim.client().request(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_actions_need_no_body_and_latency_can_be_limited_to_writes() {
    let sim = Simulator::start().await.expect("simulator");
    for path in ["drop-watches", "pause", "resume"] {
        admin_without_body(&sim, path).await.unwrap_or_else(|e| panic!("POST /_sim/{path} without a body: {e}"));
    }
    let refused = admin_without_body(&sim, "faults").await.expect_err("setting faults needs a spec");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 400 && s.message.contains("POST a JSON body")),
        "{refused}"
    );

    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    api.create(&PostParams::default(), &config_map("c")).await.expect("created");
    admin(&sim, "faults", json!({"latencyMs": 400, "latencyVerbs": ["write"]})).await;
    let started = Instant::now();
    api.get("c").await.expect("read");
    assert!(started.elapsed() < Duration::from_millis(300), "reads are not slowed: {:?}", started.elapsed());
    let started = Instant::now();
    api.create(&PostParams::default(), &config_map("d")).await.expect("written");
    assert!(started.elapsed() >= Duration::from_millis(400), "writes are");
}
