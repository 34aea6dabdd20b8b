//! Which of the cluster's instances no NodeClaim owns, and for how long: garbage collection's
//! decision, from what EC2 and the API server say rather than from one leader's memory.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::Timestamp;

use crate::api::nodeclaim::NodeClaim;
use crate::cloud::{Instance, InstanceState, launch_group};

/// What an instance is to the claims that exist now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// A live claim's provider ID names it, or its claim tag names a live claim that has no
    /// other instance.
    Owned,
    /// It carries a launch group that a claim without an instance still has: that claim's next
    /// launch adopts it.
    AwaitingAdoption,
    /// Nothing will ever claim it.
    Orphan,
}

/// The claims, indexed for [`Claims::ownership`].
#[derive(Debug, Default)]
pub struct Claims<'a> {
    /// Claim name → its provider ID, if launched.
    by_name: HashMap<&'a str, Option<&'a str>>,
    providers: HashSet<&'a str>,
    /// Launch groups of claims that are not being deleted and have no instance yet.
    waiting_groups: HashSet<&'a str>,
}

impl<'a> Claims<'a> {
    pub fn new(claims: impl IntoIterator<Item = &'a NodeClaim>) -> Self {
        let mut index = Claims::default();
        for claim in claims {
            let provider = claim.status.as_ref().and_then(|s| s.provider_id.as_deref()).filter(|p| !p.is_empty());
            if let Some(name) = claim.metadata.name.as_deref() {
                index.by_name.insert(name, provider);
            }
            match provider {
                Some(p) => {
                    index.providers.insert(p);
                }
                None if claim.metadata.deletion_timestamp.is_none() => {
                    if let Some(group) = launch_group(claim) {
                        index.waiting_groups.insert(group);
                    }
                }
                None => {}
            }
        }
        index
    }

    pub fn ownership(&self, instance: &Instance) -> Ownership {
        if self.providers.contains(instance.provider_id.as_str()) {
            return Ownership::Owned;
        }
        match instance.node_claim() {
            // Tagged for a claim that exists and has no instance recorded yet (its launch result
            // is on its way) — or, if it has another, this one is a duplicate.
            Some(claim) => match self.by_name.get(claim) {
                Some(None) => Ownership::Owned,
                _ => Ownership::Orphan,
            },
            None if instance.launch_group().is_some_and(|g| self.waiting_groups.contains(g)) => {
                Ownership::AwaitingAdoption
            }
            None => Ownership::Orphan,
        }
    }
}

/// Whether garbage collection looks at an instance at all: live, and this cluster's.
pub fn collectable(instance: &Instance, cluster_tag: &str) -> bool {
    instance.tags.contains_key(cluster_tag)
        && !matches!(instance.state, InstanceState::Terminated | InstanceState::ShuttingDown)
}

/// How long an instance has existed by its launch time, which every leader reads the same; `None`
/// when the time cannot be read. A launch time ahead of `now` (clock skew) counts as zero.
pub fn launched_ago(instance: &Instance, now: Timestamp) -> Option<Duration> {
    let launched: Timestamp = instance.launch_time.parse().ok()?;
    Some(Duration::try_from(now.duration_since(launched)).unwrap_or(Duration::ZERO))
}

/// Whether an orphan is past the grace: by its launch time, or (where that cannot be read, or the
/// clock is paused in a test) by how long this leader has seen it.
pub fn past_grace(launched_ago: Option<Duration>, seen_for: Duration, grace: Duration) -> bool {
    launched_ago.is_some_and(|a| a >= grace) || seen_for >= grace
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::nodeclaim::NodeClaimStatus;
    use crate::cloud::{LAUNCH_GROUP, TAG_NODECLAIM};
    use crate::scheduling::instance_types::CapacityType;

    fn instance(id: &str, tags: &[(&str, &str)]) -> Instance {
        Instance {
            id: id.into(),
            provider_id: format!("aws:///us-east-1a/{id}"),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
            state: InstanceState::Running,
            price: 0.04,
            private_dns_name: String::new(),
            private_ip: String::new(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            launch_time: "2026-12-01T12:00:00Z".into(),
        }
    }

    fn claim(name: &str, group: Option<&str>, provider: Option<&str>) -> NodeClaim {
        let mut claim: NodeClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": name},
            "spec": {"requirements": [], "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}}
        }))
        .expect("claim");
        if let Some(g) = group {
            claim.metadata.annotations = Some(BTreeMap::from([(LAUNCH_GROUP.to_string(), g.to_string())]));
        }
        claim.status = Some(NodeClaimStatus {
            provider_id: provider.map(|p| format!("aws:///us-east-1a/{p}")),
            ..Default::default()
        });
        claim
    }

    #[test]
    fn an_instance_is_owned_by_the_claim_recording_it_even_without_its_claim_tag() {
        let claims = [claim("a", Some("g"), Some("i-1"))];
        let index = Claims::new(&claims);
        assert_eq!(index.ownership(&instance("i-1", &[(LAUNCH_GROUP, "g")])), Ownership::Owned);
    }

    #[test]
    fn an_untagged_instance_of_a_group_whose_claim_waits_for_one_is_kept_for_adoption() {
        let claims = [claim("a", Some("g"), Some("i-1")), claim("b", Some("g"), None)];
        let index = Claims::new(&claims);
        assert_eq!(index.ownership(&instance("i-2", &[(LAUNCH_GROUP, "g")])), Ownership::AwaitingAdoption);
        // Once every claim of the group has its instance, a leftover is an orphan.
        let done = [claim("a", Some("g"), Some("i-1")), claim("b", Some("g"), Some("i-3"))];
        assert_eq!(Claims::new(&done).ownership(&instance("i-2", &[(LAUNCH_GROUP, "g")])), Ownership::Orphan);
    }

    #[test]
    fn a_second_instance_tagged_for_a_claim_that_has_one_is_an_orphan() {
        let claims = [claim("a", None, Some("i-1"))];
        let index = Claims::new(&claims);
        assert_eq!(index.ownership(&instance("i-2", &[(TAG_NODECLAIM, "a")])), Ownership::Orphan);
        let waiting = [claim("a", None, None)];
        assert_eq!(Claims::new(&waiting).ownership(&instance("i-2", &[(TAG_NODECLAIM, "a")])), Ownership::Owned);
        assert_eq!(Claims::new(&waiting).ownership(&instance("i-2", &[(TAG_NODECLAIM, "gone")])), Ownership::Orphan);
    }

    #[test]
    fn the_grace_counts_from_the_launch_time_so_a_new_leader_does_not_start_it_over() {
        let i = instance("i-1", &[]);
        let now: Timestamp = "2026-12-01T12:00:31Z".parse().expect("time");
        let grace = Duration::from_secs(30);
        assert_eq!(launched_ago(&i, now), Some(Duration::from_secs(31)));
        assert!(past_grace(launched_ago(&i, now), Duration::ZERO, grace), "a leader that just started collects it");
        let early: Timestamp = "2026-12-01T11:59:00Z".parse().expect("time");
        assert_eq!(launched_ago(&i, early), Some(Duration::ZERO), "a launch time ahead of the clock is zero");
        assert!(!past_grace(launched_ago(&i, early), Duration::from_secs(29), grace));
        assert!(past_grace(None, Duration::from_secs(30), grace), "an unreadable launch time falls back to memory");
    }
}
