//! The checks a write passes between the REST handler and storage, in the real API server's
//! order: validation of the object itself ([`crate::validation`]: CRD schemas, CEL rules,
//! admission policy objects), then validating admission ([`crate::admission`]:
//! ValidatingAdmissionPolicies).
//!
//! The store calls [`Checks::run`] with the final object (after patches, defaults and
//! pruning) and the old one, inside its write lock, so what is checked is exactly what is
//! committed and a policy reads a consistent view through [`Lookup`]. Writes that carry no
//! checks (the test handle, the control API, the garbage collector) are not checked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::admission::{self, Attributes, UserInfo};
use crate::error::ApiResult;
use crate::resources::{Registry, ResourceType};
use crate::validation::{self, Validators};

/// An admission operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST, or an apply that creates.
    Create,
    /// PUT, PATCH.
    Update,
    /// DELETE.
    Delete,
}

impl Operation {
    /// `CREATE`, `UPDATE`, `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// Read access to stored objects from inside the store's write lock.
pub trait Lookup {
    /// Served types.
    fn registry(&self) -> &Registry;
    /// One object.
    fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value>;
    /// The objects of a type (in one namespace, or all).
    fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<&Value>;
    /// A Namespace object.
    fn namespace(&self, name: &str) -> Option<&Value> {
        let rt = self.registry().by_key("", "namespaces")?;
        self.get(&rt, "", name)
    }
}

/// A write about to be committed.
#[derive(Debug)]
pub struct PendingWrite<'a> {
    /// The type written.
    pub rt: &'a ResourceType,
    /// What the write does.
    pub operation: Operation,
    /// `""` or `status`.
    pub subresource: &'a str,
    /// Namespace (`""` if cluster-scoped).
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// The object to store (`None` for a delete).
    pub object: Option<&'a Value>,
    /// The stored object (`None` for a create).
    pub old: Option<&'a Value>,
}

impl<'a> PendingWrite<'a> {
    /// A create of `object`.
    pub fn create(rt: &'a ResourceType, ns: &'a str, name: &'a str, object: &'a Value) -> Self {
        PendingWrite {
            rt,
            operation: Operation::Create,
            subresource: "",
            namespace: ns,
            name,
            object: Some(object),
            old: None,
        }
    }

    /// An update (of `subresource`, if not empty) from `old` to `object`.
    pub fn update(
        rt: &'a ResourceType,
        subresource: &'a str,
        ns: &'a str,
        name: &'a str,
        object: &'a Value,
        old: &'a Value,
    ) -> Self {
        PendingWrite {
            rt,
            operation: Operation::Update,
            subresource,
            namespace: ns,
            name,
            object: Some(object),
            old: Some(old),
        }
    }

    /// A delete of `old`.
    pub fn delete(rt: &'a ResourceType, ns: &'a str, name: &'a str, old: &'a Value) -> Self {
        PendingWrite {
            rt,
            operation: Operation::Delete,
            subresource: "",
            namespace: ns,
            name,
            object: None,
            old: Some(old),
        }
    }
}

/// A check of pending writes.
pub trait WriteCheck: Send + Sync {
    /// `Err` rejects the write.
    fn check(&self, w: &PendingWrite<'_>, lookup: &dyn Lookup) -> ApiResult<()>;
}

/// The checks a write carries (none by default).
#[derive(Clone, Default)]
pub struct Checks(Option<Arc<dyn WriteCheck>>);

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Checks(on)"
        } else {
            "Checks(off)"
        })
    }
}

impl Checks {
    /// Carry `c`.
    pub fn new(c: Arc<dyn WriteCheck>) -> Self {
        Checks(Some(c))
    }

    /// Run the checks, if any.
    pub fn run(&self, w: &PendingWrite<'_>, lookup: &dyn Lookup) -> ApiResult<()> {
        match &self.0 {
            Some(c) => c.check(w, lookup),
            None => Ok(()),
        }
    }
}

/// Compiled state shared by all requests: CRD validators and admission policies.
#[derive(Debug, Default)]
pub struct Compiled {
    /// CRD schema validators.
    pub validators: Validators,
    /// Compiled ValidatingAdmissionPolicies.
    pub policies: admission::policy::Policies,
}

/// What one request's checks produced besides a verdict.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Notes {
    /// `Warning` headers.
    pub warnings: Vec<String>,
    /// Audit annotations.
    pub audit: BTreeMap<String, String>,
}

/// The checks of one API request: who makes it, and what its checks noted.
pub struct RequestChecks {
    compiled: Arc<Compiled>,
    /// The requester.
    pub user: UserInfo,
    version: String,
    notes: Mutex<Notes>,
}

impl RequestChecks {
    /// Checks for a request by `user` at API version `version`.
    pub fn new(compiled: Arc<Compiled>, user: UserInfo, version: &str) -> Arc<Self> {
        Arc::new(RequestChecks {
            compiled,
            user,
            version: version.to_string(),
            notes: Mutex::new(Notes::default()),
        })
    }

    /// The checks of one write of this request. `options` are the request's options
    /// (`fieldManager`, `dryRun`, or a DELETE's `DeleteOptions`); their `kind` is set per
    /// operation.
    pub fn for_write(self: &Arc<Self>, options: Value) -> Checks {
        Checks::new(Arc::new(WriteChecker {
            request: self.clone(),
            options,
        }))
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, Notes> {
        match self.notes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Warnings and audit annotations so far.
    pub fn take_notes(&self) -> Notes {
        std::mem::take(&mut *self.notes())
    }

    /// Validating admission (also for requests that store nothing, like TokenRequest).
    pub fn admit(&self, a: &Attributes<'_>, lookup: &dyn Lookup) -> ApiResult<()> {
        let out = self.compiled.policies.evaluate(a, lookup);
        let mut notes = self.notes();
        notes.warnings.extend(out.warnings);
        notes.audit.extend(out.audit);
        match out.deny {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl RequestChecks {
    /// Validating admission of a TokenRequest for ServiceAccount `sa` in `ns`: `object` is
    /// the TokenRequest as the API server defaults it (audiences, expiration, name,
    /// namespace, cleared status).
    pub fn admit_token_request(
        &self,
        lookup: &dyn Lookup,
        ns: &str,
        sa: &str,
        body: &Value,
        default_audience: &str,
        options: &Value,
    ) -> ApiResult<()> {
        let spec = &body["spec"];
        let audiences = match spec["audiences"].as_array() {
            Some(a) if !a.is_empty() => Value::Array(a.clone()),
            _ => serde_json::json!([default_audience]),
        };
        let mut object = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": sa, "namespace": ns, "creationTimestamp": crate::store::now()},
            "spec": {"audiences": audiences, "expirationSeconds": spec["expirationSeconds"].as_i64().unwrap_or(3600)},
            "status": {"token": "", "expirationTimestamp": null},
        });
        if spec["boundObjectRef"].is_object() {
            object["spec"]["boundObjectRef"] = spec["boundObjectRef"].clone();
        }
        let options = options_for(Operation::Create, options);
        let dry_run = options["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"));
        let a = Attributes {
            operation: Operation::Create,
            group: "",
            version: "v1",
            resource: "serviceaccounts",
            subresource: "token",
            kind: ("authentication.k8s.io", "v1", "TokenRequest"),
            namespace: ns,
            name: sa,
            namespaced: true,
            object: Some(&object),
            old_object: None,
            user: &self.user,
            dry_run,
            options: &options,
            other_versions: &[],
        };
        self.admit(&a, lookup)
    }
}

/// `request.options` for an operation.
pub fn options_for(operation: Operation, base: &Value) -> Value {
    let mut o = if base.is_object() {
        base.clone()
    } else {
        Value::Object(Default::default())
    };
    let kind = match operation {
        Operation::Create => "CreateOptions",
        Operation::Update => "UpdateOptions",
        Operation::Delete => "DeleteOptions",
    };
    o["kind"] = Value::from(kind);
    o["apiVersion"] = Value::from("meta.k8s.io/v1");
    o
}

struct WriteChecker {
    request: Arc<RequestChecks>,
    options: Value,
}

impl WriteCheck for WriteChecker {
    fn check(&self, w: &PendingWrite<'_>, lookup: &dyn Lookup) -> ApiResult<()> {
        let req = &self.request;
        // Validation: the object itself.
        let kind = &w.rt.kind;
        if let (Some(new), Some(v)) = (w.object, req.compiled.validators.for_type(w.rt)) {
            let out = match (w.subresource, w.old) {
                ("status", Some(old)) => v.validate_status(new, old),
                (_, old) => v.validate(new, old),
            };
            req.notes().warnings.extend(out.warnings);
            if !out.errors.is_empty() {
                return Err(validation::invalid(kind, &w.rt.group, w.name, &out.errors));
            }
        }
        if let Some(new) = w.object {
            let causes = admission::objects::validate_object(w.rt, new);
            if !causes.is_empty() {
                return Err(validation::invalid(kind, &w.rt.group, w.name, &causes));
            }
        }
        // Validating admission, with the objects in the version the request used.
        let version = if w.rt.serves(&req.version) {
            req.version.clone()
        } else {
            w.rt.storage_version().to_string()
        };
        let other: Vec<String> =
            w.rt.versions
                .iter()
                .filter(|v| **v != version)
                .cloned()
                .collect();
        let present = |o: &Value| crate::watch::present(w.rt, &version, o.clone());
        let object = w.object.map(present);
        let old = w.old.map(present);
        let options = options_for(w.operation, &self.options);
        let dry_run = options["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "All"));
        let is_namespace = w.rt.plural == "namespaces" && w.rt.group.is_empty();
        let a = Attributes {
            operation: w.operation,
            group: &w.rt.group,
            version: &version,
            resource: &w.rt.plural,
            subresource: w.subresource,
            kind: (&w.rt.group, &version, &w.rt.kind),
            namespace: if is_namespace { w.name } else { w.namespace },
            name: w.name,
            namespaced: w.rt.namespaced,
            object: object.as_ref(),
            old_object: old.as_ref(),
            user: &req.user,
            dry_run,
            options: &options,
            other_versions: &other,
        };
        req.admit(&a, lookup)
    }
}
