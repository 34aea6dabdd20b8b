//! The requirement algebra: label constraints of pools, pods and instance types as sets of allowed
//! label states, with intersection, compatibility and `minValues`.
//!
//! A requirement on a key allows some of the states "label absent" and "label = v". `In [a b]`
//! allows a and b; `NotIn [a]` allows absence and every value but a; `Exists` allows every value;
//! `DoesNotExist` allows only absence; `Gt 4` allows integers above 4. Intersecting two
//! requirements intersects the sets; two requirements are compatible when the intersection is not
//! empty. This is the same meaning Kubernetes gives node affinity, so a pod that the solver places
//! under these rules is one kube-scheduler also accepts.
//!
//! It is one piece because every operation is defined over the same set representation; a quarter of
//! the file is its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use crate::api::nodeclaim::{NodeSelectorRequirementWithMinValues, Operator};

/// Why a requirement cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// `Gt`/`Lt` need one integer.
    #[error("{key} {operator:?} needs exactly one integer value, got {values:?}")]
    NotAnInteger {
        /// The label key.
        key: String,
        /// Gt or Lt.
        operator: Operator,
        /// What was given.
        values: Vec<String>,
    },
    /// The operator is not one Kubernetes defines.
    #[error("{key}: unknown operator {operator:?}; use In, NotIn, Exists, DoesNotExist, Gt or Lt")]
    UnknownOperator {
        /// The label key.
        key: String,
        /// What was given.
        operator: String,
    },
}

/// The values a present label may take.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Values {
    /// Exactly these.
    Only(BTreeSet<String>),
    /// Any value except these, within the integer bounds if any are set.
    AllBut { excluded: BTreeSet<String>, greater_than: Option<i64>, less_than: Option<i64> },
}

/// The allowed states of one label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    absent_allowed: bool,
    values: Values,
    /// At least this many distinct values must remain possible (Karpenter's `minValues`).
    pub min_values: Option<usize>,
}

impl Requirement {
    /// A requirement from an operator and values, as manifests write it.
    pub fn new(key: impl Into<String>, operator: Operator, values: &[String]) -> Result<Self, RequirementError> {
        let key = key.into();
        let set = || values.iter().cloned().collect::<BTreeSet<_>>();
        let integer = |key: &str| match values {
            [one] => one.parse::<i64>().map_err(|_| RequirementError::NotAnInteger {
                key: key.to_string(),
                operator,
                values: values.to_vec(),
            }),
            _ => Err(RequirementError::NotAnInteger { key: key.to_string(), operator, values: values.to_vec() }),
        };
        let (absent_allowed, values) = match operator {
            Operator::In => (false, Values::Only(set())),
            Operator::NotIn => (true, Values::AllBut { excluded: set(), greater_than: None, less_than: None }),
            Operator::Exists => {
                (false, Values::AllBut { excluded: BTreeSet::new(), greater_than: None, less_than: None })
            }
            Operator::DoesNotExist => (true, Values::Only(BTreeSet::new())),
            Operator::Gt => {
                let n = integer(&key)?;
                (false, Values::AllBut { excluded: BTreeSet::new(), greater_than: Some(n), less_than: None })
            }
            Operator::Lt => {
                let n = integer(&key)?;
                (false, Values::AllBut { excluded: BTreeSet::new(), greater_than: None, less_than: Some(n) })
            }
        };
        Ok(Self { key, absent_allowed, values, min_values: None })
    }

    /// `key In [value]`: what a label on a node amounts to.
    pub fn single(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            absent_allowed: false,
            values: Values::Only(BTreeSet::from([value.into()])),
            min_values: None,
        }
    }

    /// `key In values`.
    pub fn one_of(key: impl Into<String>, values: impl IntoIterator<Item = String>) -> Self {
        Self {
            key: key.into(),
            absent_allowed: false,
            values: Values::Only(values.into_iter().collect()),
            min_values: None,
        }
    }

    /// Any state at all: what an unconstrained key allows.
    pub fn any(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            absent_allowed: true,
            values: Values::AllBut { excluded: BTreeSet::new(), greater_than: None, less_than: None },
            min_values: None,
        }
    }

    /// `key DoesNotExist`: what a key nobody sets amounts to on a node.
    pub fn absent(key: impl Into<String>) -> Self {
        Self { key: key.into(), absent_allowed: true, values: Values::Only(BTreeSet::new()), min_values: None }
    }

    /// A NodePool or NodeClaim requirement.
    pub fn from_api(r: &NodeSelectorRequirementWithMinValues) -> Result<Self, RequirementError> {
        let mut out = Self::new(&r.key, r.operator, &r.values)?;
        out.min_values = r.min_values.and_then(|m| usize::try_from(m).ok());
        Ok(out)
    }

    /// A pod's node affinity expression.
    pub fn from_kube(r: &NodeSelectorRequirement) -> Result<Self, RequirementError> {
        let operator = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" => Operator::Gt,
            "Lt" => Operator::Lt,
            other => return Err(RequirementError::UnknownOperator { key: r.key.clone(), operator: other.into() }),
        };
        Self::new(&r.key, operator, r.values.as_deref().unwrap_or_default())
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether a node whose label is `value` (`None`: absent) satisfies this requirement.
    pub fn allows(&self, value: Option<&str>) -> bool {
        match value {
            None => self.absent_allowed,
            Some(v) => match &self.values {
                Values::Only(set) => set.contains(v),
                Values::AllBut { excluded, greater_than, less_than } => {
                    if excluded.contains(v) {
                        return false;
                    }
                    if greater_than.is_none() && less_than.is_none() {
                        return true;
                    }
                    v.parse::<i64>()
                        .is_ok_and(|n| greater_than.is_none_or(|g| n > g) && less_than.is_none_or(|l| n < l))
                }
            },
        }
    }

    /// The states both requirements allow.
    pub fn intersect(&self, other: &Self) -> Self {
        let values = match (&self.values, &other.values) {
            (Values::Only(a), Values::Only(b)) => Values::Only(a.intersection(b).cloned().collect()),
            (Values::Only(a), bounded @ Values::AllBut { .. }) | (bounded @ Values::AllBut { .. }, Values::Only(a)) => {
                let probe =
                    Self { key: String::new(), absent_allowed: false, values: bounded.clone(), min_values: None };
                Values::Only(a.iter().filter(|v| probe.allows(Some(v))).cloned().collect())
            }
            (
                Values::AllBut { excluded: e1, greater_than: g1, less_than: l1 },
                Values::AllBut { excluded: e2, greater_than: g2, less_than: l2 },
            ) => Values::AllBut {
                excluded: e1.union(e2).cloned().collect(),
                // `None` is "unbounded": the larger lower bound and the smaller upper bound win.
                greater_than: (*g1).max(*g2),
                less_than: match (l1, l2) {
                    (Some(a), Some(b)) => Some(*a.min(b)),
                    (a, b) => a.or(*b),
                },
            },
        };
        Self {
            key: self.key.clone(),
            absent_allowed: self.absent_allowed && other.absent_allowed,
            values,
            min_values: self.min_values.max(other.min_values),
        }
    }

    /// Whether every state `other` allows is also allowed by `self`.
    pub fn contains(&self, other: &Self) -> bool {
        if other.absent_allowed && !self.absent_allowed {
            return false;
        }
        match (&self.values, &other.values) {
            (_, Values::Only(set)) => set.iter().all(|v| self.allows(Some(v))),
            (Values::Only(_), Values::AllBut { .. }) => !other.has_any_value(),
            (
                Values::AllBut { excluded, greater_than: g1, less_than: l1 },
                Values::AllBut { greater_than: g2, less_than: l2, .. },
            ) => {
                excluded.iter().all(|v| !other.allows(Some(v)))
                    && g1.is_none_or(|a| g2.is_some_and(|b| b >= a))
                    && l1.is_none_or(|a| l2.is_some_and(|b| b <= a))
            }
        }
    }

    /// Whether some value (not absence) is allowed by both, without building the intersection.
    pub fn shares_value(&self, other: &Self) -> bool {
        match (&self.values, &other.values) {
            (Values::Only(set), _) => set.iter().any(|v| other.allows(Some(v))),
            (_, Values::Only(set)) => set.iter().any(|v| self.allows(Some(v))),
            (
                Values::AllBut { greater_than: g1, less_than: l1, .. },
                Values::AllBut { greater_than: g2, less_than: l2, .. },
            ) => {
                let lower = (*g1).max(*g2);
                let upper = match (l1, l2) {
                    (Some(a), Some(b)) => Some(*a.min(b)),
                    (a, b) => a.or(*b),
                };
                match (lower, upper) {
                    (Some(g), Some(l)) => l.saturating_sub(g) > 1,
                    _ => true,
                }
            }
        }
    }

    /// Whether some state (a value, or absence) is allowed by both: the intersection is satisfiable.
    pub fn meets(&self, other: &Self) -> bool {
        (self.absent_allowed && other.absent_allowed) || self.shares_value(other)
    }

    /// Whether some value (not absence) is allowed.
    pub fn has_any_value(&self) -> bool {
        match &self.values {
            Values::Only(set) => !set.is_empty(),
            Values::AllBut { greater_than: Some(g), less_than: Some(l), .. } => l.saturating_sub(*g) > 1,
            Values::AllBut { .. } => true,
        }
    }

    /// Whether no state at all is allowed: a contradiction.
    pub fn is_unsatisfiable(&self) -> bool {
        !self.absent_allowed && !self.has_any_value()
    }

    /// Whether the label may be absent.
    pub fn allows_absent(&self) -> bool {
        self.absent_allowed
    }

    /// The allowed values, when they are a finite list (`In`).
    pub fn finite_values(&self) -> Option<&BTreeSet<String>> {
        match &self.values {
            Values::Only(set) => Some(set),
            Values::AllBut { .. } => None,
        }
    }

    /// The requirement in manifest form: one or more expressions whose conjunction allows the same
    /// states (`NotIn` plus `Exists` for "present but not these", `Gt` and `Lt` for bounds).
    pub fn to_api(&self) -> Vec<NodeSelectorRequirementWithMinValues> {
        let expr = |operator: Operator, values: Vec<String>| NodeSelectorRequirementWithMinValues {
            key: self.key.clone(),
            operator,
            values,
            min_values: None,
        };
        let mut out = match &self.values {
            Values::Only(set) if set.is_empty() && self.absent_allowed => vec![expr(Operator::DoesNotExist, vec![])],
            Values::Only(set) => vec![expr(Operator::In, set.iter().cloned().collect())],
            Values::AllBut { excluded, greater_than, less_than } => {
                let mut parts = Vec::new();
                if !excluded.is_empty() {
                    parts.push(expr(Operator::NotIn, excluded.iter().cloned().collect()));
                }
                if let Some(g) = greater_than {
                    parts.push(expr(Operator::Gt, vec![g.to_string()]));
                }
                if let Some(l) = less_than {
                    parts.push(expr(Operator::Lt, vec![l.to_string()]));
                }
                if !self.absent_allowed && greater_than.is_none() && less_than.is_none() {
                    parts.push(expr(Operator::Exists, vec![]));
                }
                parts
            }
        };
        if let (Some(first), Some(min)) = (out.first_mut(), self.min_values) {
            first.min_values = i32::try_from(min).ok();
        }
        out
    }

    /// The one value a node must carry, if there is exactly one.
    pub fn single_value(&self) -> Option<&str> {
        match &self.values {
            Values::Only(set) if set.len() == 1 && !self.absent_allowed => set.iter().next().map(String::as_str),
            _ => None,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(" ");
        match (&self.values, self.absent_allowed) {
            (Values::Only(set), false) => write!(f, "{} In [{}]", self.key, list(set)),
            (Values::Only(set), true) if set.is_empty() => write!(f, "{} DoesNotExist", self.key),
            (Values::Only(set), true) => write!(f, "{} In [{}] or absent", self.key, list(set)),
            (Values::AllBut { excluded, greater_than, less_than }, absent) => {
                let mut parts = Vec::new();
                if !excluded.is_empty() {
                    parts.push(format!("{} NotIn [{}]", self.key, list(excluded)));
                }
                if let Some(g) = greater_than {
                    parts.push(format!("{} Gt {g}", self.key));
                }
                if let Some(l) = less_than {
                    parts.push(format!("{} Lt {l}", self.key));
                }
                if parts.is_empty() {
                    parts.push(if absent { format!("{} any", self.key) } else { format!("{} Exists", self.key) });
                }
                f.write_str(&parts.join(", "))
            }
        }
    }
}

/// Where two requirement sets disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The label key.
    pub key: String,
    /// What the first set requires of it.
    pub ours: Requirement,
    /// What the second set requires of it (`any` when it says nothing).
    pub theirs: Requirement,
}

/// Requirements on several keys, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Requirements(BTreeMap<String, Requirement>);

impl Requirements {
    /// No constraint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a requirement, intersecting it with any already on its key.
    pub fn add(&mut self, requirement: Requirement) {
        match self.0.get_mut(requirement.key()) {
            Some(existing) => *existing = existing.intersect(&requirement),
            None => {
                self.0.insert(requirement.key.clone(), requirement);
            }
        }
    }

    /// Adds every requirement of `other`.
    pub fn add_all(&mut self, other: &Self) {
        for r in other.0.values() {
            self.add(r.clone());
        }
    }

    /// The requirement on `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Requirement> {
        self.0.get(key)
    }

    /// Every requirement, by key.
    pub fn iter(&self) -> impl Iterator<Item = &Requirement> {
        self.0.values()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A pool's or claim's requirements.
    pub fn from_api(list: &[NodeSelectorRequirementWithMinValues]) -> Result<Self, RequirementError> {
        let mut out = Self::new();
        for r in list {
            out.add(Requirement::from_api(r)?);
        }
        Ok(out)
    }

    /// `key In [value]` for each label.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mut out = Self::new();
        for (k, v) in labels {
            out.add(Requirement::single(k.clone(), v.clone()));
        }
        out
    }

    /// The first key whose requirement allows nothing.
    pub fn first_unsatisfiable(&self) -> Option<&Requirement> {
        self.0.values().find(|r| r.is_unsatisfiable())
    }

    /// Whether a node with these labels satisfies every requirement.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.values().all(|r| r.allows(labels.get(r.key()).map(String::as_str)))
    }

    /// The first requirement a node with these labels does not satisfy.
    pub fn first_mismatch(&self, labels: &BTreeMap<String, String>) -> Option<&Requirement> {
        self.0.values().find(|r| !r.allows(labels.get(r.key()).map(String::as_str)))
    }

    /// Checks that a node can satisfy both `self` (what a pod asks) and `node` (what a pool or
    /// instance type promises). A key `node` says nothing about is taken as "any state" when
    /// `undefined_is_any(key)` — labels the cloud sets on every node, such as the zone — and as
    /// "absent" otherwise, since the node will not carry a label nobody puts there.
    pub fn compatible_with(&self, node: &Self, undefined_is_any: impl Fn(&str) -> bool) -> Result<(), Box<Conflict>> {
        for ours in self.0.values() {
            let theirs = node.0.get(ours.key());
            let any = theirs.is_none() && undefined_is_any(ours.key());
            let fits = match theirs {
                Some(t) => ours.meets(t),
                None if any => !ours.is_unsatisfiable(),
                None => ours.allows_absent(),
            };
            if !fits {
                let theirs = match theirs {
                    Some(t) => t.clone(),
                    None if any => Requirement::any(ours.key()),
                    None => Requirement::absent(ours.key()),
                };
                return Err(Box::new(Conflict { key: ours.key().to_string(), ours: ours.clone(), theirs }));
            }
        }
        Ok(())
    }

    /// Whether every label state a node under `node` may end up with satisfies `self`: a key
    /// `node` says nothing about will be absent on it.
    pub fn guaranteed_by(&self, node: &Self) -> bool {
        self.0.values().all(|r| match node.0.get(r.key()) {
            Some(n) => r.contains(n),
            None => r.allows_absent(),
        })
    }

    /// The intersection of two sets of requirements.
    pub fn intersect(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.add_all(other);
        out
    }

    /// Every requirement in manifest form, sorted by key.
    pub fn to_api(&self) -> Vec<NodeSelectorRequirementWithMinValues> {
        self.0.values().flat_map(Requirement::to_api).collect()
    }

    /// The labels a node under these requirements is sure to carry (single-valued keys).
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.0.values().filter_map(|r| r.single_value().map(|v| (r.key.clone(), v.to_string()))).collect()
    }
}

impl fmt::Display for Requirements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.values().map(ToString::to_string).collect();
        f.write_str(&parts.join(", "))
    }
}

fn term_requirements(term: &NodeSelectorTerm) -> Result<Requirements, RequirementError> {
    let mut out = Requirements::new();
    for e in term.match_expressions.iter().flatten() {
        out.add(Requirement::from_kube(e)?);
    }
    Ok(out)
}

/// What a pod requires of its node: the OR of its required node-affinity terms, each ANDed with
/// its `nodeSelector`. A pod with no affinity has one term, its node selector.
pub fn pod_required_terms(spec: &PodSpec) -> Result<Vec<Requirements>, RequirementError> {
    let selector = spec.node_selector.as_ref().map(Requirements::from_labels).unwrap_or_default();
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    if terms.is_empty() {
        return Ok(vec![selector]);
    }
    terms.iter().map(|t| Ok(term_requirements(t)?.intersect(&selector))).collect()
}

/// A pod's preferred node-affinity terms, heaviest first (ties keep their order).
pub fn pod_preferred_terms(spec: &PodSpec) -> Result<Vec<(i32, Requirements)>, RequirementError> {
    let mut terms: Vec<(i32, Requirements)> = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .map(|p| Ok((p.weight, term_requirements(&p.preference)?)))
        .collect::<Result<_, RequirementError>>()?;
    terms.sort_by_key(|(w, _)| std::cmp::Reverse(*w));
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
        Requirement::new(key, op, &values.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn each_operator_allows_exactly_its_states() {
        type Case<'a> = (Operator, &'a [&'a str], &'a [(Option<&'a str>, bool)]);
        let cases: &[Case] = &[
            (Operator::In, &["a", "b"], &[(Some("a"), true), (Some("c"), false), (None, false)]),
            (Operator::NotIn, &["a"], &[(Some("a"), false), (Some("c"), true), (None, true)]),
            (Operator::Exists, &[], &[(Some("x"), true), (None, false)]),
            (Operator::DoesNotExist, &[], &[(Some("x"), false), (None, true)]),
            (Operator::Gt, &["4"], &[(Some("5"), true), (Some("4"), false), (Some("x"), false), (None, false)]),
            (Operator::Lt, &["4"], &[(Some("3"), true), (Some("4"), false), (None, false)]),
        ];
        for (op, values, states) in cases {
            let r = req("k", *op, values);
            for (state, allowed) in *states {
                assert_eq!(r.allows(*state), *allowed, "{r} allows {state:?}");
            }
        }
    }

    #[test]
    fn intersections_keep_only_common_states() {
        let r = req("k", Operator::In, &["a", "b", "c"]).intersect(&req("k", Operator::NotIn, &["b"]));
        assert_eq!(r.finite_values().unwrap().iter().collect::<Vec<_>>(), ["a", "c"]);
        assert!(!r.allows(None));
        let bounded = req("gen", Operator::Gt, &["4"]).intersect(&req("gen", Operator::Lt, &["7"]));
        assert!(bounded.allows(Some("5")) && bounded.allows(Some("6")) && !bounded.allows(Some("7")));
        assert!(req("gen", Operator::Gt, &["4"]).intersect(&req("gen", Operator::Lt, &["5"])).is_unsatisfiable());
        assert!(req("k", Operator::In, &["a"]).intersect(&req("k", Operator::DoesNotExist, &[])).is_unsatisfiable());
        let both_absent = req("k", Operator::NotIn, &["a"]).intersect(&req("k", Operator::DoesNotExist, &[]));
        assert!(!both_absent.is_unsatisfiable() && both_absent.allows(None));
        let gens = req("gen", Operator::In, &["3", "5", "9"]).intersect(&req("gen", Operator::Gt, &["4"]));
        assert_eq!(gens.finite_values().unwrap().len(), 2);
    }

    #[test]
    fn manifest_form_round_trips_to_the_same_states() {
        let cases = [
            req("k", Operator::In, &["a", "b"]),
            req("k", Operator::NotIn, &["a"]),
            req("k", Operator::Exists, &[]),
            req("k", Operator::DoesNotExist, &[]),
            req("k", Operator::Gt, &["4"]).intersect(&req("k", Operator::Lt, &["9"])),
            req("k", Operator::NotIn, &["a"]).intersect(&req("k", Operator::Exists, &[])),
        ];
        for r in cases {
            let mut back = Requirements::new();
            for e in r.to_api() {
                back.add(Requirement::from_api(&e).unwrap());
            }
            let back = back.get("k").unwrap();
            for state in [None, Some("a"), Some("b"), Some("c"), Some("5"), Some("9")] {
                assert_eq!(back.allows(state), r.allows(state), "{r} vs {back} on {state:?}");
            }
        }
    }

    #[test]
    fn containment_is_a_superset_test_of_allowed_states() {
        let any_gen = req("gen", Operator::Exists, &[]);
        let newer = req("gen", Operator::Gt, &["4"]);
        let five = req("gen", Operator::In, &["5"]);
        assert!(any_gen.contains(&newer) && newer.contains(&five) && any_gen.contains(&five));
        assert!(!newer.contains(&any_gen) && !five.contains(&newer));
        assert!(
            req("gen", Operator::Gt, &["2"]).contains(&newer) && !req("gen", Operator::Gt, &["6"]).contains(&newer)
        );
        assert!(!five.contains(&req("gen", Operator::NotIn, &["1"])), "absence is not covered by In");
        assert!(req("k", Operator::NotIn, &["a"]).contains(&req("k", Operator::DoesNotExist, &[])));
        assert!(req("k", Operator::NotIn, &["a"]).contains(&req("k", Operator::NotIn, &["a", "b"])));
        assert!(!req("k", Operator::NotIn, &["a", "b"]).contains(&req("k", Operator::NotIn, &["a"])));
    }

    #[test]
    fn meeting_agrees_with_intersecting() {
        let all = [
            req("k", Operator::In, &["1", "5"]),
            req("k", Operator::NotIn, &["5"]),
            req("k", Operator::Exists, &[]),
            req("k", Operator::DoesNotExist, &[]),
            req("k", Operator::Gt, &["4"]),
            req("k", Operator::Lt, &["5"]),
            req("k", Operator::Lt, &["6"]),
        ];
        for a in &all {
            for b in &all {
                assert_eq!(a.meets(b), !a.intersect(b).is_unsatisfiable(), "{a} vs {b}");
                assert_eq!(a.shares_value(b), a.intersect(b).has_any_value(), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn gt_and_lt_need_one_integer() {
        let err = Requirement::new("gen", Operator::Gt, &["four".into()]).unwrap_err();
        assert!(err.to_string().contains("gen Gt needs exactly one integer"), "{err}");
        assert!(Requirement::new("gen", Operator::Lt, &["1".into(), "2".into()]).is_err());
    }

    #[test]
    fn compatibility_names_the_conflicting_key_and_treats_undefined_keys_by_policy() {
        let mut pool = Requirements::new();
        pool.add(req("kubernetes.io/arch", Operator::In, &["arm64"]));
        let mut pod = Requirements::new();
        pod.add(req("kubernetes.io/arch", Operator::In, &["amd64"]));
        let conflict = pod.compatible_with(&pool, |_| false).unwrap_err();
        assert_eq!(conflict.key, "kubernetes.io/arch");
        assert_eq!(conflict.theirs.to_string(), "kubernetes.io/arch In [arm64]");

        let mut zone_pod = Requirements::new();
        zone_pod.add(req("topology.kubernetes.io/zone", Operator::In, &["us-east-1a"]));
        assert!(zone_pod.compatible_with(&pool, |k| k == "topology.kubernetes.io/zone").is_ok());
        assert!(zone_pod.compatible_with(&pool, |_| false).is_err(), "an undefined custom label will be absent");
        let mut absent_pod = Requirements::new();
        absent_pod.add(req("team", Operator::NotIn, &["a"]));
        assert!(absent_pod.compatible_with(&pool, |_| false).is_ok());
    }

    #[test]
    fn min_values_survive_intersection_and_labels_come_from_single_values() {
        let mut r = req("karpenter.k8s.aws/instance-family", Operator::Exists, &[]);
        r.min_values = Some(3);
        let mut set = Requirements::new();
        set.add(r);
        set.add(req("karpenter.k8s.aws/instance-family", Operator::In, &["m5", "c5", "r5"]));
        set.add(req("team", Operator::In, &["a"]));
        let family = set.get("karpenter.k8s.aws/instance-family").unwrap();
        assert_eq!(family.min_values, Some(3));
        assert_eq!(family.finite_values().unwrap().len(), 3);
        assert_eq!(set.labels(), BTreeMap::from([("team".to_string(), "a".to_string())]));
    }

    #[test]
    fn pod_terms_are_node_affinity_terms_anded_with_the_node_selector() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [],
            "nodeSelector": {"team": "a"},
            "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]},
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}},
                    {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}
                ]
            }}
        }))
        .unwrap();
        let terms = pod_required_terms(&spec).unwrap();
        assert_eq!(terms.len(), 2);
        assert!(terms.iter().all(|t| t.get("team").is_some()));
        let preferred = pod_preferred_terms(&spec).unwrap();
        assert_eq!(preferred[0].0, 50);
        let labels = BTreeMap::from([
            ("team".to_string(), "a".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ]);
        assert!(!terms[0].matches_labels(&labels) && terms[1].matches_labels(&labels));
    }
}
