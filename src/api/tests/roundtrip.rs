//! Every example manifest survives YAML → typed object → JSON unchanged.

use k8s_openapi::api::apps::v1::Deployment;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{read, root};
use crate::api::manifest::{Object, parse_documents};

/// The example manifests shipped in `deploy/examples/`, as copied from `shared/examples/`.
const EXAMPLES: &[&str] = &[
    "deploy/examples/v1/nodepool-default.yaml",
    "deploy/examples/legacy/provisioner-arm.yaml",
    "deploy/examples/legacy/provisioner-spot-default.yaml",
    "deploy/examples/workloads/inflate.yaml",
];

fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(text).expect("example parses as YAML")
}

fn assert_round_trip<T: Serialize + DeserializeOwned>(original: &serde_json::Value, what: &str) {
    let typed: T = serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).expect("serialises");
    assert_eq!(&back, original, "{what} changed in a round trip");
}

#[test]
fn every_example_manifest_round_trips_through_its_type_unchanged() {
    let mut seen = 0;
    for path in EXAMPLES {
        for (i, doc) in documents(&read(path)).iter().enumerate() {
            let what = format!("{path} document {i}");
            match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
                (Some("karpenter.sh/v1"), Some("NodePool")) => assert_round_trip::<crate::api::NodePool>(doc, &what),
                (Some("karpenter.k8s.aws/v1"), Some("EC2NodeClass")) => {
                    assert_round_trip::<crate::api::EC2NodeClass>(doc, &what)
                }
                (Some("karpenter.sh/v1alpha5"), Some("Provisioner")) => {
                    assert_round_trip::<crate::api::legacy::Provisioner>(doc, &what)
                }
                (Some("karpenter.k8s.aws/v1alpha1"), Some("AWSNodeTemplate")) => {
                    assert_round_trip::<crate::api::legacy::AWSNodeTemplate>(doc, &what)
                }
                (Some("apps/v1"), Some("Deployment")) => assert_round_trip::<Deployment>(doc, &what),
                other => panic!("{what}: no type for {other:?}"),
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 7, "every document of every example was checked");
}

#[test]
fn the_manifest_reader_reads_every_example_with_its_line() {
    let docs = parse_documents(&read("deploy/examples/legacy/provisioner-arm.yaml")).expect("parses");
    assert_eq!(docs.len(), 2);
    assert!(matches!(&docs[0].object, Object::Provisioner(p) if p.spec.ttl_seconds_after_empty == Some(30)));
    assert!(matches!(&docs[1].object, Object::AWSNodeTemplate(_)));
    assert_eq!(docs[0].line, 1);
    assert_eq!(docs[1].line, 32, "the template starts after the --- on line 31");
}

#[test]
fn the_v1_example_reads_with_its_defaults_applied_by_accessors() {
    let docs = parse_documents(&read("deploy/examples/v1/nodepool-default.yaml")).expect("parses");
    let Object::NodePool(pool) = &docs[0].object else { panic!("first document is the NodePool") };
    assert_eq!(pool.spec.template.spec.requirements.len(), 4);
    assert_eq!(pool.spec.limits["cpu"].whole_units(), Ok(1000));
    assert_eq!(pool.spec.limits["memory"].whole_units(), Ok(1000 * 1024 * 1024 * 1024));
    assert_eq!(pool.spec.consolidate_after(), Some(std::time::Duration::from_secs(60)));
    assert_eq!(pool.spec.template.spec.expire_after().parse(), Ok(Some(std::time::Duration::from_secs(720 * 3600))));
    let Object::EC2NodeClass(class) = &docs[1].object else { panic!("second document is the EC2NodeClass") };
    assert_eq!(class.spec.role.as_deref(), Some("KarpenterNodeRole-demo"));
}

/// The copies in `deploy/examples/` must stay identical to the shared examples they came from.
#[test]
fn shipped_examples_match_the_shared_examples() {
    let shared = root().join("../shared/examples");
    if !shared.is_dir() {
        // A clone without the shared folder beside it (a newcomer's machine) has only the copies.
        return;
    }
    let mut compared = 0;
    for kind in std::fs::read_dir(&shared).expect("lists shared/examples") {
        let kind = kind.expect("entry").path();
        for file in std::fs::read_dir(&kind).expect("lists an examples folder") {
            let file = file.expect("entry").path();
            let relative = file.strip_prefix(&shared).expect("under shared").display().to_string();
            let original = std::fs::read_to_string(&file).expect("reads shared example");
            let copy = std::fs::read_to_string(root().join("deploy/examples").join(&relative))
                .unwrap_or_else(|_| panic!("deploy/examples/{relative} is missing; copy it from shared/examples"));
            assert_eq!(copy, original, "deploy/examples/{relative} differs from shared/examples/{relative}");
            compared += 1;
        }
    }
    assert!(compared >= 8, "every shared example was compared ({compared})");
}

#[test]
fn a_kubectl_list_of_legacy_objects_is_read_item_by_item() {
    let list = "apiVersion: v1
kind: List
items:
- apiVersion: karpenter.sh/v1alpha5
  kind: Provisioner
  metadata:
    name: p
    uid: 0b8f3c2e-1111-2222-3333-444455556666
    resourceVersion: \"42\"
  spec:
    providerRef:
      name: t
  status:
    lastScaleTime: \"2023-01-01T00:00:00Z\"
- apiVersion: v1
  kind: Secret
  metadata:
    name: s
";
    let errors = parse_documents(list).expect_err("the Secret is not Rafter's");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().starts_with("1: items[1]: unknown kind Secret"), "{}", errors[0]);
    let first_only = &list[..list.find("- apiVersion: v1").expect("second item")];
    let docs = parse_documents(first_only).expect("the Provisioner reads");
    assert!(matches!(&docs[0].object, Object::Provisioner(p) if p.metadata.name.as_deref() == Some("p")));
}
