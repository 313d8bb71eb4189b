//! The library's imports run one way (docs/design.md, "Module layering"): no module of
//! `shared/src` imports one that imports it back, and neither do two files of one module.
//!
//! Run it alone with `cargo test -p keapalive --test module_graph -- --nocapture`: it prints
//! the layers it found, lowest first.
//!
//! What counts as an import: every `crate::…` and `super::…` path in a file's code (comments
//! dropped), `use` or inline. A path is charged to the module (or, inside one module, the
//! sibling file) that defines what it names; a `mod.rs` (or `foo.rs` beside `foo/`) declaring and
//! re-exporting its own children is not an import of them, but a child reaching back up through
//! `super::` to an item its parent re-exports from a sibling is an import of that sibling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its module path (`["refresh", "protocol"]`; the crate root is `[]`) and text.
struct SourceFile {
    module: Vec<String>,
    code: String,
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn source_files(root: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    collect(root, root, &mut files);
    files.sort_by(|a, b| a.module.cmp(&b.module));
    files
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<SourceFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let mut module: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            files.push(SourceFile {
                module,
                code: without_comments(&text),
            });
        }
    }
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate::` or `super::` (the `super`s resolved against `module`),
/// as absolute module paths; `use a::{b, c::{d}}` groups are expanded.
fn referenced_paths(module: &[String], is_dir_module: bool, code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start).map(|i| i + from) {
            from = at + start.len();
            let preceded_by_ident = at > 0 && {
                let c = bytes[at - 1] as char;
                c.is_alphanumeric() || c == '_' || c == ':'
            };
            if preceded_by_ident {
                continue;
            }
            let tail = path_text(&code[at..]);
            for path in expand(&tail) {
                let mut parts: Vec<String> = path.split("::").map(str::to_owned).collect();
                let mut base: Vec<String> = if parts[0] == "crate" {
                    parts.remove(0);
                    Vec::new()
                } else {
                    // `super` in `a/b.rs` (module a::b) is `a`. In a module with children
                    // (`a/mod.rs`, `a.rs`) it is taken to be the file itself: only its inline
                    // `mod tests` says `super`.
                    let mut base = module.to_vec();
                    while parts.first().is_some_and(|p| p == "super") {
                        parts.remove(0);
                        if !is_dir_module {
                            base.pop();
                        }
                    }
                    base
                };
                base.extend(parts.into_iter().filter(|p| !p.is_empty() && p != "self"));
                found.push(base);
            }
        }
    }
    found
}

/// The text of one path starting at `text`, braces included (`crate::a::{b, c::{d}}`).
fn path_text(text: &str) -> String {
    let mut depth = 0usize;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => break,
            _ => {}
        }
        end = i + c.len_utf8();
        if depth == 0 && c == '}' {
            break;
        }
    }
    text[..end].split_whitespace().collect()
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.trim_end_matches("::").to_owned()];
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p.trim()))
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// `pub use child::Item;` / `pub use child::{A, B};` in a parent: item name → child.
fn re_exports(code: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(rest) = ["pub use ", "pub(crate) use "]
            .iter()
            .find_map(|p| statement.strip_prefix(p))
        else {
            continue;
        };
        for path in expand(&rest.split_whitespace().collect::<String>()) {
            let parts: Vec<&str> = path.split("::").collect();
            if parts.len() >= 2 && parts[0] != "crate" && parts[0] != "super" {
                let name = parts[parts.len() - 1].to_owned();
                map.insert(name, parts[0].to_owned());
            }
        }
    }
    map
}

struct Graphs {
    /// Top-level modules of the crate (`keap`, `refresh`, …).
    modules: Graph,
    /// Within each module with files of its own: `refresh/protocol` → `refresh/scheduled`.
    files: Graph,
}

fn graphs(files: &[SourceFile]) -> Graphs {
    let known: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let dir_modules: BTreeSet<Vec<String>> = files
        .iter()
        .filter(|f| {
            known
                .iter()
                .any(|k| k.len() > f.module.len() && k.starts_with(&f.module))
        })
        .map(|f| f.module.clone())
        .collect();
    let exports: BTreeMap<Vec<String>, BTreeMap<String, String>> = files
        .iter()
        .map(|f| (f.module.clone(), re_exports(&f.code)))
        .collect();
    // The file that defines what `path` names: its longest known module prefix, followed
    // through the parent's re-exports one level down.
    let resolve = |path: &[String]| -> Vec<String> {
        let mut module: Vec<String> = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| known.contains(p))
            .unwrap_or_default();
        if let Some(item) = path.get(module.len())
            && let Some(child) = exports.get(&module).and_then(|e| e.get(item))
        {
            let mut child_module = module.clone();
            child_module.push(child.clone());
            if known.contains(&child_module) {
                module = child_module;
            }
        }
        module
    };
    let name = |m: &[String]| {
        if m.is_empty() {
            "crate".to_owned()
        } else {
            m.join("/")
        }
    };
    let mut graphs = Graphs {
        modules: Graph::new(),
        files: Graph::new(),
    };
    for file in files {
        if file.module.is_empty() {
            continue; // lib.rs only declares the modules and re-exports
        }
        let is_dir = dir_modules.contains(&file.module);
        graphs.modules.entry(name(&file.module[..1])).or_default();
        for path in referenced_paths(&file.module, is_dir, &file.code) {
            let target = resolve(&path);
            let declares_it = target.len() > file.module.len() && target.starts_with(&file.module);
            if target == file.module || declares_it || target.is_empty() {
                continue;
            }
            if file.module[0] != target[0] {
                graphs
                    .modules
                    .entry(name(&file.module[..1]))
                    .or_default()
                    .insert(name(&target[..1]));
            } else if file.module.len() == target.len() && file.module.len() >= 2 {
                graphs
                    .files
                    .entry(name(&file.module))
                    .or_default()
                    .insert(name(&target));
            }
        }
    }
    graphs
}

/// Every cycle, each as `a → b → a`, found by depth-first search.
fn cycles(graph: &Graph) -> Vec<String> {
    fn visit(
        node: &str,
        graph: &Graph,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            found.push(cycle.join(" → "));
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let (mut done, mut found) = (BTreeSet::new(), Vec::new());
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Modules in layers: each imports only modules of lower layers.
fn layers(graph: &Graph) -> Vec<Vec<String>> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut layers = Vec::new();
    while placed.len() < graph.len() {
        let layer: Vec<String> = graph
            .iter()
            .filter(|(n, deps)| !placed.contains(*n) && deps.iter().all(|d| placed.contains(d)))
            .map(|(n, _)| n.clone())
            .collect();
        if layer.is_empty() {
            break;
        }
        placed.extend(layer.iter().cloned());
        layers.push(layer);
    }
    layers
}

#[test]
fn shared_src_has_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = source_files(&root);
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let graphs = graphs(&files);
    for (i, layer) in layers(&graphs.modules).iter().enumerate() {
        println!("layer {i}: {}", layer.join(", "));
    }
    let mut problems = cycles(&graphs.modules);
    problems.extend(cycles(&graphs.files));
    assert!(
        problems.is_empty(),
        "import cycles in shared/src:\n  {}",
        problems.join("\n  ")
    );
    // The composition root is imported by nothing in the library.
    let importers: Vec<&String> = graphs
        .modules
        .iter()
        .filter(|(_, deps)| deps.contains("wiring"))
        .map(|(n, _)| n)
        .collect();
    assert!(
        importers.is_empty(),
        "domain modules import wiring: {importers:?}"
    );
}

#[test]
fn finds_module_and_file_cycles() {
    let file = |module: &str, code: &str| SourceFile {
        module: module
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        code: without_comments(code),
    };
    let files = vec![
        file("", "pub mod a; pub mod b; pub mod c;"),
        file("a", "use crate::b::Thing; // crate::c::Not (a comment)"),
        file("b", "pub struct Thing; fn f() { crate::a::g(); }"),
        file("c", "mod x; mod y; pub use x::X; pub use y::Y;"),
        file("c/x", "use super::Y; pub struct X;"),
        file("c/y", "use super::{x::X}; pub struct Y;"),
    ];
    let cyclic = graphs(&files);
    assert_eq!(cycles(&cyclic.modules), vec!["a → b → a"]);
    assert_eq!(cycles(&cyclic.files), vec!["c/x → c/y → c/x"]);

    let acyclic = vec![
        file("", "pub mod a; pub mod b;"),
        file("a", "use crate::b::{Thing, other::{One, Two}};"),
        file(
            "b",
            "mod other; pub use other::{One, Two}; pub struct Thing;",
        ),
        file(
            "b/other",
            "use super::Thing; pub struct One; pub struct Two;",
        ),
    ];
    let acyclic = graphs(&acyclic);
    assert!(cycles(&acyclic.modules).is_empty());
    assert!(cycles(&acyclic.files).is_empty());
    assert_eq!(
        layers(&acyclic.modules),
        vec![vec!["b".to_owned()], vec!["a".to_owned()]]
    );
}
