//! The solver: which pending pods go on existing capacity, and which new machines to buy for the rest.
//!
//! # Algorithm
//!
//! First-fit decreasing with Karpenter's relaxation of preferences, and packing that watches price:
//!
//! 1. Pods are read once into [`PodInfo`] (requests, node-affinity terms, tolerations, topology)
//!    and sorted by CPU, then memory, descending; ties by namespace/name, so the plan is
//!    deterministic.
//! 2. Topology constraints on keys other than the hostname (zone spread, zone affinity and
//!    anti-affinity, …) pin the pod to one domain, tried in order of fewest matching pods; constraints
//!    by hostname are checked against each node or claim.
//! 3. Each pod is tried, in order, on existing initialised nodes, on in-flight NodeClaims (only
//!    where every label the claim may get satisfies the pod), on the new claims opened so far in
//!    this solve, and finally on a new claim from the first NodePool (by weight, then name) that
//!    admits it.
//! 4. A new claim starts with every instance type of its pool that is compatible with the pool's
//!    and the pod's requirements, has an available offering, fits the pod plus the pool's
//!    DaemonSet overhead, and stays within the pool's remaining limits. A pod joins an open claim
//!    only if some type (and `minValues` distinct values) remains, and only if the claim's
//!    cheapest type rises by less than the price of a node for the pod alone: packing never buys a
//!    large machine where two small ones are cheaper.
//! 5. A pod that cannot be placed is relaxed one step and tried again, in Karpenter's order: the
//!    next required node-affinity term; preferred pod affinity, then preferred pod anti-affinity
//!    (heaviest first); the heaviest remaining preferred node-affinity term (preferred terms are
//!    honoured as requirements until dropped); `ScheduleAnyway` spreads; then `PreferNoSchedule`
//!    taints tolerated. When nothing is left to relax, the pod is reported with the reason of its
//!    last attempt.
//! 6. Each claim's instance types are sorted by their cheapest available offering under the claim's
//!    requirements and cut to 60, keeping `minValues` satisfied; the claim's price is that of its
//!    cheapest option.
//!
//! # Complexity
//!
//! O(P log P) to sort, then per pod O(N + C'·T + G): N existing nodes, C' open claims scanned, T
//! instance types of the pool, G topology selections. Pods the solver cannot tell apart form a
//! class, and a claim that refused one pod of a class is skipped for the rest of the class (claims
//! only fill up and narrow, and topology counts only grow), so over a whole solve each class scans
//! each claim about once: O(P·T + K·C) for K classes. Two caches keep the T factor small: a
//! claim's types stay cheapest first, so a refusal usually costs a scan to the first type that fits
//! (the full list is rebuilt only when a pod joins); and which types still admit a claim once a pod
//! narrows it (a zone pin, say) is computed once per distinct narrowing and then looked up.
//!
//! # Where it loses to the optimum
//!
//! Greedy packing in decreasing order is within 11/9 of the optimal node count for one resource and
//! one machine size; with several sizes and prices it decides each pod's place once and never moves
//! it, and the price rule compares a pod only with a node of its own, not with re-packing the
//! claim. Preferences are relaxed per pod, so a pod relaxed early does not come back when later pods
//! open capacity that would have satisfied its preference. Domains of zone-like keys are chosen
//! per pod, not jointly.
//!
//! It is one piece because the packing, the relaxation of preferences, the limits and the claim
//! finishing are one algorithm over one set of working structures; its helpers that stand alone
//! (requirements, resources, topology, instance types) are modules of their own.

use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodSpec, Toleration};
use serde::Serialize;

use crate::api::NodePool;
use crate::api::labels::{CAPACITY_TYPE, HOSTNAME, INSTANCE_TYPE, WELL_KNOWN_LABELS, ZONE};
use crate::api::nodeclaim::{NodeSelectorRequirementWithMinValues, Taint};

use super::instance_types::InstanceType;
use super::requirements::{
    Conflict, Requirement, RequirementError, Requirements, pod_preferred_terms, pod_required_terms,
};
use super::resources::{CPU, MEMORY, ResourceError, Resources, pod_requests};
use super::taints::{Display as TaintDisplay, first_untolerated};
use super::topology::{AffinityTerm, Counts, PodTopology, Spread, Target, is_hostname};

/// Most instance types a new NodeClaim lists.
pub const MAX_INSTANCE_TYPES: usize = 60;

/// Why a NodePool cannot be turned into solver input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A requirement is malformed.
    #[error("NodePool {pool}: {source}")]
    Requirement {
        /// The pool.
        pool: String,
        /// What is wrong.
        #[source]
        source: RequirementError,
    },
    /// A limit is not a quantity.
    #[error("NodePool {pool}: spec.limits: {source}")]
    Limit {
        /// The pool.
        pool: String,
        /// What is wrong.
        #[source]
        source: ResourceError,
    },
}

/// A pool's cap on one resource: what is left of it and how the user wrote the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Resource name.
    pub resource: String,
    /// What new capacity may still add (limit minus what the pool's nodes already have).
    pub remaining: i64,
    /// The limit as written, for messages.
    pub written: String,
}

/// A NodePool as the solver needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolInput {
    /// The pool's name.
    pub name: String,
    /// Higher weights are tried first.
    pub weight: i32,
    /// Template requirements and labels.
    pub requirements: Requirements,
    /// Taints of its nodes (startup taints excluded: pods need not tolerate them).
    pub taints: Vec<Taint>,
    /// The instance types its node class can launch.
    pub instance_types: Vec<InstanceType>,
    /// Its limits.
    pub limits: Vec<Limit>,
}

impl PoolInput {
    /// Reads a NodePool; `in_use` is what its existing nodes and claims already hold.
    pub fn from_node_pool(
        pool: &NodePool,
        instance_types: Vec<InstanceType>,
        in_use: &Resources,
    ) -> Result<Self, PoolError> {
        let name = pool.name_any();
        let template = &pool.spec.template;
        let mut requirements = Requirements::from_api(&template.spec.requirements)
            .map_err(|source| PoolError::Requirement { pool: name.clone(), source })?;
        if let Some(meta) = &template.metadata {
            requirements.add_all(&Requirements::from_labels(&meta.labels));
        }
        requirements.add(Requirement::single(crate::api::labels::NODEPOOL, name.clone()));
        let parsed = Resources::from_quantities(&pool.spec.limits)
            .map_err(|source| PoolError::Limit { pool: name.clone(), source })?;
        let limits = pool
            .spec
            .limits
            .iter()
            .map(|(resource, written)| Limit {
                resource: resource.clone(),
                remaining: parsed.get(resource) - in_use.get(resource),
                written: written.to_string(),
            })
            .collect();
        Ok(Self {
            name,
            weight: pool.spec.weight(),
            requirements,
            taints: template.spec.taints.clone(),
            instance_types,
            limits,
        })
    }
}

/// A node that exists (or a NodeClaim in flight) with room left.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingNode {
    /// Node or NodeClaim name.
    pub name: String,
    /// For a node, its labels (`key In [value]`); for an in-flight claim, its requirements.
    pub requirements: Requirements,
    /// Its taints.
    pub taints: Vec<Taint>,
    /// Allocatable minus what its pods request.
    pub available: Resources,
    /// False for a NodeClaim that has not registered yet.
    pub initialized: bool,
}

/// Everything a solve looks at.
#[derive(Debug, Clone, Default)]
pub struct SchedulingInput {
    /// Pending pods.
    pub pods: Vec<Pod>,
    /// NodePools with their instance types.
    pub pools: Vec<PoolInput>,
    /// Existing nodes and in-flight claims.
    pub nodes: Vec<ExistingNode>,
    /// Pod specs of the DaemonSets, whose pods land on every new node that admits them.
    pub daemonsets: Vec<PodSpec>,
    /// Pods already running on `nodes` (by `spec.nodeName`), counted by topology constraints.
    pub bound_pods: Vec<Pod>,
    /// Zones a pod's volumes live in (namespace/name → zones); the pod may only run there.
    pub volume_zones: BTreeMap<String, Vec<String>>,
    /// Pack pods into as few new claims as fit, instead of the cheapest set: a pod joins any open
    /// claim some type still holds, however much dearer it gets. Consolidation asks this, since a
    /// replacement is one node or none.
    pub fewest_new_nodes: bool,
}

/// One instance type a new claim may launch as.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceOption {
    /// E.g. `m5.large`.
    pub name: String,
    /// Its cheapest available offering under the claim's requirements, USD per hour.
    pub price: f64,
}

/// A machine to buy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewClaim {
    /// The pool it belongs to.
    pub node_pool: String,
    /// Its requirements, including `node.kubernetes.io/instance-type In [options]`.
    pub requirements: Vec<NodeSelectorRequirementWithMinValues>,
    /// Instance types it may launch as, cheapest first, at most 60.
    pub instance_types: Vec<InstanceOption>,
    /// Price of the cheapest option, USD per hour.
    pub price: f64,
    /// What its pods and DaemonSets request.
    pub requests: BTreeMap<String, String>,
    /// The pods it is for (namespace/name).
    pub pods: Vec<String>,
}

/// A pod placed on existing or in-flight capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// namespace/name.
    pub pod: String,
    /// Node or NodeClaim name.
    pub node: String,
}

/// A pod no capacity can take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unplaced {
    /// namespace/name.
    pub pod: String,
    /// One line naming the deciding constraint.
    pub reason: String,
}

/// The solver's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// Machines to buy.
    pub claims: Vec<NewClaim>,
    /// Pods that fit on existing or in-flight capacity.
    pub placements: Vec<Placement>,
    /// Pods that fit nowhere.
    pub unplaced: Vec<Unplaced>,
}

impl Plan {
    /// Total hourly price of the new claims.
    pub fn price(&self) -> f64 {
        self.claims.iter().map(|c| c.price).sum()
    }
}

/// A pending pod, read once.
#[derive(Debug, Clone)]
pub struct PodInfo<'a> {
    /// namespace/name.
    pub key: String,
    /// What it needs from a node.
    pub requests: Resources,
    /// Required node-affinity terms (OR), each with the node selector.
    pub required: Vec<Requirements>,
    /// Preferred node-affinity terms, heaviest first.
    pub preferred: Vec<Requirements>,
    /// Its tolerations.
    pub tolerations: &'a [Toleration],
    /// Its spread constraints and pod (anti-)affinity.
    pub topology: PodTopology,
    /// Host ports it binds: (protocol, host IP, port).
    pub host_ports: Vec<HostPort>,
    /// Identical for pods the solver cannot tell apart (requests, requirements, tolerations,
    /// namespace, labels and topology).
    pub class: String,
}

/// Why a pod's spec cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// A request is malformed.
    #[error("{0}")]
    Resources(#[from] ResourceError),
    /// An affinity expression is malformed.
    #[error("{0}")]
    Requirement(#[from] RequirementError),
    /// The pod has no spec.
    #[error("pod has no spec")]
    NoSpec,
}

impl<'a> PodInfo<'a> {
    /// Reads a pod.
    pub fn new(pod: &'a Pod) -> Result<Self, PodError> {
        let spec = pod.spec.as_ref().ok_or(PodError::NoSpec)?;
        Ok(Self {
            key: pod_key(pod),
            requests: pod_requests(spec)?,
            required: pod_required_terms(spec)?,
            preferred: pod_preferred_terms(spec)?.into_iter().map(|(_, r)| r).collect(),
            tolerations: spec.tolerations.as_deref().unwrap_or_default(),
            topology: PodTopology::new(pod, spec),
            host_ports: host_ports(spec),
            class: String::new(),
        }
        .with_class())
    }
}

impl PodInfo<'_> {
    fn with_class(mut self) -> Self {
        self.class = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            self.requests, self.required, self.preferred, self.tolerations, self.topology
        );
        self
    }
}

/// A host port a pod binds: (protocol, host IP, port).
pub type HostPort = (String, String, i32);

/// The host ports of a pod's containers (init containers included).
pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, port))
        })
        .collect()
}

/// Whether two host ports cannot share a node (same protocol and port; `0.0.0.0` takes every IP).
fn ports_conflict(a: &HostPort, b: &HostPort) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Labels every node gets from the cloud or kubelet, so a pool that says nothing about them still
/// produces nodes that carry some value.
fn defined_by_cloud(key: &str) -> bool {
    WELL_KNOWN_LABELS.contains(&key)
}

/// How far a pod's preferences have been relaxed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Attempt {
    /// Index of the required term in use.
    term: usize,
    /// How many preferred pod-affinity terms have been dropped (heaviest first).
    dropped_affinity: usize,
    /// How many preferred pod-anti-affinity terms have been dropped (heaviest first).
    dropped_anti_affinity: usize,
    /// How many of the heaviest preferred node-affinity terms have been dropped.
    dropped_preferences: usize,
    /// How many `ScheduleAnyway` spread constraints have been dropped.
    dropped_spreads: usize,
    /// Whether `PreferNoSchedule` taints are tolerated.
    tolerate_prefer_no_schedule: bool,
}

fn preferred_terms(pod: &PodInfo<'_>, anti: bool) -> usize {
    pod.topology.terms.iter().filter(|t| t.anti == anti && !t.required).count()
}

impl Attempt {
    /// One relaxation step in Karpenter's order; false when nothing is left to relax.
    fn relax(&mut self, pod: &PodInfo<'_>) -> bool {
        if self.term + 1 < pod.required.len() {
            self.term += 1;
        } else if self.dropped_affinity < preferred_terms(pod, false) {
            self.dropped_affinity += 1;
        } else if self.dropped_anti_affinity < preferred_terms(pod, true) {
            self.dropped_anti_affinity += 1;
        } else if self.dropped_preferences < pod.preferred.len() {
            self.dropped_preferences += 1;
        } else if self.dropped_spreads < pod.topology.spreads.iter().filter(|s| !s.required).count() {
            self.dropped_spreads += 1;
        } else if !self.tolerate_prefer_no_schedule {
            self.tolerate_prefer_no_schedule = true;
        } else {
            return false;
        }
        true
    }

    /// What the pod requires of a node at this step.
    fn requirements(&self, pod: &PodInfo<'_>) -> Requirements {
        let mut reqs = pod.required.get(self.term).cloned().unwrap_or_default();
        if let Some(preferred) = pod.preferred.get(self.dropped_preferences) {
            reqs.add_all(preferred);
        }
        reqs
    }

    /// The spread constraints in force at this step.
    fn spreads<'p>(&self, pod: &'p PodInfo<'_>) -> Vec<&'p Spread> {
        let mut anyway = 0;
        pod.topology
            .spreads
            .iter()
            .filter(|s| {
                if s.required {
                    return true;
                }
                anyway += 1;
                anyway > self.dropped_spreads
            })
            .collect()
    }

    /// The pod (anti-)affinity terms in force at this step.
    fn terms<'p>(&self, pod: &'p PodInfo<'_>) -> Vec<&'p AffinityTerm> {
        let (mut affinity, mut anti) = (0, 0);
        pod.topology
            .terms
            .iter()
            .filter(|t| {
                if t.required {
                    return true;
                }
                let (seen, dropped) = if t.anti {
                    (&mut anti, self.dropped_anti_affinity)
                } else {
                    (&mut affinity, self.dropped_affinity)
                };
                *seen += 1;
                *seen > dropped
            })
            .collect()
    }
}

/// A pool prepared for the solve.
struct Pool<'a> {
    input: &'a PoolInput,
    allocatable: Vec<Resources>,
    /// Each type's cheapest available offering under the pool's requirements (infinite if none, or
    /// if the pool's requirements exclude the type).
    price: Vec<f64>,
    daemon_overhead: Resources,
    /// Type indexes by price (then name): claims keep their types in this order.
    by_price: Vec<usize>,
    /// Capacity reserved by this solve's claims, per limited resource.
    committed: Resources,
}

impl<'a> Pool<'a> {
    fn new(input: &'a PoolInput, daemonsets: &[PodSpec]) -> Self {
        let types = &input.instance_types;
        // A type the pool's requirements exclude has no price here, or it would set the price of a
        // "node of the pod's own" that no claim of this pool can buy.
        let price: Vec<f64> = types
            .iter()
            .map(|t| match type_admits(t, &input.requirements) {
                true => t.cheapest_offering(&input.requirements).map_or(f64::INFINITY, |o| o.price),
                false => f64::INFINITY,
            })
            .collect();
        let mut by_price: Vec<usize> = (0..types.len()).collect();
        by_price.sort_by(|&a, &b| price[a].total_cmp(&price[b]).then_with(|| types[a].name.cmp(&types[b].name)));
        Self {
            input,
            allocatable: types.iter().map(InstanceType::allocatable).collect(),
            price,
            daemon_overhead: daemon_overhead(input, daemonsets),
            by_price,
            committed: Resources::zero(),
        }
    }

    /// Whether `capacity` fits under every limit, given what this claim already holds (`held`).
    fn within_limits(&self, capacity: &Resources, held: &Resources) -> bool {
        self.input
            .limits
            .iter()
            .all(|l| capacity.get(&l.resource) <= held.get(&l.resource) + l.remaining - self.committed.get(&l.resource))
    }

    /// The capacity a claim holds against the limits while the solve places pods: its cheapest
    /// type's, the one it is launched as unless that offering has no capacity. What the limits
    /// leave over is shared out among the claims at the end ([`Solve::finish`]), and each claim
    /// lists only the dearer fallbacks its share covers, so the limits hold whichever listed type
    /// a claim gets. Reserving every claim's largest option instead (as Karpenter does) leaves a
    /// limited pool unable to place pods that fit under its limit with room to spare.
    ///
    /// Where the claim needs `minValues`, trimming its list could break them: it holds the
    /// largest of the (at most 60) types it would list, as before.
    fn reservation(&self, types: &[usize], min_values: bool) -> Resources {
        if !min_values && let Some(&cheapest) = types.first() {
            return self.input.instance_types[cheapest].capacity.clone();
        }
        let mut reserve = Resources::zero();
        for &i in types.iter().take(MAX_INSTANCE_TYPES) {
            reserve.max(&self.input.instance_types[i].capacity);
        }
        reserve
    }
}

/// A claim being built.
struct Claim {
    pool: usize,
    requirements: Requirements,
    requests: Resources,
    /// Indexes into the pool's instance types, in the pool's order.
    types: Vec<usize>,
    /// The largest CPU and memory any remaining type leaves, for a quick rejection.
    largest: (i64, i64),
    /// Price of the cheapest remaining type.
    price: f64,
    /// Capacity held against the pool's limits: the largest type the claim may list.
    reserved: Resources,
    pods: Vec<String>,
}

/// A claim's types (cheapest first) that still hold `requests`, are admitted (`admits`, when the
/// pod narrowed the claim) and keep the pool within its limits.
fn fitting<'x>(
    pool: &'x Pool<'_>,
    claim: &'x Claim,
    requests: &'x Resources,
    admits: Option<&'x [bool]>,
) -> impl Iterator<Item = usize> + 'x {
    claim.types.iter().copied().filter(move |&i| {
        requests.fits_in(&pool.allocatable[i])
            && admits.is_none_or(|a| a[i])
            && (pool.input.limits.is_empty()
                || pool.within_limits(&pool.input.instance_types[i].capacity, &claim.reserved))
    })
}

fn cheapest(pool: &Pool<'_>, types: &[usize]) -> f64 {
    types.iter().map(|&i| pool.price[i]).fold(f64::INFINITY, f64::min)
}

fn largest(pool: &Pool<'_>, types: &[usize]) -> (i64, i64) {
    types.iter().fold((0, 0), |(c, m), &i| (c.max(pool.allocatable[i].cpu), m.max(pool.allocatable[i].memory)))
}

/// Whether an instance type can be a node under `reqs`: its labels agree, and an offering is left.
fn type_admits(it: &InstanceType, reqs: &Requirements) -> bool {
    reqs.iter().all(|r| it.requirements.get(r.key()).is_none_or(|t| t.shares_value(r)))
        && it.cheapest_offering(reqs).is_some()
}

/// Whether a type that admitted a claim still does after `changed` (the pod's requirements) merged
/// into it: only those keys are checked, and the offerings only if a zone or capacity type changed.
fn type_still_admits(it: &InstanceType, merged: &Requirements, changed: &Requirements) -> bool {
    changed.iter().all(|r| {
        let now = merged.get(r.key()).unwrap_or(r);
        it.requirements.get(r.key()).is_none_or(|t| t.shares_value(now))
    }) && (changed.get(ZONE).is_none() && changed.get(CAPACITY_TYPE).is_none()
        || it.cheapest_offering(merged).is_some())
}

/// Whether the types still offer `minValues` distinct values for every requirement that asks.
fn min_values_error(types: &[&InstanceType], reqs: &Requirements) -> Option<String> {
    for r in reqs.iter() {
        let Some(min) = r.min_values else { continue };
        let mut values = BTreeSet::new();
        for it in types {
            if let Some(set) = it.requirements.get(r.key()).map(|t| t.intersect(r)) {
                values.extend(set.finite_values().into_iter().flatten().cloned());
            }
        }
        if values.len() < min {
            return Some(format!("{} needs minValues {min}, only {} value(s) fit", r.key(), values.len()));
        }
    }
    None
}

fn format_amount(resource: &str, amount: i64) -> String {
    const GI: i64 = 1024 * 1024 * 1024;
    const MI: i64 = 1024 * 1024;
    match resource {
        CPU if amount % 1000 == 0 => format!("{} cpu", amount / 1000),
        CPU => format!("{amount}m cpu"),
        MEMORY | "ephemeral-storage" if amount % GI == 0 => format!("{}Gi {resource}", amount / GI),
        MEMORY | "ephemeral-storage" => format!("{}Mi {resource}", (amount + MI - 1) / MI),
        _ => format!("{amount} {resource}"),
    }
}

fn conflict_reason(pool: &str, conflict: &Conflict) -> String {
    let pod = match conflict.ours.finite_values() {
        Some(values) if values.len() == 1 && !conflict.ours.allows_absent() => {
            format!("pod selects {}", values.iter().next().map(String::as_str).unwrap_or_default())
        }
        _ => format!("pod requires {}", conflict.ours),
    };
    if conflict.theirs.allows_absent() && !conflict.theirs.has_any_value() {
        format!("NodePool {pool} does not set label {}, {pod}", conflict.key)
    } else {
        format!("NodePool {pool} requires {}, {pod}", conflict.theirs)
    }
}

/// Why no pool admits a pod, as one line.
fn combine_reasons(reasons: Vec<(String, Option<String>)>) -> String {
    if reasons.is_empty() {
        return "no NodePool exists".into();
    }
    // Every pool refusing over a taint reads best as one statement about the taint.
    if let Some(taint) = reasons.first().and_then(|(_, t)| t.clone())
        && reasons.iter().all(|(_, t)| t.as_deref() == Some(taint.as_str()))
    {
        return format!("no NodePool tolerates taint {taint}");
    }
    let mut unique: Vec<String> = Vec::new();
    for (reason, _) in reasons {
        if !unique.contains(&reason) {
            unique.push(reason);
        }
    }
    unique.join("; ")
}

/// Pods of one class, with the same requirements and constraints, are refused by the same claims:
/// the next of them starts where the last stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CursorKey {
    class: String,
    strict: bool,
    reqs: Requirements,
    spreads: usize,
    terms: usize,
}

struct Solver<'a> {
    pools: Vec<Pool<'a>>,
    /// Pool indexes by weight (descending), then name.
    pool_order: Vec<usize>,
    nodes: Vec<&'a ExistingNode>,
    /// What each of `nodes` has left.
    available: Vec<Resources>,
    claims: Vec<Claim>,
    placements: Vec<Placement>,
    counts: Counts,
    /// Per pool and label key, the values its instance types can give that label.
    type_values: HashMap<(usize, String), BTreeSet<String>>,
    /// For each class of identical pods under identical constraints, the first open claim that
    /// has not refused one of them. Claims only fill up and narrow, and topology counts only
    /// grow, so a refusal stands (positive affinity by hostname excepted: those pods scan every
    /// claim).
    cursors: HashMap<CursorKey, usize>,
    /// Per pod requests and pool, the price of the cheapest type that holds the pod on its own.
    alone: HashMap<(Resources, usize), f64>,
    /// Per pool and requirement set, the instance types it admits.
    admitted: HashMap<(usize, Requirements), Vec<usize>>,
    /// Per pool and the requirements a joining pod narrowed (only the keys that decide), which of
    /// the pool's types still admit them: computed once per distinct narrowing, then looked up.
    still_admits: HashMap<(usize, Requirements), Vec<bool>>,
    /// Host ports already bound on each node or claim.
    ports: HashMap<Target, Vec<HostPort>>,
    /// [`SchedulingInput::fewest_new_nodes`].
    fewest_new_nodes: bool,
}

/// The domain of a target in a topology key, when it is known.
fn domain_of(nodes: &[&ExistingNode], claims: &[Claim], target: Target, key: &str) -> Option<String> {
    match target {
        Target::Node(i) if is_hostname(key) => Some(nodes[i].name.clone()),
        Target::Node(i) => nodes[i].requirements.get(key).and_then(|r| r.single_value()).map(String::from),
        // New claims have no name yet; this cannot collide with a node name.
        Target::Claim(j) if is_hostname(key) => Some(format!("<new claim {j}>")),
        Target::Claim(j) => claims[j].requirements.get(key).and_then(|r| r.single_value()).map(String::from),
    }
}

/// The constraints of one attempt.
struct Constraints<'p> {
    reqs: Requirements,
    strict: bool,
    spreads: Vec<&'p Spread>,
    terms: Vec<&'p AffinityTerm>,
    /// Whether any constraint is per node (so every target must be checked).
    per_host: bool,
}

impl<'a> Solver<'a> {
    fn new(input: &'a SchedulingInput) -> Self {
        let pools: Vec<Pool<'a>> = input.pools.iter().map(|p| Pool::new(p, &input.daemonsets)).collect();
        let mut pool_order: Vec<usize> = (0..pools.len()).collect();
        pool_order.sort_by(|&a, &b| {
            let (a, b) = (&input.pools[a], &input.pools[b]);
            b.weight.cmp(&a.weight).then_with(|| a.name.cmp(&b.name))
        });
        // Borrowed, not copied (a consolidation simulates thousands of nodes, many times); only
        // what is left on each is the solver's own.
        let mut nodes: Vec<&'a ExistingNode> = input.nodes.iter().collect();
        // Initialised nodes first, then in-flight claims; by name within each.
        nodes.sort_by(|a, b| b.initialized.cmp(&a.initialized).then_with(|| a.name.cmp(&b.name)));
        let available = nodes.iter().map(|n| n.available.clone()).collect();
        let mut counts = Counts::default();
        let mut ports: HashMap<Target, Vec<HostPort>> = HashMap::new();
        let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        for pod in &input.bound_pods {
            let (Some(spec), Some(node)) = (pod.spec.as_ref(), pod.spec.as_ref().and_then(|s| s.node_name.as_ref()))
            else {
                continue;
            };
            if let Some(&i) = index.get(node.as_str()) {
                counts.record(&PodTopology::new(pod, spec), Target::Node(i), |t, k| domain_of(&nodes, &[], t, k));
                ports.entry(Target::Node(i)).or_default().extend(host_ports(spec));
            }
        }
        Self {
            pools,
            pool_order,
            nodes,
            available,
            claims: Vec::new(),
            placements: Vec::new(),
            counts,
            type_values: HashMap::new(),
            cursors: HashMap::new(),
            alone: HashMap::new(),
            admitted: HashMap::new(),
            still_admits: HashMap::new(),
            ports,
            fewest_new_nodes: input.fewest_new_nodes,
        }
    }

    /// Whether none of the pod's host ports is already bound on `target`.
    fn ports_free(&self, pod: &PodInfo<'_>, target: Target) -> bool {
        pod.host_ports.is_empty()
            || self.ports.get(&target).is_none_or(|used| {
                !pod.host_ports.iter().any(|mine| used.iter().any(|theirs| ports_conflict(mine, theirs)))
            })
    }

    /// Whether per-node constraints let the pod onto `target`.
    fn host_allows(&mut self, pod: &PodInfo<'_>, c: &Constraints<'_>, target: Target) -> bool {
        if !c.per_host {
            return true;
        }
        let (nodes, claims) = (&self.nodes, &self.claims);
        let domain = |t: Target, k: &str| domain_of(nodes, claims, t, k);
        let Some(here) = domain(target, HOSTNAME) else { return false };
        for spread in c.spreads.iter().filter(|s| is_hostname(&s.selection.key)) {
            // A new node is always possible, so the smallest count is 0.
            let count = self.counts.counts(&spread.selection, domain).get(&here).copied().unwrap_or(0);
            if count + 1 > spread.max_skew {
                return false;
            }
        }
        for term in c.terms.iter().filter(|t| is_hostname(&t.selection.key)) {
            let counts = self.counts.counts(&term.selection, domain);
            let here_count = counts.get(&here).copied().unwrap_or(0);
            if term.anti {
                if here_count > 0 {
                    return false;
                }
            } else if here_count == 0 {
                // The first of a self-affine group may start anywhere.
                let none_anywhere = counts.values().all(|n| *n == 0);
                if !(none_anywhere && term.selection.selects(&pod.topology.namespace, &pod.topology.labels)) {
                    return false;
                }
            }
        }
        !self.counts.is_repelled(&pod.topology, HOSTNAME, &here)
    }

    /// The values of `key` a new node for this pod could have, across pools and existing nodes.
    fn universe(
        &mut self,
        pod: &PodInfo<'_>,
        c: &Constraints<'_>,
        key: &str,
        honor_affinity: bool,
        honor_taints: bool,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let pod_req = if honor_affinity { c.reqs.get(key).cloned() } else { None };
        for p in 0..self.pools.len() {
            let pool = self.pools[p].input;
            if honor_taints && first_untolerated(pod.tolerations, &pool.taints, c.strict).is_some() {
                continue;
            }
            let values = self.type_values.entry((p, key.to_string())).or_insert_with(|| {
                let mut values = BTreeSet::new();
                for it in &pool.instance_types {
                    if let Some(finite) = it.requirements.get(key).and_then(|r| r.finite_values()) {
                        values.extend(finite.iter().cloned());
                    }
                }
                if let Some(finite) = pool.requirements.get(key).and_then(|r| r.finite_values()) {
                    values.extend(finite.iter().cloned());
                }
                values
            });
            let pool_req = pool.requirements.get(key);
            out.extend(
                values
                    .iter()
                    .filter(|v| pool_req.is_none_or(|r| r.allows(Some(v))))
                    .filter(|v| pod_req.as_ref().is_none_or(|r| r.allows(Some(v))))
                    .cloned(),
            );
        }
        for node in &self.nodes {
            if let Some(v) = node.requirements.get(key).and_then(|r| r.single_value())
                && pod_req.as_ref().is_none_or(|r| r.allows(Some(v)))
            {
                out.insert(v.to_string());
            }
        }
        out
    }

    /// For constraints on keys other than the hostname, the domain choices in order of preference
    /// (fewest matching pods first), as extra requirements; or the reason there are none.
    fn domain_choices(&mut self, pod: &PodInfo<'_>, c: &Constraints<'_>) -> Result<Vec<Requirements>, String> {
        let mut keys: Vec<&str> = c
            .spreads
            .iter()
            .map(|s| s.selection.key.as_str())
            .chain(c.terms.iter().map(|t| t.selection.key.as_str()))
            .filter(|k| !is_hostname(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut per_key: Vec<(String, Vec<String>)> = Vec::new();
        for key in keys {
            let universe = self.universe(pod, c, key, true, false);
            let mut allowed = universe.clone();
            let mut load: BTreeMap<String, u32> = BTreeMap::new();
            for spread in c.spreads.iter().filter(|s| s.selection.key == key) {
                let eligible = if spread.honor_node_affinity && !spread.honor_taints {
                    universe.clone()
                } else {
                    self.universe(pod, c, key, spread.honor_node_affinity, spread.honor_taints)
                };
                let (nodes, claims) = (&self.nodes, &self.claims);
                let counts = self.counts.counts(&spread.selection, |t, k| domain_of(nodes, claims, t, k));
                let count = |d: &String| counts.get(d).copied().unwrap_or(0);
                let few = spread.min_domains.is_some_and(|m| (eligible.len() as u32) < m);
                let min = if few { 0 } else { eligible.iter().map(count).min().unwrap_or(0) };
                allowed.retain(|d| count(d) < min + spread.max_skew);
                for d in &universe {
                    *load.entry(d.clone()).or_default() += count(d);
                }
                if allowed.is_empty() {
                    return Err(format!("topology spread on {key} with maxSkew {} admits no domain", spread.max_skew));
                }
            }
            let (nodes, claims) = (&self.nodes, &self.claims);
            let domain = |t: Target, k: &str| domain_of(nodes, claims, t, k);
            for term in c.terms.iter().filter(|t| t.selection.key == key) {
                let counts = self.counts.counts(&term.selection, domain);
                let occupied: BTreeSet<String> =
                    counts.iter().filter(|(_, n)| **n > 0).map(|(d, _)| d.clone()).collect();
                if term.anti {
                    allowed.retain(|d| !occupied.contains(d));
                    if allowed.is_empty() {
                        return Err(format!("pod anti-affinity on {key} excludes every domain"));
                    }
                } else if occupied.is_empty() {
                    if !term.selection.selects(&pod.topology.namespace, &pod.topology.labels) {
                        return Err(format!("pod affinity on {key}: no pod matches the selector"));
                    }
                } else {
                    allowed.retain(|d| occupied.contains(d));
                    if allowed.is_empty() {
                        return Err(format!(
                            "pod affinity on {key}: the domains of the matching pods are not available"
                        ));
                    }
                }
            }
            let repelled = self.counts.repelled(&pod.topology, key);
            allowed.retain(|d| !repelled.contains(d));
            if allowed.is_empty() {
                return Err(format!("the anti-affinity of running pods excludes every {key} domain"));
            }
            let mut ordered: Vec<String> = allowed.into_iter().collect();
            ordered.sort_by_key(|d| (load.get(d).copied().unwrap_or(0), d.clone()));
            per_key.push((key.to_string(), ordered));
        }
        // Every combination of one domain per key, best first, at most 64.
        let mut choices = vec![Requirements::new()];
        for (key, values) in per_key {
            let mut next = Vec::new();
            for base in &choices {
                for v in &values {
                    let mut r = base.clone();
                    r.add(Requirement::single(key.clone(), v.clone()));
                    next.push(r);
                }
            }
            next.truncate(64);
            choices = next;
        }
        Ok(choices)
    }

    fn try_existing(&mut self, pod: &PodInfo<'_>, reqs: &Requirements, c: &Constraints<'_>) -> Option<Target> {
        for i in 0..self.nodes.len() {
            let node: &'a ExistingNode = self.nodes[i];
            if !pod.requests.fits_in(&self.available[i])
                || first_untolerated(pod.tolerations, &node.taints, c.strict).is_some()
            {
                continue;
            }
            // Every label the node may end up with must satisfy the pod.
            if reqs.guaranteed_by(&node.requirements)
                && self.ports_free(pod, Target::Node(i))
                && self.host_allows(pod, c, Target::Node(i))
            {
                self.available[i].sub(&pod.requests);
                self.placements.push(Placement { pod: pod.key.clone(), node: node.name.clone() });
                return Some(Target::Node(i));
            }
        }
        None
    }

    /// The price of the cheapest type of `pool` that holds the pod and the DaemonSets alone. It
    /// depends only on the requests, so identical pods share one scan of the types.
    fn alone_price(&mut self, pod: &PodInfo<'_>, pool: usize) -> f64 {
        let p = &self.pools[pool];
        *self.alone.entry((pod.requests.clone(), pool)).or_insert_with(|| {
            let requests = p.daemon_overhead.clone().plus(&pod.requests);
            (0..p.allocatable.len())
                .filter(|&i| requests.fits_in(&p.allocatable[i]))
                .map(|i| p.price[i])
                .fold(f64::INFINITY, f64::min)
        })
    }

    fn try_open_claims(&mut self, pod: &PodInfo<'_>, reqs: &Requirements, c: &Constraints<'_>) -> Option<Target> {
        // Positive affinity by hostname is the one refusal that can turn into acceptance (when a
        // matching pod joins the claim later); affinity by zone is settled by the domain pin.
        let monotonic = !c.terms.iter().any(|t| !t.anti && is_hostname(&t.selection.key));
        let class = monotonic.then(|| CursorKey {
            class: pod.class.clone(),
            strict: c.strict,
            reqs: reqs.clone(),
            spreads: c.spreads.len(),
            terms: c.terms.len(),
        });
        let start = class.as_ref().and_then(|k| self.cursors.get(k)).copied().unwrap_or(0);
        let mut accepted = None;
        let mut next = self.claims.len();
        for j in start..self.claims.len() {
            accepted = self.try_claim(pod, reqs, c, j);
            if accepted.is_some() {
                next = j;
                break;
            }
        }
        if let Some(k) = class {
            self.cursors.insert(k, next);
        }
        accepted
    }

    fn try_claim(&mut self, pod: &PodInfo<'_>, reqs: &Requirements, c: &Constraints<'_>, j: usize) -> Option<Target> {
        let claim = &self.claims[j];
        let pool = &self.pools[claim.pool];
        if claim.largest.0 < claim.requests.cpu + pod.requests.cpu
            || claim.largest.1 < claim.requests.memory + pod.requests.memory
            || first_untolerated(pod.tolerations, &pool.input.taints, c.strict).is_some()
            || reqs.compatible_with(&claim.requirements, defined_by_cloud).is_err()
        {
            return None;
        }
        // Most pods add no requirement to the claim; then only the resource fit can change.
        let narrowed = reqs.iter().any(|r| claim.requirements.get(r.key()).is_none_or(|mine| !r.contains(mine)));
        let narrowed_to = narrowed.then(|| claim.requirements.intersect(reqs));
        let merged = narrowed_to.as_ref().unwrap_or(&claim.requirements);
        let requests = claim.requests.clone().plus(&pod.requests);
        let admits_key = narrowed.then(|| {
            // What decides: the merged requirement of each key the pod names, and the zone and
            // capacity type when either of those changed (they pick the offerings).
            let mut deciding = Requirements::new();
            for r in reqs.iter() {
                deciding.add(merged.get(r.key()).unwrap_or(r).clone());
            }
            if reqs.get(ZONE).is_some() || reqs.get(CAPACITY_TYPE).is_some() {
                for key in [ZONE, CAPACITY_TYPE] {
                    if let Some(r) = merged.get(key) {
                        deciding.add(r.clone());
                    }
                }
            }
            let types = &pool.input.instance_types;
            self.still_admits
                .entry((claim.pool, deciding.clone()))
                .or_insert_with(|| types.iter().map(|it| type_still_admits(it, &deciding, &deciding)).collect());
            (claim.pool, deciding)
        });
        let admits = admits_key.as_ref().and_then(|k| self.still_admits.get(k)).map(Vec::as_slice);
        // A claim's types are kept cheapest first, so the first that fits gives the new price; the
        // full list is only built once the pod is accepted.
        let first = fitting(pool, claim, &requests, admits).next()?;
        let price = pool.price[first];
        if narrowed || merged.iter().any(|r| r.min_values.is_some()) {
            let chosen: Vec<&InstanceType> =
                fitting(pool, claim, &requests, admits).map(|i| &pool.input.instance_types[i]).collect();
            if min_values_error(&chosen, merged).is_some() {
                return None;
            }
        }
        let (pool_index, old_price) = (claim.pool, claim.price);
        if !self.ports_free(pod, Target::Claim(j)) || !self.host_allows(pod, c, Target::Claim(j)) {
            return None;
        }
        // Joining must not cost more than a node of the pod's own would. A claim's cheapest type
        // only gets dearer as it fills, so such a refusal is taken to stand, like the others.
        if !self.fewest_new_nodes && price - old_price > self.alone_price(pod, pool_index) + 1e-9 {
            return None;
        }
        let admits = admits_key.as_ref().and_then(|k| self.still_admits.get(k)).map(Vec::as_slice);
        let types: Vec<usize> = fitting(&self.pools[pool_index], &self.claims[j], &requests, admits).collect();
        let largest = largest(&self.pools[pool_index], &types);
        let min_values = self.claims[j].requirements.iter().any(|r| r.min_values.is_some());
        let mut reserved = self.pools[pool_index].reservation(&types, min_values);
        reserved.max(&self.claims[j].reserved);
        let pool = &mut self.pools[pool_index];
        pool.committed.add(&reserved.clone().minus(&self.claims[j].reserved));
        let claim = &mut self.claims[j];
        claim.reserved = reserved;
        claim.largest = largest;
        claim.types = types;
        if let Some(narrowed) = narrowed_to {
            claim.requirements = narrowed;
        }
        claim.requests = requests;
        claim.price = price;
        claim.pods.push(pod.key.clone());
        Some(Target::Claim(j))
    }

    /// Opens a claim in the first pool that admits the pod, or says why none does.
    fn try_new_claim(&mut self, pod: &PodInfo<'_>, reqs: &Requirements, c: &Constraints<'_>) -> Result<Target, String> {
        let target = Target::Claim(self.claims.len());
        if c.per_host && !self.host_allows(pod, c, target) {
            let term = c.terms.iter().find(|t| !t.anti && is_hostname(&t.selection.key));
            return Err(match term {
                Some(_) => format!("pod affinity on {HOSTNAME}: the nodes of the matching pods have no room"),
                None => format!("pod constraints on {HOSTNAME} admit no new node"),
            });
        }
        let mut reasons = Vec::new();
        for &p in &self.pool_order {
            let pool = &self.pools[p];
            let name = &pool.input.name;
            if let Some(taint) = first_untolerated(pod.tolerations, &pool.input.taints, c.strict) {
                let taint = TaintDisplay(taint).to_string();
                reasons
                    .push((format!("NodePool {name} has taint {taint}, which the pod does not tolerate"), Some(taint)));
                continue;
            }
            if let Err(conflict) = reqs.compatible_with(&pool.input.requirements, defined_by_cloud) {
                reasons.push((conflict_reason(name, &conflict), None));
                continue;
            }
            let merged = pool.input.requirements.intersect(reqs);
            let requests = pool.daemon_overhead.clone().plus(&pod.requests);
            // New claims of a pool mostly share their requirements; the types they admit are cached.
            let compatible = self
                .admitted
                .entry((p, merged.clone()))
                .or_insert_with(|| {
                    pool.by_price
                        .iter()
                        .copied()
                        .filter(|&i| type_admits(&pool.input.instance_types[i], &merged))
                        .collect()
                })
                .clone();
            if compatible.is_empty() {
                reasons.push((format!("no instance type of NodePool {name} is available for {merged}"), None));
                continue;
            }
            let fitting: Vec<usize> =
                compatible.iter().copied().filter(|&i| requests.fits_in(&pool.allocatable[i])).collect();
            if fitting.is_empty() {
                let mut most = Resources::zero();
                for &i in &compatible {
                    most.max(&pool.allocatable[i]);
                }
                let resource = requests.first_exceeding(&most).unwrap_or(CPU).to_string();
                reasons.push((
                    format!("no instance type has {}", format_amount(&resource, requests.get(&resource))),
                    None,
                ));
                continue;
            }
            let mut exceeded = None;
            let nothing = Resources::zero();
            let within: Vec<usize> = fitting
                .iter()
                .copied()
                .filter(|&i| {
                    let capacity = &pool.input.instance_types[i].capacity;
                    let fits = pool.within_limits(capacity, &nothing);
                    if !fits {
                        exceeded = exceeded.or_else(|| {
                            pool.input
                                .limits
                                .iter()
                                .find(|l| capacity.get(&l.resource) > l.remaining - pool.committed.get(&l.resource))
                        });
                    }
                    fits
                })
                .collect();
            if within.is_empty() {
                let limit =
                    exceeded.map_or_else(|| "a".to_string(), |l| format!("{} limit ({})", l.resource, l.written));
                reasons.push((format!("NodePool {name} would exceed its {limit}"), None));
                continue;
            }
            let chosen: Vec<&InstanceType> = within.iter().map(|&i| &pool.input.instance_types[i]).collect();
            if let Some(problem) = min_values_error(&chosen, &merged) {
                reasons.push((format!("NodePool {name}: {problem}"), None));
                continue;
            }
            // Reserve the largest capacity the claim may list, so limits hold whichever it gets.
            let reserve = pool.reservation(&within, merged.iter().any(|r| r.min_values.is_some()));
            let pool = &mut self.pools[p];
            pool.committed.add(&reserve);
            let largest = largest(pool, &within);
            let price = cheapest(pool, &within);
            self.claims.push(Claim {
                pool: p,
                requirements: merged,
                requests,
                types: within,
                largest,
                price,
                reserved: reserve,
                pods: vec![pod.key.clone()],
            });
            return Ok(target);
        }
        Err(combine_reasons(reasons))
    }

    fn place(&mut self, pod: &PodInfo<'_>) -> Result<(), String> {
        let mut attempt = Attempt::default();
        loop {
            let spreads = attempt.spreads(pod);
            let terms = attempt.terms(pod);
            let per_host = spreads.iter().any(|s| is_hostname(&s.selection.key))
                || terms.iter().any(|t| is_hostname(&t.selection.key))
                || self.counts.is_repelled_anywhere(&pod.topology, HOSTNAME);
            let c = Constraints {
                reqs: attempt.requirements(pod),
                strict: !attempt.tolerate_prefer_no_schedule,
                spreads,
                terms,
                per_host,
            };
            let outcome = self.domain_choices(pod, &c).and_then(|choices| {
                let mut last = Err("no domain to try".to_string());
                for choice in choices {
                    let reqs = c.reqs.intersect(&choice);
                    if let Some(target) =
                        self.try_existing(pod, &reqs, &c).or_else(|| self.try_open_claims(pod, &reqs, &c))
                    {
                        return Ok(target);
                    }
                    last = self.try_new_claim(pod, &reqs, &c);
                    if last.is_ok() {
                        return last;
                    }
                }
                last
            });
            match outcome {
                Ok(target) => {
                    let (nodes, claims) = (&self.nodes, &self.claims);
                    self.counts.record(&pod.topology, target, |t, k| domain_of(nodes, claims, t, k));
                    if !pod.host_ports.is_empty() {
                        self.ports.entry(target).or_default().extend(pod.host_ports.iter().cloned());
                    }
                    return Ok(());
                }
                Err(reason) if !attempt.relax(pod) => return Err(reason),
                Err(_) => {}
            }
        }
    }

    fn finish(mut self, unplaced: Vec<Unplaced>) -> Plan {
        // Each claim held its cheapest type against the limits; what they leave is shared out
        // evenly, and a claim lists the dearer fallbacks its share covers.
        for (p, pool) in self.pools.iter().enumerate() {
            let sharing: Vec<usize> = (0..self.claims.len())
                .filter(|&j| self.claims[j].pool == p)
                .filter(|&j| !self.claims[j].requirements.iter().any(|r| r.min_values.is_some()))
                .collect();
            if pool.input.limits.is_empty() || sharing.is_empty() {
                continue;
            }
            let mut share = Resources::zero();
            for l in &pool.input.limits {
                let left = (l.remaining - pool.committed.get(&l.resource)).max(0);
                share.set(&l.resource, left / sharing.len() as i64);
            }
            for j in sharing {
                self.claims[j].reserved.add(&share);
            }
        }
        let claims = self.claims.iter().map(|c| finish_claim(&self.pools[c.pool], c)).collect();
        Plan { claims, placements: self.placements, unplaced }
    }
}

/// Sorts a claim's types by price, keeps at most 60 while honouring `minValues`, and writes it out.
fn finish_claim(pool: &Pool<'_>, claim: &Claim) -> NewClaim {
    let types = &pool.input.instance_types;
    let mut priced: Vec<(usize, f64)> = claim
        .types
        .iter()
        .filter(|&&i| {
            pool.input.limits.iter().all(|l| types[i].capacity.get(&l.resource) <= claim.reserved.get(&l.resource))
        })
        .filter_map(|&i| types[i].cheapest_offering(&claim.requirements).map(|o| (i, o.price)))
        .collect();
    let by_price =
        |a: &(usize, f64), b: &(usize, f64)| a.1.total_cmp(&b.1).then_with(|| types[a.0].name.cmp(&types[b.0].name));
    priced.sort_by(by_price);
    let mut kept: Vec<(usize, f64)> = priced.iter().take(MAX_INSTANCE_TYPES).copied().collect();
    let kept_types: Vec<&InstanceType> = kept.iter().map(|(i, _)| &types[*i]).collect();
    if min_values_error(&kept_types, &claim.requirements).is_some() {
        // Take types that bring new values first, then fill with the cheapest up to 60.
        let mut chosen: Vec<(usize, f64)> = Vec::new();
        for r in claim.requirements.iter().filter(|r| r.min_values.is_some()) {
            let mut seen = BTreeSet::new();
            for &(i, price) in &priced {
                let value = types[i].requirements.get(r.key()).and_then(|t| t.single_value()).map(String::from);
                if let Some(v) = value
                    && seen.len() < r.min_values.unwrap_or(0)
                    && seen.insert(v)
                    && !chosen.iter().any(|(j, _)| *j == i)
                {
                    chosen.push((i, price));
                }
            }
        }
        for &(i, price) in &priced {
            if chosen.len() >= MAX_INSTANCE_TYPES {
                break;
            }
            if !chosen.iter().any(|(j, _)| *j == i) {
                chosen.push((i, price));
            }
        }
        chosen.sort_by(by_price);
        kept = chosen;
    }
    let mut requirements = claim.requirements.clone();
    requirements.add(Requirement::one_of(INSTANCE_TYPE, kept.iter().map(|(i, _)| types[*i].name.clone())));
    NewClaim {
        node_pool: pool.input.name.clone(),
        requirements: requirements.to_api(),
        price: kept.first().map_or(0.0, |(_, p)| *p),
        instance_types: kept.iter().map(|&(i, price)| InstanceOption { name: types[i].name.clone(), price }).collect(),
        requests: claim.requests.to_quantities(),
        pods: claim.pods.clone(),
    }
}

/// The requests of the DaemonSets whose pods would land on a new node of `pool`.
fn daemon_overhead(pool: &PoolInput, daemonsets: &[PodSpec]) -> Resources {
    let mut total = Resources::zero();
    for spec in daemonsets {
        let tolerations = spec.tolerations.as_deref().unwrap_or_default();
        if first_untolerated(tolerations, &pool.taints, false).is_some() {
            continue;
        }
        let Ok(terms) = pod_required_terms(spec) else { continue };
        if !terms.iter().any(|t| t.compatible_with(&pool.requirements, defined_by_cloud).is_ok()) {
            continue;
        }
        if let Ok(requests) = pod_requests(spec) {
            total.add(&requests);
        }
    }
    total
}

/// Plans capacity for `input.pods`. Deterministic: the same input gives the same plan.
pub fn solve(input: &SchedulingInput) -> Plan {
    let mut unplaced = Vec::new();
    let mut pods: Vec<PodInfo<'_>> = Vec::with_capacity(input.pods.len());
    for pod in &input.pods {
        match PodInfo::new(pod) {
            Ok(mut info) => {
                if let Some(zones) = input.volume_zones.get(&info.key) {
                    let volume = Requirement::one_of(ZONE, zones.iter().cloned());
                    for term in &mut info.required {
                        term.add(volume.clone());
                    }
                    info = info.with_class();
                }
                pods.push(info)
            }
            Err(e) => unplaced.push(Unplaced { pod: pod_key(pod), reason: format!("pod cannot be read: {e}") }),
        }
    }
    pods.sort_by(|a, b| {
        b.requests
            .cpu
            .cmp(&a.requests.cpu)
            .then_with(|| b.requests.memory.cmp(&a.requests.memory))
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut solver = Solver::new(input);
    for pod in &pods {
        if let Err(reason) = solver.place(pod) {
            unplaced.push(Unplaced { pod: pod.key.clone(), reason });
        }
    }
    unplaced.sort_by(|a, b| a.pod.cmp(&b.pod));
    solver.finish(unplaced)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
