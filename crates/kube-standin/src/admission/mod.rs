//! The admission stage: what the API server decides about a write after authorization and
//! before storage.
//!
//! - **Mutating admission** runs on the decoded request ([`mutate`]; built-in plugins:
//!   [`namespace_lifecycle`]).
//! - **Validating admission** runs on the object about to be stored and its old version,
//!   after schema validation ([`crate::validate`]); its single entry point is
//!   [`validating::admit`], which evaluates the ValidatingAdmissionPolicies and their
//!   bindings (`admissionregistration.k8s.io/v1`): [`policy`] compiles and evaluates them,
//!   [`matching`] decides which requests they apply to, [`objects`] validates the policy
//!   objects themselves when they are written.
//!
//! Every write an API client makes goes through here, subresources included (`status`,
//! `serviceaccounts/token`); the typed handle's, the control API's and the stand-in's own
//! controllers' writes do not (see `rest::stages`). The requester is the user authentication
//! and impersonation produced ([`Attributes::user_info`]).

pub mod matching;
pub mod namespace_lifecycle;
pub mod objects;
pub mod policy;
pub mod validating;

use std::sync::Arc;

use serde_json::Value;

use crate::error::ApiResult;
use crate::resources::ResourceType;
use crate::store::Store;
use crate::user::UserInfo;

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

    /// The `kind` of the request's options (`request.options` in a policy).
    pub fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
            Operation::Connect => "ConnectOptions",
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
    /// The resource type written (group, plural, scope, served versions, CRD schemas).
    pub resource: &'a ResourceType,
    /// The request's version (`request.resource.version`).
    pub version: &'a str,
    /// The kind of `object`/`old_object` (a TokenRequest for `serviceaccounts/token`).
    pub kind: GroupVersionKind,
    /// `""`, `status` or `token`.
    pub subresource: &'a str,
    /// Namespace of the object (`""` for cluster-scoped objects, Namespaces included).
    pub namespace: &'a str,
    /// Object name (may be empty on a create with `generateName` before preparation).
    pub name: &'a str,
    /// The new object, in the request's version (`None` for deletes).
    pub object: Option<&'a Value>,
    /// The stored object before the write, in the request's version (`None` for creates).
    pub old_object: Option<&'a Value>,
    /// Who asks (after impersonation).
    pub user: &'a UserInfo,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The request's `CreateOptions`, `UpdateOptions` (also for patches) or `DeleteOptions`,
    /// with `kind` and `apiVersion` set ([`options`]).
    pub options: &'a Value,
}

impl Attributes<'_> {
    /// The request's user info (`request.userInfo` in a policy).
    pub fn user_info(&self) -> &UserInfo {
        self.user
    }

    /// Whether the object is a Namespace.
    pub fn is_namespace(&self) -> bool {
        self.resource.is("", "namespaces")
    }

    /// The namespace of the request as admission sees it (`request.namespace`): the object's
    /// namespace, and for a Namespace its own name (the API server's request info names the
    /// namespace a Namespace request is about).
    pub fn request_namespace(&self) -> &str {
        if self.is_namespace() {
            self.name
        } else {
            self.namespace
        }
    }

    /// The API group of the resource.
    pub fn group(&self) -> &str {
        &self.resource.group
    }

    /// The other served versions of the resource (for `matchPolicy: Equivalent`).
    pub fn other_versions(&self) -> impl Iterator<Item = &str> {
        self.resource
            .versions
            .iter()
            .map(String::as_str)
            .filter(|v| *v != self.version)
    }

    /// The namespace object of a namespaced request (`namespaceObject` in a policy); `None`
    /// for cluster-scoped requests or a namespace that does not exist.
    pub fn namespace_object(&self, lookup: &dyn Lookup) -> Option<Value> {
        if !self.resource.namespaced || self.namespace.is_empty() {
            return None;
        }
        lookup.namespace(self.namespace)
    }
}

/// `request.options` for an operation: the request's options (`fieldManager`, `dryRun`, or a
/// DELETE's `DeleteOptions` body) with `kind` and `apiVersion`.
pub fn options(operation: Operation, base: &Value) -> Value {
    let mut o = if base.is_object() {
        base.clone()
    } else {
        Value::Object(Default::default())
    };
    o["kind"] = Value::from(operation.options_kind());
    o["apiVersion"] = Value::from("meta.k8s.io/v1");
    o
}

/// Read access to stored objects for admission (policies, bindings, parameters, namespaces).
/// The [`Store`] is one; the policy unit tests use an in-memory one.
pub trait Lookup {
    /// The served type of an `apiVersion` and kind.
    fn type_of(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>>;
    /// One object (`ns` is `""` for cluster-scoped types).
    fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value>;
    /// The objects of a type, in one namespace or all.
    fn list(&self, group: &str, plural: &str, ns: Option<&str>) -> Vec<Value>;
    /// A Namespace object.
    fn namespace(&self, name: &str) -> Option<Value> {
        self.get("", "namespaces", "", name)
    }
    /// The objects of a cluster-scoped type, shared (the store lists each once per change
    /// of its API group rather than once per request).
    fn list_shared(&self, group: &str, plural: &str) -> Arc<Vec<Value>> {
        Arc::new(self.list(group, plural, None))
    }
}

impl Lookup for Store {
    fn type_of(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.registry().by_api_version(api_version, kind)
    }

    fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.object(group, plural, ns, name)
    }

    fn list(&self, group: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
        self.objects(group, plural, ns)
    }

    fn list_shared(&self, group: &str, plural: &str) -> Arc<Vec<Value>> {
        self.memo(group, format!("list {plural}"), || {
            self.objects(group, plural, None)
        })
    }
}

/// Mutating admission: the built-in plugins, in the real server's order.
pub fn mutate(store: &Store, attrs: &Attributes<'_>) -> ApiResult<()> {
    namespace_lifecycle::admit(store, attrs)
}
