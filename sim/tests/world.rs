//! The whole test world: `inflate` applied through kube-rs and scaled to 20 replicas becomes Running pods
//! on nodes launched through the fake cloud. A small harness stands in for the autoscaler: it launches a
//! NodeClaim when pods are unschedulable and lifts the `karpenter.sh/unregistered` taint when its node
//! registers, which is what Rafter's launcher will do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::CloudProvider;
use rafter::cloud::fake::{FakeCloud, FakeConfig};
use rafter_sim::nodes::{FakeFeed, NodeSimConfig};
use rafter_sim::{Simulator, nodes, scheduler, workloads};
use serde_json::{Value, json};

fn inflate() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/workloads/inflate.yaml"))
            .expect("inflate example");
    serde_saphyr::from_str(&text).expect("inflate parses")
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in rafter::api::crds::all() {
        api.create(&PostParams::default(), &crd).await.expect("CRD installs");
    }
}

fn unschedulable(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
        && pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
            c.iter().any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"))
        })
}

/// One pass of the stand-in autoscaler.
async fn autoscale(client: &Client, cloud: &FakeCloud, launched: &mut u32, last_launch: &mut Option<Instant>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<NodeClaim> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await.expect("nodes").items {
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "karpenter.sh/unregistered"));
        if tainted {
            let kept: Vec<_> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.key != "karpenter.sh/unregistered")
                .collect();
            let patch = json!({"spec": {"taints": kept}, "metadata": {"labels": {"karpenter.sh/registered": "true"}}});
            nodes.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await.expect("taint lifted");
        }
    }
    let waiting = pods
        .list(&ListParams::default().labels("app=inflate"))
        .await
        .expect("pods")
        .items
        .iter()
        .filter(|p| unschedulable(p))
        .count();
    let in_flight =
        cloud.running().len() as u32 > nodes.list(&ListParams::default()).await.expect("nodes").items.len() as u32;
    // Like a batch window: capacity launched a moment ago is given time to take its pods.
    let settling = last_launch.is_some_and(|at| at.elapsed() < Duration::from_secs(2));
    if waiting == 0 || in_flight || settling {
        return;
    }
    *launched += 1;
    *last_launch = Some(Instant::now());
    let claim: NodeClaim = serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": format!("default-{launched}"), "labels": {"karpenter.sh/nodepool": "default"}},
        "spec": {
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.xlarge"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}
            ],
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}
        }
    }))
    .expect("claim");
    launch(&claims, cloud, claim).await;
}

async fn launch(claims: &Api<NodeClaim>, cloud: &FakeCloud, claim: NodeClaim) {
    let claim = claims.create(&PostParams::default(), &claim).await.expect("claim created");
    cloud.create(&claim).await.expect("instance launched");
}

fn condition(node: &Node, kind: &str) -> Option<String> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == kind).map(|c| c.status.clone())
}

fn tainted(node: &Node, key: &str) -> bool {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == key))
}

async fn until_node(nodes: &Api<Node>, what: &str, check: impl Fn(&Node) -> bool) -> Node {
    let started = Instant::now();
    loop {
        if let Some(node) = nodes.list(&ListParams::default()).await.expect("nodes").items.into_iter().find(&check) {
            return node;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real cluster's node lifecycle: kube-apiserver taints a new Node not-ready, the lifecycle
/// controller lifts the taint once the kubelet reports Ready, and marks the Node Unknown and
/// unreachable when its kubelet goes silent for the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_not_ready_until_its_kubelet_says_so_and_unreachable_once_it_goes_silent() {
    let sim = Simulator::start().await.expect("simulator");
    let client = sim.client();
    install_crds(&client).await;
    let cloud = Arc::new(FakeCloud::new(FakeConfig::default()).expect("fake cloud"));
    let kubelets = NodeSimConfig {
        ready_delay: Duration::from_secs(2),
        heartbeat: Duration::from_millis(300),
        ..NodeSimConfig::default()
    };
    let _nodes = nodes::spawn(client.clone(), Arc::new(FakeFeed(cloud.clone())), kubelets);
    let lifecycle =
        rafter_sim::lifecycle::LifecycleConfig { grace: Duration::from_secs(3), period: Duration::from_millis(200) };
    let _lifecycle = rafter_sim::lifecycle::spawn(client.clone(), lifecycle);
    let claim: NodeClaim = serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": "default-1", "labels": {"karpenter.sh/nodepool": "default"}},
        "spec": {
            "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large"]}],
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}
        }
    }))
    .expect("claim");
    launch(&Api::all(client.clone()), &cloud, claim).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = until_node(&nodes, "the node registers", |_| true).await;
    assert_eq!(condition(&node, "Ready").as_deref(), Some("False"), "the CNI is not up yet");
    assert!(tainted(&node, "node.kubernetes.io/not-ready"), "kube-apiserver taints a new node");
    let node = until_node(&nodes, "the node is Ready and untainted", |n| {
        condition(n, "Ready").as_deref() == Some("True") && !tainted(n, "node.kubernetes.io/not-ready")
    })
    .await;
    let silence = json!({"metadata": {"annotations": {rafter_sim::nodes::HEARTBEAT: "stopped"}}});
    nodes.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(silence)).await.expect("annotated");
    let node = until_node(&nodes, "the silent node is Unknown and unreachable", |n| {
        condition(n, "Ready").as_deref() == Some("Unknown") && tainted(n, "node.kubernetes.io/unreachable")
    })
    .await;
    assert!(!tainted(&node, "node.kubernetes.io/not-ready"), "unreachable replaces not-ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflate_scaled_to_20_runs_on_nodes_launched_through_the_fake_cloud() {
    let sim = Simulator::start().await.expect("simulator");
    let client = sim.client();
    install_crds(&client).await;
    let cloud = Arc::new(FakeCloud::new(FakeConfig::default()).expect("fake cloud"));
    let _workloads = workloads::spawn(client.clone());
    let _scheduler = scheduler::spawn(client.clone());
    let _nodes = nodes::spawn(client.clone(), Arc::new(FakeFeed(cloud.clone())), NodeSimConfig::default());
    let _lifecycle = rafter_sim::lifecycle::spawn(client.clone(), Default::default());

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .patch("inflate", &PatchParams::apply("kubectl").force(), &Patch::Apply(inflate()))
        .await
        .expect("inflate applied");
    deployments
        .patch("inflate", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 20}})))
        .await
        .expect("scaled");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let mut launched = 0;
    let mut last_launch = None;
    let running = loop {
        autoscale(&client, &cloud, &mut launched, &mut last_launch).await;
        let list = pods.list(&ListParams::default().labels("app=inflate")).await.expect("pods").items;
        let running: Vec<Pod> = list
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        if running.len() == 20 {
            break running;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "only {} of 20 pods running after 60s", running.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(launched, 1, "20 pods of 100m/256Mi fit one m5.xlarge");
    let instances = cloud.running();
    assert_eq!(instances.len(), 1);
    let nodes: Vec<Node> = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.expect("nodes").items;
    assert_eq!(nodes.len(), 1);
    let node = &nodes[0];
    assert_eq!(node.spec.as_ref().and_then(|s| s.provider_id.as_deref()), Some(instances[0].provider_id.as_str()));
    assert_eq!(node.labels().get("node.kubernetes.io/instance-type").map(String::as_str), Some("m5.xlarge"));
    assert_eq!(node.labels().get("karpenter.sh/nodepool").map(String::as_str), Some("default"));
    for pod in &running {
        assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(node.name_any().as_str()));
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "{} is Running and Ready", pod.name_any());
    }
    let events: Vec<Event> = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields("reason=FailedScheduling"))
        .await
        .expect("events")
        .items;
    assert!(!events.is_empty(), "pods were reported unschedulable before the node came");
    let messages: Vec<&str> = events.iter().filter_map(|e| e.message.as_deref()).collect();
    assert!(messages.iter().any(|m| m.starts_with("0/0 nodes are available")), "{messages:?}");

    let deployment_ready = loop {
        let d = deployments.get("inflate").await.expect("deployment");
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready == 20 || started.elapsed() > Duration::from_secs(60) {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(deployment_ready, 20);

    deployments
        .patch("inflate", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
        .await
        .expect("scaled down");
    let scale_down = Instant::now();
    loop {
        let left = pods.list(&ListParams::default().labels("app=inflate")).await.expect("pods").items.len();
        if left == 0 {
            break;
        }
        assert!(scale_down.elapsed() < Duration::from_secs(30), "{left} pods left after scaling to 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The instance goes away: its node and the node's pods go with it.
    cloud.terminate_instance(&instances[0].id).expect("terminated");
    let gone = Instant::now();
    while !Api::<Node>::all(client.clone()).list(&ListParams::default()).await.expect("nodes").items.is_empty() {
        assert!(gone.elapsed() < Duration::from_secs(30), "the node outlived its instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
