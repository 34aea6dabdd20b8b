//! One batch is one trace: `provision` → `solve`, `provision` → `launch` (per claim) → `register`,
//! exported over OTLP/HTTP to an in-process receiver.

use rafter_e2e as common;

use std::time::Duration;

use common::{export_spans, receiver};
use opentelemetry_proto::tonic::trace::v1::Span;
use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_trace_from_provision_through_solve_and_launch_to_register() {
    let (url, spans) = receiver().await;
    let provider = export_spans(&url);

    let world = World::start(WorldConfig::default()).await.expect("world");
    world.apply(NODEPOOL_DEFAULT).await.expect("pool");
    world.apply(INFLATE).await.expect("inflate");
    let replica = world.replica(world.quick_config("rafter-t")).await.expect("replica");
    world.wait_for("leads", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    world.scale(20).await.expect("scaled");
    world
        .wait_for("running", Duration::from_secs(30), || async { Ok(world.running().await? == 20) })
        .await
        .expect("runs");
    let registered = replica
        .ctx
        .timeline
        .marks()
        .iter()
        .filter(|(_, m)| matches!(m, rafter_actors::timeline::Mark::Registered { .. }))
        .count();
    assert!(registered >= 1);
    let _ = provider.force_flush();
    world
        .wait_for("spans", Duration::from_secs(10), || {
            let spans = spans.clone();
            async move { Ok(spans.lock().expect("lock").iter().any(|s| s.name == "register")) }
        })
        .await
        .expect("spans exported");

    let spans = spans.lock().expect("lock").clone();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).cloned().collect::<Vec<_>>();
    let provision = named("provision")
        .into_iter()
        .find(|p| spans.iter().any(|s| s.name == "launch" && s.parent_span_id == p.span_id));
    let provision = provision.expect("a provision span with launches");
    assert!(provision.parent_span_id.is_empty(), "provision is the root of its trace");
    let solve =
        named("solve").into_iter().find(|s| s.parent_span_id == provision.span_id).expect("solve under provision");
    assert_eq!(solve.trace_id, provision.trace_id);
    let launches: Vec<Span> = named("launch").into_iter().filter(|s| s.parent_span_id == provision.span_id).collect();
    assert!(!launches.is_empty());
    for launch in &launches {
        assert_eq!(launch.trace_id, provision.trace_id, "each launch is in the batch's trace");
        let cloud = spans.iter().find(|s| s.name == "cloud.create" && s.parent_span_id == launch.span_id);
        assert!(cloud.is_some(), "the cloud call is under its launch");
    }
    let registers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "register" && launches.iter().any(|l| l.span_id == s.parent_span_id))
        .collect();
    assert_eq!(registers.len(), launches.len(), "every launch ends in a register span of the same trace");
    assert!(registers.iter().all(|r| r.trace_id == provision.trace_id));
    replica.shutdown().await;
    let _ = provider.shutdown();
}
