//! ClusterRole aggregation, as the kube-controller-manager's aggregation controller does it
//! (run by `controllers::rbac_aggregation`): a ClusterRole with an `aggregationRule` gets, as
//! its `rules`, the rules of every other ClusterRole matching one of its
//! `clusterRoleSelectors` (by name order, duplicates dropped), written by the manager
//! `clusterrole-aggregation-controller`, as the kube-controller-manager does it.

use serde_json::{json, Value};

use super::rbac::GROUP;
use crate::patch::PatchType;
use crate::selector::label_selector_matches;
use crate::store::{Store, WriteOpts};

const MANAGER: &str = "clusterrole-aggregation-controller";

/// The rules an aggregated ClusterRole should have, given every ClusterRole.
pub fn aggregated_rules(role: &Value, all: &[Value]) -> Vec<Value> {
    let name = &role["metadata"]["name"];
    let mut sorted: Vec<&Value> = all.iter().collect();
    sorted.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let mut rules: Vec<Value> = Vec::new();
    for selector in role["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for other in &sorted {
            if other["metadata"]["name"] == *name || !label_selector_matches(selector, other) {
                continue;
            }
            for r in other["rules"].as_array().into_iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    rules
}

/// One pass over every aggregated ClusterRole; whether it changed anything.
pub fn pass(store: &Store) -> bool {
    let Some(rt) = store.type_by_path(GROUP, "v1", "clusterroles") else {
        return false;
    };
    let all = store.objects(GROUP, "clusterroles", None);
    let mut changed = false;
    for role in all.iter().filter(|r| r["aggregationRule"].is_object()) {
        let want = aggregated_rules(role, &all);
        let have = role["rules"].as_array().cloned().unwrap_or_default();
        if want == have {
            continue;
        }
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        let opts = WriteOpts {
            manager: MANAGER.into(),
            ..Default::default()
        };
        let patch = json!({"rules": want});
        if store
            .patch(&rt, "", name, PatchType::Merge, &patch, None, &opts)
            .is_ok()
        {
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_matching_roles_in_name_order_without_duplicates() {
        let agg = json!({"metadata": {"name": "admin"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-admin": "true"}}]}});
        let r = |name: &str, label: bool, rules: Value| {
            let mut o = json!({"metadata": {"name": name}, "rules": rules});
            if label {
                o["metadata"]["labels"] = json!({"to-admin": "true"});
            }
            o
        };
        let a = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["a"]});
        let b = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["b"]});
        let all = vec![
            agg.clone(),
            r("z", true, json!([b.clone()])),
            r("m", true, json!([a.clone(), b.clone()])),
            r("other", false, json!([{"verbs": ["*"]}])),
        ];
        assert_eq!(aggregated_rules(&agg, &all), vec![a, b]);
    }
}
