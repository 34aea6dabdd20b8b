//! A CRD's openAPIV3 schema applied as the API server applies it: pruning, defaulting, structural checks, CEL rules.
//!
//! Checked: `type` (with `nullable`, `x-kubernetes-int-or-string`), `required`, `enum`, `minimum`/`maximum`
//! (with the exclusive forms), `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`,
//! `minProperties`/`maxProperties`, `uniqueItems`, `items`, `properties`, `additionalProperties`, and every
//! `x-kubernetes-validations` rule (through kube-cel). Not checked: `format`, `allOf`/`anyOf`/`oneOf`/`not`,
//! `multipleOf`. CEL cost limits are checked when the CRD is written (`cel_cost`).

use std::collections::HashMap;

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use regex::Regex;
use serde_json::{Map, Value};

/// A compiled CRD schema.
pub struct CrdSchema {
    schema: Value,
    cel: CompiledSchema,
    patterns: HashMap<String, Regex>,
    /// The schema type of the node each rule is on, by rule text.
    rule_types: HashMap<String, String>,
}

impl std::fmt::Debug for CrdSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdSchema").field("patterns", &self.patterns.len()).finish_non_exhaustive()
    }
}

impl CrdSchema {
    /// Compiles the patterns and CEL rules; a CRD whose schema does not compile is refused, as the API server does.
    pub fn new(schema: Value) -> Result<Self, String> {
        let mut patterns = HashMap::new();
        collect_patterns(&schema, &mut patterns)?;
        let cel = compile_schema(&schema);
        if let Some(error) = cel.compilation_errors().first() {
            return Err(format!("x-kubernetes-validations: compilation failed: {error}"));
        }
        let mut rule_types = HashMap::new();
        collect_rule_types(&schema, &mut rule_types);
        Ok(Self { schema, cel, patterns, rule_types })
    }

    /// The schema as the CRD gives it.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Paths (field names, no indices) of lists with `x-kubernetes-list-type: map` and their keys.
    pub fn map_lists(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        walk_lists(&self.schema, "", &mut |path, schema| {
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
                let keys = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default();
                out.push((path.to_string(), keys));
            }
        });
        out
    }

    /// Paths of lists with `x-kubernetes-list-type: set`.
    pub fn set_lists(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk_lists(&self.schema, "", &mut |path, schema| {
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
                out.push(path.to_string());
            }
        });
        out
    }

    /// Drops the fields of `object` the schema does not declare and returns their paths.
    pub fn prune_unknown(&self, object: &mut Value) -> Vec<String> {
        let mut removed = Vec::new();
        prune(&self.schema, object, true, "", &mut removed);
        removed
    }

    /// Prunes unknown fields, applies defaults, and returns every violation as (field, message).
    pub fn admit(&self, object: &mut Value, old: Option<&Value>) -> Vec<(String, String)> {
        prune(&self.schema, object, true, "", &mut Vec::new());
        *object = kube::core::cel::apply_defaults(&self.schema, object);
        let mut errors = Vec::new();
        self.check(&self.schema, object, "", &mut errors, true);
        ratchet(&mut errors, object, old);
        if errors.is_empty()
            && let Err(failures) = Validator::new().validate_compiled(&self.cel, object, old)
        {
            for failure in failures.into_vec() {
                let field =
                    if failure.field_path.is_empty() { "<root>".to_string() } else { failure.field_path.clone() };
                // As kube-apiserver: the value shown is the type of the node the rule is on.
                let ty = self.rule_types.get(&failure.rule).map(String::as_str).unwrap_or("object");
                let message = match failure.reason.as_deref() {
                    Some("FieldValueForbidden") => format!("Forbidden: {}", failure.message),
                    Some("FieldValueRequired") => format!("Required value: {}", failure.message),
                    Some("FieldValueDuplicate") => format!("Duplicate value: \"{ty}\""),
                    _ => format!("Invalid value: \"{ty}\": {}", failure.message),
                };
                errors.push((field, message));
            }
            ratchet(&mut errors, object, old);
        }
        errors
    }

    fn check(&self, schema: &Value, value: &Value, path: &str, errors: &mut Vec<(String, String)>, root: bool) {
        let field = if path.is_empty() { "<root>" } else { path };
        if value.is_null() {
            if schema.get("nullable").and_then(Value::as_bool) != Some(true) && !root {
                let ty = schema.get("type").and_then(Value::as_str).unwrap_or("object");
                errors.push((
                    field.to_string(),
                    format!("Invalid value: \"null\": {field} in body must be of type {ty}: \"null\""),
                ));
            }
            return;
        }
        let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
        if let Some(ty) = schema.get("type").and_then(Value::as_str) {
            let ok = match ty {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string() || (int_or_string && value.is_i64()),
                "integer" => value.is_i64() || value.is_u64() || (int_or_string && value.is_string()),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                _ => true,
            };
            if !ok {
                errors.push((
                    field.to_string(),
                    format!(
                        "Invalid value: \"{}\": {field} in body must be of type {ty}: \"{}\"",
                        type_name(value),
                        type_name(value)
                    ),
                ));
                return;
            }
        } else if int_or_string && !(value.is_string() || value.is_i64()) {
            errors.push((
                field.to_string(),
                format!("Invalid value: \"{}\": {field} in body must be of type integer-or-string", type_name(value)),
            ));
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push((
                field.to_string(),
                format!("Unsupported value: {value}: supported values: {}", list.join(", ")),
            ));
        }
        match value {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or_default();
                let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
                let exclusive = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
                if let Some(min) = bound("minimum") {
                    if exclusive("exclusiveMinimum") && x <= min {
                        errors.push((
                            field.to_string(),
                            format!("Invalid value: {value}: {field} in body should be greater than {min}"),
                        ));
                    } else if x < min {
                        errors.push((
                            field.to_string(),
                            format!("Invalid value: {value}: {field} in body should be greater than or equal to {min}"),
                        ));
                    }
                }
                if let Some(max) = bound("maximum") {
                    if exclusive("exclusiveMaximum") && x >= max {
                        errors.push((
                            field.to_string(),
                            format!("Invalid value: {value}: {field} in body should be less than {max}"),
                        ));
                    } else if x > max {
                        errors.push((
                            field.to_string(),
                            format!("Invalid value: {value}: {field} in body should be less than or equal to {max}"),
                        ));
                    }
                }
            }
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                    && len > max
                {
                    errors.push((field.to_string(), format!("Too long: may not be more than {max} bytes")));
                }
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                    && len < min
                {
                    errors.push((
                        field.to_string(),
                        format!("Invalid value: {value}: {field} in body should be at least {min} chars long"),
                    ));
                }
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                    && let Some(re) = self.patterns.get(pattern)
                    && !re.is_match(s)
                {
                    errors.push((
                        field.to_string(),
                        format!("Invalid value: {value}: {field} in body should match '{pattern}'"),
                    ));
                }
            }
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && n > max
                {
                    errors.push((field.to_string(), format!("Too many: {n}: must have at most {max} items")));
                }
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                    && n < min
                {
                    errors.push((
                        field.to_string(),
                        format!("Invalid value: {n}: {field} in body should have at least {min} items"),
                    ));
                }
                if schema.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
                    for (i, item) in items.iter().enumerate() {
                        if items[..i].contains(item) {
                            errors.push((format!("{field}[{i}]"), format!("Duplicate value: {item}")));
                        }
                    }
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &format!("{path}[{i}]"), errors, false);
                    }
                }
            }
            Value::Object(map) => {
                let n = map.len() as u64;
                if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                    && n > max
                {
                    errors.push((field.to_string(), format!("Too many: {n}: must have at most {max} items")));
                }
                if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
                    && n < min
                {
                    errors.push((
                        field.to_string(),
                        format!("Invalid value: {n}: {field} in body should have at least {min} properties"),
                    ));
                }
                if let Some(required) = schema.get("required").and_then(Value::as_array) {
                    for name in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(name) {
                            errors.push((join(path, name), "Required value".to_string()));
                        }
                    }
                }
                let properties = schema.get("properties").and_then(Value::as_object);
                for (name, child) in map {
                    if root && (name == "metadata" || name == "apiVersion" || name == "kind") {
                        continue;
                    }
                    if let Some(child_schema) = properties.and_then(|p| p.get(name)) {
                        self.check(child_schema, child, &join(path, name), errors, false);
                    } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                        self.check(extra, child, &join(path, name), errors, false);
                    }
                }
            }
            _ => {}
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

fn collect_patterns(schema: &Value, out: &mut HashMap<String, Regex>) -> Result<(), String> {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(pattern)) = map.get("pattern")
                && !out.contains_key(pattern)
            {
                let re = Regex::new(pattern).map_err(|e| format!("pattern {pattern:?} does not compile: {e}"))?;
                out.insert(pattern.clone(), re);
            }
            for (key, child) in map {
                if key == "properties" {
                    if let Value::Object(props) = child {
                        for prop in props.values() {
                            collect_patterns(prop, out)?;
                        }
                    }
                } else if key == "items" || key == "additionalProperties" {
                    collect_patterns(child, out)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn collect_rule_types(schema: &Value, out: &mut HashMap<String, String>) {
    visit_nodes(schema, "", &mut |node, _| {
        let ty = node.get("type").and_then(Value::as_str).unwrap_or("object");
        for rule in node.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
            if let Some(text) = rule.get("rule").and_then(Value::as_str) {
                out.entry(text.to_string()).or_insert_with(|| ty.to_string());
            }
        }
    });
}

/// Calls `visit` on every node of a schema with its path as kube-apiserver names schema fields
/// (`….properties[spec].items.additionalProperties`), parents first.
/// CRD validation ratcheting (GA in Kubernetes 1.33): on update, a violation in a part of the
/// object the update did not change is let through, so an object stored under a looser schema
/// can still have its status written. Parts are correlated by field path up to the first list
/// index (the whole list must be unchanged); kube-apiserver also correlates the entries of map
/// and set lists, so this refuses a few updates a real server would ratchet, never the reverse.
fn ratchet(errors: &mut Vec<(String, String)>, new: &Value, old: Option<&Value>) {
    let Some(old) = old else { return };
    let at = |root: &'_ Value, path: &str| -> Option<Value> {
        let mut node = root;
        for segment in path.split('.').filter(|s| !s.is_empty()) {
            node = node.get(segment)?;
        }
        Some(node.clone())
    };
    errors.retain(|(field, _)| {
        if field == "<root>" {
            return true;
        }
        let correlated = field.split('[').next().unwrap_or(field);
        at(new, correlated) != at(old, correlated) || at(new, correlated).is_none()
    });
}

pub fn visit_nodes(schema: &Value, path: &str, visit: &mut impl FnMut(&Value, &str)) {
    visit(schema, path);
    for (name, child) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        visit_nodes(child, &format!("{path}.properties[{name}]"), visit);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            visit_nodes(child, &format!("{path}.{key}"), visit);
        }
    }
}

fn walk_lists(schema: &Value, path: &str, visit: &mut impl FnMut(&str, &Value)) {
    if schema.get("type").and_then(Value::as_str) == Some("array") {
        visit(path, schema);
        if let Some(items) = schema.get("items") {
            walk_lists(items, path, visit);
        }
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk_lists(child, &join(path, name), visit);
        }
    }
}

/// Drops fields the schema does not declare, unless it preserves unknown fields there; `removed`
/// collects the paths of what was dropped.
fn prune(schema: &Value, value: &mut Value, root: bool, path: &str, removed: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true)
        && schema.get("properties").is_none()
    {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
            let keep = |name: &str, properties: Option<&Map<String, Value>>| {
                (root && (name == "metadata" || name == "apiVersion" || name == "kind"))
                    || properties.is_some_and(|p| p.contains_key(name))
                    || additional.is_some_and(|a| a.is_object() || a.as_bool() == Some(true))
                    || preserve
            };
            map.retain(|name, _| {
                let kept = keep(name, properties);
                if !kept {
                    removed.push(join(path, name));
                }
                kept
            });
            for (name, child) in map.iter_mut() {
                if root && name == "metadata" {
                    continue;
                }
                let at = join(path, name);
                if let Some(child_schema) = properties.and_then(|p| p.get(name)) {
                    prune(child_schema, child, false, &at, removed);
                } else if let Some(extra) = additional.filter(|a| a.is_object()) {
                    prune(extra, child, false, &at, removed);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, false, &format!("{path}[{i}]"), removed);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> CrdSchema {
        CrdSchema::new(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    },
                    "x-kubernetes-validations": [{"rule": "self.size != 7", "message": "seven is unlucky"}]
                }
            }
        }))
        .expect("compiles")
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_applied() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"size": 2, "extra": 1, "free": {"any": 1}}});
        assert!(schema().admit(&mut obj, None).is_empty());
        assert_eq!(obj["spec"], json!({"size": 2, "mode": "a", "free": {"any": 1}}));
    }

    #[test]
    fn every_structural_violation_is_named_by_its_field() {
        let mut obj = json!({"spec": {"size": 11, "mode": "c", "name": "ABCDEFG", "tags": ["a", "b", 3]}});
        let errors = schema().admit(&mut obj, None);
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert!(fields.contains(&"spec.size"), "{errors:?}");
        assert!(fields.contains(&"spec.mode"), "{errors:?}");
        assert_eq!(fields.iter().filter(|f| **f == "spec.name").count(), 2, "{errors:?}");
        assert!(fields.contains(&"spec.tags"), "{errors:?}");
        assert!(fields.contains(&"spec.tags[2]"), "{errors:?}");
        let mut missing = json!({"spec": {}});
        assert_eq!(schema().admit(&mut missing, None)[0], ("spec.size".to_string(), "Required value".to_string()));
    }

    #[test]
    fn an_update_that_leaves_an_invalid_part_unchanged_is_ratcheted_and_one_that_changes_it_is_not() {
        let mut stored = json!({"spec": {"size": "huge"}});
        assert!(!schema().admit(&mut stored.clone(), None).is_empty(), "invalid on create");
        let mut status_only = json!({"spec": {"size": "huge"}, "status": {"ready": true}});
        assert!(schema().admit(&mut status_only, Some(&stored)).is_empty(), "unchanged: ratcheted");
        let mut changed = json!({"spec": {"size": "larger"}});
        assert!(!schema().admit(&mut changed, Some(&stored)).is_empty(), "changed: validated");
        stored = json!({"spec": {}});
        let mut removed = json!({"spec": {}});
        assert_eq!(schema().admit(&mut removed, Some(&stored))[0].0, "spec.size", "a missing field is not ratcheted");
    }

    #[test]
    fn cel_rules_run_after_the_structural_checks_pass() {
        let mut obj = json!({"spec": {"size": 7}});
        let errors = schema().admit(&mut obj, None);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].1.contains("seven is unlucky"), "{errors:?}");
    }
}
