//! The NamespaceLifecycle admission plugin: no new content in a namespace that does not exist
//! (404) or is being terminated (403 with the `NamespaceTerminating` cause), and the
//! `default`, `kube-system` and `kube-public` namespaces cannot be deleted.

use crate::error::{ApiError, ApiResult};
use crate::store::Store;

use super::{Attributes, Operation};

/// Namespaces that can never be deleted.
const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public"];

/// Admit or refuse one write.
pub fn admit(store: &Store, attrs: &Attributes<'_>) -> ApiResult<()> {
    let rt = attrs.resource;
    if rt.is("", "namespaces") {
        if attrs.operation == Operation::Delete && IMMORTAL.contains(&attrs.name) {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                    attrs.name
                ),
            )
            .with_details(serde_json::json!({"name": attrs.name, "kind": "namespaces"})));
        }
        return Ok(());
    }
    if !rt.namespaced || attrs.operation != Operation::Create {
        return Ok(());
    }
    let Some(ns) = attrs.namespace_object(store) else {
        return Err(ApiError::not_found("", "namespaces", attrs.namespace));
    };
    if !ns["metadata"]["deletionTimestamp"].is_null() {
        return Err(ApiError::namespace_terminating(
            &rt.group,
            &rt.plural,
            attrs.name,
            attrs.namespace,
        ));
    }
    Ok(())
}
