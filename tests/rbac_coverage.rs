//! Lists every permission the chart's RBAC grants that no end-to-end test used.
//!
//! `scripts/test` runs the end-to-end tests with Rafter's replicas under the chart's rendered RBAC
//! (`RAFTER_TEST_RBAC`); each world writes the requests each rule allowed to
//! `RAFTER_TEST_RBAC_COVERAGE`. This test then reads them all: a granted (verb, resource) that no
//! test exercised is a permission nothing proves Rafter needs, and fails the run.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// (role kind, role name, rule index) → the "verb resource" requests it grants.
fn granted(rendered: &str) -> BTreeMap<(String, String, usize), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for doc in rendered.split("\n---") {
        let Ok(value) = serde_saphyr::from_str::<Value>(doc) else { continue };
        let kind = value["kind"].as_str().unwrap_or_default();
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        for (i, rule) in value["rules"].as_array().into_iter().flatten().enumerate() {
            let list = |field: &str| -> Vec<String> {
                rule[field].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
            };
            let requests = out.entry((kind.to_string(), name.clone(), i)).or_insert_with(BTreeSet::new);
            for verb in list("verbs") {
                for resource in list("resources") {
                    requests.insert(format!("{verb} {resource}"));
                }
            }
        }
    }
    out
}

#[test]
#[ignore = "run by scripts/test after the end-to-end tests, which write the coverage it reads"]
fn every_permission_the_chart_grants_is_exercised_by_an_end_to_end_test() {
    let rendered_path = std::env::var("RAFTER_TEST_RBAC").expect("RAFTER_TEST_RBAC names the rendered RBAC");
    let dir = std::env::var(rafter_actors::world::RBAC_COVERAGE_ENV).expect("the coverage directory");
    let rendered = std::fs::read_to_string(&rendered_path).expect("the rendered RBAC");
    let grants = granted(&rendered);
    assert!(!grants.is_empty(), "{rendered_path} grants nothing");

    let mut exercised: BTreeMap<(String, String, usize), BTreeSet<String>> = BTreeMap::new();
    let mut worlds = 0;
    for entry in std::fs::read_dir(&dir).expect("the coverage directory exists: run the end-to-end tests first") {
        let path = entry.expect("entry").path();
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("report")).expect("json");
        worlds += 1;
        for rule in report["exercised"].as_array().into_iter().flatten() {
            let key = (
                rule["kind"].as_str().unwrap_or_default().to_string(),
                rule["name"].as_str().unwrap_or_default().to_string(),
                rule["rule"].as_u64().unwrap_or_default() as usize,
            );
            let requests =
                rule["requests"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_string));
            exercised.entry(key).or_default().extend(requests);
        }
    }
    let mut unused = Vec::new();
    for (key, requests) in &grants {
        let used = exercised.get(key).cloned().unwrap_or_default();
        for request in requests.difference(&used) {
            unused.push(format!("{} {} rule {}: {request}", key.0, key.1, key.2));
        }
    }
    println!("{worlds} worlds ran under the chart's RBAC; exercised:");
    for ((kind, name, rule), requests) in &exercised {
        println!("  {kind} {name} rule {rule}: {}", requests.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    assert!(unused.is_empty(), "granted but never exercised by any end-to-end test:\n  {}", unused.join("\n  "));
}
