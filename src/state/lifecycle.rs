//! A NodeClaim's lifecycle as a state machine: `step(phase, observed) -> (effects, phase)`.
//!
//! The phase is read from the claim itself (its provider ID and conditions), so any leader reads
//! the same one. Each step asks for at most one effect, and the phase it names is the one the claim
//! is in once that effect has succeeded: launched (the cloud confirmed an instance), registered
//! (its Node joined and was adopted), initialized (the Node is ready, its startup and ephemeral
//! taints gone, every resource registered). A claim that waits too long for its next step (5
//! minutes to launch, 15 to register) is deleted, and its pods are batched again.

use std::time::Duration;

use crate::api::nodeclaim::{NodeClaim, conditions};
use crate::state::condition_true;
use crate::state::disruption::{ClaimTimeout, claim_timeout};

/// Where a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Created; no instance confirmed yet.
    Created,
    /// An instance is confirmed (`status.providerID`); its Node has not been adopted.
    Launched,
    /// Its Node joined and was adopted (`Registered`).
    Registered,
    /// Its Node is ready for pods (`Initialized`).
    Initialized,
    /// Being deleted: the Terminator has it.
    Deleting,
}

impl Phase {
    /// The phase a claim's own fields show.
    pub fn of(claim: &NodeClaim) -> Phase {
        if claim.metadata.deletion_timestamp.is_some() {
            Phase::Deleting
        } else if claim.status.as_ref().and_then(|s| s.provider_id.as_deref()).is_none() {
            Phase::Created
        } else if !condition_true(claim, conditions::REGISTERED) {
            Phase::Launched
        } else if !condition_true(claim, conditions::INITIALIZED) {
            Phase::Registered
        } else {
            Phase::Initialized
        }
    }
}

/// What the launcher sees of a claim this round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Since the claim's creation.
    pub age: Duration,
    /// A launch may be tried now (no failed attempt is backing off, nor a fresh launch waiting
    /// for the cache to show it).
    pub launch_due: bool,
    /// A Node with the claim's provider ID exists.
    pub node_joined: bool,
    /// That Node is ready for pods (`rafter::state::not_initialized` finds nothing missing).
    pub node_initialized: bool,
}

/// What the launcher does for the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Delete the claim and batch its pods again: it waited too long.
    Delete(ClaimTimeout),
    /// Launch it (idempotent per claim: an instance already launched is found, not bought again).
    Launch,
    /// Adopt its Node: labels, owner, `registered`, the `unregistered` taint lifted.
    Register,
    /// Mark it and its Node initialized.
    Initialize,
}

/// One step.
pub fn step(phase: Phase, seen: &Observed) -> (Vec<Effect>, Phase) {
    if matches!(phase, Phase::Deleting | Phase::Initialized) {
        return (Vec::new(), phase);
    }
    if let Some(timeout) = claim_timeout(seen.age, phase >= Phase::Launched, phase >= Phase::Registered) {
        return (vec![Effect::Delete(timeout)], Phase::Deleting);
    }
    match phase {
        Phase::Created if seen.launch_due => (vec![Effect::Launch], Phase::Launched),
        Phase::Launched if seen.node_joined => (vec![Effect::Register], Phase::Registered),
        Phase::Registered if seen.node_joined && seen.node_initialized => {
            (vec![Effect::Initialize], Phase::Initialized)
        }
        _ => (Vec::new(), phase),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::nodeclaim::NodeClaimStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn each_phase_steps_to_the_next_when_its_condition_holds() {
        use Effect::*;
        use Phase::*;
        let young = Observed { age: mins(1), ..Observed::default() };
        let due = Observed { launch_due: true, ..young };
        let joined = Observed { node_joined: true, ..young };
        let ready = Observed { node_joined: true, node_initialized: true, ..young };
        let cases: Vec<(&str, Phase, Observed, Vec<Effect>, Phase)> = vec![
            ("a new claim whose launch is due launches", Created, due, vec![Launch], Launched),
            ("a new claim backing off waits", Created, young, vec![], Created),
            (
                "a claim not launched in 5 minutes is deleted",
                Created,
                Observed { age: mins(5), ..due },
                vec![Delete(ClaimTimeout::NotLaunched)],
                Deleting,
            ),
            ("a launched claim waits for its node", Launched, due, vec![], Launched),
            ("a launched claim registers when its node joins", Launched, joined, vec![Register], Registered),
            (
                "a launched claim is not timed out at 5 minutes",
                Launched,
                Observed { age: mins(5), ..young },
                vec![],
                Launched,
            ),
            (
                "a launched claim whose node never joined in 15 minutes is deleted",
                Launched,
                Observed { age: mins(15), ..young },
                vec![Delete(ClaimTimeout::NotRegistered)],
                Deleting,
            ),
            ("a registered claim waits for a ready node", Registered, joined, vec![], Registered),
            (
                "a registered claim is initialized when its node is ready",
                Registered,
                ready,
                vec![Initialize],
                Initialized,
            ),
            (
                "a registered claim is not timed out",
                Registered,
                Observed { age: mins(60), ..joined },
                vec![],
                Registered,
            ),
            (
                "an initialized claim needs nothing",
                Initialized,
                Observed { age: mins(60), ..ready },
                vec![],
                Initialized,
            ),
            ("a deleting claim is the Terminator's", Deleting, Observed { age: mins(60), ..due }, vec![], Deleting),
        ];
        for (what, phase, seen, effects, next) in cases {
            assert_eq!(step(phase, &seen), (effects, next), "{what}");
        }
    }

    #[test]
    fn the_phase_is_read_from_the_claims_own_fields() {
        let condition = |t: &str| Condition {
            type_: t.into(),
            status: "True".into(),
            reason: t.into(),
            message: String::new(),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        };
        let mut claim: NodeClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c"},
            "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}
        }))
        .expect("claim");
        assert_eq!(Phase::of(&claim), Phase::Created);
        claim.status = Some(NodeClaimStatus {
            provider_id: Some("aws:///us-east-1a/i-1".into()),
            conditions: vec![condition(conditions::LAUNCHED)],
            ..Default::default()
        });
        assert_eq!(Phase::of(&claim), Phase::Launched);
        claim.status.as_mut().expect("status").conditions.push(condition(conditions::REGISTERED));
        assert_eq!(Phase::of(&claim), Phase::Registered);
        claim.status.as_mut().expect("status").conditions.push(condition(conditions::INITIALIZED));
        assert_eq!(Phase::of(&claim), Phase::Initialized);
        claim.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(Phase::of(&claim), Phase::Deleting);
    }
}
