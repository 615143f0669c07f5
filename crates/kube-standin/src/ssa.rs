//! `metadata.managedFields` bookkeeping and server-side-apply field ownership.
//!
//! Field sets are leaf paths (maps recurse; lists and scalars are atomic leaves), encoded as
//! `FieldsV1` (`{"f:spec":{"f:x":{}}}`). An apply removes the fields its manager applied last
//! time and no longer applies, unless another manager also owns them; applying a field another
//! manager owns with a different value is a conflict unless `force=true`. Update operations
//! (PUT, non-apply PATCH) take ownership of the leaves they change.
//!
//! Lists are atomic here (real SSA merges `x-kubernetes-list-type: map` lists per key): with one
//! manager per list, which is the controller's case, the result is the same.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

/// A leaf path.
pub type Path = Vec<String>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `""` or `status`.
    pub subresource: String,
    /// apiVersion the manager used.
    pub api_version: String,
    /// RFC 3339 time.
    pub time: String,
    /// Owned leaves.
    pub fields: BTreeSet<Path>,
}

const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Leaf paths of an object, excluding identity and server-managed fields.
pub fn leaves(obj: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                if let Value::Object(mm) = v {
                    for (mk, mv) in mm {
                        if SERVER_META.contains(&mk.as_str()) {
                            continue;
                        }
                        walk(mv, vec![k.clone(), mk.clone()], &mut out);
                    }
                }
                continue;
            }
            walk(v, vec![k.clone()], &mut out);
        }
    }
    out
}

fn walk(v: &Value, path: Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(c, p, out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// Value at a path.
pub fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for s in p {
        cur = cur.as_object()?.get(s)?;
    }
    Some(cur)
}

/// Remove the value at a path, then parents left empty (below the top level).
fn remove_path(v: &mut Value, p: &[String]) {
    fn rec(v: &mut Value, p: &[String], depth: usize) -> bool {
        let Some(m) = v.as_object_mut() else {
            return false;
        };
        if p.len() == 1 {
            m.remove(&p[0]);
        } else if let Some(child) = m.get_mut(&p[0]) {
            if rec(child, &p[1..], depth + 1) {
                m.remove(&p[0]);
            }
        }
        depth >= 1 && m.is_empty()
    }
    rec(v, p, 0);
}

fn encode(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut cur = &mut root;
        for s in p {
            let e = cur
                .entry(format!("f:{s}"))
                .or_insert_with(|| Value::Object(Map::new()));
            cur = match e.as_object_mut() {
                Some(m) => m,
                None => break,
            };
        }
    }
    Value::Object(root)
}

fn decode(v: &Value) -> BTreeSet<Path> {
    fn rec(v: &Value, path: Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    let Some(name) = k.strip_prefix("f:") else {
                        continue;
                    };
                    let mut p = path.clone();
                    p.push(name.to_string());
                    rec(c, p, out);
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    rec(v, Vec::new(), &mut out);
    out
}

/// Parse `metadata.managedFields`.
pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            fields: decode(&e["fieldsV1"]),
        })
        .collect()
}

/// Write `metadata.managedFields`.
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let arr: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if arr.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(arr));
        }
    }
}

/// The write's identity.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// Manager name.
    pub manager: &'a str,
    /// `""` or `status`.
    pub subresource: &'a str,
    /// apiVersion of the request.
    pub api_version: &'a str,
    /// Now, RFC 3339.
    pub now: &'a str,
}

fn upsert<'e>(entries: &'e mut Vec<Entry>, w: &Writer, op: &str) -> &'e mut Entry {
    let idx = entries.iter().position(|e| {
        e.manager == w.manager && e.operation == op && e.subresource == w.subresource
    });
    let idx = match idx {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: w.manager.to_string(),
                operation: op.to_string(),
                subresource: w.subresource.to_string(),
                api_version: w.api_version.to_string(),
                time: w.now.to_string(),
                fields: BTreeSet::new(),
            });
            entries.len() - 1
        }
    };
    let e = &mut entries[idx];
    e.api_version = w.api_version.to_string();
    e.time = w.now.to_string();
    e
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Record an Update operation from `old` to `new` (both without the managedFields change);
/// writes the new `managedFields` into `new`.
pub fn record_update(old: Option<&Value>, new: &mut Value, w: &Writer) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let old_leaves = old.map(leaves).unwrap_or_default();
    let new_leaves = leaves(new);
    let changed: BTreeSet<Path> = new_leaves
        .iter()
        .filter(|p| {
            !old_leaves.contains(*p) || old.and_then(|o| get_path(o, p)) != get_path(new, p)
        })
        .cloned()
        .collect();
    let removed: Vec<&Path> = old_leaves.difference(&new_leaves).collect();
    for e in entries.iter_mut() {
        e.fields
            .retain(|f| !changed.iter().any(|c| overlaps(c, f)) && !removed.contains(&f));
    }
    if !changed.is_empty() {
        let e = upsert(&mut entries, w, "Update");
        e.fields.extend(changed);
    }
    entries.retain(|e| !e.fields.is_empty());
    write_entries(new, &entries);
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The other manager.
    pub manager: String,
    /// The field, dotted.
    pub field: String,
    /// The field as a path.
    pub path: Path,
}

/// The client-side-apply upgrade path of the real API server (its `lastAppliedManager`): a
/// server-side apply whose conflicts are all with `kubectl-client-side-apply` over fields
/// recorded in the `kubectl.kubernetes.io/last-applied-configuration` annotation is forced;
/// an existing annotation is then kept in step with the applied configuration.
pub fn apply_with_csa_upgrade(
    current: &Value,
    applied: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    const ANN: &str = "kubectl.kubernetes.io/last-applied-configuration";
    let last: Option<Value> = current["metadata"]["annotations"][ANN]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok());
    let mut out = match apply(current, applied, w, force) {
        Ok(o) => o,
        Err(conflicts) => {
            let upgradable = last.as_ref().is_some_and(|l| {
                conflicts.iter().all(|c| {
                    c.manager == "kubectl-client-side-apply" && get_path(l, &c.path).is_some()
                })
            });
            if !upgradable {
                return Err(conflicts);
            }
            apply(current, applied, w, true)?
        }
    };
    if last.is_some() {
        let mut cfg = applied.clone();
        if let Some(m) = cfg["metadata"].as_object_mut() {
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(ANN);
            }
        }
        if out["metadata"]["annotations"].is_object() {
            out["metadata"]["annotations"][ANN] = json!(cfg.to_string());
        }
    }
    Ok(out)
}

/// Server-side apply of `applied` onto `current` (or onto an empty object on create).
pub fn apply(
    current: &Value,
    applied: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut obj = current.clone();
    let mut entries = read_entries(current);
    let new_set = leaves(applied);
    let mut conflicts = Vec::new();
    for e in entries.iter_mut() {
        if e.manager == w.manager && e.subresource == w.subresource {
            continue;
        }
        let mut lost = Vec::new();
        for f in &e.fields {
            for p in new_set.iter().filter(|p| overlaps(p, f)) {
                let longer = if p.len() >= f.len() { p } else { f };
                if get_path(current, longer) != get_path(applied, longer) {
                    if force {
                        lost.push(f.clone());
                    } else {
                        conflicts.push(Conflict {
                            manager: e.manager.clone(),
                            field: format!(".{}", f.join(".")),
                            path: f.clone(),
                        });
                    }
                }
            }
        }
        for f in lost {
            e.fields.remove(&f);
        }
    }
    if !conflicts.is_empty() {
        conflicts.dedup();
        return Err(conflicts);
    }
    let prev: BTreeSet<Path> = entries
        .iter()
        .find(|e| {
            e.manager == w.manager && e.operation == "Apply" && e.subresource == w.subresource
        })
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in prev.difference(&new_set) {
        let owned_elsewhere = entries.iter().any(|e| {
            !(e.manager == w.manager && e.operation == "Apply" && e.subresource == w.subresource)
                && e.fields.iter().any(|f| overlaps(f, p))
        });
        if !owned_elsewhere {
            remove_path(&mut obj, p);
        }
    }
    crate::patch::apply_merge(&mut obj, applied);
    let e = upsert(&mut entries, w, "Apply");
    e.fields = new_set;
    entries.retain(|e| !e.fields.is_empty());
    write_entries(&mut obj, &entries);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(m: &'a str) -> Writer<'a> {
        Writer {
            manager: m,
            subresource: "",
            api_version: "v1",
            now: "2024-01-01T00:00:00Z",
        }
    }

    #[test]
    fn apply_removes_dropped_fields() {
        let base = json!({"metadata": {"name": "x"}});
        let a1 = json!({"metadata": {"name": "x"}, "spec": {"a": 1, "b": 2}});
        let o1 = apply(&base, &a1, &w("m1"), false).unwrap();
        assert_eq!(o1["spec"], json!({"a": 1, "b": 2}));
        let a2 = json!({"metadata": {"name": "x"}, "spec": {"a": 1}});
        let o2 = apply(&o1, &a2, &w("m1"), false).unwrap();
        assert_eq!(o2["spec"], json!({"a": 1}));
        assert_eq!(
            o2["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:spec": {"f:a": {}}})
        );
    }

    #[test]
    fn conflict_and_force() {
        let base = json!({"metadata": {"name": "x"}});
        let o1 = apply(&base, &json!({"spec": {"a": 1}}), &w("m1"), false).unwrap();
        let err = apply(&o1, &json!({"spec": {"a": 2}}), &w("m2"), false).unwrap_err();
        assert_eq!(err[0].manager, "m1");
        // Same value: shared ownership, no conflict.
        let shared = apply(&o1, &json!({"spec": {"a": 1}}), &w("m2"), false).unwrap();
        // m1 stops applying a; m2 still owns it, so it stays.
        let o3 = apply(&shared, &json!({"spec": {"c": 1}}), &w("m1"), false).unwrap();
        assert_eq!(o3["spec"]["a"], 1);
        let forced = apply(&o1, &json!({"spec": {"a": 2}}), &w("m2"), true).unwrap();
        assert_eq!(forced["spec"]["a"], 2);
    }

    #[test]
    fn update_takes_ownership() {
        let o1 = apply(
            &json!({"metadata": {}}),
            &json!({"spec": {"a": 1}}),
            &w("m1"),
            false,
        )
        .unwrap();
        let mut new = o1.clone();
        new["spec"]["a"] = json!(5);
        record_update(Some(&o1), &mut new, &w("editor"));
        let entries = read_entries(&new);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager, "editor");
    }
}
