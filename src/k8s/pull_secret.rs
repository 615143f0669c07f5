//! The pull Secret (SPEC §4.2): its content, label, annotations and owner; writing a new token
//! into it; and adopting a Secret of the right name that the label-filtered watch cannot see
//! (the old controller's unlabelled secrets, SPEC §4.1, or a label removed by hand).
//!
//! Adoption takes only what a binding already controls. acrpull and the old controller both
//! give every pull secret a controller ownerReference to its binding, so a Secret of the pull
//! secret's name without one — or of another type — was made by someone else: the binding
//! fails with `SecretConflict` instead of overwriting it. The admission policy
//! `acrpull-secret-writes` (deploy/) draws the same line, so a controller that tried would
//! be refused: it may update only Secrets that an AcrPullBinding of the same API group and
//! name already controls.

use std::collections::BTreeMap;

use base64::Engine;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::binding::{rfc3339, BindingResource};
use super::cache::CachedSecret;
use super::cache::NsCache;
use super::error::ReconcileError;
use super::observe::group_of;
use super::writer::Writer;
use crate::azure::AcrCredential;
use crate::state::binding::{Resolved, Version};
use crate::state::dockerconfig::docker_config_json;
use crate::state::names::{
    BINDING_LABEL, DOCKER_CONFIG_KEY, DOCKER_CONFIG_TYPE, EXPIRY_ANNOTATION, INPUTS_ALL_ANNOTATION,
    INPUTS_ANNOTATION, ISSUED_ANNOTATION, REFRESH_ANNOTATION, REFRESH_AT_ANNOTATION,
    VERIFIED_ANNOTATION,
};
use crate::state::refresh::ceil_seconds;

/// A token ready to be written.
pub struct NewToken<'a> {
    pub request: &'a Resolved,
    pub credential: &'a AcrCredential,
    /// The registry's verdict (None: not checked).
    pub verified: Option<bool>,
    /// When it is written.
    pub now: Timestamp,
    /// When it is planned to be refreshed (`k8s::pacing`).
    pub refresh_at: Option<Timestamp>,
}

impl NewToken<'_> {
    /// The annotations; `null` removes a stale one on update (merge patch).
    fn annotations(&self) -> Value {
        let written = ceil_seconds(self.now);
        json!({
            EXPIRY_ANNOTATION: rfc3339(self.credential.expires_at),
            // When written, as the old controller recorded it (status.lastTokenRefreshTime is
            // never older than the Secret it describes) ...
            REFRESH_ANNOTATION: rfc3339(written),
            // ... and when issued: a token served from the cache part-way through its life
            // must still refresh at its own half-life.
            ISSUED_ANNOTATION: self.credential.issued_at.filter(|t| *t < written).map(rfc3339),
            // The old controller's hash, so it finds the Secret current after a rollback ...
            INPUTS_ANNOTATION: self.request.legacy_inputs_hash,
            // ... and every input, so a change to one the old controller ignored re-mints.
            INPUTS_ALL_ANNOTATION: self.request.inputs_hash,
            VERIFIED_ANNOTATION: self.verified.map(|v| v.to_string()),
            REFRESH_AT_ANNOTATION: self.refresh_at.map(rfc3339),
        })
    }

    /// The `.dockerconfigjson` bytes (the only place the token is put into Secret data).
    fn docker_config(&self) -> Vec<u8> {
        docker_config_json(&self.request.registry.authority(), &self.credential.token)
    }
}

fn owner<K: BindingResource>(binding: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: binding.name_any(),
        uid: binding.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

/// What the Secret cache holds of `secret`.
pub fn cached(secret: Secret) -> CachedSecret {
    CachedSecret::of(&secret.metadata)
}

/// Create or update the binding's pull secret with `token`. With no Secret in the cache it is
/// created straight away (no read first: the watch shows every labelled Secret, so a create
/// that finds one anyway is the rare case, answered 409 and handled by the caller). An update
/// is preconditioned on the cached resourceVersion; on a conflict (someone else wrote it) the
/// live Secret is read and overwritten, since the token in hand is the newest. The result goes
/// into the cache.
pub async fn write<K: BindingResource>(
    writer: &Writer,
    cache: &NsCache<CachedSecret>,
    binding: &K,
    token: &NewToken<'_>,
) -> Result<(), ReconcileError> {
    let namespace = binding.namespace().unwrap_or_default();
    let name = token.request.secret_name.as_str();
    let _flight = cache.begin_write(&namespace, name);
    let written = match cache.get(&namespace, name) {
        None => {
            let secret = document(binding, token);
            writer.create("create secret", &namespace, &secret).await?
        }
        Some(held) => update(writer, binding, token, held.resource_version.clone()).await?,
    };
    cache.written(cached(written));
    Ok(())
}

/// Write `token` over the Secret of the pull secret's name that exists at `resource_version`
/// (ours, unlabelled or not yet cached), labelling and owning it. The result goes into the cache.
pub async fn overwrite<K: BindingResource>(
    writer: &Writer,
    cache: &NsCache<CachedSecret>,
    binding: &K,
    token: &NewToken<'_>,
    resource_version: Option<String>,
) -> Result<(), ReconcileError> {
    let namespace = binding.namespace().unwrap_or_default();
    let _flight = cache.begin_write(&namespace, &token.request.secret_name);
    let written = update(writer, binding, token, resource_version).await?;
    cache.written(cached(written));
    Ok(())
}

/// The whole pull Secret for `token` (SPEC §4.2).
pub fn document<K: BindingResource>(binding: &K, token: &NewToken<'_>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(token.request.secret_name.clone()),
            namespace: binding.namespace(),
            labels: Some(BTreeMap::from([(
                BINDING_LABEL.to_string(),
                binding.name_any(),
            )])),
            annotations: Some(strings(&token.annotations())),
            owner_references: Some(vec![owner(binding)]),
            ..Default::default()
        },
        type_: Some(DOCKER_CONFIG_TYPE.to_string()),
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_string(),
            ByteString(token.docker_config()),
        )])),
        ..Default::default()
    }
}

async fn update<K: BindingResource>(
    writer: &Writer,
    binding: &K,
    token: &NewToken<'_>,
    resource_version: Option<String>,
) -> Result<Secret, ReconcileError> {
    let namespace = binding.namespace().unwrap_or_default();
    let name = token.request.secret_name.as_str();
    let binding_name = binding.name_any();
    let annotations = token.annotations();
    let encoded = base64::engine::general_purpose::STANDARD.encode(token.docker_config());
    let patch_at = |rv: Option<String>| {
        json!({
            "metadata": {
                "resourceVersion": rv,
                "labels": { BINDING_LABEL: binding_name },
                "annotations": annotations,
                "ownerReferences": [owner(binding)],
            },
            "type": DOCKER_CONFIG_TYPE,
            "data": { DOCKER_CONFIG_KEY: encoded },
        })
    };
    let first = writer
        .patch::<Secret>(
            "update secret",
            &namespace,
            name,
            &patch_at(resource_version),
        )
        .await;
    match first {
        Err(e) if e.reason() == crate::state::reason::Reason::Conflict => {
            let live = writer
                .read(
                    "read secret",
                    kube::Api::<Secret>::namespaced(writer.client().clone(), &namespace).get(name),
                )
                .await?;
            writer
                .patch::<Secret>(
                    "update secret",
                    &namespace,
                    name,
                    &patch_at(live.resource_version()),
                )
                .await
        }
        other => other,
    }
}

/// What to do with a Secret of the pull secret's name that the cache does not show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Ours but unlabelled: label it so the watch sees it.
    Label,
    /// Ours and labelled: the watch is behind; take what was read.
    Cache,
    /// Someone else's: fail the binding rather than take it over.
    Foreign,
}

/// Whether `existing` (named like the binding's pull secret) belongs to the binding of
/// `version` named `binding_name`: a `kubernetes.io/dockerconfigjson` Secret with a controller
/// ownerReference to an AcrPullBinding of that API group and name. The uid may differ — a
/// binding deleted and created again under its name takes its predecessor's Secret on — but
/// an ownerless Secret is someone else's (see the module comment).
pub fn adoption(existing: &Secret, version: Version, binding_name: &str) -> Adoption {
    let group = group_of(version);
    let controlled = existing.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "AcrPullBinding"
            && o.api_version.split('/').next() == Some(group)
            && o.name == binding_name
    });
    let ours = controlled && existing.type_.as_deref() == Some(DOCKER_CONFIG_TYPE);
    let labelled = existing.labels().get(BINDING_LABEL).map(String::as_str) == Some(binding_name);
    match (ours, labelled) {
        (false, _) => Adoption::Foreign,
        (true, false) => Adoption::Label,
        (true, true) => Adoption::Cache,
    }
}

/// Label `existing` for `binding_name` (guarded by its resourceVersion).
pub async fn label(
    writer: &Writer,
    cache: &NsCache<CachedSecret>,
    existing: &Secret,
    binding_name: &str,
) -> Result<(), ReconcileError> {
    let patch = json!({"metadata": {
        "resourceVersion": existing.resource_version(),
        "labels": { BINDING_LABEL: binding_name },
    }});
    let labelled = writer
        .patch::<Secret>(
            "label legacy secret",
            &existing.namespace().unwrap_or_default(),
            &existing.name_any(),
            &patch,
        )
        .await?;
    cache.written(cached(labelled));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(owners: Vec<OwnerReference>, label: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("acr-pull-app".into()),
                owner_references: Some(owners),
                labels: label.map(|l| BTreeMap::from([(BINDING_LABEL.to_string(), l.to_string())])),
                ..Default::default()
            },
            type_: Some(DOCKER_CONFIG_TYPE.into()),
            ..Default::default()
        }
    }

    fn controlled_by(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    const V2: &str = "acrpull.microsoft.com/v1beta2";
    const V1: &str = "msi-acrpull.microsoft.com/v1beta1";

    #[test]
    fn adoption_labels_what_the_binding_controls_and_refuses_the_rest() {
        let adopt = |s: &Secret| adoption(s, Version::V1beta2, "app");
        // Controlled by this binding (or by one of its name before it), label removed.
        let ours = controlled_by(V2, "AcrPullBinding", "app", "u1");
        assert_eq!(adopt(&secret(vec![ours.clone()], None)), Adoption::Label);
        let before = controlled_by(V2, "AcrPullBinding", "app", "u0");
        assert_eq!(adopt(&secret(vec![before], None)), Adoption::Label);
        // Labelled too: the watch is behind.
        assert_eq!(
            adopt(&secret(vec![ours.clone()], Some("app"))),
            Adoption::Cache
        );
        // Ownerless: nobody's binding wrote it (acrpull and msi-acrpull always set the owner).
        assert_eq!(adopt(&secret(vec![], None)), Adoption::Foreign);
        assert_eq!(adopt(&secret(vec![], Some("app"))), Adoption::Foreign);
        // Someone else's: another kind, the other API group, another binding, no controller
        // flag, or another type of Secret.
        for owner in [
            controlled_by("apps/v1", "Deployment", "app", "u9"),
            controlled_by(V1, "AcrPullBinding", "app", "u1"),
            controlled_by(V2, "AcrPullBinding", "other", "u2"),
            OwnerReference {
                controller: None,
                ..ours.clone()
            },
        ] {
            assert_eq!(
                adopt(&secret(vec![owner.clone()], None)),
                Adoption::Foreign,
                "{owner:?}"
            );
        }
        let mut opaque = secret(vec![ours], None);
        opaque.type_ = Some("Opaque".into());
        assert_eq!(adopt(&opaque), Adoption::Foreign);
    }
}
