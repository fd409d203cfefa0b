//! The crate's layering, checked from its sources: imports between the
//! top-level modules of `proxy/src` form no cycle, and only the composition
//! root (`app`) knows the binary's configuration (`config`): libraries
//! (matchmaker, rpc, the engines) never import it.
//!
//! A module's imports are the `crate::<module>` paths in its files, comments
//! and `#[cfg(test)] mod tests` blocks left out (test code may reach across).

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the top-level modules it imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for path in files {
        let relative = path.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code: String = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default()
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(crate_paths(&code).into_iter().filter(|d| *d != module));
    }
    graph
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules `code` names through `crate::`: `crate::a::...` and the
/// members of `crate::{a, b::{c, d}}` (which may span lines).
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            names.push(leading_name(rest));
            continue;
        };
        // The group's top-level members: split at commas outside nested braces.
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    names.push(leading_name(&group[start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(leading_name(&group[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// The identifier `path` starts with (after white space).
fn leading_name(path: &str) -> String {
    path.trim_start()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn module_imports_form_no_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("matchmaker") && graph.contains_key("app"));
    // Depth-first search; a module met again while on the path closes a cycle.
    fn visit<'g>(
        module: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(start) = path.iter().position(|m| *m == module) {
            panic!("import cycle: {:?} -> {module}", &path[start..]);
        }
        path.push(module);
        for dep in graph.get(module).into_iter().flatten() {
            visit(dep, graph, path, done);
        }
        path.pop();
        done.insert(module);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn only_the_composition_root_imports_config() {
    let graph = module_graph();
    let importers: Vec<&String> = graph
        .iter()
        .filter(|(_, deps)| deps.contains("config"))
        .map(|(module, _)| module)
        .collect();
    assert_eq!(importers, ["app"]);
}

#[test]
fn crate_paths_reads_single_and_grouped_imports() {
    let code = "use crate::{a::X, b::{Y, Z},\n    e};\nlet y = crate::c::f(crate::d);";
    assert_eq!(crate_paths(code), ["a", "b", "e", "c", "d"]);
}
