//! End to end on EC2 as moto emulates it: the simulator's API server, Rafter with the EC2
//! provider, and simulated kubelets that follow moto's instances. The inflate scenario goes from
//! pending pods to Running pods and back to zero, with the instances terminated in moto.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use rafter::api::EC2NodeClass;
use rafter_actors::world::{INFLATE, NODEPOOL_DEFAULT, World, WorldConfig};
use rafter_aws::AwsConfig;
use rafter_sim::moto::{Moto, seed};

fn delta(after: &BTreeMap<(String, String), u64>, before: &BTreeMap<(String, String), u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|((_, op), n)| {
            let d = n - before.iter().find(|((_, o), _)| o == op).map(|(_, b)| *b).unwrap_or(0);
            (d > 0).then(|| (op.clone(), d))
        })
        .collect()
}

/// moto seeded like an EKS cluster, with `deploy/cloudformation/rafter.yaml` deployed and IAM
/// enforced, and a world whose replicas use it as EC2 with the credentials of a principal holding
/// only the controller policy (at the action level moto can enforce).
async fn moto_world() -> (Moto, World) {
    let moto = Moto::start().expect("moto");
    seed(&moto.endpoint, Some(&moto), "demo", "1.33").await.expect("seed");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/cloudformation/rafter.yaml"))
        .expect("the IAM template");
    let mut template: serde_json::Value = serde_saphyr::from_str(&text).expect("the template is YAML");
    // moto encodes a ManagedPolicy's document again when it is a string (CloudFormation takes the
    // string as JSON), so moto gets the document as CloudFormation would render it.
    let policy = rafter_sim::moto::controller_policy("demo").expect("the controller policy");
    template["Resources"]["ControllerPolicy"]["Properties"]["PolicyDocument"] = policy.clone();
    let params = serde_json::json!({"StackName": "rafter-demo", "TemplateBody": template.to_string(),
        "Parameters": [{"ParameterKey": "ClusterName", "ParameterValue": "demo"}],
        "Capabilities": ["CAPABILITY_NAMED_IAM"]});
    moto.aws("cloudformation", "create_stack", params).await.expect("the IAM stack deploys in moto");
    let policies = moto.aws("iam", "list_policies", serde_json::json!({"Scope": "Local"})).await.expect("policies");
    assert!(policies.to_string().contains("RafterControllerPolicy-demo"), "{policies}");
    let (key, secret) = moto.enforce_iam(&rafter_sim::moto::action_level(&policy)).await.expect("IAM enforced");
    let mut aws = AwsConfig::new("demo", "us-east-1");
    aws.endpoint = Some(moto.endpoint.clone());
    aws.credentials = Some((key, secret));
    aws.cluster_endpoint = "https://demo.example".into();
    let world = World::start(WorldConfig { aws: Some(aws), ..WorldConfig::default() }).await.expect("world");
    (moto, world)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflate_scales_to_100_on_moto_instances_and_back_to_zero_with_every_instance_terminated() {
    let (moto, world) = moto_world().await;
    // moto prices every spot offering at $0.00001, which would pack everything onto the largest
    // type; on-demand uses the real list prices, so the plan looks like production's.
    let pool = NODEPOOL_DEFAULT.replace(r#"values: ["spot", "on-demand"]"#, r#"values: ["on-demand"]"#);
    assert_ne!(pool, NODEPOOL_DEFAULT);
    world.apply(&pool).await.expect("pool");
    world.apply(INFLATE).await.expect("inflate");
    let replica = world.replica(world.quick_config("rafter-0")).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");

    // The node class is resolved and Ready before anything is launched.
    let classes: Api<EC2NodeClass> = Api::all(world.client.clone());
    world
        .wait_for("EC2NodeClass Ready", Duration::from_secs(60), || async {
            let class = classes.get("default").await?;
            Ok(class.status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
        })
        .await
        .expect("node class ready");
    let class = classes.get("default").await.expect("class");
    let status = class.status.expect("status");
    assert_eq!(status.subnets.len(), 3);
    assert!(status.instance_profile.is_some());
    // The catalog is warm (types, offerings and spot prices fetched) before the scale-up is counted.
    let aws = world.aws.clone().expect("EC2 provider");
    world
        .wait_for("the catalog", Duration::from_secs(60), || async {
            Ok(aws.api_calls().keys().any(|(_, op)| op == "DescribeSpotPriceHistory"))
        })
        .await
        .expect("catalog warm");
    tokio::time::sleep(Duration::from_secs(1)).await;

    eprintln!("before the scale-up (startup, node class, catalog): {:?}", aws.api_calls());
    let before_up = aws.api_calls();
    world.scale(100).await.expect("scale");
    let took = world
        .wait_for("100 pods running", Duration::from_secs(180), || async { Ok(world.running().await? == 100) })
        .await
        .expect("all pods run");
    let up = delta(&aws.api_calls(), &before_up);
    let instances = world.instances().await.expect("instances");
    let nodes = world.nodes().await.expect("nodes");
    let claims = world.claims().await.expect("claims");
    assert_eq!(instances.len(), nodes.len(), "one node per moto instance");
    assert_eq!(claims.len(), instances.len(), "one instance per claim");
    for claim in &claims {
        let name = claim.metadata.name.as_deref().unwrap_or_default();
        assert_eq!(instances.iter().filter(|i| i.node_claim() == Some(name)).count(), 1, "{name} has one instance");
    }
    eprintln!("scale-up: {} pods Running on {} instances in {took:?}; EC2 calls {up:?}", 100, instances.len());

    // An instance tagged for this cluster that no claim owns (a launch whose claim was lost) is
    // garbage-collected after the grace period.
    let seeded_ami = aws.clients().ec2.describe_images().owners("amazon").send().await.expect("images");
    let ami = seeded_ami.images().iter().find_map(|i| i.image_id()).expect("an image").to_string();
    let orphan = aws
        .clients()
        .ec2
        .run_instances()
        .image_id(ami)
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(aws_sdk_ec2::types::Tag::builder().key("kubernetes.io/cluster/demo").value("owned").build())
                .tags(aws_sdk_ec2::types::Tag::builder().key("karpenter.sh/nodepool").value("default").build())
                .build(),
        )
        .send()
        .await
        .expect("orphan launched");
    let orphan = orphan.instances()[0].instance_id().expect("id").to_string();
    world
        .wait_for("the orphan collected", Duration::from_secs(30), || async {
            let collected = replica.ctx.metrics.encode().contains("rafter_instances_garbage_collected_total 1");
            Ok(collected && !world.instances().await?.iter().any(|i| i.id == orphan))
        })
        .await
        .expect("orphan terminated by garbage collection");

    let before_down = aws.api_calls();
    world.scale(0).await.expect("scale down");
    world
        .wait_for("pods gone", Duration::from_secs(30), || async { Ok(world.pods().await?.is_empty()) })
        .await
        .expect("pods gone");
    tokio::time::sleep(Duration::from_secs(1)).await;
    world.clock.advance(Duration::from_secs(60));
    let took = world
        .wait_for("everything gone", Duration::from_secs(120), || async {
            Ok(world.nodes().await?.is_empty()
                && world.instances().await?.is_empty()
                && world.claims().await?.is_empty())
        })
        .await
        .expect("nodes, instances and claims gone");
    let down = delta(&aws.api_calls(), &before_down);
    eprintln!("scale-down: all gone {took:?} after the clock passed consolidateAfter; EC2 calls {down:?}");
    // In moto, every instance Rafter launched is terminated.
    let all = world.provider.list().await.expect("list");
    assert!(all.is_empty(), "no live instance is left: {all:?}");
    assert!(down.get("TerminateInstances").copied().unwrap_or(0) >= 1);
    let metrics = replica.ctx.metrics.encode();
    assert!(metrics.contains("rafter_cloud_api_calls_total{service=\"EC2\",operation=\"CreateFleet\"}"), "{metrics}");
    replica.shutdown().await;
    assert_nothing_denied(&moto).await;
}

/// Every call Rafter made was allowed by the controller policy.
async fn assert_nothing_denied(moto: &Moto) {
    let denied = moto.denied().await.expect("denials");
    assert!(denied.is_empty(), "the controller policy refused Rafter: {denied:#?}");
    let calls = moto.calls().await.expect("calls");
    eprintln!("calls moto authorized under the controller policy: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_cannot_launch_for_its_configuration_is_kept_and_says_why_instead_of_being_deleted() {
    let (moto, world) = moto_world().await;
    world.apply(NODEPOOL_DEFAULT).await.expect("pool");
    // A previous leader's claim whose node class has since gone (or whose profile lost a race):
    // its launch may have reached EC2, so deleting it could orphan an instance.
    let claim: rafter::api::NodeClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": "default-kept1", "labels": {"karpenter.sh/nodepool": "default"},
                     "finalizers": ["karpenter.sh/termination"]},
        "spec": {"requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large"]}],
                 "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gone"}}
    }))
    .expect("claim");
    let claims: Api<rafter::api::NodeClaim> = Api::all(world.client.clone());
    claims.create(&Default::default(), &claim).await.expect("claim created");
    let replica = world.replica(world.quick_config("rafter-0")).await.expect("replica");
    world.wait_for("leadership", Duration::from_secs(10), || async { Ok(replica.is_leader()) }).await.expect("leads");
    let said = world
        .wait_for("the claim's Launched condition", Duration::from_secs(20), || async {
            let c = claims.get("default-kept1").await?;
            Ok(c.status.is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Launched"
                        && c.status == "False"
                        && c.reason == "InvalidConfiguration"
                        && c.message.contains("EC2NodeClass \"gone\" does not exist")
                })
            }))
        })
        .await;
    assert!(said.is_ok(), "{:?}", claims.get("default-kept1").await.map(|c| c.status));
    // Several reconciles later it is still there, not deleted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = claims.get("default-kept1").await.expect("the claim is kept");
    assert!(kept.metadata.deletion_timestamp.is_none());
    replica.shutdown().await;
    assert_nothing_denied(&moto).await;
}
