//! The real `acrpull` binary against the stand-in API server and stand-in Azure: the binding
//! lifecycle of SPEC §4 end to end, over real HTTP and real watches.

mod common;
mod prereq;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_binding_becomes_ready_and_is_cleaned_up() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));

    let b = env.wait_ready(V2, "team-a", "app", "True").await;
    assert_eq!(b["status"]["phase"], "Ready");
    assert_eq!(b["status"]["error"], serde_json::Value::Null);
    assert!(b["status"]["tokenExpirationTime"].is_string());
    assert!(b["status"]["nextRefreshTime"].is_string());
    assert_eq!(
        b["status"]["observedGeneration"],
        b["metadata"]["generation"]
    );
    assert!(b["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .contains(&json!("msi-acrpull.microsoft.com")));

    // The secret: type, label, owner, annotations, docker config for the registry.
    let secret = env.secret("team-a", "acr-pull-app").expect("pull secret");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        secret["metadata"]["labels"]["acr.microsoft.com/binding"],
        "app"
    );
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "AcrPullBinding");
    assert_eq!(owner["apiVersion"], V2);
    assert_eq!(owner["uid"], b["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    let ann = &secret["metadata"]["annotations"];
    assert_eq!(
        ann["acr.microsoft.com/token.expiry"],
        b["status"]["tokenExpirationTime"]
    );
    assert!(ann["acr.microsoft.com/token.inputs"].is_string());
    let cfg = docker_config(&secret);
    let entry = &cfg["auths"][REGISTRY];
    assert_eq!(entry["username"], "00000000-0000-0000-0000-000000000000");
    let token = entry["password"].as_str().unwrap();
    assert!(token.split('.').count() == 3, "an ACR JWT");

    // The token is what the registry's Basic-auth endpoint accepts for the granted scope.
    let client = env.azure.client_builder().unwrap().build().unwrap();
    let url = format!(
        "{}/oauth2/token?service={REGISTRY}&scope=repository:app:pull",
        env.azure.https_url(REGISTRY)
    );
    let r = client
        .get(&url)
        .basic_auth("00000000-0000-0000-0000-000000000000", Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Attached to the ServiceAccount.
    let puller = env.service_account("team-a", "puller").unwrap();
    assert_eq!(pull_secrets(&puller), ["acr-pull-app"]);

    // One Event on the binding for issued-and-attached (recorded as events.k8s.io/v1). Events
    // are sent at the end of the pass, after its status write: wait for it.
    let events = || -> Vec<(String, String)> {
        env.kube
            .list("events.k8s.io/v1", "Event", Some("team-a"))
            .iter()
            .filter(|e| e["regarding"]["name"] == "app")
            .map(|e| {
                let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (field("reason"), field("note"))
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while events().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = events();
    assert!(
        got.iter().any(|(reason, note)| reason == "TokenIssued"
            && note.contains("created and attached to service account puller")),
        "no TokenIssued event for the mint and its attach in {got:?}"
    );
    assert!(
        !got.iter().any(|(reason, _)| reason == "PullSecretAttached"),
        "the first attach is folded into TokenIssued: {got:?}"
    );

    // No token anywhere in the controller's logs or the binding's status.
    assert!(!env.logs().contains(token));
    assert!(!b.to_string().contains(token));

    // Deletion unwinds: detach, delete the secret, drop the finalizer.
    env.kube
        .delete(V2, "AcrPullBinding", "team-a", "app")
        .unwrap();
    env.wait_gone(V2, "AcrPullBinding", "team-a", "app").await;
    assert!(env.secret("team-a", "acr-pull-app").is_none());
    assert!(pull_secrets(&env.service_account("team-a", "puller").unwrap()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_v1beta1_and_v1beta2_bindings_coexist_and_order_is_kept() {
    let env = Env::start().await;
    env.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "team-a"},
        "imagePullSecrets": [{"name": "zz-user-secret"}]}));
    env.create(v2_managed(
        "team-a",
        "app",
        "default",
        "repository:app:pull",
    ));
    env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "app", "namespace": "team-a"},
        "spec": {"acrServer": REGISTRY, "managedIdentityResourceID": format!("{MI_RESOURCE}/"),
                 "scope": "repository:base:pull"}}));
    env.wait_ready(V2, "team-a", "app", "True").await;
    env.wait_ready(V1, "team-a", "app", "True").await;

    let v2 = env.secret("team-a", "acr-pull-app").unwrap();
    let v1 = env.secret("team-a", "app-msi-acrpull-secret").unwrap();
    assert_eq!(v2["metadata"]["ownerReferences"][0]["apiVersion"], V2);
    assert_eq!(v1["metadata"]["ownerReferences"][0]["apiVersion"], V1);
    // Unmanaged first, then acr-pull-*, then *-msi-acrpull-secret.
    let sa = env.service_account("team-a", "default").unwrap();
    assert_eq!(
        pull_secrets(&sa),
        ["zz-user-secret", "acr-pull-app", "app-msi-acrpull-secret"]
    );
    // Deleting one leaves the other's secret alone.
    env.kube
        .delete(V1, "AcrPullBinding", "team-a", "app")
        .unwrap();
    env.wait_gone(V1, "AcrPullBinding", "team-a", "app").await;
    assert!(env.secret("team-a", "acr-pull-app").is_some());
    assert_eq!(
        pull_secrets(&env.service_account("team-a", "default").unwrap()),
        ["zz-user-secret", "acr-pull-app"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_uses_the_referenced_service_account() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(federated_sa("team-a"));
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "wi", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"workloadIdentity": {"serviceAccountRef": "federated"}},
                 "serviceAccountName": "puller"}}));
    env.wait_ready(V2, "team-a", "wi", "True").await;
    // The ServiceAccount token was minted for serviceAccountRef, not the target (SPEC §11).
    let issued = env.kube.issued_tokens();
    assert!(!issued.is_empty());
    assert!(issued
        .iter()
        .all(|t| t.service_account == "federated" && t.namespace == "team-a"));
    assert_eq!(
        pull_secrets(&env.service_account("team-a", "puller").unwrap()),
        ["acr-pull-wi"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_a_message_and_other_bindings_still_work() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    // Disallowed look-alike registry: Failed, and no Azure call for it.
    let mut evil = v2_managed("team-a", "evil", "puller", "repository:app:pull");
    evil["spec"]["acr"]["server"] = json!("azurecr.io.evil.com");
    env.create(evil);
    // Missing ServiceAccount.
    env.create(v2_managed(
        "team-a",
        "nosa",
        "missing",
        "repository:app:pull",
    ));
    // Identity without a role on the registry: Azure refuses.
    let mut norole = v2_managed("team-a", "norole", "puller", "repository:app:pull");
    norole["spec"]["auth"]["managedIdentity"]["clientID"] = json!(NOROLE_CLIENT);
    env.create(norole);
    // And a good one next to them.
    env.create(v2_managed(
        "team-a",
        "good",
        "puller",
        "repository:app:pull",
    ));

    env.wait_ready(V2, "team-a", "good", "True").await;
    let b = env.wait_ready(V2, "team-a", "evil", "False").await;
    assert_eq!(b["status"]["phase"], "Failed");
    assert!(
        b["status"]["error"]
            .as_str()
            .unwrap()
            .contains("not under an allowed registry suffix"),
        "{b:#}"
    );
    let reason = b["status"]["conditions"][0]["reason"].as_str().unwrap();
    assert_eq!(reason, "RegistryNotAllowed");
    let b = env.wait_ready(V2, "team-a", "nosa", "False").await;
    assert!(b["status"]["error"]
        .as_str()
        .unwrap()
        .contains("service account \"missing\" not found"));
    let b = env.wait_ready(V2, "team-a", "norole", "False").await;
    assert_eq!(b["status"]["phase"], "Failed");
    assert!(env.secret("team-a", "acr-pull-norole").is_none());
    assert!(
        env.azure
            .requests()
            .iter()
            .all(|r| !r.host.contains("evil")),
        "no request may go to a disallowed host"
    );
    // Creating the ServiceAccount repairs the waiting binding.
    env.create(sa("team-a", "missing", json!({})));
    env.wait_ready(V2, "team-a", "nosa", "True").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_deleted_secret_is_repaired() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.wait_ready(V2, "team-a", "app", "True").await;
    let before = env.secret("team-a", "acr-pull-app").unwrap();
    env.kube
        .delete("v1", "Secret", "team-a", "acr-pull-app")
        .unwrap();
    let after = env
        .kube
        .wait_for(
            "v1",
            "Secret",
            "team-a",
            "acr-pull-app",
            |s| s.is_some_and(|s| s["metadata"]["uid"] != before["metadata"]["uid"]),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after["type"], "kubernetes.io/dockerconfigjson");
}

/// A Secret with the pull secret's name that no binding controls (no controller
/// ownerReference: acrpull and the old controller always set one) is somebody else's: the
/// binding fails with SecretConflict and the Secret is left alone — no write is even tried,
/// so the admission policy, which would refuse it, refuses nothing (the harness checks). Once
/// its owner hands it over (a controller ownerReference to the binding), it is adopted:
/// labelled, then refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_no_binding_controls_is_not_taken_over_until_handed_over() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    let mine = env.create(json!({"apiVersion": "v1", "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "acr-pull-app", "namespace": "team-a"},
        "data": {".dockerconfigjson": "eyJhdXRocyI6e319"}}));
    let app = env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    let failed = env.wait_ready(V2, "team-a", "app", "False").await;
    let ready = failed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["reason"], "SecretConflict", "{failed:#}");
    assert!(
        failed["status"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not managed by acrpull")),
        "{failed:#}"
    );
    let untouched = env.secret("team-a", "acr-pull-app").unwrap();
    assert_eq!(
        untouched["metadata"]["resourceVersion"],
        mine["metadata"]["resourceVersion"]
    );
    let attempts: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("acrpull/") && r.resource == "secrets")
        .filter(|r| !["get", "list", "watch"].contains(&r.verb.as_str()))
        .collect();
    // A v1beta2 pull secret is created without a read first (the watch shows every labelled
    // Secret): the one create the API server refuses with 409 is how the Secret in the way is
    // found; nothing else is sent, and nothing the API server accepted.
    let (refused, writes): (Vec<_>, Vec<_>) = attempts
        .into_iter()
        .partition(|r| r.verb == "create" && r.status == 409);
    assert!(writes.is_empty(), "{writes:#?}");
    assert!(refused.len() <= 1, "{refused:#?}");

    // Handed over by its owner: the binding controls it now.
    let mut handed = untouched;
    handed["metadata"]["ownerReferences"] = json!([{"apiVersion": V2, "kind": "AcrPullBinding",
        "name": "app", "uid": app["metadata"]["uid"], "controller": true,
        "blockOwnerDeletion": true}]);
    env.create(handed);
    env.wait_ready(V2, "team-a", "app", "True").await;
    let adopted = env.secret("team-a", "acr-pull-app").unwrap();
    assert_eq!(
        adopted["metadata"]["labels"]["acr.microsoft.com/binding"],
        "app"
    );
    assert!(docker_config(&adopted)["auths"][REGISTRY]["password"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_is_honoured() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.spawn(&["--label-selector=tier in (gold)".to_string()]);
    env.create(sa("team-a", "puller", json!({})));
    let mut gold = v2_managed("team-a", "gold", "puller", "repository:app:pull");
    gold["metadata"]["labels"] = json!({"tier": "gold"});
    env.create(gold);
    env.create(v2_managed(
        "team-a",
        "plain",
        "puller",
        "repository:app:pull",
    ));
    env.wait_ready(V2, "team-a", "gold", "True").await;
    // The other binding is never touched: no finalizer, no status, no secret.
    let plain = env
        .kube
        .get(V2, "AcrPullBinding", "team-a", "plain")
        .unwrap();
    assert!(plain["metadata"]["finalizers"].is_null(), "{plain:#}");
    assert!(plain["status"].is_null());
    assert!(env.secret("team-a", "acr-pull-plain").is_none());
}

/// A Secret as the old controller wrote it for `binding` (uid), holding `token`.
fn old_secret(
    name: &str,
    binding: &serde_json::Value,
    api_version: &str,
    labelled: bool,
    inputs: &str,
    token: &str,
) -> serde_json::Value {
    use base64::Engine;
    let now = jiff::Timestamp::now();
    let expiry = now + jiff::SignedDuration::from_hours(2);
    let refresh = now - jiff::SignedDuration::from_mins(5);
    let doc = acrpull::state::dockerconfig::docker_config_json(
        REGISTRY,
        &acrpull::state::token::SecretToken::new(token),
    );
    let mut labels = json!({});
    if labelled {
        labels = json!({"acr.microsoft.com/binding": binding["metadata"]["name"]});
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": "team-a", "labels": labels,
            "annotations": {
                "acr.microsoft.com/token.expiry": acrpull::k8s::binding::rfc3339(expiry),
                "acr.microsoft.com/token.refresh": acrpull::k8s::binding::rfc3339(refresh),
                "acr.microsoft.com/token.inputs": inputs},
            "ownerReferences": [{"apiVersion": api_version, "kind": "AcrPullBinding",
                "name": binding["metadata"]["name"], "uid": binding["metadata"]["uid"],
                "controller": true, "blockOwnerDeletion": true}]},
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(doc)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_the_old_controller_keeps_valid_tokens() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    // The cluster as the old controller left it.
    env.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "team-a"},
        "imagePullSecrets": [{"name": "acr-pull-current"}, {"name": "legacy-msi-acrpull-secret"}]}));
    let legacy = env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "legacy", "namespace": "team-a", "finalizers": ["msi-acrpull.microsoft.com"]},
        "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
                 "managedIdentityResourceID": "", "scope": "repository:app:pull"}}));
    let current = env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "current", "namespace": "team-a", "finalizers": ["msi-acrpull.microsoft.com"]},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"managedIdentity": {"clientID": MI_CLIENT}},
                 "serviceAccountName": "default"}}));
    // The old controller's hashes, computed the way it did.
    // path.Clean("") is "." and the old controller then used the (empty) default.
    let v1_inputs = acrpull::state::inputs::v1beta1(MI_CLIENT, "", REGISTRY, "repository:app:pull");
    let v2_inputs = acrpull::state::inputs::v1beta2(&acrpull::state::inputs::V1beta2Inputs {
        service_account_name: "default",
        managed: Some((MI_CLIENT, "")),
        environment: "PublicCloud",
        server: REGISTRY,
        scope: "repository:app:pull",
        ..Default::default()
    });
    // The legacy secret is unlabelled (old controller versions before the label existed).
    env.create(old_secret(
        "legacy-msi-acrpull-secret",
        &legacy,
        V1,
        false,
        &v1_inputs,
        "old-token-v1",
    ));
    env.create(old_secret(
        "acr-pull-current",
        &current,
        V2,
        true,
        &v2_inputs,
        "old-token-v2",
    ));

    env.spawn(&[]);
    env.wait_ready(V1, "team-a", "legacy", "True").await;
    env.wait_ready(V2, "team-a", "current", "True").await;

    // Labelled, not re-minted: the tokens are the old ones and Azure was never called.
    let l = env.secret("team-a", "legacy-msi-acrpull-secret").unwrap();
    assert_eq!(
        l["metadata"]["labels"]["acr.microsoft.com/binding"],
        "legacy"
    );
    assert_eq!(
        docker_config(&l)["auths"][REGISTRY]["password"],
        "old-token-v1"
    );
    let c = env.secret("team-a", "acr-pull-current").unwrap();
    assert_eq!(
        docker_config(&c)["auths"][REGISTRY]["password"],
        "old-token-v2"
    );
    assert!(
        env.azure.requests().is_empty(),
        "{:?}",
        env.azure.requests()
    );
    assert_eq!(
        pull_secrets(&env.service_account("team-a", "default").unwrap()),
        ["acr-pull-current", "legacy-msi-acrpull-secret"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_for_condition_ready_works() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    let cache = env.dir.path().join("kubectl-cache");
    let out = tokio::process::Command::new(prereq::kubectl())
        .arg(format!("--kubeconfig={}", env.kubeconfig.display()))
        .arg(format!("--cache-dir={}", cache.display()))
        .args([
            "-n",
            "team-a",
            "wait",
            "--for=condition=Ready",
            "apb/app",
            "--timeout=60s",
        ])
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl wait failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
}

fn password(env: &Env, ns: &str, name: &str) -> String {
    docker_config(&env.secret(ns, name).unwrap())["auths"][REGISTRY]["password"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn kubectl_wait_ready(env: &Env, name: &str) -> std::process::Output {
    let cache = env.dir.path().join("kubectl-cache");
    tokio::process::Command::new(prereq::kubectl())
        .arg(format!("--kubeconfig={}", env.kubeconfig.display()))
        .arg(format!("--cache-dir={}", cache.display()))
        .args([
            "-n",
            "team-a",
            "wait",
            "--for=condition=Ready",
            &format!("apb/{name}"),
            "--timeout=10s",
        ])
        .output()
        .await
        .expect("kubectl runs")
}

/// SPEC §3: a failed refresh keeps the working secret. While its token is valid the binding is
/// `Refreshing` and stays `Ready` (pulls work; `kubectl wait --for=condition=Ready` succeeds)
/// with the error and the next attempt shown; when the token expires it is `Failed`; when
/// Azure recovers a new token replaces the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_working_secret_and_ready_until_it_expires() {
    use azure_standin::{FaultAction, FaultRule, Hop};
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    // 24 s tokens: refreshed after ~11-12 s (fraction 0.5, up to 10 % jitter earlier), so
    // about 12 s of failing refreshes while the token is still valid.
    env.azure
        .update_config(|c| c.lifetimes.acr_access_secs = 24)
        .unwrap();
    env.spawn(&[]);
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.wait_ready(V2, "team-a", "app", "True").await;
    let first = password(&env, "team-a", "acr-pull-app");
    let first_expiry = env.secret("team-a", "acr-pull-app").unwrap()["metadata"]["annotations"]
        ["acr.microsoft.com/token.expiry"]
        .clone();

    // Azure goes down for the scoped-token hop: the refresh fails.
    let fault = env.azure.faults().add(
        FaultRule::new(FaultAction::Status {
            status: 503,
            retry_after_secs: None,
        })
        .hop(Hop::AcrToken),
    );
    let failing = env
        .kube
        .wait_for(
            V2,
            "AcrPullBinding",
            "team-a",
            "app",
            |b| {
                b.is_some_and(|b| {
                    b["status"]["phase"] == "Refreshing" && b["status"]["error"].is_string()
                })
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    let st = &failing["status"];
    assert!(
        st["consecutiveFailures"].as_u64().unwrap() >= 1,
        "{failing:#}"
    );
    let ready = &st["conditions"][0];
    assert_eq!(ready["status"], "True", "pulls still work: {failing:#}");
    assert_eq!(ready["reason"], "AzureUnavailable", "{failing:#}");
    assert_eq!(st["tokenExpirationTime"], first_expiry);
    assert!(st["nextRefreshTime"].as_str().unwrap() < first_expiry.as_str().unwrap());
    // A deployment script waiting for the binding is not blocked by a refresh that fails.
    let out = kubectl_wait_ready(&env, "app").await;
    assert!(
        out.status.success(),
        "kubectl wait failed while the token is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The working credential is untouched while the refresh fails.
    assert_eq!(password(&env, "team-a", "acr-pull-app"), first);
    assert!(
        pull_secrets(&env.service_account("team-a", "puller").unwrap())
            .contains(&"acr-pull-app".to_string())
    );
    // The token expires with the refresh still failing: now it is Failed.
    let failed = env.wait_ready(V2, "team-a", "app", "False").await;
    assert_eq!(failed["status"]["phase"], "Failed");
    assert_eq!(
        failed["status"]["conditions"][0]["reason"],
        "AzureUnavailable"
    );
    assert_eq!(
        env.secret("team-a", "acr-pull-app").unwrap()["metadata"]["annotations"]
            ["acr.microsoft.com/token.expiry"],
        first_expiry,
        "a failed refresh never overwrites the secret"
    );

    // Azure recovers: a new token replaces the old one.
    env.azure.faults().remove(fault);
    env.wait_ready(V2, "team-a", "app", "True").await;
    let second = password(&env, "team-a", "acr-pull-app");
    assert_ne!(second, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_conflicts_and_errors_are_retried_never_shown_as_failed() {
    use kube_standin::faults::{Action, Fault};
    let env = Env::start().await;
    // The first three patches conflict (finalizer, ServiceAccount, status are all patches),
    // and the first two Secret creates fail with 500.
    env.kube.faults().add(
        Fault::new(Action::Error {
            code: 409,
            message: None,
            retry_after: None,
        })
        .verb("patch")
        .next(3),
    );
    env.kube.faults().add(
        Fault::new(Action::Error {
            code: 500,
            message: None,
            retry_after: None,
        })
        .verb("create")
        .resource("secrets")
        .next(2),
    );
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    let b = env.wait_ready(V2, "team-a", "app", "True").await;
    assert_eq!(b["status"]["phase"], "Ready");
    assert!(b["status"]["consecutiveFailures"].is_null());
    let conflicts = env
        .kube
        .requests()
        .iter()
        .filter(|r| r.status == 409)
        .count();
    assert_eq!(conflicts, 3, "the faults fired");
    // Never surfaced as a failure: no phase transition to Failed, in the logs or in the
    // binding's recorded transitions.
    let logs = env.logs();
    assert!(logs.contains("phase transition"), "{logs}");
    assert!(!logs.contains("to=\"Failed\""), "{logs}");
    let (_, debug) = env
        .http_get(env.debug_port, "/debug/bindings/team-a/app")
        .await;
    let v: serde_json::Value = serde_json::from_str(&debug).unwrap();
    let transitions = v["bindings"][0]["transitions"].as_array().unwrap().clone();
    assert!(!transitions.is_empty());
    assert!(
        transitions.iter().all(|t| t["to"] != "Failed"),
        "{transitions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_verified_and_scope_gaps_fail_before_any_pull() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    // mi-pull has no rights on `secret`: ACR mints a token, but it grants nothing there.
    env.create(v2_managed(
        "team-a",
        "gap",
        "puller",
        "repository:app:pull repository:secret:pull",
    ));

    let ok = env.wait_ready(V2, "team-a", "app", "True").await;
    let verified = ok["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "CredentialVerified")
        .cloned()
        .expect("CredentialVerified condition");
    assert_eq!(verified["status"], "True");
    assert_eq!(
        env.secret("team-a", "acr-pull-app").unwrap()["metadata"]["annotations"]
            ["acr.microsoft.com/token.verified"],
        "true"
    );

    let gap = env.wait_ready(V2, "team-a", "gap", "False").await;
    assert_eq!(gap["status"]["phase"], "Failed");
    assert_eq!(gap["status"]["conditions"][0]["reason"], "ScopeNotGranted");
    let error = gap["status"]["error"].as_str().unwrap();
    assert!(error.contains("repository:secret:pull"), "{error}");
    assert!(error.contains("AcrPull"), "an actionable hint: {error}");
    assert!(!error.contains("repository:app:pull,"), "{error}");
    // No half-working secret was written for it.
    assert!(env.secret("team-a", "acr-pull-gap").is_none());
    // The grant was read from the access tokens the registry issued: no second request to
    // its Basic-auth token endpoint.
    assert_eq!(
        env.azure
            .requests_for(azure_standin::Hop::AcrTokenGet)
            .len(),
        0,
        "{:#?}",
        env.azure.requests()
    );
    let (_, metrics) = env.http_get(env.metrics_port, "/metrics").await;
    assert!(
        metrics.contains("acrpull_credential_verifications_total{outcome=\"from_token\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("acrpull_credential_verifications_total{outcome=\"scope_not_granted\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_sharing_a_credential_cost_one_call_per_hop_and_one_check() {
    use azure_standin::Hop;
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(sa("team-b", "puller", json!({})));
    for (ns, name) in [("team-a", "one"), ("team-a", "two"), ("team-b", "three")] {
        env.create(v2_managed(ns, name, "puller", "repository:app:pull"));
    }
    for (ns, name) in [("team-a", "one"), ("team-a", "two"), ("team-b", "three")] {
        env.wait_ready(V2, ns, name, "True").await;
    }
    // One identity, one registry, one scope: one call at each hop, and the verification
    // costs none (the grant is read from the access token).
    for hop in [Hop::Imds, Hop::AcrExchange, Hop::AcrToken] {
        let n = env.azure.requests_for(hop).len();
        assert_eq!(n, 1, "{hop:?}: {n} calls\n{:#?}", env.azure.requests());
    }
    assert_eq!(env.azure.requests_for(Hop::AcrTokenGet).len(), 0);
    let (_, metrics) = env.http_get(env.metrics_port, "/metrics").await;
    assert!(
        metrics.contains("acrpull_credential_verifications_total{outcome=\"from_token\"} 3"),
        "{metrics}"
    );
}

/// Rule 8 through the real wiring (the binding index finds siblings in the controller's
/// binding store): bindings created together on one ServiceAccount are attached by one
/// patch, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_on_one_service_account_are_attached_in_one_patch() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    let names = ["one", "two", "three", "four"];
    for name in names {
        env.create(v2_managed("team-a", name, "puller", "repository:app:pull"));
    }
    for name in names {
        env.wait_ready(V2, "team-a", name, "True").await;
    }
    let patches: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| {
            r.verb == "patch"
                && r.resource == "serviceaccounts"
                && r.namespace == "team-a"
                && r.user_agent.starts_with("acrpull/")
        })
        .collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    let sa = env
        .kube
        .get("v1", "ServiceAccount", "team-a", "puller")
        .unwrap();
    let attached = pull_secrets(&sa);
    for name in names {
        assert!(
            attached.contains(&format!("acr-pull-{name}")),
            "{attached:?}"
        );
    }
}
