//! The request log: one [`RequestRecord`] per API request, in arrival order, with the
//! attributes RBAC rules are written against (verb, group, resource, subresource, namespace,
//! name) and the user agent other tests use to attribute writes to a controller replica.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// One logged request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`); empty for non-resource requests.
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource (`status`, `token`).
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// `Content-Type` header.
    pub content_type: String,
    /// `fieldManager` query parameter.
    pub field_manager: String,
    /// `User-Agent` header.
    pub user_agent: String,
    /// The authenticated user's name (after impersonation); empty when authentication failed.
    pub user: String,
    /// Response status (200 for a watch that started).
    pub status: u16,
    /// RFC 3339 arrival time with milliseconds.
    pub timestamp: String,
    /// Ids of the faults that fired for this request.
    pub faults: Vec<String>,
    /// `Warning` headers sent (admission policies' `Warn`, ratcheted CRD rule failures).
    pub warnings: Vec<String>,
    /// Audit annotations (admission policies' `Audit` and `auditAnnotations`).
    pub audit_annotations: BTreeMap<String, String>,
    /// The ValidatingAdmissionPolicy that denied the request (empty: none did). A real API
    /// server's audit log shows it in the response status message only; here tests can ask
    /// "did any policy deny this client anything" without parsing messages.
    pub denied_by_policy: String,
}

impl RequestRecord {
    /// Whether the server refused the client the request: 401, 403 (RBAC, an admission
    /// policy whose reason is Forbidden, NamespaceLifecycle), or an admission policy's denial
    /// with any status. An injected fault's answer counts too: check [`RequestRecord::faults`].
    pub fn refused(&self) -> bool {
        matches!(self.status, 401 | 403) || !self.denied_by_policy.is_empty()
    }
}

/// The log.
#[derive(Default)]
pub struct RequestLog {
    entries: Mutex<Vec<RequestRecord>>,
}

impl RequestLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RequestRecord>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Append.
    pub fn push(&self, r: RequestRecord) {
        self.lock().push(r);
    }

    /// A copy of all entries.
    pub fn all(&self) -> Vec<RequestRecord> {
        self.lock().clone()
    }

    /// Forget all entries.
    pub fn clear(&self) {
        self.lock().clear();
    }
}
