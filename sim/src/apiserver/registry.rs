//! The kinds the simulator serves: the built-in ones Rafter and its simulators use, and every kind a CRD adds.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::schema::CrdSchema;

/// Decodes an object into its typed k8s-openapi form, so type errors read like the API server's.
pub type TypedCheck = fn(&Value) -> Result<Vec<FieldPath>, String>;

/// Decodes a built-in object as kube-apiserver does (one pass) and returns the fields its type does
/// not have, which kube-apiserver drops, warns about or refuses, as `fieldValidation` asks.
fn typed<T: DeserializeOwned>(value: &Value) -> Result<Vec<FieldPath>, String> {
    let mut unknown = Vec::new();
    serde_ignored::deserialize::<_, _, T>(value, |path| unknown.push(FieldPath::of(&path)))
        .map_err(|e| e.to_string())?;
    Ok(unknown)
}

/// One step into an object: a field or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Field(String),
    Index(usize),
}

/// Where a field is in an object; shown as kube-apiserver names fields (`spec.containers[0].foo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Step>);

impl FieldPath {
    fn of(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path;
        let mut steps = Vec::new();
        let mut at = path;
        loop {
            at = match at {
                Path::Root => break,
                Path::Seq { parent, index } => {
                    steps.push(Step::Index(*index));
                    parent
                }
                Path::Map { parent, key } => {
                    steps.push(Step::Field(key.clone()));
                    parent
                }
                Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => parent,
            };
        }
        steps.reverse();
        Self(steps)
    }

    /// Removes the field this path names from `object`, if it is there.
    pub fn remove_from(&self, object: &mut Value) {
        let Some((Step::Field(last), parents)) = self.0.split_last() else { return };
        let mut at = object;
        for step in parents {
            let next = match step {
                Step::Field(name) => at.get_mut(name.as_str()),
                Step::Index(i) => at.get_mut(*i),
            };
            match next {
                Some(n) => at = n,
                None => return,
            }
        }
        if let Some(map) = at.as_object_mut() {
            map.remove(last);
        }
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Field(name) if i == 0 => write!(f, "{name}")?,
                Step::Field(name) => write!(f, ".{name}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The fields of an object's `metadata` that `ObjectMeta` does not have.
pub fn object_meta_unknown(meta: &Value) -> Result<Vec<FieldPath>, String> {
    typed::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(meta)
}

/// One served resource (a group, version and plural) and how it behaves.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (and the main resource ignores status changes).
    pub status_subresource: bool,
    /// Field selectors beyond `metadata.name` and `metadata.namespace`.
    pub fields: &'static [&'static str],
    /// Merge keys of the associative lists (strategic merge, server-side apply), by JSON path. Lists not
    /// named here (taints and tolerations among them, as in kube-apiserver) are atomic: replaced whole.
    pub list_keys: BTreeMap<String, Vec<String>>,
    /// Lists that are sets of scalars.
    pub set_lists: Vec<String>,
    pub typed: Option<TypedCheck>,
    /// The CRD's schema, for kinds a CRD adds.
    pub schema: Option<Arc<CrdSchema>>,
    /// `additionalPrinterColumns` of a CRD: (name, type, JSONPath, priority).
    pub printer_columns: Vec<(String, String, String, i64)>,
    /// The storage this kind shares with another resource (events.k8s.io/v1 events are core events).
    pub storage: Option<(String, String)>,
    /// The CRD that serves this kind, so deleting it stops serving.
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Where objects of this kind are stored: (group, plural).
    pub fn storage_key(&self) -> (String, String) {
        self.storage.clone().unwrap_or_else(|| (self.group.clone(), self.plural.clone()))
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `field` may be used in a field selector, as the real API server allows.
    pub fn selectable(&self, field: &str) -> bool {
        field == "metadata.name" || (self.namespaced && field == "metadata.namespace") || self.fields.contains(&field)
    }

    /// Verbs for discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

fn lists(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    entries.iter().map(|(path, keys)| (path.to_string(), keys.iter().map(|k| k.to_string()).collect())).collect()
}

/// Merge keys every object has.
const META_LISTS: &[(&str, &[&str])] =
    &[("metadata.ownerReferences", &["uid"]), ("metadata.managedFields", &["manager", "operation"])];

/// Pod spec lists with merge keys, relative to a pod spec.
const POD_SPEC_LISTS: &[(&str, &[&str])] = &[
    ("containers", &["name"]),
    ("initContainers", &["name"]),
    ("ephemeralContainers", &["name"]),
    ("containers.ports", &["containerPort", "protocol"]),
    ("initContainers.ports", &["containerPort", "protocol"]),
    ("containers.env", &["name"]),
    ("initContainers.env", &["name"]),
    ("containers.volumeMounts", &["mountPath"]),
    ("initContainers.volumeMounts", &["mountPath"]),
    ("volumes", &["name"]),
    ("imagePullSecrets", &["name"]),
    ("hostAliases", &["ip"]),
    ("topologySpreadConstraints", &["topologyKey", "whenUnsatisfiable"]),
    ("resourceClaims", &["name"]),
];

fn pod_spec_lists(prefix: &str) -> Vec<(String, Vec<String>)> {
    POD_SPEC_LISTS
        .iter()
        .map(|(path, keys)| (format!("{prefix}{path}"), keys.iter().map(|k| k.to_string()).collect()))
        .collect()
}

struct Builtin {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    fields: &'static [&'static str],
    lists: Vec<(String, Vec<String>)>,
    typed: TypedCheck,
}

fn builtin(b: Builtin) -> ResourceType {
    let (group, version) = match b.group.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), b.group.to_string()),
    };
    let mut list_keys = lists(META_LISTS);
    list_keys.extend(b.lists);
    let categories = if ["pods", "deployments", "replicasets", "daemonsets", "services"].contains(&b.plural) {
        vec!["all".to_string()]
    } else {
        Vec::new()
    };
    ResourceType {
        group,
        version,
        kind: b.kind.to_string(),
        plural: b.plural.to_string(),
        singular: b.kind.to_lowercase(),
        namespaced: b.namespaced,
        short_names: b.short.iter().map(|s| s.to_string()).collect(),
        categories,
        status_subresource: b.status,
        fields: b.fields,
        list_keys,
        set_lists: vec!["metadata.finalizers".to_string()],
        typed: Some(b.typed),
        schema: None,
        printer_columns: Vec::new(),
        storage: None,
        crd: None,
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// The built-in kinds, in discovery order.
pub fn builtins() -> Vec<ResourceType> {
    use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};
    use k8s_openapi::api::{events::v1 as events, policy::v1 as policy, storage::v1 as storage};
    use k8s_openapi::api::{rbac::v1 as rbac, scheduling::v1 as scheduling};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    let mut pod_lists = pod_spec_lists("spec.");
    pod_lists.extend(
        [
            ("status.conditions", "type"),
            ("status.containerStatuses", "name"),
            ("status.initContainerStatuses", "name"),
            ("status.podIPs", "ip"),
        ]
        .iter()
        .map(|(p, k)| (p.to_string(), vec![k.to_string()])),
    );
    let node_lists: Vec<(String, Vec<String>)> =
        [("status.conditions", "type"), ("status.addresses", "type"), ("status.volumesAttached", "name")]
            .iter()
            .map(|(p, k)| (p.to_string(), vec![k.to_string()]))
            .collect();
    let conditions = || vec![("status.conditions".to_string(), vec!["type".to_string()])];
    let workload = |kind: &'static str, plural, short: &'static [&'static str], typed| {
        let mut lists = pod_spec_lists("spec.template.spec.");
        lists.extend(conditions());
        builtin(Builtin {
            group: "apps/v1",
            kind,
            plural,
            namespaced: true,
            short,
            status: true,
            fields: &[],
            lists,
            typed,
        })
    };
    let mut types = vec![
        builtin(Builtin {
            group: "v1",
            kind: "Namespace",
            plural: "namespaces",
            namespaced: false,
            short: &["ns"],
            status: true,
            fields: &["status.phase"],
            lists: conditions(),
            typed: typed::<core::Namespace>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "Pod",
            plural: "pods",
            namespaced: true,
            short: &["po"],
            status: true,
            fields: &[
                "spec.nodeName",
                "status.phase",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.restartPolicy",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            lists: pod_lists,
            typed: typed::<core::Pod>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "Node",
            plural: "nodes",
            namespaced: false,
            short: &["no"],
            status: true,
            fields: &["spec.unschedulable"],
            lists: node_lists,
            typed: typed::<core::Node>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "Event",
            plural: "events",
            namespaced: true,
            short: &["ev"],
            status: false,
            fields: EVENT_FIELDS,
            lists: Vec::new(),
            typed: typed::<core::Event>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "Service",
            plural: "services",
            namespaced: true,
            short: &["svc"],
            status: true,
            fields: &[],
            lists: vec![("spec.ports".to_string(), vec!["port".to_string(), "protocol".to_string()])],
            typed: typed::<core::Service>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "PersistentVolumeClaim",
            plural: "persistentvolumeclaims",
            namespaced: true,
            short: &["pvc"],
            status: true,
            fields: &[],
            lists: conditions(),
            typed: typed::<core::PersistentVolumeClaim>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "PersistentVolume",
            plural: "persistentvolumes",
            namespaced: false,
            short: &["pv"],
            status: true,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<core::PersistentVolume>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "ConfigMap",
            plural: "configmaps",
            namespaced: true,
            short: &["cm"],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<core::ConfigMap>,
        }),
        workload("Deployment", "deployments", &["deploy"], typed::<apps::Deployment>),
        workload("ReplicaSet", "replicasets", &["rs"], typed::<apps::ReplicaSet>),
        workload("DaemonSet", "daemonsets", &["ds"], typed::<apps::DaemonSet>),
        builtin(Builtin {
            group: "policy/v1",
            kind: "PodDisruptionBudget",
            plural: "poddisruptionbudgets",
            namespaced: true,
            short: &["pdb"],
            status: true,
            fields: &[],
            lists: conditions(),
            typed: typed::<policy::PodDisruptionBudget>,
        }),
        builtin(Builtin {
            group: "coordination.k8s.io/v1",
            kind: "Lease",
            plural: "leases",
            namespaced: true,
            short: &[],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<coordination::Lease>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "ServiceAccount",
            plural: "serviceaccounts",
            namespaced: true,
            short: &["sa"],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<core::ServiceAccount>,
        }),
        builtin(Builtin {
            group: "v1",
            kind: "Secret",
            plural: "secrets",
            namespaced: true,
            short: &[],
            status: false,
            fields: &["type"],
            lists: Vec::new(),
            typed: typed::<core::Secret>,
        }),
        builtin(Builtin {
            group: "rbac.authorization.k8s.io/v1",
            kind: "ClusterRole",
            plural: "clusterroles",
            namespaced: false,
            short: &[],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<rbac::ClusterRole>,
        }),
        builtin(Builtin {
            group: "rbac.authorization.k8s.io/v1",
            kind: "ClusterRoleBinding",
            plural: "clusterrolebindings",
            namespaced: false,
            short: &[],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<rbac::ClusterRoleBinding>,
        }),
        builtin(Builtin {
            group: "rbac.authorization.k8s.io/v1",
            kind: "Role",
            plural: "roles",
            namespaced: true,
            short: &[],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<rbac::Role>,
        }),
        builtin(Builtin {
            group: "rbac.authorization.k8s.io/v1",
            kind: "RoleBinding",
            plural: "rolebindings",
            namespaced: true,
            short: &[],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<rbac::RoleBinding>,
        }),
        builtin(Builtin {
            group: "scheduling.k8s.io/v1",
            kind: "PriorityClass",
            plural: "priorityclasses",
            namespaced: false,
            short: &["pc"],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<scheduling::PriorityClass>,
        }),
        builtin(Builtin {
            group: "storage.k8s.io/v1",
            kind: "StorageClass",
            plural: "storageclasses",
            namespaced: false,
            short: &["sc"],
            status: false,
            fields: &[],
            lists: Vec::new(),
            typed: typed::<storage::StorageClass>,
        }),
        builtin(Builtin {
            group: "apiextensions.k8s.io/v1",
            kind: "CustomResourceDefinition",
            plural: "customresourcedefinitions",
            namespaced: false,
            short: &["crd", "crds"],
            status: true,
            fields: &[],
            lists: conditions(),
            typed: typed::<apiextensions::CustomResourceDefinition>,
        }),
    ];
    let mut new_events = builtin(Builtin {
        group: "events.k8s.io/v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        status: false,
        fields: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ],
        lists: Vec::new(),
        typed: typed::<events::Event>,
    });
    new_events.storage = Some((String::new(), "events".to_string()));
    types.push(new_events);
    types
}

/// The resource types built from a CRD: one per served version.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = spec.get("group").and_then(Value::as_str).ok_or("spec.group: Required value")?.to_string();
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let text = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
    let plural = text(names, "plural").ok_or("spec.names.plural: Required value")?;
    let kind = text(names, "kind").ok_or("spec.names.kind: Required value")?;
    if name != format!("{plural}.{group}") {
        return Err(format!("metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"));
    }
    let singular = text(names, "singular").unwrap_or_else(|| kind.to_lowercase());
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let short_names = strings(names.get("shortNames"));
    let categories = strings(names.get("categories"));
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            return Err(format!(
                "spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
            ));
        }
    };
    let versions = spec.get("versions").and_then(Value::as_array).ok_or("spec.versions: Required value")?;
    let mut types = Vec::new();
    for (i, version) in versions.iter().enumerate() {
        let vname = text(version, "name").ok_or(format!("spec.versions[{i}].name: Required value"))?;
        if version.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .ok_or(format!("spec.versions[{i}].schema.openAPIV3Schema: Required value"))?;
        let schema =
            CrdSchema::new(schema.clone()).map_err(|e| format!("spec.versions[{i}].schema.openAPIV3Schema: {e}"))?;
        let mut list_keys = lists(META_LISTS);
        list_keys.extend(schema.map_lists());
        let mut set_lists = schema.set_lists();
        set_lists.push("metadata.finalizers".to_string());
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some((
                            text(c, "name")?,
                            text(c, "type").unwrap_or_else(|| "string".into()),
                            text(c, "jsonPath")?,
                            c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        types.push(ResourceType {
            group: group.clone(),
            version: vname,
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status_subresource: version.pointer("/subresources/status").is_some(),
            fields: &[],
            list_keys,
            set_lists,
            typed: None,
            schema: Some(Arc::new(schema)),
            printer_columns,
            storage: None,
            crd: Some(name.clone()),
        });
    }
    Ok(types)
}
