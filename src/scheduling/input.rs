//! Reading a scheduling problem from a file (what `rafter solve` takes): pods, pools, node classes,
//! existing nodes and DaemonSets as the manifests users already have.
//!
//! The document has these fields, each a list of Kubernetes objects:
//!
//! - `pods`: Pod objects. Those with `spec.nodeName` run on one of `nodes` and only count for
//!   topology; the others are pending and get planned.
//! - `nodePools`: `karpenter.sh/v1` NodePools, or legacy `v1alpha5` Provisioners (converted).
//! - `nodeClasses` (optional): EC2NodeClasses (or legacy AWSNodeTemplates) whose `kubelet`
//!   settings (maxPods, podsPerCore, kubeReserved, systemReserved) shape allocatable.
//! - `nodes` (optional): Node objects with labels, taints and `status.allocatable`.
//! - `daemonSets` (optional): DaemonSets whose pods would land on new nodes.
//! - `volumeZones` (optional): `namespace/name` of a pod → the zones its volumes live in.

use kube::ResourceExt;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::convert::node_pool_from_provisioner;
use crate::api::legacy::{AWSNodeTemplate, Provisioner};
use crate::api::{EC2NodeClass, NodePool};

use super::instance_types::{InstanceType, InstanceTypeSpec, KubeletSettings};
use super::requirements::Requirements;
use super::resources::{ResourceError, Resources, pod_requests};
use super::solver::{ExistingNode, PoolInput, SchedulingInput};
use super::taints;

/// One problem in an input file, at a field path such as `nodePools[1].spec.limits`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    /// Where, e.g. `pods[3]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The 1-based line of the YAML item the field is in, when the input is YAML.
    pub line: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    #[serde(default)]
    pods: Vec<serde_saphyr::Spanned<serde_json::Value>>,
    #[serde(default)]
    node_pools: Vec<serde_saphyr::Spanned<serde_json::Value>>,
    #[serde(default)]
    node_classes: Vec<serde_saphyr::Spanned<serde_json::Value>>,
    #[serde(default)]
    nodes: Vec<serde_saphyr::Spanned<serde_json::Value>>,
    #[serde(default)]
    daemon_sets: Vec<serde_saphyr::Spanned<serde_json::Value>>,
    #[serde(default)]
    volume_zones: BTreeMap<String, Vec<String>>,
}

/// What kube-apiserver refuses in a pod that the solver would otherwise plan around: requests
/// and limits that are not quantities, negative, or too large to hold, and a `maxSkew` below 1.
fn validate_pod_spec(field: &str, spec: &k8s_openapi::api::core::v1::PodSpec, errors: &mut Vec<InputError>) {
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, c)| (format!("{field}.initContainers[{j}]"), c))
        .chain(spec.containers.iter().enumerate().map(|(j, c)| (format!("{field}.containers[{j}]"), c)));
    for (at, container) in containers {
        let Some(resources) = &container.resources else { continue };
        for (kind, list) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            for (name, quantity) in list.iter().flatten() {
                let at = format!("{at}.resources.{kind}.{name}");
                let message = match crate::api::quantity::parse_millis(&quantity.0) {
                    Err(e) => format!("{:?}: {e}", quantity.0),
                    Ok(m) if m < 0 => format!("{:?} must be greater than or equal to 0", quantity.0),
                    Ok(m) if m / 1000 > i128::from(i64::MAX) / 1000 => format!("{:?} is too large", quantity.0),
                    Ok(_) => continue,
                };
                errors.push(InputError { line: None, field: at, message });
            }
        }
    }
    for (k, c) in spec.topology_spread_constraints.iter().flatten().enumerate() {
        if c.max_skew < 1 {
            errors.push(InputError {
                line: None,
                field: format!("{field}.topologySpreadConstraints[{k}].maxSkew"),
                message: format!("{} must be greater than 0", c.max_skew),
            });
        }
    }
}

fn typed<T: DeserializeOwned>(field: String, value: serde_json::Value, errors: &mut Vec<InputError>) -> Option<T> {
    match serde_json::from_value(value) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(InputError { line: None, field, message: e.to_string() });
            None
        }
    }
}

fn kind(value: &serde_json::Value) -> (&str, &str) {
    (value["apiVersion"].as_str().unwrap_or_default(), value["kind"].as_str().unwrap_or_default())
}

fn resources(field: &str, map: &BTreeMap<String, String>) -> Result<Resources, InputError> {
    Resources::from_quantities(map).map_err(|e: ResourceError| InputError {
        line: None,
        field: field.to_string(),
        message: e.to_string(),
    })
}

/// The kubelet settings of a node class that shape its instance types' allocatable.
pub fn kubelet_settings(field: &str, class: &EC2NodeClass) -> Result<KubeletSettings, InputError> {
    let mut settings = KubeletSettings::default();
    if let Some(k) = &class.spec.kubelet {
        settings.max_pods = k.max_pods.map(i64::from);
        settings.pods_per_core = k.pods_per_core.map(i64::from);
        if !k.kube_reserved.is_empty() {
            settings.kube_reserved = Some(resources(&format!("{field}.spec.kubelet.kubeReserved"), &k.kube_reserved)?);
        }
        settings.system_reserved = resources(&format!("{field}.spec.kubelet.systemReserved"), &k.system_reserved)?;
        if let Some(memory) = k.eviction_hard.get("memory.available") {
            let parsed = Resources::from_quantities([(&"memory".to_string(), memory)]).map_err(|_| InputError {
                line: None,
                field: format!("{field}.spec.kubelet.evictionHard[memory.available]"),
                message: format!("{memory:?} is not an absolute quantity (percentages are not modelled)"),
            })?;
            settings.eviction_memory = parsed.memory;
        }
    }
    Ok(settings)
}

/// Reads a scheduling problem (YAML or JSON) and builds the solver's input from the catalog.
/// `spot_price(spec, zone)` prices spot offerings, where spot is sold. Every problem is reported.
pub fn read(
    text: &str,
    catalog: &[InstanceTypeSpec],
    spot_price: impl Fn(&InstanceTypeSpec, &str) -> Option<f64>,
) -> Result<SchedulingInput, Vec<InputError>> {
    let mut document: Document = serde_saphyr::from_str(text).map_err(|e| {
        let message = e.without_snippet().to_string();
        vec![InputError { line: None, field: "<document>".into(), message }]
    })?;
    let mut errors = Vec::new();
    // Where each item starts, for the line of its errors.
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for (name, list) in [
        ("pods", &mut document.pods),
        ("nodePools", &mut document.node_pools),
        ("nodeClasses", &mut document.node_classes),
        ("nodes", &mut document.nodes),
        ("daemonSets", &mut document.daemon_sets),
    ] {
        for (i, item) in list.iter().enumerate() {
            lines.insert(format!("{name}[{i}]"), item.referenced.line());
        }
    }
    let (pods, node_pools, node_classes, nodes_in, daemon_sets) = (
        std::mem::take(&mut document.pods).into_iter().map(|s| s.value),
        std::mem::take(&mut document.node_pools).into_iter().map(|s| s.value),
        std::mem::take(&mut document.node_classes).into_iter().map(|s| s.value),
        std::mem::take(&mut document.nodes).into_iter().map(|s| s.value),
        std::mem::take(&mut document.daemon_sets).into_iter().map(|s| s.value),
    );

    let mut classes: BTreeMap<String, KubeletSettings> = BTreeMap::new();
    let mut templates = Vec::new();
    for (i, value) in node_classes.enumerate() {
        let field = format!("nodeClasses[{i}]");
        match kind(&value) {
            ("karpenter.k8s.aws/v1", "EC2NodeClass") => {
                if let Some(class) = typed::<EC2NodeClass>(field.clone(), value, &mut errors) {
                    match kubelet_settings(&field, &class) {
                        Ok(settings) => {
                            classes.insert(class.name_any(), settings);
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            ("karpenter.k8s.aws/v1alpha1", "AWSNodeTemplate") => {
                if let Some(t) = typed::<AWSNodeTemplate>(field, value, &mut errors) {
                    classes.insert(t.name_any(), KubeletSettings::default());
                    templates.push(t);
                }
            }
            (api, k) => errors.push(InputError {
                line: None,
                field,
                message: format!("expected an EC2NodeClass, found {k} in {api}"),
            }),
        }
    }

    let mut pools = Vec::new();
    for (i, value) in node_pools.enumerate() {
        let field = format!("nodePools[{i}]");
        let pool = match kind(&value) {
            ("karpenter.sh/v1", "NodePool") => typed::<NodePool>(field.clone(), value, &mut errors),
            ("karpenter.sh/v1alpha5", "Provisioner") => typed::<Provisioner>(field.clone(), value, &mut errors)
                .and_then(|p| {
                    node_pool_from_provisioner(&p, &templates)
                        .map_err(|e| {
                            errors.extend(e.into_iter().map(|c| InputError {
                                line: None,
                                field: field.clone(),
                                message: c.to_string(),
                            }))
                        })
                        .ok()
                }),
            (api, k) => {
                errors.push(InputError {
                    line: None,
                    field: field.clone(),
                    message: format!("expected a NodePool or Provisioner, found {k} in {api}"),
                });
                None
            }
        };
        let Some(pool) = pool else { continue };
        if let Err(invalid) = crate::api::validation::validate_node_pool(&pool.spec) {
            errors.extend(invalid.0.into_iter().map(|e| InputError {
                line: None,
                field: format!("{field}.{}", e.field),
                message: e.message,
            }));
            continue;
        }
        let class = &pool.spec.template.spec.node_class_ref.name;
        let settings = classes.get(class).cloned().unwrap_or_default();
        let types: Vec<InstanceType> =
            catalog.iter().map(|spec| InstanceType::new(spec, &settings, |zone| spot_price(spec, zone))).collect();
        match PoolInput::from_node_pool(&pool, types, &Resources::zero()) {
            Ok(p) => pools.push(p),
            Err(e) => errors.push(InputError { line: None, field, message: e.to_string() }),
        }
    }

    let mut nodes = Vec::new();
    for (i, value) in nodes_in.enumerate() {
        let field = format!("nodes[{i}]");
        let Some(node) = typed::<Node>(field.clone(), value, &mut errors) else { continue };
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let available = match allocatable.map(Resources::from_kube) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                errors.push(InputError {
                    line: None,
                    field: format!("{field}.status.allocatable"),
                    message: e.to_string(),
                });
                continue;
            }
            None => {
                errors.push(InputError {
                    line: None,
                    field: format!("{field}.status.allocatable"),
                    message: "is required".into(),
                });
                continue;
            }
        };
        let name = node.name_any();
        let mut labels = node.metadata.labels.clone().unwrap_or_default();
        labels.entry(crate::api::labels::HOSTNAME.to_string()).or_insert_with(|| name.clone());
        nodes.push(ExistingNode {
            name,
            requirements: Requirements::from_labels(&labels),
            taints: node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter_map(taints::from_kube)
                .collect(),
            available,
            initialized: true,
        });
    }

    if lines.keys().all(|k| !k.starts_with("pods[")) {
        errors.push(InputError {
            line: None,
            field: "pods".into(),
            message: "none given: there is nothing to plan for".into(),
        });
    }
    let (mut pending, mut bound) = (Vec::new(), Vec::new());
    for (i, value) in pods.enumerate() {
        let field = format!("pods[{i}]");
        let Some(pod) = typed::<Pod>(field.clone(), value, &mut errors) else { continue };
        let Some(spec) = pod.spec.as_ref() else {
            errors.push(InputError { line: None, field: format!("{field}.spec"), message: "is required".into() });
            continue;
        };
        let before = errors.len();
        validate_pod_spec(&format!("{field}.spec"), spec, &mut errors);
        let valid = errors.len() == before;
        match &spec.node_name {
            Some(node) => match nodes.iter_mut().find(|n| &n.name == node) {
                Some(_) if !valid => {}
                Some(n) => {
                    match pod_requests(spec) {
                        Ok(r) => n.available.sub(&r),
                        Err(e) => errors.push(InputError {
                            line: None,
                            field: format!("{field}.spec"),
                            message: e.to_string(),
                        }),
                    }
                    bound.push(pod);
                }
                None => errors.push(InputError {
                    line: None,
                    field: format!("{field}.spec.nodeName"),
                    message: format!("no node {node} in nodes"),
                }),
            },
            None if valid => pending.push(pod),
            None => {}
        }
    }

    let mut daemonsets = Vec::new();
    for (i, value) in daemon_sets.enumerate() {
        if let Some(ds) = typed::<DaemonSet>(format!("daemonSets[{i}]"), value, &mut errors) {
            daemonsets.extend(ds.spec.and_then(|s| s.template.spec));
        }
    }

    for e in &mut errors {
        let item = e.field.find(']').map(|end| &e.field[..=end]).unwrap_or_default();
        e.line = lines.get(item).copied();
    }
    if errors.is_empty() {
        Ok(SchedulingInput {
            pods: pending,
            pools,
            nodes,
            daemonsets,
            bound_pods: bound,
            volume_zones: document.volume_zones,
            fewest_new_nodes: false,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::catalog::us_east_1;

    const INPUT: &str = r#"
nodePools:
  - apiVersion: karpenter.sh/v1
    kind: NodePool
    metadata: {name: default}
    spec:
      template:
        spec:
          requirements:
            - {key: karpenter.k8s.aws/instance-category, operator: In, values: [c, m, r]}
          nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
  - apiVersion: karpenter.sh/v1alpha5
    kind: Provisioner
    metadata: {name: legacy}
    spec:
      providerRef: {name: default}
      requirements:
        - {key: kubernetes.io/arch, operator: In, values: [arm64]}
nodeClasses:
  - apiVersion: karpenter.k8s.aws/v1
    kind: EC2NodeClass
    metadata: {name: default}
    spec:
      amiSelectorTerms: [{alias: al2023@latest}]
      role: R
      subnetSelectorTerms: [{tags: {a: b}}]
      securityGroupSelectorTerms: [{tags: {a: b}}]
      kubelet: {maxPods: 20}
nodes:
  - metadata: {name: node-1, labels: {kubernetes.io/arch: amd64}}
    status: {allocatable: {cpu: "4", memory: 8Gi, pods: "20"}}
pods:
  - metadata: {name: running, namespace: default}
    spec: {nodeName: node-1, containers: [{name: c, resources: {requests: {cpu: "3"}}}]}
  - metadata: {name: pending, namespace: default}
    spec: {containers: [{name: c, resources: {requests: {cpu: "2"}}}]}
"#;

    #[test]
    fn an_input_file_becomes_solver_input_with_legacy_pools_converted() {
        let input = read(INPUT, &us_east_1().unwrap(), |_, _| None).expect("reads");
        assert_eq!(input.pods.len(), 1, "the bound pod is not pending");
        assert_eq!(input.bound_pods.len(), 1);
        assert_eq!(input.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["default", "legacy"]);
        assert_eq!(input.nodes[0].available.cpu, 1000, "the running pod's request is taken off");
        let m5 = input.pools[0].instance_types.iter().find(|t| t.name == "m5.4xlarge").unwrap();
        assert_eq!(m5.allocatable().pods, 20, "the node class's maxPods applies");
        let plan = crate::scheduling::solver::solve(&input);
        assert_eq!(plan.claims.len(), 1);
    }

    #[test]
    fn bad_input_names_the_field() {
        let errors = read(&INPUT.replace("nodeName: node-1", "nodeName: node-9"), &us_east_1().unwrap(), |_, _| None)
            .unwrap_err();
        assert_eq!(errors[0].to_string(), "pods[0].spec.nodeName: no node node-9 in nodes");
        let errors =
            read(&INPUT.replace("values: [c, m, r]", "values: []"), &us_east_1().unwrap(), |_, _| None).unwrap_err();
        assert_eq!(errors[0].field, "nodePools[0].spec.template.spec.requirements[0].values");
        let errors = read("pods: []\nnodepools: []\n", &us_east_1().unwrap(), |_, _| None).unwrap_err();
        assert!(errors[0].message.contains("nodepools"), "{errors:?}");
        let errors =
            read(&INPUT.replace("kind: NodePool", "kind: Deployment"), &us_east_1().unwrap(), |_, _| None).unwrap_err();
        assert!(errors[0].to_string().starts_with("nodePools[0]: expected a NodePool"), "{errors:?}");
    }
}
