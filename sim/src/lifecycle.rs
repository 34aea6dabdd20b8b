//! NodeLifecycleSim: what kube-controller-manager's node lifecycle controller does to every Node.
//!
//! A Node whose kubelet stops posting status (neither its `kube-node-lease` Lease nor its Ready
//! heartbeat moves for the grace period, `--node-monitor-grace-period`, 50 s since 1.32) gets its
//! conditions set to `Unknown`; and each Node carries exactly the `NoSchedule` taints its conditions
//! call for: `not-ready` when Ready is False, `unreachable` when Unknown, the pressure taints, and
//! `unschedulable` when cordoned. So the `not-ready` taint kube-apiserver adds on creation goes once
//! the kubelet reports Ready, as on a real cluster. Not simulated: the `NoExecute` taints and the
//! evictions they lead to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::components::{self, Component};

pub use rafter::api::labels::{NOT_READY_TAINT_KEY as NOT_READY, UNREACHABLE_TAINT_KEY as UNREACHABLE};
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// The controller's timings.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// How long a silent kubelet is trusted before its node's conditions become Unknown.
    pub grace: Duration,
    /// How often every node is checked.
    pub period: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self { grace: Duration::from_secs(50), period: Duration::from_secs(1) }
    }
}

/// Condition → taint key, for the condition statuses that call for one.
fn condition_taint(kind: &str, status: &str) -> Option<&'static str> {
    match (kind, status) {
        ("Ready", "False") => Some(NOT_READY),
        ("Ready", "Unknown") => Some(UNREACHABLE),
        ("MemoryPressure", "True") => Some("node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "True") => Some("node.kubernetes.io/disk-pressure"),
        ("PIDPressure", "True") => Some("node.kubernetes.io/pid-pressure"),
        ("NetworkUnavailable", "True") => Some("node.kubernetes.io/network-unavailable"),
        _ => None,
    }
}

const CONDITION_TAINTS: [&str; 7] = [
    NOT_READY,
    UNREACHABLE,
    UNSCHEDULABLE,
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
];

/// What one pass does to one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The kubelet has been silent past the grace period: mark the conditions Unknown.
    pub mark_unknown: bool,
    /// The node's new taint list, when it must change.
    pub taints: Option<Vec<Taint>>,
}

/// Decides for `node`, whose kubelet last showed life at `heartbeat` (Lease or Ready heartbeat).
pub fn decide(node: &Node, heartbeat: Option<jiff::Timestamp>, now: jiff::Timestamp, grace: Duration) -> Decision {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    // A heartbeat stamped ahead of this clock (skew) counts as fresh.
    let silent = heartbeat.is_some_and(|h| {
        let elapsed = now.duration_since(h);
        elapsed.is_positive() && elapsed.unsigned_abs() > grace
    }) && ready.is_some_and(|c| c.status != "Unknown");
    let mut wanted: Vec<&str> = conditions
        .iter()
        .filter_map(|c| {
            let status = if silent && c.type_ == "Ready" { "Unknown" } else { c.status.as_str() };
            condition_taint(&c.type_, status)
        })
        .collect();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        wanted.push(UNSCHEDULABLE);
    }
    let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let managed = |t: &Taint| t.effect == "NoSchedule" && CONDITION_TAINTS.contains(&t.key.as_str());
    let have: Vec<&str> = current.iter().filter(|t| managed(t)).map(|t| t.key.as_str()).collect();
    let same = wanted.iter().all(|w| have.contains(w)) && have.iter().all(|h| wanted.contains(h));
    let taints = (!same).then(|| {
        let mut next: Vec<Taint> = current.iter().filter(|t| !managed(t)).cloned().collect();
        next.extend(wanted.iter().map(|key| Taint {
            key: key.to_string(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        }));
        next
    });
    Decision { mark_unknown: silent, taints }
}

/// When the kubelet last showed life: the later of its Lease renewal and its Ready heartbeat.
fn heartbeat(node: &Node, leases: &HashMap<String, Arc<Lease>>) -> Option<jiff::Timestamp> {
    let lease = leases.get(&node.name_any()).and_then(|l| l.spec.as_ref()?.renew_time.as_ref()).map(|t| t.0);
    let status = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    lease.max(status)
}

/// Starts NodeLifecycleSim against any API server (never beside a real kube-controller-manager).
pub fn spawn(client: Client, config: LifecycleConfig) -> Component {
    let mut component = Component::default();
    let notify = Arc::new(Notify::new());
    let nodes = components::cache_all::<Node>(&mut component, &client, &notify);
    let leases = components::cache(
        &mut component,
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
        watcher::Config::default(),
        notify.clone(),
    );
    component.spawn(async move {
        let api: Api<Node> = Api::all(client.clone());
        loop {
            components::wait(&notify, config.period).await;
            let leases: HashMap<String, Arc<Lease>> = leases.state().into_iter().map(|l| (l.name_any(), l)).collect();
            let now = jiff::Timestamp::now();
            for node in nodes.state() {
                let decision = decide(&node, heartbeat(&node, &leases), now, config.grace);
                let name = node.name_any();
                if decision.mark_unknown {
                    let conditions: Vec<Value> = node
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|c| json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.", "lastTransitionTime": components::now()}))
                        .collect();
                    let patch = json!({"status": {"conditions": conditions}});
                    if let Err(error) = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
                        tracing::debug!(node = %name, %error, "marking the node Unknown failed; retrying");
                    }
                }
                if let Some(taints) = decision.taints {
                    // Optimistic: a write that raced another is redone on the next pass.
                    let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": taints}});
                    if let Err(error) = api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                        tracing::debug!(node = %name, %error, "updating the node's condition taints failed; retrying");
                    }
                }
            }
        }
    });
    component
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}, {"type": "MemoryPressure", "status": "False"}]}
        }))
        .expect("node")
    }

    fn keys(decision: &Decision) -> Vec<String> {
        decision.taints.iter().flatten().map(|t| t.key.clone()).collect()
    }

    const GRACE: Duration = Duration::from_secs(50);

    #[test]
    fn a_ready_node_loses_the_not_ready_taint_and_keeps_its_own() {
        let now = jiff::Timestamp::now();
        let n =
            node("True", json!([{"key": NOT_READY, "effect": "NoSchedule"}, {"key": "team", "effect": "NoSchedule"}]));
        let d = decide(&n, Some(now), now, GRACE);
        assert!(!d.mark_unknown);
        assert_eq!(keys(&d), ["team"]);
    }

    #[test]
    fn a_node_not_ready_keeps_the_taint_and_nothing_changes() {
        let now = jiff::Timestamp::now();
        let n = node("False", json!([{"key": NOT_READY, "effect": "NoSchedule"}]));
        assert_eq!(decide(&n, Some(now), now, GRACE), Decision { mark_unknown: false, taints: None });
    }

    #[test]
    fn a_silent_kubelet_makes_the_node_unknown_and_unreachable() {
        let now = jiff::Timestamp::now();
        let then = now - jiff::SignedDuration::from_secs(51);
        let d = decide(&node("True", json!([])), Some(then), now, GRACE);
        assert!(d.mark_unknown);
        assert_eq!(keys(&d), [UNREACHABLE]);
        let d = decide(&node("Unknown", json!([{"key": UNREACHABLE, "effect": "NoSchedule"}])), Some(then), now, GRACE);
        assert_eq!(d, Decision { mark_unknown: false, taints: None });
        let ahead = now + jiff::SignedDuration::from_secs(3600);
        assert!(
            !decide(&node("True", json!([])), Some(ahead), now, GRACE).mark_unknown,
            "a skewed clock is not silence"
        );
    }
}
