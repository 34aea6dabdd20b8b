//! The generated CRDs are structural, their CEL rules compile, and `deploy/crds/` holds them.

use super::read;
use crate::api::crds::{all, structural_problems, to_yaml};

fn schemas() -> Vec<(String, serde_json::Value)> {
    all()
        .into_iter()
        .flat_map(|(file, crd)| {
            crd.spec.versions.into_iter().map(move |v| {
                let schema = v.schema.and_then(|s| s.open_api_v3_schema).expect("every version has a schema");
                (format!("{file} {}", v.name), serde_json::to_value(schema).expect("schema serialises"))
            })
        })
        .collect()
}

#[test]
fn every_crd_schema_is_structural() {
    for (name, schema) in schemas() {
        let problems = structural_problems(&schema);
        assert!(problems.is_empty(), "{name}:\n{}", problems.join("\n"));
    }
}

#[test]
fn the_structural_check_finds_untyped_nodes_and_mixed_properties() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"description": "untyped"},
            "b": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "c": {"anyOf": [{"type": "integer"}]}
        }
    });
    let problems = structural_problems(&bad);
    assert_eq!(
        problems,
        [
            ".a: has no type",
            ".b: additionalProperties beside properties",
            ".c: has no type",
            ".c.anyOf[0]: type is not allowed inside anyOf/allOf/oneOf/not"
        ]
    );
}

#[test]
fn every_cel_rule_in_every_crd_compiles() {
    let mut rules = 0;
    for (name, schema) in schemas() {
        let compiled = kube::core::cel::compile_schema(&schema);
        let errors: Vec<String> = compiled.compilation_errors().iter().map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {}", errors.join("\n"));
        rules += serde_json::to_string(&schema).expect("json").matches("x-kubernetes-validations").count();
    }
    assert!(rules >= 15, "the CRDs carry their CEL rules ({rules} found)");
}

#[test]
fn the_crds_in_deploy_are_the_ones_the_code_generates() {
    for (file, crd) in all() {
        let generated = to_yaml(&crd).expect("serialises");
        let on_disk = read(&format!("deploy/crds/{file}"));
        assert!(
            on_disk == generated,
            "deploy/crds/{file} is stale; regenerate with: cargo run -p rafter-actors --bin rafter -- crds --dir deploy/crds"
        );
    }
}

#[test]
fn the_printed_crds_are_every_kind_once() {
    let names: Vec<String> = all().into_iter().map(|(_, c)| c.metadata.name.unwrap_or_default()).collect();
    assert_eq!(
        names,
        [
            "nodepools.karpenter.sh",
            "nodeclaims.karpenter.sh",
            "ec2nodeclasses.karpenter.k8s.aws",
            "provisioners.karpenter.sh",
            "awsnodetemplates.karpenter.k8s.aws"
        ]
    );
}
