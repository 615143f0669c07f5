//! The registry of served resource types: the built-ins this stand-in knows, plus one entry per
//! registered CustomResourceDefinition.
//!
//! A [`ResourceType`] carries everything discovery, openapi, the REST handlers and pruning need
//! to know about a type; it is looked up by URL (`group`, `version`, `plural`) or by
//! `apiVersion` + kind (for the typed handle).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// One served resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Served versions, the storage version first.
    pub versions: Vec<String>,
    /// Kind, e.g. `AcrPullBinding`.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Short names (`apb`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `/status` subresource.
    pub status_subresource: bool,
    /// Has the ServiceAccount `/token` subresource.
    pub token_subresource: bool,
    /// Served from a CRD (generation tracking, pruning, 422 on PUT without RV).
    pub custom: bool,
    /// Per-version `openAPIV3Schema` (CRDs only).
    pub schemas: BTreeMap<String, Value>,
    /// Per-version `additionalPrinterColumns` (CRDs only).
    pub printer_columns: BTreeMap<String, Value>,
    /// CRD `selectableFields` JSON paths (`.spec.x`).
    pub selectable_fields: Vec<String>,
    /// A review (TokenReview, SubjectAccessReview, ...): create-only, never stored.
    pub review: bool,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        short: &[&str],
        namespaced: bool,
    ) -> Self {
        ResourceType {
            group: group.to_string(),
            versions: vec![version.to_string()],
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            namespaced,
            status_subresource: false,
            token_subresource: false,
            custom: false,
            schemas: BTreeMap::new(),
            printer_columns: BTreeMap::new(),
            selectable_fields: Vec::new(),
            review: false,
        }
    }

    fn review(group: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        let mut t = Self::builtin(group, "v1", kind, plural, &[], namespaced);
        t.review = true;
        t
    }

    /// The verbs discovery announces.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.review {
            &["create"]
        } else {
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }

    /// `group/version` (or `version` for core) for the given version.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The storage version.
    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    /// Whether `version` is served.
    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// Key of this type in the store.
    pub fn key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// Whether metadata.generation is tracked (CRs, CRDs and the built-ins whose strategies
    /// bump it on spec changes: Deployment, PodDisruptionBudget, NetworkPolicy).
    pub fn tracks_generation(&self) -> bool {
        self.custom
            || self.is("apiextensions.k8s.io", "customresourcedefinitions")
            || self.is("apps", "deployments")
            || self.is("policy", "poddisruptionbudgets")
            || self.is("networking.k8s.io", "networkpolicies")
    }

    /// Whether this is `plural` in `group`.
    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// Whether a create drops the `status` the client sent (types with a status subresource,
    /// except those whose status the server computes on create: Namespace, CRD).
    pub fn resets_status_on_create(&self) -> bool {
        self.status_subresource
            && !self.is("", "namespaces")
            && !self.is("apiextensions.k8s.io", "customresourcedefinitions")
    }

    /// Whether a PUT must carry `metadata.resourceVersion` (custom resources and CRDs; the
    /// built-ins served here allow unconditional updates).
    pub fn requires_resource_version_on_update(&self) -> bool {
        self.custom || self.is("apiextensions.k8s.io", "customresourcedefinitions")
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";
const AUTHZ: &str = "authorization.k8s.io";

/// The set of served types.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The built-in types.
    pub fn new() -> Self {
        let mut ns = ResourceType::builtin("", "v1", "Namespace", "namespaces", &["ns"], false);
        ns.status_subresource = true;
        let mut sa =
            ResourceType::builtin("", "v1", "ServiceAccount", "serviceaccounts", &["sa"], true);
        sa.token_subresource = true;
        let mut crd = ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
        );
        crd.status_subresource = true;
        let mut vap = ResourceType::builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            &[],
            false,
        );
        vap.status_subresource = true;
        let mut secret = ResourceType::builtin("", "v1", "Secret", "secrets", &[], true);
        secret.categories = vec![];
        let mut cm = ResourceType::builtin("", "v1", "ConfigMap", "configmaps", &["cm"], true);
        cm.categories = vec![];
        // Stored for manifests that install the controller (a Helm chart, kubectl apply of
        // deploy/): no controller acts on them.
        let mut deploy =
            ResourceType::builtin("apps", "v1", "Deployment", "deployments", &["deploy"], true);
        deploy.status_subresource = true;
        deploy.categories = vec!["all".into()];
        let mut svc = ResourceType::builtin("", "v1", "Service", "services", &["svc"], true);
        svc.status_subresource = true;
        svc.categories = vec!["all".into()];
        let mut pdb = ResourceType::builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            &["pdb"],
            true,
        );
        pdb.status_subresource = true;
        let netpol = ResourceType::builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            &["netpol"],
            true,
        );
        let types = vec![
            ns,
            secret,
            sa,
            cm,
            svc,
            ResourceType::builtin("", "v1", "Event", "events", &["ev"], true),
            ResourceType::builtin("events.k8s.io", "v1", "Event", "events", &["ev"], true),
            ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", &[], true),
            deploy,
            pdb,
            netpol,
            crd,
            vap,
            ResourceType::builtin(
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingAdmissionPolicyBinding",
                "validatingadmissionpolicybindings",
                &[],
                false,
            ),
            ResourceType::builtin(RBAC, "v1", "ClusterRole", "clusterroles", &[], false),
            ResourceType::builtin(
                RBAC,
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                &[],
                false,
            ),
            ResourceType::builtin(RBAC, "v1", "Role", "roles", &[], true),
            ResourceType::builtin(RBAC, "v1", "RoleBinding", "rolebindings", &[], true),
            ResourceType::review(AUTHN, "TokenReview", "tokenreviews", false),
            ResourceType::review(AUTHN, "SelfSubjectReview", "selfsubjectreviews", false),
            ResourceType::review(AUTHZ, "SubjectAccessReview", "subjectaccessreviews", false),
            ResourceType::review(
                AUTHZ,
                "SelfSubjectAccessReview",
                "selfsubjectaccessreviews",
                false,
            ),
            ResourceType::review(
                AUTHZ,
                "SelfSubjectRulesReview",
                "selfsubjectrulesreviews",
                false,
            ),
            ResourceType::review(
                AUTHZ,
                "LocalSubjectAccessReview",
                "localsubjectaccessreviews",
                true,
            ),
        ];
        Registry {
            types: types.into_iter().map(Arc::new).collect(),
        }
    }

    /// All types, in registration order.
    pub fn all(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// Look up by URL parts.
    pub fn by_path(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.serves(version))
            .cloned()
    }

    /// Look up by `apiVersion` and kind, plural, singular or short name (case-insensitive).
    pub fn by_api_version(&self, api_version: &str, name: &str) -> Option<Arc<ResourceType>> {
        let (group, version) = split_api_version(api_version);
        let lname = name.to_lowercase();
        self.types
            .iter()
            .find(|t| {
                t.group == group
                    && t.serves(version)
                    && (t.kind.to_lowercase() == lname
                        || t.plural == lname
                        || t.singular == lname
                        || t.short_names.contains(&lname))
            })
            .cloned()
    }

    /// Find by group + plural regardless of version.
    pub fn by_key(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.by_key_ref(group, plural).cloned()
    }

    /// [`Registry::by_key`], borrowed.
    pub fn by_key_ref(&self, group: &str, plural: &str) -> Option<&Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
    }

    /// Add or replace a type (by group + plural).
    pub fn upsert(&mut self, t: ResourceType) {
        if let Some(slot) = self
            .types
            .iter_mut()
            .find(|x| x.group == t.group && x.plural == t.plural)
        {
            *slot = Arc::new(t);
        } else {
            self.types.push(Arc::new(t));
        }
    }

    /// Remove a CRD-backed type.
    pub fn remove(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|t| !(t.custom && t.group == group && t.plural == plural));
    }

    /// Served groups with their versions, in a stable order (core group excluded).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            if t.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, vs)) => {
                    for v in &t.versions {
                        if !vs.contains(v) {
                            vs.push(v.clone());
                        }
                    }
                }
                None => out.push((t.group.clone(), t.versions.clone())),
            }
        }
        out
    }

    /// Types served at `group/version`.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.serves(version))
            .cloned()
            .collect()
    }
}

/// Split `group/version` (or bare `version` for core).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let r = Registry::new();
        assert_eq!(r.by_path("", "v1", "secrets").unwrap().kind, "Secret");
        assert_eq!(
            r.by_api_version("coordination.k8s.io/v1", "Lease")
                .unwrap()
                .plural,
            "leases"
        );
        assert_eq!(r.by_api_version("v1", "sa").unwrap().kind, "ServiceAccount");
        assert!(r.by_path("", "v2", "secrets").is_none());
        for (g, p, k) in [
            ("apps", "deployments", "Deployment"),
            ("", "services", "Service"),
            ("policy", "poddisruptionbudgets", "PodDisruptionBudget"),
            ("networking.k8s.io", "networkpolicies", "NetworkPolicy"),
        ] {
            assert_eq!(r.by_path(g, "v1", p).unwrap().kind, k);
        }
        assert_eq!(split_api_version("v1"), ("", "v1"));
    }
}
