//! Protobuf request bodies, as kube-apiserver accepts them for built-in kinds: client-go's typed
//! clients (helm's release storage, `kubectl create namespace`) send them. The envelope is decoded
//! with kube-rs's `k8s-pb` bindings and turned into the JSON the rest of the server works on.
//!
//! Only the kinds such clients write are decoded; any other kind is refused naming it (415), so a
//! difference from kube-apiserver shows at once instead of as a wrong object.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

use super::error::ApiError;

/// The four bytes before every protobuf-encoded Kubernetes object.
const MAGIC: &[u8] = b"k8s\0";

fn refuse(message: impl Into<String>) -> ApiError {
    ApiError::new(415, "UnsupportedMediaType", message)
}

fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        map.insert(key.to_string(), v);
    }
}

fn strings(map: &BTreeMap<String, String>) -> Option<Value> {
    (!map.is_empty()).then(|| json!(map))
}

fn object_meta(m: &meta::ObjectMeta) -> Value {
    let mut out = Map::new();
    put(&mut out, "name", m.name.clone().map(Value::from));
    put(&mut out, "generateName", m.generate_name.clone().map(Value::from));
    put(&mut out, "namespace", m.namespace.clone().map(Value::from));
    put(&mut out, "uid", m.uid.clone().map(Value::from));
    put(&mut out, "resourceVersion", m.resource_version.clone().filter(|v| !v.is_empty()).map(Value::from));
    put(&mut out, "labels", strings(&m.labels));
    put(&mut out, "annotations", strings(&m.annotations));
    if !m.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(m.finalizers));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .iter()
            .map(|r| {
                let mut o = Map::new();
                put(&mut o, "apiVersion", r.api_version.clone().map(Value::from));
                put(&mut o, "kind", r.kind.clone().map(Value::from));
                put(&mut o, "name", r.name.clone().map(Value::from));
                put(&mut o, "uid", r.uid.clone().map(Value::from));
                put(&mut o, "controller", r.controller.map(Value::from));
                put(&mut o, "blockOwnerDeletion", r.block_owner_deletion.map(Value::from));
                Value::Object(o)
            })
            .collect();
        out.insert("ownerReferences".into(), Value::Array(refs));
    }
    Value::Object(out)
}

fn bytes_map(map: &BTreeMap<String, Vec<u8>>) -> Option<Value> {
    let engine = base64::engine::general_purpose::STANDARD;
    (!map.is_empty())
        .then(|| Value::Object(map.iter().map(|(k, v)| (k.clone(), Value::from(engine.encode(v)))).collect()))
}

fn decode<M: Message + Default>(raw: &[u8], kind: &str) -> Result<M, ApiError> {
    M::decode(raw).map_err(|e| ApiError::bad_request(format!("the {kind} in the protobuf body does not decode: {e}")))
}

/// The JSON of a protobuf-encoded body, with its `apiVersion` and `kind`.
pub fn to_json(body: &[u8]) -> Result<Value, ApiError> {
    let envelope =
        body.strip_prefix(MAGIC).ok_or_else(|| refuse("a protobuf body must start with the k8s\\0 prefix"))?;
    let unknown = Unknown::decode(envelope)
        .map_err(|e| ApiError::bad_request(format!("the protobuf envelope does not decode: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (type_meta.api_version.unwrap_or_default(), type_meta.kind.unwrap_or_default());
    let raw = unknown.raw.unwrap_or_default();
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::from(api_version.clone()));
    out.insert("kind".into(), Value::from(kind.clone()));
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns: core::Namespace = decode(&raw, &kind)?;
            put(&mut out, "metadata", ns.metadata.as_ref().map(object_meta));
            if let Some(spec) = ns.spec.filter(|s| !s.finalizers.is_empty()) {
                out.insert("spec".into(), json!({"finalizers": spec.finalizers}));
            }
        }
        ("v1", "Secret") => {
            let secret: core::Secret = decode(&raw, &kind)?;
            put(&mut out, "metadata", secret.metadata.as_ref().map(object_meta));
            put(&mut out, "data", bytes_map(&secret.data));
            put(&mut out, "stringData", strings(&secret.string_data));
            put(&mut out, "type", secret.r#type.map(Value::from));
            put(&mut out, "immutable", secret.immutable.map(Value::from));
        }
        ("v1", "ConfigMap") => {
            let map: core::ConfigMap = decode(&raw, &kind)?;
            put(&mut out, "metadata", map.metadata.as_ref().map(object_meta));
            put(&mut out, "data", strings(&map.data));
            put(&mut out, "binaryData", bytes_map(&map.binary_data));
            put(&mut out, "immutable", map.immutable.map(Value::from));
        }
        ("v1" | "meta.k8s.io/v1", "DeleteOptions") => {
            let options: meta::DeleteOptions = decode(&raw, &kind)?;
            put(&mut out, "gracePeriodSeconds", options.grace_period_seconds.map(Value::from));
            put(&mut out, "propagationPolicy", options.propagation_policy.map(Value::from));
            put(&mut out, "orphanDependents", options.orphan_dependents.map(Value::from));
            if let Some(p) = options.preconditions {
                let mut pre = Map::new();
                put(&mut pre, "uid", p.uid.map(Value::from));
                put(&mut pre, "resourceVersion", p.resource_version.map(Value::from));
                out.insert("preconditions".into(), Value::Object(pre));
            }
            if !options.dry_run.is_empty() {
                out.insert("dryRun".into(), json!(options.dry_run));
            }
        }
        _ => {
            return Err(refuse(format!(
                "the simulator decodes protobuf bodies of Namespaces, Secrets, ConfigMaps and DeleteOptions only, not {kind} ({api_version}); send JSON (kube-apiserver decodes every built-in kind)"
            )));
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    #[test]
    fn a_helm_release_secret_sent_as_protobuf_reads_as_its_json() {
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("sh.helm.release.v1.rafter.v1".into()),
                labels: [("owner".to_string(), "helm".to_string())].into(),
                ..Default::default()
            }),
            data: [("release".to_string(), b"H4sI".to_vec())].into(),
            r#type: Some("helm.sh/release.v1".into()),
            ..Default::default()
        };
        let json = to_json(&envelope("v1", "Secret", secret.encode_to_vec())).expect("decodes");
        assert_eq!(json["kind"], "Secret");
        assert_eq!(json["metadata"]["name"], "sh.helm.release.v1.rafter.v1");
        assert_eq!(json["metadata"]["labels"]["owner"], "helm");
        assert_eq!(json["data"]["release"], "SDRzSQ==");
        assert_eq!(json["type"], "helm.sh/release.v1");
    }

    #[test]
    fn a_kind_the_simulator_does_not_decode_is_refused_by_name_and_garbage_is_a_bad_request() {
        let refused = to_json(&envelope("apps/v1", "Deployment", Vec::new())).expect_err("refused");
        assert_eq!(refused.code, 415);
        assert!(refused.message.contains("Deployment"), "{}", refused.message);
        assert_eq!(to_json(b"k8s\0\xff\xff\xff").expect_err("garbage").code, 400);
        assert_eq!(to_json(b"{}").expect_err("no prefix").code, 415);
    }
}
