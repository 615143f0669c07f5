//! ValidatingAdmissionPolicy evaluation, as the API server's validating policy plugin does it.
//!
//! For each policy whose `matchConstraints` match the request, and each of its bindings
//! whose `matchResources` match: collect the parameters (`paramKind` + the binding's
//! `paramRef` by name or selector, `parameterNotFoundAction`), then per parameter evaluate
//! `matchConditions`, `variables`, `validations` and `auditAnnotations` with `object`,
//! `oldObject`, `request`, `params`, `namespaceObject` and `variables`. A failed validation
//! is acted on per the binding's `validationActions`: `Deny` (the first denial rejects the
//! request: 403 for `reason: Forbidden`, 422 for the default `Invalid`), `Warn` (a `Warning`
//! header), `Audit` (an audit annotation, kept in the request log). A compile, runtime or
//! configuration error counts as a failure under `failurePolicy: Fail` and is ignored under
//! `Ignore`.
//!
//! Differences from the API server: policies are evaluated in name order; variables are
//! evaluated eagerly, and an expression that names a variable whose evaluation failed gets
//! that failure even where `&&`/`||` would have skipped it; `authorizer` is not supported
//! (a compile error at policy creation); no cost budget; `status.typeChecking` is not set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::cel::{self, value::from_json, Activation, Expression};
use crate::error::{qualified, ApiError};
use crate::resources::{split_api_version, ResourceType};

use super::matching::{matches, selector_matches};
use super::{Attributes, Lookup};

/// The API group of the admission configuration types.
pub const GROUP: &str = "admissionregistration.k8s.io";

/// The result of validating admission.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The rejection, if any.
    pub deny: Option<ApiError>,
    /// `Warning` header texts.
    pub warnings: Vec<String>,
    /// Audit annotations.
    pub audit: BTreeMap<String, String>,
    /// The name of the policy whose denial [`Outcome::deny`] is.
    pub denied_by: Option<String>,
}

#[derive(Debug)]
struct Validation {
    expr: Result<Expression, String>,
    message: Option<String>,
    message_expression: Option<Result<Expression, String>>,
    reason: Option<String>,
}

#[derive(Debug)]
struct Compiled {
    fail_closed: bool,
    match_conditions: Vec<(String, Result<Expression, String>)>,
    variables: Vec<(String, Result<Expression, String>)>,
    validations: Vec<Validation>,
    audit_annotations: Vec<(String, Result<Expression, String>)>,
    param_kind: Option<(String, String)>,
}

/// Compiled policies, cached by name and resourceVersion.
#[derive(Default)]
pub struct Policies {
    cache: Mutex<HashMap<String, (String, Arc<Compiled>)>>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policies")
    }
}

/// The variables an expression may use.
pub fn vars(has_params: bool) -> Vec<&'static str> {
    let mut v = vec![
        "object",
        "oldObject",
        "request",
        "namespaceObject",
        "variables",
    ];
    if has_params {
        v.push("params");
    }
    v
}

fn compile_one(src: &str, has_params: bool) -> Result<Expression, String> {
    cel::compile(src, &vars(has_params)).map_err(|e| e.0)
}

fn compile(policy: &Value) -> Compiled {
    let spec = &policy["spec"];
    let param_kind = spec["paramKind"].is_object().then(|| {
        (
            spec["paramKind"]["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            spec["paramKind"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    let hp = param_kind.is_some();
    let named =
        |list: &Value, key: &str, expr: &str| -> Vec<(String, Result<Expression, String>)> {
            list.as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    (
                        x[key].as_str().unwrap_or_default().to_string(),
                        compile_one(x[expr].as_str().unwrap_or_default(), hp),
                    )
                })
                .collect()
        };
    Compiled {
        fail_closed: spec["failurePolicy"].as_str() != Some("Ignore"),
        match_conditions: named(&spec["matchConditions"], "name", "expression"),
        variables: named(&spec["variables"], "name", "expression"),
        validations: spec["validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| Validation {
                expr: compile_one(v["expression"].as_str().unwrap_or_default(), hp),
                message: v["message"]
                    .as_str()
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty()),
                message_expression: v["messageExpression"]
                    .as_str()
                    .filter(|m| !m.trim().is_empty())
                    .map(|m| compile_one(m, hp)),
                reason: v["reason"].as_str().map(str::to_string),
            })
            .collect(),
        audit_annotations: named(&spec["auditAnnotations"], "key", "valueExpression"),
        param_kind,
    }
}

/// A decision that is not "admit".
struct Failure {
    message: String,
    reason: Option<String>,
    index: usize,
}

fn err_text(e: &Expression, msg: &str) -> String {
    format!("expression '{}' resulted in error: {msg}", e.source())
}

fn strip(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    o
}

impl Policies {
    fn compiled(&self, policy: &Value) -> Arc<Compiled> {
        let name = policy["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let rv = policy["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut cache = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((crv, c)) = cache.get(&name) {
            if *crv == rv && !rv.is_empty() {
                return c.clone();
            }
        }
        let c = Arc::new(compile(policy));
        cache.insert(name, (rv, c.clone()));
        c
    }

    /// Evaluate every policy against a request.
    pub fn evaluate(&self, a: &Attributes<'_>, lookup: &dyn Lookup) -> Outcome {
        let mut out = Outcome::default();
        // As in the API server, policies never apply to admission configuration itself, so
        // a bad policy cannot lock its own fix out.
        if a.group() == GROUP {
            return out;
        }
        let policies = lookup.list_shared(GROUP, "validatingadmissionpolicies");
        if policies.is_empty() {
            return out;
        }
        let bindings = lookup.list_shared(GROUP, "validatingadmissionpolicybindings");
        let mut denied: Vec<(String, Option<String>, Failure)> = Vec::new();
        for policy in policies.iter() {
            let pname = policy["metadata"]["name"].as_str().unwrap_or_default();
            if !matches(&policy["spec"]["matchConstraints"], a, lookup) {
                continue;
            }
            let c = self.compiled(policy);
            let mut annotations: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for binding in bindings.iter().filter(|b| b["spec"]["policyName"] == pname) {
                let bname = binding["metadata"]["name"].as_str().unwrap_or_default();
                let bspec = &binding["spec"];
                if bspec["matchResources"].is_object()
                    && !matches(&bspec["matchResources"], a, lookup)
                {
                    continue;
                }
                let actions: Vec<&str> = bspec["validationActions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let params = match collect_params(&c, &bspec["paramRef"], a, lookup) {
                    Ok(p) => p,
                    Err(e) => {
                        if c.fail_closed {
                            let message = format!("failed to configure binding: {e}");
                            denied.push((
                                pname.to_string(),
                                Some(bname.to_string()),
                                Failure {
                                    message,
                                    reason: None,
                                    index: 0,
                                },
                            ));
                        }
                        continue;
                    }
                };
                for param in params {
                    let (failures, notes) = evaluate_one(&c, a, param.as_ref(), lookup);
                    for (k, v) in notes {
                        let vals = annotations.entry(k).or_default();
                        if !vals.contains(&v) {
                            vals.push(v);
                        }
                    }
                    for f in failures {
                        for action in &actions {
                            match *action {
                                "Deny" => denied.push((
                                    pname.to_string(),
                                    Some(bname.to_string()),
                                    Failure { message: f.message.clone(), reason: f.reason.clone(), index: f.index },
                                )),
                                "Warn" => out.warnings.push(format!(
                                    "Validation failed for ValidatingAdmissionPolicy '{pname}' with binding '{bname}': {}",
                                    f.message
                                )),
                                "Audit" => {
                                    out.audit.insert(
                                        "validation.policy.admission.k8s.io/validation_failure".to_string(),
                                        json!([{"message": f.message, "policy": pname, "binding": bname,
                                                "expressionIndex": f.index, "validationActions": actions}])
                                        .to_string(),
                                    );
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            for (k, vals) in annotations {
                out.audit.insert(format!("{pname}/{k}"), vals.join(", "));
            }
        }
        if let Some((pname, bname, f)) = denied.into_iter().next() {
            out.denied_by = Some(pname.clone());
            let message = match bname {
                Some(b) => format!(
                    "ValidatingAdmissionPolicy '{pname}' with binding '{b}' denied request: {}",
                    f.message
                ),
                None => format!(
                    "ValidatingAdmissionPolicy '{pname}' denied request: {}",
                    f.message
                ),
            };
            out.deny = Some(forbidden(
                a,
                &message,
                f.reason.as_deref().unwrap_or("Invalid"),
            ));
        }
        out
    }
}

/// `admission.NewForbidden` with the policy's reason and code.
fn forbidden(a: &Attributes<'_>, message: &str, reason: &str) -> ApiError {
    let name = if !a.name.is_empty() {
        a.name.to_string()
    } else {
        let o = a.object.map(|o| &o["metadata"]);
        match o.and_then(|m| {
            m["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .or_else(|| m["generateName"].as_str())
        }) {
            Some(n) => n.to_string(),
            None => "Unknown".to_string(),
        }
    };
    let code = match reason {
        "Forbidden" => 403,
        "Unauthorized" => 401,
        "RequestEntityTooLarge" => 413,
        _ => 422,
    };
    let (group, plural) = (a.group(), a.resource.plural.as_str());
    let mut details = json!({"name": name, "kind": plural, "causes": [{"message": message}]});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    ApiError::new(
        code,
        reason,
        format!(
            "{} {name:?} is forbidden: {message}",
            qualified(group, plural)
        ),
    )
    .with_details(details)
}

fn collect_params(
    c: &Compiled,
    param_ref: &Value,
    a: &Attributes<'_>,
    lookup: &dyn Lookup,
) -> Result<Vec<Option<Value>>, String> {
    let Some((api_version, kind)) = &c.param_kind else {
        return Ok(vec![None]);
    };
    if !param_ref.is_object() {
        return Ok(vec![None]);
    }
    let rt: Arc<ResourceType> = lookup
        .type_of(api_version, kind)
        .filter(|t| t.kind == *kind)
        .ok_or_else(|| {
            let (g, v) = split_api_version(api_version);
            format!("paramKind kind `{g}/{v}, Kind={kind}` not known")
        })?;
    let ref_ns = param_ref["namespace"].as_str().unwrap_or_default();
    let ns = if rt.namespaced {
        if !ref_ns.is_empty() {
            Some(ref_ns.to_string())
        } else if !a.namespace.is_empty() {
            Some(a.namespace.to_string())
        } else {
            return Err("cannot use namespaced paramRef in policy binding that matches cluster-scoped resources".to_string());
        }
    } else if !ref_ns.is_empty() {
        return Err(
            "paramRef.namespace must not be provided for a cluster-scoped `paramKind`".to_string(),
        );
    } else {
        None
    };
    let found: Vec<Option<Value>> = match (
        param_ref["name"].as_str().filter(|n| !n.is_empty()),
        param_ref.get("selector"),
    ) {
        (Some(_), Some(s)) if s.is_object() => {
            return Err("paramRef.name and paramRef.selector are mutually exclusive".to_string())
        }
        (Some(name), _) => lookup
            .get(&rt.group, &rt.plural, ns.as_deref().unwrap_or(""), name)
            .map(|p| Some(strip(&p)))
            .into_iter()
            .collect(),
        (None, Some(sel)) if sel.is_object() => lookup
            .list(&rt.group, &rt.plural, ns.as_deref())
            .into_iter()
            .filter(|p| selector_matches(sel, &p["metadata"]["labels"]))
            .map(|p| Some(strip(&p)))
            .collect(),
        _ => return Err("one of name or selector must be provided".to_string()),
    };
    if found.is_empty() && param_ref["parameterNotFoundAction"] == "Deny" {
        return Err(
            "no params found for policy binding with `Deny` parameterNotFoundAction".to_string(),
        );
    }
    Ok(found)
}

/// The `request` variable.
fn request(a: &Attributes<'_>) -> Value {
    let gvk = json!({"group": a.kind.group, "version": a.kind.version, "kind": a.kind.kind});
    let gvr = json!({"group": a.group(), "version": a.version, "resource": a.resource.plural});
    let mut r = json!({
        "uid": "",
        "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "operation": a.operation.as_str(),
        "userInfo": a.user.to_json(),
        "dryRun": a.dry_run,
        "options": a.options,
    });
    for (k, v) in [
        ("subResource", a.subresource),
        ("requestSubResource", a.subresource),
        ("name", a.name),
        ("namespace", a.request_namespace()),
    ] {
        if !v.is_empty() {
            r[k] = json!(v);
        }
    }
    r
}

/// Bind `variables` for `expr` to the composited variables evaluated so far — only those it
/// selects, unless it reads `variables` whole. What it reads is the same; what is converted
/// for it is not: a variable holding the whole object (`variables.secret`) made every later
/// expression convert the object again, the largest part of admission's cost.
fn scope_variables(act: &mut Activation, expr: &Expression, values: &[(String, ::cel::Value)]) {
    if !expr.uses("variables") {
        return;
    }
    let whole = expr.reads_whole("variables");
    let map = values
        .iter()
        .filter(|(k, _)| whole || expr.fields_of("variables").any(|f| f == k))
        .map(|(k, v)| (::cel::objects::Key::String(Arc::new(k.clone())), v.clone()))
        .collect();
    act.set(
        "variables",
        ::cel::Value::Map(::cel::objects::Map { map: Arc::new(map) }),
    );
}

/// Evaluate one policy for one binding and parameter: the failures (per validation, and
/// errors under `failurePolicy: Fail`) and the audit annotations to publish.
fn evaluate_one(
    c: &Compiled,
    a: &Attributes<'_>,
    param: Option<&Value>,
    lookup: &dyn Lookup,
) -> (Vec<Failure>, Vec<(String, String)>) {
    let error = |message: String| -> Vec<Failure> {
        if c.fail_closed {
            vec![Failure {
                message,
                reason: None,
                index: 0,
            }]
        } else {
            Vec::new()
        }
    };
    let namespace_object = a
        .namespace_object(lookup)
        .map(|n| strip(&n))
        .unwrap_or(Value::Null);
    let mut act = Activation::default()
        .with(
            "object",
            a.object.map(from_json).unwrap_or(::cel::Value::Null),
        )
        .with(
            "oldObject",
            a.old_object.map(from_json).unwrap_or(::cel::Value::Null),
        )
        .with("request", from_json(&request(a)))
        .with("namespaceObject", from_json(&namespace_object))
        .with("variables", from_json(&json!({})));
    if c.param_kind.is_some() {
        act.set("params", param.map(from_json).unwrap_or(::cel::Value::Null));
    }
    // Match conditions: any false skips the policy; errors without a false follow the
    // failure policy.
    let mut errors = Vec::new();
    for (_, cond) in &c.match_conditions {
        match cond {
            Err(e) => errors.push(format!("compilation error: {e}")),
            Ok(expr) => match expr.eval(&act) {
                Ok(::cel::Value::Bool(false)) => return (Vec::new(), Vec::new()),
                Ok(_) => {}
                Err(e) => errors.push(err_text(expr, &e.0)),
            },
        }
    }
    if !errors.is_empty() {
        let msg = if errors.len() == 1 {
            errors.remove(0)
        } else {
            format!("[{}]", errors.join(", "))
        };
        return (error(msg), Vec::new());
    }
    // Variables, in order; a failed one is remembered for the expressions that use it.
    let mut values: Vec<(String, ::cel::Value)> = Vec::new();
    let mut failed: HashMap<String, String> = HashMap::new();
    let failed_var = |e: &Expression, failed: &HashMap<String, String>| -> Option<String> {
        e.fields_of("variables").find_map(|f| {
            failed
                .get(f)
                .map(|m| format!("composited variable {f:?} fails to evaluate: {m}"))
        })
    };
    for (name, expr) in &c.variables {
        let result = match expr {
            Err(e) => Err(format!(
                "composited variable {name:?} fails to compile: {e}"
            )),
            Ok(expr) => match failed_var(expr, &failed) {
                Some(m) => Err(m),
                None => {
                    scope_variables(&mut act, expr, &values);
                    expr.eval(&act).map_err(|e| e.0)
                }
            },
        };
        match result {
            Ok(v) => values.push((name.clone(), v)),
            Err(m) => {
                failed.insert(name.clone(), m);
            }
        }
    }
    let act = std::cell::RefCell::new(act);
    let eval = |expr: &Result<Expression, String>| -> Result<::cel::Value, String> {
        match expr {
            Err(e) => Err(format!("compilation error: {e}")),
            Ok(expr) => match failed_var(expr, &failed) {
                Some(m) => Err(err_text(expr, &m)),
                None => {
                    scope_variables(&mut act.borrow_mut(), expr, &values);
                    expr.eval(&act.borrow()).map_err(|e| err_text(expr, &e.0))
                }
            },
        }
    };
    let mut failures = Vec::new();
    for (i, v) in c.validations.iter().enumerate() {
        match eval(&v.expr) {
            Err(m) => failures.extend(error(m).into_iter().map(|mut f| {
                f.index = i;
                f
            })),
            Ok(r) if cel::is_true(&r) => {}
            Ok(_) => {
                let mut message = String::new();
                if let Some(me) = &v.message_expression {
                    if let Ok(::cel::Value::String(s)) = eval(me) {
                        let t = s.trim();
                        if t.len() <= 5120 && !t.contains('\n') {
                            message = t.to_string();
                        }
                    }
                }
                if message.is_empty() {
                    message = match (&v.message, &v.expr) {
                        (Some(m), _) => m.clone(),
                        (None, Ok(e)) => format!("failed expression: {}", e.source().trim()),
                        (None, Err(_)) => String::new(),
                    };
                }
                failures.push(Failure {
                    message,
                    reason: Some(v.reason.clone().unwrap_or_else(|| "Invalid".into())),
                    index: i,
                });
            }
        }
    }
    let mut notes = Vec::new();
    for (key, expr) in &c.audit_annotations {
        match eval(expr) {
            Ok(::cel::Value::String(s)) => {
                let t = s.trim();
                if !t.is_empty() {
                    notes.push((key.clone(), t.chars().take(10 * 1024).collect()));
                }
            }
            Ok(::cel::Value::Null) => {}
            Ok(other) => failures.extend(error(format!(
                "valueExpression '{}' resulted in unsupported return type: {}. Return type must be either string or null.",
                expr.as_ref().map(|e| e.source()).unwrap_or_default(),
                other.type_of()
            ))),
            Err(m) => failures.extend(error(m)),
        }
    }
    (failures, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{options, GroupVersionKind, Operation};
    use crate::resources::Registry;
    use crate::user::UserInfo;

    /// Stored objects without a store.
    struct Objects {
        registry: Registry,
        objects: Vec<(String, String, Value)>,
    }

    impl Lookup for Objects {
        fn type_of(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
            self.registry.by_api_version(api_version, kind)
        }

        fn get(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
            self.list(group, plural, Some(ns))
                .into_iter()
                .find(|o| o["metadata"]["name"] == name)
        }

        fn list(&self, group: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
            self.objects
                .iter()
                .filter(|(g, p, o)| {
                    g == group
                        && p == plural
                        && ns.is_none_or(|n| o["metadata"]["namespace"].as_str().unwrap_or("") == n)
                })
                .map(|(_, _, o)| o.clone())
                .collect()
        }
    }

    fn shipped() -> Objects {
        let docs =
            crate::objects::parse_documents(include_str!("../../../../deploy/admission.yaml"))
                .unwrap();
        let objects = docs
            .into_iter()
            .map(|mut d| {
                d["metadata"]["resourceVersion"] = json!("1");
                let plural = if d["kind"] == "ValidatingAdmissionPolicy" {
                    "validatingadmissionpolicies"
                } else {
                    "validatingadmissionpolicybindings"
                };
                (GROUP.to_string(), plural.to_string(), d)
            })
            .collect();
        Objects {
            registry: Registry::new(),
            objects,
        }
    }

    fn token_request(user: &UserInfo, audiences: Value) -> Outcome {
        let object = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                            "metadata": {"name": "app", "namespace": "team"},
                            // The lifetime the controller asks for (the shipped policy caps it).
                            "spec": {"audiences": audiences, "expirationSeconds": 600}});
        let options = options(Operation::Create, &json!({}));
        let objects = shipped();
        let sa = objects.registry.by_key("", "serviceaccounts").unwrap();
        let a = Attributes {
            operation: Operation::Create,
            resource: &sa,
            version: "v1",
            kind: GroupVersionKind {
                group: "authentication.k8s.io".into(),
                version: "v1".into(),
                kind: "TokenRequest".into(),
            },
            subresource: "token",
            namespace: "team",
            name: "app",
            object: Some(&object),
            old_object: None,
            user,
            dry_run: false,
            options: &options,
        };
        Policies::default().evaluate(&a, &objects)
    }

    #[test]
    fn the_token_request_policy_confines_the_controller_only() {
        let controller = UserInfo {
            username: "system:serviceaccount:acrpull-system:acrpull".into(),
            ..Default::default()
        };
        assert!(
            token_request(&controller, json!(["api://AzureCRTokenExchange"]))
                .deny
                .is_none()
        );
        let denied = token_request(&controller, json!(["https://kubernetes.default.svc"]))
            .deny
            .unwrap();
        assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            denied.message,
            "serviceaccounts \"app\" is forbidden: ValidatingAdmissionPolicy 'acrpull-token-request' with binding \
             'acrpull-token-request' denied request: acrpull may request ServiceAccount tokens only for the single \
             audience \"api://AzureCRTokenExchange\""
        );
        assert!(
            token_request(&UserInfo::admin(), json!(["x"]))
                .deny
                .is_none(),
            "matchConditions"
        );
    }
}
