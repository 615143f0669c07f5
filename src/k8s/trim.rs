//! What the caches keep of each object: only the fields decisions read.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::observe::SecretMeta;
use crate::state::binding::{WI_CLIENT_ID_ANNOTATION, WI_TENANT_ID_ANNOTATION};
use crate::state::names::{BINDING_LABEL, IDENTITY_AUDIENCE_ANNOTATION};

/// The prefix of the annotations acrpull writes on pull Secrets.
const ACRPULL_ANNOTATION_PREFIX: &str = "acr.microsoft.com/";

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

/// A pull Secret's metadata: the binding label, acrpull's annotations and the owner.
pub fn trim_secret(s: &mut SecretMeta) {
    let m = &mut s.metadata;
    m.managed_fields = None;
    if let Some(l) = m.labels.as_mut() {
        l.retain(|k, _| k == BINDING_LABEL);
    }
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(ACRPULL_ANNOTATION_PREFIX));
    }
}
