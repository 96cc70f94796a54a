//! bangerd's modules import each other without a circle, and the domain
//! never imports the HTTP layer.
//!
//! The graph is read from the sources under `src/`: one node per module
//! file (`src/a.rs` and `src/a/mod.rs` are `a`, `src/a/b.rs` is `a::b`).
//! Edges considered, from the module whose file holds the path:
//! - every path written in code (a `use` tree, a type, an expression, a
//!   `pub use` re-export) that starts with `crate::`, `super::` or `self::`,
//!   or with the name of one of the module's own child modules, resolved to
//!   the innermost module file it names (`crate::vm::ops::boot` is `vm::ops`,
//!   `crate::vm::VmError` is `vm`);
//! - code inside `#[cfg(test)]` modules counts like any other code (an
//!   inline `mod tests { use super::*; }` names its own file's module).
//!
//! Not edges: `mod x;` declarations (a parent containing a child), paths
//! into the crate root (`lib.rs` only declares modules), and anything in
//! comments, doc comments and string literals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that serve HTTP: nothing outside them (and `daemon`, which wires
/// the process together) may import them.
const HTTP_LAYER: &[&str] = &[
    "api",
    "http",
    "vm::api",
    "image::api",
    "session::api",
    "workspace::api",
];

/// Modules allowed to import the HTTP layer besides the layer itself.
const WIRING: &[&str] = &["daemon"];

#[test]
fn bangerd_modules_form_no_circle() {
    let graph = Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        graph.nodes.len() > 20,
        "found only {} modules: {:?}",
        graph.nodes.len(),
        graph.nodes
    );
    if let Some(cycle) = graph.find_cycle() {
        panic!(
            "bangerd's modules import each other in a circle: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_domain_never_imports_the_http_layer() {
    let graph = Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let in_layer = |m: &str| {
        HTTP_LAYER
            .iter()
            .any(|l| m == *l || m.starts_with(&format!("{l}::")))
    };
    let mut wrong = Vec::new();
    for (from, tos) in &graph.edges {
        if in_layer(from) || WIRING.contains(&from.as_str()) {
            continue;
        }
        for to in tos.iter().filter(|t| in_layer(t)) {
            wrong.push(format!("{from} -> {to}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "domain modules import the HTTP layer: {wrong:?}"
    );
}

/// The reader and the cycle search on a made-up crate: each kind of edge
/// above is found, and a circle through them is reported.
#[test]
fn the_reader_finds_each_kind_of_edge() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;\n");
    write(
        "a/mod.rs",
        "pub mod inner;\npub use inner::Thing; // crate::d::X in a comment\n",
    );
    write(
        "a/inner.rs",
        "use super::super::{b, c::{self, Y}};\nlet s = \"crate::d::Z\";\n",
    );
    write("b.rs", "fn f() { crate::a::inner::g(); }\n");
    write(
        "c.rs",
        "#[cfg(test)]\nmod tests {\n    use super::*;\n    use self::super::super::d;\n}\n",
    );
    write(
        "d.rs",
        "//! [`crate::a`]\nfn f<'a>(x: &'a str) -> char { 'x' }\n",
    );
    let graph = Graph::read(src);
    let edges: BTreeSet<String> = graph
        .edges
        .iter()
        .flat_map(|(f, ts)| ts.iter().map(move |t| format!("{f}->{t}")))
        .collect();
    let want: BTreeSet<String> = [
        "a->a::inner",
        "a::inner->b",
        "a::inner->c",
        "b->a::inner",
        "c->d",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(edges, want);
    let cycle = graph
        .find_cycle()
        .expect("a::inner -> b -> a::inner is a circle");
    assert!(cycle.contains(&"b".to_owned()), "{cycle:?}");

    write("b.rs", "fn f() {}\n");
    assert_eq!(Graph::read(src).find_cycle(), None);
}

struct Graph {
    nodes: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut files = Vec::new();
        collect(src, src, &mut files);
        let nodes: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (module, text) in &files {
            if module.is_empty() {
                continue;
            }
            let code = strip(text);
            for (inline, path) in paths(&code) {
                if let Some(to) = resolve(module, inline, &path, &nodes) {
                    if to != *module && !to.is_empty() {
                        edges.entry(module.clone()).or_default().insert(to);
                    }
                }
            }
        }
        nodes.iter().for_each(|n| {
            edges.entry(n.clone()).or_default();
        });
        edges.remove("");
        Graph { nodes, edges }
    }

    /// A circle of modules (first and last equal), if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        // 0 unvisited, 1 on the stack, 2 done.
        let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
        let mut stack: Vec<&str> = Vec::new();
        fn visit<'g>(
            g: &'g Graph,
            n: &'g str,
            mark: &mut BTreeMap<&'g str, u8>,
            stack: &mut Vec<&'g str>,
        ) -> Option<Vec<String>> {
            mark.insert(n, 1);
            stack.push(n);
            for to in &g.edges[n] {
                match mark.get(to.as_str()).copied().unwrap_or(0) {
                    1 => {
                        let at = stack.iter().position(|s| s == to).unwrap();
                        let mut cycle: Vec<String> =
                            stack[at..].iter().map(|s| s.to_string()).collect();
                        cycle.push(to.clone());
                        return Some(cycle);
                    }
                    0 => {
                        if let Some(c) = visit(g, to, mark, stack) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
            stack.pop();
            mark.insert(n, 2);
            None
        }
        for n in self.edges.keys() {
            if mark.get(n.as_str()).copied().unwrap_or(0) == 0 {
                if let Some(c) = visit(self, n, &mut mark, &mut stack) {
                    return Some(c);
                }
            }
        }
        None
    }
}

/// `(module path, source)` of every `.rs` file under `dir`; `main.rs` is the
/// binary, which reaches the library through `bangerd::`, not `crate::`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, out);
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts == ["main"] {
            continue;
        }
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        out.push((parts.join("::"), text));
    }
}

/// The source with comments, string and char literals blanked out.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'); otherwise a lifetime.
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Every path in `code`, each as its segments with the number of inline
/// `mod x { ... }` it sits in; `use` trees are expanded (`a::{b, c::d}`
/// gives `a::b` and `a::c::d`). Paths that begin after `::`
/// (`tokio::sync`) are another crate's and start nowhere here.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut inline: Vec<usize> = Vec::new();
    let mut opens_mod = false;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let starts = is_ident(t)
            && tokens.get(i + 1).is_some_and(|t| t == "::")
            && (i == 0 || tokens[i - 1] != "::");
        if starts {
            let mut found = Vec::new();
            i = tree(&tokens, i, Vec::new(), &mut found);
            out.extend(found.into_iter().map(|p| (inline.len(), p)));
            continue;
        }
        match t {
            "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => opens_mod = true,
            "{" => {
                depth += 1;
                if opens_mod {
                    inline.push(depth);
                    opens_mod = false;
                }
            }
            "}" => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Read the path tree at `tokens[i]` under `prefix`; returns the index after it.
fn tree(
    tokens: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match tokens.get(i) {
            Some(t) if t == "{" => {
                i += 1;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        None => return i,
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        Some(_) => i = tree(tokens, i, prefix.clone(), out),
                    }
                }
            }
            Some(t) if is_ident(t) => {
                prefix.push(t.clone());
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "::") {
                    i += 1;
                    continue;
                }
                out.push(prefix);
                return i;
            }
            _ => {
                if !prefix.is_empty() {
                    out.push(prefix);
                }
                return i;
            }
        }
    }
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn tokenize(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else if c[i].is_whitespace() {
            i += 1;
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

/// The innermost module file that `path`, written in `module` inside
/// `inline` inline modules, names.
fn resolve(
    module: &str,
    mut inline: usize,
    path: &[String],
    nodes: &BTreeSet<String>,
) -> Option<String> {
    let mut at: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            at.clear();
            rest = &path[1..];
        }
        Some("self" | "super") => {
            while let Some(seg) = rest.first().map(String::as_str) {
                match seg {
                    "self" => {}
                    "super" if inline > 0 => inline -= 1,
                    "super" => {
                        at.pop()?;
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        Some(_) if inline > 0 => return None,
        Some(first) => {
            // Only a child module of `module` can be named without a prefix.
            let child = join(&at, &[first]);
            if !nodes.contains(&child) {
                return None;
            }
        }
        None => return None,
    }
    let mut found = join(&at, &[]);
    if inline > 0 {
        // Inside an inline module of this file: nothing outside it.
        return Some(found);
    }
    for seg in rest {
        let next = join(&at, &[seg.as_str()]);
        if !nodes.contains(&next) {
            break;
        }
        at.push(seg);
        found = next;
    }
    Some(found)
}

fn join(at: &[&str], more: &[&str]) -> String {
    at.iter()
        .chain(more)
        .copied()
        .collect::<Vec<_>>()
        .join("::")
}
