//! The authorization stage: whether the authenticated user may do what a request asks.
//!
//! As in a real cluster, members of `system:masters` are allowed everything without RBAC
//! (the privileged-group authorizer); everyone else is decided by RBAC ([`rbac`]) over the
//! Roles, ClusterRoles and bindings in the store, which start with the default policy of
//! [`bootstrap`]. [`review`] serves the access and token reviews built on this stage.

pub mod aggregation;
pub mod bootstrap;
pub mod rbac;
pub mod review;

use serde_json::json;

use crate::authn::UserInfo;
use crate::error::{self, ApiError};

/// What the authorizer is asked (the real server's `authorizer.Attributes`).
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// The user.
    pub user: UserInfo,
    /// Verb (`get`, `list`, `watch`, `create`, ..., or the lower-case HTTP method for
    /// non-resource requests).
    pub verb: String,
    /// Resource requests: group, version, resource, subresource, namespace, name.
    pub resource: Option<ResourceAttributes>,
    /// Non-resource requests: the URL path.
    pub path: String,
}

/// The resource part of [`Attributes`].
#[derive(Debug, Clone, Default)]
pub struct ResourceAttributes {
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the authorizer's reason (`RBAC: allowed by ...`; empty for
    /// `system:masters`).
    Allow(String),
    /// Denied, with the authorizer's reason (may be empty).
    Deny(String),
}

/// The group whose members are allowed everything.
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// Decide a request.
pub fn authorize(store: &crate::store::Store, attrs: &Attributes) -> Decision {
    if attrs.user.in_group(PRIVILEGED_GROUP) {
        return Decision::Allow(String::new());
    }
    rbac::authorize(store, attrs)
}

/// 403 `Forbidden` from the authorizer, with the real server's message:
/// `secrets "x" is forbidden: User "u" cannot get resource "secrets" in API group "" in the
/// namespace "ns"` (plus `: reason` when the authorizer gave one).
pub fn forbidden(attrs: &Attributes, reason: &str) -> ApiError {
    let user = &attrs.user.username;
    let mut msg = match &attrs.resource {
        None => format!("User {user:?} cannot {} path {:?}", attrs.verb, attrs.path),
        Some(r) => {
            let mut res = r.resource.clone();
            if !r.subresource.is_empty() {
                res = format!("{res}/{}", r.subresource);
            }
            if r.namespace.is_empty() {
                format!(
                    "User {user:?} cannot {} resource {res:?} in API group {:?} at the cluster scope",
                    attrs.verb, r.group
                )
            } else {
                format!(
                    "User {user:?} cannot {} resource {res:?} in API group {:?} in the namespace {:?}",
                    attrs.verb, r.group, r.namespace
                )
            }
        }
    };
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    let (message, details) = match &attrs.resource {
        None => (format!("forbidden: {msg}"), json!({})),
        Some(r) => {
            let q = error::qualified(&r.group, &r.resource);
            let message = if r.name.is_empty() {
                format!("{q} is forbidden: {msg}")
            } else {
                format!("{q} {:?} is forbidden: {msg}", r.name)
            };
            (message, error::details(&r.group, &r.resource, &r.name))
        }
    };
    ApiError::new(403, "Forbidden", message).with_details(details)
}
