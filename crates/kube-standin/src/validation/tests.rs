use serde_json::{json, Value};

use super::*;

fn crd(file: &str) -> Value {
    let text = match file {
        "v1beta2" => {
            include_str!("../../../../deploy/crds/acrpullbindings.acrpull.microsoft.com.yaml")
        }
        _ => include_str!("../../../../deploy/crds/acrpullbindings.msi-acrpull.microsoft.com.yaml"),
    };
    serde_saphyr::from_str(text).unwrap()
}

fn validator(file: &str) -> SchemaValidator {
    let c = crd(file);
    SchemaValidator::compile(&c["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "x").unwrap()
}

fn v1beta2(spec: Value) -> Value {
    json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
           "metadata": {"name": "b", "namespace": "n"}, "spec": spec})
}

fn good_spec() -> Value {
    json!({"acr": {"server": "example.azurecr.io", "scope": "repository:app:pull", "environment": "PublicCloud"},
           "auth": {"managedIdentity": {"clientID": "00000000-0000-0000-0000-000000000001"}},
           "serviceAccountName": "default"})
}

fn with(mut spec: Value, pointer: &str, v: Value) -> Value {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    spec.pointer_mut(parent).unwrap()[last] = v;
    spec
}

fn errors(file: &str, obj: &Value) -> Vec<(String, String, String)> {
    validator(file)
        .validate(obj, None)
        .errors
        .into_iter()
        .map(|c| (c.reason.to_string(), c.field, c.body))
        .collect()
}

#[test]
fn a_valid_binding_passes() {
    assert_eq!(errors("v1beta2", &v1beta2(good_spec())), vec![]);
    let wi = with(
        good_spec(),
        "/auth",
        json!({"workloadIdentity": {"serviceAccountRef": "app", "clientID": "c", "tenantID": "t"}}),
    );
    assert_eq!(errors("v1beta2", &v1beta2(wi)), vec![]);
    let air = with(
        good_spec(),
        "/acr",
        json!({"server": "r.example.cloud:8443", "scope": "s", "environment": "AirgappedCloud",
        "cloudConfig": {"entraAuthorityHost": "https://login.example.cloud/", "resourceManagerAudience": "https://m.example.cloud/"}}),
    );
    assert_eq!(errors("v1beta2", &v1beta2(air)), vec![]);
    let v1 = json!({"apiVersion": "msi-acrpull.microsoft.com/v1beta1", "kind": "AcrPullBinding",
                    "metadata": {"name": "b"}, "spec": {"acrServer": "example.azurecr.io"}});
    assert_eq!(errors("v1beta1", &v1), vec![]);
}

#[test]
fn each_cel_rule_rejects_with_its_field() {
    let cases = [
        (with(good_spec(), "/acr/environment", json!("AirgappedCloud")), "spec.acr",
         "Invalid value: \"object\": a custom cloud configuration must be present for air-gapped cloud environments, and only for them"),
        (with(good_spec(), "/acr/cloudConfig", json!({"entraAuthorityHost": "h", "resourceManagerAudience": "a"})), "spec.acr",
         "Invalid value: \"object\": a custom cloud configuration must be present for air-gapped cloud environments, and only for them"),
        (with(good_spec(), "/acr/server", json!("https://example.azurecr.io")), "spec.acr.server",
         "Invalid value: \"string\": server must be a fully-qualified domain name, without scheme, path or query"),
        (with(good_spec(), "/acr/server", json!("example.azurecr.io/path")), "spec.acr.server",
         "Invalid value: \"string\": server must be a fully-qualified domain name, without scheme, path or query"),
        (with(good_spec(), "/auth", json!({})), "spec.auth",
         "Invalid value: \"object\": exactly one of managedIdentity or workloadIdentity must be set"),
        (with(good_spec(), "/auth/workloadIdentity", json!({"serviceAccountRef": "x"})), "spec.auth",
         "Invalid value: \"object\": exactly one of managedIdentity or workloadIdentity must be set"),
        (with(good_spec(), "/auth/managedIdentity", json!({"clientID": "a", "resourceID": "b"})), "spec.auth.managedIdentity",
         "Invalid value: \"object\": exactly one of clientID or resourceID must be set"),
        (with(good_spec(), "/auth", json!({"workloadIdentity": {"serviceAccountRef": "x", "clientID": "c"}})), "spec.auth.workloadIdentity",
         "Invalid value: \"object\": clientID and tenantID must be provided together, if at all"),
    ];
    for (spec, field, body) in cases {
        let got = errors("v1beta2", &v1beta2(spec.clone()));
        assert_eq!(
            got,
            vec![(
                "FieldValueInvalid".to_string(),
                field.to_string(),
                body.to_string()
            )],
            "{spec}"
        );
    }
}

#[test]
fn openapi_checks_and_blocking_errors() {
    let got = errors(
        "v1beta2",
        &v1beta2(with(good_spec(), "/acr/environment", json!("Mars"))),
    );
    assert_eq!(got[0], ("FieldValueNotSupported".into(), "spec.acr.environment".into(),
        "Unsupported value: \"Mars\": supported values: \"PublicCloud\", \"USGovernmentCloud\", \"ChinaCloud\", \"AirgappedCloud\"".into()));
    assert_eq!(
        got[1].1, "<nil>",
        "CEL rules are skipped after a blocking error"
    );
    let mut spec = good_spec();
    spec["acr"].as_object_mut().unwrap().remove("scope");
    let got = errors("v1beta2", &v1beta2(spec));
    assert_eq!(
        got[0],
        (
            "FieldValueRequired".into(),
            "spec.acr.scope".into(),
            "Required value".into()
        )
    );
    let got = errors(
        "v1beta2",
        &v1beta2(with(good_spec(), "/acr/scope", json!(""))),
    );
    assert_eq!(
        got,
        vec![(
            "FieldValueInvalid".into(),
            "spec.acr.scope".into(),
            "Invalid value: \"\": spec.acr.scope in body should be at least 1 chars long".into()
        )]
    );
    let got = errors(
        "v1beta2",
        &v1beta2(with(good_spec(), "/serviceAccountName", json!(5))),
    );
    assert_eq!(got[0], ("FieldValueTypeInvalid".into(), "spec.serviceAccountName".into(),
        "Invalid value: \"integer\": spec.serviceAccountName in body must be of type string: \"integer\"".into()));
    let missing = json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding", "metadata": {"name": "b"}});
    assert_eq!(
        errors("v1beta2", &missing)[0],
        (
            "FieldValueRequired".into(),
            "spec".into(),
            "Required value".into()
        )
    );
}

#[test]
fn status_is_checked_on_status_writes() {
    let v = validator("v1beta2");
    let old = v1beta2(good_spec());
    let mut new = old.clone();
    new["status"] = json!({"phase": "Bogus", "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "", "lastTransitionTime": "not-a-time"}]});
    let out = v.validate_status(&new, &old);
    let fields: Vec<(&str, &str)> = out
        .errors
        .iter()
        .map(|c| (c.reason, c.field.as_str()))
        .collect();
    assert!(
        fields.contains(&("FieldValueNotSupported", "status.phase")),
        "{fields:?}"
    );
    assert!(
        fields.contains(&(
            "FieldValueTypeInvalid",
            "status.conditions[0].lastTransitionTime"
        )),
        "{fields:?}"
    );
    new["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"},
                                          {"type": "Ready", "status": "False", "reason": "R", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]});
    let out = v.validate_status(&new, &old);
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert_eq!(
        out.errors[0].message(),
        "status.conditions[1]: Duplicate value: map[string]interface {}{\"type\":\"Ready\"}"
    );
}

#[test]
fn ratcheting_keeps_unchanged_invalid_values() {
    let v = validator("v1beta2");
    let old = v1beta2(with(
        good_spec(),
        "/acr/server",
        json!("https://old.example"),
    ));
    // Unchanged invalid server, another field changed: allowed, with a warning.
    let new = v1beta2(with(
        with(good_spec(), "/acr/server", json!("https://old.example")),
        "/serviceAccountName",
        json!("other"),
    ));
    let out = v.validate(&new, Some(&old));
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.warnings, vec!["spec.acr.server: Invalid value: \"string\": server must be a fully-qualified domain name, without scheme, path or query".to_string()]);
    // Changed to another invalid value: rejected.
    let new = v1beta2(with(
        good_spec(),
        "/acr/server",
        json!("https://new.example"),
    ));
    assert_eq!(v.validate(&new, Some(&old)).errors.len(), 1);
    // Schema errors ratchet too (an enum value the schema dropped).
    let old = v1beta2(with(good_spec(), "/acr/environment", json!("GermanCloud")));
    let new = v1beta2(with(
        with(good_spec(), "/acr/environment", json!("GermanCloud")),
        "/serviceAccountName",
        json!("x"),
    ));
    assert!(v.validate(&new, Some(&old)).errors.is_empty());
    assert!(!v.validate(&old, None).errors.is_empty());
}

fn schema_with(rules: Value) -> Value {
    json!({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"mode": {"type": "string"}, "count": {"type": "integer"}, "tags": {"type": "object", "additionalProperties": {"type": "string"}}},
        "x-kubernetes-validations": rules}}})
}

#[test]
fn transition_rules_message_expressions_reasons_and_field_paths() {
    let s = schema_with(json!([
        {"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"},
        {"rule": "!has(self.count) || self.count < 10", "messageExpression": "'count ' + string(self.count) + ' is too big'", "fieldPath": ".count", "reason": "FieldValueForbidden"},
        {"rule": "oldSelf.hasValue() || self.mode == 'a'", "optionalOldSelf": true, "message": "must start in mode a"},
    ]));
    let v = SchemaValidator::compile(&s, "x").unwrap();
    let obj = |mode: &str, count: i64| json!({"spec": {"mode": mode, "count": count}});
    // Create: the transition rule does not run; optionalOldSelf does (with none).
    let out = v.validate(&obj("b", 1), None);
    assert_eq!(
        out.errors.iter().map(Cause::message).collect::<Vec<_>>(),
        vec!["spec: Invalid value: \"object\": must start in mode a"]
    );
    assert!(v.validate(&obj("a", 1), None).errors.is_empty());
    // Update: the transition rule runs.
    let out = v.validate(&obj("b", 1), Some(&obj("a", 1)));
    assert_eq!(
        out.errors.iter().map(Cause::message).collect::<Vec<_>>(),
        vec!["spec: Invalid value: \"object\": mode is immutable"]
    );
    let out = v.validate(&obj("a", 12), None);
    assert_eq!(
        out.errors
            .iter()
            .map(|c| (c.reason, c.message()))
            .collect::<Vec<_>>(),
        vec![(
            "FieldValueForbidden",
            "spec.count: Forbidden: count 12 is too big".to_string()
        )]
    );
}

#[test]
fn rules_on_map_values_and_runtime_errors() {
    let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "tags": {"type": "object", "additionalProperties": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() < 4"}]}},
        "obj": {"type": "object", "properties": {"a": {"type": "string"}}, "x-kubernetes-validations": [{"rule": "self.a == 'x'"}]}}}}});
    let v = SchemaValidator::compile(&s, "x").unwrap();
    let out = v.validate(
        &json!({"spec": {"tags": {"k": "long-value"}, "obj": {}}}),
        None,
    );
    let msgs: Vec<String> = out.errors.iter().map(Cause::message).collect();
    assert_eq!(
        msgs,
        vec![
            "spec.obj: Invalid value: \"object\": no such key: a evaluating rule: self.a == 'x'"
                .to_string(),
            "spec.tags[k]: Invalid value: \"string\": failed rule: self.size() < 4".to_string(),
        ]
    );
}

#[test]
fn bad_rules_fail_the_crd_write() {
    let mut c = crd("v1beta2");
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["x-kubernetes-validations"] = json!([{"rule": "self.acr.server.reverse() == ''"}, {"rule": "self.nope(", "message": "m"}, {"rule": "true", "messageExpression": "authorizer.path('/')"}]);
    let err = check_crd(&c).unwrap_err();
    assert_eq!(err.code, 422);
    let causes = err.details.unwrap()["causes"].clone();
    let base = "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations";
    assert_eq!(causes[0]["field"], format!("{base}[0].rule"));
    assert!(
        causes[0]["message"]
            .as_str()
            .unwrap()
            .contains("compilation failed: ERROR: <input>:1:24: undeclared reference to 'reverse'"),
        "{causes}"
    );
    assert_eq!(causes[1]["field"], format!("{base}[1].rule"));
    assert!(
        causes[1]["message"]
            .as_str()
            .unwrap()
            .contains("Syntax error"),
        "{causes}"
    );
    assert_eq!(causes[2]["field"], format!("{base}[2].messageExpression"));
    assert!(
        causes[2]["message"]
            .as_str()
            .unwrap()
            .contains("not supported by kube-standin"),
        "{causes}"
    );
    assert!(err.message.starts_with("CustomResourceDefinition.apiextensions.k8s.io \"acrpullbindings.acrpull.microsoft.com\" is invalid: ["), "{}", err.message);
    let mut c = crd("v1beta2");
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["conditions"]["items"]["x-kubernetes-validations"] =
        json!([{"rule": "self.status == oldSelf.status"}]);
    assert!(check_crd(&c).is_ok(), "a map-type list's items correlate");
    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["conditions"]["x-kubernetes-list-type"] = json!("atomic");
    let err = check_crd(&c).unwrap_err();
    assert!(
        err.message
            .contains("oldSelf cannot be used on the uncorrelatable portion of the schema"),
        "{}",
        err.message
    );
    assert!(check_crd(&crd("v1beta2")).is_ok() && check_crd(&crd("v1beta1")).is_ok());
}

#[test]
fn the_invalid_error_has_the_api_server_shape() {
    let causes = validator("v1beta2")
        .validate(&v1beta2(with(good_spec(), "/auth", json!({}))), None)
        .errors;
    let s = invalid("AcrPullBinding", "acrpull.microsoft.com", "b", &causes).to_status();
    assert_eq!(s["code"], 422);
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["message"], "AcrPullBinding.acrpull.microsoft.com \"b\" is invalid: spec.auth: Invalid value: \"object\": exactly one of managedIdentity or workloadIdentity must be set");
    assert_eq!(
        s["details"],
        json!({"name": "b", "group": "acrpull.microsoft.com", "kind": "AcrPullBinding",
        "causes": [{"reason": "FieldValueInvalid", "field": "spec.auth", "message": "Invalid value: \"object\": exactly one of managedIdentity or workloadIdentity must be set"}]})
    );
}
