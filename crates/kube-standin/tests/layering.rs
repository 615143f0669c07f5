//! The crate's top-level modules form no import cycle: the request path reads as stages that
//! depend downwards (http → pipeline → authn/authz/rest → admission/validate → store), and a
//! new `crate::x` import that closes a circle fails here rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

fn collect(dir: &Path, root: &Path, out: &mut BTreeMap<String, BTreeSet<String>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, root, out);
            continue;
        }
        let rel = p.strip_prefix(root).unwrap();
        let name = rel.to_string_lossy();
        if name == "lib.rs" || name == "main.rs" || !name.ends_with(".rs") {
            continue;
        }
        let top = top_module(rel);
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let deps = out.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let m: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !m.is_empty() && m != top {
                    deps.insert(m);
                } else if m.is_empty() && rest.starts_with('{') {
                    // `use crate::{a, b::c};`
                    let group: String = rest[1..].chars().take_while(|c| *c != '}').collect();
                    for part in group.split(',') {
                        let m = part
                            .trim()
                            .split("::")
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        if !m.is_empty() && m != top {
                            deps.insert(m);
                        }
                    }
                }
            }
        }
    }
}

fn reaches(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flatten() {
            if next == to {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push(p);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    collect(&root, &root, &mut graph);
    assert!(graph.contains_key("pipeline") && graph.contains_key("store"));
    for (m, deps) in &graph {
        for d in deps {
            if let Some(back) = reaches(&graph, d, m) {
                panic!("import cycle: {m} -> {}", back.join(" -> "));
            }
        }
    }
}
