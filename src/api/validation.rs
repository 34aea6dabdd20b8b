//! Pure validation of v1 objects: every problem at once, each naming its field path.
//!
//! The CRD schemas (patterns, enums, CEL) reject most mistakes at the API server; this module checks
//! the same rules and those a schema cannot express (cron syntax, quantity arithmetic), so objects
//! admitted by an older or hand-edited CRD still get a `Ready=False` condition instead of a crash.

use std::fmt;
use std::str::FromStr;

use super::duration::{KubeDuration, NillableDuration, parse_duration};
use super::ec2nodeclass::{
    AmiFamily, EC2NodeClassSpec, MAX_EVICTION_SIGNALS, MAX_TAG_KEY_LENGTH, MAX_TAG_VALUE_LENGTH, MAX_TAGS,
    RESTRICTED_TAG_PREFIXES,
};
use super::labels::{HOSTNAME, NODEPOOL, label_key_error, label_value_error, restricted_label_reason};
use super::nodeclaim::{NodeClaimSpec, NodeClaimTemplateSpec, Operator, ResourceList, Taint};
use super::nodepool::{Budget, NodePoolSpec};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.template.spec.requirements[2].values`.
    pub field: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

/// Collects problems under a path prefix.
#[derive(Debug, Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() { Ok(()) } else { Err(Invalid(self.0)) }
    }
}

/// Most requirements a pool may have.
pub const MAX_REQUIREMENTS: usize = 100;
/// Most labels a pool template may have.
pub const MAX_LABELS: usize = 100;
/// Most disruption budgets a pool may have.
pub const MAX_BUDGETS: usize = 50;

/// Validates a NodePool's spec.
pub fn validate_node_pool(spec: &NodePoolSpec) -> Result<(), Invalid> {
    let mut p = Problems::default();
    if let Some(meta) = &spec.template.metadata {
        if meta.labels.len() > MAX_LABELS {
            p.add(
                "spec.template.metadata.labels",
                format!("has {} labels; at most {MAX_LABELS} are allowed", meta.labels.len()),
            );
        }
        for (key, value) in &meta.labels {
            let field = format!("spec.template.metadata.labels[{key}]");
            if let Some(e) = label_key_error(key) {
                p.add(&field, e);
            } else if key == NODEPOOL || key == HOSTNAME {
                p.add(&field, format!("{key} is set by Rafter and cannot be given"));
            } else if let Some(reason) = restricted_label_reason(key) {
                p.add(&field, reason);
            }
            if let Some(e) = label_value_error(value) {
                p.add(&field, e);
            }
        }
    }
    template_spec(&mut p, "spec.template.spec", &spec.template.spec);
    if let Some(disruption) = &spec.disruption {
        if let Some(after) = &disruption.consolidate_after {
            nillable(&mut p, "spec.disruption.consolidateAfter", after);
        }
        if disruption.budgets.len() > MAX_BUDGETS {
            p.add(
                "spec.disruption.budgets",
                format!("has {} budgets; at most {MAX_BUDGETS} are allowed", disruption.budgets.len()),
            );
        }
        for (i, budget) in disruption.budgets.iter().enumerate() {
            self::budget(&mut p, &format!("spec.disruption.budgets[{i}]"), budget);
        }
    }
    resources(&mut p, "spec.limits", &spec.limits);
    if let Some(weight) = spec.weight
        && !(1..=100).contains(&weight)
    {
        p.add("spec.weight", format!("{weight} is out of range; give 1 to 100"));
    }
    p.finish()
}

/// Validates a NodeClaim's spec.
pub fn validate_node_claim(spec: &NodeClaimSpec) -> Result<(), Invalid> {
    let mut p = Problems::default();
    template_spec(&mut p, "spec", &spec.template);
    if let Some(r) = &spec.resources {
        resources(&mut p, "spec.resources.requests", &r.requests);
    }
    p.finish()
}

fn template_spec(p: &mut Problems, path: &str, spec: &NodeClaimTemplateSpec) {
    if spec.requirements.len() > MAX_REQUIREMENTS {
        p.add(
            format!("{path}.requirements"),
            format!("has {} requirements; at most {MAX_REQUIREMENTS} are allowed", spec.requirements.len()),
        );
    }
    for (i, r) in spec.requirements.iter().enumerate() {
        let at = format!("{path}.requirements[{i}]");
        if let Some(e) = label_key_error(&r.key) {
            p.add(format!("{at}.key"), e);
        } else if let Some(reason) = restricted_label_reason(&r.key) {
            p.add(format!("{at}.key"), reason);
        }
        match r.operator {
            Operator::In if r.values.is_empty() => {
                p.add(format!("{at}.values"), "operator In needs at least one value")
            }
            Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => {
                p.add(format!("{at}.values"), "operators Exists and DoesNotExist take no values")
            }
            Operator::Gt | Operator::Lt if r.values.len() != 1 || r.values[0].parse::<u64>().is_err() => {
                p.add(format!("{at}.values"), "operators Gt and Lt take exactly one non-negative integer value")
            }
            _ => {}
        }
        for (j, v) in r.values.iter().enumerate() {
            if let Some(e) = label_value_error(v) {
                p.add(format!("{at}.values[{j}]"), e);
            }
        }
        if let Some(min) = r.min_values {
            if !(1..=50).contains(&min) {
                p.add(format!("{at}.minValues"), format!("{min} is out of range; give 1 to 50"));
            } else if r.operator == Operator::In && r.values.len() < min as usize {
                p.add(format!("{at}.minValues"), format!("{min} is larger than the {} value(s) given", r.values.len()));
            }
        }
    }
    for (name, taints) in [("taints", &spec.taints), ("startupTaints", &spec.startup_taints)] {
        for (i, t) in taints.iter().enumerate() {
            taint(p, &format!("{path}.{name}[{i}]"), t);
        }
    }
    let r = &spec.node_class_ref;
    for (field, value) in [("group", &r.group), ("kind", &r.kind), ("name", &r.name)] {
        if value.is_empty() {
            p.add(format!("{path}.nodeClassRef.{field}"), "must not be empty");
        }
    }
    if let Some(after) = &spec.expire_after {
        nillable(p, &format!("{path}.expireAfter"), after);
    }
    if let Some(grace) = &spec.termination_grace_period {
        finite(p, &format!("{path}.terminationGracePeriod"), grace);
    }
}

fn taint(p: &mut Problems, at: &str, t: &Taint) {
    if let Some(e) = label_key_error(&t.key) {
        p.add(format!("{at}.key"), e);
    }
    if let Some(e) = t.value.as_deref().and_then(label_value_error) {
        p.add(format!("{at}.value"), e);
    }
}

/// The longest duration Kubernetes (Go's `time.Duration`) can hold: 2562047h47m16.854775807s.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_nanos(i64::MAX as u64);

fn too_long(p: &mut Problems, at: &str, d: std::time::Duration) {
    if d > MAX_DURATION {
        p.add(at, format!("{}h is longer than Kubernetes can hold (at most 2562047h)", d.as_secs() / 3600));
    }
}

fn nillable(p: &mut Problems, at: &str, d: &NillableDuration) {
    match d.parse() {
        Ok(Some(d)) => too_long(p, at, d),
        Ok(None) => {}
        Err(e) => p.add(at, e.to_string()),
    }
}

fn finite(p: &mut Problems, at: &str, d: &KubeDuration) {
    match d.parse() {
        Ok(d) => too_long(p, at, d),
        Err(e) => p.add(at, e.to_string()),
    }
}

fn resources(p: &mut Problems, at: &str, list: &ResourceList) {
    for (name, q) in list {
        match q.parse() {
            Ok(v) if v < 0 => p.add(format!("{at}[{name}]"), format!("{:?} must not be negative", q.as_str())),
            Ok(_) => {}
            Err(e) => p.add(format!("{at}[{name}]"), e.to_string()),
        }
    }
}

/// Why `schedule` is not a 5-field cron expression or macro, if it is not.
pub fn cron_error(schedule: &str) -> Option<String> {
    const MACROS: &[&str] = &["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];
    if MACROS.contains(&schedule) {
        return None;
    }
    let fields = schedule.split_whitespace().count();
    if fields != 5 {
        return Some(format!(
            "{schedule:?} has {fields} field(s); give minute hour day-of-month month day-of-week (e.g. \"0 9 * * mon-fri\") or a macro such as @daily"
        ));
    }
    croner::Cron::from_str(schedule).err().map(|e| format!("{schedule:?} is not a valid cron schedule: {e}"))
}

fn budget(p: &mut Problems, at: &str, b: &Budget) {
    let nodes_ok = match b.nodes.strip_suffix('%') {
        Some(pct) => pct.parse::<u32>().is_ok_and(|v| v <= 100) && !pct.starts_with('+'),
        None => b.nodes.parse::<u32>().is_ok() && !b.nodes.starts_with('+'),
    };
    if !nodes_ok {
        p.add(
            format!("{at}.nodes"),
            format!("{:?} is neither a node count (5) nor a percentage from 0% to 100%", b.nodes),
        );
    }
    match (&b.schedule, &b.duration) {
        (Some(_), None) => p.add(format!("{at}.duration"), "is required when schedule is given"),
        (None, Some(_)) => p.add(format!("{at}.schedule"), "is required when duration is given"),
        _ => {}
    }
    if let Some(e) = b.schedule.as_deref().and_then(cron_error) {
        p.add(format!("{at}.schedule"), e);
    }
    if let Some(d) = &b.duration {
        let hours_minutes = d.trim_end_matches("0s");
        if hours_minutes.is_empty() || hours_minutes.contains('s') || parse_duration(hours_minutes).is_err() {
            p.add(
                format!("{at}.duration"),
                format!("{d:?} is not a duration in hours and minutes such as 8h or 1h30m"),
            );
        }
    }
}

/// Validates an EC2NodeClass's spec.
pub fn validate_ec2_node_class(spec: &EC2NodeClassSpec) -> Result<(), Invalid> {
    let mut p = Problems::default();
    let count = |p: &mut Problems, field: &str, n: usize| {
        if n == 0 {
            p.add(field, "needs at least one term");
        } else if n > 30 {
            p.add(field, format!("has {n} terms; at most 30 are allowed"));
        }
    };
    count(&mut p, "spec.subnetSelectorTerms", spec.subnet_selector_terms.len());
    for (i, t) in spec.subnet_selector_terms.iter().enumerate() {
        let at = format!("spec.subnetSelectorTerms[{i}]");
        selector_tags(&mut p, &at, &t.tags);
        match (&t.id, t.tags.is_empty()) {
            (None, true) => p.add(&at, "a subnet selector term needs tags or id"),
            (Some(_), false) => p.add(&at, "a subnet selector term with id cannot also have tags"),
            _ => {}
        }
        prefixed_id(&mut p, &format!("{at}.id"), t.id.as_deref(), "subnet-");
    }
    count(&mut p, "spec.securityGroupSelectorTerms", spec.security_group_selector_terms.len());
    for (i, t) in spec.security_group_selector_terms.iter().enumerate() {
        let at = format!("spec.securityGroupSelectorTerms[{i}]");
        selector_tags(&mut p, &at, &t.tags);
        if t.id.is_none() && t.name.is_none() && t.tags.is_empty() {
            p.add(&at, "a security group selector term needs tags, id or name");
        }
        if t.id.is_some() && (t.name.is_some() || !t.tags.is_empty()) {
            p.add(&at, "a security group selector term with id cannot also have tags or name");
        }
        prefixed_id(&mut p, &format!("{at}.id"), t.id.as_deref(), "sg-");
    }
    count(&mut p, "spec.amiSelectorTerms", spec.ami_selector_terms.len());
    let aliases: Vec<&str> = spec.ami_selector_terms.iter().filter_map(|t| t.alias.as_deref()).collect();
    if !aliases.is_empty() && spec.ami_selector_terms.len() > 1 {
        p.add("spec.amiSelectorTerms", "an alias term must be the only amiSelectorTerms entry");
    }
    for (i, t) in spec.ami_selector_terms.iter().enumerate() {
        let at = format!("spec.amiSelectorTerms[{i}]");
        selector_tags(&mut p, &at, &t.tags);
        let others =
            t.id.is_some() || t.name.is_some() || t.owner.is_some() || t.ssm_parameter.is_some() || !t.tags.is_empty();
        if let Some(alias) = &t.alias {
            if others {
                p.add(&at, "an AMI selector term with alias cannot have any other field");
            }
            let version_ok = alias.split_once('@').is_some_and(|(_, v)| {
                v == "latest" || (v.starts_with('v') && v.len() > 1 && !v.contains(char::is_whitespace))
            });
            if AmiFamily::from_alias(alias).is_none() || !version_ok || alias.len() > 30 {
                p.add(
                    format!("{at}.alias"),
                    format!("{alias:?} is not an alias; write family@version with family al2, al2023, bottlerocket, windows2019 or windows2022 and version latest or vX"),
                );
            }
        } else if !others {
            p.add(&at, "an AMI selector term needs alias, tags, id, name or ssmParameter");
        }
        if t.id.is_some() && (t.name.is_some() || t.owner.is_some() || !t.tags.is_empty()) {
            p.add(&at, "an AMI selector term with id cannot also have tags, name or owner");
        }
        prefixed_id(&mut p, &format!("{at}.id"), t.id.as_deref(), "ami-");
    }
    match (spec.ami_family, aliases.first().and_then(|a| AmiFamily::from_alias(a))) {
        (None, None) if aliases.is_empty() => {
            p.add("spec.amiFamily", "is required unless amiSelectorTerms uses an alias")
        }
        (Some(family), Some(implied)) if family != implied => p.add(
            "spec.amiFamily",
            format!("{family:?} contradicts the alias, which implies {implied:?}; remove amiFamily"),
        ),
        _ => {}
    }
    match (&spec.role, &spec.instance_profile) {
        (Some(_), Some(_)) => p.add("spec.role", "give exactly one of role and instanceProfile, not both"),
        (None, None) => p.add("spec.role", "give exactly one of role and instanceProfile"),
        _ => {}
    }
    if spec.tags.len() > MAX_TAGS {
        p.add(
            "spec.tags",
            format!("{} tags given; at most {MAX_TAGS} (EC2 allows 50 and Rafter writes 5)", spec.tags.len()),
        );
    }
    for (key, value) in &spec.tags {
        if key.chars().count() > MAX_TAG_KEY_LENGTH {
            p.add(format!("spec.tags[{key}]"), format!("tag keys are at most {MAX_TAG_KEY_LENGTH} characters"));
        }
        if value.chars().count() > MAX_TAG_VALUE_LENGTH {
            p.add(format!("spec.tags[{key}]"), format!("tag values are at most {MAX_TAG_VALUE_LENGTH} characters"));
        }
    }
    for key in spec.tags.keys() {
        if let Some(prefix) = RESTRICTED_TAG_PREFIXES.iter().find(|pre| key.starts_with(*pre)) {
            p.add(format!("spec.tags[{key}]"), format!("tags starting with {prefix} are set by Rafter"));
        }
    }
    if let Some(k) = &spec.kubelet {
        if let (Some(high), Some(low)) = (k.image_gc_high_threshold_percent, k.image_gc_low_threshold_percent)
            && high <= low
        {
            p.add("spec.kubelet.imageGCHighThresholdPercent", "must be greater than imageGCLowThresholdPercent");
        }
        for (field, value) in [
            ("imageGCHighThresholdPercent", k.image_gc_high_threshold_percent),
            ("imageGCLowThresholdPercent", k.image_gc_low_threshold_percent),
        ] {
            if value.is_some_and(|v| !(0..=100).contains(&v)) {
                p.add(format!("spec.kubelet.{field}"), "must be between 0 and 100");
            }
        }
        for (field, value) in [("maxPods", k.max_pods), ("podsPerCore", k.pods_per_core)] {
            if value.is_some_and(|v| v < 0) {
                p.add(format!("spec.kubelet.{field}"), "must not be negative");
            }
        }
        for (field, map) in [
            ("evictionHard", &k.eviction_hard),
            ("evictionSoft", &k.eviction_soft),
            ("evictionSoftGracePeriod", &k.eviction_soft_grace_period),
        ] {
            if map.len() > MAX_EVICTION_SIGNALS {
                p.add(format!("spec.kubelet.{field}"), format!("at most {MAX_EVICTION_SIGNALS} eviction signals"));
            }
        }
        for key in k.eviction_soft.keys() {
            if !k.eviction_soft_grace_period.contains_key(key) {
                p.add(format!("spec.kubelet.evictionSoft[{key}]"), "needs a matching evictionSoftGracePeriod");
            }
        }
    }
    let roots = spec.block_device_mappings.iter().filter(|m| m.root_volume == Some(true)).count();
    if roots > 1 {
        p.add("spec.blockDeviceMappings", "at most one block device mapping may be the root volume");
    }
    for (i, m) in spec.block_device_mappings.iter().enumerate() {
        if let Some(size) = m.ebs.as_ref().and_then(|e| e.volume_size.as_ref())
            && let Err(e) = size.parse()
        {
            p.add(format!("spec.blockDeviceMappings[{i}].ebs.volumeSize"), e.to_string());
        }
    }
    if let Some(hops) = spec.metadata_options.as_ref().and_then(|m| m.http_put_response_hop_limit)
        && !(1..=64).contains(&hops)
    {
        p.add("spec.metadataOptions.httpPutResponseHopLimit", format!("{hops} is out of range; give 1 to 64"));
    }
    p.finish()
}

fn selector_tags(p: &mut Problems, at: &str, tags: &std::collections::BTreeMap<String, String>) {
    for (k, v) in tags {
        if k.is_empty() || v.is_empty() {
            p.add(format!("{at}.tags"), "selector tag keys and values must not be empty");
        }
    }
}

fn prefixed_id(p: &mut Problems, at: &str, id: Option<&str>, prefix: &str) {
    if let Some(id) = id {
        let ok = id
            .strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        if !ok {
            p.add(at, format!("{id:?} is not an ID of the form {prefix}0123abcd"));
        }
    }
}
