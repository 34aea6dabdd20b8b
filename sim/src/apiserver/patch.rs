//! The four patch types: JSON merge, JSON patch, strategic merge and server-side apply with field managers.
//!
//! It is one piece because the four kinds share the merge walk and the field-manager bookkeeping;
//! a seventh of the file is its tests.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::registry::ResourceType;

/// How a list at a path merges: by keys, as a set of scalars, or whole.
fn list_kind<'a>(rt: &'a ResourceType, path: &str) -> ListKind<'a> {
    if let Some(keys) = rt.list_keys.get(path) {
        ListKind::Map(keys)
    } else if rt.set_lists.iter().any(|p| p == path) {
        ListKind::Set
    } else {
        ListKind::Atomic
    }
}

enum ListKind<'a> {
    Map(&'a [String]),
    Set,
    Atomic,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &patch).map_err(|e| e.to_string())
}

/// Strategic merge patch for built-in kinds: lists with merge keys merge item by item (`$patch: delete`
/// and `$patch: replace` honoured), `finalizers` merge as a set, `$deleteFromPrimitiveList/…` and
/// `$retainKeys` apply, `$setElementOrder/…` is accepted; every other list is replaced.
pub fn strategic_merge(rt: &ResourceType, target: &mut Value, patch: &Value) -> Result<(), String> {
    smp(rt, target, patch, "")
}

fn smp(rt: &ResourceType, target: &mut Value, patch: &Value, path: &str) -> Result<(), String> {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(original), Some(changes)) => {
            match changes.get("$patch").and_then(Value::as_str) {
                Some("replace") => {
                    let mut replaced = changes.clone();
                    replaced.remove("$patch");
                    *target = Value::Object(strip(replaced));
                    return Ok(());
                }
                Some("delete") | None => {}
                Some(other) => return Err(format!("unknown patch type {other:?} at {path}")),
            }
            if let Some(retain) = changes.get("$retainKeys").and_then(Value::as_array) {
                let keep: BTreeSet<&str> = retain.iter().filter_map(Value::as_str).collect();
                original.retain(|k, _| keep.contains(k.as_str()) || changes.contains_key(k));
            }
            for (key, value) in changes {
                if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
                    continue;
                }
                if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
                    let drop: Vec<&Value> = value.as_array().map(|a| a.iter().collect()).unwrap_or_default();
                    if let Some(Value::Array(list)) = original.get_mut(field) {
                        list.retain(|v| !drop.contains(&v));
                    }
                    continue;
                }
                let child_path = join(path, key);
                if value.is_null() {
                    original.remove(key);
                    continue;
                }
                if value.get("$patch").and_then(Value::as_str) == Some("delete") {
                    original.remove(key);
                    continue;
                }
                match original.get_mut(key) {
                    Some(existing) => smp(rt, existing, value, &child_path)?,
                    None => {
                        let mut fresh = Value::Null;
                        smp(rt, &mut fresh, value, &child_path)?;
                        original.insert(key.clone(), fresh);
                    }
                }
            }
            Ok(())
        }
        _ => match (target.as_array_mut(), patch.as_array()) {
            (Some(original), Some(items)) => {
                match list_kind(rt, path) {
                    ListKind::Map(keys) => {
                        let key = &keys[0];
                        if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
                            *original = items
                                .iter()
                                .filter(|i| i.get("$patch").is_none())
                                .map(|i| Value::Object(strip(i.as_object().cloned().unwrap_or_default())))
                                .collect();
                            return Ok(());
                        }
                        for item in items {
                            let id = item.get(key).ok_or_else(|| {
                                format!("{path}: map: {item} does not contain declared merge key: {key}")
                            })?;
                            let position = original.iter().position(|o| o.get(key) == Some(id));
                            if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                                original.retain(|o| o.get(key) != Some(id));
                                continue;
                            }
                            match position {
                                Some(i) => smp(rt, &mut original[i], item, path)?,
                                None => {
                                    let mut fresh = Value::Null;
                                    smp(rt, &mut fresh, item, path)?;
                                    original.push(fresh);
                                }
                            }
                        }
                    }
                    ListKind::Set => {
                        for item in items {
                            if !original.contains(item) {
                                original.push(item.clone());
                            }
                        }
                    }
                    ListKind::Atomic => *original = items.clone(),
                }
                Ok(())
            }
            _ => {
                *target = match patch {
                    Value::Object(map) => Value::Object(strip(map.clone())),
                    other => other.clone(),
                };
                Ok(())
            }
        },
    }
}

/// Removes patch directives and nulls from a new subtree.
fn strip(mut map: Map<String, Value>) -> Map<String, Value> {
    map.retain(|k, v| !k.starts_with('$') && !v.is_null());
    for value in map.values_mut() {
        if let Value::Object(inner) = value {
            *value = Value::Object(strip(std::mem::take(inner)));
        } else if let Value::Array(items) = value {
            for item in items.iter_mut() {
                if let Value::Object(inner) = item {
                    *item = Value::Object(strip(std::mem::take(inner)));
                }
            }
        }
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Server-side apply
// ---------------------------------------------------------------------------------------------

/// A set of field paths, each a `/`-joined list of FieldsV1 segments (`f:spec`, `k:{"name":"a"}`, `v:"x"`, `.`).
pub type FieldSet = BTreeSet<String>;

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Manager {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

/// Reads `metadata.managedFields`.
pub fn managers(object: &Value) -> Vec<Manager> {
    let Some(entries) = object.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| {
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let mut fields = FieldSet::new();
            if let Some(tree) = e.get("fieldsV1") {
                flatten(tree, "", &mut fields);
            }
            Manager {
                manager: text("manager"),
                operation: text("operation"),
                api_version: text("apiVersion"),
                time: text("time"),
                subresource: text("subresource"),
                fields,
            }
        })
        .collect()
}

fn flatten(tree: &Value, prefix: &str, out: &mut FieldSet) {
    if let Some(map) = tree.as_object() {
        for (segment, child) in map {
            let path = if prefix.is_empty() { segment.clone() } else { format!("{prefix}/{segment}") };
            if segment == "." || child.as_object().is_none_or(Map::is_empty) {
                out.insert(path.clone());
            }
            flatten(child, &path, out);
        }
    }
}

/// Writes `metadata.managedFields`.
pub fn set_managers(object: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut tree = Map::new();
            for path in &m.fields {
                let mut cursor = &mut tree;
                for segment in split_path(path) {
                    let next = cursor.entry(segment.to_string()).or_insert_with(|| json!({}));
                    cursor = match next.as_object_mut() {
                        Some(map) => map,
                        None => break,
                    };
                }
            }
            let mut entry = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": tree,
            });
            if !m.subresource.is_empty() {
                entry["subresource"] = json!(m.subresource);
            }
            entry
        })
        .collect();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Splits a path into segments; `/` inside `k:{…}` or `v:"…"` does not split.
fn split_path(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut start = 0;
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'{' if !quoted => depth += 1,
            b'}' if !quoted => depth -= 1,
            b'/' if !quoted && depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&path[start..]);
    out
}

/// Metadata fields that field management tracks.
const TRACKED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// The leaf fields an object sets, as server-side apply counts them.
pub fn fields_of(rt: &ResourceType, object: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    if let Some(map) = object.as_object() {
        for (key, value) in map {
            match key.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    if let Some(meta) = value.as_object() {
                        for field in TRACKED_METADATA {
                            if let Some(v) = meta.get(*field) {
                                collect(
                                    rt,
                                    v,
                                    &format!("metadata.{field}"),
                                    &format!("f:metadata/f:{field}"),
                                    &mut out,
                                );
                            }
                        }
                    }
                }
                _ => collect(rt, value, key, &format!("f:{key}"), &mut out),
            }
        }
    }
    out
}

fn item_key(keys: &[String], item: &Value) -> Option<String> {
    let mut id = Map::new();
    for key in keys {
        if let Some(v) = item.get(key) {
            id.insert(key.clone(), v.clone());
        }
    }
    if id.is_empty() { None } else { Some(format!("k:{}", Value::Object(id))) }
}

fn collect(rt: &ResourceType, value: &Value, path: &str, fields: &str, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                collect(rt, child, &join(path, key), &format!("{fields}/f:{key}"), out);
            }
        }
        Value::Array(items) => match list_kind(rt, path) {
            ListKind::Map(keys) => {
                for item in items {
                    match item_key(keys, item) {
                        Some(id) => {
                            let item_fields = format!("{fields}/{id}");
                            out.insert(format!("{item_fields}/."));
                            if let Some(map) = item.as_object() {
                                for (key, child) in map {
                                    collect(rt, child, &join(path, key), &format!("{item_fields}/f:{key}"), out);
                                }
                            }
                        }
                        None => {
                            out.insert(fields.to_string());
                        }
                    }
                }
            }
            ListKind::Set => {
                for item in items {
                    out.insert(format!("{fields}/v:{item}"));
                }
            }
            ListKind::Atomic => {
                out.insert(fields.to_string());
            }
        },
        _ => {
            out.insert(fields.to_string());
        }
    }
}

/// The value at a field path, if present.
fn value_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cursor = object;
    for segment in split_path(path) {
        cursor = step(cursor, segment)?;
    }
    Some(cursor)
}

fn step<'a>(cursor: &'a Value, segment: &str) -> Option<&'a Value> {
    if segment == "." {
        return Some(cursor);
    }
    if let Some(name) = segment.strip_prefix("f:") {
        return cursor.get(name);
    }
    if let Some(id) = segment.strip_prefix("k:") {
        let id: Map<String, Value> = serde_json::from_str(id).ok()?;
        return cursor.as_array()?.iter().find(|item| id.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    if let Some(v) = segment.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).ok()?;
        return cursor.as_array()?.iter().find(|item| **item == v);
    }
    None
}

/// Removes the field at a path (a key, a keyed list item, a set member).
fn remove_at(object: &mut Value, path: &str) {
    let segments = split_path(path);
    let Some((last, parents)) = segments.split_last() else { return };
    let (last, parents) = if *last == "." {
        match parents.split_last() {
            Some((l, p)) => (*l, p),
            None => return,
        }
    } else {
        (*last, parents)
    };
    let mut cursor = object;
    for segment in parents {
        let next = if let Some(name) = segment.strip_prefix("f:") {
            cursor.get_mut(name)
        } else if let Some(id) = segment.strip_prefix("k:") {
            let Ok(id) = serde_json::from_str::<Map<String, Value>>(id) else { return };
            cursor.as_array_mut().and_then(|a| a.iter_mut().find(|item| id.iter().all(|(k, v)| item.get(k) == Some(v))))
        } else {
            None
        };
        match next {
            Some(n) => cursor = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(map) = cursor.as_object_mut() {
            map.remove(name);
        }
    } else if let Some(id) = last.strip_prefix("k:") {
        if let (Ok(id), Some(list)) = (serde_json::from_str::<Map<String, Value>>(id), cursor.as_array_mut()) {
            list.retain(|item| !id.iter().all(|(k, v)| item.get(k) == Some(v)));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(v), Some(list)) = (serde_json::from_str::<Value>(v), cursor.as_array_mut())
    {
        list.retain(|item| *item != v);
    }
}

/// Merges an applied configuration into the live object: maps recursively, keyed lists item by item,
/// set lists as a union, everything else replaced.
fn merge_applied(rt: &ResourceType, live: &mut Value, applied: &Value, path: &str) {
    match (live.as_object_mut(), applied.as_object()) {
        (Some(target), Some(source)) => {
            for (key, value) in source {
                let child = join(path, key);
                match target.get_mut(key) {
                    Some(existing) if !value.is_null() => merge_applied(rt, existing, value, &child),
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        _ => match (live.as_array_mut(), applied.as_array()) {
            (Some(target), Some(source)) => match list_kind(rt, path) {
                ListKind::Map(keys) => {
                    for item in source {
                        let id = item_key(keys, item);
                        let found = id.as_ref().and_then(|id| {
                            let id: Map<String, Value> = serde_json::from_str(id.trim_start_matches("k:")).ok()?;
                            target.iter().position(|t| id.iter().all(|(k, v)| t.get(k) == Some(v)))
                        });
                        match found {
                            Some(i) => merge_applied(rt, &mut target[i], item, path),
                            None => target.push(item.clone()),
                        }
                    }
                }
                ListKind::Set => {
                    for item in source {
                        if !target.contains(item) {
                            target.push(item.clone());
                        }
                    }
                }
                ListKind::Atomic => *target = source.clone(),
            },
            _ => *live = applied.clone(),
        },
    }
}

/// A server-side apply that conflicts with other managers' fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyConflict(pub Vec<(String, String)>);

impl ApplyConflict {
    /// The API server's message: `Apply failed with N conflict(s): conflict with "m": .spec.x`.
    pub fn message(&self) -> String {
        let lines: Vec<String> = self.0.iter().map(|(m, f)| format!("conflict with \"{m}\": {}", dotted(f))).collect();
        let n = self.0.len();
        format!("Apply failed with {n} conflict{}: {}", if n == 1 { "" } else { "s" }, lines.join("\n"))
    }
}

/// `f:spec/f:replicas` → `.spec.replicas`, as conflict messages print paths.
pub fn dotted(path: &str) -> String {
    split_path(path)
        .iter()
        .filter(|s| **s != ".")
        .map(|s| match s.strip_prefix("f:") {
            Some(name) => format!(".{name}"),
            None => format!("[{}]", s.trim_start_matches("k:").trim_start_matches("v:")),
        })
        .collect()
}

/// Applies `applied` as `manager` onto `live` (None when the object is new) and updates the managed fields.
pub fn apply(
    rt: &ResourceType,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
    subresource: &str,
) -> Result<Value, ApplyConflict> {
    let new_fields = fields_of(rt, applied);
    let mut others = live.map(managers).unwrap_or_default();
    let previous = others
        .iter()
        .position(|m| m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        .map(|i| others.remove(i).fields)
        .unwrap_or_default();
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    if let Some(live) = live {
        let mut conflicts = Vec::new();
        for other in &others {
            for field in new_fields.intersection(&other.fields) {
                if value_at(live, field) != value_at(applied, field) && value_at(live, field).is_some() {
                    conflicts.push((other.manager.clone(), field.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(ApplyConflict(conflicts));
        }
        if force {
            for other in &mut others {
                other.fields.retain(|f| !new_fields.contains(f));
            }
        }
    }
    let mut applied_body = applied.clone();
    if let Some(meta) = applied_body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    merge_applied(rt, &mut result, &applied_body, "");
    let owned_by_others: BTreeSet<&String> = others.iter().flat_map(|m| m.fields.iter()).collect();
    for dropped in previous.difference(&new_fields) {
        if !owned_by_others.contains(dropped) && !new_fields.iter().any(|f| f.starts_with(&format!("{dropped}/"))) {
            remove_at(&mut result, dropped);
        }
    }
    others.push(Manager {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: applied.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
        time: now.to_string(),
        subresource: subresource.to_string(),
        fields: new_fields,
    });
    set_managers(&mut result, &others);
    Ok(result)
}

/// Records an update (create, replace, patch) by `manager`: it owns the fields it changed, and the
/// managers that owned them no longer do. Only objects that already carry managed fields are tracked,
/// which keeps the write path of objects nobody applies as cheap as a plain store.
pub fn record_update(rt: &ResourceType, old: &Value, new: &mut Value, manager: &str, now: &str, subresource: &str) {
    let mut entries = managers(old);
    if entries.is_empty() {
        return;
    }
    let before = fields_of(rt, old);
    let after = fields_of(rt, new);
    let changed: BTreeSet<String> =
        after.iter().filter(|f| !before.contains(*f) || value_at(old, f) != value_at(new, f)).cloned().collect();
    let removed: BTreeSet<&String> = before.difference(&after).collect();
    for entry in &mut entries {
        entry.fields.retain(|f| !changed.contains(f) && !removed.contains(f));
    }
    if !changed.is_empty() {
        let api_version = new.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        match entries
            .iter_mut()
            .find(|m| m.manager == manager && m.operation == "Update" && m.subresource == subresource)
        {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now.to_string();
            }
            None => entries.push(Manager {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: now.to_string(),
                subresource: subresource.to_string(),
                fields: changed,
            }),
        }
    }
    set_managers(new, &entries);
}

/// Managers by name with their field sets, for tests and `kubectl`-style inspection.
pub fn owners(object: &Value) -> BTreeMap<String, FieldSet> {
    managers(object).into_iter().map(|m| (format!("{}/{}", m.manager, m.operation), m.fields)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::builtins;

    fn pods() -> ResourceType {
        builtins().into_iter().find(|t| t.plural == "pods").expect("pods")
    }

    fn deployments() -> ResourceType {
        builtins().into_iter().find(|t| t.plural == "deployments").expect("deployments")
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_conditions_by_type() {
        let mut pod = json!({
            "metadata": {"finalizers": ["a"]},
            "spec": {"containers": [{"name": "app", "image": "v1"}, {"name": "side", "image": "s"}], "tolerations": [{"key": "x"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}
        });
        let patch = json!({
            "metadata": {"finalizers": ["b"]},
            "spec": {"containers": [{"name": "app", "image": "v2"}, {"name": "side", "$patch": "delete"}], "tolerations": [{"key": "y"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        strategic_merge(&pods(), &mut pod, &patch).expect("applies");
        assert_eq!(pod["spec"]["containers"], json!([{"name": "app", "image": "v2"}]));
        assert_eq!(pod["spec"]["tolerations"], json!([{"key": "y"}]), "tolerations are atomic, as in kube-apiserver");
        assert_eq!(pod["status"]["conditions"][0], json!({"type": "Ready", "status": "True"}));
        assert_eq!(pod["status"]["conditions"][1]["type"], "PodScheduled");
        assert_eq!(pod["metadata"]["finalizers"], json!(["a", "b"]));
        strategic_merge(&pods(), &mut pod, &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}))
            .expect("applies");
        assert_eq!(pod["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn apply_takes_ownership_and_removes_fields_it_no_longer_applies() {
        let rt = deployments();
        let first = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        let live = apply(&rt, None, &first, "alice", false, "t", "").expect("applies");
        assert_eq!(live["metadata"]["labels"], json!({"a": "1", "b": "2"}));
        let second = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let live = apply(&rt, Some(&live), &second, "alice", false, "t", "").expect("applies");
        assert_eq!(live["metadata"]["labels"], json!({"a": "1"}), "label b was dropped from alice's config");
        let owners = owners(&live);
        assert!(owners["alice/Apply"].contains("f:spec/f:replicas"));
    }

    #[test]
    fn apply_conflicts_with_another_managers_field_unless_forced() {
        let rt = deployments();
        let base =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let live = apply(&rt, None, &base, "alice", false, "t", "").expect("applies");
        let bob =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3}});
        let conflict = apply(&rt, Some(&live), &bob, "bob", false, "t", "").expect_err("conflicts");
        assert_eq!(conflict.message(), "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas");
        let forced = apply(&rt, Some(&live), &bob, "bob", true, "t", "").expect("forced");
        assert_eq!(forced["spec"]["replicas"], 3);
        let owners = owners(&forced);
        assert!(!owners.get("alice/Apply").is_some_and(|f| f.contains("f:spec/f:replicas")));
        assert!(owners["bob/Apply"].contains("f:spec/f:replicas"));
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_from_the_appliers() {
        let rt = deployments();
        let base =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let live = apply(&rt, None, &base, "alice", false, "t", "").expect("applies");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(&rt, &live, &mut scaled, "kubectl", "t", "");
        let owners = owners(&scaled);
        assert!(owners["kubectl/Update"].contains("f:spec/f:replicas"));
        assert!(!owners.contains_key("alice/Apply") || !owners["alice/Apply"].contains("f:spec/f:replicas"));
    }

    #[test]
    fn field_paths_round_trip_through_fields_v1() {
        let rt = pods();
        let pod = json!({"metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["x/y"]}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let fields = fields_of(&rt, &pod);
        let mut holder = json!({"metadata": {}});
        set_managers(
            &mut holder,
            &[Manager {
                manager: "m".into(),
                operation: "Apply".into(),
                api_version: "v1".into(),
                time: "t".into(),
                subresource: String::new(),
                fields: fields.clone(),
            }],
        );
        assert_eq!(managers(&holder)[0].fields, fields);
        assert!(fields.contains("f:spec/f:containers/k:{\"name\":\"c\"}/f:image"));
        assert!(fields.contains("f:metadata/f:finalizers/v:\"x/y\""));
    }
}
