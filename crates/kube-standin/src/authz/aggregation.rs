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

/// Rounds [`pass`] runs at most: each completes one more level of nesting (the default
/// policy has three: `view` into `edit` into `admin`), and a cycle of roles selecting each
/// other only ever adds rules, so it settles too.
const MAX_ROUNDS: usize = 16;

/// Aggregate every aggregated ClusterRole until nothing changes; whether anything did.
///
/// A role that aggregates another aggregated role (`admin` selects `edit`, which selects
/// `view`) can only be complete once the inner one is, so one round over the roles is not
/// enough: a single round left `admin` and `edit` short, and the controller then completed
/// them in later passes, 100 ms apart, after whatever write happened to come first — writes
/// nobody made, racing with tests that compare resource versions.
pub fn pass(store: &Store) -> bool {
    let mut changed = false;
    for _ in 0..MAX_ROUNDS {
        if !round(store) {
            break;
        }
        changed = true;
    }
    changed
}

/// One round over every aggregated ClusterRole; whether it changed anything.
fn round(store: &Store) -> bool {
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

    /// The default policy is complete before anything else is written: `admin` holds every
    /// rule of `edit`, which holds every rule of `view`, and aggregating again changes
    /// nothing (so no controller write follows a client's first write).
    #[test]
    fn the_default_policy_is_aggregated_to_completion_at_install() {
        let store = Store::new(100);
        crate::authz::bootstrap::install(&store);
        let rules = |name: &str| {
            store
                .object(GROUP, "clusterroles", "", name)
                .and_then(|r| r["rules"].as_array().cloned())
                .unwrap_or_default()
        };
        let (admin, edit, view) = (rules("admin"), rules("edit"), rules("view"));
        assert!(!view.is_empty());
        for r in &view {
            assert!(edit.contains(r), "edit lacks view's {r}");
        }
        for r in &edit {
            assert!(admin.contains(r), "admin lacks edit's {r}");
        }
        let rv = store.current_rv();
        assert!(!pass(&store), "a second aggregation changed something");
        assert_eq!(store.current_rv(), rv);
    }

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
