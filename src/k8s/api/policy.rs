//! `acrpull.microsoft.com/v1alpha1` `AcrPullPolicy`: the cluster-scoped tenancy API operators
//! write (SPEC §12). Each policy covers namespaces (by name or label selector) and lists the
//! identities, registries and scope actions bindings there may use. Read only with
//! `--tenancy-mode=audit|enforce`; the decision is `state::tenancy::evaluate`.
//!
//! `v1alpha1` because it is new and may still change; like the binding types, reading is
//! lenient (every field defaults) and a policy that reads as nothing covers nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::state::selector::{Requirement, Selector};
use crate::state::tenancy::{TenancyPolicy, DEFAULT_ALLOWED_ACTIONS};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "acrpull.microsoft.com",
    version = "v1alpha1",
    kind = "AcrPullPolicy",
    plural = "acrpullpolicies",
    singular = "acrpullpolicy",
    shortname = "acrpolicy",
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces.names","description":"Namespaces covered by name."}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.namespaces.selector","priority":1,"description":"Namespaces covered by labels."}"#,
    printcolumn = r#"{"name":"Registries","type":"string","jsonPath":".spec.registries.servers"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = require_namespaces)]
pub struct AcrPullPolicySpec {
    /// The namespaces this policy covers: by name, by labels, or both.
    #[serde(default)]
    pub namespaces: NamespaceSelection,
    /// Managed identities bindings in these namespaces may use.
    #[serde(default, skip_serializing_if = "ManagedIdentities::is_empty")]
    pub managed_identities: ManagedIdentities,
    /// Workload identities (client id and tenant id, both must match) bindings may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_identities: Vec<WorkloadIdentity>,
    /// Registries bindings may request tokens for.
    #[serde(default, skip_serializing_if = "Registries::is_empty")]
    pub registries: Registries,
    /// Scope actions bindings may ask for; absent or empty means `pull` and `metadata_read`.
    /// Actions outside the controller's `--allowed-scope-actions` stay refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// Allow unscoped credentials (a v1beta1 binding without `scope` gets the identity's full
    /// rights on the registry). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unscoped: bool,
}

fn require_namespaces(schema: &mut schemars::Schema) {
    super::schema::require(schema, &["namespaces"]);
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.names) && size(self.names) > 0) || has(self.selector)").message("name namespaces, or give a selector (an empty selector covers every namespace)"))]
pub struct NamespaceSelection {
    /// Namespaces covered by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Namespaces covered by their labels (an empty selector covers every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ManagedIdentities {
    /// Client ids of user-assigned managed identities.
    #[serde(default, rename = "clientIDs", skip_serializing_if = "Vec::is_empty")]
    pub client_ids: Vec<String>,
    /// ARM resource ids of user-assigned managed identities.
    #[serde(default, rename = "resourceIDs", skip_serializing_if = "Vec::is_empty")]
    pub resource_ids: Vec<String>,
}

impl ManagedIdentities {
    fn is_empty(&self) -> bool {
        self.client_ids.is_empty() && self.resource_ids.is_empty()
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WorkloadIdentity {
    /// The Entra application (or managed identity) client id.
    #[serde(default, rename = "clientID")]
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// The Entra tenant id.
    #[serde(default, rename = "tenantID")]
    #[schemars(length(min = 1))]
    pub tenant_id: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Registries {
    /// Registry servers, exactly as bindings name them (`team.azurecr.io`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Domain suffixes: the suffix itself and every subdomain (`team.azurecr.io` also allows
    /// `eu.team.azurecr.io`). Do not list a cloud's whole suffix (`azurecr.io`): anyone can
    /// create a registry there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suffixes: Vec<String>,
}

impl Registries {
    fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.suffixes.is_empty()
    }
}

/// A Kubernetes `LabelSelector` as a selector of the decision core. An operator the API does
/// not define makes a selector that matches nothing (a policy never covers more than it says).
pub fn selector_of(s: &LabelSelector) -> Selector {
    let mut reqs: Vec<Requirement> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        reqs.push(match e.operator.as_str() {
            "In" => Requirement::In(e.key.clone(), values),
            "NotIn" => Requirement::NotIn(e.key.clone(), values),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            _ => Requirement::In(e.key.clone(), Vec::new()),
        });
    }
    Selector(reqs)
}

impl AcrPullPolicy {
    /// This policy as the decision core reads it.
    pub fn view(&self) -> TenancyPolicy {
        let s = &self.spec;
        let actions = if s.actions.is_empty() {
            DEFAULT_ALLOWED_ACTIONS
                .iter()
                .map(|a| a.to_string())
                .collect()
        } else {
            s.actions
                .iter()
                .map(|a| a.trim().to_ascii_lowercase())
                .collect()
        };
        TenancyPolicy {
            name: self.metadata.name.clone().unwrap_or_default(),
            namespace_names: s.namespaces.names.clone(),
            namespace_selector: s.namespaces.selector.as_ref().map(selector_of),
            managed_client_ids: s.managed_identities.client_ids.clone(),
            managed_resource_ids: s
                .managed_identities
                .resource_ids
                .iter()
                .map(|r| crate::state::binding::clean_path(r))
                .collect(),
            workload_identities: s
                .workload_identities
                .iter()
                .map(|w| (w.client_id.clone(), w.tenant_id.clone()))
                .collect(),
            registries: s.registries.servers.clone(),
            registry_suffixes: s.registries.suffixes.clone(),
            actions,
            allow_unscoped: s.allow_unscoped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn label_selectors_convert_and_unknown_operators_match_nothing() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["x", "y"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        let sel = selector_of(&s);
        let l = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(sel.matches(&l(&[("team", "a"), ("tier", "x")])));
        assert!(!sel.matches(&l(&[("team", "a"), ("tier", "z")])));
        assert!(!sel.matches(&l(&[("team", "a"), ("tier", "x"), ("legacy", "")])));
        let odd: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "team", "operator": "Bogus", "values": ["a"]}]
        }))
        .unwrap();
        assert!(!selector_of(&odd).matches(&l(&[("team", "a")])));
        assert!(selector_of(&LabelSelector::default()).matches(&l(&[])));
    }

    #[test]
    fn a_policy_reads_with_default_actions() {
        let p: AcrPullPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "acrpull.microsoft.com/v1alpha1",
            "kind": "AcrPullPolicy",
            "metadata": {"name": "team-a"},
            "spec": {
                "namespaces": {"names": ["team-a"]},
                "managedIdentities": {"clientIDs": ["c"], "resourceIDs": ["/subscriptions//x/"]},
                "workloadIdentities": [{"clientID": "c", "tenantID": "t"}],
                "registries": {"servers": ["a.azurecr.io"], "suffixes": ["b.azurecr.io"]},
            }
        }))
        .unwrap();
        let v = p.view();
        assert_eq!(v.name, "team-a");
        assert_eq!(v.actions, ["pull", "metadata_read"]);
        assert_eq!(v.managed_resource_ids, ["/subscriptions/x"]);
        assert_eq!(v.workload_identities, [("c".to_string(), "t".to_string())]);
        assert!(!v.allow_unscoped);
        assert!(v.namespace_selector.is_none());
    }
}
