//! The solver: which pending pods go on existing capacity, and which new machines to buy for the rest.
//!
//! # Algorithm
//!
//! First-fit decreasing with Karpenter's relaxation of preferences:
//!
//! 1. Pods are read once into [`PodInfo`] (requests, node-affinity terms, tolerations) and sorted by
//!    CPU, then memory, descending; ties by namespace/name, so the plan is deterministic.
//! 2. Each pod is tried, in order, on existing initialised nodes, on in-flight NodeClaims (only
//!    where every label the claim may get satisfies the pod), on the new claims opened so far in
//!    this solve, and finally on a new claim from the first NodePool (by weight, then name) that
//!    admits it.
//! 3. A new claim starts with every instance type of its pool that is compatible with the pool's
//!    and the pod's requirements, has an available offering, fits the pod plus the pool's
//!    DaemonSet overhead, and stays within the pool's remaining limits. Each pod added to a claim
//!    narrows its requirements and drops the types it no longer fits; a pod joins a claim only if
//!    some type (and `minValues` distinct values) remains.
//! 4. A pod that cannot be placed is relaxed one step and tried again, in Karpenter's order: the
//!    next required node-affinity term; the heaviest remaining preferred node-affinity term dropped
//!    (preferred terms are honoured as requirements, heaviest first, until dropped); then
//!    `PreferNoSchedule` taints tolerated. When nothing is left to relax, the pod is reported with
//!    the reason of its last attempt.
//! 5. Each claim's instance types are sorted by their cheapest available offering under the claim's
//!    requirements and cut to 60, keeping `minValues` satisfied; the claim's price is that of its
//!    cheapest option.
//!
//! # Complexity
//!
//! O(P log P) to sort, then for each pod O(N + C·T) with N existing nodes, C open claims and T
//! instance types of a pool (a claim's type list only shrinks). Claims that cannot hold the pod's
//! CPU or memory on their largest remaining type are skipped with one comparison.
//!
//! # Where it loses to the optimum
//!
//! Greedy packing in decreasing order is within 11/9 of the optimal node count for one resource and
//! one machine size; with several sizes and prices it can open a large claim whose last pods would
//! have fit a cheaper pair of small ones, and it never moves a pod once placed. Preferences are
//! relaxed per pod, so a pod relaxed early does not come back when later pods open capacity that
//! would have satisfied its preference.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, PodSpec, Toleration};
use serde::Serialize;

use crate::api::NodePool;
use crate::api::labels::{INSTANCE_TYPE, WELL_KNOWN_LABELS};
use crate::api::nodeclaim::{NodeSelectorRequirementWithMinValues, Taint};

use super::instance_types::InstanceType;
use super::requirements::{
    Conflict, Requirement, RequirementError, Requirements, pod_preferred_terms, pod_required_terms,
};
use super::resources::{CPU, MEMORY, PODS, ResourceError, Resources, pod_requests};
use super::taints::{Display as TaintDisplay, first_untolerated};

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
        let name = pool.metadata.name.clone().unwrap_or_default();
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
        })
    }
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
    /// How many of the heaviest preferred terms have been dropped.
    dropped_preferences: usize,
    /// Whether `PreferNoSchedule` taints are tolerated.
    tolerate_prefer_no_schedule: bool,
}

impl Attempt {
    /// One relaxation step in Karpenter's order; false when nothing is left to relax.
    fn relax(&mut self, pod: &PodInfo<'_>) -> bool {
        if self.term + 1 < pod.required.len() {
            self.term += 1;
        } else if self.dropped_preferences < pod.preferred.len() {
            self.dropped_preferences += 1;
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
}

/// A pool prepared for the solve.
struct Pool<'a> {
    input: &'a PoolInput,
    allocatable: Vec<Resources>,
    daemon_overhead: Resources,
    /// Capacity reserved by this solve's claims, per limited resource.
    committed: Resources,
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
    pods: Vec<String>,
}

fn largest(pool: &Pool<'_>, types: &[usize]) -> (i64, i64) {
    types.iter().fold((0, 0), |(c, m), &i| (c.max(pool.allocatable[i].cpu), m.max(pool.allocatable[i].memory)))
}

/// Whether an instance type can be a node under `reqs`: its labels agree, and an offering is left.
fn type_admits(it: &InstanceType, reqs: &Requirements) -> bool {
    reqs.iter().all(|r| it.requirements.get(r.key()).is_none_or(|t| t.intersect(r).has_any_value()))
        && it.cheapest_offering(reqs).is_some()
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

struct Solver<'a> {
    pools: Vec<Pool<'a>>,
    /// Pool indexes by weight (descending), then name.
    pool_order: Vec<usize>,
    nodes: Vec<ExistingNode>,
    claims: Vec<Claim>,
    placements: Vec<Placement>,
}

impl<'a> Solver<'a> {
    fn new(input: &'a SchedulingInput) -> Self {
        let pools: Vec<Pool<'a>> = input
            .pools
            .iter()
            .map(|p| Pool {
                input: p,
                allocatable: p.instance_types.iter().map(InstanceType::allocatable).collect(),
                daemon_overhead: daemon_overhead(p, &input.daemonsets),
                committed: Resources::zero(),
            })
            .collect();
        let mut pool_order: Vec<usize> = (0..pools.len()).collect();
        pool_order.sort_by(|&a, &b| {
            let (a, b) = (&input.pools[a], &input.pools[b]);
            b.weight.cmp(&a.weight).then_with(|| a.name.cmp(&b.name))
        });
        let mut nodes = input.nodes.clone();
        // Initialised nodes first, then in-flight claims; by name within each.
        nodes.sort_by(|a, b| b.initialized.cmp(&a.initialized).then_with(|| a.name.cmp(&b.name)));
        Self { pools, pool_order, nodes, claims: Vec::new(), placements: Vec::new() }
    }

    fn try_existing(&mut self, pod: &PodInfo<'_>, reqs: &Requirements, strict: bool) -> bool {
        for node in &mut self.nodes {
            if !pod.requests.fits_in(&node.available)
                || first_untolerated(pod.tolerations, &node.taints, strict).is_some()
            {
                continue;
            }
            // Every label the node may end up with must satisfy the pod.
            let guaranteed = reqs.iter().all(|r| match node.requirements.get(r.key()) {
                Some(n) => r.contains(n),
                None => r.allows_absent(),
            });
            if guaranteed {
                node.available.sub(&pod.requests);
                self.placements.push(Placement { pod: pod.key.clone(), node: node.name.clone() });
                return true;
            }
        }
        false
    }

    fn try_open_claims(&mut self, pod: &PodInfo<'_>, reqs: &Requirements, strict: bool) -> bool {
        for claim in &mut self.claims {
            let pool = &self.pools[claim.pool];
            if claim.largest.0 < claim.requests.cpu + pod.requests.cpu
                || claim.largest.1 < claim.requests.memory + pod.requests.memory
                || first_untolerated(pod.tolerations, &pool.input.taints, strict).is_some()
                || reqs.compatible_with(&claim.requirements, defined_by_cloud).is_err()
            {
                continue;
            }
            let merged = claim.requirements.intersect(reqs);
            let requests = claim.requests.clone().plus(&pod.requests);
            let types: Vec<usize> = claim
                .types
                .iter()
                .copied()
                .filter(|&i| {
                    requests.fits_in(&pool.allocatable[i]) && type_admits(&pool.input.instance_types[i], &merged)
                })
                .collect();
            if types.is_empty() {
                continue;
            }
            let chosen: Vec<&InstanceType> = types.iter().map(|&i| &pool.input.instance_types[i]).collect();
            if min_values_error(&chosen, &merged).is_some() {
                continue;
            }
            claim.largest = largest(pool, &types);
            claim.types = types;
            claim.requirements = merged;
            claim.requests = requests;
            claim.pods.push(pod.key.clone());
            return true;
        }
        false
    }

    /// Opens a claim in the first pool that admits the pod, or says why none does.
    fn try_new_claim(&mut self, pod: &PodInfo<'_>, reqs: &Requirements, strict: bool) -> Result<(), String> {
        let mut reasons = Vec::new();
        for &p in &self.pool_order {
            let pool = &self.pools[p];
            let name = &pool.input.name;
            if let Some(taint) = first_untolerated(pod.tolerations, &pool.input.taints, strict) {
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
            let compatible: Vec<usize> = (0..pool.input.instance_types.len())
                .filter(|&i| type_admits(&pool.input.instance_types[i], &merged))
                .collect();
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
            let within: Vec<usize> = fitting
                .iter()
                .copied()
                .filter(|&i| {
                    let capacity = &pool.input.instance_types[i].capacity;
                    match pool
                        .input
                        .limits
                        .iter()
                        .find(|l| pool.committed.get(&l.resource) + capacity.get(&l.resource) > l.remaining)
                    {
                        Some(limit) => {
                            exceeded.get_or_insert(limit);
                            false
                        }
                        None => true,
                    }
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
            // Reserve the largest capacity the claim may launch, so limits hold whichever it gets.
            let mut reserve = Resources::zero();
            for it in &chosen {
                reserve.max(&it.capacity);
            }
            let pool = &mut self.pools[p];
            pool.committed.add(&reserve);
            let largest = largest(pool, &within);
            self.claims.push(Claim {
                pool: p,
                requirements: merged,
                requests,
                types: within,
                largest,
                pods: vec![pod.key.clone()],
            });
            return Ok(());
        }
        Err(combine_reasons(reasons))
    }

    fn place(&mut self, pod: &PodInfo<'_>) -> Result<(), String> {
        let mut attempt = Attempt::default();
        loop {
            let reqs = attempt.requirements(pod);
            let strict = !attempt.tolerate_prefer_no_schedule;
            if self.try_existing(pod, &reqs, strict) || self.try_open_claims(pod, &reqs, strict) {
                return Ok(());
            }
            match self.try_new_claim(pod, &reqs, strict) {
                Ok(()) => return Ok(()),
                Err(reason) if !attempt.relax(pod) => return Err(reason),
                Err(_) => {}
            }
        }
    }

    fn finish(self, unplaced: Vec<Unplaced>) -> Plan {
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
        .filter_map(|&i| types[i].cheapest_offering(&claim.requirements).map(|o| (i, o.price)))
        .collect();
    priced.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| types[a.0].name.cmp(&types[b.0].name)));
    let mut kept: Vec<(usize, f64)> = priced.iter().take(MAX_INSTANCE_TYPES).copied().collect();
    let kept_types = |kept: &[(usize, f64)]| kept.iter().map(|(i, _)| &types[*i]).collect::<Vec<_>>();
    if min_values_error(&kept_types(&kept), &claim.requirements).is_some() {
        // Take types that bring new values first, then fill with the cheapest.
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
            if chosen.len() >= MAX_INSTANCE_TYPES.max(chosen.len()) {
                break;
            }
            if !chosen.iter().any(|(j, _)| *j == i) {
                chosen.push((i, price));
            }
        }
        chosen.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| types[a.0].name.cmp(&types[b.0].name)));
        kept = chosen;
    }
    let mut requirements = claim.requirements.clone();
    requirements.add(Requirement::one_of(INSTANCE_TYPE, kept.iter().map(|(i, _)| types[*i].name.clone())));
    NewClaim {
        node_pool: pool.input.name.clone(),
        requirements: requirements.to_api(),
        price: kept.first().map_or(0.0, |(_, p)| *p),
        instance_types: kept.iter().map(|&(i, price)| InstanceOption { name: types[i].name.clone(), price }).collect(),
        requests: quantities(&claim.requests),
        pods: claim.pods.clone(),
    }
}

/// A resource vector in Kubernetes quantity notation, for output.
pub fn quantities(r: &Resources) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(CPU.to_string(), format!("{}m", r.cpu));
    out.insert(MEMORY.to_string(), format!("{}Mi", (r.memory + (1 << 20) - 1) >> 20));
    if r.ephemeral_storage > 0 {
        out.insert("ephemeral-storage".to_string(), format!("{}Mi", (r.ephemeral_storage + (1 << 20) - 1) >> 20));
    }
    out.insert(PODS.to_string(), r.pods.to_string());
    for (name, amount) in r.extended() {
        out.insert(name.to_string(), amount.to_string());
    }
    out
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
            Ok(info) => pods.push(info),
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
