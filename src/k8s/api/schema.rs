//! Small schema transforms for constraints schemars cannot express from serde attributes:
//! fields that must be `required` in the CRD even though the Rust types default them
//! (lenient deserialisation, see the module above), and removal of the `default`s schemars
//! derives from `#[serde(default)]` — those exist for lenient reading, not as API defaults.

use schemars::Schema;

/// Mark `fields` as required in an object schema.
pub fn require(schema: &mut Schema, fields: &[&str]) {
    let required: Vec<serde_json::Value> = fields
        .iter()
        .map(|f| serde_json::Value::String((*f).to_string()))
        .collect();
    schema.insert("required".into(), serde_json::Value::Array(required));
}

/// The only API default: `spec.acr.environment: PublicCloud`.
const API_DEFAULT: &str = "PublicCloud";

/// Drop every `default` from a CRD schema except the API default above.
pub fn strip_serde_defaults(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    if schema
        .default
        .as_ref()
        .is_some_and(|d| d.0 != serde_json::Value::String(API_DEFAULT.into()))
    {
        schema.default = None;
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_serde_defaults(child);
    }
    if let Some(
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items),
    ) = schema.items.as_mut()
    {
        strip_serde_defaults(items);
    }
}
