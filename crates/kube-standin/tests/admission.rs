//! ValidatingAdmissionPolicies, driven with kube-rs: the shipped `deploy/admission.yaml`
//! against the controller's own requests (as `system:serviceaccount:acrpull-system:acrpull`,
//! authenticated with a ServiceAccount token and authorized by the shipped `deploy/rbac.yaml`)
//! and against hostile ones; Warn and Audit actions; parameters; failure policies; match
//! constraints; the policy objects' own validation.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::Client;
use kube_standin::Handle;
use serde_json::{json, Value};

const CRDS: [&str; 2] = [
    include_str!("../../../deploy/crds/acrpullbindings.acrpull.microsoft.com.yaml"),
    include_str!("../../../deploy/crds/acrpullbindings.msi-acrpull.microsoft.com.yaml"),
];
const ADMISSION: &str = include_str!("../../../deploy/admission.yaml");
const RBAC: &str = include_str!("../../../deploy/rbac.yaml");
const CONTROLLER: &str = "system:serviceaccount:acrpull-system:acrpull";
const LABEL: &str = "acr.microsoft.com/binding";
const AUDIENCE: &str = "api://AzureCRTokenExchange";

/// A client authenticated with a token of the ServiceAccount `ns/name` (which must exist):
/// every request runs as `system:serviceaccount:NS:NAME` under RBAC.
fn client_as_service_account(h: &Handle, ns: &str, name: &str) -> Client {
    let token = h
        .service_account_token(ns, name, std::time::Duration::from_secs(3600))
        .expect("token");
    client_with_token(h, &token)
}

fn resource(obj: &Value) -> ApiResource {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", obj["apiVersion"].as_str().unwrap()),
    };
    let kind = obj["kind"].as_str().unwrap();
    let plural = match kind {
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies".to_string(),
        "CustomResourceDefinition" => "customresourcedefinitions".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

/// Create every document of `yaml` through the API as the admin (so the policy objects'
/// own validation runs, as `kubectl apply` would run it).
async fn create_all(c: &Client, yaml: &str) {
    for doc in kube_standin::handle::parse_documents(yaml).expect("yaml") {
        let ar = resource(&doc);
        let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
            None => Api::all_with(c.clone(), &ar),
        };
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {}: {e}", doc["metadata"]["name"]));
    }
}

fn status(r: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A stand-in with the CRDs, the shipped policies and RBAC, namespace `team`,
/// ServiceAccount `app` and a v1beta2 binding `b1`; returns the handle, the admin client, the
/// controller's client (its ServiceAccount's token) and the binding's uid.
async fn shipped() -> (Handle, Client, Client, String) {
    let (h, admin) = start().await;
    for crd in CRDS {
        h.apply_yaml(crd).expect("crd");
    }
    create_all(&admin, ADMISSION).await;
    namespace(&h, "team");
    namespace(&h, "acrpull-system");
    h.apply_yaml(RBAC).expect("rbac");
    h.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "team"},
                   "imagePullSecrets": [{"name": "user-secret"}]}))
        .unwrap();
    let b = h
        .apply(json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
            "metadata": {"name": "b1", "namespace": "team"},
            "spec": {"acr": {"server": "example.azurecr.io", "scope": "repository:app:pull"},
                     "auth": {"workloadIdentity": {"serviceAccountRef": "app"}}, "serviceAccountName": "app"}}))
        .unwrap();
    let uid = b["metadata"]["uid"].as_str().unwrap().to_string();
    let controller = client_as_service_account(&h, "acrpull-system", "acrpull");
    (h, admin, controller, uid)
}

fn owner(uid: &str) -> Value {
    json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding", "name": "b1",
           "uid": uid, "controller": true, "blockOwnerDeletion": true})
}

fn pull_secret(name: &str, ty: &str, labels: Value, owners: Value) -> Secret {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "team", "labels": labels, "ownerReferences": owners},
        "type": ty, "data": {".dockerconfigjson": "e30="}}))
    .unwrap()
}

/// A TokenRequest as the controller sends it: 600 s, the lifetime the shipped policy allows.
fn token_request(audiences: &[&str]) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
           "spec": {"audiences": audiences, "expirationSeconds": 600}})
}

async fn request_token(c: &Client, audiences: &[&str]) -> Result<Value, kube::Error> {
    let req = http::Request::post("/api/v1/namespaces/team/serviceaccounts/app/token")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&token_request(audiences)).unwrap())
        .unwrap();
    c.request::<Value>(req).await
}

fn forbidden_by(s: &kube::core::Status, policy: &str, resource_name: &str, message: &str) {
    let full = format!(
        "ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: {message}"
    );
    assert_eq!(s.code, 403, "{s:?}");
    assert_eq!(s.reason, "Forbidden", "{s:?}");
    assert_eq!(
        s.message,
        format!("{resource_name} is forbidden: {full}"),
        "{s:?}"
    );
    let d = s.details.as_ref().expect("details");
    assert_eq!(d.causes[0].message, full);
}

#[tokio::test]
async fn shipped_policies_admit_the_controllers_requests() {
    let (h, _admin, controller, uid) = shipped().await;
    let secrets: Api<Secret> = Api::namespaced(controller.clone(), "team");
    let sas: Api<ServiceAccount> = Api::namespaced(controller.clone(), "team");
    let pp = PostParams {
        field_manager: Some("acrpull".into()),
        ..Default::default()
    };
    // The controller's create of a labelled, owned pull secret...
    let labels = json!({LABEL: "b1"});
    let s = secrets
        .create(
            &pp,
            &pull_secret(
                "acr-pull-b1",
                "kubernetes.io/dockerconfigjson",
                labels,
                json!([owner(&uid)]),
            ),
        )
        .await
        .expect("create pull secret");
    // ... its refresh (a merge patch with the resourceVersion, labels, owner, type, data) ...
    let patch = json!({"metadata": {"resourceVersion": s.metadata.resource_version, "labels": {LABEL: "b1"},
                                    "ownerReferences": [owner(&uid)]},
                       "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30K"}});
    secrets
        .patch(
            "acr-pull-b1",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("refresh pull secret");
    // ... attaching it to the ServiceAccount and detaching it again ...
    for list in [
        json!([{"name": "acr-pull-b1"}, {"name": "user-secret"}]),
        json!([{"name": "user-secret"}]),
    ] {
        sas.patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"imagePullSecrets": list})),
        )
        .await
        .expect("imagePullSecrets patch");
    }
    // ... the workload-identity TokenRequest with the one audience ...
    let tr = request_token(&controller, &[AUDIENCE])
        .await
        .expect("token request");
    assert!(tr["status"]["token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    // ... the binding's status ...
    let bindings: Api<DynamicObject> = Api::namespaced_with(
        controller.clone(),
        "team",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("acrpull.microsoft.com", "v1beta2", "AcrPullBinding"),
            "acrpullbindings",
        ),
    );
    bindings
        .patch_status(
            "b1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Ready"}})),
        )
        .await
        .expect("status");
    // ... and deleting the pull secret.
    secrets
        .delete("acr-pull-b1", &DeleteParams::default())
        .await
        .expect("delete");
    let writes: Vec<_> = h
        .requests()
        .into_iter()
        .filter(|r| r.verb != "get" && r.verb != "list")
        .collect();
    assert!(writes.iter().all(|r| r.status < 300), "{writes:#?}");
    // All seven were the controller's, authenticated by its token and allowed by its RBAC.
    assert_eq!(
        writes.iter().filter(|r| r.user == CONTROLLER).count(),
        7,
        "{writes:#?}"
    );
}

#[tokio::test]
async fn shipped_policies_deny_hostile_requests() {
    let (h, admin, controller, uid) = shipped().await;
    let secrets: Api<Secret> = Api::namespaced(controller.clone(), "team");
    let pp = PostParams::default();
    let labels = json!({LABEL: "b1"});
    let s = status(
        secrets
            .create(
                &pp,
                &pull_secret("opaque", "Opaque", labels.clone(), json!([owner(&uid)])),
            )
            .await,
    );
    forbidden_by(
        &s,
        "acrpull-secret-writes",
        "secrets \"opaque\"",
        "acrpull may only write or delete Secrets of type kubernetes.io/dockerconfigjson",
    );
    let s = status(
        secrets
            .create(
                &pp,
                &pull_secret(
                    "unlabelled",
                    "kubernetes.io/dockerconfigjson",
                    json!({}),
                    json!([owner(&uid)]),
                ),
            )
            .await,
    );
    forbidden_by(&s, "acrpull-secret-writes", "secrets \"unlabelled\"",
        "the label acr.microsoft.com/binding of a Secret acrpull writes or deletes must be the name of the AcrPullBinding that controls it (\"b1\"), not \"\"");
    let s = status(
        secrets
            .create(
                &pp,
                &pull_secret(
                    "ownerless",
                    "kubernetes.io/dockerconfigjson",
                    labels.clone(),
                    json!([]),
                ),
            )
            .await,
    );
    forbidden_by(&s, "acrpull-secret-writes", "secrets \"ownerless\"",
        "a Secret written by acrpull must have exactly one ownerReference, a controller reference to an AcrPullBinding");
    // Taking over somebody else's dockerconfigjson Secret by adding the binding as owner.
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), "team");
    let mut foreign = pull_secret(
        "foreign",
        "kubernetes.io/dockerconfigjson",
        json!({}),
        json!([]),
    );
    foreign.metadata.owner_references = None;
    admin_secrets
        .create(&pp, &foreign)
        .await
        .expect("admin writes anything");
    let takeover = json!({"metadata": {"labels": {LABEL: "b1"}, "ownerReferences": [owner(&uid)]}});
    let s = status(
        secrets
            .patch("foreign", &PatchParams::default(), &Patch::Merge(&takeover))
            .await,
    );
    forbidden_by(&s, "acrpull-secret-writes", "secrets \"foreign\"",
        "acrpull may only write the pull secret of the AcrPullBinding that controls it (\"acr-pull-b1\"), not \"foreign\"");
    let s = status(secrets.delete("foreign", &DeleteParams::default()).await);
    forbidden_by(&s, "acrpull-secret-writes", "secrets \"foreign\"",
        "acrpull may only delete Secrets that an AcrPullBinding controls (a controller ownerReference)");
    // ServiceAccounts: foreign pull secrets, other fields.
    let sas: Api<ServiceAccount> = Api::namespaced(controller.clone(), "team");
    let add = json!({"imagePullSecrets": [{"name": "user-secret"}, {"name": "stolen"}]});
    let s = status(
        sas.patch("app", &PatchParams::default(), &Patch::Merge(&add))
            .await,
    );
    forbidden_by(&s, "acrpull-serviceaccount-updates", "serviceaccounts \"app\"",
        "acrpull may only add or remove its own pull secrets (acr-pull-*, *-msi-acrpull-secret) in imagePullSecrets; added: stolen; removed:");
    let relabel = json!({"metadata": {"labels": {"owned-by": "acrpull"}}});
    let s = status(
        sas.patch("app", &PatchParams::default(), &Patch::Merge(&relabel))
            .await,
    );
    forbidden_by(
        &s,
        "acrpull-serviceaccount-updates",
        "serviceaccounts \"app\"",
        "acrpull may change nothing on a ServiceAccount but the imagePullSecrets it manages",
    );
    // TokenRequests for another audience, or more than one.
    for auds in [
        vec!["https://kubernetes.default.svc"],
        vec![AUDIENCE, "other"],
    ] {
        let s = status(request_token(&controller, &auds).await);
        forbidden_by(&s, "acrpull-token-request", "serviceaccounts \"app\"",
            "acrpull may request ServiceAccount tokens only for the single audience \"api://AzureCRTokenExchange\"");
    }
    // The same requests from anybody else are not the policies' business.
    admin_secrets
        .create(&pp, &pull_secret("opaque", "Opaque", labels, json!([])))
        .await
        .expect("admin");
    Api::<ServiceAccount>::namespaced(admin.clone(), "team")
        .patch("app", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .expect("admin");
    request_token(&admin, &["https://kubernetes.default.svc"])
        .await
        .expect("admin token");
    // The request log names the policy that denied each request, and only those.
    let log = h.requests();
    assert!(log.iter().any(|r| r.subresource == "token"
        && r.status == 403
        && r.denied_by_policy == "acrpull-token-request"));
    assert!(log
        .iter()
        .filter(|r| r.user != CONTROLLER)
        .all(|r| r.denied_by_policy.is_empty()));
    assert_eq!(
        log.iter()
            .filter(|r| r.user == CONTROLLER && r.status == 403)
            .count(),
        log.iter()
            .filter(|r| r.denied_by_policy.starts_with("acrpull-"))
            .count()
    );
}

/// `Handle::apply_yaml_checked` writes as `kubectl apply --server-side` does, through the API:
/// a policy that does not compile is refused (where `apply_yaml` stores it), a valid one is
/// defaulted, applying again changes nothing, and the writes are in the request log.
#[tokio::test]
async fn checked_apply_validates_and_defaults_like_kubectl_apply() {
    let (h, _) = start().await;
    let broken = vap(
        "broken",
        json!(["configmaps"]),
        json!({"validations": [{"expression": "object.data.x ==="}]}),
    );
    let e = h
        .apply_yaml_checked(&broken.to_string())
        .await
        .expect_err("a policy that does not compile");
    assert!(e.to_string().contains("compil"), "{e}");
    assert!(h
        .get(
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "",
            "broken"
        )
        .is_none());
    h.apply_yaml(&broken.to_string())
        .expect("the unchecked handle stores it");

    let good = vap(
        "good",
        json!(["configmaps"]),
        json!({"validations": [{"expression": "true"}]}),
    );
    let stored = h.apply_yaml_checked(&good.to_string()).await.unwrap();
    assert_eq!(
        stored[0]["spec"]["failurePolicy"], "Fail",
        "defaulted: {stored:#?}"
    );
    let rv = h.resource_version();
    h.apply_yaml_checked(&good.to_string()).await.unwrap();
    assert_eq!(h.resource_version(), rv, "applying again changes nothing");
    let applies: Vec<_> = h
        .requests()
        .into_iter()
        .filter(|r| r.resource == "validatingadmissionpolicies")
        .map(|r| (r.verb, r.name, r.status, r.user))
        .collect();
    assert_eq!(
        applies,
        [
            ("patch".into(), "broken".into(), 422, "system:admin".into()),
            ("patch".into(), "good".into(), 201, "system:admin".into()),
            ("patch".into(), "good".into(), 200, "system:admin".into()),
        ]
    );
}

/// An ownerless Secret of a pull secret's name is never adopted (acrpull and the old
/// controller always set the controller reference, so nobody's binding wrote it): labelling
/// it is denied because a written Secret must be controlled by a binding, and adding that
/// reference too is denied because an update needs a Secret a binding already controls.
#[tokio::test]
async fn the_adoption_of_an_ownerless_secret_is_denied() {
    let (_h, admin, controller, uid) = shipped().await;
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), "team");
    let mut legacy = pull_secret(
        "acr-pull-b1",
        "kubernetes.io/dockerconfigjson",
        json!({}),
        json!([]),
    );
    legacy.metadata.owner_references = None;
    legacy.metadata.labels = None;
    let legacy = admin_secrets
        .create(&PostParams::default(), &legacy)
        .await
        .unwrap();
    // The patch src/k8s/pull_secret.rs sends to label a Secret its binding controls.
    let patch = json!({"metadata": {"resourceVersion": legacy.metadata.resource_version, "labels": {LABEL: "b1"}}});
    let controller_secrets = Api::<Secret>::namespaced(controller, "team");
    let s = status(
        controller_secrets
            .patch(
                "acr-pull-b1",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
    );
    forbidden_by(&s, "acrpull-secret-writes", "secrets \"acr-pull-b1\"",
        "a Secret written by acrpull must have exactly one ownerReference, a controller reference to an AcrPullBinding");
    let takeover = json!({"metadata": {"resourceVersion": legacy.metadata.resource_version,
        "labels": {LABEL: "b1"}, "ownerReferences": [owner(&uid)]}});
    let s = status(
        controller_secrets
            .patch(
                "acr-pull-b1",
                &PatchParams::default(),
                &Patch::Merge(&takeover),
            )
            .await,
    );
    forbidden_by(&s, "acrpull-secret-writes", "secrets \"acr-pull-b1\"",
        "acrpull may only update Secrets that an AcrPullBinding of the same name and API group already controls");
    let still = admin_secrets.get("acr-pull-b1").await.unwrap();
    assert!(
        still.metadata.labels.is_none(),
        "the denied patch changed nothing"
    );
}

fn vap(name: &str, resources: Value, extra: Value) -> Value {
    let mut p = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"],
                 "operations": ["CREATE", "UPDATE", "DELETE"], "resources": resources}]}}});
    for (k, v) in extra.as_object().unwrap() {
        p["spec"][k] = v.clone();
    }
    p
}

fn vapb(name: &str, policy: &str, actions: Value, extra: Value) -> Value {
    let mut b = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name}, "spec": {"policyName": policy, "validationActions": actions}});
    for (k, v) in extra.as_object().unwrap() {
        b["spec"][k] = v.clone();
    }
    b
}

async fn create(c: &Client, obj: Value) -> Result<DynamicObject, kube::Error> {
    let ar = resource(&obj);
    let d: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    };
    api.create(&PostParams::default(), &d).await
}

fn cm(name: &str, ns: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "data": data}))
        .unwrap()
}

#[tokio::test]
async fn warn_and_audit_actions_and_audit_annotations() {
    let (h, c) = start().await;
    namespace(&h, "w");
    create(&c, vap("few-keys", json!(["configmaps"]), json!({
        "validations": [{"expression": "size(object.data) < 2", "messageExpression": "'has ' + string(size(object.data)) + ' keys'"}],
        "auditAnnotations": [{"key": "keys", "valueExpression": "string(size(object.data))"}]}))).await.unwrap();
    create(
        &c,
        vapb("few-keys", "few-keys", json!(["Warn", "Audit"]), json!({})),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "w");
    cms.create(
        &PostParams::default(),
        &cm("big", "w", json!({"a": "1", "b": "2", "c": "3"})),
    )
    .await
    .expect("Warn and Audit do not deny");
    let rec = h
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.verb == "create" && r.resource == "configmaps")
        .unwrap();
    assert_eq!(rec.status, 201);
    assert_eq!(rec.warnings, vec!["Validation failed for ValidatingAdmissionPolicy 'few-keys' with binding 'few-keys': has 3 keys".to_string()]);
    let failure: Value = serde_json::from_str(
        &rec.audit_annotations["validation.policy.admission.k8s.io/validation_failure"],
    )
    .unwrap();
    assert_eq!(
        failure,
        json!([{"message": "has 3 keys", "policy": "few-keys", "binding": "few-keys",
                                "expressionIndex": 0, "validationActions": ["Warn", "Audit"]}])
    );
    assert_eq!(rec.audit_annotations["few-keys/keys"], "3");
    // On the wire: a Warning header, as kubectl prints it.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/namespaces/w/configmaps", h.url()))
        .bearer_auth(h.admin_token())
        .json(&json!({"metadata": {"name": "big2"}, "data": {"a": "1", "b": "2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers().get("warning").unwrap(),
        "299 - \"Validation failed for ValidatingAdmissionPolicy 'few-keys' with binding 'few-keys': has 2 keys\""
    );
    // A passing request has neither.
    cms.create(&PostParams::default(), &cm("small", "w", json!({"a": "1"})))
        .await
        .unwrap();
    let rec = h
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.verb == "create" && r.name.is_empty() && r.status == 201)
        .unwrap();
    assert!(rec.warnings.is_empty());
    assert!(!rec
        .audit_annotations
        .contains_key("validation.policy.admission.k8s.io/validation_failure"));
}

#[tokio::test]
async fn params_from_a_configmap_and_parameter_not_found() {
    let (h, c) = start().await;
    namespace(&h, "apps");
    namespace(&h, "policy-params");
    create(&c, vap("name-prefix", json!(["secrets"]), json!({
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "validations": [{"expression": "object.metadata.name.startsWith(params.data.prefix)",
                         "messageExpression": "'name must start with ' + params.data.prefix", "reason": "Forbidden"}]}))).await.unwrap();
    let binding = |action: &str| {
        vapb(
            "name-prefix",
            "name-prefix",
            json!(["Deny"]),
            json!({
        "paramRef": {"name": "prefix", "namespace": "policy-params", "parameterNotFoundAction": action}}),
        )
    };
    create(&c, binding("Deny")).await.unwrap();
    let params: Api<ConfigMap> = Api::namespaced(c.clone(), "policy-params");
    params
        .create(
            &PostParams::default(),
            &cm("prefix", "policy-params", json!({"prefix": "ok-"})),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "apps");
    let secret =
        |n: &str| -> Secret { serde_json::from_value(json!({"metadata": {"name": n}})).unwrap() };
    secrets
        .create(&PostParams::default(), &secret("ok-1"))
        .await
        .expect("matches the prefix");
    let s = status(
        secrets
            .create(&PostParams::default(), &secret("bad-1"))
            .await,
    );
    assert_eq!(s.code, 403);
    assert!(
        s.message
            .ends_with("denied request: name must start with ok-"),
        "{}",
        s.message
    );
    // The parameter object is gone: Deny denies everything the policy matches...
    params
        .delete("prefix", &DeleteParams::default())
        .await
        .unwrap();
    let s = status(
        secrets
            .create(&PostParams::default(), &secret("ok-2"))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(s.message, "secrets \"ok-2\" is forbidden: ValidatingAdmissionPolicy 'name-prefix' with binding 'name-prefix' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction");
    // ... and Allow lets everything through.
    let vapbs: Api<DynamicObject> = Api::all_with(c.clone(), &resource(&binding("Allow")));
    vapbs
        .delete("name-prefix", &DeleteParams::default())
        .await
        .unwrap();
    create(&c, binding("Allow")).await.unwrap();
    secrets
        .create(&PostParams::default(), &secret("anything"))
        .await
        .expect("no params, Allow");
    // A selector picks several parameter objects: each is evaluated.
    vapbs
        .delete("name-prefix", &DeleteParams::default())
        .await
        .unwrap();
    create(&c, vapb("name-prefix", "name-prefix", json!(["Deny"]), json!({
        "paramRef": {"selector": {"matchLabels": {"policy": "prefix"}}, "namespace": "policy-params", "parameterNotFoundAction": "Allow"}}))).await.unwrap();
    for (n, p) in [("a", "x-"), ("b", "x-y")] {
        let mut m = cm(n, "policy-params", json!({"prefix": p}));
        m.metadata.labels = Some([("policy".to_string(), "prefix".to_string())].into());
        params.create(&PostParams::default(), &m).await.unwrap();
    }
    secrets
        .create(&PostParams::default(), &secret("x-y-1"))
        .await
        .expect("both prefixes match");
    let s = status(secrets.create(&PostParams::default(), &secret("x-1")).await);
    assert!(
        s.message.ends_with("name must start with x-y"),
        "{}",
        s.message
    );
}

#[tokio::test]
async fn failure_policy_decides_about_errors() {
    let (h, c) = start().await;
    namespace(&h, "f");
    for (name, fp) in [("fail", "Fail"), ("ignore", "Ignore")] {
        create(&c, vap(name, json!(["configmaps"]), json!({"failurePolicy": fp,
            "matchConditions": [{"name": "only-mine", "expression": format!("object.metadata.name.startsWith('{name}')")}],
            "validations": [{"expression": "object.data.missing == 'x'"}]}))).await.unwrap();
        create(&c, vapb(name, name, json!(["Deny"]), json!({})))
            .await
            .unwrap();
    }
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "f");
    let s = status(
        cms.create(
            &PostParams::default(),
            &cm("fail-1", "f", json!({"a": "b"})),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(s.message, "configmaps \"fail-1\" is forbidden: ValidatingAdmissionPolicy 'fail' with binding 'fail' denied request: expression 'object.data.missing == 'x'' resulted in error: no such key: missing");
    cms.create(
        &PostParams::default(),
        &cm("ignore-1", "f", json!({"a": "b"})),
    )
    .await
    .expect("Ignore admits on error");
    cms.create(&PostParams::default(), &cm("other", "f", json!({"a": "b"})))
        .await
        .expect("matchConditions exclude it");
    // A match condition that errors is a failure too.
    create(
        &c,
        vap(
            "cond",
            json!(["configmaps"]),
            json!({
        "matchConditions": [{"name": "broken", "expression": "object.metadata.labels.team == 'x'"}],
        "validations": [{"expression": "true"}]}),
        ),
    )
    .await
    .unwrap();
    create(&c, vapb("cond", "cond", json!(["Deny"]), json!({})))
        .await
        .unwrap();
    let s = status(
        cms.create(&PostParams::default(), &cm("other-2", "f", json!({})))
            .await,
    );
    assert!(s.message.ends_with("denied request: expression 'object.metadata.labels.team == 'x'' resulted in error: no such key: labels"), "{}", s.message);
}

/// A TokenRequest is defaulted and validated before admission, as the token REST storage
/// does it: a policy sees the defaulted object (lifetime, audiences, name and namespace) and
/// the authenticated user; a lifetime under 10 minutes is a 422 the policy never sees; a
/// denied request gets no token.
#[tokio::test]
async fn token_requests_are_defaulted_and_validated_before_admission() {
    let (h, c) = start().await;
    namespace(&h, "team");
    h.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "team"}}))
        .unwrap();
    let mut p = vap(
        "see-tokens",
        json!(["serviceaccounts/token"]),
        json!({
        "validations": [{"expression": "false", "reason": "Forbidden",
            "messageExpression": "'saw ' + request.kind.group + '/' + request.kind.kind + ' ' + request.operation + ' ' + string(object.spec.expirationSeconds) + ' ' + object.spec.audiences.join(',') + ' ' + object.metadata.namespace + '/' + object.metadata.name + ' ' + string(object.status.token == '') + ' as ' + request.userInfo.username"}]}),
    );
    p["spec"]["matchConstraints"]["resourceRules"][0]["operations"] = json!(["CREATE"]);
    create(&c, p).await.unwrap();
    create(
        &c,
        vapb("see-tokens", "see-tokens", json!(["Deny"]), json!({})),
    )
    .await
    .unwrap();
    let post = |spec: Value| {
        let req = http::Request::post("/api/v1/namespaces/team/serviceaccounts/app/token")
            .header("content-type", "application/json")
            .body(
                serde_json::to_vec(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}))
                    .unwrap(),
            )
            .unwrap();
        c.request::<Value>(req)
    };
    let s = status(post(json!({"expirationSeconds": 60})).await);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
    assert!(
        s.message.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{}",
        s.message
    );
    let s = status(post(json!({})).await);
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
    assert_eq!(
        s.message,
        format!(
            "serviceaccounts \"app\" is forbidden: ValidatingAdmissionPolicy 'see-tokens' with binding 'see-tokens' denied request: \
             saw authentication.k8s.io/TokenRequest CREATE 3600 {} team/app true as system:admin",
            h.issuer()
        )
    );
    assert!(
        h.issued_tokens().is_empty(),
        "a denied request gets no token"
    );
}

#[tokio::test]
async fn match_constraints_select_requests() {
    let (h, c) = start().await;
    h.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "labels": {"env": "prod"}}})).unwrap();
    namespace(&h, "dev");
    create(&c, vap("prod-only", json!(["configmaps"]), json!({
        "matchConstraints": {"namespaceSelector": {"matchLabels": {"env": "prod"}},
            "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
            "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "DELETE"], "resources": ["configmaps"]}],
            "excludeResourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["*"], "resources": ["configmaps"], "resourceNames": ["no-exempt"]}]},
        "validations": [{"expression": "request.operation == 'DELETE' ? oldObject.metadata.name != 'keep' : !object.metadata.name.startsWith('no')",
                         "message": "refused", "reason": "Forbidden"}]}))).await.unwrap();
    create(
        &c,
        vapb("prod-only", "prod-only", json!(["Deny"]), json!({})),
    )
    .await
    .unwrap();
    let api = |ns: &str| -> Api<ConfigMap> { Api::namespaced(c.clone(), ns) };
    let pp = PostParams::default();
    assert_eq!(
        status(api("prod").create(&pp, &cm("no", "prod", json!({}))).await).code,
        403
    );
    api("dev")
        .create(&pp, &cm("no", "dev", json!({})))
        .await
        .expect("namespace selector");
    let mut skipped = cm("no", "prod", json!({}));
    skipped.metadata.labels = Some([("skip".to_string(), "1".to_string())].into());
    api("prod")
        .create(&pp, &skipped)
        .await
        .expect("object selector");
    api("prod")
        .create(&pp, &cm("keep", "prod", json!({})))
        .await
        .unwrap();
    api("prod")
        .delete("no", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        status(api("prod").delete("keep", &DeleteParams::default()).await).code,
        403,
        "DELETE sees oldObject"
    );
    // deletecollection runs admission per item and fails with the first denial.
    let s = status(
        api("prod")
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await,
    );
    assert_eq!(s.code, 403, "{s:?}");
    assert!(
        s.message.starts_with("configmaps \"keep\" is forbidden"),
        "{}",
        s.message
    );
    // Exempt by name, and UPDATE is not among the operations.
    api("prod")
        .create(&pp, &cm("no-exempt", "prod", json!({})))
        .await
        .expect("excluded by name");
    api("prod")
        .patch(
            "keep",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"x": "y"}})),
        )
        .await
        .expect("UPDATE not matched");
}

#[tokio::test]
async fn request_namespace_object_and_variables_in_expressions() {
    let (h, c) = start().await;
    for crd in CRDS {
        h.apply_yaml(crd).unwrap();
    }
    h.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"tier": "gold"}}})).unwrap();
    create(&c, vap("observe", json!(["acrpullbindings/status", "acrpullbindings"]), json!({
        "variables": [{"name": "who", "expression": "request.userInfo.username"},
                      {"name": "what", "expression": "request.operation + '/' + request.kind.kind + '/' + request.resource.resource + '/' + request.?subResource.orValue('')"}],
        "auditAnnotations": [
            {"key": "request", "valueExpression": "variables.who + ' ' + variables.what + ' ' + request.namespace + '/' + request.name + ' dryRun=' + string(request.dryRun) + ' ' + request.options.kind"},
            {"key": "groups", "valueExpression": "request.userInfo.groups.join(',')"},
            {"key": "tier", "valueExpression": "namespaceObject.metadata.labels.tier"},
            {"key": "phase", "valueExpression": "has(object.status) ? object.status.phase : null"}]}))).await.unwrap();
    create(&c, vapb("observe", "observe", json!(["Audit"]), json!({})))
        .await
        .unwrap();
    // A team's deployer: a ServiceAccount whose Role lets it create bindings and write their
    // status, so `request.userInfo` is what authentication made of its token.
    h.apply_yaml(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: deployer, namespace: team}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: deployer, namespace: team}\n\
         rules:\n- {apiGroups: [acrpull.microsoft.com], resources: [acrpullbindings], verbs: [create]}\n\
         - {apiGroups: [acrpull.microsoft.com], resources: [acrpullbindings/status], verbs: [patch]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: deployer, namespace: team}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: deployer}\n\
         subjects:\n- {kind: ServiceAccount, name: deployer, namespace: team}\n",
    )
    .unwrap();
    let deployer = client_as_service_account(&h, "team", "deployer");
    const DEPLOYER: &str = "system:serviceaccount:team:deployer";
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("acrpull.microsoft.com", "v1beta2", "AcrPullBinding"),
        "acrpullbindings",
    );
    let bindings: Api<DynamicObject> = Api::namespaced_with(deployer, "team", &ar);
    let b: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
        "metadata": {"name": "b1"}, "spec": {"acr": {"server": "example.azurecr.io", "scope": "s"},
        "auth": {"managedIdentity": {"clientID": "c"}}, "serviceAccountName": "default"}}),
    )
    .unwrap();
    bindings
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &b,
        )
        .await
        .unwrap();
    bindings.create(&PostParams::default(), &b).await.unwrap();
    bindings
        .patch_status(
            "b1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    let audits: Vec<_> = h
        .requests()
        .into_iter()
        .filter(|r| r.resource == "acrpullbindings")
        .map(|r| r.audit_annotations)
        .collect();
    assert_eq!(
        audits[0]["observe/request"],
        format!(
            "{DEPLOYER} CREATE/AcrPullBinding/acrpullbindings/ team/b1 dryRun=true CreateOptions"
        )
    );
    assert_eq!(
        audits[1]["observe/request"],
        format!(
            "{DEPLOYER} CREATE/AcrPullBinding/acrpullbindings/ team/b1 dryRun=false CreateOptions"
        )
    );
    assert_eq!(audits[2]["observe/request"], format!("{DEPLOYER} UPDATE/AcrPullBinding/acrpullbindings/status team/b1 dryRun=false UpdateOptions"));
    assert_eq!(
        audits[2]["observe/groups"],
        "system:serviceaccounts,system:serviceaccounts:team,system:authenticated"
    );
    assert_eq!(audits[2]["observe/tier"], "gold");
    assert_eq!(audits[2]["observe/phase"], "Ready");
    assert!(
        !audits[1].contains_key("observe/phase"),
        "null excludes the annotation"
    );
}

#[tokio::test]
async fn policy_objects_are_validated_and_defaulted() {
    let (_h, c) = start().await;
    let err = status(
        create(
            &c,
            vap(
                "bad",
                json!(["configmaps"]),
                json!({"validations": [
        {"expression": "object.data.size() > 0 &&"},
        {"expression": "object.metadata.name.reverse() == ''"},
        {"expression": "authorizer.group('').resource('pods').check('get').allowed()"},
        {"expression": "params.x == 1"}]}),
            ),
        )
        .await,
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let fields: Vec<&str> = err
        .details
        .as_ref()
        .unwrap()
        .causes
        .iter()
        .map(|c| c.field.as_str())
        .collect();
    assert_eq!(
        fields,
        vec![
            "spec.validations[0].expression",
            "spec.validations[1].expression",
            "spec.validations[2].expression",
            "spec.validations[3].expression"
        ]
    );
    assert!(err.message.starts_with("ValidatingAdmissionPolicy.admissionregistration.k8s.io \"bad\" is invalid: [spec.validations[0].expression: Invalid value: \"object.data.size() > 0 &&\": compilation failed: ERROR: <input>:1:"), "{}", err.message);
    assert!(
        err.message.contains("undeclared reference to 'reverse'")
            && err.message.contains("not supported by kube-standin")
            && err.message.contains("undeclared reference to 'params'"),
        "{}",
        err.message
    );
    let err = status(create(&c, vapb("b", "p", json!(["Deny", "Warn"]), json!({}))).await);
    assert_eq!(
        err.details.unwrap().causes[0].field,
        "spec.validationActions"
    );
    let err = status(
        create(
            &c,
            vapb(
                "b",
                "p",
                json!(["Deny"]),
                json!({"paramRef": {"name": "x"}}),
            ),
        )
        .await,
    );
    assert_eq!(
        err.details.unwrap().causes[0].field,
        "spec.paramRef.parameterNotFoundAction"
    );
    let p = create(
        &c,
        vap(
            "ok",
            json!(["configmaps"]),
            json!({"validations": [{"expression": "true"}]}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(p.data["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        p.data["spec"]["matchConstraints"]["matchPolicy"],
        "Equivalent"
    );
    assert_eq!(
        p.data["spec"]["matchConstraints"]["namespaceSelector"],
        json!({})
    );
    assert_eq!(
        p.data["spec"]["matchConstraints"]["resourceRules"][0]["scope"],
        "*"
    );
}

#[tokio::test]
async fn policies_never_lock_out_their_own_fix() {
    let (h, c) = start().await;
    namespace(&h, "l");
    let everything = json!({"matchConstraints": {"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"],
        "operations": ["*"], "resources": ["*", "*/*"]}]}, "validations": [{"expression": "false", "message": "nothing"}]});
    create(&c, vap("deny-all", json!(["*"]), everything))
        .await
        .unwrap();
    create(&c, vapb("deny-all", "deny-all", json!(["Deny"]), json!({})))
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "l");
    let s = status(
        cms.create(&PostParams::default(), &cm("x", "l", json!({})))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(
        s.message.ends_with("denied request: nothing"),
        "{}",
        s.message
    );
    // Policies and bindings are exempt: the binding can be deleted, and then writes pass.
    let vapbs: Api<DynamicObject> =
        Api::all_with(c.clone(), &resource(&vapb("x", "x", json!([]), json!({}))));
    vapbs
        .delete("deny-all", &DeleteParams::default())
        .await
        .expect("exempt");
    cms.create(&PostParams::default(), &cm("x", "l", json!({})))
        .await
        .expect("no binding, no denial");
}
