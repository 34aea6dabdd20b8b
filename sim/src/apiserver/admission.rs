//! What the API server does to an object before storing it: names, types, schemas, defaults, and the
//! rules of updates (immutable fields, status subresources, finalizers of terminating objects).
//!
//! It is one piece because these steps run in a fixed order on every write and share the object
//! being admitted; a tenth of the file is its tests.

use serde_json::{Value, json};

use rafter::api::labels::NOT_READY_TAINT_KEY;

use super::error::ApiError;
use super::request::FieldValidation;

use super::registry::ResourceType;

fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn name_problem(rt: &ResourceType, name: &str) -> Option<String> {
    let label = rt.plural == "namespaces" && rt.group.is_empty();
    let ok = if label { is_dns_label(name) } else { is_dns_subdomain(name) };
    if ok {
        None
    } else if label {
        Some(format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ))
    } else {
        Some(format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// Checks a name from a URL path, so bad names are refused before they reach the store.
pub fn check_path_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('%') {
        return Err(ApiError::bad_request(format!("invalid resource name {name:?}")));
    }
    Ok(())
}

/// Prepares a new object: apiVersion/kind, namespace, name, type and schema checks, and defaults.
pub fn prepare_create(rt: &ResourceType, object: Value, namespace: Option<&str>) -> Result<Value, ApiError> {
    prepare_create_with(rt, object, namespace, FieldValidation::Ignore).map(|(object, _)| object)
}

/// [`prepare_create`] under a `fieldValidation` directive; also returns the warnings it calls for.
pub fn prepare_create_with(
    rt: &ResourceType,
    mut object: Value,
    namespace: Option<&str>,
    fields: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let warnings = check_unknown_fields(rt, &mut object, fields)?;
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    };
    check_kind(rt, map)?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata: must be an object"));
    };
    if rt.namespaced {
        let path_ns = namespace.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != path_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(path_ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    for field in
        ["uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"]
    {
        meta.remove(field);
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let generate = meta.get("generateName").and_then(Value::as_str).unwrap_or_default().to_string();
    if name.is_empty() && generate.is_empty() {
        return Err(ApiError::invalid(
            &rt.kind,
            &rt.group,
            "",
            vec![("metadata.name".into(), "Required value: name or generateName is required".into())],
        ));
    }
    let shown = if name.is_empty() { format!("{generate}xxxxx") } else { name.clone() };
    if let Some(problem) = name_problem(rt, &shown) {
        let field = if name.is_empty() { "metadata.generateName" } else { "metadata.name" };
        return Err(ApiError::invalid(&rt.kind, &rt.group, &name, vec![(field.into(), problem)]));
    }
    if rt.status_subresource && !matches!(rt.plural.as_str(), "nodes" | "namespaces" | "customresourcedefinitions") {
        map.remove("status");
    }
    default(rt, &mut object, None);
    validate(rt, &mut object, None)?;
    Ok((object, warnings))
}

fn check_kind(rt: &ResourceType, map: &mut serde_json::Map<String, Value>) -> Result<(), ApiError> {
    match map.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                map.get("apiVersion").and_then(Value::as_str).unwrap_or_default(),
                rt.api_version()
            ))
            .with_details(json!({"kind": kind})));
        }
        _ => {}
    }
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != rt.api_version() => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
        _ => {}
    }
    map.insert("kind".into(), json!(rt.kind));
    map.insert("apiVersion".into(), json!(rt.api_version()));
    Ok(())
}

/// Applies `fieldValidation` to an object about to be written: the fields its type does not declare
/// are refused (Strict) or dropped (built-ins here; CRD schemas prune them on admission), and
/// returned for the `Warning` header (Warn).
fn check_unknown_fields(rt: &ResourceType, object: &mut Value, mode: FieldValidation) -> Result<Vec<String>, ApiError> {
    let unknown: Vec<String> = if let Some(schema) = &rt.schema {
        let mut found = schema.prune_unknown(object);
        if let Some(meta) = object.get_mut("metadata")
            && let Ok(paths) = super::registry::object_meta_unknown(meta)
        {
            for path in paths {
                path.remove_from(meta);
                found.push(format!("metadata.{path}"));
            }
        }
        found
    } else if let Some(check) = rt.typed {
        // The one decode of a built-in write: its type errors are refused here, as kube-apiserver's
        // decoder refuses them, and `validate` does not decode again.
        let paths = check(object).map_err(|e| decode_error(rt, &e))?;
        for path in &paths {
            path.remove_from(object);
        }
        paths.iter().map(ToString::to_string).collect()
    } else {
        Vec::new()
    };
    if unknown.is_empty() || mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
    if mode == FieldValidation::Strict {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            rt.kind,
            rt.version,
            rt.kind,
            listed.join(", ")
        )));
    }
    Ok(listed)
}

fn decode_error(rt: &ResourceType, error: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: {error}",
        rt.kind, rt.version, rt.kind
    ))
}

/// Schema checks (CRDs; built-ins were decoded by `check_unknown_fields`), then kind-specific rules.
pub fn validate(rt: &ResourceType, object: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    if let Some(schema) = &rt.schema {
        let errors = schema.admit(object, old);
        if !errors.is_empty() {
            return Err(ApiError::invalid(&rt.kind, &rt.group, &name, errors));
        }
    }
    let mut causes = Vec::new();
    if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
        let spec = object.get("spec").cloned().unwrap_or_default();
        for (prefix, schema) in super::cel_cost::crd_schemas(&spec) {
            unique_items(schema, &prefix, &mut causes);
        }
        causes.extend(super::cel_cost::crd_problems(&spec));
    }
    if rt.group.is_empty() && rt.plural == "pods" {
        let containers = object.pointer("/spec/containers").and_then(Value::as_array);
        match containers {
            None => causes.push(("spec.containers".to_string(), "Required value".to_string())),
            Some(list) if list.is_empty() => causes.push(("spec.containers".to_string(), "Required value".to_string())),
            Some(list) => {
                for (i, c) in list.iter().enumerate() {
                    if c.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                        causes.push((format!("spec.containers[{i}].name"), "Required value".into()));
                    }
                    if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                        causes.push((format!("spec.containers[{i}].image"), "Required value".into()));
                    }
                }
            }
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(&rt.kind, &rt.group, &name, causes));
    }
    Ok(())
}

/// kube-apiserver forbids `uniqueItems: true` in CRD schemas (its check is quadratic).
fn unique_items(schema: &Value, path: &str, causes: &mut Vec<(String, String)>) {
    super::schema::visit_nodes(schema, path, &mut |node, at| {
        if node.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
            causes.push((
                format!("{at}.uniqueItems"),
                "Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic".into(),
            ));
        }
    });
}

/// The defaults kube-apiserver fills in that clients read back.
fn default(rt: &ResourceType, object: &mut Value, old: Option<&Value>) {
    if !rt.group.is_empty() && rt.group != "apps" && rt.group != "apiextensions.k8s.io" {
        return;
    }
    let set = |object: &mut Value, pointer: &str, value: Value| {
        let (parent, field) = pointer.rsplit_once('/').unwrap_or(("", pointer));
        if object.pointer(pointer).is_none() {
            ensure_object(object, parent);
            if let Some(map) = object.pointer_mut(parent).and_then(Value::as_object_mut) {
                map.insert(field.to_string(), value);
            }
        }
    };
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => {
            default_pod_spec(object, "/spec");
            set(object, "/status/phase", json!("Pending"));
            let qos = qos_class(object);
            set(object, "/status/qosClass", json!(qos));
        }
        // kube-apiserver's TaintNodesByCondition admission: a new Node is not-ready until the node
        // lifecycle controller sees it Ready.
        ("", "nodes") if old.is_none() => {
            ensure_object(object, "/spec");
            if let Some(spec) = object.pointer_mut("/spec").and_then(Value::as_object_mut) {
                let taints = spec.entry("taints").or_insert_with(|| json!([]));
                if let Some(list) = taints.as_array_mut()
                    && !list.iter().any(|t| t["key"] == NOT_READY_TAINT_KEY && t["effect"] == "NoSchedule")
                {
                    list.push(json!({"key": NOT_READY_TAINT_KEY, "effect": "NoSchedule"}));
                }
            }
        }
        ("", "namespaces") => {
            let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            set(object, "/metadata/labels/kubernetes.io~1metadata.name", json!(name));
            set(object, "/status/phase", json!("Active"));
        }
        ("apps", "deployments") => {
            set(object, "/spec/replicas", json!(1));
            set(object, "/spec/revisionHistoryLimit", json!(10));
            set(object, "/spec/progressDeadlineSeconds", json!(600));
            set(object, "/spec/strategy/type", json!("RollingUpdate"));
            default_pod_spec(object, "/spec/template/spec");
        }
        ("apps", "replicasets") => {
            set(object, "/spec/replicas", json!(1));
            default_pod_spec(object, "/spec/template/spec");
        }
        ("apps", "daemonsets") => {
            set(object, "/spec/updateStrategy/type", json!("RollingUpdate"));
            set(object, "/spec/revisionHistoryLimit", json!(10));
            default_pod_spec(object, "/spec/template/spec");
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let names = object.pointer("/spec/names").cloned().unwrap_or_default();
            let now = super::store::now();
            if let Some(map) = object.as_object_mut() {
                map.insert(
                    "status".into(),
                    json!({
                        "acceptedNames": names,
                        "storedVersions": object_versions(map.get("spec")),
                        "conditions": [
                            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
                        ]
                    }),
                );
            }
        }
        _ => {}
    }
}

fn object_versions(spec: Option<&Value>) -> Vec<String> {
    spec.and_then(|s| s.get("versions"))
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn ensure_object(object: &mut Value, pointer: &str) {
    if pointer.is_empty() || object.pointer(pointer).is_some_and(Value::is_object) {
        return;
    }
    let (parent, field) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    ensure_object(object, parent);
    if let Some(map) = object.pointer_mut(parent).and_then(Value::as_object_mut) {
        map.insert(field.replace("~1", "/"), json!({}));
    }
}

fn default_pod_spec(object: &mut Value, pointer: &str) {
    let Some(spec) = object.pointer_mut(pointer).and_then(Value::as_object_mut) else { return };
    for (field, value) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
    ] {
        spec.entry(field).or_insert(value);
    }
    if pointer == "/spec" {
        spec.entry("priority").or_insert(json!(0));
    }
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                let latest =
                    c.get("image").and_then(Value::as_str).is_some_and(|i| i.ends_with(":latest") || !i.contains(':'));
                c.entry("imagePullPolicy").or_insert(json!(if latest { "Always" } else { "IfNotPresent" }));
                c.entry("terminationMessagePath").or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
                c.entry("resources").or_insert(json!({}));
            }
        }
    }
}

fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> =
        pod.pointer("/spec/containers").and_then(Value::as_array).map(|c| c.iter().collect()).unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        any |= requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty());
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// The pod spec fields an update may change, as kube-apiserver allows.
fn mutable_pod_spec(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Some(map) = spec.as_object_mut() {
        for field in ["activeDeadlineSeconds", "tolerations", "schedulingGates", "terminationGracePeriodSeconds"] {
            map.remove(field);
        }
        for list in ["containers", "initContainers"] {
            if let Some(containers) = map.get_mut(list).and_then(Value::as_array_mut) {
                for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
    }
    spec
}

/// Builds the object an update stores from the old one and the new body, or refuses it.
pub fn prepare_update(
    rt: &ResourceType,
    old: &Value,
    new: Value,
    subresource: Option<&str>,
) -> Result<Value, ApiError> {
    prepare_update_with(rt, old, new, subresource, FieldValidation::Ignore).map(|(object, _)| object)
}

/// [`prepare_update`] under a `fieldValidation` directive; also returns the warnings it calls for.
pub fn prepare_update_with(
    rt: &ResourceType,
    old: &Value,
    mut new: Value,
    subresource: Option<&str>,
    fields: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let warnings = check_unknown_fields(rt, &mut new, fields)?;
    let name = old.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let Some(map) = new.as_object_mut() else {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    };
    check_kind(rt, map)?;
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata: must be an object"));
    }
    let given_name = meta.get("name").and_then(Value::as_str).unwrap_or(&name);
    if given_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given_name}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str)
        && !rv.is_empty()
        && Some(rv) != old_meta.get("resourceVersion").and_then(Value::as_str)
    {
        return Err(ApiError::stale(&rt.plural, &rt.group, &name));
    }
    if let Some(meta) = meta.as_object_mut() {
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "generation",
            "name",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.to_string(), v.clone()),
                None => meta.remove(field),
            };
        }
        if !meta.contains_key("managedFields")
            && let Some(m) = old_meta.get("managedFields")
        {
            meta.insert("managedFields".into(), m.clone());
        }
    }
    let mut result = if subresource == Some("status") {
        let mut result = old.clone();
        match map.get("status") {
            Some(status) => result["status"] = status.clone(),
            None => {
                if let Some(m) = result.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if let (Some(m), Some(fields)) = (
            result.pointer_mut("/metadata").and_then(Value::as_object_mut),
            map.get("metadata").and_then(|m| m.get("managedFields")),
        ) {
            m.insert("managedFields".into(), fields.clone());
        }
        result
    } else {
        if rt.status_subresource {
            match old.get("status") {
                Some(status) => {
                    map.insert("status".into(), status.clone());
                }
                None => {
                    map.remove("status");
                }
            }
        }
        new
    };
    if old_meta.get("deletionTimestamp").is_some() {
        let before: Vec<&Value> =
            old_meta.get("finalizers").and_then(Value::as_array).map(|f| f.iter().collect()).unwrap_or_default();
        let added = result
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| !before.contains(&x)));
        if added {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                &name,
                vec![(
                    "metadata.finalizers".into(),
                    "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                )],
            ));
        }
    }
    let status_only = subresource == Some("status");
    if rt.group.is_empty() && rt.plural == "pods" && !status_only {
        let before = old.get("spec").map(mutable_pod_spec);
        let after = result.get("spec").map(mutable_pod_spec);
        if before != after {
            return Err(ApiError::invalid(&rt.kind, &rt.group, &name, vec![("spec".into(), "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into())]));
        }
    }
    // Everything but metadata and status counts as spec for the generation; a status write changes none.
    let spec_changed = !status_only && {
        let outside =
            |m: &serde_json::Map<String, Value>| m.iter().filter(|(k, _)| *k != "metadata" && *k != "status").count();
        match (old.as_object(), result.as_object()) {
            (Some(a), Some(b)) => {
                outside(a) != outside(b)
                    || a.iter().any(|(k, v)| k != "metadata" && k != "status" && b.get(k) != Some(v))
            }
            _ => old != &result,
        }
    };
    if spec_changed && let Some(meta) = result.get_mut("metadata").and_then(Value::as_object_mut) {
        let generation = old_meta.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
        meta.insert("generation".into(), json!(generation));
    }
    validate(rt, &mut result, Some(old))?;
    Ok((result, warnings))
}

/// Fields of events.k8s.io/v1 Event and the core/v1 Event fields they are stored as.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("related", "related"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn event_as(from: &Value, api_version: &str, names: impl Iterator<Item = (&'static str, &'static str)>) -> Value {
    let mut out = json!({"apiVersion": api_version, "kind": "Event", "metadata": from.get("metadata").cloned().unwrap_or_default()});
    for (source, target) in names {
        if let Some(v) = from.get(source) {
            out[target] = v.clone();
        }
    }
    out
}

/// events.k8s.io/v1 Event → core/v1 Event (one storage serves both, as in kube-apiserver).
pub fn event_to_core(event: &Value) -> Value {
    let mut core = event_as(event, "v1", EVENT_FIELDS.iter().copied());
    if core.get("source").is_none()
        && let Some(controller) = event.get("reportingController")
    {
        core["source"] = json!({"component": controller});
    }
    if core.get("involvedObject").is_none() {
        core["involvedObject"] = json!({});
    }
    core
}

/// core/v1 Event → events.k8s.io/v1 Event.
pub fn event_from_core(core: &Value) -> Value {
    event_as(core, "events.k8s.io/v1", EVENT_FIELDS.iter().map(|(new, old)| (*old, *new)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::builtins;

    fn rt(plural: &str) -> ResourceType {
        builtins().into_iter().find(|t| t.plural == plural && t.group.is_empty()).expect("type")
    }

    #[test]
    fn a_pod_is_defaulted_and_starts_pending() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}});
        let pod = prepare_create(&rt("pods"), pod, Some("default")).expect("valid");
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    }

    #[test]
    fn bad_names_types_and_missing_containers_are_refused_naming_the_field() {
        let bad_name =
            json!({"metadata": {"name": "Not_Valid"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let err = prepare_create(&rt("pods"), bad_name, Some("default")).expect_err("bad name");
        assert_eq!(err.code, 422);
        assert!(err.message.contains("metadata.name"), "{}", err.message);
        let bad_type = json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}});
        assert_eq!(prepare_create(&rt("pods"), bad_type, Some("default")).expect_err("bad type").code, 400);
        let empty = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        let err = prepare_create(&rt("pods"), empty, Some("default")).expect_err("no containers");
        assert!(err.message.contains("spec.containers: Required value"), "{}", err.message);
    }

    #[test]
    fn an_update_with_a_stale_resource_version_conflicts() {
        let old = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d", "resourceVersion": "5"}});
        let new = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "4"}, "data": {"a": "b"}});
        let err = prepare_update(&rt("configmaps"), &old, new, None).expect_err("stale");
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn a_pods_node_cannot_be_changed_by_an_update() {
        let old = prepare_create(
            &rt("pods"),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            Some("d"),
        )
        .expect("valid");
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!("n1");
        assert_eq!(prepare_update(&rt("pods"), &old, new, None).expect_err("immutable").code, 422);
    }

    #[test]
    fn events_convert_between_the_two_apis() {
        let event = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p"}, "note": "hello", "reason": "R", "type": "Normal", "reportingController": "rafter"});
        let core = event_to_core(&event);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["source"]["component"], "rafter");
        let back = event_from_core(&core);
        assert_eq!(back["regarding"], event["regarding"]);
        assert_eq!(back["note"], "hello");
    }
}
