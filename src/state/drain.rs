//! The drain plan of a node whose claim is being deleted: which pods to evict, which to delete now
//! and with what grace, and whether the node is drained, given disruption budgets' refusals
//! (backoff), grace periods, an interruption's deadline and `karpenter.sh/do-not-disrupt`.
//!
//! Pods leave in Karpenter's four tiers (`disruption::eviction_tier`); a tier waits until the
//! lower one is gone. A drain is *forced* when the claim's `terminationGracePeriod` has run out
//! since its deletion, or its node never became ready (a failed launch with pods bound directly
//! has nothing to drain gracefully): every pod is deleted at once, blocked or not. An interruption
//! deadline means the node goes then whatever its pods say: `do-not-disrupt` cannot hold the drain,
//! grace periods are cut to end before the deadline, and a pod whose budget would hold it past the
//! deadline is deleted rather than evicted.
//!
//! Before a `terminationGracePeriod` runs out, each pod that would not otherwise end in time is
//! deleted early enough to: once the time left is no more than its own grace period, it is
//! deleted with what is left, past any disruption budget or `do-not-disrupt`, so the node's drain
//! ends at the claim's deadline rather than after it.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::api::nodeclaim::{NodeClaim, conditions};
use crate::interruption::plan::{Record, eviction_grace, grace_seconds, must_delete_now};
use crate::state::condition_true;
use crate::state::disruption::{blocks_disruption, eviction_backoff, eviction_tier, next_evictions};

/// How one pod leaves a draining node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Through the Eviction API (disruption budgets apply), with this grace period if not its own.
    Evict { grace: Option<i64> },
    /// Deleted outright with this grace period.
    Delete { grace: i64 },
}

/// What the drain knows of the claim and its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOf {
    /// The claim's `terminationGracePeriod` has run out since its deletion.
    pub grace_expired: bool,
    /// The node never became ready (and the claim was never initialized).
    pub never_ready: bool,
    /// The interruption's deadline, if one was recorded.
    pub deadline: Option<Timestamp>,
    /// When the claim's `terminationGracePeriod` runs out, if it has one.
    pub grace_deadline: Option<Timestamp>,
    pub now: Timestamp,
}

impl DrainOf {
    /// Reads the claim (and whether its node is ready) at `now`.
    pub fn new(claim: &NodeClaim, node_ready: bool, now: Timestamp) -> DrainOf {
        let grace: Option<Duration> =
            claim.spec.template.termination_grace_period.as_ref().and_then(|g| g.parse().ok());
        let grace_deadline = grace
            .zip(claim.metadata.deletion_timestamp.as_ref())
            .and_then(|(grace, deleted)| deleted.0.checked_add(jiff::SignedDuration::try_from(grace).ok()?).ok());
        DrainOf {
            grace_expired: grace_deadline.is_some_and(|end| now >= end),
            never_ready: !condition_true(claim, conditions::INITIALIZED) && !node_ready,
            deadline: Record::of(claim.metadata.annotations.as_ref()).and_then(|r| r.deadline),
            grace_deadline,
            now,
        }
    }

    /// Every pod goes now, with no grace and no budget.
    pub fn forced(&self) -> bool {
        self.grace_expired || self.never_ready
    }

    /// The seconds left before the grace period runs out, when they are no more than the pod's own
    /// grace period: it must be deleted now to end in time.
    pub fn grace_due(&self, pod: &Pod) -> Option<i64> {
        let left = self.grace_deadline?.duration_since(self.now).as_secs().max(0);
        (left <= grace_seconds(pod)).then_some(left)
    }
}

/// This round of a node's drain.
#[derive(Debug, PartialEq)]
pub struct DrainPlan<'a> {
    /// No pod the drain is responsible for is left (terminating ones included): the instance may go.
    pub drained: bool,
    /// The pods to remove now, and how.
    pub removals: Vec<(&'a Pod, Removal)>,
    /// How many removals override a disruption budget because of the deadline.
    pub budget_overrides: usize,
}

/// The plan for the pods on one node. `waiting` says which pods are backing off after a refusal.
pub fn plan<'a>(pods: &[&'a Pod], of: &DrainOf, waiting: impl Fn(&Pod) -> bool) -> DrainPlan<'a> {
    let drained = !pods.iter().any(|p| eviction_tier(p).is_some());
    if drained {
        return DrainPlan { drained, removals: Vec::new(), budget_overrides: 0 };
    }
    let force = of.forced();
    let candidates = pods
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| force || of.deadline.is_some() || !blocks_disruption(p) || of.grace_due(p).is_some());
    let removals: Vec<(&Pod, Removal)> = next_evictions(candidates)
        .into_iter()
        .filter(|p| !waiting(p))
        .map(|p| {
            let grace = eviction_grace(p, of.now, of.deadline);
            let removal = if force {
                Removal::Delete { grace: 0 }
            } else if must_delete_now(p, of.now, of.deadline) {
                Removal::Delete { grace: grace.unwrap_or_else(|| grace_seconds(p)) }
            } else if let Some(left) = of.grace_due(p) {
                Removal::Delete { grace: grace.map_or(left, |g| g.min(left)) }
            } else {
                Removal::Evict { grace }
            };
            (p, removal)
        })
        .collect();
    let budget_overrides =
        if force { 0 } else { removals.iter().filter(|(_, r)| matches!(r, Removal::Delete { .. })).count() };
    DrainPlan { drained, removals, budget_overrides }
}

/// The longest wait between eviction attempts of a pod whose node has a deadline.
pub const DEADLINE_RETRY: Duration = Duration::from_secs(1);

/// How long to wait before asking again after the `attempt`-th refusal: against a deadline a
/// budget is asked again every second at most.
pub fn retry_after(attempt: u32, has_deadline: bool) -> Duration {
    let wait = eviction_backoff(attempt);
    if has_deadline { wait.min(DEADLINE_RETRY) } else { wait }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}], "terminationGracePeriodSeconds": 30},
            "status": {"phase": "Running"}
        });
        json_patch(&mut v, extra);
        serde_json::from_value(v).expect("pod")
    }

    fn json_patch(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_patch(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn of() -> DrainOf {
        DrainOf { grace_expired: false, never_ready: false, deadline: None, grace_deadline: None, now: at(0) }
    }

    fn names(plan: &DrainPlan<'_>) -> Vec<(String, Removal)> {
        plan.removals.iter().map(|(p, r)| (p.metadata.name.clone().unwrap_or_default(), *r)).collect()
    }

    #[test]
    fn the_plan_follows_tiers_blocks_grace_and_deadlines() {
        let web = pod("web", json!({}));
        let blocked = pod("blocked", json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": "true"}}}));
        let critical = pod("critical", json!({"spec": {"priorityClassName": "system-node-critical"}}));
        let leaving = pod("leaving", json!({"metadata": {"deletionTimestamp": "2027-01-15T08:00:00Z"}}));
        let done = pod("done", json!({"status": {"phase": "Succeeded"}}));
        let evict = |g| Removal::Evict { grace: g };
        // (what, the node's pods, the drain, removals wanted, drained, budget overrides)
        type Case<'a> = (&'a str, Vec<&'a Pod>, DrainOf, Vec<(&'a str, Removal)>, bool, usize);
        let cases: Vec<Case<'_>> = vec![
            ("a node with only finished pods is drained", vec![&done], of(), vec![], true, 0),
            ("an empty node is drained", vec![], of(), vec![], true, 0),
            (
                "the lowest tier goes first, through the Eviction API",
                vec![&web, &critical],
                of(),
                vec![("web", evict(None))],
                false,
                0,
            ),
            (
                "a critical pod goes once the rest is gone",
                vec![&critical],
                of(),
                vec![("critical", evict(None))],
                false,
                0,
            ),
            ("do-not-disrupt holds the drain", vec![&blocked], of(), vec![], false, 0),
            ("a terminating pod is waited for, not evicted again", vec![&leaving], of(), vec![], false, 0),
            (
                "a run-out termination grace period deletes every pod at once, blocked or not",
                vec![&web, &blocked],
                DrainOf { grace_expired: true, ..of() },
                vec![("web", Removal::Delete { grace: 0 }), ("blocked", Removal::Delete { grace: 0 })],
                false,
                0,
            ),
            (
                "a grace period far from its end leaves do-not-disrupt pods alone",
                vec![&web, &blocked],
                DrainOf { grace_deadline: Some(at(300)), ..of() },
                vec![("web", evict(None))],
                false,
                0,
            ),
            (
                "a grace period ending within a pod's own grace deletes it now with what is left",
                vec![&blocked],
                DrainOf { grace_deadline: Some(at(20)), ..of() },
                vec![("blocked", Removal::Delete { grace: 20 })],
                false,
                1,
            ),
            (
                "a node that never became ready has its pods deleted",
                vec![&web],
                DrainOf { never_ready: true, ..of() },
                vec![("web", Removal::Delete { grace: 0 })],
                false,
                0,
            ),
            (
                "a far deadline evicts do-not-disrupt pods with their own grace",
                vec![&blocked],
                DrainOf { deadline: Some(at(600)), ..of() },
                vec![("blocked", evict(None))],
                false,
                0,
            ),
            (
                "a near deadline cuts the grace period (to end 10 s before it) and deletes past the budget",
                vec![&web],
                DrainOf { deadline: Some(at(20)), ..of() },
                vec![("web", Removal::Delete { grace: 10 })],
                false,
                1,
            ),
        ];
        for (what, pods, of, want, drained, overrides) in cases {
            let plan = plan(&pods, &of, |_| false);
            let want: Vec<(String, Removal)> = want.into_iter().map(|(n, r)| (n.to_string(), r)).collect();
            assert_eq!((names(&plan), plan.drained, plan.budget_overrides), (want, drained, overrides), "{what}");
        }
    }

    #[test]
    fn a_pod_backing_off_is_not_asked_again_and_still_holds_the_drain() {
        let web = pod("web", json!({}));
        let other = pod("other", json!({}));
        let plan = plan(&[&web, &other], &of(), |p| p.metadata.name.as_deref() == Some("web"));
        assert_eq!(names(&plan), vec![("other".to_string(), Removal::Evict { grace: None })]);
        assert!(!plan.drained);
    }

    #[test]
    fn refusals_back_off_but_a_deadline_asks_every_second() {
        assert_eq!(retry_after(0, false), Duration::from_millis(100));
        assert_eq!(retry_after(8, false), Duration::from_secs(10));
        assert_eq!(retry_after(8, true), Duration::from_secs(1));
        assert_eq!(retry_after(0, true), Duration::from_millis(100));
    }

    #[test]
    fn the_claims_grace_period_runs_from_its_deletion() {
        let mut claim: NodeClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c"},
            "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}
        }))
        .expect("claim");
        claim.spec.template.termination_grace_period = Some(crate::api::duration::KubeDuration("1m".into()));
        claim.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)));
        assert!(!DrainOf::new(&claim, true, at(59)).grace_expired);
        assert!(DrainOf::new(&claim, true, at(60)).grace_expired);
        assert_eq!(DrainOf::new(&claim, true, at(0)).grace_deadline, Some(at(60)));
        assert!(DrainOf::new(&claim, false, at(0)).never_ready);
        assert!(!DrainOf::new(&claim, true, at(0)).never_ready);
    }
}
