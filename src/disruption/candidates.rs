//! Which nodes the disruption methods may consider, in which order, and why each other node stays.
//!
//! A candidate is a Rafter-owned, initialized node whose claim is not being deleted, that is not
//! already being disrupted (the `karpenter.sh/disrupted` taint), that nothing blocks — the
//! `karpenter.sh/do-not-disrupt` annotation on the Node, the NodeClaim or one of its pods, a pod a
//! PodDisruptionBudget allows no disruption of, a pod no controller would bring back — and that
//! has been quiet (no pod bound or gone) for its pool's `consolidateAfter`. Candidates are ordered
//! by disruption cost: cheapest to disrupt first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;

use crate::api::labels;
use crate::api::nodeclaim::{NodeClaim, conditions};
use crate::api::nodepool::NodePool;
use crate::scheduling::instance_types::InstanceType;
use crate::scheduling::topology::selects;
use crate::state::disruption::is_workload;
use crate::state::{Snapshot, condition_true, node_name, pool_of};

/// Annotation giving a pod's relative cost of deletion (higher: deleted later).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A node the methods may disrupt.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub claim: &'a NodeClaim,
    pub node: &'a Node,
    pub pool: &'a NodePool,
    /// Claim, node and pool names.
    pub name: String,
    pub node_name: String,
    pub pool_name: String,
    /// The pods its drain would send elsewhere (workload pods; DaemonSet and mirror pods stay).
    pub pods: Vec<&'a Pod>,
    /// What it costs an hour, when its offering is in the catalog.
    pub price: Option<f64>,
    /// Whether it is a spot instance.
    pub spot: bool,
    /// Disruption cost: larger for more, higher-priority and dearer-to-delete pods, smaller the
    /// closer the claim is to expiry.
    pub cost: f64,
}

/// A node that stays, and why (for the `Unconsolidatable` Event and the dry run).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Kept {
    pub claim: String,
    pub node: String,
    pub why: String,
}

/// The nodes of a snapshot as the disruption methods see them.
#[derive(Debug, Default)]
pub struct Classified<'a> {
    /// In order of disruption cost, cheapest first.
    pub candidates: Vec<Candidate<'a>>,
    pub kept: Vec<Kept>,
    /// Per pool: its nodes (claims not yet gone) and how many of them are being disrupted now.
    pub pool_nodes: HashMap<String, usize>,
    pub disrupting: HashMap<String, usize>,
}

/// What [`classify`] reads besides the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub pdbs: &'a [Arc<PodDisruptionBudget>],
    /// Each pool's instance types (for prices).
    pub types: &'a HashMap<String, Vec<InstanceType>>,
    pub now: Timestamp,
}

fn annotated(meta: &kube::core::ObjectMeta) -> bool {
    meta.annotations.as_ref().and_then(|a| a.get(labels::DO_NOT_DISRUPT)).is_some_and(|v| v == "true")
}

fn has_disrupted_taint(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == labels::DISRUPTED_TAINT_KEY))
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.name_any())
}

/// Why a pod keeps its node, if it does.
fn pod_blocks(pod: &Pod, pdbs: &[Arc<PodDisruptionBudget>]) -> Option<String> {
    if annotated(&pod.metadata) {
        return Some(format!("pod {} has {}", key(pod), labels::DO_NOT_DISRUPT));
    }
    if !pod.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true)) {
        return Some(format!("pod {} has no controller to recreate it elsewhere", key(pod)));
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    for pdb in pdbs {
        if pdb.metadata.namespace.as_deref().unwrap_or("default") != namespace {
            continue;
        }
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
        let allowed = pdb.status.as_ref().map(|s| s.disruptions_allowed).unwrap_or(0);
        if allowed <= 0 && selects(selector, &pod_labels) {
            return Some(format!(
                "PodDisruptionBudget {namespace}/{} allows no disruption of pod {}",
                pdb.name_any(),
                key(pod)
            ));
        }
    }
    None
}

/// A pod's eviction cost, as Karpenter weighs it: 1, plus its deletion cost and priority scaled
/// down, kept within [-10, 10] so no single pod dominates.
fn pod_cost(pod: &Pod) -> f64 {
    let deletion = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0) as f64;
    (1.0 + deletion / 2f64.powi(27) + priority / 2f64.powi(25)).clamp(-10.0, 10.0)
}

/// The price of a node's offering, from its labels and its pool's types.
pub fn node_price(node: &Node, types: &[InstanceType]) -> Option<f64> {
    let l = node.metadata.labels.as_ref()?;
    let name = l.get(labels::INSTANCE_TYPE)?;
    let zone = l.get(labels::ZONE)?;
    let capacity = l.get(labels::CAPACITY_TYPE)?;
    let it = types.iter().find(|t| &t.name == name)?;
    it.offerings.iter().find(|o| &o.zone == zone && o.capacity_type.as_str() == capacity).map(|o| o.price)
}

/// When the node last gained or lost a pod: the claim's `lastPodEventTime`, or since it was
/// initialized when none is recorded.
fn last_pod_event(claim: &NodeClaim) -> Option<Timestamp> {
    let status = claim.status.as_ref()?;
    let initialized = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::INITIALIZED && c.status == "True")
        .map(|c| c.last_transition_time.0);
    match (status.last_pod_event_time.as_ref().map(|t| t.0), initialized) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn since(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or(Duration::ZERO)
}

/// Sorts the snapshot's nodes into candidates and nodes that stay. Nodes Rafter does not own,
/// and claims not yet initialized, are neither: they are not Rafter's to disrupt yet.
pub fn classify<'a>(snapshot: Snapshot<'a>, inputs: Inputs<'a>) -> Classified<'a> {
    let mut out = Classified::default();
    let nodes_by_provider: HashMap<&str, &Node> =
        snapshot.nodes.iter().filter_map(|n| Some((n.spec.as_ref()?.provider_id.as_deref()?, n.as_ref()))).collect();
    let pools: HashMap<&str, &NodePool> =
        snapshot.pools.iter().map(|p| (p.metadata.name.as_deref().unwrap_or_default(), p)).collect();
    let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for pod in snapshot.pods {
        if let Some(node) = node_name(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    for claim in snapshot.claims {
        let Some(pool_name) = pool_of(claim.metadata.labels.as_ref()) else { continue };
        *out.pool_nodes.entry(pool_name.to_string()).or_default() += 1;
        let node = claim
            .status
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(|p| nodes_by_provider.get(p).copied());
        let being_disrupted = claim.metadata.deletion_timestamp.is_some()
            || node.is_some_and(|n| n.metadata.deletion_timestamp.is_some() || has_disrupted_taint(n));
        if being_disrupted {
            *out.disrupting.entry(pool_name.to_string()).or_default() += 1;
            continue;
        }
        let (Some(node), Some(pool)) = (node, pools.get(pool_name).copied()) else { continue };
        if !condition_true(claim, conditions::INITIALIZED) {
            continue;
        }
        let name = claim.name_any();
        let node_name = node.name_any();
        let keep = |why: String| Kept { claim: name.clone(), node: node_name.clone(), why };
        if annotated(&node.metadata) {
            out.kept.push(keep(format!("node {node_name} has {}", labels::DO_NOT_DISRUPT)));
            continue;
        }
        if annotated(&claim.metadata) {
            out.kept.push(keep(format!("nodeclaim {name} has {}", labels::DO_NOT_DISRUPT)));
            continue;
        }
        let on_node = by_node.get(node_name.as_str()).map(Vec::as_slice).unwrap_or_default();
        let pods: Vec<&Pod> =
            on_node.iter().copied().filter(|p| is_workload(p) && p.metadata.deletion_timestamp.is_none()).collect();
        if let Some(why) = pods.iter().find_map(|p| pod_blocks(p, inputs.pdbs)) {
            out.kept.push(keep(why));
            continue;
        }
        let Some(after) = pool.spec.consolidate_after() else {
            out.kept.push(keep(format!("NodePool {pool_name} has consolidateAfter: Never")));
            continue;
        };
        let quiet = last_pod_event(claim).map(|t| since(inputs.now, t)).unwrap_or_default();
        if quiet < after {
            // Worded without the seconds: a reason is reported once per change, not every second.
            out.kept.push(keep(format!("its pods changed within consolidateAfter ({}s)", after.as_secs())));
            continue;
        }
        let types = inputs.types.get(pool_name).map(Vec::as_slice).unwrap_or_default();
        let price = node_price(node, types);
        let spot = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::CAPACITY_TYPE))
            .is_some_and(|c| c == labels::CAPACITY_TYPE_SPOT);
        // Pods of a node near its expiry are disrupted soon anyway: weigh them by the life left.
        let life_left = claim
            .spec
            .template
            .expire_after()
            .parse()
            .ok()
            .flatten()
            .zip(claim.metadata.creation_timestamp.as_ref())
            .map(|(limit, created): (Duration, _)| {
                let age = since(inputs.now, created.0);
                if limit.is_zero() { 0.0 } else { (1.0 - age.as_secs_f64() / limit.as_secs_f64()).clamp(0.0, 1.0) }
            })
            .unwrap_or(1.0);
        let cost = pods.iter().map(|p| pod_cost(p)).sum::<f64>() * life_left;
        out.candidates.push(Candidate {
            claim,
            node,
            pool,
            name,
            node_name,
            pool_name: pool_name.to_string(),
            pods,
            price,
            spot,
            cost,
        });
    }
    out.candidates.sort_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.name.cmp(&b.name)));
    out
}
