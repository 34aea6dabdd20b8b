//! Legacy manifests convert to the expected v1 objects, and what v1 cannot express is reported.

use super::read;
use crate::api::convert::ConversionOptions;
use crate::api::manifest::{Object, convert_manifests, parse_documents};
use crate::api::nodepool::ConsolidationPolicy;
use crate::api::validation::{validate_ec2_node_class, validate_node_pool};

fn profile() -> ConversionOptions {
    ConversionOptions {
        default_instance_profile: Some("KarpenterNodeInstanceProfile-demo".into()),
        ..ConversionOptions::default()
    }
}

fn role() -> ConversionOptions {
    ConversionOptions { role: Some("KarpenterNodeRole-demo".into()), ..ConversionOptions::default() }
}

fn objects(yaml: &str) -> Vec<Object> {
    parse_documents(yaml).expect("converted YAML reads back").into_iter().map(|d| d.object).collect()
}

/// Converts, checks the result is valid v1 and equals the golden file, and returns the objects.
fn convert_example(name: &str, options: &ConversionOptions) -> Vec<Object> {
    let yaml = convert_manifests(&read(&format!("deploy/examples/legacy/{name}.yaml")), options)
        .unwrap_or_else(|e| panic!("{name} converts: {e:?}"));
    let converted = objects(&yaml);
    let expected = objects(&read(&format!("deploy/examples/legacy/{name}.v1.yaml")));
    assert_eq!(converted, expected, "{name} converts to deploy/examples/legacy/{name}.v1.yaml");
    for object in &converted {
        match object {
            Object::NodePool(p) => validate_node_pool(&p.spec).expect("converted NodePool is valid"),
            Object::EC2NodeClass(c) => validate_ec2_node_class(&c.spec).expect("converted EC2NodeClass is valid"),
            other => panic!("unexpected {other:?}"),
        }
    }
    converted
}

#[test]
fn the_spot_default_provisioner_becomes_a_spot_nodepool_that_never_expires() {
    let objects = convert_example("provisioner-spot-default", &profile());
    let [Object::NodePool(pool), Object::EC2NodeClass(class)] = &objects[..] else { panic!("{objects:?}") };
    assert_eq!(pool.metadata.name.as_deref(), Some("default"));
    let template = &pool.spec.template.spec;
    assert_eq!(template.requirements.len(), 1);
    assert_eq!(template.requirements[0].key, "karpenter.sh/capacity-type");
    assert_eq!(template.requirements[0].values, vec!["spot".to_string()]);
    assert_eq!(template.expire_after.as_ref().map(|d| d.0.as_str()), Some("Never"));
    assert_eq!(template.node_class_ref.name, "default");
    assert_eq!(template.node_class_ref.kind, "EC2NodeClass");
    let disruption = pool.spec.disruption.as_ref().expect("disruption set");
    assert_eq!(disruption.consolidation_policy, Some(ConsolidationPolicy::WhenEmpty));
    assert_eq!(disruption.consolidate_after.as_ref().map(|d| d.0.as_str()), Some("30s"));
    assert_eq!(pool.spec.limits["cpu"].whole_units(), Ok(1000));
    assert_eq!(class.spec.instance_profile.as_deref(), Some("KarpenterNodeInstanceProfile-demo"));
    assert_eq!(class.spec.subnet_selector_terms[0].tags["karpenter.sh/discovery"], "demo");
    assert_eq!(class.spec.ami_selector_terms[0].alias.as_deref(), Some("al2@latest"));
}

#[test]
fn the_arm_provisioner_keeps_its_labels_taints_requirements_and_expiry() {
    let objects = convert_example("provisioner-arm", &role());
    let [Object::NodePool(pool), Object::EC2NodeClass(class)] = &objects[..] else { panic!("{objects:?}") };
    let template = &pool.spec.template;
    assert_eq!(template.metadata.as_ref().map(|m| m.labels["type"].as_str()), Some("arm"));
    assert_eq!(template.spec.taints[0].key, "type");
    assert_eq!(template.spec.requirements.len(), 4);
    assert_eq!(template.spec.expire_after.as_ref().map(|d| d.0.as_str()), Some("5m"));
    assert_eq!(class.spec.role.as_deref(), Some("KarpenterNodeRole-demo"));
    assert_eq!(class.spec.tags["karpenter.sh/discovery"], "demo");
}

fn convert_error(yaml: &str, options: &ConversionOptions) -> String {
    let errors = convert_manifests(yaml, options).expect_err("conversion fails");
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

const TEMPLATE: &str = "apiVersion: karpenter.k8s.aws/v1alpha1
kind: AWSNodeTemplate
metadata:
  name: t
spec:
  subnetSelector:
    team: a
  securityGroupSelector:
    team: a
";

fn provisioner(spec: &str) -> String {
    format!(
        "apiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata:\n  name: p\nspec:\n  providerRef:\n    name: t\n{spec}---\n{TEMPLATE}"
    )
}

#[test]
fn a_template_without_an_instance_profile_is_reported_with_its_line_when_no_default_is_given() {
    let text =
        convert_error(&read("deploy/examples/legacy/provisioner-spot-default.yaml"), &ConversionOptions::default());
    assert!(text.starts_with("19: AWSNodeTemplate/default: spec.instanceProfile:"), "{text}");
    assert!(text.contains("--default-instance-profile"), "{text}");
}

#[test]
fn unknown_legacy_fields_are_reported_with_their_line_not_dropped() {
    let text = convert_error(&provisioner("  ttlSecondsAfterEmptyy: 30\n"), &profile());
    assert!(text.contains("ttlSecondsAfterEmptyy"), "{text}");
    assert!(text.starts_with("8:"), "the typo is on line 8: {text}");
    let text = convert_error(&provisioner("  taints:\n    - key: a\n      efect: NoSchedule\n"), &profile());
    assert!(text.contains("efect"), "{text}");
    let text = convert_error(&format!("{TEMPLATE}  subnetSelectorr: {{}}\n"), &profile());
    assert!(text.contains("subnetSelectorr") && text.starts_with("10:"), "{text}");
}

#[test]
fn malformed_yaml_and_unknown_kinds_are_rejected_with_their_line() {
    let text = convert_error("apiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata: [unclosed\n", &profile());
    assert!(text.starts_with('3') || text.starts_with('4'), "{text}");
    let text =
        convert_error(&format!("{TEMPLATE}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"), &profile());
    assert!(text.starts_with("11: unknown kind ConfigMap in v1"), "{text}");
    let text = convert_error("just a string\n", &profile());
    assert!(text.starts_with("1"), "{text}");
}

#[test]
fn consolidation_becomes_when_empty_or_underutilized_and_conflicts_with_an_empty_ttl() {
    let yaml = convert_manifests(&provisioner("  consolidation:\n    enabled: true\n"), &profile()).expect("converts");
    let Object::NodePool(pool) = &objects(&yaml)[0] else { panic!() };
    let disruption = pool.spec.disruption.as_ref().expect("disruption");
    assert_eq!(disruption.consolidation_policy, Some(ConsolidationPolicy::WhenEmptyOrUnderutilized));
    assert_eq!(disruption.consolidate_after.as_ref().map(|d| d.0.as_str()), Some("0s"));

    let text =
        convert_error(&provisioner("  consolidation:\n    enabled: true\n  ttlSecondsAfterEmpty: 30\n"), &profile());
    assert!(text.contains("Provisioner/p: spec.ttlSecondsAfterEmpty"), "{text}");
    let text = convert_error(&provisioner("  ttlSecondsUntilExpired: -5\n"), &profile());
    assert!(text.contains("spec.ttlSecondsUntilExpired: -5 is negative"), "{text}");
}

#[test]
fn the_provisioner_name_label_becomes_the_nodepool_label() {
    let spec = "  requirements:\n    - key: karpenter.sh/provisioner-name\n      operator: In\n      values: [p]\n";
    let yaml = convert_manifests(&provisioner(spec), &profile()).expect("converts");
    let Object::NodePool(pool) = &objects(&yaml)[0] else { panic!() };
    assert_eq!(pool.spec.template.spec.requirements[0].key, "karpenter.sh/nodepool");
}

#[test]
fn selector_ids_and_ami_selectors_become_v1_terms() {
    let template = "apiVersion: karpenter.k8s.aws/v1alpha1
kind: AWSNodeTemplate
metadata:
  name: t
spec:
  instanceProfile: prof
  subnetSelector:
    aws-ids: subnet-a1, subnet-b2
  securityGroupSelector:
    aws-ids: sg-1
  amiFamily: Bottlerocket
  amiSelector:
    aws::name: my-image-*
    aws::owners: self,123456789012
  launchTemplate: \"\"
";
    let text = convert_error(template, &profile());
    assert!(text.contains("spec.launchTemplate"), "{text}");
    let yaml = convert_manifests(&template.replace("  launchTemplate: \"\"\n", ""), &profile()).expect("converts");
    let Object::EC2NodeClass(class) = &objects(&yaml)[0] else { panic!() };
    let ids: Vec<_> = class.spec.subnet_selector_terms.iter().map(|t| t.id.clone().unwrap_or_default()).collect();
    assert_eq!(ids, ["subnet-a1", "subnet-b2"]);
    assert_eq!(class.spec.security_group_selector_terms[0].id.as_deref(), Some("sg-1"));
    assert_eq!(class.spec.ami_selector_terms.len(), 2, "one term per owner");
    assert_eq!(class.spec.ami_selector_terms[1].owner.as_deref(), Some("123456789012"));
    assert_eq!(class.spec.ami_selector_terms[1].name.as_deref(), Some("my-image-*"));
    assert_eq!(class.spec.ami_family, Some(crate::api::ec2nodeclass::AmiFamily::Bottlerocket));
    assert_eq!(class.spec.instance_profile.as_deref(), Some("prof"));
    validate_ec2_node_class(&class.spec).expect("valid");
}

#[test]
fn ubuntu_and_custom_without_a_selector_cannot_be_converted() {
    let ubuntu = format!("{TEMPLATE}  amiFamily: Ubuntu\n");
    assert!(convert_error(&ubuntu, &profile()).contains("spec.amiFamily: Ubuntu is not supported by v1"));
    let custom = format!("{TEMPLATE}  amiFamily: Custom\n");
    assert!(convert_error(&custom, &profile()).contains("spec.amiSelector: amiFamily Custom needs an amiSelector"));
}

#[test]
fn kubelet_settings_move_to_the_node_class_and_sharing_provisioners_must_agree() {
    let spec = "  kubeletConfiguration:\n    maxPods: 50\n";
    let yaml = convert_manifests(&provisioner(spec), &profile()).expect("converts");
    let converted = objects(&yaml);
    let Some(Object::EC2NodeClass(class)) = converted.iter().find(|o| matches!(o, Object::EC2NodeClass(_))) else {
        panic!("{converted:?}")
    };
    assert_eq!(class.spec.kubelet.as_ref().and_then(|k| k.max_pods), Some(50));

    let second = "---\napiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata:\n  name: q\nspec:\n  providerRef:\n    name: t\n";
    let text = convert_error(&format!("{}{second}", provisioner(spec)), &profile());
    assert!(text.contains("Provisioner/q: spec.kubeletConfiguration: differs from Provisioner p"), "{text}");
}

#[test]
fn an_inline_provider_becomes_a_node_class_named_after_the_provisioner() {
    let yaml = "apiVersion: karpenter.sh/v1alpha5
kind: Provisioner
metadata:
  name: inline
spec:
  provider:
    instanceProfile: prof
    subnetSelector:
      team: a
    securityGroupSelector:
      team: a
";
    let converted = objects(&convert_manifests(yaml, &ConversionOptions::default()).expect("converts"));
    let [Object::NodePool(pool), Object::EC2NodeClass(class)] = &converted[..] else { panic!("{converted:?}") };
    assert_eq!(pool.spec.template.spec.node_class_ref.name, "inline");
    assert_eq!(class.metadata.name.as_deref(), Some("inline"));
    assert_eq!(class.spec.instance_profile.as_deref(), Some("prof"));
}

#[test]
fn a_provisioner_without_a_provider_is_reported() {
    let yaml = "apiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata:\n  name: lonely\nspec: {}\n";
    let text = convert_error(yaml, &profile());
    assert!(text.contains("Provisioner/lonely: spec.providerRef"), "{text}");
}

#[test]
fn an_inline_provider_named_like_a_template_is_reported() {
    let yaml = format!(
        "{TEMPLATE}---\napiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata:\n  name: t\nspec:\n  provider:\n    subnetSelector: {{a: b}}\n    securityGroupSelector: {{a: b}}\n"
    );
    let text = convert_error(&yaml, &profile());
    assert!(text.contains("Provisioner/t: spec.provider: its inline provider becomes EC2NodeClass t"), "{text}");
}
