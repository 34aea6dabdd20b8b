//! The seed scenario on the simulator and the fake cloud: 100 inflate pods get the cheapest nodes
//! that fit and run; scaled to 0, the nodes go once `consolidateAfter` has passed (v1 NodePool and
//! legacy Provisioner alike).

use std::time::Duration;

use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, PROVISIONER_SPOT_DEFAULT, World, WorldConfig};

async fn scale_up_run_and_scale_down(pool_manifest: &str, consolidate_after: Duration) {
    let world = World::start(WorldConfig::default()).await.expect("world");
    world.apply(pool_manifest).await.expect("pool applied");
    world.apply(INFLATE).await.expect("inflate applied");
    let replica = world.replica(world.quick_config("rafter-0")).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");

    world.scale(100).await.expect("scaled");
    world
        .wait_for("100 pods running", Duration::from_secs(60), || async { Ok(world.running().await? == 100) })
        .await
        .expect("all pods run");
    let instances = world.cloud.running();
    let nodes = world.nodes().await.expect("nodes");
    assert_eq!(instances.len(), nodes.len(), "one node per instance");
    assert_eq!(world.cloud.create_calls() as usize, instances.len(), "no instance was bought twice");
    let claims = world.claims().await.expect("claims");
    assert_eq!(claims.len(), instances.len());
    for claim in &claims {
        assert!(claim.metadata.finalizers.iter().flatten().any(|f| f == "karpenter.sh/termination"));
        let status = claim.status.as_ref().expect("status");
        for condition in ["Launched", "Registered", "Initialized"] {
            assert!(
                status.conditions.iter().any(|c| c.type_ == condition && c.status == "True"),
                "{condition}: {status:?}"
            );
        }
    }
    for node in &nodes {
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        assert!(!taints.iter().any(|t| t.key == "karpenter.sh/unregistered"), "registration lifts the taint");
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("karpenter.sh/registered").map(String::as_str), Some("true"));
        assert!(node.metadata.owner_references.iter().flatten().any(|o| o.kind == "NodeClaim"));
    }
    // The plan is the solver's cheapest: what was bought costs what the plan priced.
    let planned = replica
        .ctx
        .timeline
        .first(|m| matches!(m, rafter_actors::timeline::Mark::Solved { claims, .. } if *claims > 0))
        .expect("a plan");
    if let (_, rafter_actors::timeline::Mark::Solved { price, .. }) = planned {
        let bought: f64 = instances.iter().map(|i| i.price).sum();
        assert!((bought - price).abs() < 1e-6, "bought ${bought}/h, planned ${price}/h");
    }

    world.scale(0).await.expect("scaled down");
    world
        .wait_for("pods gone", Duration::from_secs(30), || async { Ok(world.pods().await?.is_empty()) })
        .await
        .expect("pods gone");
    // Let the disrupter see the nodes empty, then let `consolidateAfter` pass on Rafter's clock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = world.nodes().await.expect("nodes").len();
    assert_eq!(early, instances.len(), "nothing is removed before consolidateAfter");
    world.clock.advance(consolidate_after);
    world
        .wait_for("nodes gone", Duration::from_secs(30), || async {
            Ok(world.nodes().await?.is_empty() && world.cloud.running().is_empty() && world.claims().await?.is_empty())
        })
        .await
        .expect("nodes, instances and claims are gone");
    // The claim disappears when its finalizer is removed, a moment before Rafter counts it.
    let counted = format!("rafter_nodeclaims_terminated_total {}", instances.len());
    let settled = world
        .wait_for("terminations counted", Duration::from_secs(5), || async {
            Ok(replica.ctx.metrics.encode().contains(&counted))
        })
        .await;
    assert!(settled.is_ok(), "{}", replica.ctx.metrics.encode());
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflate_scaled_to_100_runs_on_the_cheapest_nodes_and_empty_nodes_go_after_consolidate_after() {
    scale_up_run_and_scale_down(NODEPOOL_DEFAULT, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_provisioner_with_ttl_seconds_after_empty_30_provisions_and_removes_empty_nodes() {
    scale_up_run_and_scale_down(PROVISIONER_SPOT_DEFAULT, Duration::from_secs(30)).await;
}
