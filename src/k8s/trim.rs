//! What the caches keep of each object: only the fields decisions read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::ObjectMeta;
use kube::runtime::watcher;

use super::binding::parse_time;
use super::observe::{group_of, SecretMeta};
use crate::state::binding::{Version, WI_CLIENT_ID_ANNOTATION, WI_TENANT_ID_ANNOTATION};
use crate::state::decide::SecretView;
use crate::state::names::{
    BINDING_LABEL, EXPIRY_ANNOTATION, IDENTITY_AUDIENCE_ANNOTATION, INPUTS_ALL_ANNOTATION,
    INPUTS_ANNOTATION, ISSUED_ANNOTATION, REFRESH_ANNOTATION, REFRESH_AT_ANNOTATION,
    VERIFIED_ANNOTATION,
};

/// The caches keep only what decisions read (memory is per binding: at 10,000 bindings every
/// field kept costs it 10,000 times). Never `managedFields`, often the largest part of an
/// object, nor annotations a decision never reads (`kubectl apply` copies the whole object
/// into one): a binding keeps only its identity-audience annotation.
pub fn trim_binding<K: kube::Resource>(o: &mut K) {
    let m = o.meta_mut();
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == IDENTITY_AUDIENCE_ANNOTATION);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// A ServiceAccount: its pull secrets and the workload-identity annotations; not its token
/// secrets, labels, owners or other annotations.
pub fn trim_service_account(sa: &mut ServiceAccount) {
    sa.secrets = None;
    sa.automount_service_account_token = None;
    let m = &mut sa.metadata;
    m.managed_fields = None;
    m.labels = None;
    m.owner_references = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == WI_CLIENT_ID_ANNOTATION || k == WI_TENANT_ID_ANNOTATION);
    }
}

/// What the Secret cache keeps of a labelled Secret: where it is, whose it is, and what
/// acrpull's annotations on it say, parsed. Only what decisions read: a Secret's `ObjectMeta`
/// with its label and annotation maps took ~1.5 KB, and at 10,000 bindings the cache held
/// 15 MB of them.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedSecret {
    pub namespace: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// The value of the binding label, `acr.microsoft.com/binding`.
    pub binding_label: Option<String>,
    /// Its controller ownerReference to an `AcrPullBinding`, if it has one.
    pub owner: Option<Owner>,
    /// acrpull's annotations, parsed; `view.name` is the Secret's name.
    pub view: SecretView,
}

/// A controller ownerReference to an `AcrPullBinding` (either group).
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    /// The binding version whose group its `apiVersion` names; `None`: another group. Only the
    /// group is ever compared, so the string is not kept (10,000 copies of it at 10,000
    /// bindings).
    pub group: Option<Version>,
    pub name: String,
    pub uid: String,
}

/// The binding version whose API group `api_version` (`group/version`) names.
fn binding_group(api_version: &str) -> Option<Version> {
    let group = api_version.split('/').next()?;
    [Version::V1beta1, Version::V1beta2]
        .into_iter()
        .find(|v| group_of(*v) == group)
}

impl CachedSecret {
    /// The cached form of a Secret with `meta` (from a watch event or a write's answer).
    pub fn of(meta: &ObjectMeta) -> Self {
        let empty = BTreeMap::new();
        let a = meta.annotations.as_ref().unwrap_or(&empty);
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            binding_label: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(BINDING_LABEL).cloned()),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "AcrPullBinding")
                .map(|o| Owner {
                    group: binding_group(&o.api_version),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                }),
            view: SecretView {
                name: meta.name.clone().unwrap_or_default(),
                expiry: parse_time(a, EXPIRY_ANNOTATION),
                refresh: parse_time(a, REFRESH_ANNOTATION),
                issued: parse_time(a, ISSUED_ANNOTATION),
                inputs: a.get(INPUTS_ANNOTATION).cloned(),
                inputs_all: a.get(INPUTS_ALL_ANNOTATION).cloned(),
                verified: a.get(VERIFIED_ANNOTATION).map(|v| v == "true"),
                planned: parse_time(a, REFRESH_AT_ANNOTATION),
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.view.name
    }
}

impl From<&SecretMeta> for CachedSecret {
    fn from(s: &SecretMeta) -> Self {
        Self::of(&s.metadata)
    }
}

/// A watch event of Secret metadata as the cache keeps it.
pub fn cached_secret_event(e: watcher::Event<SecretMeta>) -> watcher::Event<CachedSecret> {
    use watcher::Event;
    match e {
        Event::Init => Event::Init,
        Event::InitApply(s) => Event::InitApply(CachedSecret::from(&s)),
        Event::InitDone => Event::InitDone,
        Event::Apply(s) => Event::Apply(CachedSecret::from(&s)),
        Event::Delete(s) => Event::Delete(CachedSecret::from(&s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The cached form keeps what decisions read, parsed as they parse it: the binding
    /// label, the controller owner (not the first owner), acrpull's annotations (an
    /// unparsable time is absent, as it was when parsed at each pass).
    #[test]
    fn a_cached_secret_keeps_what_decisions_read() {
        let meta: SecretMeta = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "acr-pull-app", "namespace": "team", "uid": "s1",
                "resourceVersion": "42",
                "labels": {BINDING_LABEL: "app", "team": "x"},
                "annotations": {
                    EXPIRY_ANNOTATION: "2026-12-07T18:00:00Z",
                    REFRESH_ANNOTATION: "not a time",
                    ISSUED_ANNOTATION: "2026-12-07T15:00:00Z",
                    REFRESH_AT_ANNOTATION: "2026-12-07T16:30:00Z",
                    INPUTS_ANNOTATION: "h1", INPUTS_ALL_ANNOTATION: "h2",
                    VERIFIED_ANNOTATION: "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c1"},
                    {"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
                     "name": "app", "uid": "b1"},
                    {"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
                     "name": "app", "uid": "b2", "controller": true}]}}))
        .unwrap();
        let c = CachedSecret::from(&meta);
        let t = |s: &str| Some(s.parse().unwrap());
        assert_eq!(
            c,
            CachedSecret {
                namespace: "team".into(),
                uid: Some("s1".into()),
                resource_version: Some("42".into()),
                binding_label: Some("app".into()),
                owner: Some(Owner {
                    group: Some(Version::V1beta2),
                    name: "app".into(),
                    uid: "b2".into(),
                }),
                view: SecretView {
                    name: "acr-pull-app".into(),
                    expiry: t("2026-12-07T18:00:00Z"),
                    refresh: None,
                    issued: t("2026-12-07T15:00:00Z"),
                    inputs: Some("h1".into()),
                    inputs_all: Some("h2".into()),
                    verified: Some(true),
                    planned: t("2026-12-07T16:30:00Z"),
                },
            }
        );
        // Nothing but a name: nothing else.
        let bare: SecretMeta = serde_json::from_value(json!({"apiVersion": "v1",
            "kind": "Secret", "metadata": {"name": "s"}}))
        .unwrap();
        let c = CachedSecret::from(&bare);
        assert_eq!((c.name(), &c.owner, &c.binding_label), ("s", &None, &None));
        assert_eq!(c.view.verified, None);
    }
}
