//! A consolidation is one trace: `disrupt` → `taint`, `replace` (→ `launch` → `cloud.create`),
//! `drain` (→ one `evict` per pod) and `terminate`, exported over OTLP/HTTP.

use std::time::Duration;

use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};
use rafter_e2e as common;
use rafter_e2e::{export_spans, receiver};

/// The example's node class and an on-demand m5 pool of these sizes.
fn manifests(sizes: &str) -> String {
    let class = NODEPOOL_DEFAULT.split("\n---\n").nth(1).expect("node class");
    let pool = NODEPOOL_DEFAULT
        .split("\n---\n")
        .next()
        .expect("pool")
        .replace(r#"values: ["spot", "on-demand"]"#, r#"values: ["on-demand"]"#)
        .replace(r#"values: ["c", "m", "r"]"#, r#"values: ["m"]"#)
        .replace(
            "        - key: karpenter.k8s.aws/instance-generation\n          operator: Gt\n          values: [\"4\"]",
            &format!(
                "        - key: node.kubernetes.io/instance-type\n          operator: In\n          values: [{sizes}]"
            ),
        )
        .replace(r#"      - nodes: "10%""#, r#"      - nodes: "100%""#);
    assert!(pool.contains("m5.2xlarge"), "{pool}");
    format!("{pool}\n---\n{class}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_consolidation_is_one_trace_from_decision_through_launch_taint_and_drain_to_termination() {
    let (url, spans) = receiver().await;
    let provider = export_spans(&url);
    let world = World::start(WorldConfig::default()).await.expect("world");
    world.apply(&manifests(r#""m5.2xlarge""#)).await.expect("pool");
    world.apply(INFLATE).await.expect("inflate");
    let replica = world.replica(world.quick_config("rafter-0")).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    world.scale(5).await.expect("scaled");
    world
        .wait_for("5 pods running", Duration::from_secs(60), || async { Ok(world.running().await? == 5) })
        .await
        .expect("run");
    let old = world.claims().await.expect("claims")[0].metadata.name.clone().expect("name");
    // A smaller type becomes allowed: the m5.2xlarge is replaced by an m5.large.
    world.apply(&manifests(r#""m5.2xlarge", "m5.large""#)).await.expect("pool widened");
    let started = tokio::time::Instant::now();
    loop {
        let claims = world.claims().await.expect("claims");
        if claims.len() == 1
            && claims[0].metadata.name.as_deref() != Some(old.as_str())
            && world.running().await.expect("pods") == 5
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the m5.2xlarge was never replaced");
        world.clock.advance(Duration::from_secs(61));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let spans = common::exported_spans(&world, &provider, &spans, "terminate").await;
    let root = spans
        .iter()
        .find(|s| s.name == "disrupt" && common::attr(s, "decision").is_some_and(|d| d.contains("replace")))
        .expect("a disrupt span for the replacement");
    assert!(root.parent_span_id.is_empty(), "disrupt is the root of its trace");
    assert!(common::attr(root, "reason").is_some_and(|r| r.contains("Underutilized")), "{:?}", root.attributes);
    let child = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id == root.span_id)
            .unwrap_or_else(|| panic!("{name} under disrupt"))
    };
    let (taint, replace, drain, terminate) = (child("taint"), child("replace"), child("drain"), child("terminate"));
    // In order: the taint, the replacement, then (once it is initialized) the drain and termination.
    assert!(taint.end_time_unix_nano <= replace.start_time_unix_nano);
    assert!(replace.start_time_unix_nano <= drain.start_time_unix_nano);
    assert!(drain.end_time_unix_nano <= terminate.start_time_unix_nano);
    let launch =
        spans.iter().find(|s| s.name == "launch" && s.parent_span_id == replace.span_id).expect("launch under replace");
    assert!(spans.iter().any(|s| s.name == "cloud.create" && s.parent_span_id == launch.span_id));
    let evictions = spans.iter().filter(|s| s.name == "evict" && s.parent_span_id == drain.span_id).count();
    assert_eq!(evictions, 5, "each of the node's pods is evicted under the drain");
    replica.shutdown().await;
    let _ = provider.shutdown();
}
