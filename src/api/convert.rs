//! Pure conversion of legacy Provisioners and AWSNodeTemplates into v1 NodePools and EC2NodeClasses.
//!
//! The mapping keeps each legacy object's behaviour: a Provisioner without `ttlSecondsUntilExpired`
//! never expired its nodes, so its NodePool gets `expireAfter: Never`, not v1's 720h default.
//! Settings v1 cannot express are errors, never silent drops.

use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::Duration;

use kube::core::ObjectMeta;

use super::duration::NillableDuration;
use super::ec2nodeclass::{
    AmiFamily, AmiSelectorTerm, EC2NodeClass, EC2NodeClassSpec, KubeletConfiguration, SecurityGroupSelectorTerm,
    SubnetSelectorTerm,
};
use super::labels::{AWS_GROUP, NODEPOOL};
use super::legacy::{AWSNodeTemplate, AWSNodeTemplateSpec, Provisioner};
use super::nodeclaim::{NodeClaimTemplateSpec, NodeClassReference, NodeSelectorRequirementWithMinValues};
use super::nodepool::{ConsolidationPolicy, Disruption, NodeClaimTemplate, NodePool, NodePoolSpec, TemplateMetadata};

/// The v1alpha5 label that v1 renamed to `karpenter.sh/nodepool`.
pub const LEGACY_PROVISIONER_LABEL: &str = "karpenter.sh/provisioner-name";

/// Settings legacy Karpenter took from its global configuration rather than from the objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversionOptions {
    /// The `aws.defaultInstanceProfile` setting: used for templates that name no instance profile.
    pub default_instance_profile: Option<String>,
    /// An IAM role to use instead, for templates that name no instance profile.
    pub role: Option<String>,
    /// The cluster's name (legacy `clusterName`): a template without a subnet or security group
    /// selector discovers them by the `kubernetes.io/cluster/<name>` tag, as legacy Karpenter did.
    pub cluster_name: Option<String>,
}

/// One reason an object could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}/{name}: {field}: {message}")]
pub struct ConversionError {
    /// `Provisioner` or `AWSNodeTemplate`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// Path of the offending field, e.g. `spec.amiFamily`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The v1 objects a set of legacy objects becomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// One per Provisioner, in input order.
    pub node_pools: Vec<NodePool>,
    /// One per AWSNodeTemplate, then one per Provisioner with an inline `provider`.
    pub node_classes: Vec<EC2NodeClass>,
}

/// Converts every object, returning every problem at once if any object cannot be converted.
pub fn convert(
    provisioners: &[Provisioner],
    templates: &[AWSNodeTemplate],
    options: &ConversionOptions,
) -> Result<Converted, Vec<ConversionError>> {
    let mut errors = Vec::new();
    let mut out = Converted::default();
    for template in templates {
        let name = template.name_any();
        let kubelet = shared_kubelet(&name, provisioners, &mut errors);
        match node_class_from_template(
            &name,
            &template.metadata,
            &template.spec,
            kubelet,
            options,
            "AWSNodeTemplate",
            "spec",
        ) {
            Ok(class) => out.node_classes.push(class),
            Err(mut e) => errors.append(&mut e),
        }
    }
    for provisioner in provisioners {
        match node_pool_from_provisioner(provisioner, templates) {
            Ok(pool) => out.node_pools.push(pool),
            Err(mut e) => errors.append(&mut e),
        }
        if let Some(provider) = &provisioner.spec.provider {
            let name = provisioner.name_any();
            let meta = ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() };
            let kubelet = provisioner.spec.kubelet_configuration.clone();
            match node_class_from_template(&name, &meta, provider, kubelet, options, "Provisioner", "spec.provider") {
                Ok(class) => out.node_classes.push(class),
                Err(mut e) => errors.append(&mut e),
            }
        }
    }
    // An inline provider is named after its Provisioner; it must not collide with a template.
    let mut seen = std::collections::BTreeSet::new();
    for class in &out.node_classes {
        let name = class.name_any();
        if !seen.insert(name.clone()) {
            errors.push(ConversionError {
                kind: "Provisioner",
                name: name.clone(),
                field: "spec.provider".into(),
                message: format!(
                    "its inline provider becomes EC2NodeClass {name}, which an AWSNodeTemplate of the same name also becomes; rename one"
                ),
            });
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The kubelet settings of the provisioners that share a template; v1 keeps them on the node
/// class, so provisioners that disagree cannot share one.
fn shared_kubelet(
    template: &str,
    provisioners: &[Provisioner],
    errors: &mut Vec<ConversionError>,
) -> Option<KubeletConfiguration> {
    let users: Vec<&Provisioner> = provisioners
        .iter()
        .filter(|p| p.spec.provider.is_none() && p.spec.provider_ref.as_ref().is_some_and(|r| r.name == template))
        .collect();
    let first = users.first()?;
    let kubelet = first.spec.kubelet_configuration.clone();
    for other in &users[1..] {
        if other.spec.kubelet_configuration != kubelet {
            errors.push(ConversionError {
                kind: "Provisioner",
                name: other.name_any(),
                field: "spec.kubeletConfiguration".into(),
                message: format!(
                    "differs from Provisioner {}, which shares AWSNodeTemplate {template}; v1 keeps kubelet settings on the EC2NodeClass, so give each kubelet configuration its own AWSNodeTemplate",
                    first.name_any()
                ),
            });
        }
    }
    kubelet
}

/// Metadata of a converted object: the name, labels and the user's annotations, nothing the server set.
fn carried_metadata(meta: &ObjectMeta) -> ObjectMeta {
    let annotations: BTreeMap<String, String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ObjectMeta {
        name: meta.name.clone(),
        labels: meta.labels.clone().filter(|l| !l.is_empty()),
        annotations: Some(annotations).filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    }
}

fn seconds(kind: &'static str, name: &str, field: &str, value: i64) -> Result<Duration, ConversionError> {
    u64::try_from(value).map(Duration::from_secs).map_err(|_| ConversionError {
        kind,
        name: name.to_string(),
        field: field.to_string(),
        message: format!("{value} is negative; give a number of seconds of 0 or more"),
    })
}

/// A Provisioner as a NodePool.
pub fn node_pool_from_provisioner(
    provisioner: &Provisioner,
    templates: &[AWSNodeTemplate],
) -> Result<NodePool, Vec<ConversionError>> {
    let spec = &provisioner.spec;
    let name = provisioner.name_any();
    let mut errors = Vec::new();
    let err = |field: &str, message: String| ConversionError {
        kind: "Provisioner",
        name: name.clone(),
        field: field.into(),
        message,
    };

    let class_name = match (&spec.provider, &spec.provider_ref) {
        (Some(_), Some(_)) => {
            errors.push(err("spec.provider", "give either provider or providerRef, not both".into()));
            name.clone()
        }
        (Some(_), None) => name.clone(),
        (None, Some(r)) => {
            if let Some(kind) = r.kind.as_deref().filter(|k| *k != "AWSNodeTemplate") {
                errors.push(err(
                    "spec.providerRef.kind",
                    format!("{kind} is not AWSNodeTemplate, the only provider kind Rafter converts"),
                ));
            }
            if spec.kubelet_configuration.is_some()
                && !templates.iter().any(|t| t.metadata.name.as_deref() == Some(&r.name))
            {
                errors.push(err(
                    "spec.kubeletConfiguration",
                    format!("v1 keeps kubelet settings on the EC2NodeClass; convert this Provisioner together with AWSNodeTemplate {}", r.name),
                ));
            }
            r.name.clone()
        }
        (None, None) => {
            errors.push(err(
                "spec.providerRef",
                "a Provisioner needs providerRef (or an inline provider) to say how its nodes launch".into(),
            ));
            name.clone()
        }
    };

    let expire_after = match spec.ttl_seconds_until_expired {
        Some(ttl) => match seconds("Provisioner", &name, "spec.ttlSecondsUntilExpired", ttl) {
            Ok(d) => NillableDuration::from_duration(d),
            Err(e) => {
                errors.push(e);
                NillableDuration::never()
            }
        },
        None => NillableDuration::never(),
    };

    let consolidation = spec.consolidation.as_ref().is_some_and(|c| c.enabled);
    let disruption = match (consolidation, spec.ttl_seconds_after_empty) {
        (true, Some(_)) => {
            errors.push(err(
                "spec.ttlSecondsAfterEmpty",
                "cannot be combined with consolidation.enabled; remove one".into(),
            ));
            None
        }
        (true, None) => Some(Disruption {
            consolidation_policy: Some(ConsolidationPolicy::WhenEmptyOrUnderutilized),
            consolidate_after: Some(NillableDuration("0s".into())),
            budgets: Vec::new(),
        }),
        (false, Some(ttl)) => match seconds("Provisioner", &name, "spec.ttlSecondsAfterEmpty", ttl) {
            Ok(d) => Some(Disruption {
                consolidation_policy: Some(ConsolidationPolicy::WhenEmpty),
                consolidate_after: Some(NillableDuration::from_duration(d)),
                budgets: Vec::new(),
            }),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        (false, None) => Some(Disruption {
            consolidation_policy: Some(ConsolidationPolicy::WhenEmpty),
            consolidate_after: Some(NillableDuration::never()),
            budgets: Vec::new(),
        }),
    };

    let requirements = spec
        .requirements
        .iter()
        .map(|r| NodeSelectorRequirementWithMinValues {
            key: if r.key == LEGACY_PROVISIONER_LABEL { NODEPOOL.to_string() } else { r.key.clone() },
            operator: r.operator,
            values: r.values.clone(),
            min_values: None,
        })
        .collect();

    let metadata = (!spec.labels.is_empty() || !spec.annotations.is_empty())
        .then(|| TemplateMetadata { labels: spec.labels.clone(), annotations: spec.annotations.clone() });

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut pool = NodePool::new(
        &name,
        NodePoolSpec {
            template: NodeClaimTemplate {
                metadata,
                spec: NodeClaimTemplateSpec {
                    taints: spec.taints.clone(),
                    startup_taints: spec.startup_taints.clone(),
                    requirements,
                    node_class_ref: NodeClassReference {
                        group: AWS_GROUP.into(),
                        kind: "EC2NodeClass".into(),
                        name: class_name,
                    },
                    expire_after: Some(expire_after),
                    termination_grace_period: None,
                },
            },
            disruption,
            limits: spec.limits.as_ref().map(|l| l.resources.clone()).unwrap_or_default(),
            weight: spec.weight,
        },
    );
    pool.metadata = carried_metadata(&provisioner.metadata);
    Ok(pool)
}

/// Splits a comma-separated ID list as legacy selectors wrote it.
fn id_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// An AWSNodeTemplate (or an inline provider) as an EC2NodeClass named `name`.
pub fn node_class_from_template(
    name: &str,
    meta: &ObjectMeta,
    spec: &AWSNodeTemplateSpec,
    kubelet: Option<KubeletConfiguration>,
    options: &ConversionOptions,
    kind: &'static str,
    path: &str,
) -> Result<EC2NodeClass, Vec<ConversionError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(ConversionError { kind, name: name.to_string(), field: format!("{path}.{field}"), message })
    };

    // Subnets: `aws-ids` lists IDs; every other key is a tag.
    let mut subnet_terms = Vec::new();
    // Legacy Karpenter discovered both by the cluster tag when a template named no selector.
    let discovery = options
        .cluster_name
        .as_ref()
        .map(|c| std::collections::BTreeMap::from([(format!("kubernetes.io/cluster/{c}"), "*".to_string())]));
    let mut subnet_tags = spec.subnet_selector.clone();
    if subnet_tags.is_empty()
        && let Some(tags) = &discovery
    {
        subnet_tags = tags.clone();
    }
    if let Some(ids) = subnet_tags.remove("aws-ids") {
        if !subnet_tags.is_empty() {
            err("subnetSelector", "aws-ids cannot be combined with tags in v1; keep either the IDs or the tags".into());
        }
        subnet_terms
            .extend(id_list(&ids).into_iter().map(|id| SubnetSelectorTerm { id: Some(id), ..Default::default() }));
    } else if !subnet_tags.is_empty() {
        subnet_terms.push(SubnetSelectorTerm { tags: subnet_tags, id: None });
    }
    if subnet_terms.is_empty() {
        err(
            "subnetSelector",
            "is required: v1 needs at least one subnet selector term (or give --cluster-name to discover subnets by the kubernetes.io/cluster/<name> tag, as legacy Karpenter did)".into(),
        );
    }

    let mut group_terms = Vec::new();
    let mut group_tags = spec.security_group_selector.clone();
    if group_tags.is_empty()
        && let Some(tags) = &discovery
    {
        group_tags = tags.clone();
    }
    if let Some(ids) = group_tags.remove("aws-ids") {
        if !group_tags.is_empty() {
            err(
                "securityGroupSelector",
                "aws-ids cannot be combined with tags in v1; keep either the IDs or the tags".into(),
            );
        }
        group_terms.extend(
            id_list(&ids).into_iter().map(|id| SecurityGroupSelectorTerm { id: Some(id), ..Default::default() }),
        );
    } else if !group_tags.is_empty() {
        group_terms.push(SecurityGroupSelectorTerm { tags: group_tags, ..Default::default() });
    }
    if group_terms.is_empty() {
        err(
            "securityGroupSelector",
            "is required: v1 needs at least one security group selector term (or give --cluster-name to discover groups by the kubernetes.io/cluster/<name> tag)".into(),
        );
    }

    // Legacy defaulted to AL2 and had Ubuntu, which v1 dropped.
    let family = match spec.ami_family.as_deref().unwrap_or("AL2") {
        "AL2" => Some(AmiFamily::AL2),
        "AL2023" => Some(AmiFamily::AL2023),
        "Bottlerocket" => Some(AmiFamily::Bottlerocket),
        "Windows2019" => Some(AmiFamily::Windows2019),
        "Windows2022" => Some(AmiFamily::Windows2022),
        "Custom" => Some(AmiFamily::Custom),
        "Ubuntu" => {
            err(
                "amiFamily",
                "Ubuntu is not supported by v1; use AL2 with an amiSelector that selects your Ubuntu images".into(),
            );
            None
        }
        other => {
            err(
                "amiFamily",
                format!(
                    "{other:?} is not an AMI family; use AL2, AL2023, Bottlerocket, Windows2019, Windows2022 or Custom"
                ),
            );
            None
        }
    };

    let mut ami_terms = Vec::new();
    let mut ami_family = None;
    let mut ami_tags = spec.ami_selector.clone();
    let ids = ami_tags.remove("aws::ids");
    let ami_name = ami_tags.remove("aws::name");
    let owners = ami_tags.remove("aws::owners");
    if let Some(ids) = ids {
        if ami_name.is_some() || owners.is_some() || !ami_tags.is_empty() {
            err(
                "amiSelector",
                "aws::ids cannot be combined with other keys in v1; keep either the IDs or the other keys".into(),
            );
        }
        ami_terms.extend(id_list(&ids).into_iter().map(|id| AmiSelectorTerm { id: Some(id), ..Default::default() }));
        ami_family = family;
    } else if ami_name.is_some() || owners.is_some() || !ami_tags.is_empty() {
        let owner_list = owners.as_deref().map(id_list).unwrap_or_default();
        let base = AmiSelectorTerm { name: ami_name, tags: ami_tags, ..Default::default() };
        if owner_list.is_empty() {
            ami_terms.push(base);
        } else {
            ami_terms.extend(owner_list.into_iter().map(|o| AmiSelectorTerm { owner: Some(o), ..base.clone() }));
        }
        ami_family = family;
    } else if let Some(family) = family {
        match family.alias_name() {
            Some(alias) => {
                ami_terms.push(AmiSelectorTerm { alias: Some(format!("{alias}@latest")), ..Default::default() })
            }
            None => err("amiSelector", "amiFamily Custom needs an amiSelector naming the images".into()),
        }
    }

    let (instance_profile, role) = match (&spec.instance_profile, &options.default_instance_profile, &options.role) {
        (Some(profile), _, _) => (Some(profile.clone()), None),
        (None, Some(profile), _) => (Some(profile.clone()), None),
        (None, None, Some(role)) => (None, Some(role.clone())),
        (None, None, None) => {
            err(
                "instanceProfile",
                "is not set, and legacy Karpenter took it from the aws.defaultInstanceProfile setting; pass --default-instance-profile NAME or --role NAME".into(),
            );
            (None, None)
        }
    };

    if let Some(template) = &spec.launch_template {
        err(
            "launchTemplate",
            format!(
                "v1 does not launch from a user's launch template ({template}); move its settings into the EC2NodeClass"
            ),
        );
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut class = EC2NodeClass::new(
        name,
        EC2NodeClassSpec {
            subnet_selector_terms: subnet_terms,
            security_group_selector_terms: group_terms,
            ami_selector_terms: ami_terms,
            ami_family,
            role,
            instance_profile,
            user_data: spec.user_data.clone(),
            tags: spec.tags.clone(),
            kubelet,
            block_device_mappings: spec.block_device_mappings.clone(),
            metadata_options: spec.metadata_options.clone(),
            detailed_monitoring: spec.detailed_monitoring,
            associate_public_ip_address: None,
            instance_store_policy: None,
            context: spec.context.clone(),
        },
    );
    class.metadata = carried_metadata(meta);
    class.metadata.name = Some(name.to_string());
    Ok(class)
}
