//! The code's shape, checked: no two modules of `src/` import each other,
//! directly or around a circle. Read from the source: every `crate::a::b`
//! path outside comments and unit tests is an edge to the deepest module it
//! names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`sale::stats`) → the source outside comments and unit tests.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            modules(&path, &inner, out);
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        if prefix.is_empty() && name == "main" {
            continue;
        }
        let mut module = prefix.to_vec();
        if !matches!(name.as_str(), "mod" | "lib") {
            module.push(name);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let code: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect();
        out.insert(module.join("::"), code.join("\n"));
    }
}

/// The modules `code` names with `crate::`, each the deepest known one.
fn imports(code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let path: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if let Some(module) = (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| known.contains(m))
        {
            found.insert(module);
        }
    }
    found
}

/// A circle through `from`, if any: the modules along it.
fn circle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
    clear: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in &graph[from] {
        if clear.contains(next) {
            continue;
        }
        if let Some(start) = path.iter().position(|m| m == next) {
            let mut found = path[start..].to_vec();
            found.push(next.clone());
            return Some(found);
        }
        path.push(next.clone());
        if let Some(found) = circle(graph, next, path, clear) {
            return Some(found);
        }
        path.pop();
    }
    // Every way out of here was followed without meeting the path.
    clear.insert(from.to_owned());
    None
}

#[test]
fn no_module_imports_itself_around_a_circle() {
    let mut sources = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut sources,
    );
    let known: BTreeSet<String> = sources.keys().cloned().collect();
    assert!(known.contains("sale::purchase"), "{known:?}");
    let graph: BTreeMap<String, BTreeSet<String>> = sources
        .iter()
        .map(|(module, code)| {
            let mut deps = imports(code, &known);
            deps.remove(module);
            (module.clone(), deps)
        })
        .collect();
    let mut clear = BTreeSet::new();
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        if let Some(found) = circle(&graph, module, &mut path, &mut clear) {
            panic!("import circle: {}", found.join(" → "));
        }
    }
}
