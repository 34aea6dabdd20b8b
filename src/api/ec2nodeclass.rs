//! `karpenter.k8s.aws/v1` EC2NodeClass: how a node is launched in AWS (network, image, role, disks, kubelet).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::{Message, Reason, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::add_rules;
use super::nodeclaim::NodeSelectorRequirementWithMinValues;
use super::quantity::Quantity;

/// Tags Rafter writes itself on every instance; users may not set them.
pub const RESTRICTED_TAG_PREFIXES: &[&str] = &[
    "kubernetes.io/cluster/",
    "karpenter.sh/nodepool",
    "karpenter.sh/nodeclaim",
    "karpenter.k8s.aws/ec2nodeclass",
    "eks:eks-cluster-name",
];

/// Tags a class may give: EC2 allows 50 per resource and Rafter writes five of its own.
pub const MAX_TAGS: usize = 45;
/// EC2's longest tag key and value.
pub const MAX_TAG_KEY_LENGTH: usize = 128;
pub const MAX_TAG_VALUE_LENGTH: usize = 256;
/// Eviction signals a kubelet knows are fewer than this; the bound keeps the CRD's CEL cost low.
pub const MAX_EVICTION_SIGNALS: usize = 16;

/// AWS launch settings shared by the NodePools that reference it.
// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "karpenter.k8s.aws",
    version = "v1",
    kind = "EC2NodeClass",
    plural = "ec2nodeclasses",
    singular = "ec2nodeclass",
    shortname = "ec2nc",
    shortname = "ec2ncs",
    category = "karpenter",
    status = "EC2NodeClassStatus",
    derive = "PartialEq",
    doc = "An EC2NodeClass says how Rafter launches instances in AWS",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role", priority = "1")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = nodeclass_transform)]
pub struct EC2NodeClassSpec {
    /// Subnets to launch into, by tags or ID; each zone's subnets offer that zone.
    #[schemars(length(min = 1, max = 30))]
    pub subnet_selector_terms: Vec<SubnetSelectorTerm>,
    /// Security groups for the instances, by tags, ID or name.
    #[schemars(length(min = 1, max = 30))]
    pub security_group_selector_terms: Vec<SecurityGroupSelectorTerm>,
    /// Machine images, by alias (`al2023@latest`), ID, name and owner, tags or SSM parameter.
    #[schemars(length(min = 1, max = 30), transform = ami_terms_transform)]
    pub ami_selector_terms: Vec<AmiSelectorTerm>,
    /// How the image bootstraps; implied by an alias term, required otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami_family: Option<AmiFamily>,
    /// IAM role whose instance profile Rafter creates and manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub role: Option<String>,
    /// Existing instance profile to launch with, instead of `role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub instance_profile: Option<String>,
    /// User data merged with Rafter's bootstrap configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Tags put on instances, volumes and launch templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_TAGS), transform = tags_transform)]
    pub tags: BTreeMap<String, String>,
    /// Kubelet settings of the nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<KubeletConfiguration>,
    /// EBS volumes of the instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), transform = block_devices_transform)]
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    /// Instance metadata service settings; IMDSv2 with hop limit 1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled", "httpPutResponseHopLimit": 1, "httpTokens": "required"}))]
    pub metadata_options: Option<MetadataOptions>,
    /// Whether CloudWatch detailed monitoring is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detailed_monitoring: Option<bool>,
    /// Whether instances get a public IPv4 address (subnet default when unset).
    #[serde(default, rename = "associatePublicIPAddress", skip_serializing_if = "Option::is_none")]
    pub associate_public_ip_address: Option<bool>,
    /// How local instance-store disks are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_store_policy: Option<InstanceStorePolicy>,
    /// EC2 launch context (reserved capacity contexts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

fn nodeclass_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("has(self.role) != has(self.instanceProfile)")
                .message("give exactly one of role and instanceProfile")
                .field_path(".role"),
            Rule::new("has(self.amiFamily) || self.amiSelectorTerms.exists(t, has(t.alias))")
                .message("amiFamily is required unless amiSelectorTerms uses an alias")
                .field_path(".amiFamily")
                .reason(Reason::FieldValueRequired),
        ],
    );
}

fn ami_terms_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("!self.exists(t, has(t.alias)) || size(self) == 1")
                .message("an alias term must be the only amiSelectorTerms entry"),
        ],
    );
}

fn tags_transform(schema: &mut schemars::Schema) {
    bound_map_values(schema, MAX_TAG_VALUE_LENGTH);
    // One rule per prefix keeps each rule's estimated cost small.
    let rules = RESTRICTED_TAG_PREFIXES
        .iter()
        .map(|p| {
            Rule::new(format!("self.all(k, !k.startsWith('{p}'))"))
                .message(Message::Message(format!("tags starting with {p} are set by Rafter")))
        })
        .collect();
    add_rules(schema, rules);
}

fn block_devices_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("size(self.filter(d, has(d.rootVolume) && d.rootVolume)) <= 1")
                .message("at most one block device mapping may be the root volume"),
        ],
    );
}

fn selector_tags_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("self.all(k, k != '' && self[k] != '')")
                .message("selector tag keys and values must not be empty"),
        ],
    );
}

/// Selects subnets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = subnet_term_transform)]
pub struct SubnetSelectorTerm {
    /// Tags every matching subnet has; a value of `*` matches any value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 20), transform = selector_tags_transform)]
    pub tags: BTreeMap<String, String>,
    /// A subnet ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^subnet-[0-9a-z]+$"))]
    pub id: Option<String>,
}

fn subnet_term_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("has(self.tags) || has(self.id)").message("a subnet selector term needs tags or id"),
            Rule::new("!(has(self.id) && has(self.tags))")
                .message("a subnet selector term with id cannot also have tags"),
        ],
    );
}

/// Selects security groups.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(transform = security_group_term_transform)]
pub struct SecurityGroupSelectorTerm {
    /// Tags every matching group has.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 20), transform = selector_tags_transform)]
    pub tags: BTreeMap<String, String>,
    /// A security group ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^sg-[0-9a-z]+$"))]
    pub id: Option<String>,
    /// A security group name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn security_group_term_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("has(self.tags) || has(self.id) || has(self.name)")
                .message("a security group selector term needs tags, id or name"),
            Rule::new("!has(self.id) || !(has(self.tags) || has(self.name))")
                .message("a security group selector term with id cannot also have tags or name"),
        ],
    );
}

/// Selects machine images.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = ami_term_transform)]
pub struct AmiSelectorTerm {
    /// `family@version`, e.g. `al2023@latest` or `bottlerocket@v1.20.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 30),
        regex(pattern = r"^(al2|al2023|bottlerocket|windows2019|windows2022)@(latest|v\S+)$")
    )]
    pub alias: Option<String>,
    /// Tags of the image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 20), transform = selector_tags_transform)]
    pub tags: BTreeMap<String, String>,
    /// An image ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^ami-[0-9a-z]+$"))]
    pub id: Option<String>,
    /// Image name; may contain wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Owner account ID or alias (`self`, `amazon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// SSM parameter whose value is an image ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm_parameter: Option<String>,
}

fn ami_term_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("has(self.alias) || has(self.tags) || has(self.id) || has(self.name) || has(self.ssmParameter)")
                .message("an AMI selector term needs alias, tags, id, name or ssmParameter"),
            Rule::new("!has(self.alias) || !(has(self.tags) || has(self.id) || has(self.name) || has(self.owner) || has(self.ssmParameter))")
                .message("an AMI selector term with alias cannot have any other field"),
            Rule::new("!has(self.id) || !(has(self.tags) || has(self.name) || has(self.owner))")
                .message("an AMI selector term with id cannot also have tags, name or owner"),
        ],
    );
}

/// How an image is bootstrapped into a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AmiFamily {
    /// Amazon Linux 2 (`bootstrap.sh`).
    AL2,
    /// Amazon Linux 2023 (nodeadm `NodeConfig`).
    AL2023,
    /// Bottlerocket (TOML settings).
    Bottlerocket,
    /// A custom image; user data is passed through unchanged.
    Custom,
    /// Windows Server 2019.
    Windows2019,
    /// Windows Server 2022.
    Windows2022,
}

impl AmiFamily {
    /// The alias family name (`al2023`) of this AMI family, if it has aliases.
    pub fn alias_name(self) -> Option<&'static str> {
        match self {
            Self::AL2 => Some("al2"),
            Self::AL2023 => Some("al2023"),
            Self::Bottlerocket => Some("bottlerocket"),
            Self::Windows2019 => Some("windows2019"),
            Self::Windows2022 => Some("windows2022"),
            Self::Custom => None,
        }
    }

    /// The family an alias (`al2023@latest`) names.
    pub fn from_alias(alias: &str) -> Option<Self> {
        let family = alias.split_once('@').map(|(f, _)| f)?;
        [Self::AL2, Self::AL2023, Self::Bottlerocket, Self::Windows2019, Self::Windows2022]
            .into_iter()
            .find(|f| f.alias_name() == Some(family))
    }
}

/// Kubelet settings that change how much of a node pods may use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = kubelet_transform)]
pub struct KubeletConfiguration {
    /// DNS server addresses for pods.
    #[serde(default, rename = "clusterDNS", skip_serializing_if = "Vec::is_empty")]
    pub cluster_dns: Vec<String>,
    /// Pod limit per node, overriding the ENI-based default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_pods: Option<i32>,
    /// Pods per core; the node limit is the smaller of this and `maxPods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods_per_core: Option<i32>,
    /// Resources reserved for the operating system.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub system_reserved: BTreeMap<String, String>,
    /// Resources reserved for the kubelet and container runtime.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kube_reserved: BTreeMap<String, String>,
    /// Hard eviction thresholds (`memory.available: 100Mi`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_EVICTION_SIGNALS))]
    pub eviction_hard: BTreeMap<String, String>,
    /// Soft eviction thresholds; each needs a grace period.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_EVICTION_SIGNALS))]
    pub eviction_soft: BTreeMap<String, String>,
    /// Grace periods of the soft thresholds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_EVICTION_SIGNALS))]
    pub eviction_soft_grace_period: BTreeMap<String, String>,
    /// Longest pod termination grace period honoured on soft eviction, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_max_pod_grace_period: Option<i32>,
    /// Disk usage percentage above which image garbage collection always runs.
    #[serde(default, rename = "imageGCHighThresholdPercent", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub image_gc_high_threshold_percent: Option<i32>,
    /// Disk usage percentage image garbage collection frees down to.
    #[serde(default, rename = "imageGCLowThresholdPercent", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub image_gc_low_threshold_percent: Option<i32>,
    /// Whether CPU limits are enforced with CFS quota.
    #[serde(default, rename = "cpuCFSQuota", skip_serializing_if = "Option::is_none")]
    pub cpu_cfs_quota: Option<bool>,
}

fn kubelet_transform(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        vec![
            Rule::new("!has(self.imageGCHighThresholdPercent) || !has(self.imageGCLowThresholdPercent) || self.imageGCHighThresholdPercent > self.imageGCLowThresholdPercent")
                .message("imageGCHighThresholdPercent must be greater than imageGCLowThresholdPercent")
                .field_path(".imageGCHighThresholdPercent"),
            Rule::new("!has(self.evictionSoft) || (has(self.evictionSoftGracePeriod) && self.evictionSoft.all(k, k in self.evictionSoftGracePeriod))")
                .message("every evictionSoft threshold needs an evictionSoftGracePeriod")
                .field_path(".evictionSoftGracePeriod"),
        ],
    );
}

/// One block device of an instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockDeviceMapping {
    /// Device name, e.g. `/dev/xvda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The EBS volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs: Option<BlockDevice>,
    /// Whether this is the root volume (ephemeral storage is computed from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<bool>,
}

/// An EBS volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockDevice {
    /// Whether the volume is deleted with the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_on_termination: Option<bool>,
    /// Whether the volume is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// Provisioned IOPS (io1, io2, gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<i64>,
    /// KMS key for encryption.
    #[serde(default, rename = "kmsKeyID", skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Snapshot the volume starts from.
    #[serde(default, rename = "snapshotID", skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Throughput in MiB/s (gp3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<i64>,
    /// Size, e.g. `20Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<Quantity>,
    /// EBS volume type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<VolumeType>,
}

/// EBS volume types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// Magnetic.
    Standard,
    /// Provisioned IOPS SSD.
    Io1,
    /// Provisioned IOPS SSD, newer.
    Io2,
    /// General purpose SSD.
    Gp2,
    /// Cold HDD.
    Sc1,
    /// Throughput-optimised HDD.
    St1,
    /// General purpose SSD, newer.
    Gp3,
}

/// Instance metadata service settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetadataOptions {
    /// Whether the metadata endpoint answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_endpoint: Option<Toggle>,
    /// Whether the IPv6 metadata endpoint answers.
    #[serde(default, rename = "httpProtocolIPv6", skip_serializing_if = "Option::is_none")]
    pub http_protocol_ipv6: Option<Toggle>,
    /// Network hops a metadata response may travel; 1 keeps it from pods on other network namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: Option<i64>,
    /// `required` for IMDSv2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tokens: Option<HttpTokens>,
}

/// An on/off setting in EC2's spelling.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

/// Whether IMDS session tokens are required.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    /// IMDSv2 only.
    Required,
    /// IMDSv1 allowed.
    Optional,
}

/// How local NVMe instance-store disks are used.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum InstanceStorePolicy {
    /// Striped into one volume for the kubelet and containers.
    RAID0,
}

/// What Rafter resolved the selectors to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EC2NodeClassStatus {
    /// Subnets matched by the selector terms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<ResolvedSubnet>,
    /// Security groups matched by the selector terms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<ResolvedSecurityGroup>,
    /// Images matched by the selector terms, with the node requirements each fits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amis: Vec<ResolvedAmi>,
    /// Instance profile used for launches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// Ready, SubnetsReady, SecurityGroupsReady, AMIsReady, InstanceProfileReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A subnet an EC2NodeClass launches into.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedSubnet {
    /// Subnet ID.
    pub id: String,
    /// Zone name.
    pub zone: String,
    /// Zone ID.
    #[serde(default, rename = "zoneID", skip_serializing_if = "Option::is_none")]
    pub zone_id: Option<String>,
}

/// A security group of an EC2NodeClass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResolvedSecurityGroup {
    /// Group ID.
    pub id: String,
    /// Group name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An image of an EC2NodeClass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResolvedAmi {
    /// Image ID.
    pub id: String,
    /// Image name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Node requirements (architecture, GPU) this image serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<NodeSelectorRequirementWithMinValues>,
}

/// Condition types of an EC2NodeClass.
pub mod conditions {
    /// Everything resolved; launches may use this class.
    pub const READY: &str = "Ready";
    /// The subnet selectors matched at least one subnet.
    pub const SUBNETS_READY: &str = "SubnetsReady";
    /// The security group selectors matched at least one group.
    pub const SECURITY_GROUPS_READY: &str = "SecurityGroupsReady";
    /// The AMI selectors matched at least one image.
    pub const AMIS_READY: &str = "AMIsReady";
    /// The instance profile exists.
    pub const INSTANCE_PROFILE_READY: &str = "InstanceProfileReady";
}

/// Puts `maxLength` on a string map's values (a CRD schema cannot bound keys; `validation` does).
fn bound_map_values(schema: &mut schemars::Schema, max: usize) {
    if let Some(values) =
        schema.as_object_mut().and_then(|m| m.get_mut("additionalProperties")).and_then(|v| v.as_object_mut())
    {
        values.insert("maxLength".into(), max.into());
    }
}
