//! Nodes, claims and pods as a Rafter-managed cluster has them, for the engine's tests and the
//! disruption benchmark (feature `test-util`).

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::api::nodeclaim::NodeClaim;
use crate::scheduling::instance_types::InstanceType;

/// A Ready node of `it` in pool `default`, with its initialized claim `claim-<name>`.
pub fn node_and_claim(name: &str, it: &InstanceType, zone: &str, capacity_type: &str) -> (Node, NodeClaim) {
    let a = it.allocatable();
    let provider = format!("aws:///{zone}/i-{name}");
    let node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": "default", "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux", "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone,
            "node.kubernetes.io/instance-type": it.name, "karpenter.sh/capacity-type": capacity_type}},
        "spec": {"providerID": provider},
        "status": {"allocatable": {"cpu": format!("{}m", a.cpu), "memory": a.memory.to_string(), "pods": a.pods.to_string()},
                   "capacity": {"cpu": format!("{}m", it.capacity.cpu), "memory": it.capacity.memory.to_string(), "pods": a.pods.to_string()},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap_or_else(|e| unreachable!("a fixed node decodes: {e}"));
    let claim = serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": format!("claim-{name}"), "labels": {"karpenter.sh/nodepool": "default"},
                     "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"requirements": [], "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}},
        "status": {"providerID": provider, "nodeName": name,
                   "conditions": [{"type": "Initialized", "status": "True", "lastTransitionTime": "2026-12-01T10:01:00Z"}],
                   "lastPodEventTime": "2026-12-01T11:00:00Z"}
    }))
    .unwrap_or_else(|e| unreachable!("a fixed claim decodes: {e}"));
    (node, claim)
}

/// A running pod of ReplicaSet `inflate` in `namespace`, bound to `node`, requesting `cpu` and
/// `memory` (Kubernetes quantities).
pub fn bound_pod(namespace: &str, name: &str, node: &str, cpu: &str, memory: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "inflate"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "inflate", "uid": "rs", "controller": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap_or_else(|e| unreachable!("a fixed pod decodes: {e}"))
}
