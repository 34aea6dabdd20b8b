//! `karpenter.sh/v1` NodeClaim: one machine Rafter intends to have, and the requirement and taint
//! types that NodePool templates share with it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::{add_rules, requirement_key_rules, requirement_rules};
use super::duration::{KubeDuration, NillableDuration};
use super::labels::{LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN};
use super::quantity::Quantity;

/// Resource names to quantities (`cpu: "4"`, `memory: 16Gi`, `nvidia.com/gpu: 1`).
pub type ResourceList = BTreeMap<String, Quantity>;

/// Set operators of a node requirement, as in Kubernetes node affinity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Operator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value is an integer greater than the single value.
    Gt,
    /// The label's value is an integer less than the single value.
    Lt,
}

/// A node selector requirement with Karpenter's `minValues`: launch only if at least that many
/// distinct values of the key remain possible (instance-type flexibility for spot).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = requirement_transform)]
pub struct NodeSelectorRequirementWithMinValues {
    /// The label key.
    #[schemars(length(min = 1, max = 316), regex(pattern = LABEL_KEY_PATTERN), transform = requirement_key_transform)]
    pub key: String,
    /// How the key's values are matched.
    pub operator: Operator,
    /// The values the operator works on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500), inner(length(max = 63), regex(pattern = LABEL_VALUE_PATTERN)))]
    pub values: Vec<String>,
    /// Minimum number of distinct values of this key among the launchable instance types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub min_values: Option<i32>,
}

fn requirement_transform(schema: &mut schemars::Schema) {
    add_rules(schema, requirement_rules());
}

fn requirement_key_transform(schema: &mut schemars::Schema) {
    add_rules(schema, requirement_key_rules());
}

/// Effect of a taint, as in Kubernetes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TaintEffect {
    /// Pods without a toleration are not scheduled.
    NoSchedule,
    /// The scheduler avoids the node for pods without a toleration.
    PreferNoSchedule,
    /// Pods without a toleration are not scheduled and running ones are evicted.
    NoExecute,
}

impl TaintEffect {
    /// The effect as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A taint a node is launched with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    /// The taint key.
    #[schemars(length(min = 1, max = 316), regex(pattern = LABEL_KEY_PATTERN))]
    pub key: String,
    /// The taint value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = LABEL_VALUE_PATTERN))]
    pub value: Option<String>,
    /// What the taint does to pods that do not tolerate it.
    pub effect: TaintEffect,
    /// When the taint was added (NoExecute only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<Time>,
}

/// Names the cloud-specific node class (EC2NodeClass) a NodePool or NodeClaim launches with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct NodeClassReference {
    /// API group, `karpenter.k8s.aws`.
    #[schemars(length(min = 1))]
    pub group: String,
    /// Kind, `EC2NodeClass`.
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Name of the node class.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// What a NodePool stamps onto each NodeClaim it creates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimTemplateSpec {
    /// Taints every node carries for its whole life.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Taints that are expected to be removed by a daemon once the node is ready for pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<Taint>,
    /// Constraints on the node's labels, and so on its instance type, zone and capacity type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub requirements: Vec<NodeSelectorRequirementWithMinValues>,
    /// The node class to launch with.
    pub node_class_ref: NodeClassReference,
    /// How long a node may live before it is replaced; `Never` keeps it. Default 720h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "720h"))]
    pub expire_after: Option<NillableDuration>,
    /// How long a draining node may wait for pods before they are removed forcibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period: Option<KubeDuration>,
}

/// Default of `expireAfter` when a manifest leaves it out.
pub const DEFAULT_EXPIRE_AFTER: &str = "720h";

impl NodeClaimTemplateSpec {
    /// `expireAfter` with its default applied.
    pub fn expire_after(&self) -> NillableDuration {
        self.expire_after.clone().unwrap_or_else(|| NillableDuration(DEFAULT_EXPIRE_AFTER.into()))
    }
}

/// Resources the pods placed on a NodeClaim asked for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceRequirements {
    /// Summed requests of the pods (and DaemonSets) the claim was sized for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: ResourceList,
}

/// A request for one node: what it must satisfy and what it must hold.
// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "karpenter.sh",
    version = "v1",
    kind = "NodeClaim",
    plural = "nodeclaims",
    singular = "nodeclaim",
    category = "karpenter",
    status = "NodeClaimStatus",
    derive = "PartialEq",
    doc = "A NodeClaim is one machine Rafter launches for pending pods",
    printcolumn(name = "Type", type_ = "string", json_path = ".metadata.labels.node\\.kubernetes\\.io/instance-type"),
    printcolumn(name = "Capacity", type_ = "string", json_path = ".metadata.labels.karpenter\\.sh/capacity-type"),
    printcolumn(name = "Zone", type_ = "string", json_path = ".metadata.labels.topology\\.kubernetes\\.io/zone"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimSpec {
    /// The template fields: taints, requirements, node class, expiry.
    #[serde(flatten)]
    pub template: NodeClaimTemplateSpec,
    /// What the claim's pods need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// What the cloud and the kubelet made of a NodeClaim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimStatus {
    /// The Node object's name once it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The cloud's ID of the instance, e.g. `aws:///us-east-1a/i-0abc`.
    #[serde(default, rename = "providerID", skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// The machine image the instance booted.
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Resources of the instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: ResourceList,
    /// Resources left for pods after system reservations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: ResourceList,
    /// Launched, Registered, Initialized, Ready, Drifted, Consolidatable, Drained, InstanceTerminating.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When a pod was last bound to or removed from the node (for emptiness and consolidation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pod_event_time: Option<Time>,
}

/// Condition types of a NodeClaim.
pub mod conditions {
    /// The cloud instance exists.
    pub const LAUNCHED: &str = "Launched";
    /// A Node with the instance's provider ID joined the cluster.
    pub const REGISTERED: &str = "Registered";
    /// The node is Ready and its startup taints are gone.
    pub const INITIALIZED: &str = "Initialized";
    /// Launched, registered and initialised.
    pub const READY: &str = "Ready";
    /// The node no longer matches its NodePool or node class.
    pub const DRIFTED: &str = "Drifted";
    /// The node may be removed or replaced to save money.
    pub const CONSOLIDATABLE: &str = "Consolidatable";
    /// Every evictable pod has left the node.
    pub const DRAINED: &str = "Drained";
    /// The cloud instance is being terminated.
    pub const INSTANCE_TERMINATING: &str = "InstanceTerminating";
}
