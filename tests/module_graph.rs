//! The graph of top-level modules of `src/` has no cycles (ADR 0044): `host` wires the
//! controllers, the shim and the services together, so no two of them import each other.
//!
//! The graph is read from the source: an edge `a -> b` for every `crate::b` path in a file of
//! module `a` (`src/a.rs` or `src/a/**`), comments, string literals and `#[cfg(test)]` modules
//! left out (a test may reach across; the build may not), also those in files of their own
//! (`#[cfg(test)] mod name;`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module name -> (imported module -> first place the import appears).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules: `src/x.rs` and `src/x/`, without the crate roots.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let entries = std::fs::read_dir(src).expect("read src/");
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let is_module = path.is_dir() || path.extension().is_some_and(|x| x == "rs");
            is_module.then_some(name)
        })
        .filter(|n| n != "lib" && n != "main")
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = e.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file with comments, string and char literals blanked (newlines kept, so
/// offsets still give line numbers).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let len = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2)
        } else if let Some(n) = raw_string_len(rest) {
            n
        } else if rest[0] == b'"' {
            quoted_len(rest, b'"')
        } else if rest[0] == b'\'' && rest.len() > 2 && (rest[2] == b'\'' || rest[1] == b'\\') {
            quoted_len(rest, b'\'')
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        for &c in &rest[..len] {
            blank(&mut out, c);
        }
        i += len;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Length of a `r"…"` / `r#"…"#` / `br"…"` literal at the start of `s`.
fn raw_string_len(s: &[u8]) -> Option<usize> {
    let start = if s.starts_with(b"br") {
        2
    } else if s.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = s[start..].iter().take_while(|&&c| c == b'#').count();
    if s.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = start + hashes + 1;
    let end = s[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice());
    Some(end.map_or(s.len(), |p| body + p + close.len()))
}

/// Length of a `"…"` or `'…'` literal (with escapes) at the start of `s`.
fn quoted_len(s: &[u8], quote: u8) -> usize {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// `code` without the items behind `#[cfg(test)]`, and the names of the test modules it
/// declares in files of their own (`#[cfg(test)] mod name;`).
fn without_test_modules(code: &str) -> (String, Vec<String>) {
    let mut out = code.to_string();
    let mut file_modules = vec![];
    let mut from = 0;
    while let Some(p) = out[from..].find("#[cfg(test)]").map(|p| p + from) {
        let item = p + "#[cfg(test)]".len();
        let semi = out[item..].find(';').map(|o| o + item);
        let open = out[item..].find('{').map(|o| o + item);
        let end = match (semi, open) {
            (Some(semi), open) if open.is_none_or(|o| semi < o) => {
                let decl: Vec<&str> = out[item..semi].split_whitespace().collect();
                if let [.., "mod", name] = decl.as_slice() {
                    file_modules.push(name.to_string());
                }
                semi + 1
            }
            (_, Some(open)) => block_end(&out, open),
            _ => break,
        };
        let blanked: String = out[p..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(p..end, &blanked);
        from = p + 1;
    }
    (out, file_modules)
}

/// The end of the brace-balanced block opening at `open`.
fn block_end(code: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (k, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + k + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// Where the child modules of `file` live: its own dir for `mod.rs`, else `dir/stem/`.
fn child_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(""));
    match file.file_stem().and_then(|s| s.to_str()) {
        Some("mod") | None => dir.to_path_buf(),
        Some(stem) => dir.join(stem),
    }
}

/// The modules a piece of code names after `crate::`, with the byte offset of each.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let ident = |i: usize| {
        let len = b[i..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        code[i..i + len].to_string()
    };
    let mut out = vec![];
    for (at, _) in code.match_indices("crate::") {
        let before = at.checked_sub(1).map(|i| b[i]);
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$') {
            continue;
        }
        let next = at + "crate::".len();
        if b.get(next) == Some(&b'{') {
            // `crate::{a, b::c, d::{e}}`: the first segment of every top-level item.
            let mut depth = 0;
            let mut expect = true;
            for (k, c) in code[next..].char_indices() {
                match c {
                    '{' => {
                        depth += 1;
                        expect = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect = true,
                    c if expect && (c.is_ascii_alphabetic() || c == '_') => {
                        out.push((at, ident(next + k)));
                        expect = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push((at, ident(next)));
        }
    }
    out
}

fn module_graph() -> Graph {
    let src = src_dir();
    let tops = top_level_modules(&src);
    // Every file with its code, test items left out.
    let mut sources: Vec<(String, PathBuf, String)> = vec![];
    let mut test_files: Vec<PathBuf> = vec![];
    for top in &tops {
        let mut files = vec![];
        let dir = src.join(top);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = src.join(format!("{top}.rs"));
        if file.is_file() {
            files.push(file);
        }
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read source");
            let (code, test_modules) = without_test_modules(&code_only(&text));
            for m in test_modules {
                test_files.push(child_dir(&f).join(format!("{m}.rs")));
                test_files.push(child_dir(&f).join(m));
            }
            sources.push((top.clone(), f, code));
        }
    }
    let mut graph: Graph = tops.iter().map(|t| (t.clone(), BTreeMap::new())).collect();
    for (top, f, code) in &sources {
        if test_files.iter().any(|t| f.starts_with(t)) {
            continue;
        }
        for (at, target) in crate_paths(code) {
            if &target != top && tops.contains(&target) {
                let line = code[..at].matches('\n').count() + 1;
                let rel = f.strip_prefix(&src).unwrap_or(f).display().to_string();
                graph
                    .entry(top.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| format!("src/{rel}:{line}"));
            }
        }
    }
    graph
}

/// A cycle of the graph, as the list of edges with the place each comes from.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle: Vec<String> = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(
                cycle
                    .windows(2)
                    .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
                    .collect(),
            );
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut vec![]))
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    assert!(
        graph.len() > 10,
        "too few modules found: {:?}",
        graph.keys()
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the top-level modules form a cycle (ADR 0044):\n  {}",
            cycle.join("\n  ")
        );
    }
}

#[test]
fn the_controllers_the_shim_and_the_image_service_stay_apart() {
    let graph = module_graph();
    for (from, to) in [
        ("shim", "controllers"),
        ("controllers", "shim"),
        ("images", "controllers"),
        ("controllers", "host"),
        ("shim", "host"),
    ] {
        assert!(
            !graph[from].contains_key(to),
            "{from} imports {to} at {} (ADR 0044)",
            graph[from][to]
        );
    }
}

#[test]
fn the_reader_sees_crate_paths_in_code_only() {
    let text = r#"
        use crate::{alpha, beta::x, gamma::{y, z}};
        // crate::commented
        let s = "crate::quoted";
        let t = $crate::macro_path;
        crate::delta::f();
        #[cfg(test)]
        mod tests { use crate::epsilon; fn f() { let c = '{'; } }
        crate::zeta::g();
        #[cfg(test)]
        mod inproc;
        struct Kept { field: crate::eta::T }
    "#;
    let (code, test_modules) = without_test_modules(&code_only(text));
    let found: Vec<String> = crate_paths(&code).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["alpha", "beta", "gamma", "delta", "zeta", "eta"]);
    assert_eq!(test_modules, ["inproc"]);
    assert_eq!(
        child_dir(Path::new("src/controllers/mod.rs")),
        Path::new("src/controllers")
    );
    assert_eq!(
        child_dir(Path::new("src/images/git.rs")),
        Path::new("src/images/git")
    );
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut graph = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), format!("src/{a}.rs:1"));
        g.entry(b.into()).or_default();
    };
    edge(&mut graph, "a", "b");
    edge(&mut graph, "b", "c");
    assert!(find_cycle(&graph).is_none());
    edge(&mut graph, "c", "a");
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle.len(), 3, "{cycle:?}");
    assert!(cycle[0].starts_with("a -> b"), "{cycle:?}");
}
