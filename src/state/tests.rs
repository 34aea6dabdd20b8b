use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::scheduling::catalog::us_east_1;
use crate::scheduling::instance_types::KubeletSettings;
use crate::scheduling::solver::solve;

fn pending_pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "pause", "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}}}]},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
    }))
    .expect("pod")
}

fn pool() -> NodePool {
    serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {
            "requirements": [{"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m"]}],
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}},
            "limits": {"cpu": "100"}}
    }))
    .expect("pool")
}

/// Every catalog type, spot at 40% of on-demand (shared with other modules' tests).
pub(crate) fn types(_: &NodePool) -> Vec<InstanceType> {
    us_east_1()
        .expect("catalog")
        .iter()
        .map(|s| InstanceType::new(s, &KubeletSettings::default(), |_| Some(s.on_demand_price * 0.4)))
        .collect()
}

#[test]
fn only_unschedulable_unbound_workload_pods_are_provisionable() {
    let p = pending_pod("a", "1");
    assert!(provisionable(&p));
    let mut bound = p.clone();
    bound.spec.as_mut().expect("spec").node_name = Some("n".into());
    assert!(!provisionable(&bound));
    let mut fresh = p.clone();
    fresh.status = None;
    assert!(!provisionable(&fresh), "the scheduler has not looked at it yet");
    let mut ds = p.clone();
    ds.metadata.owner_references = Some(vec![
        serde_json::from_value(
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}),
        )
        .expect("owner"),
    ]);
    assert!(!provisionable(&ds));
    let mut mirror = p.clone();
    mirror.metadata.annotations = Some([(MIRROR_ANNOTATION.to_string(), "x".to_string())].into());
    assert!(!provisionable(&mirror));
    let mut done = p;
    done.status.as_mut().expect("status").phase = Some("Failed".into());
    assert!(!provisionable(&done));
}

#[test]
fn pods_covered_by_in_flight_claims_buy_nothing_new() {
    let pods: Vec<Pod> = (0..10).map(|i| pending_pod(&format!("p{i}"), "500m")).collect();
    let pools = [pool()];
    let empty = Snapshot { pods: &[], nodes: &[], claims: &[], pools: &pools, ..Snapshot::default() };
    let (input, problems) = scheduling_input(empty, pods.clone(), types);
    assert!(problems.is_empty());
    let plan = solve(&input);
    assert!(!plan.claims.is_empty());

    // The claims the first plan asked for are now in flight, each launched as its cheapest type.
    let claims: Vec<Arc<NodeClaim>> = plan
        .claims
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let claim: NodeClaim = serde_json::from_value(json!({
                "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
                "metadata": {"name": format!("default-{i}"), "labels": {"karpenter.sh/nodepool": "default", "node.kubernetes.io/instance-type": c.instance_types[0].name}},
                "spec": {"requirements": c.requirements, "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}},
            }))
            .expect("claim");
            Arc::new(claim)
        })
        .collect();
    let snapshot = Snapshot { pods: &[], nodes: &[], claims: &claims, pools: &pools, ..Snapshot::default() };
    let (input, _) = scheduling_input(snapshot, pods, types);
    let again = solve(&input);
    assert!(again.claims.is_empty(), "{again:?}");
    assert_eq!(again.placements.len(), 10);
    assert!(again.placements.iter().all(|p| p.node.starts_with("default-")));
}

#[test]
fn a_registered_node_counts_against_the_pool_limit_and_offers_its_free_room() {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "ip-10-0-0-1.ec2.internal", "labels": {"karpenter.sh/nodepool": "default", "kubernetes.io/arch": "amd64"}},
        "spec": {"providerID": "aws:///us-east-1a/i-1", "taints": [{"key": "karpenter.sh/unregistered", "effect": "NoExecute"}]},
        "status": {"capacity": {"cpu": "97", "memory": "192Gi", "pods": "110"}, "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
    }))
    .expect("node");
    let mut running = pending_pod("running", "3");
    running.spec.as_mut().expect("spec").node_name = Some("ip-10-0-0-1.ec2.internal".into());
    let nodes = [Arc::new(node)];
    let bound = [Arc::new(running)];
    let pools = [pool()];
    let snapshot = Snapshot { pods: &bound, nodes: &nodes, claims: &[], pools: &pools, ..Snapshot::default() };
    let (input, _) = scheduling_input(snapshot, vec![pending_pod("small", "500m"), pending_pod("big", "2")], types);
    assert_eq!(input.nodes.len(), 1);
    assert_eq!(input.nodes[0].available.cpu, 1000);
    assert!(input.nodes[0].taints.is_empty(), "the unregistered taint is lifted by the launcher");
    assert_eq!(input.pools[0].limits[0].remaining, 3000, "100 cpu limit minus the node's 97");
    let plan = solve(&input);
    assert_eq!(plan.placements.len(), 1, "{plan:?}");
    assert_eq!(plan.unplaced.len(), 1, "the 2-cpu pod exceeds what the limit leaves: {plan:?}");
}

fn claim_with_node(initialized: bool) -> NodeClaim {
    let conditions = if initialized {
        json!([{"type": "Initialized", "status": "True", "reason": "Initialized", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    } else {
        json!([{"type": "Registered", "status": "True", "reason": "Registered", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    };
    serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": "default-abc", "labels": {"karpenter.sh/nodepool": "default"}},
        "spec": {
            "requirements": [], "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
            "startupTaints": [{"key": "example.com/agent-not-ready", "effect": "NoSchedule"}]
        },
        "status": {"providerID": "aws:///us-east-1a/i-1", "nodeName": "n1",
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": "1"}, "conditions": conditions}
    }))
    .expect("claim")
}

fn coming_up_node(ready: bool, taints: serde_json::Value, gpus: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": "n1", "labels": {"karpenter.sh/nodepool": "default", "kubernetes.io/arch": "amd64"}},
        "spec": {"providerID": "aws:///us-east-1a/i-1", "taints": taints},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": gpus},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110", "nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
        }
    }))
    .expect("node")
}

#[test]
fn a_node_initializes_only_once_ready_untainted_and_with_its_extended_resources() {
    let claim = claim_with_node(false);
    let not_ready = json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]);
    let startup = json!([{"key": "example.com/agent-not-ready", "effect": "NoSchedule"}]);
    let cases = [
        (coming_up_node(false, json!([]), "1"), Some("the node is not Ready")),
        (
            coming_up_node(true, not_ready, "1"),
            Some("the node still has the taint node.kubernetes.io/not-ready:NoSchedule"),
        ),
        (
            coming_up_node(true, startup, "1"),
            Some("the node still has the taint example.com/agent-not-ready:NoSchedule"),
        ),
        (coming_up_node(true, json!([]), "0"), Some("the node has not registered nvidia.com/gpu")),
        (coming_up_node(true, json!([{"key": "team", "value": "a", "effect": "NoSchedule"}]), "1"), None),
    ];
    for (node, want) in cases {
        assert_eq!(not_initialized(&claim, &node).as_deref(), want);
    }
}

#[test]
fn pods_waiting_for_a_node_that_is_coming_up_buy_nothing_new() {
    let taints = json!([
        {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
        {"key": "example.com/agent-not-ready", "effect": "NoSchedule"}
    ]);
    let nodes = [Arc::new(coming_up_node(false, taints.clone(), "1"))];
    let pools = [pool()];
    let pods = vec![pending_pod("a", "1"), pending_pod("b", "1")];
    for (initialized, buys) in [(false, false), (true, true)] {
        let claims = [Arc::new(claim_with_node(initialized))];
        let snapshot = Snapshot { pods: &[], nodes: &nodes, claims: &claims, pools: &pools, ..Snapshot::default() };
        let (input, _) = scheduling_input(snapshot, pods.clone(), types);
        let plan = solve(&input);
        if buys {
            // Once initialized, a taint that stays is the node's own: pods that do not tolerate it go elsewhere.
            assert!(!plan.claims.is_empty(), "{plan:?}");
        } else {
            assert!(plan.claims.is_empty(), "{plan:?}");
            assert_eq!(plan.placements.len(), 2, "{plan:?}");
            assert!(!input.nodes[0].initialized);
        }
    }
}

#[test]
fn the_solver_input_carries_the_zones_pending_pods_volumes_allow() {
    let mut pod = pending_pod("db-0", "1");
    pod.spec.as_mut().expect("spec").volumes = Some(vec![
        serde_json::from_value(json!({"name": "data", "persistentVolumeClaim": {"claimName": "data"}}))
            .expect("volume"),
    ]);
    let claims = [Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": "data", "namespace": "default"}, "spec": {"volumeName": "pv-1"}}),
        )
        .expect("pvc"),
    )];
    let volumes = [Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": "pv-1", "labels": {"topology.kubernetes.io/zone": "us-east-1b"}}, "spec": {}}),
        )
        .expect("pv"),
    )];
    let pools = [pool()];
    let storage = volumes::Storage { claims: &claims, volumes: &volumes, classes: &[] };
    let snapshot = Snapshot { pools: &pools, storage, ..Snapshot::default() };
    let (input, _) = scheduling_input(snapshot, vec![pod], types);
    assert_eq!(input.volume_zones.get("default/db-0"), Some(&vec!["us-east-1b".to_string()]));
    let plan = solve(&input);
    let zone = plan.claims[0]
        .requirements
        .iter()
        .find(|r| r.key == "topology.kubernetes.io/zone")
        .expect("a zone requirement");
    assert_eq!(zone.values, ["us-east-1b"]);
}
