//! Disruption rules shared by the engine and the drain: which pods make a node non-empty, when a
//! node has expired, when an in-flight claim has waited too long, and in which order a draining
//! node's pods are evicted. The engine itself is `crate::disruption`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::{is_mirror, is_terminal, owned_by_daemonset};
use crate::api::labels;
use crate::scheduling::taints;

/// Pods that make a node non-empty: running workload pods, not DaemonSet or mirror pods.
pub fn is_workload(pod: &Pod) -> bool {
    !is_terminal(pod) && !owned_by_daemonset(pod) && !is_mirror(pod)
}

/// Whether a claim has outlived its `expireAfter` (`None` = never expires).
pub fn expired(age: Duration, expire_after: Option<Duration>) -> bool {
    expire_after.is_some_and(|limit| age >= limit)
}

/// Why an in-flight claim is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimTimeout {
    /// The cloud never confirmed an instance.
    NotLaunched,
    /// The instance never joined the cluster as a Node.
    NotRegistered,
}

/// Karpenter's liveness limits: 5 minutes to launch, 15 to register.
pub const LAUNCH_TTL: Duration = Duration::from_secs(5 * 60);
pub const REGISTRATION_TTL: Duration = Duration::from_secs(15 * 60);

/// Whether a claim of this age has waited too long for its next step.
pub fn claim_timeout(age: Duration, launched: bool, registered: bool) -> Option<ClaimTimeout> {
    if !launched && age >= LAUNCH_TTL {
        Some(ClaimTimeout::NotLaunched)
    } else if !registered && age >= REGISTRATION_TTL {
        Some(ClaimTimeout::NotRegistered)
    } else {
        None
    }
}

/// Priority classes whose pods are evicted last.
const CRITICAL_CLASSES: [&str; 2] = ["system-cluster-critical", "system-node-critical"];

/// The eviction tier of a pod on a draining node, in Karpenter's order: 0 non-critical,
/// 1 non-critical DaemonSet, 2 critical, 3 critical DaemonSet. `None` for pods the drain leaves
/// alone: mirror pods, finished pods, and pods that tolerate the disruption taint.
pub fn eviction_tier(pod: &Pod) -> Option<u8> {
    if is_mirror(pod) || is_terminal(pod) {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let disrupted = crate::api::nodeclaim::Taint {
        key: labels::DISRUPTED_TAINT_KEY.to_string(),
        value: None,
        effect: crate::api::nodeclaim::TaintEffect::NoSchedule,
        time_added: None,
    };
    if spec.tolerations.iter().flatten().any(|t| taints::tolerates(t, &disrupted)) {
        return None;
    }
    let critical = spec.priority_class_name.as_deref().is_some_and(|c| CRITICAL_CLASSES.contains(&c));
    let daemon = owned_by_daemonset(pod);
    Some(match (critical, daemon) {
        (false, false) => 0,
        (false, true) => 1,
        (true, false) => 2,
        (true, true) => 3,
    })
}

/// Whether a pod blocks voluntary disruption of its node (`karpenter.sh/do-not-disrupt: "true"`).
pub fn blocks_disruption(pod: &Pod) -> bool {
    !is_terminal(pod)
        && pod.metadata.annotations.as_ref().and_then(|a| a.get(labels::DO_NOT_DISRUPT)).is_some_and(|v| v == "true")
}

/// Which pods to evict now: those of the lowest tier still present; the next tier waits until
/// the lower one is gone.
pub fn next_evictions<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<&'a Pod> {
    let tiered: Vec<(u8, &Pod)> = pods.into_iter().filter_map(|p| Some((eviction_tier(p)?, p))).collect();
    let Some(lowest) = tiered.iter().map(|(t, _)| *t).min() else { return Vec::new() };
    tiered.into_iter().filter(|(t, _)| *t == lowest).map(|(_, p)| p).collect()
}

/// Backoff between eviction attempts refused with 429: 100 ms doubling to 10 s.
pub fn eviction_backoff(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(10));
    Duration::from_millis(ms.min(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    #[test]
    fn claims_time_out_at_five_minutes_unlaunched_and_fifteen_unregistered() {
        assert_eq!(claim_timeout(Duration::from_secs(299), false, false), None);
        assert_eq!(claim_timeout(Duration::from_secs(300), false, false), Some(ClaimTimeout::NotLaunched));
        assert_eq!(claim_timeout(Duration::from_secs(899), true, false), None);
        assert_eq!(claim_timeout(Duration::from_secs(900), true, false), Some(ClaimTimeout::NotRegistered));
        assert_eq!(claim_timeout(Duration::from_secs(9000), true, true), None);
        assert!(expired(Duration::from_secs(3600), Some(Duration::from_secs(3600))));
        assert!(!expired(Duration::from_secs(3600), None));
    }

    #[test]
    fn pods_are_evicted_in_karpenters_four_tiers() {
        let ds = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]);
        let plain = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": []}}));
        let daemon = pod(json!({"metadata": {"name": "b", "ownerReferences": ds}, "spec": {"containers": []}}));
        let critical = pod(
            json!({"metadata": {"name": "c"}, "spec": {"containers": [], "priorityClassName": "system-node-critical"}}),
        );
        let critical_daemon = pod(
            json!({"metadata": {"name": "d", "ownerReferences": ds}, "spec": {"containers": [], "priorityClassName": "system-cluster-critical"}}),
        );
        let mirror = pod(
            json!({"metadata": {"name": "e", "annotations": {"kubernetes.io/config.mirror": "x"}}, "spec": {"containers": []}}),
        );
        let tolerant = pod(
            json!({"metadata": {"name": "f"}, "spec": {"containers": [], "tolerations": [{"operator": "Exists"}]}}),
        );
        assert_eq!(
            [&plain, &daemon, &critical, &critical_daemon].map(eviction_tier),
            [Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(eviction_tier(&mirror), None);
        assert_eq!(eviction_tier(&tolerant), None);
        let all = [&critical_daemon, &daemon, &plain, &critical, &mirror];
        let names = |v: Vec<&Pod>| v.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(next_evictions(all)), ["a"]);
        assert_eq!(names(next_evictions([&critical_daemon, &daemon, &critical])), ["b"]);
        assert_eq!(names(next_evictions([&critical_daemon, &critical])), ["c"]);
        assert_eq!(names(next_evictions([&mirror])), Vec::<String>::new());
    }

    #[test]
    fn eviction_retries_back_off_from_100ms_to_10s() {
        assert_eq!(eviction_backoff(0), Duration::from_millis(100));
        assert_eq!(eviction_backoff(3), Duration::from_millis(800));
        assert_eq!(eviction_backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn do_not_disrupt_pods_block_voluntary_removal() {
        let p = pod(
            json!({"metadata": {"name": "a", "annotations": {"karpenter.sh/do-not-disrupt": "true"}}, "spec": {"containers": []}}),
        );
        assert!(blocks_disruption(&p));
        assert!(!blocks_disruption(&pod(json!({"metadata": {"name": "b"}, "spec": {"containers": []}}))));
    }
}
