//! `matchConstraints` (and a binding's `matchResources`): which requests a policy applies to.
//!
//! As the API server's matcher: namespace selector (a cluster-scoped resource other than a
//! Namespace always matches), object selector (the new or the old object's labels),
//! `excludeResourceRules`, then `resourceRules` (operations, API groups and versions,
//! resources with the `*`, `*/*`, `res/*`, `*/sub` and `res/sub` forms, scope, resource
//! names). With `matchPolicy: Equivalent` (the default) a rule naming another version of the
//! same resource matches too.

use serde_json::Value;

use super::{Attributes, Lookup, Operation};

/// A `metav1.LabelSelector` (`matchLabels`, `matchExpressions`) against a label map.
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(ml) = selector["matchLabels"].as_object() {
        if !ml.iter().all(|(k, v)| label(k) == v.as_str()) {
            return false;
        }
    }
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        })
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .any(|x| x == "*" || x == want)
}

fn resource_matches(list: &Value, resource: &str, sub: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| {
            if r == "*/*" {
                return true;
            }
            let (res, rsub) = match r.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (r, None),
            };
            (res == "*" || res == resource)
                && match rsub {
                    None => sub.is_empty(),
                    Some(s) => s == "*" || s == sub,
                }
        })
}

fn rule_matches(rule: &Value, a: &Attributes<'_>, version: &str) -> bool {
    let scope_ok = match rule["scope"].as_str() {
        Some("Namespaced") => a.resource.namespaced && !a.namespace.is_empty(),
        Some("Cluster") => !a.resource.namespaced,
        _ => true,
    };
    let names = rule["resourceNames"].as_array().filter(|n| !n.is_empty());
    has(&rule["operations"], a.operation.as_str())
        && has(&rule["apiGroups"], a.group())
        && has(&rule["apiVersions"], version)
        && resource_matches(&rule["resources"], &a.resource.plural, a.subresource)
        && scope_ok
        && names.is_none_or(|n| n.iter().any(|x| x == a.name))
}

fn rules_match(rules: &Value, a: &Attributes<'_>, equivalent: bool) -> bool {
    let rules = rules.as_array().map(Vec::as_slice).unwrap_or_default();
    if rules.iter().any(|r| rule_matches(r, a, a.version)) {
        return true;
    }
    equivalent
        && a.other_versions()
            .any(|v| rules.iter().any(|r| rule_matches(r, a, v)))
}

/// Whether a request matches a `MatchResources` (an empty `resourceRules`, possible only in
/// a binding's `matchResources`, does not constrain).
pub fn matches(m: &Value, a: &Attributes<'_>, lookup: &dyn Lookup) -> bool {
    let ns_sel = &m["namespaceSelector"];
    let ns_ok = if !a.is_namespace() && a.namespace.is_empty() || selector_empty(ns_sel) {
        true
    } else {
        let labels = if a.is_namespace() && a.operation == Operation::Create {
            a.object
                .map(|o| o["metadata"]["labels"].clone())
                .unwrap_or(Value::Null)
        } else {
            lookup
                .namespace(a.request_namespace())
                .map(|n| n["metadata"]["labels"].clone())
                .unwrap_or(Value::Null)
        };
        selector_matches(ns_sel, &labels)
    };
    if !ns_ok {
        return false;
    }
    let obj_sel = &m["objectSelector"];
    if !selector_empty(obj_sel) {
        let on = |o: Option<&Value>| {
            o.is_some_and(|o| selector_matches(obj_sel, &o["metadata"]["labels"]))
        };
        if !on(a.object) && !on(a.old_object) {
            return false;
        }
    }
    let equivalent = m["matchPolicy"].as_str() != Some("Exact");
    if rules_match(&m["excludeResourceRules"], a, equivalent) {
        return false;
    }
    match m["resourceRules"].as_array() {
        Some(r) if !r.is_empty() => rules_match(&m["resourceRules"], a, equivalent),
        _ => true,
    }
}

fn selector_empty(s: &Value) -> bool {
    s["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && s["matchExpressions"]
            .as_array()
            .is_none_or(|m| m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors() {
        let labels = json!({"app": "x", "tier": "web"});
        assert!(selector_matches(&json!({}), &labels));
        assert!(selector_matches(
            &json!({"matchLabels": {"app": "x"}}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchLabels": {"app": "y"}}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "db"]}]}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["x"]}]}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
            &labels
        ));
    }

    #[test]
    fn resource_forms() {
        let r = |list: Value, res: &str, sub: &str| resource_matches(&list, res, sub);
        assert!(r(json!(["secrets"]), "secrets", ""));
        assert!(!r(json!(["secrets"]), "secrets", "status"));
        assert!(r(
            json!(["serviceaccounts/token"]),
            "serviceaccounts",
            "token"
        ));
        assert!(!r(json!(["serviceaccounts/token"]), "serviceaccounts", ""));
        assert!(r(json!(["*"]), "pods", "") && !r(json!(["*"]), "pods", "status"));
        assert!(r(json!(["*/*"]), "pods", "status"));
        assert!(r(json!(["pods/*"]), "pods", "status") && r(json!(["pods/*"]), "pods", ""));
        assert!(
            r(json!(["*/status"]), "widgets", "status") && !r(json!(["*/status"]), "widgets", "")
        );
    }
}
