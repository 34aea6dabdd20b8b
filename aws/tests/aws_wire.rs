//! The EC2 provider on the wire: the real AWS SDK against moto's server (started per test on a
//! free loopback port), seeded like an EKS cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rafter::api::{EC2NodeClass, NodeClaim, NodePool};
use rafter::cloud::{CloudError, CloudProvider, OfferingKey};
use rafter::scheduling::instance_types::CapacityType;
use rafter_aws::{AwsCloud, AwsConfig, StaticNodeClasses};
use rafter_sim::moto::{Moto, Seeded, seed};
use serde_json::json;

const EXAMPLE: &str = include_str!("../../deploy/examples/v1/nodepool-default.yaml");

fn example() -> (NodePool, EC2NodeClass) {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(EXAMPLE).expect("example parses");
    let pool = serde_json::from_value(docs[0].clone()).expect("NodePool");
    let class = serde_json::from_value(docs[1].clone()).expect("EC2NodeClass");
    (pool, class)
}

fn claim(name: &str, uid: &str, requirements: serde_json::Value) -> NodeClaim {
    serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": name, "uid": uid, "labels": {"karpenter.sh/nodepool": "default", "intent": "apps"}},
        "spec": {"requirements": requirements,
                 "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}
    }))
    .expect("claim")
}

fn m5_large_spot() -> serde_json::Value {
    json!([
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large"]},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}
    ])
}

struct Env {
    moto: Moto,
    #[allow(dead_code)]
    seeded: Seeded,
    classes: Arc<StaticNodeClasses>,
    /// The key of a principal holding only the controller policy: moto enforces IAM, and the
    /// provider runs as this principal (the tests' own calls keep the all-allowed test key).
    controller: (String, String),
}

impl Env {
    async fn new() -> Self {
        let moto = Moto::start().expect("moto starts");
        let seeded = seed(&moto.endpoint, Some(&moto), "demo", "1.33").await.expect("seed");
        let policy = rafter_sim::moto::controller_policy("demo").expect("the controller policy");
        let controller = moto.enforce_iam(&rafter_sim::moto::action_level(&policy)).await.expect("IAM enforced");
        let (_, class) = example();
        Self { moto, seeded, classes: Arc::new(StaticNodeClasses::new([class])), controller }
    }

    fn config(&self) -> AwsConfig {
        let mut config = AwsConfig::new("demo", "us-east-1");
        config.endpoint = Some(self.moto.endpoint.clone());
        config.credentials = Some(self.controller.clone());
        config.cluster_endpoint = "https://demo.example".into();
        config
    }

    async fn cloud(&self) -> AwsCloud {
        AwsCloud::new(self.config(), self.classes.clone()).await
    }

    async fn calls(&self, action: &str) -> u64 {
        self.moto.calls().await.expect("calls").get(action).copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ec2_provider_passes_the_conformance_suite_against_moto() {
    let env = Env::new().await;
    let cloud = env.cloud().await;
    let (pool, _) = example();
    rafter::cloud::suite::run(&cloud, &pool, &|name, uid| claim(name, uid, m5_large_spot())).await;

    // The launch template: the resolved image, IMDSv2 required with one hop, the alias's user data.
    // Inspected with the tests' own key: the controller's policy grants no DescribeLaunchTemplates.
    let (ec2, _) = rafter_sim::moto::clients(&env.moto.endpoint, "us-east-1").await;
    let templates = ec2.describe_launch_templates().send().await.expect("templates");
    let names: Vec<&str> = templates.launch_templates().iter().filter_map(|t| t.launch_template_name()).collect();
    assert_eq!(names.len(), 1, "one template for one (image, configuration): {names:?}");
    assert!(names[0].starts_with("rafter/demo/"));
    let version =
        ec2.describe_launch_template_versions().launch_template_name(names[0]).send().await.expect("versions");
    let data = version.launch_template_versions()[0].launch_template_data().expect("data");
    assert_eq!(data.image_id(), env.seeded.amis.get("amd64").map(String::as_str));
    let metadata = data.metadata_options().expect("metadata options");
    assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(metadata.http_put_response_hop_limit(), Some(1));
    use base64::Engine as _;
    let user_data =
        base64::engine::general_purpose::STANDARD.decode(data.user_data().expect("user data")).expect("b64");
    let user_data = String::from_utf8(user_data).expect("utf8");
    assert!(
        user_data.contains("kind: NodeConfig") && user_data.contains("apiServerEndpoint: \"https://demo.example\"")
    );
    assert!(user_data.contains("intent=apps"), "pool labels reach the kubelet: {user_data}");

    // The instance: in a seeded subnet, with the managed instance profile and every Rafter tag.
    let listed = cloud.list().await.expect("list");
    let described = ec2.describe_instances().instance_ids(&listed[0].id).send().await.expect("describe");
    let instance = &described.reservations()[0].instances()[0];
    assert!(env.seeded.subnets.values().any(|s| Some(s.as_str()) == instance.subnet_id()));
    let tags: std::collections::BTreeMap<_, _> =
        instance.tags().iter().map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default())).collect();
    assert_eq!(tags.get("kubernetes.io/cluster/demo"), Some(&"owned"));
    assert_eq!(tags.get("karpenter.k8s.aws/ec2nodeclass"), Some(&"default"));
    assert_eq!(tags.get("Name"), Some(&"default/suite-b"));
    assert_eq!(listed[0].capacity_type, CapacityType::Spot);

    // The node class status the controller writes.
    let (_, class) = example();
    let report = cloud.node_class_report(&class).await.expect("report").expect("AWS reports");
    assert!(report.checks.iter().all(|c| c.ok), "{:?}", report.checks);
    assert_eq!(report.subnets.len(), 3);
    assert_eq!(report.amis.len(), 2, "one image per architecture");
    assert!(report.instance_profile.as_deref().is_some_and(|p| p.starts_with("demo_")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_class_whose_selectors_match_nothing_is_not_ready_naming_the_selector_and_launches_nothing() {
    let env = Env::new().await;
    let (pool, mut class) = example();
    class.spec.subnet_selector_terms[0].tags.insert("karpenter.sh/discovery".into(), "nowhere".into());
    env.classes.put(class.clone());
    let cloud = env.cloud().await;

    let report = cloud.node_class_report(&class).await.expect("report").expect("AWS reports");
    let check = |t: &str| report.checks.iter().find(|c| c.type_ == t).cloned().expect("check");
    let subnets = check("SubnetsReady");
    assert!(!subnets.ok);
    assert_eq!(subnets.reason, "SubnetsNotFound");
    assert!(
        subnets.message.contains("spec.subnetSelectorTerms[0]") && subnets.message.contains("nowhere"),
        "{subnets:?}"
    );
    let ready = check("Ready");
    assert!(!ready.ok && ready.message.contains("subnetSelectorTerms[0]"), "{ready:?}");
    assert!(check("SecurityGroupsReady").ok && check("AMIsReady").ok && check("InstanceProfileReady").ok);

    assert!(matches!(cloud.instance_types(&pool).await, Err(CloudError::InvalidConfiguration { .. })));
    let err = cloud.create(&claim("c1", "u1", m5_large_spot())).await.expect_err("no launch");
    assert!(
        matches!(&err, CloudError::InvalidConfiguration { message } if message.contains("subnetSelectorTerms[0]")),
        "{err}"
    );
    assert_eq!(env.calls("CreateFleet").await, 0, "no launch was attempted");
    assert_eq!(env.calls("CreateLaunchTemplate").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_error_on_the_cheapest_offering_launches_the_next_one_within_a_second() {
    let env = Env::new().await;
    let cloud = env.cloud().await;
    let (pool, _) = example();
    cloud.instance_types(&pool).await.expect("warm catalog");
    // Spot prices are equal in moto, so the cheapest offering is the first zone.
    env.moto.fleet_error("InsufficientInstanceCapacity", "m5.large", Some("us-east-1a"), 100).await.expect("fault");

    let started = Instant::now();
    let instance = cloud.create(&claim("c1", "u1", m5_large_spot())).await.expect("launch");
    let took = started.elapsed();
    assert_eq!((instance.instance_type.as_str(), instance.zone.as_str()), ("m5.large", "us-east-1b"));
    assert!(took < Duration::from_secs(1), "the next offering was launched after {took:?}");
    eprintln!("capacity error on m5.large/us-east-1a spot: launched m5.large/us-east-1b after {took:?}");

    // The exhausted offering is avoided for the next claims: not offered to the solver, not asked for.
    let types = cloud.instance_types(&pool).await.expect("types");
    let m5 = types.iter().find(|t| t.name == "m5.large").expect("m5.large");
    let offering = |zone: &str| m5.offerings.iter().find(|o| o.zone == zone && o.capacity_type == CapacityType::Spot);
    assert_eq!(offering("us-east-1a").map(|o| o.available), Some(false));
    assert_eq!(offering("us-east-1b").map(|o| o.available), Some(true));

    // When every offering a claim allows fails, the claim fails naming them, and they are cached.
    env.moto.fleet_error("InsufficientInstanceCapacity", "m5.large", None, 100).await.expect("fault");
    let err = cloud.create(&claim("c2", "u2", m5_large_spot())).await.expect_err("no capacity");
    let CloudError::InsufficientCapacity { offerings } = err else { panic!("{err}") };
    let spot = |zone: &str| OfferingKey {
        instance_type: "m5.large".into(),
        zone: zone.into(),
        capacity_type: CapacityType::Spot,
    };
    assert!(offerings.contains(&spot("us-east-1b")) && offerings.contains(&spot("us-east-1c")), "{offerings:?}");
    let fleets = env.calls("CreateFleet").await;
    let err = cloud.create(&claim("c3", "u3", m5_large_spot())).await.expect_err("still none");
    assert!(matches!(err, CloudError::InsufficientCapacity { .. }));
    assert_eq!(env.calls("CreateFleet").await, fleets, "cached offerings are not asked for again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_finds_the_instance_a_dead_leader_launched_instead_of_launching_again() {
    let env = Env::new().await;
    let old_leader = env.cloud().await;
    let first = old_leader.create(&claim("c1", "u1", m5_large_spot())).await.expect("launch");
    drop(old_leader);
    // The claim never got its provider ID; the new leader has no memory of the launch.
    let new_leader = env.cloud().await;
    let again = new_leader.create(&claim("c1", "u1", m5_large_spot())).await.expect("relaunch");
    assert_eq!(again.id, first.id);
    assert_eq!(env.calls("CreateFleet").await, 1, "one fleet call in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_identical_claims_costs_one_fleet_call_and_each_instance_carries_its_claim() {
    let env = Env::new().await;
    let cloud = Arc::new(env.cloud().await);
    let (pool, _) = example();
    cloud.instance_types(&pool).await.expect("warm catalog");
    // One plan's claims, as the Launcher writes them: one launch group.
    let launches: Vec<_> = (0..20)
        .map(|i| {
            let cloud = cloud.clone();
            tokio::spawn(async move { cloud.create(&grouped_claim(&format!("c{i}"), &format!("u{i}"), "plan")).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for (i, l) in launches.into_iter().enumerate() {
        let instance = l.await.expect("task").expect("launch");
        assert_eq!(instance.node_claim(), Some(format!("c{i}").as_str()));
        assert_eq!(instance.launch_group(), Some("plan"), "tagged with its group at launch");
        ids.insert(instance.id);
    }
    assert_eq!(ids.len(), 20, "one instance per claim");
    let calls = env.moto.calls().await.expect("calls");
    assert!(calls.get("CreateFleet").copied().unwrap_or(0) <= 2, "merged: {calls:?}");
    let listed = cloud.list().await.expect("list");
    for i in 0..20 {
        let name = format!("c{i}");
        assert_eq!(
            listed.iter().filter(|x| x.node_claim() == Some(name.as_str())).count(),
            1,
            "{name} is tagged in EC2"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_authorization_errors_stop_launches_and_show_on_the_node_class() {
    let env = Env::new().await;
    let cloud = env.cloud().await;
    env.moto.fault("CreateFleet", "RequestLimitExceeded", 503, 2).await.expect("fault");
    cloud.create(&claim("c1", "u1", m5_large_spot())).await.expect("launched after retries");
    assert_eq!(env.calls("CreateFleet").await, 3, "two throttled attempts, then success");

    env.moto.fault("CreateFleet", "UnauthorizedOperation", 403, 1).await.expect("fault");
    let err = cloud.create(&claim("c2", "u2", m5_large_spot())).await.expect_err("refused");
    assert!(
        matches!(&err, CloudError::InvalidConfiguration { message } if message.contains("UnauthorizedOperation")),
        "{err}"
    );
    let fleets = env.calls("CreateFleet").await;
    let err = cloud.create(&claim("c3", "u3", m5_large_spot())).await.expect_err("stopped");
    assert!(matches!(err, CloudError::InvalidConfiguration { .. }));
    assert_eq!(env.calls("CreateFleet").await, fleets, "no launch while the class is blocked");
    let (_, class) = example();
    let report = cloud.node_class_report(&class).await.expect("report").expect("AWS reports");
    let ready = report.checks.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert!(
        !ready.ok && ready.reason == "LaunchConfigurationError" && ready.message.contains("UnauthorizedOperation"),
        "{ready:?}"
    );
}

/// A leader that dies right after its `kill_at`-th launch-path EC2 call took effect: that call's
/// answer never arrives (EC2 acted on it), and every later call of the leader fails before it is
/// sent. The catalog and discovery reads (`Describe*` but `DescribeInstances`) are not counted:
/// dying during one leaves nothing behind, and counting their pages would only slow the test.
#[derive(Debug, Clone)]
struct DiesAfter {
    kill_at: u64,
    calls: Arc<AtomicU64>,
    dead: Arc<AtomicBool>,
}

impl aws_sdk_ec2::config::Intercept for DiesAfter {
    fn name(&self) -> &'static str {
        "DiesAfter"
    }

    fn read_before_execution(
        &self,
        _: &aws_sdk_ec2::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err("the leader is dead".into());
        }
        Ok(())
    }

    fn read_after_execution(
        &self,
        _: &aws_sdk_ec2::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _: &aws_sdk_ec2::config::RuntimeComponents,
        cfg: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        let operation = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>().map(|m| m.name());
        if operation.is_some_and(|op| op.starts_with("Describe") && op != "DescribeInstances") {
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.kill_at {
            self.dead.store(true, Ordering::SeqCst);
            return Err("the leader died before this answer arrived".into());
        }
        Ok(())
    }
}

fn grouped_claim(name: &str, uid: &str, group: &str) -> NodeClaim {
    let mut claim = claim(name, uid, m5_large_spot());
    claim.metadata.annotations =
        Some(std::collections::BTreeMap::from([(rafter::cloud::LAUNCH_GROUP.to_string(), group.to_string())]));
    claim
}

/// One leader's attempt at launching the claims together (as one plan does), dying after its
/// `kill_at`-th EC2 call (never, for `u64::MAX`); the EC2 calls it made and what each launch gave.
async fn leader_launches(
    env: &Env,
    cluster: &str,
    kill_at: u64,
    claims: &[NodeClaim],
) -> (u64, Vec<Result<rafter::cloud::Instance, CloudError>>) {
    let dies = DiesAfter { kill_at, calls: Default::default(), dead: Default::default() };
    let mut config = env.config();
    config.cluster = cluster.into();
    config.ec2_interceptors = vec![aws_sdk_ec2::config::SharedInterceptor::new(dies.clone())];
    let cloud = Arc::new(AwsCloud::new(config, env.classes.clone()).await);
    let launches: Vec<_> = claims
        .iter()
        .cloned()
        .map(|c| {
            let cloud = cloud.clone();
            tokio::spawn(async move { cloud.create(&c).await })
        })
        .collect();
    let mut results = Vec::new();
    for l in launches {
        results.push(l.await.expect("task"));
    }
    (dies.calls.load(Ordering::SeqCst), results)
}

/// The instances of a cluster EC2 runs, by the claim each is tagged for (`None`: untagged).
async fn live_by_claim(env: &Env, cluster: &str) -> Vec<(String, Option<String>)> {
    let mut config = env.config();
    config.cluster = cluster.into();
    let cloud = AwsCloud::new(config, env.classes.clone()).await;
    let mut live: Vec<(String, Option<String>)> = cloud
        .list()
        .await
        .expect("list")
        .into_iter()
        .filter(|i| matches!(i.state, rafter::cloud::InstanceState::Pending | rafter::cloud::InstanceState::Running))
        .map(|i| (i.id.clone(), i.node_claim().map(str::to_string)))
        .collect();
    live.sort();
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_after_any_cloud_call_of_a_merged_launch_leaves_no_instance_without_its_claim() {
    let env = Env::new().await;
    let claims: Vec<NodeClaim> =
        (0..3).map(|i| grouped_claim(&format!("c{i}"), &format!("uid-{i}"), "plan-1")).collect();
    // How many launch-path EC2 calls one undisturbed leader makes for the three claims (lookups,
    // the launch template, the merged fleet, its claim tags, the describe after it).
    let (steps, results) = leader_launches(&env, "undisturbed", u64::MAX, &claims).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(live_by_claim(&env, "undisturbed").await.len(), 3);
    assert!(env.calls("CreateFleet").await == 1, "the three claims share one fleet call");
    assert!(steps >= 5, "{steps} EC2 calls");

    // At each step, kill a leader there and the next one there too, then let a third finish; and
    // one chain of a leader change after every step in turn.
    let chains: Vec<Vec<u64>> = (1..=steps).map(|k| vec![k, k]).chain([(1..=steps).collect()]).collect();
    for kills in chains {
        let cluster = format!("kill-{}", kills.iter().map(u64::to_string).collect::<Vec<_>>().join("-"));
        {
            for &kill_at in &kills {
                leader_launches(&env, &cluster, kill_at, &claims).await;
            }
            let (_, last) = leader_launches(&env, &cluster, u64::MAX, &claims).await;
            let ids: Vec<String> = last.into_iter().map(|r| r.expect("the last leader launches").id).collect();
            let live = live_by_claim(&env, &cluster).await;
            assert_eq!(live.len(), 3, "leaders killed after calls {kills:?}: {live:?} (the last leader got {ids:?})");
            for (i, id) in ids.iter().enumerate() {
                assert!(
                    live.contains(&(id.clone(), Some(format!("c{i}")))),
                    "leaders killed after calls {kills:?}: c{i} has {id}, tagged for it ({live:?})"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_only_reads_iam_and_a_leader_that_lost_an_iam_race_launches_on_its_next_try() {
    let env = Env::new().await;
    let (pool, _) = example();
    // A standby warms its catalog: instance types without the instance profile, which it never makes.
    let standby = env.cloud().await;
    let types = standby.instance_types(&pool).await.expect("a standby's instance types");
    assert!(!types.is_empty());
    for write in ["CreateInstanceProfile", "AddRoleToInstanceProfile", "RemoveRoleFromInstanceProfile"] {
        assert_eq!(env.calls(write).await, 0, "a standby called {write}");
    }
    // The leader loses the race another replica won (IAM allows one role per profile).
    let leader = env.cloud().await;
    env.moto.fault("AddRoleToInstanceProfile", "LimitExceeded", 409, 1).await.expect("fault");
    let first = leader.create(&claim("c1", "u1", m5_large_spot())).await;
    assert!(matches!(first, Err(CloudError::InvalidConfiguration { .. })), "{first:?}");
    let second = leader.create(&claim("c1", "u1", m5_large_spot())).await.expect("the next try launches");
    assert_eq!(second.node_claim(), Some("c1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_one_group_launched_in_two_waves_never_share_an_instance() {
    let env = Env::new().await;
    let cloud = Arc::new(env.cloud().await);
    let (pool, _) = example();
    cloud.instance_types(&pool).await.expect("warm catalog");
    let shape = |t: &str| {
        json!([
            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [t]},
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}
        ])
    };
    // Claims of one group in two waves: the second wave looks for instances to adopt (the
    // dead-leader path) while the first wave's merged fleet is being tagged — it may not take them.
    let mut launches = Vec::new();
    for i in 0..12 {
        if i == 6 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let cloud = cloud.clone();
        let mut c = claim(&format!("c{i}"), &format!("u{i}"), shape("m5.large"));
        c.metadata.annotations =
            Some(std::collections::BTreeMap::from([(rafter::cloud::LAUNCH_GROUP.to_string(), "plan".to_string())]));
        launches.push(tokio::spawn(async move { cloud.create(&c).await }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for l in launches {
        ids.insert(l.await.expect("task").expect("launch").id);
    }
    assert_eq!(ids.len(), 12, "twelve claims, twelve instances");
    let listed = cloud.list().await.expect("list");
    for i in 0..12 {
        let name = format!("c{i}");
        assert_eq!(listed.iter().filter(|x| x.node_claim() == Some(name.as_str())).count(), 1, "{name} is tagged once");
    }
}
