//! CRD validation through the API, driven with kube-rs against the project's real CRDs
//! (`deploy/crds/`): every CEL rule accepts a valid object and rejects an invalid one with
//! the right `causes[].field`, on create, update, patch, apply and `/status`; ratcheting;
//! and a CRD whose rule does not compile is rejected when it is written.

mod common;

use common::*;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::Client;
use kube_standin::Handle;
use serde_json::{json, Value};

const V1BETA2: &str =
    include_str!("../../../deploy/crds/acrpullbindings.acrpull.microsoft.com.yaml");
const V1BETA1: &str =
    include_str!("../../../deploy/crds/acrpullbindings.msi-acrpull.microsoft.com.yaml");

fn api(c: &Client, group: &str, version: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, "AcrPullBinding"),
        "acrpullbindings",
    );
    Api::namespaced_with(c.clone(), "v", &ar)
}

async fn setup() -> (Handle, Client) {
    let (h, c) = start().await;
    // Through the API, as `kubectl apply` would register them.
    let crds: Api<DynamicObject> = Api::all_with(
        c.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    for text in [V1BETA2, V1BETA1] {
        let crd: DynamicObject = serde_saphyr::from_str(text).unwrap();
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("the shipped CRDs compile");
    }
    namespace(&h, "v");
    (h, c)
}

fn binding(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
        "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn good() -> Value {
    json!({"acr": {"server": "example.azurecr.io", "scope": "repository:app:pull"},
           "auth": {"managedIdentity": {"resourceID": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i"}},
           "serviceAccountName": "app"})
}

fn set(mut v: Value, pointer: &str, x: Value) -> Value {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent).unwrap()[last] = x;
    v
}

fn invalid(r: Result<DynamicObject, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) if s.code == 422 => *s,
        other => panic!("expected 422, got {other:?}"),
    }
}

fn only_cause(s: &kube::core::Status) -> (String, String, String) {
    let d = s.details.as_ref().expect("details");
    assert_eq!(d.causes.len(), 1, "{s:?}");
    let c = &d.causes[0];
    (c.reason.clone(), c.field.clone(), c.message.clone())
}

#[tokio::test]
async fn each_cel_rule_accepts_and_rejects_with_its_field() {
    let (_h, c) = setup().await;
    let apbs = api(&c, "acrpull.microsoft.com", "v1beta2");
    let pp = PostParams::default();
    // Valid: managed identity, workload identity, an air-gapped cloud with a port.
    apbs.create(&pp, &binding("mi", good()))
        .await
        .expect("managed identity");
    apbs.create(&pp, &binding("wi", set(good(), "/auth", json!({"workloadIdentity": {"serviceAccountRef": "app", "clientID": "c", "tenantID": "t"}}))))
        .await
        .expect("workload identity");
    apbs.create(&pp, &binding("air", set(good(), "/acr", json!({"server": "registry.example.cloud:8443", "scope": "s", "environment": "AirgappedCloud",
        "cloudConfig": {"entraAuthorityHost": "https://login.example.cloud/", "resourceManagerAudience": "https://management.example.cloud/"}}))))
        .await
        .expect("air-gapped cloud");
    let cases = [
        (set(good(), "/acr/server", json!("https://example.azurecr.io/v2")), "spec.acr.server",
         "Invalid value: \"string\": server must be a fully-qualified domain name, without scheme, path or query"),
        (set(good(), "/acr/environment", json!("AirgappedCloud")), "spec.acr",
         "Invalid value: \"object\": a custom cloud configuration must be present for air-gapped cloud environments, and only for them"),
        (set(good(), "/acr/cloudConfig", json!({"entraAuthorityHost": "h", "resourceManagerAudience": "a"})), "spec.acr",
         "Invalid value: \"object\": a custom cloud configuration must be present for air-gapped cloud environments, and only for them"),
        (set(good(), "/auth/managedIdentity", json!({})), "spec.auth.managedIdentity",
         "Invalid value: \"object\": exactly one of clientID or resourceID must be set"),
        (set(good(), "/auth/workloadIdentity", json!({"serviceAccountRef": "app"})), "spec.auth",
         "Invalid value: \"object\": exactly one of managedIdentity or workloadIdentity must be set"),
        (set(good(), "/auth", json!({"workloadIdentity": {"serviceAccountRef": "app", "tenantID": "t"}})), "spec.auth.workloadIdentity",
         "Invalid value: \"object\": clientID and tenantID must be provided together, if at all"),
    ];
    for (i, (spec, field, message)) in cases.into_iter().enumerate() {
        let s = invalid(apbs.create(&pp, &binding(&format!("bad{i}"), spec)).await);
        assert_eq!(
            only_cause(&s),
            ("FieldValueInvalid".into(), field.into(), message.into())
        );
        assert_eq!(
            s.message,
            format!(
                "AcrPullBinding.acrpull.microsoft.com \"bad{i}\" is invalid: {field}: {message}"
            )
        );
        assert_eq!(s.reason, "Invalid");
    }
    // OpenAPI checks of both CRDs.
    let s = invalid(
        apbs.create(
            &pp,
            &binding("env", set(good(), "/acr/environment", json!("Moon"))),
        )
        .await,
    );
    assert_eq!(
        s.details.as_ref().unwrap().causes[0].field,
        "spec.acr.environment"
    );
    assert_eq!(
        s.details.as_ref().unwrap().causes[0].reason,
        "FieldValueNotSupported"
    );
    let s = invalid(
        apbs.create(&pp, &binding("scope", set(good(), "/acr/scope", json!(""))))
            .await,
    );
    assert_eq!(only_cause(&s).1, "spec.acr.scope");
    let legacy = api(&c, "msi-acrpull.microsoft.com", "v1beta1");
    let v1: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "msi-acrpull.microsoft.com/v1beta1", "kind": "AcrPullBinding",
        "metadata": {"name": "old"}, "spec": {"scope": "repository:x:pull"}}),
    )
    .unwrap();
    let s = invalid(legacy.create(&pp, &v1).await);
    assert_eq!(
        only_cause(&s),
        (
            "FieldValueRequired".into(),
            "spec.acrServer".into(),
            "Required value".into()
        )
    );
    let mut v1 = v1;
    v1.data["spec"]["acrServer"] = json!("example.azurecr.io");
    legacy
        .create(&pp, &v1)
        .await
        .expect("v1beta1 with acrServer");
    // dryRun is validated too.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    invalid(
        apbs.create(&dry, &binding("dry", set(good(), "/auth", json!({}))))
            .await,
    );
}

#[tokio::test]
async fn updates_patches_apply_and_status_are_validated() {
    let (h, c) = setup().await;
    let apbs = api(&c, "acrpull.microsoft.com", "v1beta2");
    let b = apbs
        .create(&PostParams::default(), &binding("b", good()))
        .await
        .unwrap();
    // Merge patch.
    let s = invalid(
        apbs.patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"auth": {"workloadIdentity": {"serviceAccountRef": "x"}}}}),
            ),
        )
        .await,
    );
    assert_eq!(only_cause(&s).1, "spec.auth");
    // JSON patch.
    let ops = serde_json::from_value(
        json!([{"op": "replace", "path": "/spec/acr/server", "value": "a/b"}]),
    )
    .unwrap();
    let s = invalid(
        apbs.patch("b", &PatchParams::default(), &Patch::<Value>::Json(ops))
            .await,
    );
    assert_eq!(only_cause(&s).1, "spec.acr.server");
    // PUT.
    let mut put = b.clone();
    put.data["spec"]["acr"]["environment"] = json!("AirgappedCloud");
    let s = invalid(apbs.replace("b", &PostParams::default(), &put).await);
    assert_eq!(only_cause(&s).1, "spec.acr");
    // Server-side apply, creating and updating.
    let ssa = PatchParams::apply("tester");
    let mut applied = serde_json::to_value(binding(
        "applied",
        set(
            good(),
            "/auth/managedIdentity",
            json!({"clientID": "c", "resourceID": "r"}),
        ),
    ))
    .unwrap();
    let s = invalid(apbs.patch("applied", &ssa, &Patch::Apply(&applied)).await);
    assert_eq!(only_cause(&s).1, "spec.auth.managedIdentity");
    applied["spec"]["auth"]["managedIdentity"] = json!({"clientID": "c"});
    apbs.patch("applied", &ssa, &Patch::Apply(&applied))
        .await
        .expect("valid apply");
    // Status: the schema of status (enum, formats, list-map keys).
    let s = invalid(
        apbs.patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Sleeping"}})),
        )
        .await,
    );
    let causes = &s.details.as_ref().unwrap().causes;
    assert_eq!(
        (causes[0].reason.as_str(), causes[0].field.as_str()),
        ("FieldValueNotSupported", "status.phase")
    );
    assert_eq!(
        causes[1].field, "<nil>",
        "a blocking error keeps the CEL rules from running, as in kube-apiserver"
    );
    let cond = |t: &str| json!({"type": t, "status": "True", "reason": "R", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let s = invalid(
        apbs.patch_status(
            "b",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": [cond("Ready"), cond("Ready")]}})),
        )
        .await,
    );
    assert_eq!(only_cause(&s).1, "status.conditions[1]");
    apbs.patch_status(
        "b",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Ready", "conditions": [cond("Ready")]}})),
    )
    .await
    .expect("valid status");
    // The rejected writes changed nothing.
    let now = h
        .get("acrpull.microsoft.com/v1beta2", "AcrPullBinding", "v", "b")
        .unwrap();
    assert_eq!(now["spec"], serde_json::to_value(&b).unwrap()["spec"]);
}

#[tokio::test]
async fn ratcheting_lets_unchanged_invalid_values_stay() {
    let (h, c) = setup().await;
    let apbs = api(&c, "acrpull.microsoft.com", "v1beta2");
    // Stored before the rule existed (the handle writes without validation).
    h.apply(json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
        "metadata": {"name": "old", "namespace": "v"}, "spec": set(good(), "/acr/server", json!("https://old.example"))}))
        .unwrap();
    h.clear_requests();
    apbs.patch(
        "old",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"serviceAccountName": "other"}})),
    )
    .await
    .expect("an unchanged invalid value is ratcheted");
    let rec = h
        .requests()
        .into_iter()
        .find(|r| r.verb == "patch")
        .unwrap();
    assert_eq!(rec.warnings, vec!["spec.acr.server: Invalid value: \"string\": server must be a fully-qualified domain name, without scheme, path or query".to_string()]);
    let s = invalid(
        apbs.patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"acr": {"server": "https://new.example"}}})),
        )
        .await,
    );
    assert_eq!(only_cause(&s).1, "spec.acr.server");
    apbs.patch(
        "old",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"acr": {"server": "new.example"}}})),
    )
    .await
    .expect("fixed");
}

#[tokio::test]
async fn a_crd_whose_rules_do_not_compile_is_rejected() {
    let (h, c) = start().await;
    let crds: Api<DynamicObject> = Api::all_with(
        c.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let mut crd: DynamicObject = serde_saphyr::from_str(V1BETA2).unwrap();
    crd.data["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["acr"]["x-kubernetes-validations"][0]["rule"] =
        json!("self.environment.quantity() > 0");
    let s = match crds.create(&PostParams::default(), &crd).await {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected 422, got {other:?}"),
    };
    assert_eq!(s.code, 422);
    let (reason, field, message) = only_cause(&s);
    assert_eq!(reason, "FieldValueInvalid");
    assert_eq!(field, "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[acr].x-kubernetes-validations[0].rule");
    assert!(
        message.contains(
            "compilation failed: ERROR: <input>:1:26: undeclared reference to 'quantity'"
        ),
        "{message}"
    );
    assert!(h
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "acrpullbindings.acrpull.microsoft.com"
        )
        .is_none());
    let r = api(&c, "acrpull.microsoft.com", "v1beta2")
        .list(&Default::default())
        .await;
    assert!(
        matches!(r, Err(kube::Error::Api(s)) if s.code == 404),
        "the type is not served"
    );
}
