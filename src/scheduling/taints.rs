//! Taints and tolerations with Kubernetes' matching rules.

use std::fmt;

use k8s_openapi::api::core::v1::{Taint as KubeTaint, Toleration};

use crate::api::nodeclaim::{Taint, TaintEffect};

/// Reads a Node's taint; `None` for an effect Kubernetes does not define.
pub fn from_kube(taint: &KubeTaint) -> Option<Taint> {
    let effect = match taint.effect.as_str() {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        _ => return None,
    };
    Some(Taint { key: taint.key.clone(), value: taint.value.clone(), effect, time_added: None })
}

fn effect_name(effect: TaintEffect) -> &'static str {
    match effect {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    }
}

/// A taint written as `key=value:Effect`, the way `kubectl taint` takes it.
#[derive(Debug)]
pub struct Display<'a>(pub &'a Taint);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.value.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => write!(f, "{}={}:{}", self.0.key, v, effect_name(self.0.effect)),
            None => write!(f, "{}:{}", self.0.key, effect_name(self.0.effect)),
        }
    }
}

/// Whether one toleration tolerates one taint.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != effect_name(taint.effect)
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or("Equal") {
        // An empty key with Exists tolerates every taint.
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The first taint none of the tolerations tolerate. `PreferNoSchedule` taints count only while
/// preferences are honoured (`strict`); once relaxed, a pod may land on them.
pub fn first_untolerated<'a>(tolerations: &[Toleration], taints: &'a [Taint], strict: bool) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| strict || t.effect != TaintEffect::PreferNoSchedule)
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
        Taint { key: key.into(), value: value.map(String::from), effect, time_added: None }
    }

    fn toleration(key: Option<&str>, operator: Option<&str>, value: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(String::from),
            operator: operator.map(String::from),
            value: value.map(String::from),
            effect: effect.map(String::from),
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_match_by_key_value_operator_and_effect() {
        let gpu = taint("dedicated", Some("gpu"), TaintEffect::NoSchedule);
        assert!(tolerates(&toleration(Some("dedicated"), None, Some("gpu"), None), &gpu));
        assert!(tolerates(&toleration(Some("dedicated"), Some("Equal"), Some("gpu"), Some("NoSchedule")), &gpu));
        assert!(!tolerates(&toleration(Some("dedicated"), None, Some("cpu"), None), &gpu));
        assert!(!tolerates(&toleration(Some("dedicated"), None, Some("gpu"), Some("NoExecute")), &gpu));
        assert!(tolerates(&toleration(Some("dedicated"), Some("Exists"), None, None), &gpu));
        assert!(tolerates(&toleration(None, Some("Exists"), None, None), &gpu), "empty key with Exists tolerates all");
        assert!(!tolerates(&toleration(None, None, None, None), &gpu));
    }

    #[test]
    fn prefer_no_schedule_binds_only_while_strict() {
        let taints =
            [taint("spot", None, TaintEffect::PreferNoSchedule), taint("gpu", Some("yes"), TaintEffect::NoSchedule)];
        let found = first_untolerated(&[], &taints, true).unwrap();
        assert_eq!(Display(found).to_string(), "spot:PreferNoSchedule");
        let found = first_untolerated(&[], &taints, false).unwrap();
        assert_eq!(Display(found).to_string(), "gpu=yes:NoSchedule");
        let gpu_ok = [toleration(Some("gpu"), Some("Exists"), None, None)];
        assert!(first_untolerated(&gpu_ok, &taints, false).is_none());
    }
}
