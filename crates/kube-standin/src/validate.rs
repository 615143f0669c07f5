//! The validation stage: what the API server checks about an object itself, after it is
//! decoded, pruned and defaulted (and patches applied) and before validating admission and
//! storage.
//!
//! [`object`] is its single entry point, called for every create and update an API client
//! makes (the main resource and the `status` subresource):
//! - custom resources against their CRD's schema ([`crate::validation`]: OpenAPI `type`,
//!   `enum`, `required`, lengths, patterns, items, list types, and the CEL
//!   `x-kubernetes-validations` with `oldSelf`, transition rules and ratcheting); a `/status`
//!   write against the `status` schema;
//! - ValidatingAdmissionPolicies and their bindings ([`crate::admission::objects`]: every
//!   expression compiles, required fields, allowed values).
//!
//! An invalid object is refused with 422 `Invalid` and `details.causes[].field`. Failures of
//! ratcheted rules are warnings (`Warning` headers).

use serde_json::Value;

use crate::admission;
use crate::error::ApiResult;
use crate::resources::ResourceType;
use crate::validation::{self, Validators};

/// Validate one object about to be stored (`old_object` is `None` on create); pushes the
/// warnings to send onto `warnings`, also when the object is refused.
pub fn object(
    validators: &Validators,
    rt: &ResourceType,
    version: &str,
    subresource: &str,
    object: &Value,
    old_object: Option<&Value>,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    if let Some(v) = validators.for_type(rt, version) {
        let out = match (subresource, old_object) {
            ("status", Some(old)) => v.validate_status(object, old),
            (_, old) => v.validate(object, old),
        };
        warnings.extend(out.warnings);
        if !out.errors.is_empty() {
            return Err(validation::invalid(
                &rt.kind,
                &rt.group,
                &name_of(object),
                &out.errors,
            ));
        }
    }
    let causes = admission::objects::validate_object(rt, object);
    if !causes.is_empty() {
        return Err(validation::invalid(
            &rt.kind,
            &rt.group,
            &name_of(object),
            &causes,
        ));
    }
    Ok(())
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
