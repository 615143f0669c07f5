//! The validation stage — **the hook point for schema validation of custom resources**
//! (OpenAPI `type`/`enum`/`required`/lengths/patterns/items and CEL `x-kubernetes-validations`
//! with `oldSelf`, transition rules and ratcheting).
//!
//! [`object`] is called for every create and update of an object (the main resource and the
//! `status` subresource; patches and applies after they are applied), after the object is
//! decoded, pruned and defaulted, and before validating admission and storage. It gets the
//! type (with its per-version `openAPIV3Schema` in [`ResourceType::schemas`]), the request
//! version, the subresource, the new object and the old one (`None` on create). An invalid
//! object is refused with 422 `Invalid` and `details.causes[].field` (build it with
//! [`crate::error::ApiError`]). The evaluation itself lives in `validation/` (and `cel/`); this
//! function is its single entry point.

use serde_json::Value;

use crate::error::ApiResult;
use crate::resources::ResourceType;

/// Validate one object about to be stored.
pub fn object(
    rt: &ResourceType,
    version: &str,
    subresource: &str,
    object: &Value,
    old_object: Option<&Value>,
) -> ApiResult<()> {
    let _ = (rt, version, subresource, object, old_object);
    Ok(())
}
