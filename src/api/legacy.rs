//! The legacy `karpenter.sh/v1alpha5` Provisioner and `karpenter.k8s.aws/v1alpha1` AWSNodeTemplate.
//!
//! Their schemas are frozen, so these types reject unknown fields: a field the conversion does not
//! know is reported with its line instead of being dropped.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ec2nodeclass::{BlockDeviceMapping, KubeletConfiguration, MetadataOptions};
use super::nodeclaim::{Operator, ResourceList, Taint};

/// A legacy pool definition.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "karpenter.sh",
    version = "v1alpha5",
    kind = "Provisioner",
    plural = "provisioners",
    singular = "provisioner",
    category = "karpenter",
    status = "ProvisionerStatus",
    derive = "PartialEq",
    doc = "Legacy pool definition (karpenter.sh/v1alpha5); Rafter serves it as a NodePool"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvisionerSpec {
    /// Annotations of the nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels of the nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Taints of the nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Taints removed by a daemon once the node is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<Taint>,
    /// Node requirements (no `minValues` in this version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<LegacyRequirement>,
    /// Kubelet settings; v1 keeps them on the EC2NodeClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_configuration: Option<KubeletConfiguration>,
    /// AWS settings given inline instead of through `providerRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<AWSNodeTemplateSpec>,
    /// The AWSNodeTemplate to launch with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<ProviderRef>,
    /// Seconds an empty node lives before removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_empty: Option<i64>,
    /// Seconds a node lives before replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_until_expired: Option<i64>,
    /// Caps on the pool's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LegacyLimits>,
    /// Priority among provisioners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Whether underused nodes are consolidated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidation: Option<LegacyConsolidation>,
}

/// A node requirement as v1alpha5 wrote it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyRequirement {
    /// The label key.
    pub key: String,
    /// How the values are matched.
    pub operator: Operator,
    /// The values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Names an AWSNodeTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    /// `karpenter.k8s.aws/v1alpha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `AWSNodeTemplate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the template.
    pub name: String,
}

/// `limits.resources` of a Provisioner.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyLimits {
    /// The caps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: ResourceList,
}

/// `consolidation` of a Provisioner.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyConsolidation {
    /// Whether consolidation is on.
    #[serde(default)]
    pub enabled: bool,
}

/// What a Provisioner reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionerStatus {
    /// Resources of its nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: ResourceList,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Legacy AWS launch settings.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "karpenter.k8s.aws",
    version = "v1alpha1",
    kind = "AWSNodeTemplate",
    plural = "awsnodetemplates",
    singular = "awsnodetemplate",
    category = "karpenter",
    status = "AWSNodeTemplateStatus",
    derive = "PartialEq",
    doc = "Legacy AWS launch settings (karpenter.k8s.aws/v1alpha1); Rafter serves it as an EC2NodeClass"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AWSNodeTemplateSpec {
    /// Present when given inline as a Provisioner's `provider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Present when given inline as a Provisioner's `provider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Subnet tags to match; key `aws-ids` lists subnet IDs, comma-separated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subnet_selector: BTreeMap<String, String>,
    /// Security group tags to match; key `aws-ids` lists group IDs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security_group_selector: BTreeMap<String, String>,
    /// Instance profile of the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// AL2 (default), AL2023, Bottlerocket, Ubuntu, Windows2019, Windows2022 or Custom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_family: Option<String>,
    /// Image tags to match; keys `aws::ids`, `aws::name` and `aws::owners` are special.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ami_selector: BTreeMap<String, String>,
    /// User data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Tags of the instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Instance metadata settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<MetadataOptions>,
    /// EBS volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// CloudWatch detailed monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detailed_monitoring: Option<bool>,
    /// A user-managed launch template (not supported by v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<String>,
    /// EC2 launch context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// What an AWSNodeTemplate reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct AWSNodeTemplateStatus {
    /// Resolved subnets, security groups and images, in v1's shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
