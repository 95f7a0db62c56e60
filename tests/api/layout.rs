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

/// The paths a `use` tree or a path expression names after `crate::` or
/// `super::` at byte `at`: `a::b::C` gives `a::b::C`, `{a::b, c::{D, E}}`
/// gives `a::b` and `c`.
fn paths_at(code: &str, at: usize) -> Vec<String> {
    let rest = &code[at..];
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return items
            .into_iter()
            .map(|item| {
                item.trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect()
            })
            .collect();
    }
    vec![
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect(),
    ]
}

/// The modules `code` (of `module`) names through `crate::` or `super::`
/// paths, each the deepest known one.
fn imports(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut named = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        named.extend(paths_at(code, at + "crate::".len()));
    }
    for (at, _) in code.match_indices("super::") {
        // `super::super::x` is found twice; the outer one resolves right.
        if code[..at].ends_with("super::") {
            continue;
        }
        let mut base: Vec<&str> = module.split("::").collect();
        let mut tail = at;
        while code[tail..].starts_with("super::") {
            base.pop();
            tail += "super::".len();
        }
        for path in paths_at(code, tail) {
            let mut full = base.join("::");
            if !full.is_empty() {
                full.push_str("::");
            }
            full.push_str(&path);
            named.push(full);
        }
    }
    let mut found = BTreeSet::new();
    for path in named {
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if let Some(target) = (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| known.contains(m))
        {
            found.insert(target);
        }
    }
    found
}

/// The children that may import their parent, each with what it takes:
/// there the parent holds what its children share by design. `*` is every
/// child. Any other child reaches its siblings, not its parent (`http`'s
/// handlers read requests through `http::request`, not the router's module);
/// [`only_listed_children_import_their_parent`] holds to this list.
const CHILD_IMPORTS_PARENT: &[(&str, &str, &str)] = &[
    (
        "strategy::*",
        "strategy",
        "the `Strategy` trait and its outcomes",
    ),
    (
        "lab::loadgen::*",
        "lab::loadgen",
        "the target and the buyers' names",
    ),
    (
        "orders::persister::*",
        "orders::persister",
        "the worker each concern extends, its status and group",
    ),
    ("sale::metrics", "sale", "the item view it renders"),
    ("http::server", "http", "the router it serves"),
    ("http::openapi", "http", "the route table it documents"),
];

/// Whether one module contains the other: a parent declares its children,
/// and they may use what it holds; that pair is not a circle.
fn nested(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| inner.starts_with(&format!("{outer}::"));
    a.is_empty() || b.is_empty() || inside(a, b) || inside(b, a)
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

/// Every module of `src/` with the modules it imports.
fn all_imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut sources = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut sources,
    );
    let known: BTreeSet<String> = sources.keys().cloned().collect();
    assert!(known.contains("sale::purchase"), "{known:?}");
    sources
        .iter()
        .map(|(module, code)| (module.clone(), imports(module, code, &known)))
        .collect()
}

/// The module graph of `src/`, parent-child pairs left out.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    all_imports()
        .into_iter()
        .map(|(module, deps)| {
            let deps = deps
                .into_iter()
                .filter(|dep| *dep != module && !nested(&module, dep))
                .collect();
            (module, deps)
        })
        .collect()
}

/// Every import of a module by one it contains (its child, or deeper).
fn imports_of_parents() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (module, deps) in all_imports() {
        for dep in deps {
            if !dep.is_empty() && module.starts_with(&format!("{dep}::")) {
                found.push((module.clone(), dep));
            }
        }
    }
    found
}

#[test]
fn only_listed_children_import_their_parent() {
    let listed = |child: &str, parent: &str| {
        CHILD_IMPORTS_PARENT
            .iter()
            .any(|(c, p, _)| *p == parent && (*c == child || c.strip_suffix("::*") == Some(parent)))
    };
    let unlisted: Vec<String> = imports_of_parents()
        .into_iter()
        .filter(|(child, parent)| !listed(child, parent))
        .map(|(child, parent)| format!("{child} → {parent}"))
        .collect();
    assert!(
        unlisted.is_empty(),
        "children importing their parent: {unlisted:?}"
    );
}

fn assert_no_circle(graph: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    let mut clear = BTreeSet::new();
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        if let Some(found) = circle(graph, module, &mut path, &mut clear) {
            panic!("{what} import circle: {}", found.join(" → "));
        }
    }
}

#[test]
fn no_module_imports_itself_around_a_circle() {
    assert_no_circle(&graph(), "module");
}

/// The same one level up: the folders (and the files at the root) as units.
#[test]
fn no_folder_imports_itself_around_a_circle() {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let top = |module: &str| module.split("::").next().unwrap_or("").to_owned();
    for (module, deps) in graph() {
        let from = top(&module);
        let entry = folders.entry(from.clone()).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != from));
    }
    folders.remove("");
    for deps in folders.values_mut() {
        deps.remove("");
    }
    assert_no_circle(&folders, "folder");
}

#[test]
fn use_trees_and_super_paths_are_read() {
    let known: BTreeSet<String> = ["a", "a::b", "c", "c::d", "c::x", "c::x::y"]
        .map(String::from)
        .into();
    // In `c::x::y`, `super::super` is `c`.
    let code = "use crate::{a::b::X, c::{Y, Z}};\nuse super::super::d::W;";
    assert_eq!(
        imports("c::x::y", code, &known),
        ["a::b", "c", "c::d"].map(String::from).into()
    );
}
