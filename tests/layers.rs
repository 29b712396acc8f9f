//! The core crate's module graph points down only, and has no circle:
//! pipeline → config → stages → core → state. A stage uses `core` and
//! `state`, never another stage. Read from the sources (`crate::` paths
//! outside comments and `#[cfg(test)]` modules, which may build fixtures
//! from any layer), so a new upward `use` fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level areas, lowest first.
const LAYERS: [&str; 5] = ["state", "core", "stages", "config", "pipeline"];

fn rank(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    LAYERS.iter().position(|l| l == top)
}

/// `src/stages/auth/mod.rs` → `stages::auth`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_string();
        if stem != "mod" {
            parts.push(stem);
        }
    }
    parts
}

/// The source without comments and without the trailing test module.
fn code_of(text: &str) -> String {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Every `crate::a::b` path the code names, groups (`crate::a::{b, c}`)
/// expanded one level.
fn references(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let mut path = Vec::new();
        let mut cursor = rest;
        loop {
            let ident = ident_at(cursor);
            if ident.is_empty() {
                break;
            }
            path.push(ident.to_string());
            cursor = &cursor[ident.len()..];
            match cursor.strip_prefix("::") {
                Some(next) => cursor = next,
                None => break,
            }
        }
        if let Some(group) = cursor.strip_prefix('{') {
            let mut depth = 0;
            let mut entry_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if c.is_whitespace() => {}
                    _ if entry_start && depth == 0 => {
                        entry_start = false;
                        let ident = ident_at(&group[i..]);
                        if !ident.is_empty() && ident != "self" {
                            let mut p = path.clone();
                            p.push(ident.to_string());
                            out.push(p);
                        }
                    }
                    _ => {}
                }
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module file.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// Every broken rule of the graph of `files` (module path → source).
fn violations(files: &BTreeMap<Vec<String>, String>) -> Vec<String> {
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in files {
        let Some(from) = rank(module) else { continue };
        for path in references(&code_of(text)) {
            let Some(target) = resolve(&path, &modules) else {
                continue;
            };
            if target == *module {
                continue;
            }
            let name = |m: &[String]| m.join("::");
            match rank(&target) {
                Some(to) if to > from => {
                    problems.push(format!("upward: {} uses {}", name(module), name(&target)))
                }
                Some(_)
                    if module[0] == "stages"
                        && target[0] == "stages"
                        && module.get(1) != target.get(1) =>
                {
                    problems.push(format!(
                        "stage uses another stage: {} uses {}",
                        name(module),
                        name(&target)
                    ))
                }
                _ => {}
            }
            edges.entry(module.clone()).or_default().insert(target);
        }
    }
    // Circles, by depth-first search.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        problems: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| n == node) {
            let circle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
            problems.push(format!(
                "circle: {} → {}",
                circle.join(" → "),
                node.join("::")
            ));
            return;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, stack, done, problems);
        }
        stack.pop();
        done.insert(node.clone());
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done, &mut problems);
    }
    problems
}

fn collect(dir: &Path, root: &Path, files: &mut BTreeMap<Vec<String>, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect(&path, root, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            files.insert(module_of(relative), text);
        }
    }
}

#[test]
fn modules_point_down_and_have_no_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    collect(&root, &root, &mut files);
    // The binaries and the crate root are not layers.
    files.retain(|m, _| rank(m).is_some());
    for layer in LAYERS {
        assert!(
            files.keys().any(|m| m[0] == layer),
            "no module of `{layer}` found under src/"
        );
    }
    let problems = violations(&files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_upward_arrows_stage_crossings_and_circles() {
    let file = |m: &str, text: &str| {
        (
            m.split("::").map(str::to_string).collect::<Vec<_>>(),
            text.to_string(),
        )
    };
    let files: BTreeMap<_, _> = [
        file("state::host", "use crate::core::verdict::Finding;"),
        file("core::verdict", "// crate::pipeline in a comment\n"),
        file("core::a", "use crate::core::{b::X, verdict};"),
        file("core::b", "fn f() { crate::core::a::g() }"),
        file("stages::limits", "use crate::stages::auth::jwt;"),
        file(
            "stages::auth::jwt",
            "#[cfg(test)]\nmod tests { use crate::pipeline; }",
        ),
        file("pipeline", "use crate::stages::{limits, auth::jwt};"),
    ]
    .into_iter()
    .collect();
    let problems = violations(&files);
    let has = |text: &str| problems.iter().any(|p| p.contains(text));
    assert!(
        has("upward: state::host uses core::verdict"),
        "{problems:?}"
    );
    assert!(has(
        "stage uses another stage: stages::limits uses stages::auth::jwt"
    ));
    assert!(has("circle: core::a → core::b → core::a"), "{problems:?}");
    assert_eq!(problems.len(), 3, "{problems:?}");
}
