//! Property tests: random inputs, and an independent checker that re-verifies every plan.
//!
//! The checker shares no logic with the solver: it rebuilds each new node the plan could launch
//! (instance type × available offering × pool labels) as a plain label map and re-checks every
//! constraint against it with its own, direct reading of Kubernetes' matching rules.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

use super::*;
use crate::api::labels::{ARCH, CAPACITY_TYPE, NODEPOOL, ZONE};
use crate::scheduling::catalog::us_east_1;
use crate::scheduling::instance_types::{InstanceType, KubeletSettings};

const TYPES: &[&str] = &[
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "m5.4xlarge",
    "c5.large",
    "c5.xlarge",
    "c5.2xlarge",
    "r5.large",
    "r5.xlarge",
    "m6g.large",
    "m6g.xlarge",
    "m6g.2xlarge",
    "c6g.large",
    "c6g.xlarge",
    "r6g.large",
];
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

fn catalog() -> Vec<InstanceType> {
    let specs = us_east_1().expect("catalog");
    TYPES
        .iter()
        .map(|n| {
            let s = specs.iter().find(|s| s.name == *n).expect("type in catalog");
            InstanceType::new(s, &KubeletSettings::default(), |z| {
                Some(s.on_demand_price * (0.3 + 0.1 * (z.len() % 3) as f64))
            })
        })
        .collect()
}

// ---- The checker: direct readings of Kubernetes' rules over label maps. ----

fn expression_matches(key: &str, operator: &str, values: &[String], labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(key);
    match operator {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            match (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|v| v.parse::<i64>().ok())) {
                (Some(v), Some(bound)) => {
                    if operator == "Gt" {
                        v > bound
                    } else {
                        v < bound
                    }
                }
                _ => false,
            }
        }
        _ => false,
    }
}

fn pod_admits_node(spec: &PodSpec, labels: &BTreeMap<String, String>) -> bool {
    let selector_ok = spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    let affinity_ok = terms.is_empty()
        || terms.iter().any(|t| {
            t.match_expressions
                .iter()
                .flatten()
                .all(|e| expression_matches(&e.key, &e.operator, e.values.as_deref().unwrap_or_default(), labels))
        });
    selector_ok && affinity_ok
}

fn tolerates_hard_taints(spec: &PodSpec, taints: &[crate::api::nodeclaim::Taint]) -> bool {
    use crate::api::nodeclaim::TaintEffect;
    taints.iter().filter(|t| t.effect != TaintEffect::PreferNoSchedule).all(|t| {
        spec.tolerations.iter().flatten().any(|tol| {
            let key_ok = match tol.operator.as_deref() {
                Some("Exists") => tol.key.as_deref().is_none_or(|k| k.is_empty() || k == t.key),
                _ => {
                    tol.key.as_deref() == Some(t.key.as_str())
                        && tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or("")
                }
            };
            key_ok
                && tol
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || Some(e) == Some(format!("{:?}", t.effect)).as_deref())
        })
    })
}

/// Every node a claim could become: type labels, one available offering, pool labels.
fn possible_nodes(claim: &NewClaim, pool: &PoolInput) -> Vec<(BTreeMap<String, String>, String)> {
    let mut nodes = Vec::new();
    for option in &claim.instance_types {
        let it = pool.instance_types.iter().find(|t| t.name == option.name).expect("claim lists a pool type");
        for o in it.offerings.iter().filter(|o| o.available) {
            let mut labels = it.requirements.labels();
            labels.insert(ZONE.into(), o.zone.clone());
            labels.insert(CAPACITY_TYPE.into(), o.capacity_type.as_str().into());
            labels.extend(pool.requirements.labels());
            labels.insert(NODEPOOL.into(), pool.name.clone());
            if claim
                .requirements
                .iter()
                .all(|r| expression_matches(&r.key, &format!("{:?}", r.operator), &r.values, &labels))
            {
                nodes.push((labels, option.name.clone()));
            }
        }
    }
    nodes
}

fn check(input: &SchedulingInput, plan: &Plan) -> Result<(), String> {
    let by_key: BTreeMap<String, &Pod> = input.pods.iter().map(|p| (pod_key(p), p)).collect();
    // Every pod exactly once.
    let mut seen: Vec<String> = plan.claims.iter().flat_map(|c| c.pods.iter().cloned()).collect();
    seen.extend(plan.placements.iter().map(|p| p.pod.clone()));
    seen.extend(plan.unplaced.iter().map(|u| u.pod.clone()));
    seen.sort();
    let mut expected: Vec<String> = by_key.keys().cloned().collect();
    expected.sort();
    if seen != expected {
        return Err(format!("pods lost or duplicated: {seen:?} vs {expected:?}"));
    }
    // Placements on existing nodes: labels, hard taints and capacity hold.
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    for placement in &plan.placements {
        let node = input.nodes.iter().find(|n| n.name == placement.node).ok_or("placement on an unknown node")?;
        let spec = by_key[&placement.pod].spec.as_ref().expect("spec");
        let labels = node.requirements.labels();
        if !pod_admits_node(spec, &labels) {
            return Err(format!("{} does not admit node {} {labels:?}", placement.pod, node.name));
        }
        if !tolerates_hard_taints(spec, &node.taints) {
            return Err(format!("{} does not tolerate the taints of node {}", placement.pod, node.name));
        }
        let total = used.entry(&node.name).or_default();
        total.add(&crate::scheduling::resources::pod_requests(spec).map_err(|e| e.to_string())?);
        if !total.fits_in(&node.available) {
            return Err(format!("node {} is overcommitted: {total} > {}", node.name, node.available));
        }
    }
    // Host ports: no two pods on one node or claim bind the same port and protocol.
    let mut groups: Vec<Vec<&str>> = plan.claims.iter().map(|c| c.pods.iter().map(String::as_str).collect()).collect();
    for node in &input.nodes {
        groups.push(plan.placements.iter().filter(|p| p.node == node.name).map(|p| p.pod.as_str()).collect());
    }
    for group in groups {
        let mut seen: Vec<(String, i32)> = Vec::new();
        for key in group {
            for c in &by_key[key].spec.as_ref().expect("spec").containers {
                for port in c.ports.iter().flatten().filter_map(|p| p.host_port) {
                    let protocol = "TCP".to_string();
                    if seen.contains(&(protocol.clone(), port)) {
                        return Err(format!("host port {port} bound twice on one node ({key})"));
                    }
                    seen.push((protocol, port));
                }
            }
        }
    }
    let mut zone_counts: BTreeMap<(String, String), BTreeMap<String, u32>> = BTreeMap::new();
    let mut pinned: Vec<(String, String)> = Vec::new();
    let mut reserved: BTreeMap<String, i64> = BTreeMap::new();
    for claim in &plan.claims {
        let pool = input.pools.iter().find(|p| p.name == claim.node_pool).ok_or("claim of an unknown pool")?;
        if claim.instance_types.is_empty() || claim.instance_types.len() > MAX_INSTANCE_TYPES {
            return Err(format!("claim lists {} types", claim.instance_types.len()));
        }
        let pods: Vec<&PodSpec> = claim.pods.iter().map(|k| by_key[k].spec.as_ref().expect("spec")).collect();
        let mut total = Resources::zero();
        for spec in &pods {
            total.add(&crate::scheduling::resources::pod_requests(spec).map_err(|e| e.to_string())?);
        }
        let mut largest_cpu = 0;
        for option in &claim.instance_types {
            let it = pool.instance_types.iter().find(|t| t.name == option.name).ok_or("unknown type")?;
            if !total.fits_in(&it.allocatable()) {
                return Err(format!("{} cannot hold {total}", it.name));
            }
            largest_cpu = largest_cpu.max(it.capacity.cpu);
        }
        *reserved.entry(pool.name.clone()).or_default() += largest_cpu;
        let nodes = possible_nodes(claim, pool);
        if nodes.is_empty() {
            return Err(format!("claim of {} can launch no node: {:?}", pool.name, claim.requirements));
        }
        for (labels, name) in &nodes {
            for (spec, key) in pods.iter().zip(&claim.pods) {
                if !pod_admits_node(spec, labels) {
                    return Err(format!("{key} does not admit a possible node {name} {labels:?}"));
                }
                if !tolerates_hard_taints(spec, &pool.taints) {
                    return Err(format!("{key} does not tolerate the taints of {}", pool.name));
                }
            }
        }
        // Required anti-affinity by hostname: no two selected pods share the claim.
        for a in &claim.pods {
            let pa = by_key[a];
            let anti = pa.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_anti_affinity.as_ref());
            for term in
                anti.and_then(|x| x.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten()
            {
                let wanted = term.label_selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
                for b in claim.pods.iter().filter(|b| *b != a) {
                    let labels = by_key[b].metadata.labels.clone().unwrap_or_default();
                    if wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                        return Err(format!("{a} and {b} share a node despite anti-affinity"));
                    }
                }
            }
        }
        // Zone spread: pods with a spread sit on a claim pinned to one zone.
        let zones: BTreeSet<&String> = nodes.iter().filter_map(|(l, _)| l.get(ZONE)).collect();
        for key in &claim.pods {
            let pod = by_key[key];
            if pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_ref()).is_some_and(|c| !c.is_empty())
                && zones.len() != 1
            {
                return Err(format!("{key} has a zone spread but its claim may land in {zones:?}"));
            }
        }
        if let [zone] = zones.iter().collect::<Vec<_>>()[..] {
            pinned.extend(claim.pods.iter().map(|k| (k.clone(), (*zone).clone())));
        }
    }
    // Pods placed on existing nodes have their node's zone.
    for placement in &plan.placements {
        let node = input.nodes.iter().find(|n| n.name == placement.node).ok_or("placement on an unknown node")?;
        if let Some(zone) = node.requirements.labels().get(ZONE) {
            pinned.push((placement.pod.clone(), zone.clone()));
        }
    }
    // Kubernetes counts every pod a spread's selector matches, whatever its own constraints; a plan
    // fixes the zone of pods on pinned claims and existing nodes, so those are the ones counted.
    for pod in &input.pods {
        for c in pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_ref()).into_iter().flatten() {
            let wanted = c.label_selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
            let group = serde_json::to_string(&c.label_selector).unwrap_or_default();
            let entry = zone_counts.entry((group, c.max_skew.to_string())).or_default();
            if !entry.is_empty() {
                continue;
            }
            for (key, zone) in &pinned {
                let labels = by_key[key].metadata.labels.clone().unwrap_or_default();
                if wanted.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    *entry.entry(zone.clone()).or_default() += 1;
                }
            }
            entry.insert(String::new(), 0);
        }
    }
    // Required zone self-affinity: a group's placed pods share one zone.
    let mut affine: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pod in &input.pods {
        let key = pod_key(pod);
        let terms = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|p| p.required_during_scheduling_ignored_during_execution.as_ref());
        if terms.is_some_and(|t| !t.is_empty()) && !plan.unplaced.iter().any(|u| u.pod == key) {
            let zone = pinned.iter().find(|(k, _)| *k == key).map(|(_, z)| z.clone());
            let Some(zone) = zone else { return Err(format!("{key} has zone affinity but no fixed zone")) };
            let app = pod.metadata.labels.as_ref().and_then(|l| l.get("app")).cloned().unwrap_or_default();
            affine.entry(app).or_default().insert(zone);
        }
    }
    if let Some((app, zones)) = affine.iter().find(|(_, z)| z.len() > 1) {
        return Err(format!("affine group {app} spans zones {zones:?}"));
    }
    for ((group, skew), counts) in &zone_counts {
        let skew: u32 = skew.parse().unwrap_or(1);
        let max = ZONES.iter().map(|z| counts.get(*z).copied().unwrap_or(0)).max().unwrap_or(0);
        let min = ZONES.iter().map(|z| counts.get(*z).copied().unwrap_or(0)).min().unwrap_or(0);
        if max - min > skew {
            return Err(format!("spread {group} skews {counts:?} beyond {skew}"));
        }
    }
    for pool in &input.pools {
        if let Some(limit) = pool.limits.iter().find(|l| l.resource == "cpu") {
            let used = reserved.get(&pool.name).copied().unwrap_or(0);
            if used > limit.remaining {
                return Err(format!("{} reserves {used}m cpu past its limit {}", pool.name, limit.remaining));
            }
        }
    }
    Ok(())
}

// ---- Random inputs. ----

fn arb_pool(index: usize) -> impl Strategy<Value = PoolInput> {
    (
        prop::option::of(prop::sample::select(vec!["amd64", "arm64"])),
        prop::option::of(prop::sample::select(vec!["spot", "on-demand"])),
        any::<bool>(),
        prop::option::of(8i64..64),
        prop::option::of(1i32..100),
        any::<bool>(),
    )
        .prop_map(move |(arch, capacity, tainted, cpu_limit, weight, team)| {
            let mut requirements = vec![json!({"key": ZONE, "operator": "In", "values": ZONES})];
            if let Some(a) = arch {
                requirements.push(json!({"key": ARCH, "operator": "In", "values": [a]}));
            }
            if let Some(c) = capacity {
                requirements.push(json!({"key": CAPACITY_TYPE, "operator": "In", "values": [c]}));
            }
            let mut spec = json!({"template": {"spec": {"requirements": requirements, "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}}});
            if tainted {
                spec["template"]["spec"]["taints"] = json!([{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]);
            }
            if team {
                spec["template"]["metadata"] = json!({"labels": {"team": "data"}});
            }
            if let Some(l) = cpu_limit {
                spec["limits"] = json!({"cpu": l.to_string()});
            }
            if let Some(w) = weight {
                spec["weight"] = json!(w);
            }
            let pool: NodePool = serde_json::from_value(json!({
                "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": format!("pool-{index}")}, "spec": spec
            }))
            .expect("pool");
            PoolInput::from_node_pool(&pool, catalog(), &Resources::zero()).expect("pool input")
        })
}

fn arb_pod(index: usize) -> impl Strategy<Value = Pod> {
    (
        prop::sample::select(vec!["100m", "250m", "500m", "1", "2", "3500m"]),
        prop::sample::select(vec!["128Mi", "512Mi", "1Gi", "4Gi", "12Gi"]),
        0u8..6,
        any::<bool>(),
        0u8..5,
        0u8..3,
    )
        .prop_map(move |(cpu, memory, selector, tolerates, topology, group)| {
            // Groups are homogeneous: every pod a spread selects carries that spread, so the final
            // skew must stay within maxSkew (Kubernetes checks it only when placing such a pod).
            let kind = ["plain", "anti", "spread", "plain", "affine"][usize::from(topology)];
            let app = format!("{kind}-{group}");
            let mut spec = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]});
            match selector {
                1 => spec["nodeSelector"] = json!({ARCH: "arm64"}),
                2 => spec["nodeSelector"] = json!({"team": "data"}),
                3 => spec["nodeSelector"] = json!({CAPACITY_TYPE: "spot"}),
                4 => {
                    spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": ARCH, "operator": "In", "values": ["s390x"]}]},
                        {"matchExpressions": [{"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["5"]}]}
                    ]}}})
                }
                _ => {}
            }
            if tolerates {
                spec["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
            }
            if group == 2 && selector == 5 {
                spec["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
            }
            match topology {
                1 => {
                    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": app}}}
                    ]}});
                    match spec.get_mut("affinity") {
                        Some(Value::Object(a)) => {
                            a.insert("podAntiAffinity".into(), anti["podAntiAffinity"].clone());
                        }
                        _ => spec["affinity"] = anti,
                    }
                }
                2 => {
                    spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": app}}}])
                }
                4 => {
                    let affinity = json!({"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": ZONE, "labelSelector": {"matchLabels": {"app": app}}}
                    ]});
                    match spec.get_mut("affinity") {
                        Some(Value::Object(a)) => {
                            a.insert("podAffinity".into(), affinity);
                        }
                        _ => spec["affinity"] = json!({"podAffinity": affinity}),
                    }
                }
                _ => {}
            }
            serde_json::from_value(json!({"metadata": {"name": format!("p-{index}"), "namespace": "default", "labels": {"app": app}}, "spec": spec}))
                .expect("pod")
        })
}

fn arb_node(index: usize) -> impl Strategy<Value = ExistingNode> {
    (prop::sample::select(vec!["amd64", "arm64"]), 0usize..3, 1i64..8, any::<bool>()).prop_map(
        move |(arch, zone, cpus, tainted)| {
            let labels: BTreeMap<String, String> = [
                (ARCH.to_string(), arch.to_string()),
                (ZONE.to_string(), ZONES[zone].to_string()),
                ("kubernetes.io/hostname".to_string(), format!("node-{index}")),
            ]
            .into();
            let taints = if tainted {
                vec![crate::api::nodeclaim::Taint {
                    key: "dedicated".into(),
                    value: Some("batch".into()),
                    effect: crate::api::nodeclaim::TaintEffect::NoSchedule,
                    time_added: None,
                }]
            } else {
                vec![]
            };
            ExistingNode {
                name: format!("node-{index}"),
                requirements: Requirements::from_labels(&labels),
                taints,
                available: Resources::zero().with("cpu", cpus * 1000).with("memory", cpus << 31).with("pods", 10),
                initialized: true,
            }
        },
    )
}

fn arb_input() -> impl Strategy<Value = SchedulingInput> {
    (1usize..4, 1usize..40, 0usize..3).prop_flat_map(|(pools, pods, nodes)| {
        let pools: Vec<_> = (0..pools).map(arb_pool).collect();
        let pods: Vec<_> = (0..pods).map(arb_pod).collect();
        let nodes: Vec<_> = (0..nodes).map(arb_node).collect();
        (pools, pods, nodes).prop_map(|(pools, pods, nodes)| SchedulingInput {
            pods,
            pools,
            nodes,
            ..Default::default()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_plan_passes_the_independent_checker_and_is_reproducible(input in arb_input()) {
        let plan = solve(&input);
        if let Err(problem) = check(&input, &plan) {
            prop_assert!(false, "{problem}\n{}", serde_json::to_string_pretty(&plan).unwrap_or_default());
        }
        let again = solve(&input);
        prop_assert_eq!(serde_json::to_string(&plan).unwrap_or_default(), serde_json::to_string(&again).unwrap_or_default());
    }
}

#[test]
fn the_checker_catches_a_broken_plan() {
    let strategy = arb_input();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let input = loop {
        let candidate = strategy.new_tree(&mut runner).expect("input").current();
        if !solve(&candidate).claims.is_empty() {
            break candidate;
        }
    };
    let mut plan = solve(&input);
    // Lose a pod.
    plan.claims[0].pods.pop();
    assert!(check(&input, &plan).is_err());
    // List a type too small for the claim.
    let mut plan = solve(&input);
    plan.claims[0].pods = input.pods.iter().map(pod_key).collect();
    plan.placements.clear();
    plan.unplaced.clear();
    plan.claims.truncate(1);
    plan.claims[0].instance_types = vec![InstanceOption { name: "c5.large".into(), price: 0.0 }];
    let heavy: i64 = input
        .pods
        .iter()
        .map(|p| crate::scheduling::resources::pod_requests(p.spec.as_ref().unwrap()).unwrap().cpu)
        .sum();
    if heavy > 2000 {
        assert!(check(&input, &plan).is_err());
    }
}
