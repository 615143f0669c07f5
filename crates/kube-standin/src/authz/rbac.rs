//! RBAC evaluation, as the real server's RBAC authorizer does it: ClusterRoleBindings, then
//! the RoleBindings of the request's namespace; each binding whose subjects include the user
//! contributes the rules of its Role or ClusterRole; the first rule that allows the request
//! decides. Rules match verbs (`*`), API groups (`*`), resources (`*`, `res/sub`, `*/sub`),
//! `resourceNames` and non-resource URLs (`*`, exact, or a `prefix*`). A binding to a missing
//! role contributes nothing and is named in the denial's reason
//! (`RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`).

use std::sync::Arc;

use serde_json::Value;

use crate::authn::UserInfo;
use crate::store::Store;

use super::{Attributes, Decision};

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn has(v: &Value, want: &str) -> bool {
    strs(v).any(|s| s == want)
}

/// Whether one policy rule allows the request.
pub fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let verb_ok = strs(&rule["verbs"]).any(|v| v == "*" || v == attrs.verb);
    if !verb_ok {
        return false;
    }
    let Some(r) = &attrs.resource else {
        return strs(&rule["nonResourceURLs"]).any(|u| {
            u == "*"
                || u == attrs.path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| attrs.path.starts_with(prefix))
        });
    };
    let group_ok = strs(&rule["apiGroups"]).any(|g| g == "*" || g == r.group);
    let combined = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    let resource_ok = strs(&rule["resources"]).any(|res| {
        res == "*"
            || res == combined
            || (!r.subresource.is_empty() && res.strip_prefix("*/") == Some(r.subresource.as_str()))
    });
    let names = &rule["resourceNames"];
    let name_ok = strs(names).next().is_none() || has(names, &r.name);
    group_ok && resource_ok && name_ok
}

/// Whether a binding subject is the user (`binding_ns` defaults a ServiceAccount subject's
/// namespace in RoleBindings).
pub fn subject_matches(subject: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => user.username == name,
        Some("Group") => user.in_group(name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty() && user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn describe_subject(subject: &Value, binding_ns: &str) -> String {
    let kind = subject["kind"].as_str().unwrap_or_default();
    let name = subject["name"].as_str().unwrap_or_default();
    if kind == "ServiceAccount" {
        let ns = subject["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(binding_ns);
        return format!("{kind} {:?}", format!("{name}/{ns}"));
    }
    format!("{kind} {name:?}")
}

/// Where a rule came from (for the allow reason and SelfSubjectRulesReview).
#[derive(Debug, Clone)]
pub struct Source {
    /// `ClusterRoleBinding "b" of ClusterRole "r" to User "u"` (the real describer's text).
    pub description: String,
}

/// The rules that apply to `user` in `namespace` (`""`: cluster-wide only), each with its
/// source, plus the errors met (bindings to missing roles).
pub fn rules_for(
    store: &Store,
    user: &UserInfo,
    namespace: &str,
) -> (Vec<(Value, Source)>, Vec<String>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let role_rules = |kind: &str, name: &str, ns: &str, errors: &mut Vec<String>| -> Vec<Value> {
        let (plural, rns, singular) = match kind {
            "ClusterRole" => ("clusterroles", "", "clusterrole"),
            "Role" => ("roles", ns, "role"),
            _ => return Vec::new(),
        };
        match store.object(GROUP, plural, rns, name) {
            Some(r) => r["rules"].as_array().cloned().unwrap_or_default(),
            None => {
                errors.push(format!("{singular}.{GROUP} {name:?} not found"));
                Vec::new()
            }
        }
    };
    let mut visit = |binding: &Value, binding_ns: &str, what: &str, errors: &mut Vec<String>| {
        let Some(subject) = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| subject_matches(s, user, binding_ns))
        else {
            return;
        };
        let kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let bname = binding["metadata"]["name"].as_str().unwrap_or_default();
        let shown = if binding_ns.is_empty() {
            bname.to_string()
        } else {
            format!("{bname}/{binding_ns}")
        };
        let source = Source {
            description: format!(
                "{what} {shown:?} of {kind} {role:?} to {}",
                describe_subject(subject, binding_ns)
            ),
        };
        for r in role_rules(kind, role, binding_ns, errors) {
            rules.push((r, source.clone()));
        }
    };
    for b in store.objects(GROUP, "clusterrolebindings", None) {
        visit(&b, "", "ClusterRoleBinding", &mut errors);
    }
    if !namespace.is_empty() {
        for b in store.objects(GROUP, "rolebindings", Some(namespace)) {
            visit(&b, namespace, "RoleBinding", &mut errors);
        }
    }
    (rules, errors)
}

/// [`rules_for`], remembered by the store until an RBAC object changes.
fn memo_rules(store: &Store, user: &UserInfo, namespace: &str) -> Arc<Rules> {
    // Unambiguous: no user, group or namespace name holds a control character.
    let key = format!(
        "{}\u{1}{}\u{1}{}",
        user.username,
        user.groups.join("\0"),
        namespace
    );
    store.memo(GROUP, key, || rules_for(store, user, namespace))
}

/// What [`rules_for`] returns.
type Rules = (Vec<(Value, Source)>, Vec<String>);

/// The RBAC decision, with the real authorizer's reason.
pub fn authorize(store: &Store, attrs: &Attributes) -> Decision {
    let ns = attrs
        .resource
        .as_ref()
        .map(|r| r.namespace.as_str())
        .unwrap_or_default();
    let memo = memo_rules(store, &attrs.user, ns);
    let (rules, errors) = &*memo;
    if let Some((_, source)) = rules.iter().find(|(r, _)| rule_allows(r, attrs)) {
        return Decision::Allow(format!("RBAC: allowed by {}", source.description));
    }
    let reason = match errors.len() {
        0 => String::new(),
        1 => format!("RBAC: {}", errors[0]),
        _ => format!("RBAC: [{}]", errors.join(", ")),
    };
    Decision::Deny(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::ResourceAttributes;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            user: UserInfo::service_account("ns", "sa", "u"),
            verb: verb.into(),
            resource: Some(ResourceAttributes {
                group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: "ns".into(),
                name: name.into(),
                ..Default::default()
            }),
            path: String::new(),
        }
    }

    #[test]
    fn rules_match_like_the_real_authorizer() {
        let rule = json!({"apiGroups": ["acrpull.microsoft.com"], "resources": ["acrpullbindings/status"], "verbs": ["update", "patch"]});
        assert!(rule_allows(
            &rule,
            &attrs(
                "patch",
                "acrpull.microsoft.com",
                "acrpullbindings",
                "status",
                "b"
            )
        ));
        assert!(!rule_allows(
            &rule,
            &attrs("patch", "acrpull.microsoft.com", "acrpullbindings", "", "b")
        ));
        assert!(!rule_allows(
            &rule,
            &attrs(
                "get",
                "acrpull.microsoft.com",
                "acrpullbindings",
                "status",
                "b"
            )
        ));
        let star_sub = json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]});
        assert!(rule_allows(
            &star_sub,
            &attrs("update", "apps", "deployments", "status", "d")
        ));
        assert!(!rule_allows(
            &star_sub,
            &attrs("update", "apps", "deployments", "", "d")
        ));
        let named = json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["one"], "verbs": ["get", "list"]});
        assert!(rule_allows(&named, &attrs("get", "", "secrets", "", "one")));
        assert!(!rule_allows(
            &named,
            &attrs("get", "", "secrets", "", "two")
        ));
        assert!(!rule_allows(&named, &attrs("list", "", "secrets", "", "")));
        let token =
            json!({"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]});
        assert!(rule_allows(
            &token,
            &attrs("create", "", "serviceaccounts", "token", "sa")
        ));
        assert!(!rule_allows(
            &token,
            &attrs("create", "", "serviceaccounts", "", "")
        ));
        let urls = json!({"nonResourceURLs": ["/metrics", "/apis/*"], "verbs": ["get"]});
        let mut nr = attrs("get", "", "", "", "");
        nr.resource = None;
        for (path, want) in [
            ("/metrics", true),
            ("/apis/apps/v1", true),
            ("/apis", false),
            ("/healthz", false),
        ] {
            nr.path = path.into();
            assert_eq!(rule_allows(&urls, &nr), want, "{path}");
        }
        assert!(!rule_allows(&urls, &attrs("get", "", "metrics", "", "")));
    }

    #[test]
    fn subjects() {
        let u = UserInfo::service_account("ns", "sa", "u");
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}),
            &u,
            ""
        ));
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "sa"}),
            &u,
            "ns"
        ));
        assert!(!subject_matches(
            &json!({"kind": "ServiceAccount", "name": "sa"}),
            &u,
            ""
        ));
        assert!(subject_matches(
            &json!({"kind": "Group", "name": "system:serviceaccounts:ns"}),
            &u,
            ""
        ));
        assert!(!subject_matches(
            &json!({"kind": "User", "name": "sa"}),
            &u,
            ""
        ));
    }

    /// The memo of rules never outlives a change to the RBAC objects: a rule, a binding
    /// or a subject that changes is in force for the next request.
    #[test]
    fn remembered_rules_follow_every_rbac_change() {
        use crate::store::{DeleteOpts, WriteOpts};
        let store = Store::new(100);
        let rt = |plural: &str| {
            store
                .type_by_path(GROUP, "v1", plural)
                .expect("built-in type")
        };
        let w = WriteOpts::default();
        let get = |name: &str| {
            let mut a = attrs("get", "", "secrets", "", name);
            a.resource.as_mut().unwrap().namespace = "default".into();
            authorize(&store, &a)
        };
        let role = |verbs: Value| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": "r", "namespace": "default"},
                   "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": verbs}]})
        };
        let binding = |sa: &str| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "b", "namespace": "default"},
                   "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
                   "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "ns"}]})
        };
        assert!(matches!(get("x"), Decision::Deny(_)));
        store
            .create(&rt("roles"), "default", role(json!(["get"])), &w)
            .unwrap();
        store
            .create(&rt("rolebindings"), "default", binding("sa"), &w)
            .unwrap();
        assert!(matches!(get("x"), Decision::Allow(_)), "{:?}", get("x"));
        assert!(matches!(get("x"), Decision::Allow(_)), "asked twice");
        // The role loses the verb.
        store
            .update(
                &rt("roles"),
                "default",
                "r",
                role(json!(["list"])),
                None,
                &w,
            )
            .unwrap();
        assert!(matches!(get("x"), Decision::Deny(_)));
        store
            .update(&rt("roles"), "default", "r", role(json!(["get"])), None, &w)
            .unwrap();
        assert!(matches!(get("x"), Decision::Allow(_)));
        // The binding names someone else, then goes.
        store
            .update(
                &rt("rolebindings"),
                "default",
                "b",
                binding("other"),
                None,
                &w,
            )
            .unwrap();
        assert!(matches!(get("x"), Decision::Deny(_)));
        store
            .update(&rt("rolebindings"), "default", "b", binding("sa"), None, &w)
            .unwrap();
        assert!(matches!(get("x"), Decision::Allow(_)));
        store
            .delete(&rt("rolebindings"), "default", "b", &DeleteOpts::default())
            .unwrap();
        assert!(matches!(get("x"), Decision::Deny(_)));
        // Other users and namespaces are decided for themselves.
        store
            .create(&rt("rolebindings"), "default", binding("sa"), &w)
            .unwrap();
        let mut elsewhere = attrs("get", "", "secrets", "", "x");
        elsewhere.resource.as_mut().unwrap().namespace = "other".into();
        assert!(matches!(authorize(&store, &elsewhere), Decision::Deny(_)));
        let mut stranger = attrs("get", "", "secrets", "", "x");
        stranger.resource.as_mut().unwrap().namespace = "default".into();
        stranger.user = UserInfo::service_account("ns", "stranger", "u2");
        assert!(matches!(authorize(&store, &stranger), Decision::Deny(_)));
        assert!(matches!(get("x"), Decision::Allow(_)));
    }
}
