//! Cluster state as Rafter reads it, and the pure decisions its actors act on: which pods need
//! capacity, what existing nodes and in-flight claims still hold, batch windows, emptiness, expiry,
//! claim timeouts and the order pods are evicted in.
//!
//! Everything here is a synchronous function of the objects the watches deliver and of a time
//! given by the caller, so it is tested without a cluster, a cloud or a runtime.

pub mod disruption;
pub mod drain;
pub mod lifecycle;
pub mod orphans;
pub mod pool_status;
pub mod volumes;
pub mod window;

use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::api::labels;
use crate::api::nodeclaim::NodeClaim;
use crate::api::nodepool::NodePool;
use crate::scheduling::instance_types::InstanceType;
use crate::scheduling::requirements::{Requirement, Requirements};
use crate::scheduling::resources::{Resources, pod_requests};
use crate::scheduling::solver::{ExistingNode, PoolInput, SchedulingInput};
use crate::scheduling::taints;

/// Annotation the kubelet puts on static (mirror) pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether a pod is owned by a DaemonSet (its capacity is planned as per-node overhead instead).
pub fn owned_by_daemonset(pod: &Pod) -> bool {
    pod.metadata.owner_references.iter().flatten().any(|o| o.kind == "DaemonSet" && o.controller == Some(true))
}

/// Whether a pod is the API server's mirror of a kubelet's static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Whether a pod has finished (it holds no capacity any more).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Whether a pod needs capacity Rafter may buy: the scheduler said `Unschedulable`, it is not
/// bound, not being deleted, not finished, and neither a DaemonSet pod nor a mirror pod.
pub fn provisionable(pod: &Pod) -> bool {
    let unschedulable = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    });
    unschedulable
        && pod.spec.as_ref().is_some_and(|s| s.node_name.as_deref().is_none_or(str::is_empty))
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
        && !owned_by_daemonset(pod)
        && !is_mirror(pod)
}

/// Whether the kubelet reports a node Ready.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Taints a node carries only while it comes up, which Karpenter waits out rather than plans around:
/// kube-apiserver's `not-ready` on every new Node, the lifecycle controller's `unreachable`, and the
/// cloud provider's `uninitialized`.
pub const EPHEMERAL_TAINTS: [&str; 3] =
    [labels::NOT_READY_TAINT_KEY, labels::UNREACHABLE_TAINT_KEY, labels::UNINITIALIZED_TAINT_KEY];

/// Whether a taint on a claim's node goes away by itself as the node comes up: an ephemeral taint
/// (`NoSchedule`), one of the claim's startup taints, or `karpenter.sh/unregistered`.
pub fn comes_off(claim: &NodeClaim, taint: &k8s_openapi::api::core::v1::Taint) -> bool {
    (taint.effect == "NoSchedule" && EPHEMERAL_TAINTS.contains(&taint.key.as_str()))
        || taint.key == labels::UNREGISTERED_TAINT_KEY
        || claim.spec.template.startup_taints.iter().any(|s| s.key == taint.key && s.effect.as_str() == taint.effect)
}

/// Why a claim's registered node is not yet initialized, or `None` once it is: as Karpenter, the
/// Node is Ready, its ephemeral taints and the claim's startup taints are gone, and every resource
/// the instance has (GPUs and other extended resources included) is registered in allocatable.
pub fn not_initialized(claim: &NodeClaim, node: &Node) -> Option<String> {
    if !node_ready(node) {
        return Some("the node is not Ready".into());
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    if let Some(t) = taints.into_iter().flatten().find(|t| comes_off(claim, t)) {
        return Some(format!("the node still has the taint {}:{}", t.key, t.effect));
    }
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let capacity = claim.status.as_ref().map(|s| &s.capacity);
    for (resource, quantity) in capacity.into_iter().flatten() {
        if quantity.parse().unwrap_or(0) <= 0 {
            continue;
        }
        let registered = allocatable
            .and_then(|a| a.get(resource))
            .and_then(|q| crate::api::quantity::parse_millis(&q.0).ok())
            .is_some_and(|v| v > 0);
        if !registered {
            return Some(format!("the node has not registered {resource}"));
        }
    }
    None
}

/// The node a pod is bound to, if any.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

/// The NodePool a claim or node belongs to, from its label.
pub fn pool_of(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    labels.and_then(|l| l.get(labels::NODEPOOL)).map(String::as_str)
}

/// What the watches hold, borrowed for one computation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot<'a> {
    pub pods: &'a [Arc<Pod>],
    pub nodes: &'a [Arc<Node>],
    pub claims: &'a [Arc<NodeClaim>],
    /// NodePools, legacy Provisioners already converted.
    pub pools: &'a [NodePool],
    pub daemonsets: &'a [Arc<DaemonSet>],
    /// Claims, volumes and classes, for the zones pending pods' volumes confine them to.
    pub storage: volumes::Storage<'a>,
}

/// A pool that could not be used for this solve, and why (it gets a status condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolProblem {
    pub pool: String,
    pub message: String,
}

/// The registered Node of a claim, found by provider ID.
fn claim_node<'a>(claim: &NodeClaim, nodes_by_provider: &HashMap<&str, &'a Node>) -> Option<&'a Node> {
    let provider = claim.status.as_ref().and_then(|s| s.provider_id.as_deref())?;
    nodes_by_provider.get(provider).copied()
}

/// Builds the solver's input: the pending pods, every pool with its instance types and what it
/// has left under its limits, existing nodes with what their pods leave free, and claims still in
/// flight (launched or not) with the room their instance type gives, so pods already covered by
/// in-flight capacity are placed there instead of buying again.
pub fn scheduling_input(
    snapshot: Snapshot<'_>,
    pending: Vec<Pod>,
    instance_types: impl FnMut(&NodePool) -> Vec<InstanceType>,
) -> (SchedulingInput, Vec<PoolProblem>) {
    scheduling_input_keeping(snapshot, pending, instance_types, |_| true)
}

/// [`scheduling_input`], passing on as bound pods only those `keep` says can constrain a
/// placement: every bound pod still counts against its node's room, but copying a hundred
/// thousand pods that no topology constraint selects is most of the cost of a large cluster's input.
pub fn scheduling_input_keeping(
    snapshot: Snapshot<'_>,
    pending: Vec<Pod>,
    mut instance_types: impl FnMut(&NodePool) -> Vec<InstanceType>,
    keep: impl Fn(&Pod) -> bool,
) -> (SchedulingInput, Vec<PoolProblem>) {
    let nodes_by_provider: HashMap<&str, &Node> =
        snapshot.nodes.iter().filter_map(|n| Some((n.spec.as_ref()?.provider_id.as_deref()?, n.as_ref()))).collect();
    let mut requested: HashMap<&str, Resources> = HashMap::new();
    let mut bound_pods = Vec::new();
    for pod in snapshot.pods {
        let Some(node) = node_name(pod) else { continue };
        if is_terminal(pod) {
            continue;
        }
        if let Some(spec) = pod.spec.as_ref()
            && let Ok(r) = pod_requests(spec)
        {
            requested.entry(node).or_insert_with(Resources::zero).add(&r);
        }
        if keep(pod) {
            bound_pods.push(pod.as_ref().clone());
        }
    }

    // A claim's node that has not initialized yet is planned as the claim would be: the taints that
    // come off as it comes up do not keep pods away, so pods waiting for it buy nothing more.
    let coming_up: HashMap<&str, &NodeClaim> = snapshot
        .claims
        .iter()
        .filter(|c| !condition_true(c, crate::api::nodeclaim::conditions::INITIALIZED))
        .filter_map(|c| Some((c.status.as_ref()?.provider_id.as_deref()?, c.as_ref())))
        .collect();
    let mut in_use: HashMap<String, Resources> = HashMap::new();
    let mut existing = Vec::new();
    for node in snapshot.nodes {
        let name = node.name_any();
        let capacity =
            node.status.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| Resources::from_kube(c).ok());
        if let (Some(pool), Some(capacity)) = (pool_of(node.metadata.labels.as_ref()), &capacity) {
            in_use.entry(pool.to_string()).or_insert_with(Resources::zero).add(capacity);
        }
        if node.metadata.deletion_timestamp.is_some() || node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
        {
            continue;
        }
        let Some(Ok(mut available)) =
            node.status.as_ref().and_then(|s| s.allocatable.as_ref()).map(Resources::from_kube)
        else {
            continue;
        };
        if let Some(r) = requested.get(name.as_str()) {
            available.sub(r);
        }
        let mut node_labels = node.metadata.labels.clone().unwrap_or_default();
        node_labels.entry(labels::HOSTNAME.to_string()).or_insert_with(|| name.clone());
        let claim = node.spec.as_ref().and_then(|s| s.provider_id.as_deref()).and_then(|p| coming_up.get(p));
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.key != labels::UNREGISTERED_TAINT_KEY)
            .filter(|t| claim.is_none_or(|c| !comes_off(c, t)))
            .filter_map(taints::from_kube)
            .collect();
        existing.push(ExistingNode {
            name,
            requirements: Requirements::from_labels(&node_labels),
            taints,
            available,
            initialized: claim.is_none(),
        });
    }

    let pools_by_name: HashMap<&str, &NodePool> =
        snapshot.pools.iter().map(|p| (p.metadata.name.as_deref().unwrap_or_default(), p)).collect();
    let mut types_by_pool: HashMap<&str, Vec<InstanceType>> = HashMap::new();
    for pool in snapshot.pools {
        types_by_pool.insert(pool.metadata.name.as_deref().unwrap_or_default(), instance_types(pool));
    }
    for claim in snapshot.claims {
        if claim.metadata.deletion_timestamp.is_some() || claim_node(claim, &nodes_by_provider).is_some() {
            continue;
        }
        let Ok(mut requirements) = Requirements::from_api(&claim.spec.template.requirements) else { continue };
        let claim_labels = claim.metadata.labels.clone().unwrap_or_default();
        requirements.add_all(&Requirements::from_labels(&claim_labels));
        let status = claim.status.as_ref();
        let launched_allocatable =
            status.filter(|s| !s.allocatable.is_empty()).and_then(|s| Resources::from_quantities(&s.allocatable).ok());
        let pool = pool_of(claim.metadata.labels.as_ref()).unwrap_or_default();
        let options = types_by_pool.get(pool).map(Vec::as_slice).unwrap_or_default();
        let type_req = requirements.get(labels::INSTANCE_TYPE).cloned();
        let smallest = || {
            options
                .iter()
                .filter(|t| type_req.as_ref().is_none_or(|r| r.allows(Some(&t.name))))
                .map(InstanceType::allocatable)
                .min_by_key(|a| (a.cpu, a.memory))
        };
        let Some(available) = launched_allocatable.or_else(smallest) else { continue };
        let capacity = status
            .filter(|s| !s.capacity.is_empty())
            .and_then(|s| Resources::from_quantities(&s.capacity).ok())
            .unwrap_or_else(|| available.clone());
        if !pool.is_empty() {
            in_use.entry(pool.to_string()).or_insert_with(Resources::zero).add(&capacity);
        }
        if let Some(type_name) = launched_type(claim) {
            requirements.add(Requirement::single(labels::INSTANCE_TYPE, type_name));
        }
        existing.push(ExistingNode {
            name: claim.name_any(),
            requirements,
            taints: claim.spec.template.taints.clone(),
            available,
            initialized: false,
        });
    }

    let mut pools = Vec::new();
    let mut problems = Vec::new();
    for (name, pool) in &pools_by_name {
        if pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // A pool that fails validation is not Ready (its status says which field) and gets no launches.
        if let Err(invalid) = crate::api::validation::validate_node_pool(&pool.spec) {
            problems.push(PoolProblem { pool: name.to_string(), message: invalid.to_string() });
            continue;
        }
        let used = in_use.get(*name).cloned().unwrap_or_else(Resources::zero);
        let types = types_by_pool.remove(name).unwrap_or_default();
        match PoolInput::from_node_pool(pool, types, &used) {
            Ok(p) => pools.push(p),
            Err(e) => problems.push(PoolProblem { pool: name.to_string(), message: e.to_string() }),
        }
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let daemonsets = snapshot.daemonsets.iter().filter_map(|d| d.spec.as_ref()?.template.spec.clone()).collect();
    let volume_zones = volumes::volume_zones(&pending, snapshot.storage);
    let input = SchedulingInput {
        pods: pending,
        pools,
        nodes: existing,
        daemonsets,
        bound_pods,
        volume_zones,
        fewest_new_nodes: false,
    };
    (input, problems)
}

/// Whether a claim's status has the condition `type_` True.
pub fn condition_true(claim: &NodeClaim, type_: &str) -> bool {
    claim.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The instance type a claim launched as, from its label.
pub fn launched_type(claim: &NodeClaim) -> Option<&str> {
    claim.metadata.labels.as_ref().and_then(|l| l.get(labels::INSTANCE_TYPE)).map(String::as_str)
}

#[cfg(test)]
pub(crate) mod tests;
