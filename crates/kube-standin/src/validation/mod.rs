//! The validation stage: what the API server checks about an object itself before it is
//! stored, after admission's mutations and before validating admission.
//!
//! For custom resources that is the CRD's structural schema — OpenAPI value validation
//! ([`openapi`]), `x-kubernetes-list-type` uniqueness, and the CEL rules
//! `x-kubernetes-validations` ([`rules`]) — with Kubernetes 1.33's ratcheting ([`ratchet`]).
//! The result has the real server's shape: 422 `Invalid`, `details.causes[]` with `reason`,
//! `message` and `field`, and a message `Kind.group "name" is invalid: field: ...`.
//!
//! [`SchemaValidator::compile`] runs when a CRD is written: a rule that does not compile, or
//! uses a function the stand-in lacks, makes the CRD write fail with 422, never an object
//! write pass silently.

pub mod openapi;
pub mod ratchet;
pub mod rules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::resources::ResourceType;

/// A step of a path into an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A schema property (`.name`).
    Field(String),
    /// A key of a map (`additionalProperties`) (`[key]`).
    Key(String),
    /// A list item (`[0]`).
    Index(usize),
}

/// A path as `field.Path` prints it: `spec.tags[k].items[0]`.
pub fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(f);
            }
            Seg::Key(k) => s.push_str(&format!("[{k}]")),
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A JSON value printed as Go prints an unstructured value in a field error (`%q` for
/// strings, `%v` for numbers and booleans, `%#v` for the rest).
pub fn go_value(v: &Value) -> String {
    fn inner(v: &Value) -> String {
        match v {
            Value::String(s) => format!("{s:?}"),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "interface {}(nil)".to_string(),
            Value::Array(a) => format!(
                "[]interface {{}}{{{}}}",
                a.iter().map(inner).collect::<Vec<_>>().join(", ")
            ),
            Value::Object(m) => format!(
                "map[string]interface {{}}{{{}}}",
                m.iter()
                    .map(|(k, v)| format!("{k:?}:{}", inner(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    match v {
        Value::Null => "null".to_string(),
        other => inner(other),
    }
}

/// One validation error (a `details.causes[]` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// The field (`spec.acr.scope`).
    pub field: String,
    /// The message without the field (`Required value`, `Invalid value: "": ...`).
    pub body: String,
    /// The schema node that raised the error (for ratcheting).
    pub node: Vec<Seg>,
    /// Whether an unchanged value may ratchet it.
    pub ratchetable: bool,
}

impl Cause {
    /// An OpenAPI schema error.
    pub fn schema(reason: &'static str, field: &str, body: String, node: Vec<Seg>) -> Self {
        Cause {
            reason,
            field: field.to_string(),
            body,
            node,
            ratchetable: true,
        }
    }

    /// A CEL rule error.
    pub fn rule(
        reason: &'static str,
        field: &str,
        body: String,
        node: Vec<Seg>,
        ratchetable: bool,
    ) -> Self {
        Cause {
            reason,
            field: field.to_string(),
            body,
            node,
            ratchetable,
        }
    }

    /// `field: body`, as the aggregated message and warnings print it.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.body)
    }

    /// Errors that keep CEL rules from running (kube-apiserver's `hasBlockingErr`).
    fn blocking(&self) -> bool {
        matches!(
            self.reason,
            "FieldValueNotSupported"
                | "FieldValueRequired"
                | "FieldValueTooLong"
                | "FieldValueTooMany"
                | "FieldValueTypeInvalid"
        )
    }
}

/// The 422 for a list of causes, as `apierrors.NewInvalid` builds it.
pub fn invalid(kind: &str, group: &str, name: &str, causes: &[Cause]) -> ApiError {
    let qk = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let mut seen: Vec<String> = Vec::new();
    for c in causes {
        let m = c.message();
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    let agg = match seen.len() {
        0 => String::new(),
        1 => format!(": {}", seen[0]),
        _ => format!(": [{}]", seen.join(", ")),
    };
    let mut details = json!({
        "name": name,
        "kind": kind,
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.body, "field": c.field})).collect::<Vec<_>>(),
    });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    ApiError::new(422, "Invalid", format!("{qk} {name:?} is invalid{agg}")).with_details(details)
}

/// The compiled validation of one CRD version.
#[derive(Debug)]
pub struct SchemaValidator {
    schema: Value,
    patterns: openapi::Patterns,
    rules: rules::Rules,
}

/// What validation found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Errors: the write is rejected when there are any.
    pub errors: Vec<Cause>,
    /// Ratcheted rule failures, sent back as `Warning` headers.
    pub warnings: Vec<String>,
}

impl SchemaValidator {
    /// Compile a version's `openAPIV3Schema`. `base` is its CRD path, for the errors
    /// (`spec.versions[0].schema.openAPIV3Schema`).
    pub fn compile(schema: &Value, base: &str) -> Result<Self, Vec<(String, String)>> {
        let mut patterns = openapi::Patterns::new();
        let mut issues = Vec::new();
        openapi::patterns(schema, base, &mut patterns, &mut issues);
        let rules = match rules::Rules::compile(schema, base) {
            Ok(r) => r,
            Err(mut more) => {
                issues.append(&mut more);
                rules::Rules::default()
            }
        };
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(SchemaValidator {
            schema: schema.clone(),
            patterns,
            rules,
        })
    }

    /// Validate a create (`old = None`) or an update of the main resource.
    pub fn validate(&self, new: &Value, old: Option<&Value>) -> Outcome {
        let mut errors = openapi::validate(&self.schema, new, "", Vec::new(), &self.patterns);
        self.finish(new, old, &mut errors)
    }

    /// Validate a `/status` update: the schema of `status` only, the CEL rules of the whole
    /// object (the rest is unchanged, so ratcheting lets it be).
    pub fn validate_status(&self, new: &Value, old: &Value) -> Outcome {
        let mut errors = match (new.get("status"), self.schema["properties"].get("status")) {
            (Some(st), Some(ss)) => openapi::validate(
                ss,
                st,
                "status",
                vec![Seg::Field("status".into())],
                &self.patterns,
            ),
            _ => Vec::new(),
        };
        self.finish(new, Some(old), &mut errors)
    }

    fn finish(&self, new: &Value, old: Option<&Value>, errors: &mut Vec<Cause>) -> Outcome {
        errors.retain(|c| !(c.ratchetable && ratchet::unchanged(&self.schema, new, old, &c.node)));
        let mut dups = Vec::new();
        openapi::list_types(&self.schema, new, "", &mut dups);
        if !dups.is_empty() {
            let mut old_dups = Vec::new();
            if let Some(o) = old {
                openapi::list_types(&self.schema, o, "", &mut old_dups);
            }
            if old_dups.is_empty() {
                errors.append(&mut dups);
            }
        }
        let mut warnings = Vec::new();
        if !self.rules.is_empty() {
            if errors.iter().any(Cause::blocking) {
                errors.push(Cause::schema(
                    "FieldValueInvalid",
                    "<nil>",
                    "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_string(),
                    Vec::new(),
                ));
            } else {
                let (mut errs, mut warns) = self.rules.validate(&self.schema, new, old);
                errors.append(&mut errs);
                warnings.append(&mut warns);
            }
        }
        Outcome {
            errors: std::mem::take(errors),
            warnings,
        }
    }
}

/// Check every schema of a CRD manifest: the 422 a CRD write gets when a rule does not
/// compile.
pub fn check_crd(crd: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    for (i, v) in crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let schema = &v["schema"]["openAPIV3Schema"];
        if schema.is_null() {
            continue;
        }
        if let Err(issues) = SchemaValidator::compile(
            schema,
            &format!("spec.versions[{i}].schema.openAPIV3Schema"),
        ) {
            for (field, body) in issues {
                let reason = if body.starts_with("Required value") {
                    "FieldValueRequired"
                } else if body.starts_with("Unsupported value") {
                    "FieldValueNotSupported"
                } else {
                    "FieldValueInvalid"
                };
                causes.push(Cause::schema(reason, &field, body, Vec::new()));
            }
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    Err(invalid(
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        name,
        &causes,
    ))
}

/// Compiled validators, cached per served type and version; recompiled when the CRD's
/// schema changes.
#[derive(Default)]
pub struct Validators {
    cache: Mutex<HashMap<TypeVersion, (Value, Arc<SchemaValidator>)>>,
}

/// Group, plural, version.
type TypeVersion = (String, String, String);

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Validators")
    }
}

impl Validators {
    /// The validator of a custom resource type in a version (the request's, as the API
    /// server validates an object in the version it was sent in; the storage version's for a
    /// version the type does not serve); none for built-ins.
    pub fn for_type(&self, rt: &ResourceType, version: &str) -> Option<Arc<SchemaValidator>> {
        if !rt.custom {
            return None;
        }
        let version = if rt.schemas.contains_key(version) {
            version.to_string()
        } else {
            rt.storage_version().to_string()
        };
        let schema = rt.schemas.get(&version)?;
        let key = (rt.group.clone(), rt.plural.clone(), version);
        let mut cache = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((s, v)) = cache.get(&key) {
            if s == schema {
                return Some(v.clone());
            }
        }
        // The CRD write compiled this schema already (`check_crd`); failing here would be a
        // bug, logged, and the type goes unvalidated rather than unwritable.
        let v = match SchemaValidator::compile(schema, "") {
            Ok(v) => Arc::new(v),
            Err(issues) => {
                tracing::error!(?issues, "A stored CRD schema does not compile");
                return None;
            }
        };
        cache.insert(key, (schema.clone(), v.clone()));
        Some(v)
    }
}

#[cfg(test)]
mod tests;
