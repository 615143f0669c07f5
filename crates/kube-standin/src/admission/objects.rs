//! The policy and binding objects themselves: the API server's validation of them (every
//! expression must compile, required fields, allowed values), so a policy that could not be
//! evaluated is rejected when it is written. Their defaults are storage's
//! (`store::strategy`), as the scheme's defaulting functions run at decoding.

use serde_json::Value;

use crate::cel;
use crate::resources::ResourceType;
use crate::validation::{go_value, Cause};

use super::policy::{vars, GROUP};

/// Validation of a policy or binding object: every expression must compile (`authorizer`
/// included, which the stand-in does not support), and the required fields be present.
pub fn validate_object(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    if rt.group != GROUP {
        return Vec::new();
    }
    let mut out = Vec::new();
    let spec = &obj["spec"];
    let required = |out: &mut Vec<Cause>, field: &str, detail: &str| {
        let body = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        out.push(Cause::schema("FieldValueRequired", field, body, Vec::new()));
    };
    let unsupported = |out: &mut Vec<Cause>, field: &str, v: &Value, ok: &[&str]| {
        let list: Vec<String> = ok.iter().map(|s| format!("{s:?}")).collect();
        out.push(Cause::schema(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {}: supported values: {}",
                go_value(v),
                list.join(", ")
            ),
            Vec::new(),
        ));
    };
    match rt.kind.as_str() {
        "ValidatingAdmissionPolicy" => {
            let fp = &spec["failurePolicy"];
            if !fp.is_null() && fp != "Fail" && fp != "Ignore" {
                unsupported(&mut out, "spec.failurePolicy", fp, &["Fail", "Ignore"]);
            }
            let has_params = spec["paramKind"].is_object();
            let mc = &spec["matchConstraints"];
            if !mc.is_object() {
                required(&mut out, "spec.matchConstraints", "");
            } else if mc["resourceRules"].as_array().is_none_or(|r| r.is_empty()) {
                required(&mut out, "spec.matchConstraints.resourceRules", "");
            }
            let check = |out: &mut Vec<Cause>, field: String, src: &Value| match src
                .as_str()
                .filter(|s| !s.trim().is_empty())
            {
                None => required(out, &field, ""),
                Some(s) => {
                    if let Err(e) = cel::compile(s, &vars(has_params)) {
                        out.push(Cause::schema(
                            "FieldValueInvalid",
                            &field,
                            format!("Invalid value: {s:?}: compilation failed: {}", e.0),
                            Vec::new(),
                        ));
                    }
                }
            };
            for (i, m) in spec["matchConditions"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                check(
                    &mut out,
                    format!("spec.matchConditions[{i}].expression"),
                    &m["expression"],
                );
            }
            for (i, v) in spec["variables"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                check(
                    &mut out,
                    format!("spec.variables[{i}].expression"),
                    &v["expression"],
                );
            }
            let validations = spec["validations"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let audits = spec["auditAnnotations"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if validations.is_empty() && audits.is_empty() {
                required(
                    &mut out,
                    "spec.validations",
                    "validations or auditAnnotations must contain at least one item",
                );
                required(
                    &mut out,
                    "spec.auditAnnotations",
                    "validations or auditAnnotations must contain at least one item",
                );
            }
            for (i, v) in validations.iter().enumerate() {
                check(
                    &mut out,
                    format!("spec.validations[{i}].expression"),
                    &v["expression"],
                );
                if v["messageExpression"].is_string() {
                    check(
                        &mut out,
                        format!("spec.validations[{i}].messageExpression"),
                        &v["messageExpression"],
                    );
                }
                let r = &v["reason"];
                if !r.is_null()
                    && ![
                        "Unauthorized",
                        "Forbidden",
                        "Invalid",
                        "RequestEntityTooLarge",
                    ]
                    .iter()
                    .any(|x| r == x)
                {
                    unsupported(
                        &mut out,
                        &format!("spec.validations[{i}].reason"),
                        r,
                        &[
                            "Forbidden",
                            "Invalid",
                            "RequestEntityTooLarge",
                            "Unauthorized",
                        ],
                    );
                }
            }
            for (i, v) in audits.iter().enumerate() {
                check(
                    &mut out,
                    format!("spec.auditAnnotations[{i}].valueExpression"),
                    &v["valueExpression"],
                );
            }
        }
        "ValidatingAdmissionPolicyBinding" => {
            if spec["policyName"].as_str().is_none_or(str::is_empty) {
                required(&mut out, "spec.policyName", "");
            }
            let actions = spec["validationActions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if actions.is_empty() {
                required(
                    &mut out,
                    "spec.validationActions",
                    "at least one validation action is required",
                );
            }
            for (i, act) in actions.iter().enumerate() {
                if !["Deny", "Warn", "Audit"].iter().any(|x| act == x) {
                    unsupported(
                        &mut out,
                        &format!("spec.validationActions[{i}]"),
                        act,
                        &["Audit", "Deny", "Warn"],
                    );
                }
            }
            if actions.iter().any(|a| a == "Deny") && actions.iter().any(|a| a == "Warn") {
                out.push(Cause::schema(
                    "FieldValueInvalid",
                    "spec.validationActions",
                    format!("Invalid value: {}: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)", go_value(&spec["validationActions"])),
                    Vec::new(),
                ));
            }
            let pr = &spec["paramRef"];
            if pr.is_object() {
                let has_name = pr["name"].as_str().is_some_and(|n| !n.is_empty());
                if has_name == pr["selector"].is_object() {
                    required(
                        &mut out,
                        "spec.paramRef",
                        "one of name or selector must be specified",
                    );
                }
                match &pr["parameterNotFoundAction"] {
                    Value::Null => required(&mut out, "spec.paramRef.parameterNotFoundAction", ""),
                    a if a != "Allow" && a != "Deny" => unsupported(
                        &mut out,
                        "spec.paramRef.parameterNotFoundAction",
                        a,
                        &["Allow", "Deny"],
                    ),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}
