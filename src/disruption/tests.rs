use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;

use super::*;
use crate::api::nodeclaim::NodeClaim;
use crate::scheduling::instance_types::InstanceType;
use crate::state::Snapshot;

const NOW: &str = "2026-12-01T12:00:00Z";

fn now() -> Timestamp {
    NOW.parse().expect("now")
}

/// A fixture cluster: nodes of named types (on-demand unless said), their claims, and their pods.
#[derive(Default)]
struct Cluster {
    nodes: Vec<Arc<Node>>,
    claims: Vec<Arc<NodeClaim>>,
    pods: Vec<Arc<Pod>>,
    pools: Vec<NodePool>,
    pdbs: Vec<Arc<PodDisruptionBudget>>,
}

fn types_by_pool(pools: &[NodePool]) -> HashMap<String, Vec<InstanceType>> {
    pools.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), crate::state::tests::types(p))).collect()
}

fn pool_with(disruption: serde_json::Value, extra_requirements: serde_json::Value) -> NodePool {
    let mut requirements =
        vec![json!({"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["m5"]})];
    requirements.extend(extra_requirements.as_array().cloned().unwrap_or_default());
    serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {"requirements": requirements,
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}},
            "disruption": disruption}
    }))
    .expect("pool")
}

fn on_demand() -> serde_json::Value {
    json!([{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}])
}

impl Cluster {
    fn new(pool: NodePool) -> Self {
        Cluster { pools: vec![pool], ..Cluster::default() }
    }

    /// Adds a node of `instance_type` (capacity type `capacity`) running `pods` pods of `cpu` each.
    fn node(&mut self, name: &str, instance_type: &str, capacity: &str, pods: usize, cpu: &str) -> &mut Self {
        let types = crate::state::tests::types(&self.pools[0]);
        let it = types.iter().find(|t| t.name == instance_type).expect("type in catalog");
        let (node, claim) = super::fixture::node_and_claim(name, it, "us-east-1a", capacity);
        self.nodes.push(Arc::new(node));
        self.claims.push(Arc::new(claim));
        for i in 0..pods {
            self.pods.push(Arc::new(pod(&format!("{name}-p{i}"), name, cpu)));
        }
        self
    }

    fn decide(&self, settings: Settings) -> Decision {
        let types = types_by_pool(&self.pools);
        let snapshot = Snapshot {
            pods: &self.pods,
            nodes: &self.nodes,
            claims: &self.claims,
            pools: &self.pools,
            ..Snapshot::default()
        };
        decide(View { snapshot, pdbs: &self.pdbs, types: &types, now: now(), settings, resume_after: None })
    }

    fn annotate_pod(&mut self, name: &str, key: &str, value: &str) {
        let i = self.pods.iter().position(|p| p.metadata.name.as_deref() == Some(name)).expect("pod");
        let mut pod = self.pods[i].as_ref().clone();
        pod.metadata.annotations.get_or_insert_default().insert(key.into(), value.into());
        self.pods[i] = Arc::new(pod);
    }
}

fn pod(name: &str, node: &str, cpu: &str) -> Pod {
    super::fixture::bound_pod("default", name, node, cpu, "256Mi")
}

fn names(command: &Command) -> Vec<&str> {
    command.candidates.iter().map(|t| t.node.as_str()).collect()
}

fn kept_why<'a>(d: &'a Decision, node: &str) -> &'a str {
    d.kept
        .iter()
        .find(|k| k.node == node)
        .map(|k| k.why.as_str())
        .unwrap_or_else(|| panic!("{node} not kept: {:?}", d.kept))
}

#[test]
fn empty_nodes_go_first_and_only_as_many_as_the_budget_allows() {
    let mut c = Cluster::new(pool_with(json!({"budgets": [{"nodes": "2"}]}), on_demand()));
    c.node("a", "m5.large", "on-demand", 0, "1").node("b", "m5.large", "on-demand", 0, "1").node(
        "c",
        "m5.large",
        "on-demand",
        0,
        "1",
    );
    c.node("full", "m5.large", "on-demand", 1, "1500m");
    let d = c.decide(Settings::default());
    let command = d.command.as_ref().expect("a command");
    assert_eq!(command.method, Method::Emptiness);
    assert_eq!(command.reason, DisruptionReason::Empty);
    assert_eq!(names(command), ["a", "b"]);
    assert!(command.replacements.is_empty());
    assert!(kept_why(&d, "c").contains("budget nodes: 2"), "{:?}", d.kept);
}

#[test]
fn a_node_whose_pods_fit_on_the_rest_is_deleted() {
    let mut c = Cluster::new(pool_with(json!({}), on_demand()));
    c.node("busy", "m5.xlarge", "on-demand", 1, "1");
    c.node("light", "m5.xlarge", "on-demand", 2, "500m");
    let d = c.decide(Settings::default());
    let command = d.command.expect("a command");
    assert_eq!(command.decision(), "delete");
    assert_eq!(command.reason, DisruptionReason::Underutilized);
    assert_eq!(names(&command), ["busy"], "one pod costs less to disrupt than two");
    assert!(command.savings > 0.19, "an m5.xlarge saved: {}", command.savings);
}

#[test]
fn a_node_too_big_for_its_pods_is_replaced_by_a_cheaper_one_listing_only_cheaper_types() {
    let mut c = Cluster::new(pool_with(json!({}), on_demand()));
    c.node("big", "m5.4xlarge", "on-demand", 2, "500m");
    let d = c.decide(Settings::default());
    let command = d.command.expect("a command");
    assert_eq!(command.decision(), "replace");
    let big = 0.768;
    let replacement = &command.replacements[0];
    assert!(
        replacement.instance_types.iter().all(|o| o.price <= big * 0.95 + 1e-9),
        "{:?}",
        replacement.instance_types
    );
    let listed = replacement.requirements.iter().find(|r| r.key == "node.kubernetes.io/instance-type").expect("types");
    assert_eq!(listed.values.len(), replacement.instance_types.len());
    assert!((command.savings - (big - replacement.price)).abs() < 1e-9);
}

#[test]
fn a_replacement_saving_less_than_the_threshold_is_not_made() {
    let mut c = Cluster::new(pool_with(json!({}), on_demand()));
    // An m5.large's pods need an m5.large: no cheaper m5 holds them.
    c.node("only", "m5.large", "on-demand", 1, "1500m");
    let d = c.decide(Settings::default());
    assert_eq!(d.command, None);
    assert!(kept_why(&d, "only").contains("no less than"), "{:?}", d.kept);
    // An m5.xlarge whose pods fit an m5.large saves half: not at a 60% threshold.
    let mut c = Cluster::new(pool_with(json!({}), on_demand()));
    c.node("x", "m5.xlarge", "on-demand", 1, "1500m");
    let strict = Settings { min_saving: 0.6, ..Settings::default() };
    let d = c.decide(strict);
    assert_eq!(d.command, None);
    assert!(kept_why(&d, "x").contains("below the 60% threshold"), "{:?}", d.kept);
    assert!(c.decide(Settings::default()).command.is_some(), "the default 5% lets it through");
    // The pool's annotation overrides the flag.
    c.pools[0].metadata.annotations = Some([(MIN_SAVING_ANNOTATION.to_string(), "60%".to_string())].into());
    assert_eq!(c.decide(Settings::default()).command, None);
    c.pools[0].metadata.annotations = Some([(MIN_SAVING_ANNOTATION.to_string(), "lots".to_string())].into());
    let d = c.decide(Settings::default());
    assert!(d.command.is_some());
    assert!(d.warnings[0].1.contains("rafter.sh/consolidation-min-saving"), "{:?}", d.warnings);
}

#[test]
fn spot_is_replaced_by_spot_only_with_fifteen_cheaper_types_to_choose_from() {
    let spot = json!([{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]);
    let mut c = Cluster::new(pool_with(json!({}), spot));
    c.node("s", "m5.4xlarge", "spot", 2, "500m");
    let d = c.decide(Settings::default());
    assert_eq!(d.command, None, "the m5 family has fewer than 15 cheaper types");
    assert!(kept_why(&d, "s").contains("spot is replaced by spot only with 15"), "{:?}", d.kept);
    let d = c.decide(Settings { spot_min_types: 3, ..Settings::default() });
    assert_eq!(d.command.expect("replaced").decision(), "replace");
}

#[test]
fn on_demand_is_replaced_by_spot_where_the_pool_allows_it() {
    let both = json!([{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]}]);
    let mut c = Cluster::new(pool_with(json!({}), both));
    c.node("od", "m5.large", "on-demand", 1, "1500m");
    let command = c.decide(Settings::default()).command.expect("a command");
    assert_eq!(command.decision(), "replace");
    assert!(command.replacements[0].price < 0.096 * 0.5, "spot at 40% of on-demand: {}", command.replacements[0].price);
}

#[test]
fn several_under_used_nodes_consolidate_in_one_command() {
    let mut c = Cluster::new(pool_with(json!({"budgets": [{"nodes": "100%"}]}), on_demand()));
    for i in 0..6 {
        c.node(&format!("n{i}"), "m5.xlarge", "on-demand", 1, "1");
    }
    let d = c.decide(Settings::default());
    let command = d.command.expect("a command");
    assert_eq!(command.method, Method::MultiNode);
    // Six pods of 1 CPU: two m5.xlarge (3.92 CPU) hold them; the command leaves at most that.
    let left = 6 - command.candidates.len() + command.replacements.len();
    assert!(left <= 2, "{} removed, {} bought", command.candidates.len(), command.replacements.len());
    assert!(command.replacements.len() <= 1);
}

#[test]
fn blocked_nodes_stay_and_say_why() {
    let mut c = Cluster::new(pool_with(json!({"budgets": [{"nodes": "100%"}]}), on_demand()));
    c.node("keep-pod", "m5.xlarge", "on-demand", 1, "100m");
    c.node("keep-node", "m5.xlarge", "on-demand", 1, "100m");
    c.node("keep-claim", "m5.xlarge", "on-demand", 1, "100m");
    c.node("orphan", "m5.xlarge", "on-demand", 1, "100m");
    c.node("pdb", "m5.xlarge", "on-demand", 1, "100m");
    c.node("fresh", "m5.xlarge", "on-demand", 1, "100m");
    c.annotate_pod("keep-pod-p0", "karpenter.sh/do-not-disrupt", "true");
    let mut node = c.nodes[1].as_ref().clone();
    node.metadata.annotations = Some([("karpenter.sh/do-not-disrupt".to_string(), "true".to_string())].into());
    c.nodes[1] = Arc::new(node);
    let mut claim = c.claims[2].as_ref().clone();
    claim.metadata.annotations = Some([("karpenter.sh/do-not-disrupt".to_string(), "true".to_string())].into());
    c.claims[2] = Arc::new(claim);
    let mut orphan = c.pods[3].as_ref().clone();
    orphan.metadata.owner_references = None;
    c.pods[3] = Arc::new(orphan);
    let mut guarded = c.pods[4].as_ref().clone();
    guarded.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    c.pods[4] = Arc::new(guarded);
    c.pdbs.push(Arc::new(
        serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}}, "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}))
        .expect("pdb"),
    ));
    let mut fresh = c.claims[5].as_ref().clone();
    fresh.status.as_mut().expect("status").last_pod_event_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-12-01T11:59:50Z".parse().expect("t")));
    c.claims[5] = Arc::new(fresh);
    c.pools[0].spec.disruption.as_mut().expect("disruption").consolidate_after =
        Some(serde_json::from_value(json!("1m")).expect("1m"));
    let d = c.decide(Settings::default());
    assert_eq!(d.command, None, "every node is blocked: {:?}", d.command);
    assert_eq!(kept_why(&d, "keep-pod"), "pod default/keep-pod-p0 has karpenter.sh/do-not-disrupt");
    assert_eq!(kept_why(&d, "keep-node"), "node keep-node has karpenter.sh/do-not-disrupt");
    assert_eq!(kept_why(&d, "keep-claim"), "nodeclaim claim-keep-claim has karpenter.sh/do-not-disrupt");
    assert_eq!(kept_why(&d, "orphan"), "pod default/orphan-p0 has no controller to recreate it elsewhere");
    assert_eq!(kept_why(&d, "pdb"), "PodDisruptionBudget default/db allows no disruption of pod default/pdb-p0");
    assert_eq!(kept_why(&d, "fresh"), "its pods changed within consolidateAfter (60s)");
}

#[test]
fn a_zero_budget_in_its_window_stops_every_method() {
    let freeze = json!({"budgets": [{"nodes": "0", "schedule": "0 9 * * *", "duration": "8h"}]});
    let mut c = Cluster::new(pool_with(freeze, on_demand()));
    c.node("empty", "m5.large", "on-demand", 0, "1");
    c.node("light", "m5.xlarge", "on-demand", 1, "100m");
    let d = c.decide(Settings::default());
    assert_eq!(d.command, None);
    assert!(kept_why(&d, "empty").contains("budget nodes: 0 active until 17:00 UTC"), "{:?}", d.kept);
    assert!(kept_why(&d, "light").contains("budget nodes: 0 active until 17:00 UTC"), "{:?}", d.kept);
}

#[test]
fn nodes_already_being_disrupted_count_against_the_budget() {
    let mut c = Cluster::new(pool_with(json!({"budgets": [{"nodes": "1"}]}), on_demand()));
    c.node("going", "m5.large", "on-demand", 0, "1").node("next", "m5.large", "on-demand", 0, "1");
    let mut node = c.nodes[0].as_ref().clone();
    node.spec.as_mut().expect("spec").taints = Some(vec![
        serde_json::from_value(json!({"key": "karpenter.sh/disrupted", "effect": "NoSchedule"})).expect("taint"),
    ]);
    c.nodes[0] = Arc::new(node);
    let d = c.decide(Settings::default());
    assert_eq!(d.command, None);
    assert!(kept_why(&d, "next").contains("1 being disrupted"), "{:?}", d.kept);
}

#[test]
fn consolidation_waits_while_pending_pods_would_be_placed() {
    let mut c = Cluster::new(pool_with(json!({}), on_demand()));
    c.node("big", "m5.4xlarge", "on-demand", 2, "500m");
    let mut pending = pod("waiting", "", "1");
    pending.spec.as_mut().expect("spec").node_name = None;
    pending.status = serde_json::from_value(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]})).expect("status");
    c.pods.push(Arc::new(pending));
    let d = c.decide(Settings::default());
    assert_eq!(d.command, None);
    assert!(kept_why(&d, "big").contains("pending pods"), "{:?}", d.kept);
}

#[test]
fn a_when_empty_pool_removes_only_empty_nodes() {
    let mut c = Cluster::new(pool_with(json!({"consolidationPolicy": "WhenEmpty"}), on_demand()));
    c.node("big", "m5.4xlarge", "on-demand", 2, "500m");
    let d = c.decide(Settings::default());
    assert_eq!(d.command, None);
    assert!(kept_why(&d, "big").contains("WhenEmpty"));
}

#[test]
fn thresholds_parse_as_fractions_or_percentages() {
    assert_eq!(parse_min_saving("5%"), Ok(0.05));
    assert_eq!(parse_min_saving("0.1"), Ok(0.1));
    assert!(parse_min_saving("100%").is_err());
    assert!(parse_min_saving("-1").is_err());
    assert!(parse_min_saving("x").unwrap_err().contains("\"x\""));
}

#[test]
fn a_spot_to_spot_replacement_lists_only_the_fifteen_cheapest_cheaper_types() {
    // Every c/m/r type fits: far more than 15 are cheaper than an m5.8xlarge.
    let mut pool =
        pool_with(json!({}), json!([{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]));
    pool.spec.template.spec.requirements[0] = serde_json::from_value(
        json!({"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]}),
    )
    .expect("requirement");
    let mut c = Cluster::new(pool);
    c.node("s", "m5.8xlarge", "spot", 2, "500m");
    let command = c.decide(Settings::default()).command.expect("replaced");
    assert_eq!(command.replacements[0].instance_types.len(), 15);
}

#[test]
fn several_spot_nodes_become_one_without_the_single_node_spot_rule() {
    let spot = json!([{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]);
    let mut c = Cluster::new(pool_with(json!({"budgets": [{"nodes": "100%"}]}), spot));
    for i in 0..4 {
        c.node(&format!("s{i}"), "m5.xlarge", "spot", 1, "1500m");
    }
    let command = c.decide(Settings::default()).command.expect("a command");
    assert_eq!(command.method, Method::MultiNode);
    assert!(command.candidates.len() >= 2);
    assert!(command.replacements.len() <= 1);
    assert!(command.savings > 0.0);
}
