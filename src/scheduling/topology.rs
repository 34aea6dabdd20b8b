//! Topology spread and pod (anti-)affinity: which pods count, in which domains, and how many.
//!
//! A constraint names a topology key (`kubernetes.io/hostname`, `topology.kubernetes.io/zone`, or
//! any node label) and selects pods by namespace and labels. [`Counts`] keeps, per distinct
//! (namespaces, selector, key) group, how many selected pods each domain holds, and is updated as
//! the solver places pods, so checking a constraint costs one map lookup.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::labels::HOSTNAME;

/// Whether `selector` selects a pod with `labels`. A missing selector selects nothing; an empty
/// one selects everything, as in Kubernetes.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else { return false };
    let by_label = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    by_label
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// Which namespaces a constraint's pods come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespaces {
    /// Every namespace (an empty namespace selector).
    All,
    /// These namespaces.
    Only(BTreeSet<String>),
}

impl Namespaces {
    fn contains(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(namespace),
        }
    }
}

/// The pods a constraint counts, in one topology key: the identity of a [`Counts`] group.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Namespaces the pods come from.
    pub namespaces: Namespaces,
    /// The label selector, in canonical JSON (selectors have no `Hash`).
    selector_key: String,
    /// The selector itself.
    pub selector: Option<LabelSelector>,
    /// The topology key.
    pub key: String,
}

// Identity is the namespaces, the selector's canonical form and the key.
impl PartialEq for Selection {
    fn eq(&self, other: &Self) -> bool {
        self.namespaces == other.namespaces && self.selector_key == other.selector_key && self.key == other.key
    }
}

impl Eq for Selection {}

impl std::hash::Hash for Selection {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.namespaces.hash(state);
        self.selector_key.hash(state);
        self.key.hash(state);
    }
}

impl Selection {
    fn new(namespaces: Namespaces, selector: Option<LabelSelector>, key: String) -> Self {
        let selector_key = serde_json::to_string(&selector).unwrap_or_default();
        Self { namespaces, selector_key, selector, key }
    }

    /// Whether a pod in `namespace` with `labels` counts.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.contains(namespace) && selects(self.selector.as_ref(), labels)
    }
}

/// A topology spread constraint.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// The pods counted and the key.
    pub selection: Selection,
    /// Largest allowed difference between a domain's count and the smallest.
    pub max_skew: u32,
    /// When fewer domains than this exist, the smallest count is taken as 0.
    pub min_domains: Option<u32>,
    /// `DoNotSchedule` (true) or `ScheduleAnyway` (false: honoured until relaxed).
    pub required: bool,
    /// Whether only domains the pod's node affinity admits count (`nodeAffinityPolicy: Honor`).
    pub honor_node_affinity: bool,
    /// Whether only domains whose taints the pod tolerates count (`nodeTaintsPolicy: Honor`).
    pub honor_taints: bool,
}

/// A pod affinity or anti-affinity term.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityTerm {
    /// The pods it refers to and the key.
    pub selection: Selection,
    /// Anti-affinity (keep away) rather than affinity (stay close).
    pub anti: bool,
    /// Required (true) or preferred (honoured until relaxed).
    pub required: bool,
}

/// A pod's topology constraints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodTopology {
    /// Namespace of the pod.
    pub namespace: String,
    /// Labels of the pod.
    pub labels: BTreeMap<String, String>,
    /// Its spread constraints.
    pub spreads: Vec<Spread>,
    /// Its affinity and anti-affinity terms; preferred ones heaviest first.
    pub terms: Vec<AffinityTerm>,
}

fn term_selection(term: &PodAffinityTerm, namespace: &str) -> Selection {
    let mut names: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
    let all = term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    if names.is_empty() && term.namespace_selector.is_none() {
        names.insert(namespace.to_string());
    }
    let namespaces = if all { Namespaces::All } else { Namespaces::Only(names) };
    Selection::new(namespaces, term.label_selector.clone(), term.topology_key.clone())
}

impl PodTopology {
    /// Reads a pod's spread constraints and affinity terms.
    pub fn new(pod: &Pod, spec: &PodSpec) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let spreads = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .map(|c| {
                // matchLabelKeys narrow the selector to pods sharing this pod's values of those keys.
                let mut selector = c.label_selector.clone();
                if let Some(sel) = selector.as_mut() {
                    for key in c.match_label_keys.iter().flatten() {
                        if let Some(value) = labels.get(key) {
                            sel.match_labels.get_or_insert_with(BTreeMap::new).insert(key.clone(), value.clone());
                        }
                    }
                }
                Spread {
                    selection: Selection::new(
                        Namespaces::Only(BTreeSet::from([namespace.clone()])),
                        selector,
                        c.topology_key.clone(),
                    ),
                    max_skew: u32::try_from(c.max_skew).unwrap_or(1).max(1),
                    min_domains: c.min_domains.and_then(|m| u32::try_from(m).ok()),
                    required: c.when_unsatisfiable != "ScheduleAnyway",
                    honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                    honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                }
            })
            .collect();
        let mut terms = Vec::new();
        let affinity = spec.affinity.as_ref();
        let near = affinity.and_then(|a| a.pod_affinity.as_ref());
        let away = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        for (anti, required, weighted) in [
            (
                false,
                near.and_then(|p| p.required_during_scheduling_ignored_during_execution.clone()),
                near.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.clone()),
            ),
            (
                true,
                away.and_then(|p| p.required_during_scheduling_ignored_during_execution.clone()),
                away.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.clone()),
            ),
        ] {
            let (required, mut weighted) = (required.unwrap_or_default(), weighted.unwrap_or_default());
            for term in &required {
                terms.push(AffinityTerm { selection: term_selection(term, &namespace), anti, required: true });
            }
            weighted.sort_by_key(|w| std::cmp::Reverse(w.weight));
            for w in &weighted {
                terms.push(AffinityTerm {
                    selection: term_selection(&w.pod_affinity_term, &namespace),
                    anti,
                    required: false,
                });
            }
        }
        Self { namespace, labels, spreads, terms }
    }

    /// Whether the pod has any constraint at all.
    pub fn is_empty(&self) -> bool {
        self.spreads.is_empty() && self.terms.is_empty()
    }
}

/// Where a pod is: an existing node or a new claim of this solve, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// An existing node or in-flight claim.
    Node(usize),
    /// A claim opened in this solve.
    Claim(usize),
}

/// A pod already placed, as topology sees it.
#[derive(Debug, Clone)]
struct Placed {
    namespace: String,
    labels: BTreeMap<String, String>,
    target: Target,
}

/// Counts of selected pods per domain, for every selection seen so far.
#[derive(Debug, Default)]
pub struct Counts {
    groups: HashMap<Selection, HashMap<String, u32>>,
    placed: Vec<Placed>,
    /// For each required anti-affinity selection some placed pod carries: how many such pods
    /// each domain holds. They repel every later pod the selection selects.
    repellers: HashMap<Selection, HashMap<String, u32>>,
}

impl Counts {
    /// Records a pod at a target; `domain(target, key)` names its domain for a key, if known.
    pub fn record(&mut self, topology: &PodTopology, target: Target, domain: impl Fn(Target, &str) -> Option<String>) {
        for (selection, counts) in &mut self.groups {
            if selection.selects(&topology.namespace, &topology.labels)
                && let Some(d) = domain(target, &selection.key)
            {
                *counts.entry(d).or_default() += 1;
            }
        }
        for term in topology.terms.iter().filter(|t| t.anti && t.required) {
            if let Some(d) = domain(target, &term.selection.key) {
                *self.repellers.entry(term.selection.clone()).or_default().entry(d).or_default() += 1;
            }
        }
        self.placed.push(Placed { namespace: topology.namespace.clone(), labels: topology.labels.clone(), target });
    }

    /// Selected pods per domain (built from every placed pod the first time a selection is asked for).
    pub fn counts(
        &mut self,
        selection: &Selection,
        domain: impl Fn(Target, &str) -> Option<String>,
    ) -> &HashMap<String, u32> {
        if !self.groups.contains_key(selection) {
            let mut counts = HashMap::new();
            for p in &self.placed {
                if selection.selects(&p.namespace, &p.labels)
                    && let Some(d) = domain(p.target, &selection.key)
                {
                    *counts.entry(d).or_default() += 1;
                }
            }
            self.groups.insert(selection.clone(), counts);
        }
        &self.groups[selection]
    }

    /// Whether any placed pod's required anti-affinity (in `key`) selects this pod.
    pub fn is_repelled_anywhere(&self, topology: &PodTopology, key: &str) -> bool {
        self.repellers.iter().any(|(s, counts)| {
            s.key == key && s.selects(&topology.namespace, &topology.labels) && counts.values().any(|n| *n > 0)
        })
    }

    /// Domains (in `key`) that placed pods with required anti-affinity keep this pod out of.
    pub fn repelled(&self, topology: &PodTopology, key: &str) -> BTreeSet<String> {
        self.repellers
            .iter()
            .filter(|(s, _)| s.key == key && s.selects(&topology.namespace, &topology.labels))
            .flat_map(|(_, counts)| counts.iter().filter(|(_, n)| **n > 0).map(|(d, _)| d.clone()))
            .collect()
    }

    /// Whether placed pods with required anti-affinity keep this pod out of `domain`.
    pub fn is_repelled(&self, topology: &PodTopology, key: &str, domain: &str) -> bool {
        self.repellers.iter().any(|(s, counts)| {
            s.key == key
                && counts.get(domain).is_some_and(|n| *n > 0)
                && s.selects(&topology.namespace, &topology.labels)
        })
    }
}

/// Whether a key's domains are single nodes.
pub fn is_hostname(key: &str) -> bool {
    key == HOSTNAME
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value, labels: serde_json::Value) -> (Pod, PodSpec) {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "web", "labels": labels}, "spec": spec}),
        )
        .unwrap();
        let spec = pod.spec.clone().unwrap();
        (pod, spec)
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let sel: LabelSelector = serde_json::from_value(
            json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
        )
        .unwrap();
        assert!(selects(Some(&sel), &labels));
        assert!(!selects(None, &labels), "a missing selector selects nothing");
        assert!(selects(Some(&LabelSelector::default()), &labels), "an empty selector selects everything");
        let not_in: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
        )
        .unwrap();
        assert!(!selects(Some(&not_in), &labels));
    }

    #[test]
    fn spreads_and_terms_are_read_with_their_defaults() {
        let (p, spec) = pod(
            json!({"containers": [], "topologySpreadConstraints": [
                {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["rev"]}
            ], "affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}],
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": {"topologyKey": "a", "labelSelector": {}}},
                    {"weight": 90, "podAffinityTerm": {"topologyKey": "b", "labelSelector": {}, "namespaceSelector": {}}}
                ]
            }}}),
            json!({"app": "web", "rev": "7"}),
        );
        let t = PodTopology::new(&p, &spec);
        assert_eq!(t.spreads.len(), 1);
        let s = &t.spreads[0];
        assert!(!s.required && s.honor_node_affinity && !s.honor_taints && s.max_skew == 2);
        assert_eq!(s.selection.selector.as_ref().unwrap().match_labels.as_ref().unwrap()["rev"], "7");
        assert_eq!(t.terms.len(), 3);
        assert!(t.terms[0].anti && t.terms[0].required);
        assert_eq!(t.terms[1].selection.key, "b", "preferred terms heaviest first");
        assert_eq!(t.terms[1].selection.namespaces, Namespaces::All);
        assert_eq!(t.terms[2].selection.namespaces, Namespaces::Only(["web".to_string()].into()));
    }

    #[test]
    fn counts_follow_placements_and_anti_affinity_repels() {
        let (p, spec) = pod(
            json!({"containers": [], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}
            ]}}}),
            json!({"app": "web"}),
        );
        let t = PodTopology::new(&p, &spec);
        let domain = |target: Target, _key: &str| Some(format!("{target:?}"));
        let mut counts = Counts::default();
        counts.record(&t, Target::Claim(0), domain);
        let selection = t.terms[0].selection.clone();
        assert_eq!(counts.counts(&selection, domain).get("Claim(0)"), Some(&1));
        counts.record(&t, Target::Claim(1), domain);
        assert_eq!(counts.counts(&selection, domain).get("Claim(1)"), Some(&1));
        let repelled = counts.repelled(&t, HOSTNAME);
        assert_eq!(repelled.len(), 2);
        assert!(counts.is_repelled(&t, HOSTNAME, "Claim(1)") && !counts.is_repelled(&t, HOSTNAME, "Claim(2)"));
        assert!(counts.is_repelled_anywhere(&t, HOSTNAME));
    }
}
