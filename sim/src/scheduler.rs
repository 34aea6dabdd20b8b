//! SchedulerSim: a minimal kube-scheduler. It binds pending pods to Ready nodes that fit (requests, max
//! pods, nodeSelector, required node affinity, taints, hostname anti-affinity), preferring the least
//! allocated node, and marks the rest `PodScheduled=False`/`Unschedulable` with a FailedScheduling event
//! worded as kube-scheduler words it. Turn it off when a real kube-scheduler runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rafter::scheduling::requirements::{Requirements, pod_required_terms};
use rafter::scheduling::resources::{Resources, pod_requests};
use serde_json::json;
use tokio::sync::Notify;

use crate::components::{self, Component, node_ready, terminal};

/// The scheduler name this simulator serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Starts the scheduler.
pub fn spawn(client: Client) -> Component {
    let mut component = Component::default();
    let notify = Arc::new(Notify::new());
    let pods = components::cache_all::<Pod>(&mut component, &client, &notify);
    let nodes = components::cache_all::<Node>(&mut component, &client, &notify);
    component.spawn(async move {
        let mut assumed: HashMap<String, (String, Resources)> = HashMap::new();
        let mut reported: HashMap<String, String> = HashMap::new();
        loop {
            components::wait(&notify, Duration::from_secs(1)).await;
            let pods = pods.state();
            let nodes = nodes.state();
            if let Err(error) = schedule(&client, &pods, &nodes, &mut assumed, &mut reported).await {
                tracing::debug!(%error, "scheduling pass failed; retrying");
            }
        }
    });
    component
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// What a node offers pods (zero when it reports nothing readable).
fn allocatable(node: &Node) -> Resources {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| Resources::from_kube(a).ok())
        .unwrap_or_else(Resources::zero)
}

/// Why one node cannot take a pod, in kube-scheduler's words.
fn misfit(pod: &Pod, node: &Node, used: &Resources, pods_on_node: &[&Pod]) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Some("node(s) were unschedulable".into());
    }
    let labels: BTreeMap<String, String> = node.labels().clone();
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let terms = pod_required_terms(spec).unwrap_or_default();
    if !terms.is_empty() && !terms.iter().any(|t: &Requirements| t.matches_labels(&labels)) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if let Some(taint) = components::untolerated_taint(spec, node) {
        return Some(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or_default()
        ));
    }
    if !node_ready(node) {
        return Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
    }
    let allocatable = allocatable(node);
    let need = pod_requests(spec).unwrap_or_else(|_| Resources::zero());
    let total = used.clone().plus(&need);
    if let Some(resource) = total.first_exceeding(&allocatable) {
        return Some(if resource == "pods" { "Too many pods".to_string() } else { format!("Insufficient {resource}") });
    }
    let anti = spec
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    for term in anti.into_iter().flatten().filter(|t| t.topology_key == "kubernetes.io/hostname") {
        if pods_on_node
            .iter()
            .any(|other| rafter::scheduling::topology::selects(term.label_selector.as_ref(), other.labels()))
        {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    None
}

async fn schedule(
    client: &Client,
    pods: &[Arc<Pod>],
    nodes: &[Arc<Node>],
    assumed: &mut HashMap<String, (String, Resources)>,
    reported: &mut HashMap<String, String>,
) -> Result<(), kube::Error> {
    // Forget assumptions the cache now shows, or whose pods are gone.
    assumed.retain(|k, _| {
        pods.iter().any(|p| &key(p) == k && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
    });
    reported.retain(|k, _| pods.iter().any(|p| &key(p) == k));
    let mut used: HashMap<String, Resources> = HashMap::new();
    let mut on_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    for pod in pods.iter().filter(|p| !terminal(p)) {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            let need = pod
                .spec
                .as_ref()
                .map(|s| pod_requests(s).unwrap_or_else(|_| Resources::zero()))
                .unwrap_or_else(Resources::zero);
            let entry = used.entry(node.clone()).or_insert_with(Resources::zero);
            *entry = entry.clone().plus(&need);
            on_node.entry(node.clone()).or_default().push(pod);
        }
    }
    for (node, need) in assumed.values() {
        let entry = used.entry(node.clone()).or_insert_with(Resources::zero);
        *entry = entry.clone().plus(need);
    }
    let mut pending: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            let spec = p.spec.as_ref();
            spec.is_some_and(|s| {
                s.node_name.is_none() && s.scheduler_name.as_deref().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME
            }) && p.metadata.deletion_timestamp.is_none()
                && !terminal(p)
                && !assumed.contains_key(&key(p))
                && p.spec.as_ref().and_then(|s| s.scheduling_gates.as_ref()).is_none_or(|g| g.is_empty())
        })
        .collect();
    pending.sort_by_key(|p| {
        (
            std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            key(p),
        )
    });
    for pod in pending {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(f64, &Arc<Node>)> = None;
        for node in nodes.iter().filter(|n| n.metadata.deletion_timestamp.is_none()) {
            let name = node.name_any();
            let node_used = used.get(&name).cloned().unwrap_or_else(Resources::zero);
            let neighbours = on_node.get(&name).cloned().unwrap_or_default();
            match misfit(pod, node, &node_used, &neighbours) {
                Some(reason) => *reasons.entry(reason).or_insert(0) += 1,
                None => {
                    let allocatable = allocatable(node);
                    let share = node_used.cpu as f64 / allocatable.cpu.max(1) as f64
                        + node_used.memory as f64 / allocatable.memory.max(1) as f64;
                    if best.is_none_or(|(s, n)| share < s || (share == s && node.name_any() < n.name_any())) {
                        best = Some((share, node));
                    }
                }
            }
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        match best {
            Some((_, node)) => {
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name_any()}, "target": {"apiVersion": "v1", "kind": "Node", "name": node.name_any()}});
                match api
                    .create_subresource::<_, serde_json::Value>(
                        "binding",
                        &pod.name_any(),
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                {
                    Ok(_) => {
                        let need = pod
                            .spec
                            .as_ref()
                            .map(|s| pod_requests(s).unwrap_or_else(|_| Resources::zero()))
                            .unwrap_or_else(Resources::zero);
                        let entry = used.entry(node.name_any()).or_insert_with(Resources::zero);
                        *entry = entry.clone().plus(&need);
                        assumed.insert(key(pod), (node.name_any(), need));
                        let message = format!("Successfully assigned {} to {}", key(pod), node.name_any());
                        event(client, pod, "Normal", "Scheduled", &message).await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            None => {
                let total = nodes.len();
                let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                parts.sort();
                let detail = if parts.is_empty() { String::new() } else { format!(" {}.", parts.join(", ")) };
                let message = format!(
                    "0/{total} nodes are available:{detail} preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
                );
                if reported.get(&key(pod)) == Some(&message) {
                    continue;
                }
                let condition = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": components::now()}]}});
                match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(condition)).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => continue,
                    Err(e) => return Err(e),
                }
                event(client, pod, "Warning", "FailedScheduling", &message).await;
                reported.insert(key(pod), message);
            }
        }
    }
    Ok(())
}

/// Records a core/v1 Event about a pod, as the scheduler does (best effort, like the real one).
async fn event(client: &Client, pod: &Pod, kind: &str, reason: &str, message: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let now = components::now();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", pod.name_any()), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "namespace": ns, "uid": pod.uid(), "resourceVersion": pod.resource_version()},
        "reason": reason, "message": message, "type": kind,
        "source": {"component": "default-scheduler"}, "reportingComponent": "default-scheduler", "reportingInstance": "rafter-sim",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1
    });
    if let Ok(event) = serde_json::from_value::<k8s_openapi::api::core::v1::Event>(event) {
        let _ = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &event)
            .await;
    }
}
