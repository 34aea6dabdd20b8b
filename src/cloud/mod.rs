//! The cloud seam: a narrow provider trait with typed errors and an in-memory implementation for
//! tests and the demo; EC2 implements it in `rafter-aws`.

pub mod fake;
#[cfg(any(test, feature = "test-util"))]
pub mod suite;
pub mod unavailable;

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::api::EC2NodeClass;
use crate::api::ec2nodeclass::{ResolvedAmi, ResolvedSecurityGroup, ResolvedSubnet};
use crate::api::nodeclaim::NodeClaim;
use crate::api::nodepool::NodePool;
use crate::scheduling::instance_types::{CapacityType, InstanceType};

/// An instance's life, as EC2 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }
}

/// A machine the cloud runs for a NodeClaim.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `i-…`
    pub id: String,
    /// `aws:///us-east-1a/i-…`, the Node's `spec.providerID`.
    pub provider_id: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub state: InstanceState,
    /// Hourly price paid for it.
    pub price: f64,
    /// The node name the kubelet will register (EC2's private DNS name).
    pub private_dns_name: String,
    pub private_ip: String,
    /// Tags, including `karpenter.sh/nodeclaim` and `karpenter.sh/nodepool`.
    pub tags: BTreeMap<String, String>,
    /// RFC 3339 launch time.
    pub launch_time: String,
}

impl Instance {
    /// The NodeClaim this instance was launched for, from its tag.
    pub fn node_claim(&self) -> Option<&str> {
        self.tags.get(TAG_NODECLAIM).map(String::as_str)
    }

    /// The launch group this instance was launched for, from its tag.
    pub fn launch_group(&self) -> Option<&str> {
        self.tags.get(LAUNCH_GROUP).map(String::as_str)
    }
}

/// Tag naming the NodeClaim an instance belongs to.
pub const TAG_NODECLAIM: &str = "karpenter.sh/nodeclaim";
/// Tag naming the NodePool.
pub const TAG_NODEPOOL: &str = "karpenter.sh/nodepool";
/// The launch group of a claim (an annotation, written with the claim before any cloud call) and
/// of the instances launched for it (a tag, set by the launch call itself). Claims of one group
/// may share one launch call; an instance of the group that no claim is tagged on yet belongs to
/// a claim of that group whose launch outlived its caller, and the next leader adopts it instead of
/// buying again.
pub const LAUNCH_GROUP: &str = "rafter.sh/launch-group";

/// A claim's launch group, from its annotation.
pub fn launch_group(claim: &NodeClaim) -> Option<&str> {
    claim.metadata.annotations.as_ref()?.get(LAUNCH_GROUP).map(String::as_str).filter(|g| !g.is_empty())
}

/// One way to buy a type: the unit the insufficient-capacity cache works in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfferingKey {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
}

impl std::fmt::Display for OfferingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.instance_type, self.zone, self.capacity_type.as_str())
    }
}

/// Why a machine no longer matches its NodeClaim's intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftReason(pub String);

/// One readiness check of a node class (a condition on its status).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeClassCheck {
    pub type_: String,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

/// What a node class's selectors resolved to, for its status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeClassReport {
    pub subnets: Vec<ResolvedSubnet>,
    pub security_groups: Vec<ResolvedSecurityGroup>,
    pub amis: Vec<ResolvedAmi>,
    pub instance_profile: Option<String>,
    pub checks: Vec<NodeClassCheck>,
}

/// A provider's own counters, exported as metrics by the controller.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudStats {
    /// API calls by (service, operation), retries included.
    pub api_calls: BTreeMap<(String, String), u64>,
    /// Refreshes that failed (the last good data was kept), by kind.
    pub refresh_failures: BTreeMap<String, u64>,
}

/// What the cloud can say went wrong; each kind has its own remedy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloudError {
    /// No capacity in any offering tried; these offerings should be avoided for a while.
    #[error("insufficient capacity for {}", offerings.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    InsufficientCapacity { offerings: Vec<OfferingKey> },
    /// The API throttled the call: retry with backoff and jitter.
    #[error("throttled by the cloud API: {message}")]
    Throttled { message: String },
    /// The instance does not exist (for deletes: it is gone, which is success).
    #[error("instance {id} not found")]
    NotFound { id: String },
    /// The user's configuration cannot work (no subnet, no such AMI, no permission): fix it, don't retry.
    #[error("invalid cloud configuration: {message}")]
    InvalidConfiguration { message: String },
    /// Anything else that may pass: retry.
    #[error("transient cloud error: {message}")]
    Transient { message: String },
}

/// The cloud, as Rafter needs it. Every call is idempotent where it says so, so any replica may
/// repeat a call a previous leader made.
#[async_trait]
pub trait CloudProvider: Send + Sync + std::fmt::Debug {
    /// Launches the machine for a claim; repeating it for the same claim returns the same machine.
    async fn create(&self, claim: &NodeClaim) -> Result<Instance, CloudError>;
    /// Terminates the claim's machine; `NotFound` means it is already gone.
    async fn delete(&self, claim: &NodeClaim) -> Result<(), CloudError>;
    async fn get(&self, provider_id: &str) -> Result<Instance, CloudError>;
    /// Every instance of this cluster, for garbage collection and for simulated kubelets.
    async fn list(&self) -> Result<Vec<Instance>, CloudError>;
    /// The types a pool may launch, with offerings and prices.
    async fn instance_types(&self, pool: &NodePool) -> Result<Vec<InstanceType>, CloudError>;
    async fn is_drifted(&self, claim: &NodeClaim) -> Result<Option<DriftReason>, CloudError>;

    /// Avoids these offerings for launches until `ttl` has passed: the cloud warned that their
    /// capacity is being taken back (a spot interruption), so a replacement must land elsewhere.
    fn mark_unavailable(&self, offerings: &[OfferingKey], ttl: std::time::Duration);
    /// Marks the offerings of `types` that launches avoid now (`unavailable::UnavailableOfferings`)
    /// unavailable, so the solver plans around them. The cloud holds the one cache: whoever marks
    /// an offering marks it here, once.
    fn mask_unavailable(&self, types: &mut [InstanceType]);
    /// Resolves a node class's selectors for its status; `None` where the cloud has no node classes.
    async fn node_class_report(&self, _class: &EC2NodeClass) -> Result<Option<NodeClassReport>, CloudError> {
        Ok(None)
    }
    /// The provider's counters; none for providers that keep none.
    fn stats(&self) -> CloudStats {
        CloudStats::default()
    }
}

/// Splits `aws:///us-east-1a/i-0abc` into zone and instance id.
pub fn parse_provider_id(provider_id: &str) -> Option<(&str, &str)> {
    let rest = provider_id.strip_prefix("aws:///")?;
    let (zone, id) = rest.split_once('/')?;
    if zone.is_empty() || !id.starts_with("i-") {
        return None;
    }
    Some((zone, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_split_into_zone_and_instance() {
        assert_eq!(parse_provider_id("aws:///us-east-1a/i-0abc"), Some(("us-east-1a", "i-0abc")));
        assert_eq!(parse_provider_id("kind://x"), None);
        assert_eq!(parse_provider_id("aws:///us-east-1a/x"), None);
    }
}
