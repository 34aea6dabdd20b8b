//! What a NodePool's status says: the resources its nodes hold and whether it can be used, as
//! Karpenter reports it (`kubectl get nodepools` reads `Nodes` and `Ready` from here).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::api::ec2nodeclass::{EC2NodeClass, conditions as class_conditions};
use crate::api::labels::NODEPOOL;
use crate::api::nodeclaim::NodeClaim;
use crate::api::nodepool::NodePool;
use crate::api::validation::validate_node_pool;
use crate::scheduling::resources::Resources;

/// Condition types of a NodePool.
pub mod conditions {
    /// The pool's spec passed every rule (schema and the checks a schema cannot express).
    pub const VALIDATION_SUCCEEDED: &str = "ValidationSucceeded";
    /// The node class the pool names exists and is Ready.
    pub const NODE_CLASS_READY: &str = "NodeClassReady";
    /// Both of the above: Rafter launches for this pool.
    pub const READY: &str = "Ready";
}

/// One condition as it should read now; the caller keeps transition times that did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

/// A pool's status, computed from what the watches hold.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolReport {
    /// Summed capacity of the pool's nodes (`cpu`, `memory`, `pods`, `ephemeral-storage`, extended
    /// resources), and `nodes`, as Kubernetes quantities.
    pub resources: std::collections::BTreeMap<String, String>,
    pub checks: Vec<Check>,
}

/// The status `pool` should have. A claim counts with its Node's capacity once registered, and
/// with the capacity the cloud reported before, so a pool's size shows while nodes boot (as
/// Karpenter's counter does, and as its limits count).
pub fn pool_report(
    pool: &NodePool,
    claims: &[Arc<NodeClaim>],
    nodes: &[Arc<Node>],
    class: Option<&EC2NodeClass>,
) -> PoolReport {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let nodes_by_name: HashMap<&str, &Node> =
        nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n.as_ref()))).collect();
    let mut total = Resources::zero();
    let mut count = 0usize;
    for claim in claims {
        if claim.metadata.labels.as_ref().and_then(|l| l.get(NODEPOOL)).map(String::as_str) != Some(name) {
            continue;
        }
        count += 1;
        let status = claim.status.as_ref();
        let node = status.and_then(|s| s.node_name.as_deref()).and_then(|n| nodes_by_name.get(n));
        let capacity = match node.and_then(|n| n.status.as_ref()).and_then(|s| s.capacity.as_ref()) {
            Some(capacity) => Resources::from_kube(capacity),
            None => Resources::from_quantities(status.map(|s| &s.capacity).into_iter().flatten()),
        };
        // A capacity that does not parse counts as nothing: the node still counts in `nodes`.
        if let Ok(capacity) = capacity {
            total.add(&capacity);
        }
    }
    let mut resources = total.to_quantities();
    resources.insert("nodes".to_string(), count.to_string());

    let validation = match validate_node_pool(&pool.spec) {
        Ok(()) => Check {
            type_: conditions::VALIDATION_SUCCEEDED,
            ok: true,
            reason: "ValidationSucceeded".into(),
            message: String::new(),
        },
        Err(invalid) => Check {
            type_: conditions::VALIDATION_SUCCEEDED,
            ok: false,
            reason: "ValidationFailed".into(),
            message: format!("{invalid}; Rafter does not launch for this pool until it is fixed"),
        },
    };
    let class_name = &pool.spec.template.spec.node_class_ref.name;
    let class_ready = match class {
        None => Check {
            type_: conditions::NODE_CLASS_READY,
            ok: false,
            reason: "NodeClassNotFound".into(),
            message: format!(
                "EC2NodeClass {class_name} does not exist; create it or change spec.template.spec.nodeClassRef.name"
            ),
        },
        Some(class) => {
            let ready =
                class.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == class_conditions::READY));
            match ready {
                Some(c) if c.status == "True" => Check {
                    type_: conditions::NODE_CLASS_READY,
                    ok: true,
                    reason: "NodeClassReady".into(),
                    message: String::new(),
                },
                Some(c) => Check {
                    type_: conditions::NODE_CLASS_READY,
                    ok: false,
                    reason: "NodeClassNotReady".into(),
                    message: format!("EC2NodeClass {class_name} is not ready: {}", c.message),
                },
                None => Check {
                    type_: conditions::NODE_CLASS_READY,
                    ok: false,
                    reason: "NodeClassNotResolved".into(),
                    message: format!("EC2NodeClass {class_name} has not been resolved yet"),
                },
            }
        }
    };
    let failing: Vec<&Check> = [&validation, &class_ready].into_iter().filter(|c| !c.ok).collect();
    let ready = match failing.first() {
        None => Check { type_: conditions::READY, ok: true, reason: "Ready".into(), message: String::new() },
        Some(first) => Check {
            type_: conditions::READY,
            ok: false,
            reason: format!("{}False", first.type_),
            message: failing.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join("; "),
        },
    };
    PoolReport { resources, checks: vec![validation, class_ready, ready] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(extra: serde_json::Value) -> NodePool {
        let mut spec = json!({"template": {"spec": {
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
            "requirements": []
        }}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool",
            "metadata": {"name": "default"}, "spec": spec}))
        .expect("a pool")
    }

    fn class(ready: Option<&str>) -> EC2NodeClass {
        let conditions: Vec<serde_json::Value> = ready
            .map(|s| {
                json!({"type": "Ready", "status": s, "reason": "R", "message": "no subnet matched",
                "lastTransitionTime": "2026-01-01T00:00:00Z"})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({"apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass",
            "metadata": {"name": "default"},
            "spec": {"amiSelectorTerms": [{"alias": "al2023@latest"}], "role": "r",
                "subnetSelectorTerms": [{"tags": {"a": "b"}}], "securityGroupSelectorTerms": [{"tags": {"a": "b"}}]},
            "status": {"conditions": conditions}}))
        .expect("a class")
    }

    fn claim(name: &str, pool: &str, node: Option<&str>, capacity: serde_json::Value) -> Arc<NodeClaim> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
                "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": pool}},
                "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                    "requirements": []},
                "status": {"nodeName": node, "capacity": capacity}}))
            .expect("a claim"),
        )
    }

    fn node(name: &str, cpu: &str, memory: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"capacity": {"cpu": cpu, "memory": memory, "pods": "58"}}}))
            .expect("a node"),
        )
    }

    fn check<'a>(report: &'a PoolReport, type_: &str) -> &'a Check {
        report.checks.iter().find(|c| c.type_ == type_).expect("the condition")
    }

    #[test]
    fn a_pools_resources_sum_its_nodes_and_claims_still_booting_count_with_their_claimed_capacity() {
        let claims = vec![
            claim("a", "default", Some("n-a"), json!({"cpu": "2", "memory": "8Gi", "pods": "29"})),
            claim("b", "default", None, json!({"cpu": "4", "memory": "16Gi", "pods": "58"})),
            claim("c", "other", Some("n-c"), json!({"cpu": "64", "memory": "256Gi"})),
        ];
        // The registered node's capacity wins over what its claim said.
        let nodes = vec![node("n-a", "2", "7Gi"), node("n-c", "64", "256Gi")];
        let report = pool_report(&pool(json!({})), &claims, &nodes, Some(&class(Some("True"))));
        assert_eq!(report.resources["nodes"], "2");
        assert_eq!(report.resources["cpu"], "6000m");
        assert_eq!(report.resources["memory"], format!("{}Mi", 23 * 1024));
        assert_eq!(report.resources["pods"], "116");
        assert!(report.checks.iter().all(|c| c.ok), "{:?}", report.checks);
    }

    #[test]
    fn an_empty_pool_reports_zero_nodes() {
        let report = pool_report(&pool(json!({})), &[], &[], Some(&class(Some("True"))));
        assert_eq!(report.resources["nodes"], "0");
        assert_eq!(report.resources["cpu"], "0m");
    }

    #[test]
    fn a_pool_that_fails_validation_is_not_ready_and_the_condition_names_the_field() {
        let bad =
            pool(json!({"disruption": {"budgets": [{"nodes": "1", "schedule": "not a cron", "duration": "1h"}]}}));
        let report = pool_report(&bad, &[], &[], Some(&class(Some("True"))));
        let validation = check(&report, conditions::VALIDATION_SUCCEEDED);
        assert!(!validation.ok);
        assert!(validation.message.contains("spec.disruption.budgets[0].schedule"), "{}", validation.message);
        let ready = check(&report, conditions::READY);
        assert!(!ready.ok);
        assert_eq!(ready.reason, "ValidationSucceededFalse");
        assert!(ready.message.contains("spec.disruption.budgets[0].schedule"));
    }

    #[test]
    fn a_missing_or_unready_node_class_makes_the_pool_not_ready_with_the_class_named() {
        let missing = pool_report(&pool(json!({})), &[], &[], None);
        let c = check(&missing, conditions::NODE_CLASS_READY);
        assert!(!c.ok && c.reason == "NodeClassNotFound" && c.message.contains("EC2NodeClass default"));
        assert!(!check(&missing, conditions::READY).ok);

        let unready = pool_report(&pool(json!({})), &[], &[], Some(&class(Some("False"))));
        let c = check(&unready, conditions::NODE_CLASS_READY);
        assert!(!c.ok && c.message.contains("no subnet matched"), "{}", c.message);

        let unresolved = pool_report(&pool(json!({})), &[], &[], Some(&class(None)));
        assert_eq!(check(&unresolved, conditions::NODE_CLASS_READY).reason, "NodeClassNotResolved");
    }
}
