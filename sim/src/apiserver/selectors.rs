//! Label selectors (equality and set-based) and field selectors, parsed from query strings as the API server does.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum LabelTerm {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelTerm>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let bad =
            |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why} in label selector {text:?}"));
        let mut terms = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (term, tail) = split_term(rest);
            rest = tail.trim_start_matches(',').trim();
            let term = term.trim();
            if term.is_empty() {
                return Err(bad("empty requirement"));
            }
            let parsed = if let Some(key) = term.strip_prefix('!') {
                LabelTerm::NotExists(check_key(key.trim()).map_err(|e| bad(&e))?)
            } else if let Some((key, values)) = split_set(term, " notin ") {
                LabelTerm::NotIn(check_key(key).map_err(|e| bad(&e))?, parse_set(values).map_err(|e| bad(&e))?)
            } else if let Some((key, values)) = split_set(term, " in ") {
                LabelTerm::In(check_key(key).map_err(|e| bad(&e))?, parse_set(values).map_err(|e| bad(&e))?)
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelTerm::NotEq(check_key(key.trim()).map_err(|e| bad(&e))?, value.trim().to_string())
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelTerm::Eq(check_key(key.trim()).map_err(|e| bad(&e))?, value.trim().to_string())
            } else {
                LabelTerm::Exists(check_key(term).map_err(|e| bad(&e))?)
            };
            terms.push(parsed);
        }
        Ok(Self(terms))
    }

    /// A selector from a `metav1.LabelSelector` object (PDBs, workloads).
    pub fn from_object(selector: &Value) -> Self {
        let mut terms = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                terms.push(LabelTerm::Eq(k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
        }
        for expr in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = expr.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
            let values: Vec<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            terms.push(match expr.get("operator").and_then(Value::as_str) {
                Some("In") => LabelTerm::In(key, values),
                Some("NotIn") => LabelTerm::NotIn(key, values),
                Some("Exists") => LabelTerm::Exists(key),
                // DoesNotExist, and anything unknown matches nothing that has the key.
                _ => LabelTerm::NotExists(key),
            });
        }
        Self(terms)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|term| match term {
            LabelTerm::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        let map: serde_json::Map<String, Value> =
            labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        self.matches(Some(&map))
    }
}

/// Splits off one requirement, keeping commas inside `( … )` together.
fn split_term(text: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => return (&text[..i], &text[i..]),
            _ => {}
        }
    }
    (text, "")
}

fn split_set<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let (key, values) = term.split_once(op)?;
    Some((key.trim(), values.trim()))
}

fn parse_set(values: &str) -> Result<Vec<String>, String> {
    let inner = values.strip_prefix('(').and_then(|v| v.strip_suffix(')')).ok_or("found a set without parentheses")?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

fn check_key(key: &str) -> Result<String, String> {
    let valid =
        !key.is_empty() && key.len() <= 316 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid { Ok(key.to_string()) } else { Err(format!("invalid label key {key:?}")) }
}

/// A parsed `fieldSelector`: (path, wanted, equal?) terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    /// Parses and checks each field against the fields this kind allows.
    pub fn parse(text: &str, allowed: impl Fn(&str) -> bool, kind: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{term}'; can't understand '{term}'")));
            };
            let field = field.trim();
            if !allowed(field) {
                return Err(ApiError::bad_request(format!("field label not supported: {field}"))
                    .with_details(serde_json::json!({"kind": kind})));
            }
            terms.push((field.to_string(), value.trim().to_string(), equal));
        }
        Ok(Self(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, wanted, equal)| (field_value(object, path) == *wanted) == *equal)
    }
}

/// A field's value as field selectors compare it: missing fields are the empty string.
pub fn field_value(object: &Value, path: &str) -> String {
    let mut cursor = object;
    for part in path.split('.') {
        match cursor.get(part) {
            Some(next) => cursor = next,
            None => return String::new(),
        }
    }
    match cursor {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if path == "source" => {
            o.get("component").and_then(Value::as_str).unwrap_or_default().to_string()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn equality_and_set_based_label_selectors_match_like_the_api_server() {
        let l = labels(json!({"app": "inflate", "tier": "web", "zone": "a"}));
        for (selector, expected) in [
            ("app=inflate", true),
            ("app==inflate,tier=web", true),
            ("app!=inflate", false),
            ("tier in (web, db)", true),
            ("tier notin (web)", false),
            ("missing notin (x)", true),
            ("zone", true),
            ("!zone", false),
            ("!missing,app in (inflate),zone!=b", true),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(selector).expect(selector).matches(Some(&l)), expected, "{selector}");
        }
        assert!(LabelSelector::parse("tier in web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors_accept_only_the_fields_a_kind_supports() {
        let allowed = |f: &str| ["metadata.name", "spec.nodeName", "status.phase"].contains(&f);
        let pod = json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        assert!(FieldSelector::parse("spec.nodeName=", allowed, "Pod").expect("parses").matches(&pod));
        assert!(
            FieldSelector::parse("status.phase!=Running,metadata.name=p", allowed, "Pod")
                .expect("parses")
                .matches(&pod)
        );
        assert!(!FieldSelector::parse("spec.nodeName=n1", allowed, "Pod").expect("parses").matches(&pod));
        let err = FieldSelector::parse("spec.hostname=x", allowed, "Pod").expect_err("not supported");
        assert_eq!(err.code, 400);
        assert!(err.message.contains("spec.hostname"));
    }
}
