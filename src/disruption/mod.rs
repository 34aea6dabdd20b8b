//! The disruption engine (pure): from a snapshot of the cluster, its PodDisruptionBudgets, the
//! instance catalog and the time, the one command to carry out next — which nodes go, for what
//! reason, and which node (if any) replaces them — and why every other node stays.
//!
//! Methods run in Karpenter's order, and the first that finds something wins:
//!
//! 1. **Emptiness**: candidates with no workload pods (both consolidation policies), every one the
//!    budgets allow, in one command; an empty node that pending pods are planned onto stays.
//! 2. **Drift** belongs here, between emptiness and consolidation; the lifecycle work adds it.
//! 3. **Multi-node consolidation** (`WhenEmptyOrUnderutilized`): the longest prefix of the
//!    candidates (cheapest to disrupt first, as many as the budgets allow, up to
//!    [`Settings::multi_node_max`]) whose pods fit on the rest of the cluster plus at most one new
//!    node, found by binary search; then the candidates after it are tried on top of it, each kept
//!    when the set still consolidates and saves more (until [`EXTENSION_MISSES`] in a row do not).
//!    Karpenter searches at most 100 candidates and stops at the prefix; trying those after it
//!    finds sets a prefix cannot (one node in the way). A decision runs at most
//!    [`Settings::solves`] solves: a fixed amount of work, more solves in a smaller cluster.
//! 4. **Single-node consolidation**: the first candidate, in order, that can be deleted or replaced
//!    by one cheaper node. When the solves run out first, the next decision goes on after the last
//!    candidate tried ([`View::resume_after`]), so every candidate is tried within a few rounds.
//!
//! A replacement must save at least the pool's threshold (`--consolidation-min-saving`, or the
//! NodePool annotation [`MIN_SAVING_ANNOTATION`]) and lists only instance types that do. In
//! single-node consolidation spot is replaced by spot only with [`Settings::spot_min_types`]
//! cheaper types to choose from, and from the cheapest that many alone (as Karpenter); several
//! nodes replaced by one need no such rule. Deleting a node always saves. Consolidation waits while pending pods would be placed: they are the
//! provisioner's, and the capacity they are about to take is not spare.

pub mod budgets;
pub mod candidates;
pub mod consolidation;
#[cfg(any(test, feature = "test-util"))]
pub mod fixture;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Serialize;

use crate::api::nodepool::{ConsolidationPolicy, DisruptionReason, NodePool};
use crate::scheduling::instance_types::InstanceType;
use crate::scheduling::solver::{NewClaim, solve};
use crate::state::{Snapshot, provisionable, scheduling_input_keeping};

pub use candidates::{Candidate, Kept};
use consolidation::{Outcome, Rules, Simulator, evaluate};

/// The NodePool annotation that overrides `--consolidation-min-saving` for one pool (`"10%"` or
/// `"0.1"`); an annotation keeps the v1 schema Karpenter's.
pub const MIN_SAVING_ANNOTATION: &str = "rafter.sh/consolidation-min-saving";

/// Which method found a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Method {
    Emptiness,
    MultiNode,
    SingleNode,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Emptiness => "emptiness",
            Method::MultiNode => "multi-node",
            Method::SingleNode => "single-node",
        }
    }
}

/// A node a command disrupts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub claim: String,
    pub node: String,
    pub pool: String,
    /// $/h, when known.
    pub price: Option<f64>,
}

/// One disruption to carry out: launch `replacements` (and wait until they are initialized), then
/// delete `candidates`' claims, whose termination drains them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    pub method: Method,
    pub reason: DisruptionReason,
    pub candidates: Vec<Target>,
    pub replacements: Vec<NewClaim>,
    /// What it saves, $/h.
    pub savings: f64,
}

impl Command {
    /// `delete` or `replace`, as metrics and logs name the decision.
    pub fn decision(&self) -> &'static str {
        if self.replacements.is_empty() { "delete" } else { "replace" }
    }
}

/// The engine's tunables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Default smallest saving of a replacement, as a fraction of what it replaces.
    pub min_saving: f64,
    /// Cheaper spot types needed before one spot node is replaced by another (Karpenter's 15).
    pub spot_min_types: usize,
    /// Most candidates the multi-node search's prefix considers (Karpenter: 100; the budget is
    /// usually the tighter bound).
    pub multi_node_max: usize,
    /// What one decision may spend, in nodes solved over: a decision over N nodes runs at most
    /// `work / N` solves (at least 16, at most `simulations`), so it takes about as long in a
    /// small cluster as in a large one, and a small cluster's search goes further.
    pub work: usize,
    /// Most solves one decision runs, however small the cluster.
    pub simulations: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { min_saving: 0.05, spot_min_types: 15, multi_node_max: 1_000, work: 200_000, simulations: 1_000 }
    }
}

impl Settings {
    /// The solves a decision over `nodes` nodes may run.
    pub fn solves(&self, nodes: usize) -> usize {
        (self.work / nodes.max(1)).clamp(16, self.simulations.max(16))
    }
}

/// Everything a decision is taken over.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub snapshot: Snapshot<'a>,
    pub pdbs: &'a [Arc<PodDisruptionBudget>],
    pub types: &'a HashMap<String, Vec<InstanceType>>,
    pub now: Timestamp,
    pub settings: Settings,
    /// Where the last decision's single-node scan stopped when its solves ran out (its
    /// [`Decision::resume_after`]): this one starts with the candidate after it, so over a few
    /// rounds every candidate is tried however large the cluster.
    pub resume_after: Option<&'a str>,
}

/// The engine's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Decision {
    pub command: Option<Command>,
    /// Nodes that stay, with why (candidates the methods looked at and refused included).
    pub kept: Vec<Kept>,
    /// Pools whose threshold annotation does not parse (the default applies), with the message.
    pub warnings: Vec<(String, String)>,
    /// Simulations run.
    pub simulations: usize,
    /// The last candidate the single-node scan tried, when its solves ran out before every
    /// candidate was tried and no command was found: pass it to the next decision.
    pub resume_after: Option<String>,
}

/// Parses a saving threshold: `"5%"` or `"0.05"`, between 0 and 1.
pub fn parse_min_saving(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let value = match text.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.parse::<f64>(),
    }
    .map_err(|_| format!("{text:?} is not a fraction (0.05) or a percentage (5%)"))?;
    if !(0.0..1.0).contains(&value) {
        return Err(format!("{text:?} must be at least 0 and below 100%"));
    }
    Ok(value)
}

fn pool_threshold(pool: &NodePool, default: f64, warnings: &mut Vec<(String, String)>) -> f64 {
    let name = pool.metadata.name.clone().unwrap_or_default();
    match pool.metadata.annotations.as_ref().and_then(|a| a.get(MIN_SAVING_ANNOTATION)) {
        None => default,
        Some(text) => parse_min_saving(text).unwrap_or_else(|e| {
            warnings.push((name, format!("annotation {MIN_SAVING_ANNOTATION}: {e}; using {default}")));
            default
        }),
    }
}

fn target(c: &Candidate<'_>) -> Target {
    Target { claim: c.name.clone(), node: c.node_name.clone(), pool: c.pool_name.clone(), price: c.price }
}

fn policy(pool: &NodePool) -> ConsolidationPolicy {
    pool.spec.disruption.as_ref().map(|d| d.policy()).unwrap_or(ConsolidationPolicy::WhenEmptyOrUnderutilized)
}

/// Per-pool room left under the budgets for a reason.
#[derive(Clone)]
struct Room {
    left: HashMap<String, usize>,
    why: HashMap<String, String>,
}

impl Room {
    fn new(view: &View<'_>, classified: &candidates::Classified<'_>, reason: DisruptionReason) -> Self {
        let mut left = HashMap::new();
        let mut why = HashMap::new();
        for pool in view.snapshot.pools {
            let name = pool.metadata.name.clone().unwrap_or_default();
            let nodes = classified.pool_nodes.get(&name).copied().unwrap_or(0);
            let busy = classified.disrupting.get(&name).copied().unwrap_or(0);
            let allowance = budgets::allowance(pool, reason, nodes, view.now);
            left.insert(name.clone(), allowance.nodes.saturating_sub(busy));
            why.insert(
                name.clone(),
                format!("NodePool {name}'s {} allows no more now ({busy} being disrupted)", allowance.why),
            );
        }
        Room { left, why }
    }

    /// Takes room for one node of `pool`; false when there is none.
    fn take(&mut self, pool: &str) -> bool {
        match self.left.get_mut(pool) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether one more node of `pool` may be disrupted.
    fn has(&self, pool: &str) -> bool {
        self.left.get(pool).is_some_and(|n| *n > 0)
    }

    fn why(&self, pool: &str) -> String {
        self.why.get(pool).cloned().unwrap_or_else(|| format!("NodePool {pool} is gone"))
    }
}

/// The multi-node search stops trying candidates past its prefix after this many in a row did
/// not join it.
pub const EXTENSION_MISSES: usize = 16;

/// The set with the best outcome a multi-node search finds, if any has two nodes or more.
fn multi_node<'c, 'a>(
    sim: &mut Simulator,
    pool: &'c [&'c Candidate<'a>],
    rules: Rules,
    settings: &Settings,
    solves: usize,
) -> Option<(Vec<&'c Candidate<'a>>, Outcome)> {
    let prefix = &pool[..pool.len().min(settings.multi_node_max)];
    if prefix.len() < 2 {
        return None;
    }
    let mut best: Option<(Vec<&Candidate<'a>>, Outcome)> = None;
    let (mut lo, mut hi) = (2usize, prefix.len());
    while lo <= hi && sim.runs < solves {
        let mid = (lo + hi) / 2;
        let set: Vec<&Candidate<'a>> = prefix[..mid].to_vec();
        let outcome = evaluate(sim.run(&set), &set, rules);
        if outcome.savings().is_some() {
            best = Some((set, outcome));
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    let (mut set, mut outcome) = best?;
    // Beyond the prefix: each later candidate joins when the set still consolidates and saves more
    // (until the solves run out, or EXTENSION_MISSES in a row did not join).
    let mut misses = 0;
    for c in pool.iter().skip(set.len()) {
        if sim.runs >= solves || misses >= EXTENSION_MISSES {
            break;
        }
        let mut tried = set.clone();
        tried.push(c);
        let next = evaluate(sim.run(&tried), &tried, rules);
        if next.savings().unwrap_or(f64::MIN) > outcome.savings().unwrap_or(0.0) + 1e-9 {
            set = tried;
            outcome = next;
            misses = 0;
        } else {
            misses += 1;
        }
    }
    Some((set, outcome))
}

fn command(method: Method, reason: DisruptionReason, set: &[&Candidate<'_>], outcome: Outcome) -> Option<Command> {
    let candidates = set.iter().map(|c| target(c)).collect();
    match outcome {
        Outcome::Delete { savings } => Some(Command { method, reason, candidates, replacements: Vec::new(), savings }),
        Outcome::Replace { replacement, savings } => {
            Some(Command { method, reason, candidates, replacements: vec![replacement], savings })
        }
        Outcome::Keep(_) => None,
    }
}

/// Computes the next command, and why every other node stays.
pub fn decide(view: View<'_>) -> Decision {
    let mut decision = Decision::default();
    let inputs = candidates::Inputs { pdbs: view.pdbs, types: view.types, now: view.now };
    let mut classified = candidates::classify(view.snapshot, inputs);
    decision.kept = std::mem::take(&mut classified.kept);
    if classified.candidates.is_empty() {
        return decision;
    }
    // One solver input for the whole decision; first, where the pending pods would go.
    let pending: Vec<_> = view.snapshot.pods.iter().filter(|p| provisionable(p)).map(|p| p.as_ref().clone()).collect();
    // Bound pods matter to a simulation only when they constrain every placement, or some pod
    // that may be placed (a candidate's or a pending one) has topology constraints: then all do.
    let topology = view.snapshot.pods.iter().any(|p| consolidation::has_topology(p));
    let (input, _) = scheduling_input_keeping(
        view.snapshot,
        pending,
        |pool| view.types.get(pool.metadata.name.as_deref().unwrap_or_default()).cloned().unwrap_or_default(),
        |pod| topology || consolidation::constrains_everyone(pod),
    );
    // With nothing pending the answer is known; the solve would still read every bound pod.
    let awaited_plan = if input.pods.is_empty() { Default::default() } else { solve(&input) };
    decision.simulations += usize::from(!input.pods.is_empty());
    let awaited: HashSet<&str> = awaited_plan.placements.iter().map(|p| p.node.as_str()).collect();
    let provisioning = !awaited_plan.placements.is_empty() || !awaited_plan.claims.is_empty();

    // 1. Emptiness.
    let mut room = Room::new(&view, &classified, DisruptionReason::Empty);
    let mut empty = Vec::new();
    for c in classified.candidates.iter().filter(|c| c.pods.is_empty()) {
        if awaited.contains(c.node_name.as_str()) || awaited.contains(c.name.as_str()) {
            decision.kept.push(Kept {
                claim: c.name.clone(),
                node: c.node_name.clone(),
                why: "pending pods are planned onto it".into(),
            });
        } else if room.take(&c.pool_name) {
            empty.push(c);
        } else {
            decision.kept.push(Kept { claim: c.name.clone(), node: c.node_name.clone(), why: room.why(&c.pool_name) });
        }
    }
    if !empty.is_empty() {
        let savings = empty.iter().filter_map(|c| c.price).sum();
        decision.command = command(Method::Emptiness, DisruptionReason::Empty, &empty, Outcome::Delete { savings });
        return decision;
    }

    // 3–4. Consolidation of under-used nodes.
    let mut warnings = Vec::new();
    let thresholds: HashMap<String, f64> = view
        .snapshot
        .pools
        .iter()
        .map(|p| {
            (p.metadata.name.clone().unwrap_or_default(), pool_threshold(p, view.settings.min_saving, &mut warnings))
        })
        .collect();
    decision.warnings = warnings;
    // A pool with room for one more node lets each of its candidates be tried alone; the
    // multi-node search takes, of each pool, only as many as its room.
    let room = Room::new(&view, &classified, DisruptionReason::Underutilized);
    let mut eligible: Vec<&Candidate<'_>> = Vec::new();
    for c in classified.candidates.iter().filter(|c| !c.pods.is_empty()) {
        let keep = |why: String| Kept { claim: c.name.clone(), node: c.node_name.clone(), why };
        if policy(c.pool) != ConsolidationPolicy::WhenEmptyOrUnderutilized {
            decision.kept.push(keep(format!(
                "NodePool {} removes only empty nodes (consolidationPolicy: WhenEmpty)",
                c.pool_name
            )));
        } else if provisioning {
            decision.kept.push(keep("pending pods are being provisioned; consolidation waits for them".into()));
        } else if room.has(&c.pool_name) {
            eligible.push(c);
        } else {
            decision.kept.push(keep(room.why(&c.pool_name)));
        }
    }
    if eligible.is_empty() {
        return decision;
    }
    let mut multi_room = room.clone();
    let within: Vec<&Candidate<'_>> = eligible.iter().copied().filter(|c| multi_room.take(&c.pool_name)).collect();
    let rules_for = |set: &[&Candidate<'_>]| Rules {
        // The strictest threshold among the pools the set touches.
        min_saving: set.iter().filter_map(|c| thresholds.get(&c.pool_name)).copied().fold(0.0, f64::max),
        spot_min_types: view.settings.spot_min_types,
    };
    let mut sim = Simulator::new(input);
    let settings = view.settings;
    let multi_rules = rules_for(&within);
    let solves = settings.solves(view.snapshot.nodes.len());
    if let Some((set, outcome)) = multi_node(&mut sim, &within, multi_rules, &settings, solves) {
        decision.simulations += sim.runs;
        decision.command = command(Method::MultiNode, DisruptionReason::Underutilized, &set, outcome);
        return decision;
    }
    // In order of disruption cost, starting after where the last decision's scan stopped.
    let start = view.resume_after.and_then(|name| eligible.iter().position(|c| c.name == name)).map_or(0, |i| i + 1);
    let mut last: Option<&str> = None;
    for k in 0..eligible.len() {
        if sim.runs >= solves {
            decision.resume_after = last.map(str::to_string);
            break;
        }
        let c = eligible[(start + k) % eligible.len()];
        last = Some(&c.name);
        let set = [c];
        match evaluate(sim.run(&set), &set, rules_for(&set)) {
            Outcome::Keep(why) => decision.kept.push(Kept { claim: c.name.clone(), node: c.node_name.clone(), why }),
            outcome => {
                decision.command = command(Method::SingleNode, DisruptionReason::Underutilized, &set, outcome);
                break;
            }
        }
    }
    decision.simulations += sim.runs;
    decision
}

#[cfg(test)]
mod tests;
