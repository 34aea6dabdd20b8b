//! The CustomResourceDefinitions Rafter serves, generated from the Rust types so they cannot drift.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use super::legacy::{AWSNodeTemplate, Provisioner};
use super::{EC2NodeClass, NodeClaim, NodePool};

/// Every CRD: the v1 kinds, then the legacy kinds, with the file name each is kept under in `deploy/crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    let mut crds = vec![
        ("karpenter.sh_nodepools.yaml", NodePool::crd()),
        ("karpenter.sh_nodeclaims.yaml", NodeClaim::crd()),
        ("karpenter.k8s.aws_ec2nodeclasses.yaml", EC2NodeClass::crd()),
        ("karpenter.sh_provisioners.yaml", Provisioner::crd()),
        ("karpenter.k8s.aws_awsnodetemplates.yaml", AWSNodeTemplate::crd()),
    ];
    for (_, crd) in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(status) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| s.properties.as_mut())
                .and_then(|p| p.get_mut("status"))
            {
                strip_rules(status);
            }
        }
    }
    crds
}

/// Drops the CEL rules of a subtree. Status is written by Rafter, not users, and status types share
/// spec types (an AMI's requirements): rules there only add to the CRD's estimated cost, which
/// kube-apiserver caps, as Karpenter's own CRDs keep `status` free of rules.
fn strip_rules(schema: &mut JSONSchemaProps) {
    schema.x_kubernetes_validations = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_rules(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        strip_rules(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_rules(extra);
    }
}

/// One CRD as the YAML document `rafter crds` prints and `deploy/crds/` holds.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for (_, crd) in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

/// Why `schema` is not a structural schema the API server accepts, one line per problem.
///
/// Checks what Kubernetes requires of CRD schemas: every node typed (unless int-or-string or
/// preserving unknown fields), no `additionalProperties` beside `properties`, no references, a
/// single `items` schema, and junctors (`anyOf`, `allOf`, `oneOf`, `not`) holding validations only.
pub fn structural_problems(schema: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    check_node(schema, "", false, &mut problems);
    if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        problems.push("the root must have type: object".into());
    }
    if let Some(meta) = schema.pointer("/properties/metadata") {
        let extra: Vec<&String> =
            meta.as_object().into_iter().flat_map(|m| m.keys()).filter(|k| *k != "type").collect();
        if !extra.is_empty() {
            problems.push(format!(".metadata may only be typed, found {extra:?}"));
        }
    }
    problems
}

fn check_node(node: &serde_json::Value, path: &str, in_junctor: bool, problems: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        problems.push(format!("{path}: a schema must be an object"));
        return;
    };
    let here = if path.is_empty() { "<root>" } else { path };
    let flag = |k: &str| map.get(k).and_then(|v| v.as_bool()) == Some(true);
    if map.contains_key("$ref") || map.contains_key("definitions") || map.contains_key("$defs") {
        problems.push(format!("{here}: references are not allowed"));
    }
    if in_junctor {
        for k in ["type", "description", "default", "nullable", "additionalProperties"] {
            if map.contains_key(k) {
                problems.push(format!("{here}: {k} is not allowed inside anyOf/allOf/oneOf/not"));
            }
        }
    } else if !map.contains_key("type")
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        problems.push(format!("{here}: has no type"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{here}: additionalProperties beside properties"));
    }
    if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            check_node(child, &format!("{path}.{name}"), in_junctor, problems);
        }
    }
    match map.get("items") {
        Some(items) if items.is_object() => check_node(items, &format!("{path}[]"), in_junctor, problems),
        Some(_) => problems.push(format!("{here}: items must be one schema")),
        None if map.get("type").and_then(|t| t.as_str()) == Some("array") && !in_junctor => {
            problems.push(format!("{here}: an array needs items"))
        }
        None => {}
    }
    if let Some(extra) = map.get("additionalProperties")
        && extra.is_object()
    {
        check_node(extra, &format!("{path}.*"), in_junctor, problems);
    }
    for junctor in ["anyOf", "allOf", "oneOf"] {
        for (i, child) in map.get(junctor).and_then(|j| j.as_array()).into_iter().flatten().enumerate() {
            check_node(child, &format!("{path}.{junctor}[{i}]"), true, problems);
        }
    }
    if let Some(not) = map.get("not") {
        check_node(not, &format!("{path}.not"), true, problems);
    }
}
