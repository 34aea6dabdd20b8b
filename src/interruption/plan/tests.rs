use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::api::NodePool;
use crate::state::tests::types;

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/events").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn decide_example(name: &str, policy: RebalancePolicy) -> Decision {
    let message = Message::parse(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    decide(&message, policy).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn act(d: Decision) -> Notice {
    match d {
        Decision::Act(n) => n,
        Decision::Ignore { why, .. } => panic!("ignored: {why}"),
    }
}

#[test]
fn each_example_event_decides_its_action_affected_instances_and_deadline() {
    // (file, kind, action, instances, deadline)
    type Row = (&'static str, Kind, Action, &'static [&'static str], Option<&'static str>);
    let table: [Row; 5] = [
        (
            "spot-interruption.json",
            Kind::SpotInterruption,
            Action::Replace,
            &["i-0b662ef9931388ba0"],
            Some("1970-01-01T00:02:00Z"),
        ),
        (
            "capacity-reservation-interruption.json",
            Kind::CapacityReservationInterruption,
            Action::Replace,
            &["i-0c2f1e7b95a3d4e61"],
            Some("2025-11-20T10:02:00Z"),
        ),
        (
            "rebalance-recommendation.json",
            Kind::RebalanceRecommendation,
            Action::Replace,
            &["i-0b662ef9931388ba0"],
            None,
        ),
        ("state-change.json", Kind::StateChange, Action::Remove, &["i-abcd1111"], Some("2015-11-11T21:29:54Z")),
        (
            "scheduled-change.json",
            Kind::ScheduledChange,
            Action::Replace,
            &["i-12345678"],
            Some("2016-06-05T15:10:09Z"),
        ),
    ];
    for (file, kind, action, instances, deadline) in table {
        let n = act(decide_example(file, RebalancePolicy::Replace));
        assert_eq!(n.kind, kind, "{file}");
        assert_eq!(n.action, action, "{file}");
        assert_eq!(n.instances, instances.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{file}");
        assert_eq!(n.deadline, deadline.map(ts), "{file}");
        assert_eq!(n.exhausts_spot_offering(), kind == Kind::SpotInterruption, "{file}");
    }
}

#[test]
fn variants_that_are_not_acted_on_are_ignored_with_their_kind() {
    let ignored = |body: String, policy| match decide(&Message::parse(&body).expect("parses"), policy).expect("decides")
    {
        Decision::Ignore { kind, why } => (kind, why),
        Decision::Act(n) => panic!("acted on {n:?}"),
    };
    let (kind, why) = ignored(example("rebalance-recommendation.json"), RebalancePolicy::Ignore);
    assert_eq!((kind, why.as_str()), (Kind::RebalanceRecommendation, "the rebalance policy is `ignore`"));
    for state in ["pending", "running"] {
        let body = example("state-change.json").replace("shutting-down", state);
        assert_eq!(ignored(body, RebalancePolicy::Replace).0, Kind::StateChange, "{state}");
    }
    for state in ["stopping", "stopped", "terminated"] {
        let body = example("state-change.json").replace("shutting-down", state);
        let n = act(decide(&Message::parse(&body).expect("parses"), RebalancePolicy::Replace).expect("decides"));
        assert_eq!(n.action, Action::Remove, "{state}");
    }
    let issue = example("scheduled-change.json").replace("scheduledChange", "issue");
    assert_eq!(ignored(issue, RebalancePolicy::Replace).0, Kind::Unknown);
    let rds = example("scheduled-change.json").replace("\"service\":\"EC2\"", "\"service\":\"RDS\"");
    assert_eq!(ignored(rds, RebalancePolicy::Replace).0, Kind::Unknown);
    let no_instance =
        example("scheduled-change.json").replace("\"entityValue\":\"i-12345678\"", "\"entityValue\":\"vol-1\"");
    assert_eq!(ignored(no_instance, RebalancePolicy::Replace).0, Kind::ScheduledChange);
    let other = example("state-change.json").replace("EC2 Instance State-change Notification", "EC2 AMI State Change");
    assert_eq!(ignored(other, RebalancePolicy::Replace).0, Kind::Unknown);
}

#[test]
fn a_health_event_acts_on_every_affected_instance() {
    let body = example("scheduled-change.json").replace(
        "\"affectedEntities\":[{\"entityValue\":\"i-12345678\"",
        "\"affectedEntities\":[{\"entityValue\":\"i-0aaa\"},{\"entityValue\":\"i-0bbb\"},{\"entityValue\":\"i-12345678\"",
    );
    let n = act(decide(&Message::parse(&body).expect("parses"), RebalancePolicy::Replace).expect("decides"));
    assert_eq!(n.instances, ["i-0aaa", "i-0bbb", "i-12345678"]);
}

#[test]
fn unreadable_times_are_errors_naming_the_event_and_field() {
    let body = example("spot-interruption.json").replace("1970-01-01T00:00:00Z", "yesterday");
    let err = decide(&Message::parse(&body).expect("parses"), RebalancePolicy::Replace).expect_err("bad time");
    assert!(
        err.to_string().contains("1e5527d7-bb36-4607-3370-4164db56a40e")
            && err.to_string().contains("time `yesterday`"),
        "{err}"
    );
    let body = example("scheduled-change.json").replace("Sat, 05 Jun 2016 15:10:09 GMT", "soon");
    let err = decide(&Message::parse(&body).expect("parses"), RebalancePolicy::Replace).expect_err("bad start");
    assert!(err.to_string().contains("detail.startTime `soon`"), "{err}");
}

fn record(id: &str, action: Action, received: &str, deadline: Option<&str>) -> Record {
    Record {
        kind: Kind::SpotInterruption,
        action,
        event_id: id.into(),
        event_time: ts("2026-01-01T00:00:00Z"),
        received_at: ts(received),
        deadline: deadline.map(ts),
    }
}

#[test]
fn merging_keeps_one_record_per_claim_and_lets_only_a_more_urgent_notice_through() {
    let first = record("a", Action::Replace, "2026-01-01T00:00:01Z", Some("2026-01-01T00:02:00Z"));
    assert_eq!(merge(None, first.clone()), Merge::Write(first.clone()));
    // The same event delivered again.
    assert_eq!(merge(Some(&first), first.clone()), Merge::Duplicate);
    // Another event, no more urgent (a rebalance after the spot warning; a later deadline).
    assert_eq!(merge(Some(&first), record("b", Action::Replace, "2026-01-01T00:00:02Z", None)), Merge::Duplicate);
    assert_eq!(
        merge(Some(&first), record("c", Action::Replace, "2026-01-01T00:00:02Z", Some("2026-01-01T00:05:00Z"))),
        Merge::Duplicate
    );
    // A rebalance first, then the spot warning: the deadline arrives, the first receipt is kept.
    let rebalance = record("r", Action::Replace, "2026-01-01T00:00:00Z", None);
    let Merge::Write(merged) = merge(Some(&rebalance), first.clone()) else { panic!("the deadline is news") };
    assert_eq!(
        (merged.event_id.as_str(), merged.deadline, merged.received_at),
        ("a", first.deadline, rebalance.received_at)
    );
    // The instance stopped: removal wins over any replacement, and nothing wins over removal.
    let removed = record("s", Action::Remove, "2026-01-01T00:00:03Z", Some("2026-01-01T00:00:03Z"));
    assert!(matches!(merge(Some(&first), removed.clone()), Merge::Write(r) if r.action == Action::Remove));
    assert_eq!(merge(Some(&removed), first), Merge::Duplicate);
}

#[test]
fn records_round_trip_through_the_annotation() {
    let r = record("a", Action::Replace, "2026-01-01T00:00:01Z", Some("2026-01-01T00:02:00Z"));
    let annotations = [(ANNOTATION.to_string(), r.encode())].into();
    assert_eq!(Record::of(Some(&annotations)), Some(r));
    let garbage = [(ANNOTATION.to_string(), "{".to_string())].into();
    assert_eq!(Record::of(Some(&garbage)), None);
}

fn pod(name: &str, node: Option<&str>, grace: Option<i64>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "inflate"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": grace,
                 "containers": [{"name": "c", "image": "pause", "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]},
        "status": {"phase": "Running"}
    }))
    .expect("pod")
}

#[test]
fn the_drain_is_planned_so_every_grace_period_ends_before_the_deadline() {
    let deadline = ts("2026-01-01T00:02:00Z");
    let (slow, quick, default) = (pod("slow", None, Some(60)), pod("quick", None, Some(0)), pod("d", None, None));
    // 60 s of grace and the 10 s margin: start by 00:00:50 at the latest.
    assert_eq!(latest_drain_start(deadline, &[&quick, &slow, &default]), ts("2026-01-01T00:00:50Z"));
    assert_eq!(latest_drain_start(deadline, &[&quick]), ts("2026-01-01T00:01:50Z"));
    // Early on, pods keep their own grace; later it is cut to what is left before the margin.
    assert_eq!(eviction_grace(&default, ts("2026-01-01T00:00:05Z"), Some(deadline)), None);
    assert_eq!(eviction_grace(&slow, ts("2026-01-01T00:01:00Z"), Some(deadline)), Some(50));
    assert_eq!(eviction_grace(&default, ts("2026-01-01T00:01:55Z"), Some(deadline)), Some(0));
    assert_eq!(eviction_grace(&slow, ts("2026-01-01T00:00:00Z"), None), None);
    // A budget is waited for only while the pod's grace still fits.
    assert!(!must_delete_now(&default, ts("2026-01-01T00:01:19Z"), Some(deadline)));
    assert!(must_delete_now(&default, ts("2026-01-01T00:01:20Z"), Some(deadline)));
    assert!(!must_delete_now(&quick, ts("2026-01-01T00:01:49Z"), Some(deadline)));
    assert!(must_delete_now(&quick, ts("2026-01-01T00:01:50Z"), Some(deadline)));
    assert!(!must_delete_now(&slow, ts("2030-01-01T00:00:00Z"), None), "no deadline, no hurry");
}

fn node(name: &str, ready: bool, taints: serde_json::Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": "default", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": "us-east-1a", "node.kubernetes.io/instance-type": "m5.xlarge",
            "karpenter.sh/capacity-type": "spot", "kubernetes.io/os": "linux"}},
        "spec": {"providerID": format!("aws:///us-east-1a/{name}"), "taints": taints},
        "status": {"allocatable": {"cpu": "3920m", "memory": "14Gi", "pods": "58"},
                   "capacity": {"cpu": "4", "memory": "16Gi", "pods": "58"},
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .expect("node")
}

fn claim_of(node: &str) -> NodeClaim {
    serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": format!("claim-{node}"), "labels": {"karpenter.sh/nodepool": "default"}},
        "spec": {"requirements": [], "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}},
        "status": {"providerID": format!("aws:///us-east-1a/{node}"), "allocatable": {"cpu": "3920m", "memory": "14Gi", "pods": "58"}}
    }))
    .expect("claim")
}

fn pool() -> NodePool {
    serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {
            "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.xlarge"]}],
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}}}
    }))
    .expect("pool")
}

#[test]
fn a_replacement_is_planned_for_the_nodes_pods_and_ready_only_once_a_ready_node_takes_them() {
    let mut pods: Vec<Arc<Pod>> = (0..6).map(|i| Arc::new(pod(&format!("p{i}"), Some("old"), None))).collect();
    let mut on_other = pod("elsewhere", Some("other"), None);
    on_other.spec.as_mut().expect("spec").containers[0].resources =
        serde_json::from_value(json!({"requests": {"cpu": "3500m"}})).ok();
    pods.push(Arc::new(on_other));
    let nodes = vec![Arc::new(node("old", true, json!([]))), Arc::new(node("other", true, json!([])))];
    let claims = vec![Arc::new(claim_of("old")), Arc::new(claim_of("other"))];
    let pools = vec![pool()];
    let snapshot = Snapshot { pods: &pods, nodes: &nodes, claims: &claims, pools: &pools, ..Snapshot::default() };
    assert_eq!(evacuees(&pods, "old").len(), 6);

    // "other" is nearly full and "old" (and its own claim) cannot count: one new m5.xlarge.
    let plan = replacement(snapshot, "old", types);
    assert_eq!(plan.claims.len(), 1, "{plan:?}");
    assert_eq!(plan.claims[0].pods.len(), 6);
    let unplaceable = unplaceable(&plan);
    assert!(!replacement_ready(snapshot, "old", &unplaceable), "no ready node has room yet");

    // The replacement's node registered but is not Ready yet: still not ready.
    let mut with_new = nodes.clone();
    with_new.push(Arc::new(node("new", false, json!([]))));
    let s = Snapshot { nodes: &with_new, ..snapshot };
    assert!(!replacement_ready(s, "old", &unplaceable));
    // An in-flight claim counts for planning (nothing is bought twice) but not for readiness.
    let mut in_flight = claims.clone();
    let mut pending_claim = claim_of("pending");
    pending_claim.status.as_mut().expect("status").provider_id = None;
    in_flight.push(Arc::new(pending_claim));
    let s = Snapshot { claims: &in_flight, ..snapshot };
    assert!(replacement(s, "old", types).claims.is_empty(), "the claim in flight already covers the pods");
    assert!(!replacement_ready(s, "old", &unplaceable));

    // Ready, but still tainted as unregistered or disrupted: not capacity.
    for key in [labels::UNREGISTERED_TAINT_KEY, labels::DISRUPTED_TAINT_KEY] {
        let mut tainted = nodes.clone();
        tainted.push(Arc::new(node("new", true, json!([{"key": key, "effect": "NoSchedule"}]))));
        assert!(!replacement_ready(Snapshot { nodes: &tainted, ..snapshot }, "old", &unplaceable), "{key}");
    }
    // Ready and registered: the drain may start.
    let mut ready = nodes.clone();
    ready.push(Arc::new(node("new", true, json!([]))));
    let s = Snapshot { nodes: &ready, ..snapshot };
    assert!(replacement_ready(s, "old", &unplaceable));
    assert!(replacement(s, "old", types).claims.is_empty(), "nothing more to buy");
    // A node without pods to move is ready at once and needs nothing.
    let empty = Snapshot { pods: &[], ..snapshot };
    assert!(replacement_ready(empty, "old", &HashSet::new()));
    assert!(replacement(empty, "old", types).claims.is_empty());
}

/// A pod the scheduler could not place, waiting for capacity the provisioner buys.
fn waiting(name: &str) -> Pod {
    let mut p = pod(name, None, None);
    p.status = serde_json::from_value(json!({"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}))
    .ok();
    p
}

#[test]
fn room_that_pods_already_waiting_will_take_is_neither_planned_on_nor_counted_as_ready() {
    // The node's 6 pods, and 6 pods of another node waiting for capacity: each side fills most of
    // an m5.xlarge (7 pods of 500m fit), both together do not.
    let pods: Vec<Arc<Pod>> = (0..6)
        .map(|i| Arc::new(pod(&format!("p{i}"), Some("old"), None)))
        .chain((0..6).map(|i| Arc::new(waiting(&format!("w{i}")))))
        .collect();
    let nodes = vec![Arc::new(node("old", true, json!([])))];
    let mut claims = vec![Arc::new(claim_of("old"))];
    let mut in_flight = claim_of("bought-for-waiting");
    in_flight.status.as_mut().expect("status").provider_id = None;
    claims.push(Arc::new(in_flight));
    let pools = vec![pool()];
    let alone = Snapshot { pods: &pods[..6], nodes: &nodes, claims: &claims, pools: &pools, ..Snapshot::default() };
    assert!(replacement(alone, "old", types).claims.is_empty(), "with nobody waiting the claim in flight has room");

    let s = Snapshot { pods: &pods, ..alone };
    let plan = replacement(s, "old", types);
    // The claim in flight is the waiting pods', but for one slot; a new claim takes the other five.
    assert_eq!(plan.claims.len(), 1, "{plan:?}");
    assert_eq!(plan.claims[0].pods.len(), 5, "{plan:?}");
    assert_eq!(plan.placements.len(), 1, "{plan:?}");
    assert_eq!(plan.placements[0].node, "claim-bought-for-waiting");
    assert!(plan.placements[0].pod.starts_with("default/p"), "{plan:?}");

    // The same for readiness: a Ready node the waiting pods will fill does not take the node's pods.
    let mut ready = nodes.clone();
    ready.push(Arc::new(node("new", true, json!([]))));
    let unplaceable = unplaceable(&plan);
    assert!(replacement_ready(Snapshot { nodes: &ready, pods: &pods[..6], ..s }, "old", &unplaceable));
    assert!(!replacement_ready(Snapshot { nodes: &ready, ..s }, "old", &unplaceable));
}
