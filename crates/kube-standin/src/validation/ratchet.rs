//! Ratcheting (Kubernetes 1.30+, GA in 1.33): on an update, an error raised by a schema node
//! whose value is unchanged from the old object is dropped (CEL rule failures become
//! warnings instead), so an object stored before a schema tightened can still be updated as
//! long as the update leaves the invalid part alone.
//!
//! "Unchanged" needs the old value of the node, found by correlating the new object with the
//! old one from the root: object properties and map entries by key, items of
//! `x-kubernetes-list-type: map` lists by their map keys. Items of other lists cannot be
//! correlated; an error inside one is judged by the nearest correlatable ancestor.

use serde_json::Value;

use super::Seg;

/// The schema of a property or map value.
pub fn child_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    schema["properties"].get(key).or_else(|| {
        schema["additionalProperties"]
            .is_object()
            .then(|| &schema["additionalProperties"])
    })
}

/// The old item a new item of a map-type list corresponds to.
pub fn old_map_item<'a>(schema: &Value, old: &'a Value, new_item: &Value) -> Option<&'a Value> {
    if schema["x-kubernetes-list-type"] != "map" {
        return None;
    }
    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    old.as_array()?
        .iter()
        .find(|o| keys.iter().all(|k| o.get(*k) == new_item.get(*k)))
}

/// Equality as the API server's correlation sees it: items of map-type lists are compared
/// by key, so reordering such a list is no change.
pub fn equal(schema: &Value, new: &Value, old: &Value) -> bool {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            n.len() == o.len()
                && n.iter().all(|(k, v)| {
                    o.get(k).is_some_and(|ov| match child_schema(schema, k) {
                        Some(cs) => equal(cs, v, ov),
                        None => v == ov,
                    })
                })
        }
        (Value::Array(n), Value::Array(o)) if schema["x-kubernetes-list-type"] == "map" => {
            let is = &schema["items"];
            n.len() == o.len()
                && n.iter().all(|item| {
                    old_map_item(schema, old, item).is_some_and(|oi| equal(is, item, oi))
                })
        }
        _ => new == old,
    }
}

/// Whether an error raised by the node at `path` is ratcheted: the nearest correlatable
/// node on the way (the node itself if it correlates) is unchanged.
pub fn unchanged(schema: &Value, new: &Value, old: Option<&Value>, path: &[Seg]) -> bool {
    let Some(old) = old else { return false };
    let (mut s, mut n, mut o) = (schema, new, old);
    for (depth, seg) in path.iter().enumerate() {
        let next = match seg {
            Seg::Field(k) | Seg::Key(k) => {
                if depth == 0 && (k == "apiVersion" || k == "kind") {
                    return false;
                }
                match (n.get(k), o.get(k), child_schema(s, k)) {
                    (Some(nn), Some(oo), Some(cs)) => Some((cs, nn, oo)),
                    _ => None,
                }
            }
            Seg::Index(i) => {
                let item = n.get(*i);
                match (item, item.and_then(|it| old_map_item(s, o, it))) {
                    (Some(nn), Some(oo)) if s["items"].is_object() => Some((&s["items"], nn, oo)),
                    _ => None,
                }
            }
        };
        match next {
            Some((cs, nn, oo)) => (s, n, o) = (cs, nn, oo),
            None => break,
        }
    }
    equal(s, n, o)
}

/// The old value correlated with the node at `path` (for `oldSelf`), if any.
pub fn old_at<'a>(
    schema: &Value,
    new: &Value,
    old: Option<&'a Value>,
    path: &[Seg],
) -> Option<&'a Value> {
    let (mut s, mut n, mut o) = (schema, new, old?);
    for seg in path {
        match seg {
            Seg::Field(k) | Seg::Key(k) => {
                s = child_schema(s, k)?;
                n = n.get(k)?;
                o = o.get(k)?;
            }
            Seg::Index(i) => {
                n = n.get(*i)?;
                o = old_map_item(s, o, n)?;
                s = &s["items"];
            }
        }
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "string"},
            "atomic": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "string"}}}},
            "keyed": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"],
                      "items": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "string"}}}}}}}})
    }

    fn f(s: &str) -> Seg {
        Seg::Field(s.to_string())
    }

    #[test]
    fn unchanged_fields_ratchet_changed_do_not() {
        let old = json!({"spec": {"a": "bad", "b": "x"}});
        let new = json!({"spec": {"a": "bad", "b": "y"}});
        assert!(unchanged(&schema(), &new, Some(&old), &[f("spec"), f("a")]));
        assert!(!unchanged(
            &schema(),
            &new,
            Some(&old),
            &[f("spec"), f("b")]
        ));
        assert!(!unchanged(&schema(), &new, Some(&old), &[f("spec")]));
        assert!(!unchanged(&schema(), &new, None, &[f("spec"), f("a")]));
    }

    #[test]
    fn list_items_correlate_only_in_map_lists() {
        let old = json!({"spec": {"atomic": [{"x": "1"}], "keyed": [{"k": "a", "v": "1"}, {"k": "b", "v": "2"}], "b": "x"}});
        let new = json!({"spec": {"atomic": [{"x": "1"}], "keyed": [{"k": "b", "v": "2"}, {"k": "a", "v": "9"}], "b": "y"}});
        // keyed item "b" moved but is unchanged; item "a" changed
        assert!(unchanged(
            &schema(),
            &new,
            Some(&old),
            &[f("spec"), f("keyed"), Seg::Index(0), f("v")]
        ));
        assert!(!unchanged(
            &schema(),
            &new,
            Some(&old),
            &[f("spec"), f("keyed"), Seg::Index(1), f("v")]
        ));
        // atomic list items do not correlate: judged by the list, which is unchanged
        assert!(unchanged(
            &schema(),
            &new,
            Some(&old),
            &[f("spec"), f("atomic"), Seg::Index(0), f("x")]
        ));
        assert_eq!(
            old_at(
                &schema(),
                &new,
                Some(&old),
                &[f("spec"), f("keyed"), Seg::Index(1)]
            ),
            Some(&json!({"k": "a", "v": "1"}))
        );
        assert_eq!(
            old_at(
                &schema(),
                &new,
                Some(&old),
                &[f("spec"), f("atomic"), Seg::Index(0)]
            ),
            None
        );
    }
}
