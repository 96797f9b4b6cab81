//! The import graph of the product keeps its layers (ARCHITECTURE.md, "Layers"): a module may
//! use only modules of lower layers, the files inside a module never import each other in a
//! cycle, and nothing but the binary's `demo` uses the testkit. Read from the source text, so
//! a new upward `use` fails here with the edge named.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, lowest layer first. The same table is in ARCHITECTURE.md.
const LAYERS: &[&[&str]] = &[
    // Core types and rules: imports nothing of pgfanout's.
    &[
        "lsn",
        "binding",
        "value",
        "sql",
        "digest",
        "problems",
        "disposition",
        "report",
        "failpoint",
        "telemetry",
        "progress",
    ],
    &["change", "target"],
    // The ground floor for connections.
    &["pgconn"],
    // Plain data: imports no stage.
    &["config"],
    // Stages.
    &["source", "sequencer", "changelog", "state", "transform"],
    &["sink"],
    &["fanout", "snapshot"],
    &["pipeline"],
    // The edge: commands (and, compiled into the binary only, the demo).
    &["cmd"],
    // The admin endpoint of `run`: serves `cmd::status`'s JSON beside the pipeline.
    &["admin"],
];

/// Files compiled into the binary, not the library: the top of the graph (`main.rs`, and the
/// demo's folder).
fn binary(shown: &str) -> bool {
    shown == "main.rs" || shown.starts_with("cmd/demo/")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("read src/ entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments (doc links may name any module).
fn code(path: &Path) -> String {
    code_of(&fs::read_to_string(path).expect("read source file"))
}

fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `prefix::name` path start in `code`, including the items of `prefix::{a, b::c}`.
fn path_starts(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let needle = format!("{prefix}::");
    let mut rest = code;
    while let Some(i) = rest.find(&needle) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `src/a/b.rs` → `a`; `src/a.rs` → `a`.
fn top_module(relative: &Path) -> String {
    let first = relative.components().next().expect("a path below src/");
    let first = first.as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

fn relative(path: &Path) -> PathBuf {
    path.strip_prefix(src()).expect("below src/").to_owned()
}

#[test]
fn every_import_points_to_a_lower_layer() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for path in &files {
        let rel = relative(path);
        let shown = rel.display().to_string();
        if binary(&shown) || shown == "lib.rs" {
            continue;
        }
        let from = top_module(&rel);
        let Some(from_rank) = rank(&from) else {
            unknown.insert(from);
            continue;
        };
        for to in path_starts(&code(path), "crate") {
            if to == from {
                continue;
            }
            match rank(&to) {
                None => {
                    unknown.insert(to);
                }
                Some(to_rank) if to_rank >= from_rank => violations.push(format!(
                    "src/{shown} uses crate::{to}: {from} (layer {from_rank}) may use only lower layers, and {to} is layer {to_rank}"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS in tests/layers.rs (and ARCHITECTURE.md): {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layer order:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_top_level_module_is_in_the_layer_table() {
    let lib = code(&src().join("lib.rs"));
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .collect();
    let listed: BTreeSet<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    assert_eq!(declared, listed, "lib.rs's modules and LAYERS differ");
}

#[test]
fn files_inside_a_module_never_import_each_other_in_a_cycle() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    // Directory → its leaf files (not mod.rs: a parent declares and re-exports its children,
    // and children use what the parent defines, by design).
    let mut by_dir: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let rel = relative(path);
        let Some(dir) = rel.parent().filter(|d| !d.as_os_str().is_empty()) else {
            continue;
        };
        let stem = rel
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        if stem != "mod" {
            by_dir.entry(dir.to_owned()).or_default().insert(stem);
        }
    }
    let mut cycles = Vec::new();
    for (dir, siblings) in &by_dir {
        let module_path = dir
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("::");
        let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for file in siblings {
            let text = code(&src().join(dir).join(format!("{file}.rs")));
            let mut to = path_starts(&text, "super");
            to.extend(path_starts(&text, &format!("crate::{module_path}")));
            to.retain(|t| t != file && siblings.contains(t));
            edges.insert(file, to);
        }
        // Depth-first search for a back edge.
        fn visit<'a>(
            node: &'a str,
            edges: &'a BTreeMap<&'a str, BTreeSet<String>>,
            stack: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
            cycles: &mut Vec<String>,
        ) {
            if let Some(i) = stack.iter().position(|n| *n == node) {
                let mut cycle = stack[i..].to_vec();
                cycle.push(node);
                cycles.push(cycle.join(" → "));
                return;
            }
            if !done.insert(node) {
                return;
            }
            stack.push(node);
            for next in edges.get(node).into_iter().flatten() {
                visit(next, edges, stack, done, cycles);
            }
            stack.pop();
        }
        let mut done = BTreeSet::new();
        for file in siblings {
            let mut found = Vec::new();
            visit(file, &edges, &mut Vec::new(), &mut done, &mut found);
            cycles.extend(
                found
                    .into_iter()
                    .map(|c| format!("src/{}: {c}", dir.display())),
            );
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_product_library_never_uses_the_testkit() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let users: Vec<String> = files
        .iter()
        .map(|p| relative(p).display().to_string())
        .filter(|shown| !binary(shown))
        .filter(|shown| code(&src().join(shown)).contains("pgfanout_testkit"))
        .collect();
    assert!(
        users.is_empty(),
        "the library imports the testkit (only the binary's demo may): {users:?}"
    );
}

#[test]
fn the_checker_sees_an_upward_edge() {
    // The parser the checks above rely on: grouped and nested paths count, comments do not.
    let sample =
        "use crate::{sink::Batch, fanout};\n// crate::never_a_module\nlet x = crate::value::parse;";
    let found = path_starts(&code_of(sample), "crate");
    assert_eq!(found, ["fanout", "sink", "value"].map(String::from).into());
}
