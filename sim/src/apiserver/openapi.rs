//! OpenAPI v3 as kube-apiserver publishes it: a root listing each group-version, and per
//! group-version a document whose schemas carry their group-version-kind, so `kubectl explain`
//! finds a custom resource's fields, and whose PATCH operations declare `fieldValidation`, so
//! kubectl leaves validation to the server as it does against a real one.
//!
//! Custom resources are published with their CRD's schema; built-in kinds with an open object
//! schema (their fields are not described).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::registry::ResourceType;

/// `apis/{group}/{version}`, or `api/v1` for the core group.
fn gv_path(t: &ResourceType) -> String {
    if t.group.is_empty() { format!("api/{}", t.version) } else { format!("apis/{}/{}", t.group, t.version) }
}

/// The component name kube-apiserver gives a kind: the group reversed, then version and kind.
fn component(t: &ResourceType) -> String {
    let group: Vec<&str> = t.group.split('.').rev().collect();
    if t.group.is_empty() {
        format!("io.k8s.api.core.{}.{}", t.version, t.kind)
    } else {
        format!("{}.{}.{}", group.join("."), t.version, t.kind)
    }
}

/// The document of one group-version (`gv` as `apis/karpenter.sh/v1`), or `None` when not served.
pub fn group_version(types: &[Arc<ResourceType>], gv: &str) -> Option<Value> {
    let served: Vec<&Arc<ResourceType>> = types.iter().filter(|t| gv_path(t) == gv).collect();
    if served.is_empty() {
        return None;
    }
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for t in served {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let mut schema = match &t.schema {
            Some(s) => s.schema().clone(),
            None => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        };
        if let Some(map) = schema.as_object_mut() {
            map.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
        let name = component(t);
        let scope = if t.namespaced { "namespaces/{namespace}/" } else { "" };
        let field_validation = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
            "description": "Ignore, Warn (the default) or Strict: what to do about fields the type does not declare"});
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        paths.insert(
            format!("/{gv}/{scope}{}/{{name}}", t.plural),
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "patch",
                "parameters": [field_validation],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}}
            }}),
        );
        schemas.insert(name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
}

/// The root: each served group-version and where its document is, with a hash that changes with it.
pub fn root(types: &[Arc<ResourceType>]) -> Value {
    let mut gvs: Vec<String> = types.iter().map(|t| gv_path(t)).collect();
    gvs.sort();
    gvs.dedup();
    let mut paths = Map::new();
    for gv in gvs {
        let hash = group_version(types, &gv).map(|d| fnv(d.to_string().as_bytes())).unwrap_or_default();
        paths.insert(gv.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash:016X}")}));
    }
    json!({"paths": paths})
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
