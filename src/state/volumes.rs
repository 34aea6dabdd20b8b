//! The zones a pending pod's volumes confine it to: a bound claim's PersistentVolume's node affinity,
//! or, for a claim not bound yet, the allowed topologies of its `WaitForFirstConsumer` StorageClass.
//!
//! An EBS volume lives in one zone; a node elsewhere cannot attach it, so the solver must plan the
//! pod there (Karpenter's volume topology). Claims whose class binds `Immediate` and that are not
//! bound yet give no zone: the volume's zone is unknown until the provisioner creates it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

/// Node labels that name a volume's zone: the well-known one, its beta form, and the EBS CSI driver's.
pub const ZONE_KEYS: [&str; 3] =
    ["topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone", "topology.ebs.csi.aws.com/zone"];

const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// What the watches hold about storage, borrowed for one computation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Storage<'a> {
    pub claims: &'a [Arc<PersistentVolumeClaim>],
    pub volumes: &'a [Arc<PersistentVolume>],
    pub classes: &'a [Arc<StorageClass>],
}

/// `namespace/name` of each pod whose volumes confine it → the zones it may run in (empty when its
/// volumes' zones do not overlap: it can run nowhere).
pub fn volume_zones(pods: &[Pod], storage: Storage<'_>) -> BTreeMap<String, Vec<String>> {
    let claims: HashMap<(&str, &str), &PersistentVolumeClaim> = storage
        .claims
        .iter()
        .filter_map(|c| Some(((c.metadata.namespace.as_deref()?, c.metadata.name.as_deref()?), c.as_ref())))
        .collect();
    let volumes: HashMap<&str, &PersistentVolume> =
        storage.volumes.iter().filter_map(|v| Some((v.metadata.name.as_deref()?, v.as_ref()))).collect();
    let classes: HashMap<&str, &StorageClass> =
        storage.classes.iter().filter_map(|c| Some((c.metadata.name.as_deref()?, c.as_ref()))).collect();
    let default_class = storage
        .classes
        .iter()
        .find(|c| c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS)).is_some_and(|v| v == "true"));
    let mut out = BTreeMap::new();
    for pod in pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut allowed: Option<BTreeSet<String>> = None;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let claim_name = match (&volume.persistent_volume_claim, &volume.ephemeral) {
                (Some(pvc), _) => pvc.claim_name.clone(),
                // A generic ephemeral volume's claim is named after the pod and the volume.
                (None, Some(_)) => format!("{pod_name}-{}", volume.name),
                _ => continue,
            };
            let Some(claim) = claims.get(&(namespace, claim_name.as_str())) else { continue };
            let zones = match claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty()) {
                Some(bound) => volumes.get(bound).and_then(|pv| pv_zones(pv)),
                None => {
                    let class_name = claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref());
                    let class = match class_name {
                        Some(name) => classes.get(name).copied(),
                        None => default_class.map(|c| c.as_ref()),
                    };
                    class.and_then(class_zones)
                }
            };
            if let Some(zones) = zones {
                allowed = Some(match allowed {
                    None => zones,
                    Some(before) => before.intersection(&zones).cloned().collect(),
                });
            }
        }
        if let Some(zones) = allowed {
            out.insert(format!("{namespace}/{pod_name}"), zones.into_iter().collect());
        }
    }
    out
}

/// The zones a PersistentVolume can be attached in: its required node affinity (any term), or its
/// zone label (volumes provisioned before node affinity existed).
fn pv_zones(pv: &PersistentVolume) -> Option<BTreeSet<String>> {
    let terms = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    let mut zones = BTreeSet::new();
    for term in terms {
        for expr in term.match_expressions.iter().flatten() {
            if ZONE_KEYS.contains(&expr.key.as_str()) && expr.operator == "In" {
                zones.extend(expr.values.iter().flatten().cloned());
            }
        }
    }
    if zones.is_empty() {
        let labels = pv.metadata.labels.as_ref()?;
        zones.extend(ZONE_KEYS.iter().filter_map(|k| labels.get(*k)).cloned());
    }
    (!zones.is_empty()).then_some(zones)
}

/// The zones a `WaitForFirstConsumer` class may provision in, from its allowed topologies.
fn class_zones(class: &StorageClass) -> Option<BTreeSet<String>> {
    if class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer") {
        return None;
    }
    let zones: BTreeSet<String> = class
        .allowed_topologies
        .iter()
        .flatten()
        .flat_map(|t| t.match_label_expressions.iter().flatten())
        .filter(|e| ZONE_KEYS.contains(&e.key.as_str()))
        .flat_map(|e| e.values.iter().cloned())
        .collect();
    (!zones.is_empty()).then_some(zones)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, claims: &[&str]) -> Pod {
        let volumes: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": format!("v-{c}"), "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": volumes}
        }))
        .expect("pod")
    }

    fn pvc(name: &str, volume: Option<&str>, class: Option<&str>) -> Arc<PersistentVolumeClaim> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"volumeName": volume, "storageClassName": class, "accessModes": ["ReadWriteOnce"]}
            }))
            .expect("pvc"),
        )
    }

    fn pv(name: &str, zone: &str) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "topology.ebs.csi.aws.com/zone", "operator": "In", "values": [zone]}
                ]}]}}}
            }))
            .expect("pv"),
        )
    }

    fn class(name: &str, mode: &str, zones: &[&str], default: bool) -> Arc<StorageClass> {
        let annotations = if default { json!({DEFAULT_CLASS: "true"}) } else { json!({}) };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": annotations},
                "provisioner": "ebs.csi.aws.com",
                "volumeBindingMode": mode,
                "allowedTopologies": [{"matchLabelExpressions": [{"key": "topology.kubernetes.io/zone", "values": zones}]}]
            }))
            .expect("class"),
        )
    }

    #[test]
    fn a_bound_claim_confines_its_pod_to_the_volumes_zone() {
        let claims = [pvc("data", Some("pv-1"), Some("gp3"))];
        let volumes = [pv("pv-1", "us-east-1b")];
        let zones =
            volume_zones(&[pod("db-0", &["data"])], Storage { claims: &claims, volumes: &volumes, classes: &[] });
        assert_eq!(zones.get("default/db-0"), Some(&vec!["us-east-1b".to_string()]));
    }

    #[test]
    fn an_unbound_claim_of_a_wait_for_first_consumer_class_gives_the_classes_allowed_zones() {
        let claims = [pvc("data", None, None)];
        let classes = [class("gp3", "WaitForFirstConsumer", &["us-east-1a", "us-east-1c"], true)];
        let zones =
            volume_zones(&[pod("db-0", &["data"])], Storage { claims: &claims, volumes: &[], classes: &classes });
        assert_eq!(zones.get("default/db-0"), Some(&vec!["us-east-1a".to_string(), "us-east-1c".to_string()]));
        let immediate = [class("gp3", "Immediate", &["us-east-1a"], true)];
        let zones =
            volume_zones(&[pod("db-0", &["data"])], Storage { claims: &claims, volumes: &[], classes: &immediate });
        assert!(zones.is_empty(), "an Immediate class's volume zone is not known before it binds");
    }

    #[test]
    fn several_volumes_allow_only_the_zones_they_share_and_pods_without_claims_are_free() {
        let claims = [pvc("a", Some("pv-a"), None), pvc("b", None, Some("gp3"))];
        let volumes = [pv("pv-a", "us-east-1a")];
        let classes = [class("gp3", "WaitForFirstConsumer", &["us-east-1a", "us-east-1b"], false)];
        let storage = Storage { claims: &claims, volumes: &volumes, classes: &classes };
        let zones = volume_zones(&[pod("both", &["a", "b"]), pod("none", &[])], storage);
        assert_eq!(zones.get("default/both"), Some(&vec!["us-east-1a".to_string()]));
        assert!(!zones.contains_key("default/none"));
    }
}
