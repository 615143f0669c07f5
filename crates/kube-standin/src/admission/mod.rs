//! The admission stage: what the API server decides about a write after authorization and
//! before storage. Mutating admission runs on the decoded request (built-in plugins:
//! [`namespace_lifecycle`]); validating admission runs on the object about to be stored and
//! its old version, after schema validation ([`crate::validate`]) — see [`validating`] for the
//! hook ValidatingAdmissionPolicies plug into.
//!
//! Every write the server serves goes through here, subresources included (`status`,
//! `serviceaccounts/token`), and so do the typed handle's writes (as `system:admin`).

pub mod namespace_lifecycle;
pub mod validating;

use serde_json::Value;

use crate::authn::UserInfo;
use crate::error::ApiResult;
use crate::resources::ResourceType;
use crate::store::Store;

/// The admission operation (`request.operation` in a policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST, and an apply patch that creates.
    Create,
    /// PUT and PATCH.
    Update,
    /// DELETE (each object of a deletecollection too).
    Delete,
    /// Connect requests (not served here).
    Connect,
}

impl Operation {
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

/// Group, version and kind of the object admitted (`request.kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupVersionKind {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

/// Everything admission knows about one write.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// The operation.
    pub operation: Operation,
    /// The resource type written (group, plural, scope, CRD schemas).
    pub resource: &'a ResourceType,
    /// The request's version (`request.resource.version`).
    pub version: &'a str,
    /// The kind of `object`/`old_object` (a TokenRequest for `serviceaccounts/token`).
    pub kind: GroupVersionKind,
    /// `""`, `status` or `token`.
    pub subresource: &'a str,
    /// Namespace (`""` for cluster-scoped objects).
    pub namespace: &'a str,
    /// Object name (may be empty on a create with `generateName` before preparation).
    pub name: &'a str,
    /// The new object, in the request's version (`None` for deletes).
    pub object: Option<&'a Value>,
    /// The stored object before the write (`None` for creates).
    pub old_object: Option<&'a Value>,
    /// Who asks (after impersonation).
    pub user: &'a UserInfo,
    /// `dryRun=All`.
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// The request's user info (`request.userInfo` in a policy).
    pub fn user_info(&self) -> &UserInfo {
        self.user
    }

    /// The namespace object of a namespaced request (`namespaceObject` in a policy); `None`
    /// for cluster-scoped requests or a namespace that does not exist.
    pub fn namespace_object(&self, store: &Store) -> Option<Value> {
        if !self.resource.namespaced || self.namespace.is_empty() {
            return None;
        }
        let ns = store.type_by_path("", "v1", "namespaces")?;
        store.get(&ns, "", self.namespace).ok()
    }
}

/// Mutating admission: the built-in plugins, in the real server's order.
pub fn mutate(store: &Store, attrs: &Attributes<'_>) -> ApiResult<()> {
    namespace_lifecycle::admit(store, attrs)
}

/// Validating admission; returns the warnings to send back (`Warning` headers).
pub fn validate(store: &Store, attrs: &Attributes<'_>) -> ApiResult<Vec<String>> {
    validating::admit(store, attrs)
}
