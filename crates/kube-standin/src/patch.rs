//! The four patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge
//! patch (approximated: merge keys for the list fields kubectl and controllers patch, `$`
//! directives honoured), and the merge step of server-side apply (field ownership lives in
//! `ssa.rs`).

use serde_json::{Map, Value};

/// A PATCH request's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/json-patch+json`
    Json,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// From a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// RFC 7386 merge.
pub fn merge(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch)
}

/// RFC 6902; the error text is the reason the patch could not be applied.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(doc, &ops).map_err(|e| e.to_string())
}

/// Merge keys of the list fields that carry `patchStrategy: merge` in the built-in types this
/// server serves (and those in pod templates, for completeness).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "imagePullSecrets" | "secrets" | "containers" | "initContainers" | "env" | "volumes"
        | "volumeMounts" => Some("name"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Primitive lists with `patchStrategy: merge`.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch, as kubectl sends it for built-in types.
pub fn strategic(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        return Err("strategic merge patch must be a JSON object".into());
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    strategic_map(doc, p);
    Ok(())
}

fn strategic_map(doc: &mut Value, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        p.remove("$patch");
        *doc = Value::Object(strip_directives(&p));
        return;
    }
    let Some(d) = doc.as_object_mut() else {
        *doc = Value::Object(strip_directives(patch));
        return;
    };
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        d.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (d.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                d.remove(k);
            }
            Value::Object(pm) => {
                let slot = d.entry(k.clone()).or_insert(Value::Null);
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    d.remove(k);
                } else {
                    strategic_map(slot, pm);
                }
            }
            Value::Array(items) => {
                let merged = match (d.get(k), merge_key(k)) {
                    (Some(Value::Array(cur)), Some(key)) if items.iter().all(Value::is_object) => {
                        merge_list(cur.clone(), items, key)
                    }
                    (Some(Value::Array(cur)), None) if merges_primitives(k) => {
                        let mut out = cur.clone();
                        for i in items {
                            if !out.contains(i) {
                                out.push(i.clone());
                            }
                        }
                        out
                    }
                    _ => items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .map(|i| match i {
                            Value::Object(m) => Value::Object(strip_directives(m)),
                            other => other.clone(),
                        })
                        .collect(),
                };
                d.insert(k.clone(), Value::Array(merged));
            }
            other => {
                d.insert(k.clone(), other.clone());
            }
        }
        if let Some(Value::Array(order)) = patch.get(&format!("$setElementOrder/{k}")) {
            if let Some(Value::Array(list)) = d.get_mut(k) {
                reorder(list, order, merge_key(k));
            }
        }
    }
}

fn merge_list(mut cur: Vec<Value>, items: &[Value], key: &str) -> Vec<Value> {
    for item in items {
        let Value::Object(im) = item else { continue };
        let kv = im.get(key);
        let pos = cur.iter().position(|c| c.get(key) == kv && kv.is_some());
        if im.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                cur.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => strategic_map(&mut cur[i], im),
            None => cur.push(Value::Object(strip_directives(im))),
        }
    }
    cur
}

fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let ident = |v: &Value| match key {
        Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
        None => v.clone(),
    };
    let mut out = Vec::with_capacity(list.len());
    for o in order {
        let want = ident(o);
        if let Some(i) = list.iter().position(|x| ident(x) == want) {
            out.push(list.remove(i));
        }
    }
    out.append(list);
    *list = out;
}

/// The patch map as a new value: directives dropped, and nulls too (deleting from nothing).
fn strip_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| {
            let v = match v {
                Value::Object(inner) => Value::Object(strip_directives(inner)),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// The merge step of server-side apply: maps merge recursively, lists and scalars replace,
/// explicit nulls remove.
pub fn apply_merge(doc: &mut Value, applied: &Value) {
    match (doc, applied) {
        (Value::Object(d), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    d.remove(k);
                } else if v.is_object() && d.get(k).is_some_and(Value::is_object) {
                    if let Some(slot) = d.get_mut(k) {
                        apply_merge(slot, v);
                    }
                } else {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        (d, a) => *d = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_removes_nulls() {
        let mut d = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut d, &json!({"a": null, "b": {"c": 5}}));
        assert_eq!(d, json!({"b": {"c": 5, "d": 3}}));
    }

    #[test]
    fn json_patch_test_op_fails() {
        let mut d = json!({"metadata": {"finalizers": ["a"]}});
        let err = json_patch(
            &mut d,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "b"}]),
        );
        assert!(err.is_err());
        json_patch(
            &mut d,
            &json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "b"}]),
        )
        .unwrap();
        assert_eq!(d["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn smp_merges_image_pull_secrets_by_name() {
        let mut d = json!({"imagePullSecrets": [{"name": "old"}], "metadata": {"name": "sa"}});
        strategic(
            &mut d,
            &json!({"$setElementOrder/imagePullSecrets": [{"name": "new"}, {"name": "old"}],
                    "imagePullSecrets": [{"name": "new"}]}),
        )
        .unwrap();
        assert_eq!(
            d["imagePullSecrets"],
            json!([{"name": "new"}, {"name": "old"}])
        );
        strategic(
            &mut d,
            &json!({"imagePullSecrets": [{"name": "old", "$patch": "delete"}]}),
        )
        .unwrap();
        assert_eq!(d["imagePullSecrets"], json!([{"name": "new"}]));
    }

    #[test]
    fn smp_data_map_and_nulls() {
        let mut d = json!({"data": {"a": "x", "b": "y"}});
        strategic(&mut d, &json!({"data": {"a": null, "c": "z"}})).unwrap();
        assert_eq!(d["data"], json!({"b": "y", "c": "z"}));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }
}
