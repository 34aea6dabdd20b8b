//! Disruption budgets: how many of a pool's nodes may be disrupted at once, for one reason, now.
//!
//! As Karpenter: a pool without budgets has `nodes: 10%`; a percentage is of the pool's nodes and
//! rounds up; a budget with a `schedule` (cron, UTC) is active from each scheduled start for its
//! `duration`; the allowance is the smallest over the budgets active now that apply to the reason.
//! Nodes already being disrupted count against it (the caller subtracts them).

use std::time::Duration;

use jiff::Timestamp;

use crate::api::duration::parse_duration;
use crate::api::nodepool::{Budget, DisruptionReason, NodePool};

/// The budget used when a pool lists none.
pub const DEFAULT_NODES: &str = "10%";

/// What the budgets allow for one reason now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// Nodes that may be disrupted at once (before subtracting those already being disrupted).
    pub nodes: usize,
    /// The budget that decides, for people: `budget nodes: 0 active until 17:00 UTC`.
    pub why: String,
}

/// When an active scheduled budget's window closes, or `None` when it is not active now.
fn active_until(schedule: &str, duration: Duration, now: Timestamp) -> Option<Timestamp> {
    let cron: croner::Cron = schedule.parse().ok()?;
    let zoned = now.to_zoned(jiff::tz::TimeZone::UTC);
    let start = cron.find_previous_occurrence(&zoned, true).ok()?;
    let end = start.timestamp().checked_add(jiff::SignedDuration::try_from(duration).ok()?).ok()?;
    (end > now).then_some(end)
}

/// How many nodes of `pool_nodes` a budget's `nodes` allows: a count, or a percentage rounded up.
/// Text that is neither (validation refuses it) allows nothing, the safe reading.
pub fn scaled(nodes: &str, pool_nodes: usize) -> usize {
    match nodes.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<usize>().map_or(0, |p| (p.min(100) * pool_nodes).div_ceil(100)),
        None => nodes.trim().parse().unwrap_or(0),
    }
}

/// Whether a budget applies to a reason.
fn applies(budget: &Budget, reason: DisruptionReason) -> bool {
    budget.reasons.is_empty() || budget.reasons.contains(&reason)
}

/// The allowance of `pool` (with `pool_nodes` nodes) for `reason` at `now`.
pub fn allowance(pool: &NodePool, reason: DisruptionReason, pool_nodes: usize, now: Timestamp) -> Allowance {
    let default = [Budget { reasons: Vec::new(), nodes: DEFAULT_NODES.into(), schedule: None, duration: None }];
    let listed = pool.spec.disruption.as_ref().map(|d| d.budgets.as_slice()).unwrap_or_default();
    let budgets = if listed.is_empty() { &default[..] } else { listed };
    let mut best: Option<Allowance> = None;
    for budget in budgets.iter().filter(|b| applies(b, reason)) {
        let why = match (&budget.schedule, &budget.duration) {
            (None, _) => format!("budget nodes: {}", budget.nodes),
            (Some(schedule), duration) => {
                let duration = duration.as_deref().and_then(|d| parse_duration(d).ok()).unwrap_or_default();
                match active_until(schedule, duration, now) {
                    Some(end) => format!("budget nodes: {} active until {} UTC", budget.nodes, end.strftime("%H:%M")),
                    None => continue,
                }
            }
        };
        let nodes = scaled(&budget.nodes, pool_nodes);
        if best.as_ref().is_none_or(|b| nodes < b.nodes) {
            best = Some(Allowance { nodes, why });
        }
    }
    // Every budget scheduled and none active: the reason is not limited beyond the pool's size.
    best.unwrap_or(Allowance { nodes: pool_nodes, why: "no budget is active".into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(budgets: serde_json::Value) -> NodePool {
        serde_json::from_value(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "p"},
            "spec": {"template": {"spec": {"requirements": [], "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "d"}}},
                     "disruption": {"budgets": budgets}}
        }))
        .expect("pool")
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn a_pool_without_budgets_allows_ten_percent_rounded_up() {
        let p = pool(json!([]));
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(allowance(&p, DisruptionReason::Underutilized, 3, now).nodes, 1);
        assert_eq!(allowance(&p, DisruptionReason::Empty, 25, now).nodes, 3);
        assert_eq!(allowance(&p, DisruptionReason::Empty, 0, now).nodes, 0);
    }

    #[test]
    fn counts_and_percentages_scale_as_karpenter_does() {
        assert_eq!(scaled("5", 3), 5);
        assert_eq!(scaled("0", 30), 0);
        assert_eq!(scaled("50%", 3), 2);
        assert_eq!(scaled("100%", 7), 7);
        assert_eq!(scaled("bad", 7), 0);
    }

    #[test]
    fn the_smallest_active_budget_that_applies_to_the_reason_wins() {
        let p = pool(json!([
            {"nodes": "50%"},
            {"nodes": "1", "reasons": ["Underutilized"]},
            {"nodes": "0", "reasons": ["Drifted"]}
        ]));
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(
            allowance(&p, DisruptionReason::Empty, 10, now),
            Allowance { nodes: 5, why: "budget nodes: 50%".into() }
        );
        assert_eq!(allowance(&p, DisruptionReason::Underutilized, 10, now).nodes, 1);
        assert_eq!(allowance(&p, DisruptionReason::Drifted, 10, now).nodes, 0);
    }

    #[test]
    fn a_scheduled_budget_holds_only_inside_its_window() {
        // Business hours freeze: nothing is disrupted 09:00–17:00 UTC on weekdays (2026-12-01 is a Tuesday).
        let p = pool(json!([{"nodes": "0", "schedule": "0 9 * * mon-fri", "duration": "8h"}, {"nodes": "10"}]));
        let inside = allowance(&p, DisruptionReason::Underutilized, 10, at("2026-12-01T12:30:00Z"));
        assert_eq!(inside, Allowance { nodes: 0, why: "budget nodes: 0 active until 17:00 UTC".into() });
        assert_eq!(allowance(&p, DisruptionReason::Underutilized, 10, at("2026-12-01T09:00:00Z")).nodes, 0);
        assert_eq!(allowance(&p, DisruptionReason::Underutilized, 10, at("2026-12-01T17:00:00Z")).nodes, 10);
        assert_eq!(
            allowance(&p, DisruptionReason::Underutilized, 10, at("2026-12-05T12:00:00Z")).nodes,
            10,
            "Saturday"
        );
        let only_scheduled = pool(json!([{"nodes": "0", "schedule": "@daily", "duration": "1h"}]));
        assert_eq!(allowance(&only_scheduled, DisruptionReason::Empty, 4, at("2026-12-01T00:30:00Z")).nodes, 0);
        assert_eq!(allowance(&only_scheduled, DisruptionReason::Empty, 4, at("2026-12-01T01:30:00Z")).nodes, 4);
    }
}
