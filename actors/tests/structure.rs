//! The actor crate's module graph: no module reaches, through `crate::` paths, back to itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `crate::<module>` a module's non-test code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("src is readable") {
        let path = entry.expect("entry").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            let text = std::fs::read_to_string(&path).expect("module is readable");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_string();
            sources.insert(name, code);
        }
    }
    let names: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(name, code)| {
            let deps = code
                .match_indices("crate::")
                .map(|(i, _)| {
                    code[i + "crate::".len()..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect()
                })
                .filter(|d: &String| names.contains(d) && d != name)
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle through `at`, if the graph has one reachable from it.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == at) {
        let mut found = path[i..].to_vec();
        found.push(at.to_string());
        return Some(found);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at.to_string());
    for next in graph.get(at).into_iter().flatten() {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(at.to_string());
    None
}

#[test]
fn no_actor_module_imports_a_module_that_imports_it_back() {
    let graph = graph();
    assert!(graph.len() > 20, "the scan found the modules: {:?}", graph.keys());
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn actors_reach_shared_writes_and_peers_through_their_own_modules() {
    let graph = graph();
    let actors = ["batcher", "solver", "launcher", "terminator", "interruption", "disrupter", "gc", "elector"];
    for actor in actors {
        for other in actors.iter().filter(|a| **a != actor) {
            assert!(
                !graph[actor].contains(*other),
                "{actor} imports {other}: shared writes belong in writes.rs, messages in messages.rs"
            );
        }
    }
}
