//! Consolidation's simulation: the cluster without some candidates, their pods pending again,
//! solved by the provisioning solver; and what that says — the nodes can go (their pods fit on the
//! rest), can be replaced by one cheaper node, or must stay, and why.
//!
//! The solver packs the moving pods into as few new nodes as fit (a replacement is one node or
//! none), rather than the cheapest set a provisioning solve would buy.
//!
//! The solver's input is built from the snapshot once. Each simulation then changes only what the
//! candidates touch: their nodes leave the existing capacity, their pods become the pods to place,
//! their capacity is given back to their pools' limits, and of the bound pods only those that can
//! constrain the moving pods are passed (host ports, required anti-affinity, and — when a moving
//! pod has topology constraints — every bound pod). When no moving pod has topology constraints,
//! nodes that cannot hold even the smallest moving pod are left out too: the solver only scans
//! nodes that could take a pod.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Pod;

use super::candidates::Candidate;
use crate::api::labels;
use crate::api::nodeclaim::Operator;
use crate::scheduling::resources::{Resources, pod_requests};
use crate::scheduling::solver::{ExistingNode, Limit, NewClaim, Plan, SchedulingInput, host_ports, solve};

/// The solver's input for the whole cluster, reused by every simulation of one decision.
#[derive(Debug)]
pub struct Simulator {
    input: SchedulingInput,
    nodes: Vec<ExistingNode>,
    bound: Vec<Pod>,
    /// Bound pods that constrain any pod's placement wherever it goes (host ports, required
    /// anti-affinity).
    always: Vec<bool>,
    limits: Vec<Vec<Limit>>,
    /// Simulations run so far.
    pub runs: usize,
}

/// Whether a bound pod constrains where any pod goes, whatever that pod asks: host ports and
/// required anti-affinity.
pub fn constrains_everyone(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    !host_ports(spec).is_empty()
        || spec.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()).is_some_and(|a| {
            a.required_during_scheduling_ignored_during_execution.as_ref().is_some_and(|r| !r.is_empty())
        })
}

/// Whether a pod has topology constraints (spreads, pod affinity or anti-affinity): the bound pods
/// its selectors pick count for it.
pub fn has_topology(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.topology_spread_constraints.as_ref().is_some_and(|t| !t.is_empty())
            || s.affinity.as_ref().is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
    })
}

/// A candidate's pod as the solver plans it: pending, as it will be once evicted.
pub fn as_pending(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = None;
    }
    pod.status = None;
    pod.metadata.resource_version = None;
    pod
}

impl Simulator {
    /// Takes the cluster's solver input (its pending pods are not moved by any simulation).
    pub fn new(mut input: SchedulingInput) -> Self {
        input.pods.clear();
        input.fewest_new_nodes = true;
        let nodes = std::mem::take(&mut input.nodes);
        let bound = std::mem::take(&mut input.bound_pods);
        let always = bound.iter().map(constrains_everyone).collect();
        let limits = input.pools.iter().map(|p| p.limits.clone()).collect();
        Self { input, nodes, bound, always, limits, runs: 0 }
    }

    /// Solves the cluster without `removed`, their pods to be placed.
    pub fn run(&mut self, removed: &[&Candidate<'_>]) -> Plan {
        self.runs += 1;
        let gone: HashSet<&str> = removed.iter().map(|c| c.node_name.as_str()).collect();
        let moving: Vec<Pod> = removed.iter().flat_map(|c| c.pods.iter().map(|p| as_pending(p))).collect();
        let constrained = moving.iter().any(has_topology);
        let mut smallest: Option<Resources> = None;
        for pod in &moving {
            let r = pod.spec.as_ref().and_then(|s| pod_requests(s).ok()).unwrap_or_else(Resources::zero);
            smallest = Some(match smallest {
                None => r,
                Some(mut s) => {
                    s.cpu = s.cpu.min(r.cpu);
                    s.memory = s.memory.min(r.memory);
                    s
                }
            });
        }
        let could_take = |n: &ExistingNode| {
            constrained
                || smallest
                    .as_ref()
                    .is_none_or(|s| n.available.cpu >= s.cpu && n.available.memory >= s.memory && n.available.pods >= 1)
        };
        self.input.nodes =
            self.nodes.iter().filter(|n| !gone.contains(n.name.as_str()) && could_take(n)).cloned().collect();
        self.input.bound_pods = self
            .bound
            .iter()
            .zip(&self.always)
            .filter(|(p, always)| {
                let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default();
                !gone.contains(on) && (constrained || **always)
            })
            .map(|(p, _)| p.clone())
            .collect();
        // What the removed nodes held is given back to their pools' limits.
        for (pool, limits) in self.input.pools.iter_mut().zip(&self.limits) {
            pool.limits.clone_from(limits);
            for c in removed.iter().filter(|c| c.pool_name == pool.name) {
                let capacity =
                    c.node.status.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|q| Resources::from_kube(q).ok());
                for limit in &mut pool.limits {
                    limit.remaining += capacity.as_ref().map_or(0, |r| r.get(&limit.resource));
                }
            }
        }
        self.input.pods = moving;
        let plan = solve(&self.input);
        self.input.pods.clear();
        self.input.bound_pods.clear();
        self.input.nodes.clear();
        plan
    }
}

/// What a simulation says about a set of candidates.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Their pods fit on the rest of the cluster.
    Delete { savings: f64 },
    /// Their pods fit on the rest plus this one node, which saves `savings` an hour.
    Replace { replacement: NewClaim, savings: f64 },
    /// They stay.
    Keep(String),
}

impl Outcome {
    pub fn savings(&self) -> Option<f64> {
        match self {
            Outcome::Delete { savings } | Outcome::Replace { savings, .. } => Some(*savings),
            Outcome::Keep(_) => None,
        }
    }
}

/// The rules a replacement must pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// The smallest fraction of the candidates' price a replacement must save.
    pub min_saving: f64,
    /// Cheaper spot types needed before one spot node is replaced by another.
    pub spot_min_types: usize,
}

/// Narrows a replacement to the instance types at most `limit` an hour.
fn cheaper_only(mut claim: NewClaim, limit: f64) -> NewClaim {
    claim.instance_types.retain(|o| o.price <= limit);
    let names: Vec<String> = claim.instance_types.iter().map(|o| o.name.clone()).collect();
    for r in claim.requirements.iter_mut().filter(|r| r.key == labels::INSTANCE_TYPE && r.operator == Operator::In) {
        r.values.retain(|v| names.contains(v));
    }
    claim.price = claim.instance_types.first().map_or(0.0, |o| o.price);
    claim
}

/// Whether a replacement may be bought as spot.
fn allows_spot(claim: &NewClaim) -> bool {
    claim.requirements.iter().filter(|r| r.key == labels::CAPACITY_TYPE).all(|r| match r.operator {
        Operator::In => r.values.iter().any(|v| v == labels::CAPACITY_TYPE_SPOT),
        Operator::NotIn => !r.values.iter().any(|v| v == labels::CAPACITY_TYPE_SPOT),
        Operator::DoesNotExist => false,
        _ => true,
    })
}

/// Reads a simulation of removing `removed`.
pub fn evaluate(plan: Plan, removed: &[&Candidate<'_>], rules: Rules) -> Outcome {
    if let Some(u) = plan.unplaced.first() {
        return Outcome::Keep(format!("pod {} would fit nowhere else: {}", u.pod, u.reason));
    }
    let known: f64 = removed.iter().filter_map(|c| c.price).sum();
    match plan.claims.len() {
        0 => Outcome::Delete { savings: known },
        1 => {
            if let Some(c) = removed.iter().find(|c| c.price.is_none()) {
                return Outcome::Keep(format!("the price of node {} is not in the catalog", c.node_name));
            }
            let claim = plan.claims.into_iter().next().unwrap_or_else(|| unreachable!("one claim"));
            let limit = known * (1.0 - rules.min_saving);
            let narrowed = cheaper_only(claim.clone(), limit);
            if narrowed.instance_types.is_empty() || narrowed.price >= known {
                let saving = known - claim.price;
                return Outcome::Keep(if saving <= 0.0 {
                    format!("a node for its pods costs ${:.4}/h, no less than its ${known:.4}/h", claim.price)
                } else {
                    format!(
                        "saving ${saving:.4}/h is below the {}% threshold",
                        (rules.min_saving * 1000.0).round() / 10.0
                    )
                });
            }
            // Spot replaced by spot, one node for one (Karpenter's rule, for single-node
            // consolidation only): only with enough cheaper types to choose from, and launched from
            // the cheapest of them alone, so the cloud's capacity-aware choice among them does
            // not chase the cheapest, least available offering.
            let narrowed = if removed.len() == 1 && removed.iter().all(|c| c.spot) && allows_spot(&narrowed) {
                if narrowed.instance_types.len() < rules.spot_min_types {
                    return Outcome::Keep(format!(
                        "only {} cheaper instance types; spot is replaced by spot only with {} to choose from",
                        narrowed.instance_types.len(),
                        rules.spot_min_types
                    ));
                }
                let cap =
                    narrowed.instance_types.get(rules.spot_min_types.saturating_sub(1)).map_or(limit, |o| o.price);
                cheaper_only(narrowed, cap)
            } else {
                narrowed
            };
            let savings = known - narrowed.price;
            Outcome::Replace { replacement: narrowed, savings }
        }
        n => Outcome::Keep(format!("its pods need {n} new nodes")),
    }
}
