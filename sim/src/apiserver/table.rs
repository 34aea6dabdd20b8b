//! `meta.k8s.io/v1` Tables, which `kubectl get` asks for: pods, nodes, workloads, CRD printer columns, and
//! name and age for everything else.

use serde_json::{Value, json};

use super::registry::ResourceType;

/// A compact age, as kubectl prints it: `45s`, `3m12s`, `17m`, `5h3m`, `2d`.
pub fn age(created: &str) -> String {
    let Ok(created) = created.parse::<jiff::Timestamp>() else { return "<unknown>".into() };
    let seconds = (jiff::Timestamp::now().as_second() - created.as_second()).max(0);
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        format!("{m}m{}s", seconds % 60)
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        format!("{d}d{}h", h % 24)
    } else {
        format!("{d}d")
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn column(name: &str, kind: &str, priority: i64) -> Value {
    json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" }, "description": name, "priority": priority})
}

fn condition_true(v: &Value, pointer: &str, kind: &str) -> Option<bool> {
    v.pointer(pointer)?.as_array()?.iter().find(|c| c["type"] == kind).map(|c| c["status"] == "True")
}

fn pod_status(pod: &Value) -> String {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let waiting = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|s| s.iter().find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str)));
    if let Some(reason) = waiting {
        return reason.to_string();
    }
    let reason = text(pod, "/status/reason");
    if !reason.is_empty() {
        return reason.to_string();
    }
    let phase = text(pod, "/status/phase");
    if phase.is_empty() { "Pending".into() } else { phase.to_string() }
}

/// A minimal JSONPath for printer columns: `.a.b`, `[N]`, and `[?(@.k=="v")]`.
pub fn json_path(value: &Value, path: &str) -> Value {
    let mut current = vec![value.clone()];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix('.') {
            // A field ends at the first `.` or `[` that is not escaped (`node\.kubernetes\.io/…`).
            let bytes = tail.as_bytes();
            let mut end = 0;
            while end < bytes.len()
                && !((bytes[end] == b'.' || bytes[end] == b'[') && (end == 0 || bytes[end - 1] != b'\\'))
            {
                end += 1;
            }
            let field = tail[..end].replace("\\.", ".");
            current = current.iter().filter_map(|v| v.get(&field).cloned()).collect();
            rest = &tail[end..];
        } else if let Some(tail) = rest.strip_prefix('[') {
            let Some(end) = tail.find(']') else { return Value::Null };
            let inner = &tail[..end];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, wanted) = filter.split_once("==").unwrap_or((filter, ""));
                let wanted = wanted.trim().trim_matches('"').trim_matches('\'');
                current = current
                    .iter()
                    .filter_map(Value::as_array)
                    .flat_map(|items| {
                        items.iter().filter(|i| i.get(field.trim()).and_then(Value::as_str) == Some(wanted)).cloned()
                    })
                    .collect();
            } else if let Ok(i) = inner.parse::<usize>() {
                current = current.iter().filter_map(|v| v.get(i).cloned()).collect();
            } else {
                return Value::Null;
            }
            rest = &tail[end + 1..];
        } else {
            return Value::Null;
        }
    }
    current.into_iter().next().unwrap_or(Value::Null)
}

fn cell(value: Value) -> Value {
    match value {
        Value::Null => json!("<none>"),
        other => other,
    }
}

/// The Table for some objects of a kind.
pub fn table(rt: &ResourceType, objects: &[Value], rv: &str) -> Value {
    let (columns, rows): (Vec<Value>, Vec<Vec<Value>>) = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => (
            vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "string", 0),
                column("Age", "string", 0),
                column("IP", "string", 1),
                column("Node", "string", 1),
                column("Nominated Node", "string", 1),
                column("Readiness Gates", "string", 1),
            ],
            objects
                .iter()
                .map(|p| {
                    let total = p.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
                    let statuses = p.pointer("/status/containerStatuses").and_then(Value::as_array);
                    let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
                    let restarts: i64 =
                        statuses.map_or(0, |s| s.iter().filter_map(|c| c["restartCount"].as_i64()).sum());
                    let ip = text(p, "/status/podIP");
                    let node = text(p, "/spec/nodeName");
                    let nominated = text(p, "/status/nominatedNodeName");
                    vec![
                        json!(text(p, "/metadata/name")),
                        json!(format!("{ready}/{total}")),
                        json!(pod_status(p)),
                        json!(restarts.to_string()),
                        json!(age(text(p, "/metadata/creationTimestamp"))),
                        json!(if ip.is_empty() { "<none>" } else { ip }),
                        json!(if node.is_empty() { "<none>" } else { node }),
                        json!(if nominated.is_empty() { "<none>" } else { nominated }),
                        json!("<none>"),
                    ]
                })
                .collect(),
        ),
        ("", "nodes") => (
            vec![
                column("Name", "string", 0),
                column("Status", "string", 0),
                column("Roles", "string", 0),
                column("Age", "string", 0),
                column("Version", "string", 0),
                column("Internal-IP", "string", 1),
                column("External-IP", "string", 1),
                column("OS-Image", "string", 1),
                column("Kernel-Version", "string", 1),
                column("Container-Runtime", "string", 1),
            ],
            objects
                .iter()
                .map(|n| {
                    let mut status = match condition_true(n, "/status/conditions", "Ready") {
                        Some(true) => "Ready".to_string(),
                        Some(false) => "NotReady".to_string(),
                        None => "Unknown".to_string(),
                    };
                    if n.pointer("/spec/unschedulable") == Some(&json!(true)) {
                        status.push_str(",SchedulingDisabled");
                    }
                    let address = |kind: &str| {
                        n.pointer("/status/addresses")
                            .and_then(Value::as_array)
                            .and_then(|a| a.iter().find(|a| a["type"] == kind))
                            .and_then(|a| a["address"].as_str())
                            .unwrap_or("<none>")
                            .to_string()
                    };
                    vec![
                        json!(text(n, "/metadata/name")),
                        json!(status),
                        json!("<none>"),
                        json!(age(text(n, "/metadata/creationTimestamp"))),
                        json!(text(n, "/status/nodeInfo/kubeletVersion")),
                        json!(address("InternalIP")),
                        json!(address("ExternalIP")),
                        json!(text(n, "/status/nodeInfo/osImage")),
                        json!(text(n, "/status/nodeInfo/kernelVersion")),
                        json!(text(n, "/status/nodeInfo/containerRuntimeVersion")),
                    ]
                })
                .collect(),
        ),
        ("apps", "deployments" | "replicasets" | "daemonsets") => (
            vec![
                column("Name", "string", 0),
                column("Desired", "integer", 0),
                column("Ready", "integer", 0),
                column("Available", "integer", 0),
                column("Age", "string", 0),
            ],
            objects
                .iter()
                .map(|d| {
                    let desired = d
                        .pointer("/spec/replicas")
                        .or(d.pointer("/status/desiredNumberScheduled"))
                        .cloned()
                        .unwrap_or(json!(0));
                    let ready = d
                        .pointer("/status/readyReplicas")
                        .or(d.pointer("/status/numberReady"))
                        .cloned()
                        .unwrap_or(json!(0));
                    let available = d
                        .pointer("/status/availableReplicas")
                        .or(d.pointer("/status/numberAvailable"))
                        .cloned()
                        .unwrap_or(json!(0));
                    vec![
                        json!(text(d, "/metadata/name")),
                        desired,
                        ready,
                        available,
                        json!(age(text(d, "/metadata/creationTimestamp"))),
                    ]
                })
                .collect(),
        ),
        _ if !rt.printer_columns.is_empty() => {
            let mut columns = vec![column("Name", "string", 0)];
            columns.extend(rt.printer_columns.iter().map(|(name, kind, _, priority)| column(name, kind, *priority)));
            let rows = objects
                .iter()
                .map(|o| {
                    let mut row = vec![json!(text(o, "/metadata/name"))];
                    for (_, kind, path, _) in &rt.printer_columns {
                        let v = json_path(o, path);
                        row.push(if kind == "date" {
                            json!(v.as_str().map(age).unwrap_or_else(|| "<unknown>".into()))
                        } else {
                            cell(v)
                        });
                    }
                    row
                })
                .collect();
            (columns, rows)
        }
        _ => (
            vec![column("Name", "string", 0), column("Age", "string", 0)],
            objects
                .iter()
                .map(|o| vec![json!(text(o, "/metadata/name")), json!(age(text(o, "/metadata/creationTimestamp")))])
                .collect(),
        ),
    };
    let rows: Vec<Value> = objects
        .iter()
        .zip(rows)
        .map(|(o, cells)| {
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or_default()}
            })
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths_select_conditions_by_type() {
        let claim = json!({"status": {"conditions": [{"type": "Launched", "status": "True"}, {"type": "Ready", "status": "False"}]}, "spec": {"a": [1, 2]}});
        assert_eq!(json_path(&claim, ".status.conditions[?(@.type==\"Ready\")].status"), json!("False"));
        assert_eq!(json_path(&claim, ".spec.a[1]"), json!(2));
        assert_eq!(json_path(&claim, ".missing"), Value::Null);
        let node = json!({"metadata": {"labels": {"node.kubernetes.io/instance-type": "m5.large"}}});
        assert_eq!(json_path(&node, ".metadata.labels.node\\.kubernetes\\.io/instance-type"), json!("m5.large"));
    }
}
