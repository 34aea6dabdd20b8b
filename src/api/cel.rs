//! CEL rules (`x-kubernetes-validations`) shared by several CRD schemas, built from the label constants.
//!
//! The API server enforces these on create and update; `validation` checks the same facts in Rust
//! for objects that reached Rafter some other way (older CRDs, conversion, tests).

use kube::core::{Message, Reason, Rule};

use super::labels::{DOMAIN_EXCEPTIONS, HOSTNAME, NODEPOOL, RESTRICTED_DOMAINS, WELL_KNOWN_LABELS};

fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A regular expression matching keys whose prefix is one of `domains` or a subdomain of one.
fn domain_regex(domains: &[&str]) -> String {
    let alternatives: Vec<String> = domains.iter().map(|d| d.replace('.', "\\\\.")).collect();
    format!("^([^/]*\\\\.)?({})/", alternatives.join("|"))
}

/// CEL that is true when the label key `var` is outside every restricted domain, or well known.
///
/// Two regular-expression matches rather than string splitting keep the rule's estimated cost
/// low, which the API server checks when the CRD is created.
fn key_allowed_expr(var: &str) -> String {
    format!(
        "{var} in {} || !{var}.matches('{}') || {var}.matches('{}')",
        quoted_list(WELL_KNOWN_LABELS),
        domain_regex(RESTRICTED_DOMAINS),
        domain_regex(DOMAIN_EXCEPTIONS)
    )
}

/// On a requirement's `key`: not the hostname, and not in a restricted domain unless well known.
pub fn requirement_key_rules() -> Vec<Rule> {
    vec![
        Rule::new(format!("self != '{HOSTNAME}'"))
            .message(Message::Message(format!("{HOSTNAME} is chosen per node and cannot be required by a pool"))),
        Rule::new(key_allowed_expr("self")).message(
            "label domains kubernetes.io, k8s.io, karpenter.sh and karpenter.k8s.aws are restricted to their well-known labels",
        ),
    ]
}

/// On template `labels`: no restricted keys, and not the NodePool label Rafter sets itself.
pub fn template_label_rules() -> Vec<Rule> {
    vec![
        Rule::new(format!("self.all(k, k != '{NODEPOOL}' && k != '{HOSTNAME}')"))
            .message(Message::Message(format!("labels {NODEPOOL} and {HOSTNAME} are set by Rafter and cannot be given"))),
        Rule::new(format!("self.all(k, {})", key_allowed_expr("k"))).message(
            "label domains kubernetes.io, k8s.io, karpenter.sh and karpenter.k8s.aws are restricted to their well-known labels",
        ),
    ]
}

/// On one requirement: the operator's value-count rules and `minValues`.
pub fn requirement_rules() -> Vec<Rule> {
    vec![
        Rule::new("self.operator != 'In' || (has(self.values) && size(self.values) > 0)")
            .message("operator In needs at least one value")
            .field_path(".values")
            .reason(Reason::FieldValueRequired),
        Rule::new("!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0")
            .message("operators Exists and DoesNotExist take no values")
            .field_path(".values")
            .reason(Reason::FieldValueForbidden),
        Rule::new(
            "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1 && self.values[0].matches('^[0-9]+$'))",
        )
        .message("operators Gt and Lt take exactly one non-negative integer value")
        .field_path(".values"),
        Rule::new("!has(self.minValues) || self.operator != 'In' || (has(self.values) && size(self.values) >= self.minValues)")
            .message("minValues is larger than the number of values given")
            .field_path(".minValues"),
    ]
}

/// Adds `rules` to a schema node (used from `#[schemars(transform = …)]`).
pub fn add_rules(schema: &mut schemars::Schema, rules: Vec<Rule>) {
    for rule in rules {
        // Serialising a `Rule` into JSON cannot fail: it is strings and an enum.
        let _ = kube::core::validate(schema, rule);
    }
}
