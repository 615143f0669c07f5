//! Gather the [`Observed`] snapshot for one binding from the reflector caches — no API reads.
//!
//! Secrets are watched as metadata only (the controller never needs their data, which keeps
//! memory small at scale) and cached as [`CachedSecret`]s: the token facts come from the
//! annotations the controller wrote, parsed when the Secret entered the cache.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::ResourceExt;

use super::binding::{view, BindingResource};
use super::trim::CachedSecret;
use crate::state::binding::{
    ServiceAccountView, Version, WI_CLIENT_ID_ANNOTATION, WI_TENANT_ID_ANNOTATION,
};
use crate::state::decide::{BindingView, Failure, Observed, SecretView, Sibling};
use crate::state::names::{expected_secret_name, secret_family, SecretFamily};

pub type SecretMeta = PartialObjectMeta<Secret>;

/// The API group of each version, as found in ownerReferences.
pub fn group_of(version: Version) -> &'static str {
    match version {
        Version::V1beta1 => "msi-acrpull.microsoft.com",
        Version::V1beta2 => "acrpull.microsoft.com",
    }
}

/// Which binding version a labelled secret belongs to, if any: by its controller
/// ownerReference's group, else (secrets of the old controller without an owner) by name family.
/// Also returns the owner UID when there is one.
pub fn secret_owner(secret: &CachedSecret) -> Option<(Version, Option<String>)> {
    match &secret.owner {
        Some(o) => Some((o.group?, Some(o.uid.clone()))),
        None => match secret_family(secret.name()) {
            SecretFamily::Legacy => Some((Version::V1beta1, None)),
            SecretFamily::Current => Some((Version::V1beta2, None)),
            SecretFamily::Unmanaged => None,
        },
    }
}

/// Whether `secret` belongs to the binding `b`: labelled with its name, and controlled (a
/// controller ownerReference) by a binding of its version with its UID (the expected name is
/// adopted from a previous incarnation of the binding). A labelled Secret without that
/// reference is nobody's: acrpull never writes one, and never takes one over (see
/// [`super::pull_secret`]).
pub fn belongs_to(secret: &CachedSecret, b: &BindingView) -> bool {
    if secret.namespace != b.namespace || secret.binding_label.as_deref() != Some(b.name.as_str()) {
        return false;
    }
    let Some(owner) = &secret.owner else {
        return false;
    };
    owner.group == Some(b.version)
        && (owner.uid == b.uid
            || (owner.name == b.name && secret.name() == expected_secret_name(b.version, &b.name)))
}

/// The names in a ServiceAccount's `imagePullSecrets`, in order.
pub fn pull_secret_names(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

pub fn service_account_view(sa: &ServiceAccount) -> ServiceAccountView {
    ServiceAccountView {
        name: sa.name_any(),
        pull_secrets: pull_secret_names(sa),
        client_id_annotation: sa.annotations().get(WI_CLIENT_ID_ANNOTATION).cloned(),
        tenant_id_annotation: sa.annotations().get(WI_TENANT_ID_ANNOTATION).cloned(),
    }
}

/// Build the snapshot. `secrets` and `service_accounts` may hold objects of any namespace.
pub fn observe<K: BindingResource>(
    binding: &K,
    matches_selector: bool,
    secrets: &[Arc<CachedSecret>],
    service_accounts: &[Arc<ServiceAccount>],
    last_failure: Option<Failure>,
    siblings: Vec<Sibling>,
) -> Observed {
    let b = view(binding);
    // The label is the cheap test: most Secrets of the namespace belong to other bindings.
    let mut own: Vec<SecretView> = secrets
        .iter()
        .filter(|s| s.binding_label.as_deref() == Some(b.name.as_str()) && belongs_to(s, &b))
        .map(|s| s.view.clone())
        .collect();
    own.sort_by(|x, y| x.name.cmp(&y.name));
    let expected = expected_secret_name(b.version, &b.name);
    let in_ns: Vec<&Arc<ServiceAccount>> = service_accounts
        .iter()
        .filter(|sa| sa.metadata.namespace.as_deref() == Some(b.namespace.as_str()))
        .collect();
    let find = |name: &str| {
        in_ns
            .iter()
            .find(|sa| sa.metadata.name.as_deref() == Some(name))
            .map(|sa| service_account_view(sa))
    };
    let targets = binding.service_accounts();
    let target = targets.first().and_then(|t| find(t));
    let workload = targets.get(1).and_then(|w| find(w)).or_else(|| {
        // serviceAccountRef may equal the target.
        match &b.spec {
            crate::state::binding::Spec::V1beta2(s) => s
                .workload
                .as_ref()
                .and_then(|w| find(&w.service_account_ref)),
            _ => None,
        }
    });
    let referencing = in_ns
        .iter()
        .filter(|sa| {
            sa.image_pull_secrets
                .iter()
                .flatten()
                .any(|r| r.name == expected || own.iter().any(|s| s.name == r.name))
        })
        .map(|sa| service_account_view(sa))
        .collect();
    Observed {
        binding: b,
        matches_selector,
        secrets: own,
        target_service_account: target,
        workload_service_account: workload,
        referencing_service_accounts: referencing,
        last_failure,
        siblings,
        tenancy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::api::v1beta2::AcrPullBinding;
    use serde_json::json;

    fn binding() -> BindingView {
        let b: AcrPullBinding = serde_json::from_value(json!({
            "apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
            "metadata": {"name": "app", "namespace": "team", "uid": "u1"},
            "spec": {"acr": {"server": "demo.azurecr.io", "scope": "repository:app:pull"},
                     "auth": {"managedIdentity": {"clientID": "c"}}, "serviceAccountName": "sa"}}))
        .unwrap();
        view(&b)
    }

    fn secret(name: &str, label: &str, owners: serde_json::Value) -> CachedSecret {
        let meta: SecretMeta = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "team",
                         "labels": {crate::state::names::BINDING_LABEL: label},
                         "ownerReferences": owners}}))
        .unwrap();
        CachedSecret::from(&meta)
    }

    fn owner(api_version: &str, name: &str, uid: &str) -> serde_json::Value {
        json!({"apiVersion": api_version, "kind": "AcrPullBinding", "name": name, "uid": uid,
               "controller": true})
    }

    const V2: &str = "acrpull.microsoft.com/v1beta2";

    #[test]
    fn a_secrets_version_is_its_controlling_bindings_group() {
        let of = |api_version: &str| {
            secret_owner(&secret(
                "acr-pull-app",
                "app",
                json!([owner(api_version, "app", "u1")]),
            ))
        };
        assert_eq!(of(V2), Some((Version::V1beta2, Some("u1".into()))));
        assert_eq!(
            of("msi-acrpull.microsoft.com/v1beta1"),
            Some((Version::V1beta1, Some("u1".into())))
        );
        // Any version of the group; no other group.
        assert_eq!(
            of("acrpull.microsoft.com/v1"),
            Some((Version::V1beta2, Some("u1".into())))
        );
        assert_eq!(of("acrpull.example.com/v1beta2"), None);
        assert_eq!(of("acrpull.microsoft.com.example/v1beta2"), None);
    }

    #[test]
    fn a_secret_belongs_to_the_binding_that_controls_it() {
        let b = binding();
        // Controlled by it: any name (rule 9 removes the others).
        assert!(belongs_to(
            &secret("acr-pull-app", "app", json!([owner(V2, "app", "u1")])),
            &b
        ));
        assert!(belongs_to(
            &secret("old-name", "app", json!([owner(V2, "app", "u1")])),
            &b
        ));
        // The pull secret a previous binding of its name left.
        assert!(belongs_to(
            &secret("acr-pull-app", "app", json!([owner(V2, "app", "u0")])),
            &b
        ));
        assert!(!belongs_to(
            &secret("old-name", "app", json!([owner(V2, "app", "u0")])),
            &b
        ));
        // Not: ownerless, owned by another binding or version, not a controller, mislabelled.
        for s in [
            secret("acr-pull-app", "app", json!([])),
            secret("acr-pull-app", "app", json!([owner(V2, "other", "u2")])),
            secret(
                "acr-pull-app",
                "app",
                json!([owner("msi-acrpull.microsoft.com/v1beta1", "app", "u1")]),
            ),
            secret(
                "acr-pull-app",
                "app",
                json!([{"apiVersion": V2, "kind": "AcrPullBinding",
                                                   "name": "app", "uid": "u1"}]),
            ),
            secret("acr-pull-app", "other", json!([owner(V2, "app", "u1")])),
            // An AcrPullBinding of another group, same name and UID.
            secret(
                "acr-pull-app",
                "app",
                json!([owner("acrpull.example.com/v1beta2", "app", "u1")]),
            ),
        ] {
            assert!(!belongs_to(&s, &b), "{s:?}");
        }
    }
}
