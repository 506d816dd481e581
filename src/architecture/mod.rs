//! Checks on the source as a whole: the direction of imports (a test that fails on an import
//! against the layering, or on two parts of one folder importing each other, directly or
//! around a loop), and every metric the source records being in the telemetry catalog.
//!
//! In: the files under `src/`. Out: a failing test naming the import, when there is one.
//! The layers, from the ground floor up (a module may import only from layers below its own):
//!
//! | layer | modules                                            |
//! |-------|----------------------------------------------------|
//! | 0     | `model` (the `spot-canvas-model` crate, re-exported) |
//! | 1     | `telemetry`                                        |
//! | 2     | `backoff`, `shutdown`, `sse`, `children`           |
//! | 3     | `config`, `sink`, `supervise`                      |
//! | 4     | `coinbase`                                         |
//! | 5     | `feed`, `candles`                                  |
//! | 6     | `store`, `bus`                                     |
//! | 7     | `reconcile`, `live`                                |
//! | 8     | `ops`                                              |
//! | 9     | `web`                                              |
//! | 10    | `cli` (the command line's types)                   |
//! | 11    | `app` (the wiring)                                 |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::telemetry::catalog;

mod paths;

use paths::{absolute, code, paths};

/// Each top-level module's layer.
const LAYERS: &[(&str, u8)] = &[
    ("model", 0),
    ("telemetry", 1),
    ("backoff", 2),
    ("shutdown", 2),
    ("sse", 2),
    ("children", 2),
    ("config", 3),
    ("sink", 3),
    ("supervise", 3),
    ("coinbase", 4),
    ("feed", 5),
    ("candles", 5),
    ("store", 6),
    ("bus", 6),
    ("reconcile", 7),
    ("live", 7),
    ("ops", 8),
    ("web", 9),
    ("cli", 10),
    ("app", 11),
    ("architecture", 12),
];

/// A source file and its module path (`["web", "pages", "board"]`; a `mod.rs` is its folder).
struct Source {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("src is readable") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).expect("under src");
            let mut module: Vec<String> = relative
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if module
                .last()
                .is_some_and(|m| m == "mod" || m == "lib" || m == "main")
            {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            out.push(Source { path, module, text });
        }
    }
    out
}

/// (file, its module, the absolute paths it imports).
fn imports() -> Vec<(PathBuf, Vec<String>, Vec<Vec<String>>)> {
    sources()
        .into_iter()
        .map(|source| {
            let found = paths(&code(&source.text))
                .iter()
                .filter_map(|p| absolute(&source.module, p))
                .collect();
            (source.path, source.module, found)
        })
        .collect()
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

#[test]
fn every_top_level_module_has_a_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(root).expect("src") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy().trim_end_matches(".rs").to_owned();
        if ["lib", "main"].contains(&name.as_str()) {
            continue;
        }
        assert!(layer(&name).is_some(), "src/{name} has no layer in LAYERS");
    }
}

#[test]
fn imports_point_down_the_layers() {
    let mut against = Vec::new();
    for (path, module, found) in imports() {
        let Some(from) = module.first() else { continue };
        let Some(from_layer) = layer(from) else {
            continue;
        };
        for target in found {
            let Some(to) = target.first() else { continue };
            if to == from {
                continue;
            }
            let Some(to_layer) = layer(to) else { continue };
            if to_layer >= from_layer {
                against.push(format!(
                    "{} imports {} ({from} is layer {from_layer}, {to} is {to_layer})",
                    path.display(),
                    target.join("::")
                ));
            }
        }
    }
    against.sort();
    against.dedup();
    assert!(
        against.is_empty(),
        "imports against the layers:\n{}",
        against.join("\n")
    );
}

#[test]
fn no_two_parts_of_a_folder_import_each_other() {
    // For each folder, the edges between its direct parts (files and subfolders).
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for (_path, module, found) in imports() {
        for target in found {
            // The deepest folder holding both, and the part of it each lies in.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let (Some(from), Some(to)) = (module.get(common), target.get(common)) else {
                // One is inside the other: a module and its parent or child.
                continue;
            };
            edges
                .entry(module[..common].to_vec())
                .or_default()
                .insert((from.clone(), to.clone()));
        }
    }
    let mut circles = Vec::new();
    for (folder, edges) in &edges {
        for (from, to) in edges {
            if reaches(edges, to, from) {
                circles.push(format!(
                    "in {}: {from} imports {to}, and {to} leads back to {from}",
                    if folder.is_empty() {
                        "src".to_owned()
                    } else {
                        folder.join("/")
                    }
                ));
            }
        }
    }
    assert!(circles.is_empty(), "circles:\n{}", circles.join("\n"));
}

/// Whether `to` is reachable from `from` along `edges`.
fn reaches(edges: &BTreeSet<(String, String)>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(at) = todo.pop() {
        if at == to {
            return true;
        }
        if seen.insert(at.clone()) {
            todo.extend(
                edges
                    .iter()
                    .filter(|(a, _)| *a == at)
                    .map(|(_, b)| b.clone()),
            );
        }
    }
    false
}

/// The metric names the source records: the first string literal or constant after
/// each `counter!(`, `gauge!(` and `histogram!(`.
fn recorded_in_source() -> Vec<String> {
    let constants = [
        ("PROCESSING_SECONDS", catalog::PROCESSING_SECONDS),
        ("STORE_WRITE_SECONDS", catalog::STORE_WRITE_SECONDS),
        ("END_TO_END_SECONDS", catalog::END_TO_END_SECONDS),
        ("CONTROL_CHARS_ESCAPED", catalog::CONTROL_CHARS_ESCAPED),
    ];
    let mut names = Vec::new();
    let mut folders = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("src is readable") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs")
                || path.ends_with("catalog.rs")
                || path.parent().is_some_and(|p| p.ends_with("architecture"))
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            for macro_call in ["counter!(", "gauge!(", "histogram!("] {
                for (at, _) in text.match_indices(macro_call) {
                    let rest = text[at + macro_call.len()..].trim_start();
                    let name = if let Some(quoted) = rest.strip_prefix('"') {
                        quoted.split('"').next().unwrap_or_default().to_owned()
                    } else {
                        let word: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                            .collect();
                        let last = word.rsplit("::").next().unwrap_or_default().to_owned();
                        match constants.iter().find(|(c, _)| *c == last) {
                            Some((_, name)) => (*name).to_owned(),
                            // A variable (the catalog's own loop): not a name.
                            None => continue,
                        }
                    };
                    names.push(format!("{macro_call}{name}"));
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_the_source_records_is_in_the_catalog_with_its_kind() {
    let recorded = recorded_in_source();
    assert!(
        recorded.len() > 30,
        "the scan found the metrics: {recorded:?}"
    );
    for call in &recorded {
        let (kind, name) = call.split_once('(').expect("macro(name");
        let kind = match kind {
            "counter!" => catalog::Kind::Counter,
            "gauge!" => catalog::Kind::Gauge,
            _ => catalog::Kind::Histogram,
        };
        assert!(
            catalog::CATALOG
                .iter()
                .any(|m| m.name == name && m.kind == kind),
            "{name} ({kind:?}) is recorded but not in the catalog"
        );
    }
}
