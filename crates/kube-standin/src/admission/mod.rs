//! Validating admission: ValidatingAdmissionPolicies and their bindings
//! (`admissionregistration.k8s.io/v1`), evaluated on every write the stand-in serves,
//! subresources included (`status`, `serviceaccounts/token`).
//!
//! [`policy`] compiles and evaluates the policies, [`matching`] decides which requests they
//! apply to, [`objects`] defaults and validates the policy objects, [`user`] says who the
//! requester is.

pub mod matching;
pub mod objects;
pub mod policy;
pub mod user;

use serde_json::Value;

pub use crate::checks::{Lookup, Operation};
pub use user::{user_of, UserInfo};

/// The admission attributes of a request.
#[derive(Debug)]
pub struct Attributes<'a> {
    /// CREATE, UPDATE, DELETE.
    pub operation: Operation,
    /// API group of the resource.
    pub group: &'a str,
    /// Version the request used.
    pub version: &'a str,
    /// Resource plural.
    pub resource: &'a str,
    /// Subresource (`status`, `token`) or empty.
    pub subresource: &'a str,
    /// Group, version and kind of `object` (`authentication.k8s.io/v1` `TokenRequest` for
    /// `serviceaccounts/token`).
    pub kind: (&'a str, &'a str, &'a str),
    /// Namespace (for a Namespace object: its name).
    pub namespace: &'a str,
    /// Object name.
    pub name: &'a str,
    /// Whether the resource is namespaced.
    pub namespaced: bool,
    /// The new object (`None` on DELETE).
    pub object: Option<&'a Value>,
    /// The old object (`None` on CREATE).
    pub old_object: Option<&'a Value>,
    /// The requester.
    pub user: &'a UserInfo,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `CreateOptions`, `UpdateOptions`, `PatchOptions` or `DeleteOptions`.
    pub options: &'a Value,
    /// Other served versions of the resource (for `matchPolicy: Equivalent`).
    pub other_versions: &'a [String],
}
