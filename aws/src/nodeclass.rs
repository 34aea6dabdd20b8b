//! EC2NodeClass resolution: selector terms → subnets, security groups, AMIs and an instance
//! profile, with a readiness check per kind that names the selector that matched nothing.

use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::Filter;

use super::{AwsError, Clients};
use rafter::api::EC2NodeClass;
use rafter::api::ec2nodeclass::{
    AmiFamily, AmiSelectorTerm, ResolvedAmi, ResolvedSecurityGroup, ResolvedSubnet, conditions,
};
use rafter::api::labels;
use rafter::api::nodeclaim::{NodeSelectorRequirementWithMinValues, Operator};
use rafter::cloud::{NodeClassCheck, NodeClassReport};
use rafter::mix::fnv1a;

/// An image Rafter may launch, with the architecture it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Ami {
    pub id: String,
    pub name: Option<String>,
    /// `amd64` or `arm64`.
    pub arch: String,
    pub created: String,
}

/// A node class whose every selector matched: what instance types and launches need.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub subnets: Vec<ResolvedSubnet>,
    pub security_groups: Vec<ResolvedSecurityGroup>,
    /// Newest image per architecture.
    pub amis: Vec<Ami>,
    /// The instance profile launches use; `None` until it exists (only the leader creates the
    /// one Rafter manages for `spec.role`).
    pub instance_profile: Option<String>,
    pub family: AmiFamily,
}

/// Filters for one tag selector: `*` matches any value of the key.
pub fn tag_filters(tags: &BTreeMap<String, String>) -> Vec<Filter> {
    tags.iter()
        .map(|(k, v)| {
            if v == "*" {
                Filter::builder().name("tag-key").values(k).build()
            } else {
                Filter::builder().name(format!("tag:{k}")).values(v).build()
            }
        })
        .collect()
}

/// The SSM parameters that name an alias's images, per architecture (`amd64`, `arm64`).
pub fn alias_parameters(alias: &str, kubernetes_version: &str) -> Option<Vec<(&'static str, String)>> {
    let (family, version) = alias.split_once('@')?;
    let k = kubernetes_version;
    let arches = [("amd64", "x86_64"), ("arm64", "arm64")];
    let params = match family {
        "al2023" => arches
            .iter()
            .map(|(arch, aws)| {
                let leaf = if version == "latest" {
                    "recommended".to_string()
                } else {
                    format!("amazon-eks-node-al2023-{aws}-standard-{k}-{version}")
                };
                (*arch, format!("/aws/service/eks/optimized-ami/{k}/amazon-linux-2023/{aws}/standard/{leaf}/image_id"))
            })
            .collect(),
        "al2" => arches
            .iter()
            .map(|(arch, _)| {
                let variant = if *arch == "arm64" { "amazon-linux-2-arm64" } else { "amazon-linux-2" };
                let leaf = if version == "latest" {
                    "recommended".to_string()
                } else {
                    format!("amazon-eks-node-{k}-{version}")
                };
                (*arch, format!("/aws/service/eks/optimized-ami/{k}/{variant}/{leaf}/image_id"))
            })
            .collect(),
        "bottlerocket" => arches
            .iter()
            .map(|(arch, aws)| (*arch, format!("/aws/service/bottlerocket/aws-k8s-{k}/{aws}/{version}/image_id")))
            .collect(),
        _ => return None,
    };
    Some(params)
}

/// The instance profile Rafter manages for a role: one per (cluster, role), stable across replicas.
pub fn profile_name(cluster: &str, role: &str) -> String {
    format!("{cluster}_{:016x}", fnv1a(role))
}

fn describe_term<T: std::fmt::Debug>(field: &str, index: usize, term: &T) -> String {
    format!("spec.{field}[{index}] {term:?}")
}

fn arch_of(aws: &str) -> Option<&'static str> {
    match aws {
        "x86_64" => Some("amd64"),
        "arm64" => Some("arm64"),
        _ => None,
    }
}

/// Resolves every selector of a class. AWS errors that are about the class (a missing role, no
/// permission) become failed checks; errors reaching AWS at all are returned. Only with `mutate`
/// (the leader) is the instance profile for `spec.role` created or fixed: a standby only reads it,
/// so replicas starting together never race each other in IAM.
pub async fn resolve(
    clients: &Clients,
    cluster: &str,
    kubernetes_version: &str,
    class: &EC2NodeClass,
    mutate: bool,
) -> Result<(NodeClassReport, Option<Resolved>), AwsError> {
    let spec = &class.spec;
    let mut report = NodeClassReport::default();

    // Subnets: each term is one query; a term matching nothing makes the class not ready.
    let mut subnets: BTreeMap<String, ResolvedSubnet> = BTreeMap::new();
    let mut missing = Vec::new();
    for (i, term) in spec.subnet_selector_terms.iter().enumerate() {
        let mut req = clients.ec2.describe_subnets();
        if let Some(id) = &term.id {
            req = req.filters(Filter::builder().name("subnet-id").values(id).build());
        }
        for f in tag_filters(&term.tags) {
            req = req.filters(f);
        }
        let out = req.send().await.map_err(|e| AwsError::sdk("DescribeSubnets", e))?;
        if out.subnets().is_empty() {
            missing.push(describe_term("subnetSelectorTerms", i, term));
        }
        for s in out.subnets() {
            if let (Some(id), Some(zone)) = (s.subnet_id(), s.availability_zone()) {
                subnets.insert(
                    id.to_string(),
                    ResolvedSubnet {
                        id: id.to_string(),
                        zone: zone.to_string(),
                        zone_id: s.availability_zone_id().map(str::to_string),
                    },
                );
            }
        }
    }
    report.subnets = subnets.into_values().collect();
    report.checks.push(check(conditions::SUBNETS_READY, "SubnetsNotFound", &missing, report.subnets.is_empty()));

    let mut groups: BTreeMap<String, ResolvedSecurityGroup> = BTreeMap::new();
    let mut missing = Vec::new();
    for (i, term) in spec.security_group_selector_terms.iter().enumerate() {
        let mut req = clients.ec2.describe_security_groups();
        if let Some(id) = &term.id {
            req = req.filters(Filter::builder().name("group-id").values(id).build());
        }
        if let Some(name) = &term.name {
            req = req.filters(Filter::builder().name("group-name").values(name).build());
        }
        for f in tag_filters(&term.tags) {
            req = req.filters(f);
        }
        let out = req.send().await.map_err(|e| AwsError::sdk("DescribeSecurityGroups", e))?;
        if out.security_groups().is_empty() {
            missing.push(describe_term("securityGroupSelectorTerms", i, term));
        }
        for g in out.security_groups() {
            if let Some(id) = g.group_id() {
                groups.insert(
                    id.to_string(),
                    ResolvedSecurityGroup { id: id.to_string(), name: g.group_name().map(str::to_string) },
                );
            }
        }
    }
    report.security_groups = groups.into_values().collect();
    report.checks.push(check(
        conditions::SECURITY_GROUPS_READY,
        "SecurityGroupsNotFound",
        &missing,
        report.security_groups.is_empty(),
    ));

    let family = spec
        .ami_family
        .or_else(|| spec.ami_selector_terms.iter().find_map(|t| t.alias.as_deref().and_then(AmiFamily::from_alias)))
        .unwrap_or(AmiFamily::Custom);
    let (amis, ami_problems) = resolve_amis(clients, kubernetes_version, &spec.ami_selector_terms).await?;
    report.amis = amis
        .iter()
        .map(|a| ResolvedAmi {
            id: a.id.clone(),
            name: a.name.clone(),
            requirements: vec![NodeSelectorRequirementWithMinValues {
                key: labels::ARCH.into(),
                operator: Operator::In,
                values: vec![a.arch.clone()],
                min_values: None,
            }],
        })
        .collect();
    report.checks.push(check(conditions::AMIS_READY, "AMINotFound", &ami_problems, amis.is_empty()));

    let profile = match (&spec.instance_profile, &spec.role) {
        (Some(name), _) => match clients.iam.get_instance_profile().instance_profile_name(name).send().await {
            Ok(_) => Ok(name.clone()),
            Err(e) => Err(format!("spec.instanceProfile {name:?}: {}", AwsError::sdk("GetInstanceProfile", e))),
        },
        (None, Some(role)) if mutate => ensure_profile(clients, cluster, class, role).await,
        (None, Some(role)) => find_profile(clients, cluster, role).await,
        (None, None) => Err("give spec.role or spec.instanceProfile".to_string()),
    };
    let profile_problem = profile.as_ref().err().cloned().into_iter().collect::<Vec<_>>();
    report.checks.push(check(
        conditions::INSTANCE_PROFILE_READY,
        "InstanceProfileNotReady",
        &profile_problem,
        profile.is_err(),
    ));
    report.instance_profile = profile.as_ref().ok().cloned();

    let not_ready: Vec<&NodeClassCheck> = report.checks.iter().filter(|c| !c.ok).collect();
    let ready = not_ready.is_empty();
    let message = not_ready.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ");
    let reason = not_ready.first().map(|c| c.reason.clone()).unwrap_or_else(|| "Ready".into());
    report.checks.push(NodeClassCheck { type_: conditions::READY.into(), ok: ready, reason, message });
    // Instance types need only the subnets, groups and images; the profile is checked at launch.
    let selectors_ok = report
        .checks
        .iter()
        .filter(|c| c.type_ != conditions::INSTANCE_PROFILE_READY && c.type_ != conditions::READY)
        .all(|c| c.ok);
    let resolved = selectors_ok.then(|| Resolved {
        subnets: report.subnets.clone(),
        security_groups: report.security_groups.clone(),
        amis,
        instance_profile: profile.ok(),
        family,
    });
    Ok((report, resolved))
}

fn check(type_: &str, reason: &str, problems: &[String], none_found: bool) -> NodeClassCheck {
    if !none_found && problems.is_empty() {
        return NodeClassCheck { type_: type_.into(), ok: true, reason: type_.into(), message: String::new() };
    }
    let message = if problems.is_empty() {
        "nothing matched".to_string()
    } else {
        format!("nothing matches {}", problems.join(", "))
    };
    // A term that matches nothing beside others that match is reported but does not block launches.
    let reason = if none_found { reason } else { type_ };
    NodeClassCheck { type_: type_.into(), ok: !none_found, reason: reason.into(), message }
}

async fn resolve_amis(
    clients: &Clients,
    kubernetes_version: &str,
    terms: &[AmiSelectorTerm],
) -> Result<(Vec<Ami>, Vec<String>), AwsError> {
    let mut found: Vec<Ami> = Vec::new();
    let mut problems = Vec::new();
    for (i, term) in terms.iter().enumerate() {
        let mut ids: Vec<String> = Vec::new();
        let mut filters = Vec::new();
        let mut owners = Vec::new();
        if let Some(alias) = &term.alias {
            let Some(params) = alias_parameters(alias, kubernetes_version) else {
                problems.push(format!("spec.amiSelectorTerms[{i}].alias {alias:?} is not a Linux alias Rafter knows"));
                continue;
            };
            for (_, name) in params {
                match clients.ssm.get_parameter().name(&name).send().await {
                    Ok(out) => ids.extend(out.parameter().and_then(|p| p.value()).map(str::to_string)),
                    Err(e) if AwsError::code_of(&e) == Some("ParameterNotFound") => {}
                    Err(e) => return Err(AwsError::sdk("GetParameter", e)),
                }
            }
            if ids.is_empty() {
                problems.push(format!(
                    "spec.amiSelectorTerms[{i}].alias {alias:?} (no SSM parameter for Kubernetes {kubernetes_version})"
                ));
                continue;
            }
        }
        if let Some(param) = &term.ssm_parameter {
            match clients.ssm.get_parameter().name(param).send().await {
                Ok(out) => ids.extend(out.parameter().and_then(|p| p.value()).map(str::to_string)),
                Err(e) if AwsError::code_of(&e) == Some("ParameterNotFound") => {
                    problems.push(format!("spec.amiSelectorTerms[{i}].ssmParameter {param:?} (no such parameter)"));
                    continue;
                }
                Err(e) => return Err(AwsError::sdk("GetParameter", e)),
            }
        }
        if let Some(id) = &term.id {
            ids.push(id.clone());
        }
        if let Some(name) = &term.name {
            filters.push(Filter::builder().name("name").values(name).build());
            owners = match &term.owner {
                Some(o) => vec![o.clone()],
                None => vec!["self".to_string(), "amazon".to_string()],
            };
        } else if let Some(owner) = &term.owner {
            owners.push(owner.clone());
        }
        filters.extend(tag_filters(&term.tags));
        let mut req = clients.ec2.describe_images().set_owners((!owners.is_empty()).then_some(owners));
        if !ids.is_empty() {
            req = req.set_image_ids(Some(ids));
        }
        if !filters.is_empty() {
            req = req.set_filters(Some(filters));
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if AwsError::code_of(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => {
                problems.push(describe_term("amiSelectorTerms", i, term));
                continue;
            }
            Err(e) => return Err(AwsError::sdk("DescribeImages", e)),
        };
        let before = found.len();
        for image in out.images() {
            let (Some(id), Some(arch)) = (image.image_id(), image.architecture().and_then(|a| arch_of(a.as_str())))
            else {
                continue;
            };
            if image.state().is_some_and(|s| s.as_str() != "available") {
                continue;
            }
            found.push(Ami {
                id: id.to_string(),
                name: image.name().map(str::to_string),
                arch: arch.to_string(),
                created: image.creation_date().unwrap_or_default().to_string(),
            });
        }
        if found.len() == before {
            problems.push(describe_term("amiSelectorTerms", i, term));
        }
    }
    // The newest image per architecture, as Karpenter picks.
    let mut newest: BTreeMap<String, Ami> = BTreeMap::new();
    for ami in found {
        match newest.get(&ami.arch) {
            Some(have) if (have.created.as_str(), have.id.as_str()) >= (ami.created.as_str(), ami.id.as_str()) => {}
            _ => {
                newest.insert(ami.arch.clone(), ami);
            }
        }
    }
    Ok((newest.into_values().collect(), problems))
}

/// The instance profile Rafter manages for `role`, read only: its name when it exists with the role.
async fn find_profile(clients: &Clients, cluster: &str, role: &str) -> Result<String, String> {
    let name = profile_name(cluster, role);
    match clients.iam.get_instance_profile().instance_profile_name(&name).send().await {
        Ok(out) if out.instance_profile().is_some_and(|p| p.roles().iter().any(|r| r.role_name() == role)) => Ok(name),
        Ok(_) => {
            Err(format!("spec.role {role:?}: instance profile {name} does not hold the role yet; the leader adds it"))
        }
        Err(e) if AwsError::code_of(&e) == Some("NoSuchEntity") => {
            Err(format!("spec.role {role:?}: instance profile {name} does not exist yet; the leader creates it"))
        }
        Err(e) => Err(format!("spec.role {role:?}: GetInstanceProfile: {}", AwsError::sdk("GetInstanceProfile", e))),
    }
}

async fn ensure_profile(clients: &Clients, cluster: &str, class: &EC2NodeClass, role: &str) -> Result<String, String> {
    let name = profile_name(cluster, role);
    let fail = |op: &str, e: AwsError| Err(format!("spec.role {role:?}: {op}: {e}"));
    let existing = match clients.iam.get_instance_profile().instance_profile_name(&name).send().await {
        Ok(out) => {
            out.instance_profile().map(|p| p.roles().iter().map(|r| r.role_name().to_string()).collect::<BTreeSet<_>>())
        }
        Err(e) if AwsError::code_of(&e) == Some("NoSuchEntity") => None,
        Err(e) => return fail("GetInstanceProfile", AwsError::sdk("GetInstanceProfile", e)),
    };
    let roles = match existing {
        Some(roles) => roles,
        None => {
            let class_name = class.name_any();
            let tag =
                |k: &str, v: &str| aws_sdk_iam::types::Tag::builder().key(k).value(v).build().map_err(AwsError::build);
            let tags = [
                tag(&format!("kubernetes.io/cluster/{cluster}"), "owned"),
                tag("karpenter.k8s.aws/ec2nodeclass", &class_name),
            ];
            let mut req =
                clients.iam.create_instance_profile().instance_profile_name(&name).path(format!("/{cluster}/"));
            for t in tags {
                match t {
                    Ok(t) => req = req.tags(t),
                    Err(e) => return fail("CreateInstanceProfile", e),
                }
            }
            match req.send().await {
                Ok(_) => {}
                Err(e) if AwsError::code_of(&e) == Some("EntityAlreadyExists") => {}
                Err(e) => return fail("CreateInstanceProfile", AwsError::sdk("CreateInstanceProfile", e)),
            }
            BTreeSet::new()
        }
    };
    if roles.contains(role) {
        return Ok(name);
    }
    for other in &roles {
        if let Err(e) =
            clients.iam.remove_role_from_instance_profile().instance_profile_name(&name).role_name(other).send().await
        {
            return fail("RemoveRoleFromInstanceProfile", AwsError::sdk("RemoveRoleFromInstanceProfile", e));
        }
    }
    match clients.iam.add_role_to_instance_profile().instance_profile_name(&name).role_name(role).send().await {
        Ok(_) => Ok(name),
        Err(e) => fail("AddRoleToInstanceProfile", AwsError::sdk("AddRoleToInstanceProfile", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_selectors_with_a_star_match_any_value_of_the_key() {
        let tags =
            BTreeMap::from([("karpenter.sh/discovery".to_string(), "demo".to_string()), ("tier".into(), "*".into())]);
        let filters = tag_filters(&tags);
        assert_eq!(filters[0].name(), Some("tag:karpenter.sh/discovery"));
        assert_eq!(filters[0].values(), ["demo"]);
        assert_eq!(filters[1].name(), Some("tag-key"));
        assert_eq!(filters[1].values(), ["tier"]);
    }

    #[test]
    fn aliases_name_the_public_ssm_parameters_for_the_clusters_version() {
        let p = alias_parameters("al2023@latest", "1.33").unwrap();
        assert_eq!(
            p[0],
            (
                "amd64",
                "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/recommended/image_id".into()
            )
        );
        assert_eq!(p[1].0, "arm64");
        let p = alias_parameters("al2@latest", "1.30").unwrap();
        assert_eq!(p[1].1, "/aws/service/eks/optimized-ami/1.30/amazon-linux-2-arm64/recommended/image_id");
        let p = alias_parameters("bottlerocket@latest", "1.33").unwrap();
        assert_eq!(p[0].1, "/aws/service/bottlerocket/aws-k8s-1.33/x86_64/latest/image_id");
        let p = alias_parameters("al2023@v20240807", "1.30").unwrap();
        assert!(p[0].1.ends_with("/standard/amazon-eks-node-al2023-x86_64-standard-1.30-v20240807/image_id"));
        assert!(alias_parameters("windows2022@latest", "1.33").is_none());
    }

    #[test]
    fn the_managed_instance_profile_name_is_stable_per_cluster_and_role() {
        assert_eq!(profile_name("demo", "NodeRole"), profile_name("demo", "NodeRole"));
        assert_ne!(profile_name("demo", "NodeRole"), profile_name("demo", "OtherRole"));
        assert!(profile_name("demo", "NodeRole").starts_with("demo_"));
    }
}
