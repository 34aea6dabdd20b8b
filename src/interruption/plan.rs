//! What Rafter does about an interruption message (pure): the notice it acts on, the record it
//! leaves on the NodeClaim so the action happens once however often the queue delivers, where the
//! node's pods go instead, and when the drain must start and how much grace each pod keeps so the
//! instance is gone before its deadline.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::{Deserialize, Serialize};

use super::Message;
use crate::api::labels;
use crate::api::nodeclaim::NodeClaim;
use crate::scheduling::instance_types::InstanceType;
use crate::scheduling::resources::{Resources, pod_requests};
use crate::scheduling::solver::{Plan, SchedulingInput, pod_key, solve};
use crate::state::disruption::eviction_tier;
use crate::state::{Snapshot, node_name, owned_by_daemonset, provisionable, scheduling_input};

/// The NodeClaim annotation holding the interruption [`Record`]: written before the message is
/// deleted, so a new leader (or a re-delivered message) finds the work already owned.
pub const ANNOTATION: &str = "rafter.sh/interruption";
/// The annotation a replacement NodeClaim carries: the name of the claim it replaces.
pub const REPLACES_ANNOTATION: &str = "rafter.sh/replaces";
/// How long after its warning a spot instance is reclaimed.
pub const SPOT_NOTICE: Duration = Duration::from_secs(120);
/// Time kept before a deadline for terminating the instance and confirming it is gone.
pub const TERMINATION_MARGIN: Duration = Duration::from_secs(10);
/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The kinds of message, as metrics and records name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SpotInterruption,
    CapacityReservationInterruption,
    RebalanceRecommendation,
    StateChange,
    ScheduledChange,
    /// Any other event, AWS Health events of other categories included.
    Unknown,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::SpotInterruption,
        Kind::CapacityReservationInterruption,
        Kind::RebalanceRecommendation,
        Kind::StateChange,
        Kind::ScheduledChange,
        Kind::Unknown,
    ];

    /// Whether an event of this kind says the instance's spot offering is short of capacity.
    pub fn exhausts_spot_offering(self) -> bool {
        self == Kind::SpotInterruption
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SpotInterruption => "spot_interruption",
            Kind::CapacityReservationInterruption => "capacity_reservation_interruption",
            Kind::RebalanceRecommendation => "rebalance_recommendation",
            Kind::StateChange => "state_change",
            Kind::ScheduledChange => "scheduled_change",
            Kind::Unknown => "unknown",
        }
    }
}

/// What to do about a rebalance recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebalancePolicy {
    /// Count it and do nothing (Karpenter's behaviour).
    Ignore,
    /// Treat it as the early warning it is: replacement first, then drain.
    #[default]
    Replace,
}

impl std::str::FromStr for RebalancePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ignore" => Ok(Self::Ignore),
            "replace" => Ok(Self::Replace),
            other => Err(format!("rebalance policy must be `ignore` or `replace`, not `{other}`")),
        }
    }
}

/// What happens to an affected node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Launch replacement capacity, taint, drain once the replacement is ready (or the deadline
    /// leaves no more time to wait), terminate.
    Replace,
    /// The instance is stopping or gone: remove its claim and node now.
    Remove,
}

/// An event Rafter acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: Kind,
    pub event_id: String,
    pub event_time: Timestamp,
    /// The affected instances (a Health event may name several).
    pub instances: Vec<String>,
    pub action: Action,
    /// When the instance goes away (`None`: no known deadline, as for rebalance recommendations).
    pub deadline: Option<Timestamp>,
}

impl Notice {
    /// Whether the instance's spot offering should be avoided for a while.
    pub fn exhausts_spot_offering(&self) -> bool {
        self.kind.exhausts_spot_offering()
    }
}

/// What a message leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Act(Notice),
    /// Counted by kind and deleted.
    Ignore {
        kind: Kind,
        why: String,
    },
}

/// A message whose times cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("event {id}: {field} `{value}` is not a valid time: {source}")]
pub struct PlanError {
    pub id: String,
    pub field: &'static str,
    pub value: String,
    #[source]
    pub source: jiff::Error,
}

fn rfc3339(id: &str, field: &'static str, value: &str) -> Result<Timestamp, PlanError> {
    value.parse().map_err(|source| PlanError { id: id.into(), field, value: value.into(), source })
}

/// RFC 2822, with the redundant weekday ignored: AWS's own example event names the wrong one.
fn rfc2822(id: &str, field: &'static str, value: &str) -> Result<Timestamp, PlanError> {
    let without_weekday = value.split_once(", ").filter(|(day, _)| day.len() == 3).map_or(value, |(_, rest)| rest);
    jiff::fmt::rfc2822::parse(without_weekday).map(|z| z.timestamp()).map_err(|source| PlanError {
        id: id.into(),
        field,
        value: value.into(),
        source,
    })
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)).unwrap_or(t)
}

/// Decides what a parsed message asks for.
pub fn decide(message: &Message, policy: RebalancePolicy) -> Result<Decision, PlanError> {
    let act = |kind, id: &str, time: &str, instances: Vec<String>, action, deadline: Option<Timestamp>| {
        Ok(Decision::Act(Notice {
            kind,
            event_id: id.to_string(),
            event_time: rfc3339(id, "time", time)?,
            instances,
            action,
            deadline,
        }))
    };
    match message {
        Message::SpotInterruption(e) => {
            let time = rfc3339(&e.id, "time", &e.time)?;
            let deadline = after(time, SPOT_NOTICE);
            act(
                Kind::SpotInterruption,
                &e.id,
                &e.time,
                vec![e.detail.instance_id.clone()],
                Action::Replace,
                Some(deadline),
            )
        }
        Message::CapacityReservationInterruption(e) => {
            let deadline = match &e.detail.instance_termination_time {
                Some(t) => rfc3339(&e.id, "detail.instance-termination-time", t)?,
                None => after(rfc3339(&e.id, "time", &e.time)?, SPOT_NOTICE),
            };
            let instances = vec![e.detail.instance_id.clone()];
            act(Kind::CapacityReservationInterruption, &e.id, &e.time, instances, Action::Replace, Some(deadline))
        }
        Message::RebalanceRecommendation(e) => match policy {
            RebalancePolicy::Ignore => Ok(Decision::Ignore {
                kind: Kind::RebalanceRecommendation,
                why: "the rebalance policy is `ignore`".into(),
            }),
            RebalancePolicy::Replace => {
                let instances = vec![e.detail.instance_id.clone()];
                act(Kind::RebalanceRecommendation, &e.id, &e.time, instances, Action::Replace, None)
            }
        },
        Message::StateChange(e) => match e.detail.state.as_str() {
            "stopping" | "stopped" | "shutting-down" | "terminated" => {
                let time = rfc3339(&e.id, "time", &e.time)?;
                act(Kind::StateChange, &e.id, &e.time, vec![e.detail.instance_id.clone()], Action::Remove, Some(time))
            }
            other => Ok(Decision::Ignore { kind: Kind::StateChange, why: format!("the instance is {other}") }),
        },
        Message::Health(e) => {
            let d = &e.detail;
            if d.event_type_category != "scheduledChange" || d.service != "EC2" {
                return Ok(Decision::Ignore {
                    kind: Kind::Unknown,
                    why: format!(
                        "a {} {} Health event is not a scheduled change to EC2",
                        d.service, d.event_type_category
                    ),
                });
            }
            let deadline = d.start_time.as_deref().map(|t| rfc2822(&e.id, "detail.startTime", t)).transpose()?;
            let instances: Vec<String> =
                d.affected_entities.iter().map(|a| a.entity_value.clone()).filter(|v| v.starts_with("i-")).collect();
            if instances.is_empty() {
                return Ok(Decision::Ignore { kind: Kind::ScheduledChange, why: "it names no instance".into() });
            }
            act(Kind::ScheduledChange, &e.id, &e.time, instances, Action::Replace, deadline)
        }
        Message::Unknown { detail_type, source, .. } => Ok(Decision::Ignore {
            kind: Kind::Unknown,
            why: format!("Rafter does not act on {source} `{detail_type}`"),
        }),
    }
}

/// What is recorded on an affected NodeClaim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub kind: Kind,
    pub action: Action,
    pub event_id: String,
    pub event_time: Timestamp,
    /// When the first message about this instance was received.
    pub received_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

impl Record {
    pub fn new(notice: &Notice, received_at: Timestamp) -> Self {
        Self {
            kind: notice.kind,
            action: notice.action,
            event_id: notice.event_id.clone(),
            event_time: notice.event_time,
            received_at,
            deadline: notice.deadline,
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(value: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(value)
    }

    /// The record on a claim's annotations, if any and readable.
    pub fn of(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Option<Self> {
        annotations.and_then(|a| a.get(ANNOTATION)).and_then(|v| Self::decode(v).ok())
    }
}

/// What a new notice does to the record already on a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// Nothing new: the message is a re-delivery, or the claim is already handled at least as urgently.
    Duplicate,
    /// Write this record.
    Write(Record),
}

/// Merges a new record into an existing one: the more urgent wins, and the first receipt is kept
/// so latencies are measured from the first warning.
pub fn merge(existing: Option<&Record>, new: Record) -> Merge {
    let Some(old) = existing else { return Merge::Write(new) };
    if old.event_id == new.event_id || old.action == Action::Remove {
        return Merge::Duplicate;
    }
    let earlier = match (new.deadline, old.deadline) {
        (Some(n), Some(o)) => n < o,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if new.action == Action::Remove || earlier {
        Merge::Write(Record { received_at: old.received_at.min(new.received_at), ..new })
    } else {
        Merge::Duplicate
    }
}

/// A pod's own grace period in seconds.
pub fn grace_seconds(pod: &Pod) -> i64 {
    pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(DEFAULT_GRACE_SECONDS).max(0)
}

fn seconds_left(now: Timestamp, deadline: Timestamp) -> i64 {
    let end =
        deadline.saturating_sub(SignedDuration::try_from(TERMINATION_MARGIN).unwrap_or_default()).unwrap_or(deadline);
    end.duration_since(now).as_secs().max(0)
}

/// The latest moment an affected node's drain may start: its slowest pod's grace period and the
/// termination margin still fit before the deadline.
pub fn latest_drain_start(deadline: Timestamp, pods: &[&Pod]) -> Timestamp {
    let longest = pods.iter().map(|p| grace_seconds(p)).max().unwrap_or(0);
    let back = SignedDuration::from_secs(longest) + SignedDuration::try_from(TERMINATION_MARGIN).unwrap_or_default();
    deadline.saturating_sub(back).unwrap_or(deadline)
}

/// The grace period to evict a pod with: its own, cut so it ends before the deadline's margin
/// (`None`: its own applies).
pub fn eviction_grace(pod: &Pod, now: Timestamp, deadline: Option<Timestamp>) -> Option<i64> {
    let left = seconds_left(now, deadline?);
    (left < grace_seconds(pod)).then_some(left)
}

/// Whether the drain can no longer wait for a disruption budget to allow this pod's eviction: any
/// later, its grace period would not end before the deadline's margin. It is then deleted with
/// the grace that is left, which is kinder than the instance vanishing under it.
pub fn must_delete_now(pod: &Pod, now: Timestamp, deadline: Option<Timestamp>) -> bool {
    deadline.is_some_and(|d| seconds_left(now, d) <= grace_seconds(pod))
}

/// Pods that need a new home when a node goes: those its drain evicts, DaemonSet pods aside.
pub fn evacuees<'a>(pods: &'a [Arc<Pod>], node: &str) -> Vec<&'a Pod> {
    pods.iter()
        .map(AsRef::as_ref)
        .filter(|p| node_name(p) == Some(node))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !owned_by_daemonset(p) && eviction_tier(p).is_some())
        .collect()
}

/// The cluster as it will be once a node is gone: its pods pending again, it and they removed.
struct Without {
    pending: Vec<Pod>,
    pods: Vec<Arc<Pod>>,
    nodes: Vec<Arc<Node>>,
    claims: Vec<Arc<NodeClaim>>,
}

fn without(snapshot: Snapshot<'_>, node: &str) -> Without {
    let pending = evacuees(snapshot.pods, node)
        .into_iter()
        .map(|p| {
            let mut p = p.clone();
            if let Some(spec) = p.spec.as_mut() {
                spec.node_name = None;
            }
            p.status = None;
            p
        })
        .collect();
    let pods = snapshot.pods.iter().filter(|p| node_name(p) != Some(node)).cloned().collect();
    let provider = |n: &Node| n.spec.as_ref().and_then(|s| s.provider_id.clone());
    let gone = snapshot.nodes.iter().find(|n| n.metadata.name.as_deref() == Some(node)).and_then(|n| provider(n));
    let nodes = snapshot.nodes.iter().filter(|n| n.metadata.name.as_deref() != Some(node)).cloned().collect();
    // The node's own claim is not capacity either, though its Node is no longer there to say so.
    let claims = snapshot
        .claims
        .iter()
        .filter(|c| gone.is_none() || c.status.as_ref().and_then(|s| s.provider_id.clone()) != gone)
        .cloned()
        .collect();
    Without { pending, pods, nodes, claims }
}

/// Where an affected node's pods would go: onto existing nodes and claims in flight (other
/// replacements included, so a repeated solve buys nothing twice) where pods already waiting do
/// not need the room, else onto new claims.
pub fn replacement(
    snapshot: Snapshot<'_>,
    node: &str,
    types: impl FnMut(&crate::api::NodePool) -> Vec<InstanceType>,
) -> Plan {
    let w = without(snapshot, node);
    if w.pending.is_empty() {
        return Plan::default();
    }
    let rest = Snapshot { pods: &w.pods, nodes: &w.nodes, claims: &w.claims, ..snapshot };
    let (mut input, _) = scheduling_input(rest, w.pending, types);
    reserve_for_waiting(&mut input, &w.pods);
    solve(&input)
}

/// Whether the capacity for an affected node's pods is there now: every pod the replacement plan
/// could place fits on nodes that are Ready and registered (`unplaceable`: pods no capacity can take).
pub fn replacement_ready(snapshot: Snapshot<'_>, node: &str, unplaceable: &HashSet<String>) -> bool {
    let w = without(snapshot, node);
    if w.pending.is_empty() {
        return true;
    }
    let ready: Vec<Arc<Node>> = w.nodes.into_iter().filter(|n| ready_node(n)).collect();
    let rest = Snapshot { pods: &w.pods, nodes: &ready, claims: &[], pools: &[], ..snapshot };
    let (mut input, _) = scheduling_input(rest, w.pending, |_| Vec::new());
    reserve_for_waiting(&mut input, &w.pods);
    solve(&input).unplaced.iter().all(|u| unplaceable.contains(&u.pod))
}

/// Takes out of `input`'s nodes and claims in flight the room that pods already waiting for
/// capacity will take. The provisioner bought (or is buying) that room for them, so an affected
/// node's pods cannot count on it too: they would be left pending, and nothing bought for them.
fn reserve_for_waiting(input: &mut SchedulingInput, pods: &[Arc<Pod>]) {
    let waiting: Vec<Pod> = pods.iter().filter(|p| provisionable(p)).map(|p| p.as_ref().clone()).collect();
    if waiting.is_empty() {
        return;
    }
    // Placed where they fit now, nothing bought: what they cannot get is the provisioner's to buy.
    let pools = std::mem::take(&mut input.pools);
    let evacuees = std::mem::replace(&mut input.pods, waiting);
    let taken = solve(input);
    let waiting = std::mem::replace(&mut input.pods, evacuees);
    input.pools = pools;
    let requests: HashMap<String, Resources> =
        waiting.iter().filter_map(|p| Some((pod_key(p), pod_requests(p.spec.as_ref()?).ok()?))).collect();
    for placement in taken.placements {
        if let (Some(requests), Some(node)) =
            (requests.get(&placement.pod), input.nodes.iter_mut().find(|n| n.name == placement.node))
        {
            node.available.sub(requests);
        }
    }
}

/// Ready, registered and not going away.
fn ready_node(node: &Node) -> bool {
    let ready = crate::state::node_ready(node);
    let unregistered = node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| {
        t.iter().any(|t| t.key == labels::UNREGISTERED_TAINT_KEY || t.key == labels::DISRUPTED_TAINT_KEY)
    });
    ready && !unregistered && node.metadata.deletion_timestamp.is_none()
}

/// The pods of a plan that no capacity can take.
pub fn unplaceable(plan: &Plan) -> HashSet<String> {
    plan.unplaced.iter().map(|u| u.pod.clone()).collect()
}

#[cfg(test)]
mod tests;
