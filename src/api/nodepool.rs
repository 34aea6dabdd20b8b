//! `karpenter.sh/v1` NodePool: which machines pods may get, how many, and when they may be taken away.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::Rule;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::{add_rules, template_label_rules};
use super::duration::NillableDuration;
use super::labels::LABEL_VALUE_PATTERN;
use super::nodeclaim::{NodeClaimTemplateSpec, ResourceList};

/// The desired shape of a pool of nodes.
// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "karpenter.sh",
    version = "v1",
    kind = "NodePool",
    plural = "nodepools",
    singular = "nodepool",
    category = "karpenter",
    status = "NodePoolStatus",
    derive = "PartialEq",
    doc = "A NodePool says which machines Rafter may launch for pending pods, and how it may remove them",
    printcolumn(name = "NodeClass", type_ = "string", json_path = ".spec.template.spec.nodeClassRef.name"),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.resources.nodes"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".spec.weight", priority = "1")
)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// What every NodeClaim of this pool is created with.
    pub template: NodeClaimTemplate,
    /// How nodes of this pool may be voluntarily removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {"consolidateAfter": "0s"}))]
    pub disruption: Option<Disruption>,
    /// Caps on the total resources of the pool's nodes (`cpu: 1000`, `memory: 1000Gi`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: ResourceList,
    /// Pools with a higher weight are tried first (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: Option<i32>,
}

/// Metadata and spec stamped onto every NodeClaim (and so every node) of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct NodeClaimTemplate {
    /// Labels and annotations of the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Requirements, taints and node class of the nodes.
    pub spec: NodeClaimTemplateSpec,
}

/// Labels and annotations a pool puts on its nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TemplateMetadata {
    /// Node labels; pods can select them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 100), transform = template_labels_transform)]
    pub labels: BTreeMap<String, String>,
    /// Node annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn template_labels_transform(schema: &mut schemars::Schema) {
    schema.insert(
        "additionalProperties".into(),
        serde_json::json!({"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}),
    );
    add_rules(schema, template_label_rules());
}

/// Which nodes consolidation may remove.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConsolidationPolicy {
    /// Only nodes with no workload pods.
    WhenEmpty,
    /// Empty nodes, and nodes whose pods fit elsewhere or on a cheaper node.
    WhenEmptyOrUnderutilized,
}

/// Why a node is being disrupted; budgets may apply to some reasons only.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DisruptionReason {
    /// Its pods fit on other or cheaper capacity.
    Underutilized,
    /// It runs no workload pods.
    Empty,
    /// It no longer matches its pool or node class.
    Drifted,
}

/// Voluntary disruption settings of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disruption {
    /// Which nodes may be consolidated. Default WhenEmptyOrUnderutilized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "WhenEmptyOrUnderutilized"))]
    pub consolidation_policy: Option<ConsolidationPolicy>,
    /// How long a node must have had no pod arrive or leave before it is consolidated; `Never` disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidate_after: Option<NillableDuration>,
    /// How many nodes may be disrupted at once, possibly only during a schedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), extend("default" = [{"nodes": "10%"}]))]
    pub budgets: Vec<Budget>,
}

impl Disruption {
    /// The policy with its default applied.
    pub fn policy(&self) -> ConsolidationPolicy {
        self.consolidation_policy.unwrap_or(ConsolidationPolicy::WhenEmptyOrUnderutilized)
    }
}

/// A cap on simultaneous disruptions, always or during a recurring window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[schemars(transform = budget_transform)]
pub struct Budget {
    /// Reasons this budget applies to; all reasons when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<DisruptionReason>,
    /// A node count (`5`) or a percentage of the pool's nodes (`10%`).
    #[schemars(regex(pattern = r"^((100|[0-9]{1,2})%|[0-9]+)$"), extend("default" = "10%"))]
    pub nodes: String,
    /// Cron schedule (UTC) at which the budget's window opens; needs `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(@(annually|yearly|monthly|weekly|daily|midnight|hourly))|((.+)\s(.+)\s(.+)\s(.+)\s(.+))$"
    ))]
    pub schedule: Option<String>,
    /// How long the window stays open after each scheduled start; needs `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$"))]
    pub duration: Option<String>,
}

fn budget_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("has(self.schedule) == has(self.duration)")
                .message("schedule and duration must be given together")
                .field_path(".duration"),
        ],
    );
}

/// What a pool currently has.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// Resources of the pool's nodes, including a `nodes` count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: ResourceList,
    /// Ready, NodeClassReady, ValidationSucceeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl NodePoolSpec {
    /// Weight with its default (0: tried after every weighted pool).
    pub fn weight(&self) -> i32 {
        self.weight.unwrap_or(0)
    }

    /// How long a node must be quiet before consolidation, `None` for never.
    pub fn consolidate_after(&self) -> Option<Duration> {
        match self.disruption.as_ref().and_then(|d| d.consolidate_after.as_ref()) {
            Some(after) => after.parse().ok().flatten(),
            None => Some(Duration::ZERO),
        }
    }
}
