//! One test per constraint and per reason line, on real instance types from the shipped catalog.

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::{Value, json};

use super::*;
use crate::api::labels::{ARCH, CAPACITY_TYPE, INSTANCE_FAMILY, ZONE};
use crate::scheduling::catalog::us_east_1;
use crate::scheduling::instance_types::{InstanceType, KubeletSettings};

/// Instance types from the catalog; spot at 40% of on-demand in every zone.
fn types(names: &[&str]) -> Vec<InstanceType> {
    let specs = us_east_1().expect("catalog");
    names
        .iter()
        .map(|n| {
            let spec = specs.iter().find(|s| s.name == *n).unwrap_or_else(|| panic!("{n} in catalog"));
            InstanceType::new(spec, &KubeletSettings::default(), |_| Some(spec.on_demand_price * 0.4))
        })
        .collect()
}

const GENERAL: &[&str] = &[
    "m5.large",
    "m5.xlarge",
    "m5.2xlarge",
    "m5.4xlarge",
    "c5.large",
    "c5.xlarge",
    "c5.2xlarge",
    "c5.4xlarge",
    "r5.large",
    "r5.xlarge",
    "m6g.large",
    "m6g.xlarge",
    "m6g.4xlarge",
];

fn node_pool(name: &str, spec: Value) -> NodePool {
    let mut template_spec =
        json!({"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}});
    for key in ["requirements", "taints", "startupTaints"] {
        if let Some(v) = spec.get(key) {
            template_spec[key] = v.clone();
        }
    }
    let mut pool = json!({
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {"template": {"spec": template_spec}}
    });
    for key in ["limits", "weight"] {
        if let Some(v) = spec.get(key) {
            pool["spec"][key] = v.clone();
        }
    }
    if let Some(labels) = spec.get("labels") {
        pool["spec"]["template"]["metadata"] = json!({"labels": labels});
    }
    serde_json::from_value(pool).expect("NodePool")
}

fn pool(name: &str, spec: Value, type_names: &[&str]) -> PoolInput {
    PoolInput::from_node_pool(&node_pool(name, spec), types(type_names), &Resources::zero()).expect("pool")
}

fn pod(name: &str, cpu: &str, memory: &str, extra: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).expect("Pod")
}

fn pods(n: usize, cpu: &str, memory: &str) -> Vec<Pod> {
    (0..n).map(|i| pod(&format!("inflate-{i:03}"), cpu, memory, json!({}))).collect()
}

fn input(pods: Vec<Pod>, pools: Vec<PoolInput>) -> SchedulingInput {
    SchedulingInput { pods, pools, ..Default::default() }
}

fn claim_requirement<'a>(claim: &'a NewClaim, key: &str) -> Vec<&'a NodeSelectorRequirementWithMinValues> {
    claim.requirements.iter().filter(|r| r.key == key).collect()
}

fn only_reason(plan: &Plan) -> &str {
    assert_eq!(plan.unplaced.len(), 1, "{plan:#?}");
    &plan.unplaced[0].reason
}

#[test]
fn a_hundred_small_pods_cost_no_more_than_one_node_for_all_and_list_fitting_types_cheapest_first() {
    let plan = solve(&input(pods(100, "100m", "256Mi"), vec![pool("default", json!({}), GENERAL)]));
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    assert_eq!(plan.claims.iter().map(|c| c.pods.len()).sum::<usize>(), 100);
    // The cheapest single type that holds all 100 pods is m6g.4xlarge (spot $0.2464/h).
    assert!(plan.price() <= 0.2464 + 1e-9, "{} claims cost {}", plan.claims.len(), plan.price());
    let all = types(GENERAL);
    for claim in &plan.claims {
        assert!(claim.instance_types.len() <= MAX_INSTANCE_TYPES);
        assert!(claim.instance_types.windows(2).all(|w| w[0].price <= w[1].price), "cheapest first");
        assert_eq!(claim.price, claim.instance_types[0].price);
        let pods = claim.pods.len() as i64;
        for option in &claim.instance_types {
            let it = all.iter().find(|t| t.name == option.name).expect("known type");
            let a = it.allocatable();
            assert!(
                a.pods >= pods && a.cpu >= 100 * pods && a.memory >= pods * 256 * 1024 * 1024,
                "{} fits",
                option.name
            );
        }
    }
}

#[test]
fn existing_nodes_are_filled_before_new_claims() {
    let mut batch = input(pods(5, "1", "1Gi"), vec![pool("default", json!({}), GENERAL)]);
    batch.nodes.push(ExistingNode {
        name: "node-a".into(),
        requirements: Requirements::from_labels(
            &[(ARCH.to_string(), "amd64".to_string())].into_iter().collect::<BTreeMap<_, _>>(),
        ),
        taints: vec![],
        available: Resources::zero().with("cpu", 3500).with("memory", 8 << 30).with("pods", 20),
        initialized: true,
    });
    let plan = solve(&batch);
    assert_eq!(plan.placements.len(), 3);
    assert!(plan.placements.iter().all(|p| p.node == "node-a"));
    assert_eq!(plan.claims.iter().map(|c| c.pods.len()).sum::<usize>(), 2);
}

#[test]
fn an_in_flight_claim_takes_only_pods_it_is_sure_to_satisfy() {
    let mut batch = input(
        vec![
            pod("anywhere", "1", "1Gi", json!({})),
            pod("zone-a", "1", "1Gi", json!({"nodeSelector": {ZONE: "us-east-1a"}})),
        ],
        vec![pool("default", json!({}), GENERAL)],
    );
    let mut reqs = Requirements::new();
    reqs.add(Requirement::one_of(ZONE, ["us-east-1a".to_string(), "us-east-1b".to_string()]));
    batch.nodes.push(ExistingNode {
        name: "default-xyz".into(),
        requirements: reqs,
        taints: vec![],
        available: Resources::zero().with("cpu", 4000).with("memory", 8 << 30).with("pods", 20),
        initialized: false,
    });
    let plan = solve(&batch);
    assert_eq!(plan.placements, vec![Placement { pod: "default/anywhere".into(), node: "default-xyz".into() }]);
    assert_eq!(plan.claims.len(), 1);
    assert_eq!(claim_requirement(&plan.claims[0], ZONE)[0].values, vec!["us-east-1a".to_string()]);
}

#[test]
fn a_pod_selecting_another_architecture_is_refused_with_the_pool_requirement() {
    let amd = pool("default", json!({"requirements": [{"key": ARCH, "operator": "In", "values": ["amd64"]}]}), GENERAL);
    let plan = solve(&input(vec![pod("arm", "1", "1Gi", json!({"nodeSelector": {ARCH: "arm64"}}))], vec![amd]));
    assert_eq!(only_reason(&plan), "NodePool default requires kubernetes.io/arch In [amd64], pod selects arm64");
}

#[test]
fn a_label_the_pool_does_not_set_is_named() {
    let plan = solve(&input(
        vec![pod("p", "1", "1Gi", json!({"nodeSelector": {"team": "a"}}))],
        vec![pool("default", json!({}), GENERAL)],
    ));
    assert_eq!(only_reason(&plan), "NodePool default does not set label team, pod selects a");
    let labelled = pool("default", json!({"labels": {"team": "a"}}), GENERAL);
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({"nodeSelector": {"team": "a"}}))], vec![labelled]));
    assert!(plan.unplaced.is_empty());
}

#[test]
fn untolerated_taints_refuse_the_pool_and_tolerations_admit_it() {
    let gpu =
        || pool("gpu", json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}), GENERAL);
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({}))], vec![gpu()]));
    assert_eq!(only_reason(&plan), "no NodePool tolerates taint dedicated=gpu:NoSchedule");
    let tolerant = pod(
        "p",
        "1",
        "1Gi",
        json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    );
    let plan = solve(&input(vec![tolerant], vec![gpu()]));
    assert!(plan.unplaced.is_empty() && plan.claims.len() == 1);
}

#[test]
fn startup_taints_need_no_toleration() {
    let pool = pool(
        "default",
        json!({"startupTaints": [{"key": "node.cilium.io/agent-not-ready", "effect": "NoExecute"}]}),
        GENERAL,
    );
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({}))], vec![pool]));
    assert!(plan.unplaced.is_empty());
}

#[test]
fn gpu_requests_larger_than_any_type_are_named() {
    let gpu_pod = |n: &str| {
        pod("train", "1", "4Gi", json!({"containers": [{"name": "t", "resources": {"limits": {"nvidia.com/gpu": n}}}]}))
    };
    let small = || pool("default", json!({}), &["g4dn.xlarge", "g4dn.2xlarge", "m5.large"]);
    let plan = solve(&input(vec![gpu_pod("3")], vec![small()]));
    assert_eq!(only_reason(&plan), "no instance type has 3 nvidia.com/gpu");
    let plan = solve(&input(vec![gpu_pod("3")], vec![pool("default", json!({}), &["g4dn.xlarge", "g4dn.12xlarge"])]));
    assert_eq!(plan.claims[0].instance_types.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["g4dn.12xlarge"]);
}

#[test]
fn limits_are_never_exceeded_and_the_limit_is_named() {
    let limited = pool("default", json!({"limits": {"cpu": "4"}}), GENERAL);
    let plan = solve(&input(vec![pod("a", "3", "1Gi", json!({})), pod("b", "3", "1Gi", json!({}))], vec![limited]));
    assert_eq!(plan.claims.len(), 1);
    assert_eq!(only_reason(&plan), "NodePool default would exceed its cpu limit (4)");
    let all = types(GENERAL);
    for option in &plan.claims[0].instance_types {
        let it = all.iter().find(|t| t.name == option.name).unwrap();
        assert!(it.capacity.cpu <= 4000, "{} stays within the limit", it.name);
    }
}

#[test]
fn a_limited_pool_places_every_pod_its_cheapest_nodes_fit_and_every_listed_type_stays_within_the_limit() {
    // 150 pods of 100m and 256Mi fit on six 8 GiB nodes; the limit is 64Gi. Held at each claim's
    // largest option (64 GiB here, Karpenter's way), the limit ran out after one node.
    let all = types(GENERAL);
    let limited = pool("default", json!({"limits": {"memory": "64Gi"}}), GENERAL);
    let plan = solve(&input(pods(150, "100m", "256Mi"), vec![limited]));
    assert!(plan.unplaced.is_empty(), "{} unplaced: {:?}", plan.unplaced.len(), plan.unplaced.first());
    let capacity = |name: &str| all.iter().find(|t| t.name == name).expect("type").capacity.memory;
    let worst: i64 =
        plan.claims.iter().map(|c| c.instance_types.iter().map(|o| capacity(&o.name)).max().unwrap_or(0)).sum();
    assert!(worst <= 64 << 30, "whichever listed type each claim gets, the pool stays within 64Gi ({worst})");
    assert!(plan.claims.iter().all(|c| !c.instance_types.is_empty()));
}

#[test]
fn heavier_pools_are_tried_first() {
    let cheap = pool(
        "cheap",
        json!({"weight": 10, "requirements": [{"key": CAPACITY_TYPE, "operator": "In", "values": ["spot"]}]}),
        GENERAL,
    );
    let reserved = pool(
        "preferred",
        json!({"weight": 50, "requirements": [{"key": CAPACITY_TYPE, "operator": "In", "values": ["on-demand"]}]}),
        GENERAL,
    );
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({}))], vec![cheap, reserved]));
    assert_eq!(plan.claims[0].node_pool, "preferred");
}

#[test]
fn preferred_node_affinity_is_honoured_when_possible_and_relaxed_when_not() {
    let prefer_b = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["us-east-1b"]}]}}
    ]}}});
    let plan = solve(&input(vec![pod("p", "1", "1Gi", prefer_b.clone())], vec![pool("default", json!({}), GENERAL)]));
    assert_eq!(claim_requirement(&plan.claims[0], ZONE)[0].values, vec!["us-east-1b".to_string()]);

    let zone_a =
        pool("default", json!({"requirements": [{"key": ZONE, "operator": "In", "values": ["us-east-1a"]}]}), GENERAL);
    let plan = solve(&input(vec![pod("p", "1", "1Gi", prefer_b)], vec![zone_a]));
    assert!(plan.unplaced.is_empty(), "the preference is dropped: {:?}", plan.unplaced);
    assert_eq!(claim_requirement(&plan.claims[0], ZONE)[0].values, vec!["us-east-1a".to_string()]);
}

#[test]
fn required_node_affinity_terms_are_alternatives() {
    let terms = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": ARCH, "operator": "In", "values": ["s390x"]}]},
        {"matchExpressions": [{"key": ARCH, "operator": "In", "values": ["arm64"]}]}
    ]}}}});
    let plan = solve(&input(vec![pod("p", "1", "1Gi", terms)], vec![pool("default", json!({}), GENERAL)]));
    assert!(plan.unplaced.is_empty());
    assert!(
        plan.claims[0].instance_types.iter().all(|o| o.name.starts_with("m6g")),
        "{:?}",
        plan.claims[0].instance_types
    );
}

#[test]
fn prefer_no_schedule_taints_are_tolerated_only_after_relaxing() {
    let soft = pool("soft", json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}), GENERAL);
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({}))], vec![soft]));
    assert!(plan.unplaced.is_empty());
    assert_eq!(plan.claims[0].node_pool, "soft");
}

#[test]
fn daemonset_overhead_is_added_to_new_nodes_that_admit_the_daemonset() {
    let ds = |selector: Value| -> PodSpec {
        serde_json::from_value(json!({"containers": [{"name": "d", "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}], "nodeSelector": selector})).unwrap()
    };
    let mut batch = input(
        vec![pod("p", "1", "1Gi", json!({}))],
        vec![pool("default", json!({"requirements": [{"key": ARCH, "operator": "In", "values": ["amd64"]}]}), GENERAL)],
    );
    batch.daemonsets = vec![ds(json!({})), ds(json!({ARCH: "arm64"}))];
    let plan = solve(&batch);
    assert_eq!(plan.claims[0].requests["cpu"], "1500m", "only the DaemonSet that lands on amd64 counts");
    assert_eq!(plan.claims[0].requests["pods"], "2");
}

#[test]
fn min_values_keep_enough_families_or_are_named() {
    let flexible = pool(
        "default",
        json!({"requirements": [{"key": INSTANCE_FAMILY, "operator": "Exists", "minValues": 3}]}),
        GENERAL,
    );
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({}))], vec![flexible]));
    let families: BTreeSet<&str> =
        plan.claims[0].instance_types.iter().map(|o| o.name.split('.').next().unwrap_or_default()).collect();
    assert!(families.len() >= 3, "{families:?}");
    assert_eq!(claim_requirement(&plan.claims[0], INSTANCE_FAMILY)[0].min_values, Some(3));

    let strict = pool(
        "default",
        json!({"requirements": [{"key": INSTANCE_FAMILY, "operator": "Exists", "minValues": 9}]}),
        GENERAL,
    );
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({}))], vec![strict]));
    assert_eq!(
        only_reason(&plan),
        "NodePool default: karpenter.k8s.aws/instance-family needs minValues 9, only 4 value(s) fit"
    );
}

#[test]
fn unreadable_pods_and_missing_pools_are_reported() {
    let plan = solve(&input(vec![pod("bad", "1", "lots", json!({}))], vec![pool("default", json!({}), GENERAL)]));
    assert!(only_reason(&plan).starts_with("pod cannot be read: resource memory:"), "{}", only_reason(&plan));
    let plan = solve(&input(vec![pod("p", "1", "1Gi", json!({}))], vec![]));
    assert_eq!(only_reason(&plan), "no NodePool exists");
}

#[test]
fn the_same_input_gives_a_byte_identical_plan() {
    let mut batch_pods = pods(40, "300m", "700Mi");
    batch_pods.extend(pods(7, "2", "3Gi").into_iter().enumerate().map(|(i, mut p)| {
        p.metadata.name = Some(format!("big-{i}"));
        p
    }));
    let batch = input(batch_pods, vec![pool("a", json!({}), GENERAL), pool("b", json!({"weight": 5}), GENERAL)]);
    let first = serde_json::to_string(&solve(&batch)).unwrap();
    let second = serde_json::to_string(&solve(&batch)).unwrap();
    assert_eq!(first, second);
}

fn labelled(name: &str, cpu: &str, app: &str, extra: Value) -> Pod {
    let mut p = pod(name, cpu, "1Gi", extra);
    p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
    p
}

fn zone_of(claim: &NewClaim) -> String {
    let zone = claim_requirement(claim, ZONE);
    assert_eq!(zone.len(), 1, "{:?}", claim.requirements);
    assert_eq!(zone[0].values.len(), 1, "pinned to one zone: {:?}", zone[0]);
    zone[0].values[0].clone()
}

const THREE_ZONES: &str = r#"{"requirements": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a", "us-east-1b", "us-east-1c"]}]}"#;

fn three_zone_pool() -> PoolInput {
    pool("default", serde_json::from_str(THREE_ZONES).unwrap(), GENERAL)
}

fn zone_spread(skew: i32, when: &str) -> Value {
    json!({"topologySpreadConstraints": [{"maxSkew": skew, "topologyKey": ZONE, "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}}]})
}

#[test]
fn zone_spread_puts_pods_evenly_across_zones() {
    let pods: Vec<Pod> =
        (0..6).map(|i| labelled(&format!("web-{i}"), "1", "web", zone_spread(1, "DoNotSchedule"))).collect();
    let plan = solve(&input(pods, vec![three_zone_pool()]));
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for claim in &plan.claims {
        *per_zone.entry(zone_of(claim)).or_default() += claim.pods.len();
    }
    assert_eq!(per_zone.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{per_zone:?}");
}

#[test]
fn zone_spread_counts_pods_already_running() {
    let mut batch = input(
        (0..2).map(|i| labelled(&format!("web-{i}"), "1", "web", zone_spread(1, "DoNotSchedule"))).collect(),
        vec![three_zone_pool()],
    );
    batch.nodes.push(ExistingNode {
        name: "full-a".into(),
        requirements: Requirements::from_labels(
            &[(ZONE.to_string(), "us-east-1a".to_string())].into_iter().collect::<BTreeMap<_, _>>(),
        ),
        taints: vec![],
        available: Resources::zero(),
        initialized: true,
    });
    let mut running = labelled("web-running", "1", "web", json!({}));
    running.spec.as_mut().unwrap().node_name = Some("full-a".into());
    batch.bound_pods.push(running);
    let plan = solve(&batch);
    let zones: BTreeSet<String> = plan.claims.iter().map(zone_of).collect();
    assert_eq!(zones, ["us-east-1b".to_string(), "us-east-1c".to_string()].into());
}

#[test]
fn hostname_spread_and_self_anti_affinity_put_one_pod_per_node() {
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let plan = solve(&input(
        (0..4).map(|i| labelled(&format!("s-{i}"), "100m", "web", spread.clone())).collect(),
        vec![three_zone_pool()],
    ));
    assert_eq!(plan.claims.len(), 4, "{:?}", plan.claims.iter().map(|c| c.pods.clone()).collect::<Vec<_>>());

    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}
    ]}}});
    let mut pods: Vec<Pod> = (0..3).map(|i| labelled(&format!("db-{i}"), "100m", "db", anti.clone())).collect();
    pods.extend((0..5).map(|i| labelled(&format!("other-{i}"), "100m", "other", json!({}))));
    let plan = solve(&input(pods, vec![three_zone_pool()]));
    assert!(plan.unplaced.is_empty());
    for claim in &plan.claims {
        let dbs = claim.pods.iter().filter(|p| p.contains("/db-")).count();
        assert!(dbs <= 1, "{:?}", claim.pods);
    }
    assert_eq!(plan.claims.len(), 3, "other pods fill the db nodes");
}

#[test]
fn zone_self_affinity_keeps_a_group_in_one_zone() {
    let affinity = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": ZONE, "labelSelector": {"matchLabels": {"app": "cache"}}}
    ]}}});
    let pods: Vec<Pod> = (0..10).map(|i| labelled(&format!("c-{i}"), "3", "cache", affinity.clone())).collect();
    let plan = solve(&input(pods, vec![three_zone_pool()]));
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    let zones: BTreeSet<String> = plan.claims.iter().map(zone_of).collect();
    assert_eq!(zones.len(), 1, "{zones:?}");
}

#[test]
fn affinity_to_absent_pods_and_exhausted_anti_affinity_are_named() {
    let to_missing = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": ZONE, "labelSelector": {"matchLabels": {"app": "missing"}}}
    ]}}});
    let plan = solve(&input(vec![labelled("p", "1", "web", to_missing)], vec![three_zone_pool()]));
    assert_eq!(only_reason(&plan), "pod affinity on topology.kubernetes.io/zone: no pod matches the selector");

    let anti_zone = |kind: &str| {
        json!({"affinity": {"podAntiAffinity": {kind: [
            {"topologyKey": ZONE, "labelSelector": {"matchLabels": {"app": "web"}}}
        ]}}})
    };
    let pods: Vec<Pod> = (0..4)
        .map(|i| labelled(&format!("w-{i}"), "1", "web", anti_zone("requiredDuringSchedulingIgnoredDuringExecution")))
        .collect();
    let plan = solve(&input(pods, vec![three_zone_pool()]));
    assert_eq!(plan.claims.len(), 3);
    assert_eq!(only_reason(&plan), "pod anti-affinity on topology.kubernetes.io/zone excludes every domain");

    let preferred = json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": ZONE, "labelSelector": {"matchLabels": {"app": "web"}}}}
    ]}}});
    let pods: Vec<Pod> = (0..4).map(|i| labelled(&format!("w-{i}"), "1", "web", preferred.clone())).collect();
    let plan = solve(&input(pods, vec![three_zone_pool()]));
    assert!(plan.unplaced.is_empty(), "a preference is relaxed: {:?}", plan.unplaced);
}

#[test]
fn schedule_anyway_spread_is_relaxed_when_it_cannot_hold() {
    // One zone only, and a spread over three: ScheduleAnyway yields, DoNotSchedule still places
    // (the only eligible domain is the minimum).
    let one_zone =
        pool("default", json!({"requirements": [{"key": ZONE, "operator": "In", "values": ["us-east-1a"]}]}), GENERAL);
    let pods: Vec<Pod> =
        (0..3).map(|i| labelled(&format!("w-{i}"), "1", "web", zone_spread(1, "ScheduleAnyway"))).collect();
    let plan = solve(&input(pods, vec![one_zone]));
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
}

#[test]
fn pods_binding_the_same_host_port_never_share_a_node() {
    let port = |ip: Option<&str>| {
        json!({"containers": [{"name": "app", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}},
            "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip}]}]})
    };
    let mut pods = vec![pod("a", "100m", "100Mi", port(None)), pod("b", "100m", "100Mi", port(None))];
    pods.push(pod("c", "100m", "100Mi", port(Some("10.0.0.1"))));
    pods.push(pod("plain", "100m", "100Mi", json!({})));
    let plan = solve(&input(pods, vec![pool("default", json!({}), GENERAL)]));
    assert!(plan.unplaced.is_empty());
    assert_eq!(
        plan.claims.len(),
        3,
        "0.0.0.0 conflicts with every address: {:?}",
        plan.claims.iter().map(|c| &c.pods).collect::<Vec<_>>()
    );

    let other_ip =
        vec![pod("x", "100m", "100Mi", port(Some("10.0.0.1"))), pod("y", "100m", "100Mi", port(Some("10.0.0.2")))];
    let plan = solve(&input(other_ip, vec![pool("default", json!({}), GENERAL)]));
    assert_eq!(plan.claims.len(), 1, "different host IPs may share a node");
}

#[test]
fn volume_zones_confine_a_pod_to_its_volumes() {
    let mut batch = input(vec![pod("db", "1", "1Gi", json!({}))], vec![three_zone_pool()]);
    batch.volume_zones.insert("default/db".into(), vec!["us-east-1b".into()]);
    let plan = solve(&batch);
    assert_eq!(zone_of(&plan.claims[0]), "us-east-1b");
    batch.volume_zones.insert("default/db".into(), vec!["us-east-1f".into()]);
    let plan = solve(&batch);
    assert_eq!(
        only_reason(&plan),
        "NodePool default requires topology.kubernetes.io/zone In [us-east-1a us-east-1b us-east-1c], pod selects us-east-1f"
    );
}
