//! Authentication, impersonation and RBAC: what a client sees when it is not the admin — the
//! real 401 and 403 Status objects, ServiceAccount tokens checked like a real server checks
//! them, the default policy, aggregation, and the review APIs.

mod common;

use std::time::Duration;

use common::{client_with_token, install_crypto, namespace, start, T};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_standin::Handle;
use serde_json::{json, Value};

/// A raw request, for exact status bodies: (code, body).
async fn raw(
    h: &Handle,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{}{path}", h.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn sa_manifest(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}})
}

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_tokens_are_401_and_no_token_is_anonymous() {
    install_crypto();
    let (h, _) = start().await;
    let (code, body) = raw(
        &h,
        "GET",
        "/api/v1/namespaces",
        Some("not-a-token"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );
    // A JWS signed by another key, and one of ours for another audience, are both 401.
    let claims = json!({"iss": h.issuer(), "sub": "system:serviceaccount:default:default",
        "aud": ["api://AzureADTokenExchange"], "exp": 4_000_000_000i64, "nbf": 0,
        "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "default", "uid": "x"}}});
    let other_aud = h.sign_claims(&claims).unwrap();
    assert_eq!(
        raw(&h, "GET", "/api", Some(&other_aud), &[], None).await.0,
        401
    );

    // Without credentials: system:anonymous, allowed only the public info paths.
    let (code, body) = raw(&h, "GET", "/api/v1/namespaces", None, &[], None).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    assert_eq!(body["details"], json!({"kind": "namespaces"}));
    let (code, body) = raw(&h, "GET", "/apis", None, &[], None).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "forbidden: User \"system:anonymous\" cannot get path \"/apis\""
    );
    assert_eq!(raw(&h, "GET", "/healthz", None, &[], None).await.0, 200);
    assert_eq!(raw(&h, "GET", "/version", None, &[], None).await.0, 200);
    let users: Vec<String> = h.requests().iter().map(|r| r.user.clone()).collect();
    assert!(users.contains(&"system:anonymous".to_string()), "{users:?}");
    // A 401 has no user.
    assert!(h
        .requests()
        .iter()
        .any(|r| r.status == 401 && r.user.is_empty()));
    h.shutdown();
}

#[tokio::test]
async fn service_account_tokens_run_under_rbac() {
    let (h, admin) = start().await;
    namespace(&h, "app");
    h.apply(sa_manifest("app", "reader")).unwrap();
    let token = h
        .service_account_token("app", "reader", Duration::from_secs(3600))
        .unwrap();
    let sa = client_with_token(&h, &token);
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), "app");

    // Discovery works for every authenticated user (system:discovery).
    let discovery = kube::Discovery::new(sa.clone()).run().await.unwrap();
    assert!(discovery
        .groups()
        .any(|g| g.name() == "coordination.k8s.io"));

    // Nothing granted yet: the real 403.
    let e = api_err(secrets.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    assert_eq!(
        e.message,
        "secrets is forbidden: User \"system:serviceaccount:app:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"app\""
    );
    let mut s = Secret::default();
    s.metadata.name = Some("x".into());
    let e = api_err(
        secrets
            .create(&PostParams::default(), &s)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "secrets is forbidden: User \"system:serviceaccount:app:reader\" cannot create resource \"secrets\" in API group \"\" in the namespace \"app\""
    );
    let e = api_err(secrets.get("x").await.unwrap_err());
    assert_eq!(
        e.message,
        "secrets \"x\" is forbidden: User \"system:serviceaccount:app:reader\" cannot get resource \"secrets\" in API group \"\" in the namespace \"app\""
    );

    // A Role for get/list/watch on secrets, a second rule limited to one ConfigMap by name.
    h.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: app}
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [settings]
  verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: app}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: app}]
"#,
    )
    .unwrap();
    admin_secret(&admin, "app", "x").await;
    assert!(
        secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            == 1
    );
    assert!(secrets.get("x").await.is_ok());
    // Still no write, and nothing in another namespace.
    let e = api_err(
        secrets
            .delete("x", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 403);
    let other: Api<Secret> = Api::namespaced(sa.clone(), "default");
    assert_eq!(
        api_err(other.list(&ListParams::default()).await.unwrap_err()).code,
        403
    );
    // resourceNames: the named ConfigMap only, and never list.
    for n in ["settings", "other"] {
        h.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": "app"}}))
            .unwrap();
    }
    let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), "app");
    assert!(cms.get("settings").await.is_ok());
    assert_eq!(api_err(cms.get("other").await.unwrap_err()).code, 403);
    assert_eq!(
        api_err(cms.list(&ListParams::default()).await.unwrap_err()).code,
        403
    );

    // Subresources are separate resources: serviceaccounts/token needs its own grant.
    let sas: Api<ServiceAccount> = Api::namespaced(sa.clone(), "app");
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["api://AzureADTokenExchange".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let e = api_err(
        sas.create_token_request("reader", &PostParams::default(), &tr)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "serviceaccounts \"reader\" is forbidden: User \"system:serviceaccount:app:reader\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"app\""
    );
    h.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: tokens}
rules:
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: tokens}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tokens}
subjects: [{kind: Group, name: "system:serviceaccounts:app"}]
"#,
    )
    .unwrap();
    sas.create_token_request("reader", &PostParams::default(), &tr)
        .await
        .unwrap();
    // ... and the grant does not extend to the ServiceAccount itself.
    assert_eq!(api_err(sas.get("reader").await.unwrap_err()).code, 403);

    // Non-resource URLs: /metrics needs a grant (system:monitoring here).
    assert_eq!(
        raw(&h, "GET", "/metrics", Some(&token), &[], None).await.0,
        403
    );
    h.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "reader-monitoring"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:monitoring"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "app"}]}))
        .unwrap();
    // Allowed through (the stand-in has no /metrics itself: 404, not 403).
    assert_eq!(
        raw(&h, "GET", "/metrics", Some(&token), &[], None).await.0,
        404
    );

    // The request log names the user.
    assert!(h
        .requests()
        .iter()
        .any(|r| r.user == "system:serviceaccount:app:reader"
            && r.resource == "secrets"
            && r.status == 403));
    h.shutdown();
}

async fn admin_secret(admin: &kube::Client, ns: &str, name: &str) {
    let api: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    api.create(&PostParams::default(), &s).await.unwrap();
}

#[tokio::test]
async fn token_checks_follow_the_service_account() {
    let (h, admin) = start().await;
    namespace(&h, "tk");
    h.apply(sa_manifest("tk", "bot")).unwrap();
    // A TokenRequest without audiences gets the API audience and authenticates.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "tk");
    let out = sas
        .create_token_request("bot", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap();
    let token = out.status.unwrap().token;
    let (code, body) = raw(
        &h,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(&token),
        &[],
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let user = &body["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:tk:bot");
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:tk",
            "system:authenticated"
        ])
    );
    let uid = h.get("v1", "ServiceAccount", "tk", "bot").unwrap()["metadata"]["uid"].clone();
    assert_eq!(user["uid"], uid);
    assert!(
        user["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .unwrap()
            .starts_with("JTI=")
    );

    // Expired (beyond the one-minute leeway): 401.
    let now = jiff::Timestamp::now().as_second();
    let claims = |exp: i64, uid: &Value| {
        json!({"iss": h.issuer(), "aud": [h.issuer()], "sub": "system:serviceaccount:tk:bot",
            "exp": exp, "iat": exp - 3600, "nbf": exp - 3600,
            "kubernetes.io": {"namespace": "tk", "serviceaccount": {"name": "bot", "uid": uid}}})
    };
    let expired = h.sign_claims(&claims(now - 120, &uid)).unwrap();
    assert_eq!(
        raw(&h, "GET", "/api", Some(&expired), &[], None).await.0,
        401
    );
    let fresh = h.sign_claims(&claims(now + 600, &uid)).unwrap();
    assert_eq!(raw(&h, "GET", "/api", Some(&fresh), &[], None).await.0, 200);

    // The ServiceAccount deleted and re-created: old tokens die (the uid changed).
    sas.delete("bot", &DeleteParams::default()).await.unwrap();
    assert_eq!(raw(&h, "GET", "/api", Some(&token), &[], None).await.0, 401);
    h.apply(sa_manifest("tk", "bot")).unwrap();
    assert_eq!(raw(&h, "GET", "/api", Some(&token), &[], None).await.0, 401);
    let new = h
        .service_account_token("tk", "bot", Duration::from_secs(600))
        .unwrap();
    assert_eq!(raw(&h, "GET", "/api", Some(&new), &[], None).await.0, 200);
    h.shutdown();
}

#[tokio::test]
async fn token_review_and_access_reviews() {
    let (h, _) = start().await;
    namespace(&h, "rv");
    h.apply(sa_manifest("rv", "checker")).unwrap();
    h.apply(sa_manifest("rv", "metrics")).unwrap();
    let checker = h
        .service_account_token("rv", "checker", Duration::from_secs(600))
        .unwrap();
    let metrics = h
        .service_account_token("rv", "metrics", Duration::from_secs(600))
        .unwrap();
    let tr = |token: &str| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    // Reviews need system:auth-delegator, as for a controller serving secure metrics.
    let (code, _) = raw(
        &h,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(&checker),
        &[],
        Some(tr(&metrics)),
    )
    .await;
    assert_eq!(code, 403);
    h.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "checker-delegator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "checker", "namespace": "rv"}]}))
        .unwrap();
    let (code, body) = raw(
        &h,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(&checker),
        &[],
        Some(tr(&metrics)),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["authenticated"], true);
    assert_eq!(
        body["status"]["user"]["username"],
        "system:serviceaccount:rv:metrics"
    );
    assert_eq!(body["status"]["audiences"], json!([h.issuer()]));
    let (_, body) = raw(
        &h,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(&checker),
        &[],
        Some(tr("garbage")),
    )
    .await;
    assert_eq!(body["status"]["authenticated"], Value::Null);
    assert!(body["status"]["error"]
        .as_str()
        .unwrap()
        .contains("invalid bearer token"));

    // SubjectAccessReview for the metrics path, denied then allowed with RBAC's reason.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:rv:metrics",
                 "groups": ["system:serviceaccounts", "system:serviceaccounts:rv", "system:authenticated"],
                 "nonResourceAttributes": {"path": "/metrics", "verb": "get"}}});
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let (code, body) = raw(&h, "POST", path, Some(&checker), &[], Some(sar.clone())).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["allowed"], false);
    h.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "metrics-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:monitoring"},
        "subjects": [{"kind": "ServiceAccount", "name": "metrics", "namespace": "rv"}]}))
        .unwrap();
    let (_, body) = raw(&h, "POST", path, Some(&checker), &[], Some(sar)).await;
    assert_eq!(body["status"]["allowed"], true);
    assert_eq!(
        body["status"]["reason"],
        "RBAC: allowed by ClusterRoleBinding \"metrics-reader\" of ClusterRole \"system:monitoring\" to ServiceAccount \"metrics/rv\""
    );
    // A binding to a missing role is named in the denial's reason.
    h.apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "dangling", "namespace": "rv"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "missing"},
        "subjects": [{"kind": "ServiceAccount", "name": "metrics"}]}),
    )
    .unwrap();
    let ssar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": "rv", "verb": "get", "resource": "pods"}}});
    let (code, body) = raw(
        &h,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(&metrics),
        &[],
        Some(ssar),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["allowed"], false);
    assert_eq!(
        body["status"]["reason"],
        "RBAC: role.rbac.authorization.k8s.io \"missing\" not found"
    );
    // SelfSubjectRulesReview lists what the user may do in a namespace.
    let (_, body) = raw(
        &h,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        Some(&metrics),
        &[],
        Some(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "rv"}})),
    )
    .await;
    assert!(body["status"]["resourceRules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["resources"] == json!(["selfsubjectaccessreviews", "selfsubjectrulesreviews"])));
    assert!(body["status"]["nonResourceRules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["nonResourceURLs"]
            .as_array()
            .unwrap()
            .contains(&json!("/metrics"))));
    assert_eq!(body["status"]["incomplete"], true);
    h.shutdown();
}

#[tokio::test]
async fn impersonation_needs_the_impersonate_verb() {
    let (h, _) = start().await;
    namespace(&h, "imp");
    h.apply(sa_manifest("imp", "plain")).unwrap();
    let plain = h
        .service_account_token("imp", "plain", Duration::from_secs(600))
        .unwrap();
    let admin = h.admin_token();
    // The admin (system:masters) may impersonate anyone; the request then runs as them.
    let (code, body) = raw(
        &h,
        "GET",
        "/api/v1/namespaces/imp/secrets",
        Some(admin),
        &[("Impersonate-User", "system:serviceaccount:imp:plain")],
        None,
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "secrets is forbidden: User \"system:serviceaccount:imp:plain\" cannot list resource \"secrets\" in API group \"\" in the namespace \"imp\""
    );
    let (_, body) = raw(
        &h,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(admin),
        &[("Impersonate-User", "jane"), ("Impersonate-Group", "devs")],
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    assert_eq!(
        body["status"]["userInfo"],
        json!({"username": "jane", "groups": ["devs", "system:authenticated"]})
    );
    // Everyone else needs `impersonate` on users / groups / serviceaccounts.
    let (code, body) = raw(
        &h,
        "GET",
        "/api/v1/namespaces",
        Some(&plain),
        &[("Impersonate-User", "jane")],
        None,
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "users \"jane\" is forbidden: User \"system:serviceaccount:imp:plain\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    h.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: impersonate-jane}
rules:
- apiGroups: [""]
  resources: [users]
  resourceNames: [jane]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: impersonate-jane}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: impersonate-jane}
subjects: [{kind: ServiceAccount, name: plain, namespace: imp}]
"#,
    )
    .unwrap();
    let (code, body) = raw(
        &h,
        "GET",
        "/api/v1/namespaces",
        Some(&plain),
        &[("Impersonate-User", "jane")],
        None,
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "namespaces is forbidden: User \"jane\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    let (code, body) = raw(
        &h,
        "GET",
        "/api/v1/namespaces",
        Some(&plain),
        &[
            ("Impersonate-User", "jane"),
            ("Impersonate-Group", "system:masters"),
        ],
        None,
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "groups \"system:masters\" is forbidden: User \"system:serviceaccount:imp:plain\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope"
    );
    h.shutdown();
}

#[tokio::test]
async fn default_policy_and_aggregation() {
    let (h, admin) = start().await;
    namespace(&h, "agg");
    h.apply(sa_manifest("agg", "viewer")).unwrap();
    // The default roles exist with the bootstrap label; view is aggregated from
    // system:aggregate-to-view.
    let view = h
        .get("rbac.authorization.k8s.io/v1", "ClusterRole", "", "view")
        .unwrap();
    assert_eq!(
        view["metadata"]["labels"]["kubernetes.io/bootstrapping"],
        "rbac-defaults"
    );
    let rules = view["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["resources"]
        .as_array()
        .unwrap()
        .contains(&json!("configmaps"))));
    let viewer = h
        .service_account_token("agg", "viewer", Duration::from_secs(600))
        .unwrap();
    h.apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "viewer", "namespace": "agg"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": "agg"}]}),
    )
    .unwrap();
    let client = client_with_token(&h, &viewer);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "agg");
    assert_eq!(
        api_err(leases.list(&ListParams::default()).await.unwrap_err()).code,
        403
    );
    // A new role labelled aggregate-to-view extends view (and, through edit, admin) by the
    // aggregation controller, asynchronously.
    h.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "leases-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch"]}]}))
        .unwrap();
    for role in ["view", "edit", "admin"] {
        h.wait_for(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "",
            role,
            |o| {
                o.is_some_and(|o| {
                    o["rules"]
                        .as_array()
                        .is_some_and(|rs| rs.iter().any(|r| r["resources"] == json!(["leases"])))
                })
            },
            T,
        )
        .await
        .unwrap();
    }
    assert!(leases.list(&ListParams::default()).await.is_ok());
    let view = h
        .get("rbac.authorization.k8s.io/v1", "ClusterRole", "", "view")
        .unwrap();
    assert!(view["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["manager"] == "clusterrole-aggregation-controller"));
    // Only the aggregation rule counts: rules written by hand are replaced.
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(admin.clone());
    roles
        .patch(
            "view",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": []})),
        )
        .await
        .unwrap();
    h.wait_for(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "",
        "view",
        |o| o.is_some_and(|o| o["rules"].as_array().is_some_and(|r| !r.is_empty())),
        T,
    )
    .await
    .unwrap();
    h.shutdown();
}
