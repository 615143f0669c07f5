//! The shipped admission policies (`deploy/admission.yaml`, fail-closed), evaluated by the
//! stand-in API server as a cluster evaluates them, against what the controller's identity
//! (`system:serviceaccount:acrpull-system:acrpull`, its own token, authorized by
//! `deploy/rbac.yaml`) could ask for:
//!
//! - every hostile request of the list below is refused with a 403 by the policy meant to
//!   refuse it (checked in the answer and in the request log), with kube-rs-shaped JSON
//!   requests and with the real `kubectl --as`, whose strategic-merge patches and protobuf
//!   bodies are other wire forms of the same changes; nothing it asked for changed anything;
//! - the narrow things the policies let through are exactly what the controller needs: its
//!   adoption label, a binding taking on its predecessor's Secret, removing a binding's Secret
//!   of another name, and the pull-secret names `src/state/names.rs` computes (long names
//!   included);
//! - meanwhile a live controller does its work under the same policies and is refused
//!   nothing (the harness asserts it for every suite; `controller_refusals`).
//!
//! Think of the list as what a stolen controller token would try.

mod common;
mod prereq;

use common::*;
use serde_json::{json, Value};

const HOSTILE_AGENT: &str = "hostile-test";
const TOKEN_POLICY: &str = "acrpull-token-request";
const SECRET_POLICY: &str = "acrpull-secret-writes";
const SA_POLICY: &str = "acrpull-serviceaccount-updates";
const LABEL: &str = "acr.microsoft.com/binding";
const DOCKER: &str = "kubernetes.io/dockerconfigjson";

/// Requests as the controller's ServiceAccount, marked with their own user agent.
struct AsController {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl AsController {
    fn new(env: &Env) -> Self {
        Self {
            url: env.kube.url(),
            token: env.controller_token.clone().expect("deploy/ installed"),
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("user-agent", HOSTILE_AGENT);
        if let Some(b) = body {
            req = req
                .header("content-type", content_type)
                .body(serde_json::to_vec(&b).unwrap());
        }
        let resp = req.send().await.expect("the API server answers");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// One request the controller's identity must not get through.
struct Hostile {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Option<Value>,
    policy: &'static str,
    /// A part of the policy's message.
    message: String,
}

fn secret(name: &str, ty: &str, label: Option<&str>, owners: Value) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "team-a", "ownerReferences": owners},
        "type": ty, "data": {".dockerconfigjson": "e30="}});
    if let Some(l) = label {
        s["metadata"]["labels"] = json!({LABEL: l});
    }
    s
}

fn controls(api_version: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": api_version, "kind": "AcrPullBinding", "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": true})
}

fn token_request(audiences: Option<Vec<&str>>, expiration: Option<i64>) -> Value {
    let mut spec = json!({});
    if let Some(a) = audiences {
        spec["audiences"] = json!(a);
    }
    if let Some(e) = expiration {
        spec["expirationSeconds"] = json!(e);
    }
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
}

fn uid(v: &Value) -> String {
    v["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A v1beta2 binding with managed identity targeting `sa`.
fn binding(name: &str, sa: &str) -> Value {
    v2_managed("team-a", name, sa, "repository:app:pull")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_identity_gets_none_of_the_hostile_requests_through() {
    let env = Env::start().await;
    // The cluster: a ServiceAccount with a user's own pull secret, the user's Secrets, two
    // working bindings (v1beta2, v1beta1) and one that never gets a Secret (its
    // ServiceAccount does not exist), whose pull-secret name is free.
    env.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "app", "namespace": "team-a"},
        "imagePullSecrets": [{"name": "user-secret"}]}));
    env.create(secret("user-secret", DOCKER, None, json!([])));
    env.create(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db-password", "namespace": "team-a"},
        "type": "Opaque", "data": {"password": "aHVudGVyMg=="}}));
    env.create(secret("acr-pull-mine", DOCKER, None, json!([])));
    env.create(secret("acr-pull-fake", DOCKER, Some("app"), json!([])));
    let web = env.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web", "namespace": "team-a"}}));
    env.create(secret(
        "acr-pull-web",
        DOCKER,
        None,
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "web", "uid": uid(&web),
                "controller": true}]),
    ));
    let app = env.create(binding("app", "app"));
    env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "legacy", "namespace": "team-a"},
        "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
                 "scope": "repository:app:pull", "serviceAccountName": "app"}}));
    let spare = env.create(binding("spare", "nobody"));
    env.wait_ready(V2, "team-a", "app", "True").await;
    env.wait_ready(V1, "team-a", "legacy", "True").await;
    env.wait_ready(V2, "team-a", "spare", "False").await;
    let (app_uid, spare_uid) = (uid(&app), uid(&spare));
    let before_secrets: Vec<Value> = env.kube.list("v1", "Secret", Some("team-a"));
    let before_sa = env.service_account("team-a", "app").unwrap();

    let secrets = "/api/v1/namespaces/team-a/secrets".to_string();
    let secret_path = |n: &str| format!("/api/v1/namespaces/team-a/secrets/{n}");
    let token_path = "/api/v1/namespaces/team-a/serviceaccounts/app/token".to_string();
    let sa_path = "/api/v1/namespaces/team-a/serviceaccounts/app".to_string();
    let merge = "application/merge-patch+json";
    let json_ct = "application/json";
    let owned_by_spare = json!([controls(V2, "spare", &spare_uid)]);
    let audience_msg = format!("only for the single audience \"{SA_AUDIENCE}\"");
    let sa_fields_msg =
        "acrpull may change nothing on a ServiceAccount but the imagePullSecrets it manages";
    let hostile = vec![
        // TokenRequests: a token for another audience (the API server's: the controller's
        // identity would mint credentials for any ServiceAccount), or for two, or a
        // long-lived one.
        Hostile {
            what: "a token for the API server's audience",
            method: "POST",
            path: token_path.clone(),
            content_type: json_ct,
            body: Some(token_request(Some(vec!["https://kubernetes.default.svc"]), Some(600))),
            policy: TOKEN_POLICY,
            message: audience_msg.clone(),
        },
        Hostile {
            what: "a token for two audiences, Entra's among them",
            method: "POST",
            path: token_path.clone(),
            content_type: json_ct,
            body: Some(token_request(Some(vec![SA_AUDIENCE, "api://other"]), Some(600))),
            policy: TOKEN_POLICY,
            message: audience_msg.clone(),
        },
        Hostile {
            what: "a token without an audience (the API server's by default)",
            method: "POST",
            path: token_path.clone(),
            content_type: json_ct,
            body: Some(token_request(None, Some(600))),
            policy: TOKEN_POLICY,
            message: audience_msg.clone(),
        },
        Hostile {
            what: "a token for Entra that lives an hour",
            method: "POST",
            path: token_path.clone(),
            content_type: json_ct,
            body: Some(token_request(Some(vec![SA_AUDIENCE]), Some(3600))),
            policy: TOKEN_POLICY,
            message: "live at most 600 seconds, not 3600".into(),
        },
        Hostile {
            what: "a token for Entra without a lifetime (3600 s by default)",
            method: "POST",
            path: token_path.clone(),
            content_type: json_ct,
            body: Some(token_request(Some(vec![SA_AUDIENCE]), None)),
            policy: TOKEN_POLICY,
            message: "live at most 600 seconds, not 3600".into(),
        },
        // Secrets of other types.
        Hostile {
            what: "an Opaque Secret with the pull secret's name, label and owner",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(secret("acr-pull-spare", "Opaque", Some("spare"), owned_by_spare.clone())),
            policy: SECRET_POLICY,
            message: "only write or delete Secrets of type kubernetes.io/dockerconfigjson".into(),
        },
        Hostile {
            what: "a service-account-token Secret (the API server would fill in a token)",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "acr-pull-spare", "namespace": "team-a",
                             "labels": {LABEL: "spare"}, "ownerReferences": owned_by_spare.clone(),
                             "annotations": {"kubernetes.io/service-account.name": "app"}},
                "type": "kubernetes.io/service-account-token"})),
            policy: SECRET_POLICY,
            message: "only write or delete Secrets of type kubernetes.io/dockerconfigjson".into(),
        },
        // Secrets with other names.
        Hostile {
            what: "a dockerconfigjson Secret with a name of the controller's choosing",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(secret("registry-credentials", DOCKER, Some("spare"), owned_by_spare.clone())),
            policy: SECRET_POLICY,
            message: "pull secret of the AcrPullBinding that controls it (\"acr-pull-spare\"), not \"registry-credentials\"".into(),
        },
        Hostile {
            what: "another binding's pull-secret name",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(secret("acr-pull-other", DOCKER, Some("spare"), owned_by_spare.clone())),
            policy: SECRET_POLICY,
            message: "(\"acr-pull-spare\"), not \"acr-pull-other\"".into(),
        },
        Hostile {
            what: "the v1beta1 name for a v1beta2 binding",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(secret("spare-msi-acrpull-secret", DOCKER, Some("spare"), owned_by_spare.clone())),
            policy: SECRET_POLICY,
            message: "(\"acr-pull-spare\"), not \"spare-msi-acrpull-secret\"".into(),
        },
        // Label and owner.
        Hostile {
            what: "a pull secret without an owner (the garbage collector would never remove it)",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(secret("acr-pull-spare", DOCKER, Some("spare"), json!([]))),
            policy: SECRET_POLICY,
            message: "exactly one ownerReference, a controller reference to an AcrPullBinding".into(),
        },
        Hostile {
            what: "a pull secret labelled for another binding",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(secret("acr-pull-spare", DOCKER, Some("app"), owned_by_spare.clone())),
            policy: SECRET_POLICY,
            message: "must be the name of the AcrPullBinding that controls it (\"spare\"), not \"app\"".into(),
        },
        Hostile {
            what: "a pull secret with a second owner",
            method: "POST",
            path: secrets.clone(),
            content_type: json_ct,
            body: Some(secret("acr-pull-spare", DOCKER, Some("spare"),
                json!([controls(V2, "spare", &spare_uid),
                       {"apiVersion": "v1", "kind": "ConfigMap", "name": "web", "uid": uid(&web)}]))),
            policy: SECRET_POLICY,
            message: "exactly one ownerReference".into(),
        },
        // Updates of the live pull secret the controller wrote.
        Hostile {
            what: "changing the label value of a pull secret",
            method: "PATCH",
            path: secret_path("acr-pull-app"),
            content_type: merge,
            body: Some(json!({"metadata": {"labels": {LABEL: "spare"}}})),
            policy: SECRET_POLICY,
            message: "(\"app\"), not \"spare\"".into(),
        },
        Hostile {
            what: "removing the label of a pull secret",
            method: "PATCH",
            path: secret_path("acr-pull-app"),
            content_type: merge,
            body: Some(json!({"metadata": {"labels": {LABEL: null}}})),
            policy: SECRET_POLICY,
            message: "(\"app\"), not \"\"".into(),
        },
        Hostile {
            what: "removing the owner of a pull secret",
            method: "PATCH",
            path: secret_path("acr-pull-app"),
            content_type: merge,
            body: Some(json!({"metadata": {"ownerReferences": []}})),
            policy: SECRET_POLICY,
            message: "exactly one ownerReference".into(),
        },
        Hostile {
            what: "adding a second owner to a pull secret",
            method: "PATCH",
            path: secret_path("acr-pull-app"),
            content_type: merge,
            body: Some(json!({"metadata": {"ownerReferences": [controls(V2, "app", &app_uid),
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "web", "uid": uid(&web)}]}})),
            policy: SECRET_POLICY,
            message: "exactly one ownerReference".into(),
        },
        Hostile {
            what: "handing a pull secret to another binding",
            method: "PATCH",
            path: secret_path("acr-pull-app"),
            content_type: merge,
            body: Some(json!({"metadata": {"labels": {LABEL: "spare"},
                                           "ownerReferences": owned_by_spare.clone()}})),
            policy: SECRET_POLICY,
            message: "(\"acr-pull-spare\"), not \"acr-pull-app\"".into(),
        },
        Hostile {
            what: "turning a pull secret into a v1beta1 binding's",
            method: "PATCH",
            path: secret_path("acr-pull-app"),
            content_type: merge,
            body: Some(json!({"metadata": {"ownerReferences": [controls(V1, "app", &app_uid)]}})),
            policy: SECRET_POLICY,
            message: "(\"app-msi-acrpull-secret\"), not \"acr-pull-app\"".into(),
        },
        // Taking over Secrets the controller did not write.
        Hostile {
            what: "taking over an ownerless dockerconfigjson Secret with a pull-secret name",
            method: "PATCH",
            path: secret_path("acr-pull-mine"),
            content_type: merge,
            body: Some(json!({"metadata": {"labels": {LABEL: "mine"},
                "ownerReferences": [controls(V2, "mine", "00000000-0000-4000-8000-000000000001")]},
                "data": {".dockerconfigjson": "e30K"}})),
            policy: SECRET_POLICY,
            message: "only update Secrets that an AcrPullBinding of the same name and API group already controls".into(),
        },
        Hostile {
            what: "taking over a Secret another controller owns",
            method: "PATCH",
            path: secret_path("acr-pull-web"),
            content_type: merge,
            body: Some(json!({"metadata": {"labels": {LABEL: "web"},
                "ownerReferences": [controls(V2, "web", "00000000-0000-4000-8000-000000000002")]}})),
            policy: SECRET_POLICY,
            message: "already controls".into(),
        },
        Hostile {
            what: "overwriting a user's pull secret",
            method: "PATCH",
            path: secret_path("user-secret"),
            content_type: merge,
            body: Some(json!({"data": {".dockerconfigjson": "e30K"}})),
            policy: SECRET_POLICY,
            message: "exactly one ownerReference".into(),
        },
        // Deleting Secrets the controller does not manage.
        Hostile {
            what: "deleting an Opaque Secret",
            method: "DELETE",
            path: secret_path("db-password"),
            content_type: json_ct,
            body: None,
            policy: SECRET_POLICY,
            message: "only write or delete Secrets of type kubernetes.io/dockerconfigjson".into(),
        },
        Hostile {
            what: "deleting a user's pull secret",
            method: "DELETE",
            path: secret_path("user-secret"),
            content_type: json_ct,
            body: None,
            policy: SECRET_POLICY,
            message: "only delete Secrets that an AcrPullBinding controls".into(),
        },
        Hostile {
            what: "deleting a Secret that only carries the binding label",
            method: "DELETE",
            path: secret_path("acr-pull-fake"),
            content_type: json_ct,
            body: None,
            policy: SECRET_POLICY,
            message: "only delete Secrets that an AcrPullBinding controls".into(),
        },
        // ServiceAccounts: anything but the managed pull secrets.
        Hostile {
            what: "attaching a pull secret the controller does not manage",
            method: "PATCH",
            path: sa_path.clone(),
            content_type: merge,
            body: Some(json!({"imagePullSecrets": [{"name": "acr-pull-app"}, {"name": "stolen"},
                {"name": "user-secret"}, {"name": "legacy-msi-acrpull-secret"}]})),
            policy: SA_POLICY,
            message: "added: stolen; removed:".into(),
        },
        Hostile {
            what: "detaching a user's pull secret",
            method: "PATCH",
            path: sa_path.clone(),
            content_type: merge,
            body: Some(json!({"imagePullSecrets": [{"name": "acr-pull-app"},
                {"name": "legacy-msi-acrpull-secret"}]})),
            policy: SA_POLICY,
            message: "added: ; removed: user-secret".into(),
        },
        Hostile {
            what: "turning on automountServiceAccountToken",
            method: "PATCH",
            path: sa_path.clone(),
            content_type: merge,
            body: Some(json!({"automountServiceAccountToken": true})),
            policy: SA_POLICY,
            message: sa_fields_msg.into(),
        },
        Hostile {
            what: "labelling a ServiceAccount",
            method: "PATCH",
            path: sa_path.clone(),
            content_type: merge,
            body: Some(json!({"metadata": {"labels": {"team": "evil"}}})),
            policy: SA_POLICY,
            message: sa_fields_msg.into(),
        },
        Hostile {
            what: "re-pointing a ServiceAccount's workload identity",
            method: "PATCH",
            path: sa_path.clone(),
            content_type: merge,
            body: Some(json!({"metadata": {"annotations": {
                "azure.workload.identity/client-id": WI_CLIENT}}})),
            policy: SA_POLICY,
            message: sa_fields_msg.into(),
        },
        Hostile {
            what: "adding a token Secret to a ServiceAccount's secrets",
            method: "PATCH",
            path: sa_path.clone(),
            content_type: merge,
            body: Some(json!({"secrets": [{"name": "app-token"}]})),
            policy: SA_POLICY,
            message: sa_fields_msg.into(),
        },
        Hostile {
            what: "putting a finalizer on a ServiceAccount",
            method: "PATCH",
            path: sa_path.clone(),
            content_type: merge,
            body: Some(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
            policy: SA_POLICY,
            message: sa_fields_msg.into(),
        },
    ];
    assert!(hostile.len() >= 10);

    let api = AsController::new(&env);
    let mut failures = Vec::new();
    for h in &hostile {
        let from = env.kube.requests().len();
        let (code, body) = api
            .send(h.method, &h.path, h.content_type, h.body.clone())
            .await;
        let message = body["message"].as_str().unwrap_or_default().to_string();
        let denied_by = env.kube.requests()[from..]
            .iter()
            .find(|r| r.user_agent == HOSTILE_AGENT)
            .map(|r| (r.user.clone(), r.denied_by_policy.clone()));
        let want_prefix = format!(
            "ValidatingAdmissionPolicy '{0}' with binding '{0}' denied request: ",
            h.policy
        );
        let ok = code == 403
            && body["reason"] == "Forbidden"
            && message.contains(&want_prefix)
            && message.contains(&h.message)
            && denied_by == Some((CONTROLLER_USER.to_string(), h.policy.to_string()));
        if !ok {
            failures.push(format!(
                "{}: {} {} -> {code} {message} (log: {denied_by:?}); want 403 by {} containing {:?}",
                h.what, h.method, h.path, h.policy, h.message
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "hostile requests not refused as expected:\n{}",
        failures.join("\n")
    );

    // The same with the real kubectl, impersonating the controller: other wire forms
    // (protobuf bodies, strategic-merge patches, DeleteOptions) of the same attacks.
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(prereq::layer_kubectl())
            .arg(format!("--kubeconfig={}", env.kubeconfig.display()))
            .arg(format!("--as={CONTROLLER_USER}"))
            .args(["-n", "team-a"])
            .args(args)
            .output()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, policy, message) in [
        (
            vec![
                "create",
                "token",
                "app",
                "--audience",
                SA_AUDIENCE,
                "--duration=1h",
            ],
            TOKEN_POLICY,
            "live at most 600 seconds, not 3600",
        ),
        (
            vec!["create", "token", "app", "--duration=10m"],
            TOKEN_POLICY,
            "only for the single audience",
        ),
        (
            vec![
                "label",
                "secret",
                "acr-pull-app",
                "acr.microsoft.com/binding=spare",
                "--overwrite",
            ],
            SECRET_POLICY,
            "(\"app\"), not \"spare\"",
        ),
        (
            vec![
                "create",
                "secret",
                "docker-registry",
                "acr-pull-spare",
                "--docker-server=demo.azurecr.io",
                "--docker-username=u",
                "--docker-password=p",
            ],
            SECRET_POLICY,
            "exactly one ownerReference",
        ),
        (
            vec!["delete", "secret", "db-password", "--wait=false"],
            SECRET_POLICY,
            "of type kubernetes.io/dockerconfigjson",
        ),
        (
            vec![
                "patch",
                "serviceaccount",
                "app",
                "-p",
                r#"{"automountServiceAccountToken":true}"#,
            ],
            SA_POLICY,
            sa_fields_msg,
        ),
        (
            vec![
                "annotate",
                "serviceaccount",
                "app",
                "azure.workload.identity/client-id=evil",
            ],
            SA_POLICY,
            sa_fields_msg,
        ),
    ] {
        let (ok, stderr) = kubectl(&args);
        assert!(
            !ok && stderr.contains(&format!("ValidatingAdmissionPolicy '{policy}'"))
                && stderr.contains(message),
            "kubectl --as {CONTROLLER_USER} {args:?}: want a denial by {policy} ({message}), got: {stderr}"
        );
    }
    let kubectl_denials = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| {
            r.user_agent.starts_with("kubectl") && r.user == CONTROLLER_USER && r.status == 403
        })
        .filter(|r| !r.denied_by_policy.is_empty())
        .count();
    assert_eq!(
        kubectl_denials, 7,
        "each kubectl attempt was denied by a policy"
    );

    // Nothing any of it asked for happened.
    let after_secrets: Vec<Value> = env.kube.list("v1", "Secret", Some("team-a"));
    let names = |l: &[Value]| -> Vec<String> {
        let mut n: Vec<String> = l
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&after_secrets), names(&before_secrets));
    for name in [
        "user-secret",
        "db-password",
        "acr-pull-mine",
        "acr-pull-fake",
        "acr-pull-web",
    ] {
        let before = before_secrets
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap();
        let after = env.secret("team-a", name).unwrap();
        assert_eq!(
            after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
            "{name} was changed"
        );
    }
    let pull = env.secret("team-a", "acr-pull-app").unwrap();
    assert_eq!(pull["metadata"]["labels"][LABEL], "app");
    assert_eq!(
        pull["metadata"]["ownerReferences"],
        json!([controls(V2, "app", &app_uid)])
    );
    let sa = env.service_account("team-a", "app").unwrap();
    for field in [
        "/automountServiceAccountToken",
        "/secrets",
        "/metadata/labels",
        "/metadata/annotations",
        "/metadata/finalizers",
    ] {
        assert_eq!(
            sa.pointer(field),
            before_sa.pointer(field),
            "ServiceAccount {field}"
        );
    }
    assert_eq!(pull_secrets(&sa), pull_secrets(&before_sa));

    // Meanwhile the controller did its work under the same policies: requests of every kind,
    // none refused (the Env asserts it again when it goes away).
    let own: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("acrpull/"))
        .collect();
    for (verb, resource, sub) in [
        ("create", "secrets", ""),
        ("patch", "serviceaccounts", ""),
        ("patch", "acrpullbindings", "status"),
    ] {
        assert!(
            own.iter().any(|r| r.verb == verb
                && r.resource == resource
                && r.subresource == sub
                && r.status < 300),
            "the controller made no {verb} {resource}/{sub}"
        );
    }
    assert!(own.iter().all(|r| r.user == CONTROLLER_USER));
    assert_eq!(controller_refusals(&env.kube, true), Vec::<String>::new());
}

/// What the policies let the controller's identity do beyond creating and refreshing a
/// binding's own pull secret is exactly what the controller needs, and the pull-secret names
/// they accept are the ones `src/state/names.rs` computes. No controller runs here: the
/// requests are the controller's, made by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policies_admit_exactly_the_narrow_writes_the_controller_needs() {
    let env = Env::start_with(Options {
        spawn: false,
        ..Options::default()
    })
    .await;
    let api = AsController::new(&env);
    let secrets = "/api/v1/namespaces/team-a/secrets";
    let secret_path = |n: &str| format!("/api/v1/namespaces/team-a/secrets/{n}");
    let merge = "application/merge-patch+json";
    let app = env.create(binding("app", "app"));
    let app_uid = uid(&app);

    // The old controller's Secret, controlled by the binding but unlabelled: labelling it
    // (SPEC §4.1) is allowed.
    env.create(secret(
        "acr-pull-app",
        DOCKER,
        None,
        json!([controls(V2, "app", &app_uid)]),
    ));
    let (code, body) = api
        .send(
            "PATCH",
            &secret_path("acr-pull-app"),
            merge,
            Some(json!({"metadata": {"labels": {LABEL: "app"}}})),
        )
        .await;
    assert_eq!(code, 200, "labelling a Secret the binding controls: {body}");

    // A binding deleted and created again under its name takes on its predecessor's Secret
    // (same name and API group, another uid).
    let (code, body) = api
        .send(
            "PATCH",
            &secret_path("acr-pull-app"),
            merge,
            Some(json!({"metadata": {"ownerReferences": [controls(V2, "app", "00000000-0000-4000-8000-00000000000a")]}})),
        )
        .await;
    assert_eq!(code, 200, "re-owning by a binding of the same name: {body}");
    let (code, body) = api
        .send(
            "PATCH",
            &secret_path("acr-pull-app"),
            merge,
            Some(json!({"metadata": {"ownerReferences": [controls(V2, "app", &app_uid)]}})),
        )
        .await;
    assert!(
        code == 200 || code == 404,
        "back to the live binding: {code} {body}"
    );

    // A Secret of the binding's with another name (rule 9) may be deleted.
    env.create(secret(
        "app-old-name",
        DOCKER,
        Some("app"),
        json!([controls(V2, "app", &app_uid)]),
    ));
    let (code, body) = api
        .send(
            "DELETE",
            &secret_path("app-old-name"),
            "application/json",
            None,
        )
        .await;
    assert_eq!(
        code, 200,
        "deleting a binding's Secret of another name: {body}"
    );

    // Pull-secret names: the policy's CEL and names.rs agree, for v1beta1, for v1beta2, and
    // for v1beta2 names past 233 characters (cut, trailing dots removed, a hash appended).
    let long = |head: &str, tail: &str| {
        let mut n = head.repeat(233 / head.len() + 1);
        n.truncate(233);
        format!("{n}{tail}")
    };
    let cut_at_dot = {
        let mut n = "b".repeat(231);
        n.push_str("..tail");
        n
    };
    let cases = [
        (V1, "legacy-one".to_string()),
        (V2, "short".to_string()),
        (V2, "x".repeat(233)),
        (V2, long("abc", "-more")),
        (V2, "y".repeat(253)),
        (V2, cut_at_dot),
    ];
    for (api_version, name) in &cases {
        let b = if *api_version == V1 {
            json!({"apiVersion": V1, "kind": "AcrPullBinding",
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT}})
        } else {
            binding(name, "app")
        };
        let b = env.create(b);
        let secret_name = if *api_version == V1 {
            acrpull::state::names::legacy_pull_secret_name(name)
        } else {
            acrpull::state::names::pull_secret_name(name)
        };
        let (code, body) = api
            .send(
                "POST",
                secrets,
                "application/json",
                Some(secret(
                    &secret_name,
                    DOCKER,
                    Some(name),
                    json!([controls(api_version, name, &uid(&b))]),
                )),
            )
            .await;
        assert_eq!(
            code,
            201,
            "{api_version} {name} ({} characters) -> {secret_name}: {body}",
            name.len()
        );
        // Any other name near it is refused.
        let mut other = secret_name.clone();
        other.pop();
        other.push(if secret_name.ends_with('0') { '1' } else { '0' });
        let wrong = if name.len() > 233 {
            // The hash is not checked (CEL has no SHA-224); a head cut elsewhere is.
            format!(
                "acr-pull-{}-{}",
                &name[..230],
                &secret_name[secret_name.len() - 10..]
            )
        } else {
            other
        };
        let (code, body) = api
            .send(
                "POST",
                secrets,
                "application/json",
                Some(secret(
                    &wrong,
                    DOCKER,
                    Some(name),
                    json!([controls(api_version, name, &uid(&b))]),
                )),
            )
            .await;
        assert_eq!(
            code, 403,
            "{api_version} {name}: {wrong} must be refused: {body}"
        );
    }
}
