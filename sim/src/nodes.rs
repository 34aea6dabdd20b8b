//! NodeSim, a KWOK-like kubelet for every instance the cloud runs: it registers the Node (provider ID,
//! labels, capacity and allocatable from the catalog, the NodeClaim's taints and startup taints), keeps
//! its Lease and Ready condition fresh, removes startup taints after a delay, runs the pods bound to it,
//! finishes their graceful deletion, and removes the Node and its pods when the instance is gone.
//!
//! It follows instances through [`InstanceFeed`]: in process for the fake cloud, or by polling
//! `DescribeInstances` of an EC2 emulator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rafter::api::labels;
use rafter::api::nodeclaim::NodeClaim;
use rafter::cloud::fake::FakeCloud;
use rafter::cloud::{CloudError, CloudProvider, Instance, InstanceState, TAG_NODEPOOL, parse_provider_id};
use rafter::scheduling::instance_types::InstanceType;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::components::{self, Component};

/// Annotation on every Node NodeSim registered, whose value names the NodeSim (its `owner`), so each
/// only ever removes its own: several can serve one API server, each following its own cloud.
pub const SIMULATED: &str = "sim.rafter.dev/node";

/// Node annotation: `stopped` makes its kubelet stop renewing its Lease and posting status, as a
/// kubelet cut off from the API server does; the node lifecycle controller then marks it Unknown.
pub const HEARTBEAT: &str = "sim.rafter.dev/heartbeat";

/// The kubelet's Ready condition: Ready, or not ready while the network plugin starts.
fn ready_condition(ready: bool, now: &str) -> Value {
    if ready {
        json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now})
    } else {
        json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized", "lastHeartbeatTime": now, "lastTransitionTime": now})
    }
}

/// Pod annotation: how many seconds the pod's containers take to stop after SIGTERM (default 0).
/// Such a pod stays Terminating that long, or until its grace period ends and the kubelet kills it,
/// whichever is first; so a drain that shortens grace periods shows in how long pods take to go.
pub const SHUTDOWN_SECONDS: &str = "sim.rafter.dev/shutdown-seconds";

/// When a terminating pod is gone: its containers stopped by themselves, or its grace ran out.
fn stopped(pod: &Pod, terminating_for: Duration, now: jiff::Timestamp) -> bool {
    let shutdown = pod
        .annotations()
        .get(SHUTDOWN_SECONDS)
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::ZERO);
    let grace_over = pod.metadata.deletion_timestamp.as_ref().is_none_or(|t| t.0 <= now);
    terminating_for >= shutdown || grace_over
}

/// Where NodeSim learns which instances run.
#[async_trait]
pub trait InstanceFeed: Send + Sync + 'static {
    async fn instances(&self) -> Result<Vec<Instance>, CloudError>;
    /// Waits until instances may have changed, at most `period`.
    async fn wait(&self, period: Duration);
    /// The scheduling view of an instance type (capacity and allocatable).
    fn instance_type(&self, name: &str) -> Option<InstanceType>;
}

/// The fake cloud, followed in process: woken by its launches and by its timed transitions.
#[derive(Debug, Clone)]
pub struct FakeFeed(pub Arc<FakeCloud>);

#[async_trait]
impl InstanceFeed for FakeFeed {
    async fn instances(&self) -> Result<Vec<Instance>, CloudError> {
        self.0.list().await
    }

    async fn wait(&self, period: Duration) {
        let mut changes = self.0.changes();
        changes.mark_unchanged();
        let deadline = self
            .0
            .next_transition()
            .map(|t| t.min(tokio::time::Instant::now() + period))
            .unwrap_or(tokio::time::Instant::now() + period);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }

    fn instance_type(&self, name: &str) -> Option<InstanceType> {
        self.0.instance_type(name).cloned()
    }
}

/// Any `CloudProvider` followed by polling `list()` (for an EC2 emulator: `DescribeInstances`), with
/// instance types from the shipped catalog.
#[derive(Debug, Clone)]
pub struct PollingFeed {
    pub cloud: Arc<dyn CloudProvider>,
    pub types: Arc<HashMap<String, InstanceType>>,
    pub period: Duration,
}

impl PollingFeed {
    pub fn new(
        cloud: Arc<dyn CloudProvider>,
        period: Duration,
    ) -> Result<Self, rafter::scheduling::catalog::CatalogError> {
        let kubelet = rafter::scheduling::instance_types::KubeletSettings::default();
        let types = rafter::scheduling::catalog::us_east_1()?
            .iter()
            .map(|spec| (spec.name.clone(), InstanceType::new(spec, &kubelet, |_| None)))
            .collect();
        Ok(Self { cloud, types: Arc::new(types), period })
    }
}

#[async_trait]
impl InstanceFeed for PollingFeed {
    async fn instances(&self) -> Result<Vec<Instance>, CloudError> {
        self.cloud.list().await
    }

    async fn wait(&self, period: Duration) {
        tokio::time::sleep(self.period.min(period)).await;
    }

    fn instance_type(&self, name: &str) -> Option<InstanceType> {
        self.types.get(name).cloned()
    }
}

/// NodeSim's timings.
#[derive(Debug, Clone)]
pub struct NodeSimConfig {
    /// From a pod's binding until it runs.
    pub pod_start_delay: Duration,
    /// From registration until the startup taints are removed.
    pub startup_taint_delay: Duration,
    /// From registration until the kubelet reports Ready (before: NotReady, as while a CNI starts).
    pub ready_delay: Duration,
    /// How often the node Lease is renewed.
    pub heartbeat: Duration,
    /// The kubelet version the nodes report.
    pub kubelet_version: String,
    /// This NodeSim's name, the value of [`SIMULATED`] on the Nodes it registers.
    pub owner: String,
    /// Instance types whose kubelets never report Ready (a broken image for that type), shared so a
    /// test can break a type after the world started.
    pub never_ready: Arc<std::sync::RwLock<std::collections::BTreeSet<String>>>,
}

impl NodeSimConfig {
    /// Whether a node of this instance type never becomes Ready.
    fn broken(&self, instance_type: &str) -> bool {
        self.never_ready.read().map(|s| s.contains(instance_type)).unwrap_or(false)
    }

    /// Whether a new node of this type is Ready at once.
    fn ready_at_once(&self, instance_type: &str) -> bool {
        self.ready_delay.is_zero() && !self.broken(instance_type)
    }
}

impl Default for NodeSimConfig {
    fn default() -> Self {
        Self {
            pod_start_delay: Duration::ZERO,
            startup_taint_delay: Duration::ZERO,
            ready_delay: Duration::ZERO,
            heartbeat: Duration::from_secs(10),
            kubelet_version: "v1.33.0-eks".into(),
            owner: "rafter-sim".into(),
            never_ready: Arc::default(),
        }
    }
}

struct NodeState {
    instance: Instance,
    registered_at: tokio::time::Instant,
    startup_taints: Vec<Value>,
    startup_cleared: bool,
    ready: bool,
    last_heartbeat: tokio::time::Instant,
    last_status: tokio::time::Instant,
}

/// Starts NodeSim.
pub fn spawn(client: Client, feed: Arc<dyn InstanceFeed>, config: NodeSimConfig) -> Component {
    let mut component = Component::default();
    let notify = Arc::new(Notify::new());
    let pods = components::cache_all::<Pod>(&mut component, &client, &notify);
    let nodes = components::cache_all::<Node>(&mut component, &client, &notify);
    let wake = notify.clone();
    let feed_for_wait = feed.clone();
    component.spawn(async move {
        loop {
            feed_for_wait.wait(Duration::from_secs(5)).await;
            wake.notify_one();
        }
    });
    component.spawn(async move {
        let mut known: HashMap<String, NodeState> = HashMap::new();
        let mut pod_ips: u32 = 0;
        let mut bound_at: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut terminating_since: HashMap<String, tokio::time::Instant> = HashMap::new();
        loop {
            components::wait(&notify, config.heartbeat.min(Duration::from_secs(1))).await;
            let instances = match feed.instances().await {
                Ok(i) => i,
                Err(error) => {
                    tracing::debug!(%error, "listing instances failed; retrying");
                    continue;
                }
            };
            let nodes = nodes.state();
            let pods = pods.state();
            if let Err(error) = reconcile(
                &client,
                feed.as_ref(),
                &config,
                &instances,
                &nodes,
                &pods,
                &mut known,
                &mut pod_ips,
                &mut bound_at,
                &mut terminating_since,
            )
            .await
            {
                tracing::debug!(%error, "node simulation pass failed; retrying");
            }
        }
    });
    component
}

fn node_object(
    instance: &Instance,
    it: Option<&InstanceType>,
    claim: Option<&NodeClaim>,
    config: &NodeSimConfig,
) -> (Value, Vec<Value>) {
    let name = instance.private_dns_name.clone();
    let arch =
        it.and_then(|t| t.requirements.get(labels::ARCH)).and_then(|r| r.single_value()).unwrap_or("amd64").to_string();
    let mut node_labels: BTreeMap<String, String> = BTreeMap::from([
        (labels::HOSTNAME.to_string(), name.clone()),
        (labels::INSTANCE_TYPE.to_string(), instance.instance_type.clone()),
        ("beta.kubernetes.io/instance-type".to_string(), instance.instance_type.clone()),
        (labels::ZONE.to_string(), instance.zone.clone()),
        ("failure-domain.beta.kubernetes.io/zone".to_string(), instance.zone.clone()),
        (labels::REGION.to_string(), instance.zone.trim_end_matches(char::is_alphabetic).to_string()),
        (labels::CAPACITY_TYPE.to_string(), instance.capacity_type.as_str().to_string()),
        (labels::ARCH.to_string(), arch.clone()),
        ("beta.kubernetes.io/arch".to_string(), arch.clone()),
        (labels::OS.to_string(), "linux".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
    ]);
    if let Some(it) = it {
        for r in it.requirements.iter() {
            if let Some(v) = r.single_value() {
                node_labels.entry(r.key().to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    if let Some(pool) = instance.tags.get(TAG_NODEPOOL) {
        node_labels.insert(labels::NODEPOOL.to_string(), pool.clone());
    }
    let mut taints: Vec<Value> = Vec::new();
    let mut startup: Vec<Value> = Vec::new();
    if let Some(claim) = claim {
        for (k, v) in claim.metadata.labels.clone().unwrap_or_default() {
            node_labels.entry(k).or_insert(v);
        }
        for r in &claim.spec.template.requirements {
            if r.operator == rafter::api::nodeclaim::Operator::In && r.values.len() == 1 {
                let value = r.values.first().cloned().unwrap_or_default();
                node_labels.entry(r.key.clone()).or_insert(value);
            }
        }
        taints.extend(claim.spec.template.taints.iter().filter_map(|t| serde_json::to_value(t).ok()));
        startup = claim.spec.template.startup_taints.iter().filter_map(|t| serde_json::to_value(t).ok()).collect();
        taints.extend(startup.iter().cloned());
        // A Karpenter-launched kubelet registers with this taint; the launcher removes it on registration.
        taints.push(json!({"key": "karpenter.sh/unregistered", "effect": "NoExecute"}));
    }
    let capacity = it.map(|t| t.capacity.to_quantities()).unwrap_or_default();
    let allocatable = it.map(|t| t.allocatable().to_quantities()).unwrap_or_default();
    let now = components::now();
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels, "annotations": {SIMULATED: config.owner, "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"providerID": instance.provider_id, "taints": taints},
        "status": {
            "capacity": capacity, "allocatable": allocatable,
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "kubelet has no disk pressure", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "kubelet has sufficient PID available", "lastHeartbeatTime": now, "lastTransitionTime": now},
                ready_condition(config.ready_at_once(&instance.instance_type), &now)
            ],
            "addresses": [
                {"type": "InternalIP", "address": instance.private_ip},
                {"type": "InternalDNS", "address": name},
                {"type": "Hostname", "address": name}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": instance.id, "systemUUID": instance.id, "bootID": instance.id,
                "kernelVersion": "6.1.0-rafter-sim", "osImage": "Amazon Linux 2023 (rafter-sim)", "containerRuntimeVersion": "containerd://1.7.27",
                "kubeletVersion": config.kubelet_version, "kubeProxyVersion": config.kubelet_version, "operatingSystem": "linux", "architecture": arch
            }
        }
    });
    (node, startup)
}

#[allow(clippy::too_many_arguments)]
async fn reconcile(
    client: &Client,
    feed: &dyn InstanceFeed,
    config: &NodeSimConfig,
    instances: &[Instance],
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    known: &mut HashMap<String, NodeState>,
    pod_ips: &mut u32,
    bound_at: &mut HashMap<String, tokio::time::Instant>,
    terminating_since: &mut HashMap<String, tokio::time::Instant>,
) -> Result<(), kube::Error> {
    let node_api: Api<Node> = Api::all(client.clone());
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = tokio::time::Instant::now();
    let running: HashMap<&str, &Instance> =
        instances.iter().filter(|i| i.state == InstanceState::Running).map(|i| (i.id.as_str(), i)).collect();
    // Register nodes for running instances.
    for instance in running.values() {
        let name = instance.private_dns_name.clone();
        if known.contains_key(&name) {
            continue;
        }
        if let Some(existing) = nodes.iter().find(|n| n.name_any() == name) {
            if existing.annotations().get(SIMULATED).is_some_and(|o| *o != config.owner) {
                // Another NodeSim's node (its cloud runs an instance of the same name).
                continue;
            }
            if !existing.annotations().contains_key(SIMULATED) {
                // Someone created the Node before the kubelet started (direct binding): the kubelet
                // registers into it, adding its labels and reporting its status.
                let it = feed.instance_type(&instance.instance_type);
                let (node, _) = node_object(instance, it.as_ref(), None, config);
                let meta = json!({"metadata": {"labels": node["metadata"]["labels"], "annotations": node["metadata"]["annotations"]}});
                let mut labels_patch = meta.clone();
                if let (Some(mine), Some(theirs)) =
                    (labels_patch["metadata"]["labels"].as_object_mut(), existing.metadata.labels.as_ref())
                {
                    for key in theirs.keys() {
                        mine.remove(key);
                    }
                }
                node_api.patch(&name, &PatchParams::default(), &Patch::Merge(labels_patch)).await?;
                node_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": node["status"]})))
                    .await?;
            }
            known.insert(
                name,
                NodeState {
                    instance: (*instance).clone(),
                    registered_at: now,
                    startup_taints: Vec::new(),
                    startup_cleared: true,
                    ready: config.ready_at_once(&instance.instance_type),
                    last_heartbeat: now,
                    last_status: now,
                },
            );
            continue;
        }
        let claim = match instance.node_claim() {
            Some(claim) => Api::<NodeClaim>::all(client.clone()).get_opt(claim).await.unwrap_or(None),
            None => None,
        };
        let it = feed.instance_type(&instance.instance_type);
        let (node, startup) = node_object(instance, it.as_ref(), claim.as_ref(), config);
        let node: Node = serde_json::from_value(node).map_err(kube::Error::SerdeError)?;
        match node_api.create(&PostParams::default(), &node).await {
            Ok(created) => {
                let lease = json!({
                    "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": created.uid()}]},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": components::now_micro()}
                });
                if let Ok(lease) = serde_json::from_value::<Lease>(lease) {
                    let _ = lease_api.create(&PostParams::default(), &lease).await;
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        known.insert(
            name,
            NodeState {
                instance: (*instance).clone(),
                registered_at: now,
                startup_cleared: startup.is_empty(),
                startup_taints: startup,
                ready: config.ready_at_once(&instance.instance_type),
                last_heartbeat: now,
                last_status: now,
            },
        );
    }
    // Nodes whose instance is gone: the cloud node controller removes them, pod GC their pods.
    for node in nodes.iter().filter(|n| n.annotations().get(SIMULATED) == Some(&config.owner)) {
        let id = node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(parse_provider_id)
            .map(|(_, id)| id.to_string())
            .unwrap_or_default();
        let alive = instances.iter().any(|i| i.id == id && i.state != InstanceState::Terminated);
        if alive {
            continue;
        }
        let name = node.name_any();
        for pod in pods.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())) {
            let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let _ = api.delete(&pod.name_any(), &DeleteParams::default().grace_period(0)).await;
        }
        if node.metadata.deletion_timestamp.is_none() {
            match node_api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        known.remove(&name);
    }
    known.retain(|_, s| {
        running.contains_key(s.instance.id.as_str())
            || instances.iter().any(|i| i.id == s.instance.id && i.state != InstanceState::Terminated)
    });
    // Startup taints and heartbeats.
    for (name, state) in known.iter_mut() {
        let Some(node) = nodes.iter().find(|n| &n.name_any() == name) else { continue };
        if !state.startup_cleared && now.duration_since(state.registered_at) >= config.startup_taint_delay {
            let current: Vec<Value> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .map(|t| t.iter().filter_map(|t| serde_json::to_value(t).ok()).collect())
                .unwrap_or_default();
            let startup_keys: HashSet<String> = state
                .startup_taints
                .iter()
                .filter_map(|t| t.get("key").and_then(Value::as_str).map(str::to_string))
                .collect();
            let kept: Vec<&Value> = current
                .iter()
                .filter(|t| !t.get("key").and_then(Value::as_str).is_some_and(|k| startup_keys.contains(k)))
                .collect();
            let patch = json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": node.resource_version()},
                {"op": "replace", "path": "/spec/taints", "value": kept}
            ]);
            if let Ok(patch) = serde_json::from_value::<json_patch::Patch>(patch)
                && node_api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch)).await.is_ok()
            {
                state.startup_cleared = true;
            }
        }
        if node.annotations().get(HEARTBEAT).is_some_and(|v| v == "stopped") {
            continue;
        }
        if !state.ready
            && now.duration_since(state.registered_at) >= config.ready_delay
            && !config.broken(&state.instance.instance_type)
        {
            let ready = json!({"status": {"conditions": [ready_condition(true, &components::now())]}});
            if node_api.patch_status(name, &PatchParams::default(), &Patch::Strategic(ready)).await.is_ok() {
                state.ready = true;
                state.last_status = now;
            }
        }
        if now.duration_since(state.last_heartbeat) >= config.heartbeat {
            let renew = json!({"spec": {"renewTime": components::now_micro()}});
            let _ = lease_api.patch(name, &PatchParams::default(), &Patch::Merge(renew)).await;
            state.last_heartbeat = now;
        }
        // Like the kubelet's status report: the Ready condition's heartbeat, less often than the Lease.
        if now.duration_since(state.last_status) >= config.heartbeat * 6 {
            let mut condition = ready_condition(state.ready, &components::now());
            if let Some(c) = condition.as_object_mut() {
                c.remove("lastTransitionTime");
            }
            let ready = json!({"status": {"conditions": [condition]}});
            let _ = node_api.patch_status(name, &PatchParams::default(), &Patch::Strategic(ready)).await;
            state.last_status = now;
        }
    }
    // Pods: run the bound ones, finish graceful deletions; pods of a Node someone deleted go too
    // (what pod garbage collection does for pods bound to nodes that no longer exist).
    let keys: HashSet<String> =
        pods.iter().map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())).collect();
    terminating_since.retain(|key, _| keys.contains(key));
    for pod in pods {
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        if let Some(state) = known.get(&node_name)
            && now.duration_since(state.registered_at) > Duration::from_secs(5)
            && !nodes.iter().any(|n| n.name_any() == node_name)
        {
            let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let _ = api.delete(&pod.name_any(), &DeleteParams::default().grace_period(0)).await;
            continue;
        }
        let Some(state) = known.get(&node_name) else { continue };
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        if pod.metadata.deletion_timestamp.is_some() {
            let since = *terminating_since.entry(key.clone()).or_insert(now);
            if stopped(pod, now.duration_since(since), jiff::Timestamp::now()) {
                let _ = api.delete(&pod.name_any(), &DeleteParams::default().grace_period(0)).await;
                bound_at.remove(&key);
                terminating_since.remove(&key);
            }
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if phase != "Pending" {
            continue;
        }
        let first_seen = *bound_at.entry(key.clone()).or_insert(now);
        if now.duration_since(first_seen) < config.pod_start_delay {
            continue;
        }
        *pod_ips += 1;
        let node_ip: Vec<u32> = state.instance.private_ip.split('.').filter_map(|p| p.parse().ok()).collect();
        let pod_ip =
            format!("10.{}.{}.{}", node_ip.get(1).copied().unwrap_or(0), (*pod_ips / 250) % 250, 2 + *pod_ips % 250);
        let started = components::now();
        let containers: Vec<Value> = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| json!({
                        "name": c.name, "image": c.image, "imageID": format!("sim://{}", c.image.clone().unwrap_or_default()),
                        "containerID": format!("containerd://{:016x}", *pod_ips), "ready": true, "started": true, "restartCount": 0,
                        "state": {"running": {"startedAt": started}}
                    }))
                    .collect()
            })
            .unwrap_or_default();
        let status = json!({"status": {
            "phase": "Running", "hostIP": state.instance.private_ip, "hostIPs": [{"ip": state.instance.private_ip}],
            "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": started,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "Ready", "status": "True", "lastTransitionTime": started},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started}
            ],
            "containerStatuses": containers
        }});
        match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(status)).await {
            Ok(_) => {
                bound_at.remove(&key);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminating(shutdown: Option<&str>, grace_ends: jiff::Timestamp) -> Pod {
        let mut pod = Pod::default();
        if let Some(seconds) = shutdown {
            pod.annotations_mut().insert(SHUTDOWN_SECONDS.into(), seconds.into());
        }
        pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(grace_ends));
        pod
    }

    #[test]
    fn a_terminating_pod_stops_after_its_shutdown_time_or_when_its_grace_ends_whichever_is_first() {
        let now = jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(1_000);
        let later = now + jiff::SignedDuration::from_secs(30);
        let secs = Duration::from_secs;
        assert!(stopped(&terminating(None, later), Duration::ZERO, now), "no shutdown time: gone at once");
        let slow = terminating(Some("20"), later);
        assert!(!stopped(&slow, secs(19), now), "still shutting down, grace left");
        assert!(stopped(&slow, secs(20), now), "shut down by itself");
        let cut = terminating(Some("20"), now);
        assert!(stopped(&cut, secs(5), now), "killed when its (shortened) grace ends");
        assert!(stopped(&terminating(Some("not a number"), later), Duration::ZERO, now), "unreadable: no delay");
    }
}
