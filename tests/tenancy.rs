//! Multi-tenant safety (SPEC §12), tried the way a tenant of a shared cluster would, against
//! the controller's real reconcile machinery in-process (`inprocess/mod.rs`) and both stand-ins:
//!
//! - an air-gapped binding naming its own Entra authority (a honeypot) gets no request sent
//!   there, and no ServiceAccount token is even minted — unless the operator allowed the host;
//! - a binding naming another team's identity or registry is refused in `enforce`, flagged in
//!   `audit`, and served as before in `off`;
//! - a policy edit (and a namespace label change) revokes the credential — Secret deleted,
//!   ServiceAccount detached, logged and counted — and restoring it mints again;
//! - push, delete and `*` scopes are refused by default, in every mode.

mod common;
mod inprocess;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use acrpull::state::binding::Policy;
use acrpull::state::tenancy::{AllowedClouds, Mode};
use common::{federated_sa, sa, v2_managed, MI_CLIENT, REGISTRY, TENANT, V2, WI_CLIENT};
use inprocess::{condition, eventually, logs_about, Controller, Setup, StandIns};
use serde_json::{json, Value};

const HONEYPOT: &str = "login.honeypot.example";

/// A TCP listener on loopback that counts connections (any connection is a request the
/// controller tried to send) and answers nothing.
async fn honeypot() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (addr, hits)
}

fn air_gapped_wi(ns: &str, name: &str) -> Value {
    json!({"apiVersion": V2, "kind": "AcrPullBinding",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull",
                            "environment": "AirgappedCloud",
                            "cloudConfig": {"entraAuthorityHost": format!("https://{HONEYPOT}/"),
                                            "resourceManagerAudience": "https://management.honeypot.example/"}},
                    "auth": {"workloadIdentity": {"serviceAccountRef": "federated",
                                                  "clientID": WI_CLIENT, "tenantID": TENANT}},
                    "serviceAccountName": "puller"}})
}

fn tokens_for_federated(s: &StandIns) -> usize {
    s.kube
        .issued_tokens()
        .iter()
        .filter(|t| t.namespace == "team-a" && t.service_account == "federated")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_air_gapped_binding_cannot_send_a_token_to_a_host_it_names() {
    let s = StandIns::start().await;
    let (addr, hits) = honeypot().await;
    s.create(federated_sa("team-a"));
    s.create(sa("team-a", "puller", json!({})));
    let resolve = vec![(HONEYPOT.to_string(), addr)];
    let ctrl = Controller::start(
        &s,
        Setup {
            resolve: resolve.clone(),
            ..Setup::default()
        },
    )
    .await;
    s.create(air_gapped_wi("team-a", "exfil"));
    let b = s
        .wait_binding(V2, "team-a", "exfil", "refused", |b| {
            b["status"]["phase"] == "Failed"
        })
        .await;
    // Nothing reached the honeypot, and no ServiceAccount token was minted to send there.
    assert_eq!(hits.load(Ordering::SeqCst), 0, "requests to the honeypot");
    assert_eq!(
        tokens_for_federated(&s),
        0,
        "TokenRequests for team-a/federated"
    );
    let ready = condition(&b, "Ready").unwrap();
    assert_eq!(ready["reason"], "AuthorityNotAllowed", "{b:#}");
    let error = b["status"]["error"].as_str().unwrap();
    assert!(error.contains("--allowed-entra-authority-hosts"), "{error}");
    ctrl.stop().await;

    // The control: the same binding once the operator allows the host does reach it, so the
    // zeros above are the allow-list's doing, not the test's.
    let allowed = Policy {
        allowed_clouds: AllowedClouds::new(
            [format!("https://{HONEYPOT}")],
            ["https://management.honeypot.example"],
        ),
        ..Policy::default()
    };
    let _ctrl = Controller::start(
        &s,
        Setup {
            policy: allowed,
            resolve,
            ..Setup::default()
        },
    )
    .await;
    eventually(60, "the allowed authority to be contacted", || {
        (hits.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    assert!(tokens_for_federated(&s) > 0);
}

/// A policy for team-a: the workload identity and a registry of its own; neither the managed
/// identity `mi-pull` nor `demo.azurecr.io` (both another team's here).
fn team_a_policy(registries: &[&str], identities: &[&str]) -> Value {
    json!({"apiVersion": "acrpull.microsoft.com/v1alpha1", "kind": "AcrPullPolicy",
           "metadata": {"name": "team-a"},
           "spec": {"namespaces": {"names": ["team-a"]},
                    "managedIdentities": {"clientIDs": identities},
                    "workloadIdentities": [{"clientID": WI_CLIENT, "tenantID": TENANT}],
                    "registries": {"servers": registries}}})
}

fn mode_policy(mode: Mode) -> Policy {
    Policy {
        tenancy_mode: mode,
        ..Policy::default()
    }
}

fn events(s: &StandIns, ns: &str, reason: &str) -> Vec<Value> {
    s.kube
        .list("events.k8s.io/v1", "Event", Some(ns))
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_identity_or_registry_is_refused_in_enforce_flagged_in_audit_unchanged_in_off(
) {
    // (what, policy's registries, policy's managed identities): the binding always uses
    // mi-pull on demo.azurecr.io, which works in Azure.
    let cases = [
        ("another team's identity", vec![REGISTRY], vec![]),
        (
            "another team's registry",
            vec!["teama.azurecr.io"],
            vec![MI_CLIENT],
        ),
    ];
    for (what, registries, identities) in cases {
        for mode in [Mode::Off, Mode::Audit, Mode::Enforce] {
            let s = StandIns::start().await;
            s.create(team_a_policy(&registries, &identities));
            s.create(sa("team-a", "puller", json!({})));
            let ctrl = Controller::start(
                &s,
                Setup {
                    policy: mode_policy(mode),
                    ..Setup::default()
                },
            )
            .await;
            s.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
            let tag = format!("{what}, {}", mode.as_str());
            match mode {
                Mode::Off => {
                    let b = s.wait_ready(V2, "team-a", "app", true).await;
                    assert!(condition(&b, "Permitted").is_none(), "{tag}: {b:#}");
                }
                Mode::Audit => {
                    let b = s
                        .wait_binding(V2, "team-a", "app", "flagged", |b| {
                            condition(b, "Permitted").is_some_and(|c| c["status"] == "False")
                                && condition(b, "Ready").is_some_and(|c| c["status"] == "True")
                        })
                        .await;
                    let c = condition(&b, "Permitted").unwrap();
                    assert_eq!(c["reason"], "NotPermitted", "{tag}");
                    assert!(
                        c["message"]
                            .as_str()
                            .unwrap()
                            .contains("AcrPullPolicy team-a"),
                        "{tag}: {c}"
                    );
                    assert!(s
                        .kube
                        .get("v1", "Secret", "team-a", "acr-pull-app")
                        .is_some());
                    let e = eventually(30, "the audit Event", || {
                        events(&s, "team-a", "NotPermitted").pop()
                    })
                    .await;
                    assert_eq!(e["type"], "Warning", "{tag}");
                    let m = ctrl.get("/metrics").await;
                    assert_eq!(
                        metric(
                            &m,
                            r#"acrpull_policy_refusals_total{mode="audit",reason="NotPermitted"}"#
                        ),
                        1.0,
                        "{tag}\n{m}"
                    );
                }
                Mode::Enforce => {
                    let b = s
                        .wait_binding(V2, "team-a", "app", "refused", |b| {
                            b["status"]["phase"] == "Failed"
                        })
                        .await;
                    let ready = condition(&b, "Ready").unwrap();
                    assert_eq!(ready["reason"], "NotPermitted", "{tag}: {b:#}");
                    let error = b["status"]["error"].as_str().unwrap();
                    assert!(error.contains("AcrPullPolicy team-a"), "{tag}: {error}");
                    assert!(s
                        .kube
                        .get("v1", "Secret", "team-a", "acr-pull-app")
                        .is_none());
                    // Refused before any Azure call.
                    assert!(
                        s.azure.requests().is_empty(),
                        "{tag}: {:?}",
                        s.azure.requests()
                    );
                    eventually(30, "the NotPermitted Event", || {
                        events(&s, "team-a", "NotPermitted").pop()
                    })
                    .await;
                    let m = ctrl.get("/metrics").await;
                    assert_eq!(
                        metric(
                            &m,
                            r#"acrpull_policy_refusals_total{mode="enforce",reason="NotPermitted"}"#
                        ),
                        1.0,
                        "{tag}\n{m}"
                    );
                }
            }
            ctrl.stop().await;
        }
    }
}

fn pull_secrets_of(s: &StandIns, ns: &str, name: &str) -> Vec<String> {
    s.kube
        .get("v1", "ServiceAccount", ns, name)
        .map(|sa| common::pull_secrets(&sa))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_revokes_and_restores_access() {
    let s = StandIns::start().await;
    s.create(team_a_policy(&[REGISTRY], &[MI_CLIENT]));
    s.create(sa("team-a", "puller", json!({})));
    let ctrl = Controller::start(
        &s,
        Setup {
            policy: mode_policy(Mode::Enforce),
            ..Setup::default()
        },
    )
    .await;
    s.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    let b = s.wait_ready(V2, "team-a", "app", true).await;
    assert_eq!(condition(&b, "Permitted").unwrap()["status"], "True");
    assert_eq!(pull_secrets_of(&s, "team-a", "puller"), ["acr-pull-app"]);
    let first = s
        .kube
        .get("v1", "Secret", "team-a", "acr-pull-app")
        .unwrap();

    // The operator narrows the policy: the registry is no longer team-a's.
    s.create(team_a_policy(&["teama.azurecr.io"], &[MI_CLIENT]));
    s.wait_binding(V2, "team-a", "app", "revoked", |b| {
        b["status"]["phase"] == "Failed"
            && condition(b, "Ready").is_some_and(|c| c["reason"] == "NotPermitted")
    })
    .await;
    assert!(s
        .kube
        .get("v1", "Secret", "team-a", "acr-pull-app")
        .is_none());
    assert!(pull_secrets_of(&s, "team-a", "puller").is_empty());
    let m = ctrl.get("/metrics").await;
    assert_eq!(
        metric(&m, "acrpull_credential_revocations_total"),
        1.0,
        "{m}"
    );
    assert!(!events(&s, "team-a", "CredentialRevoked").is_empty());
    assert!(
        logs_about("team-a")
            .iter()
            .any(|l| l.contains("pull secret deleted")),
        "revocation logged"
    );

    // Restored: minted again (a new Secret), attached again.
    s.create(team_a_policy(&[REGISTRY], &[MI_CLIENT]));
    s.wait_ready(V2, "team-a", "app", true).await;
    let second = s
        .kube
        .get("v1", "Secret", "team-a", "acr-pull-app")
        .unwrap();
    assert_ne!(first["metadata"]["uid"], second["metadata"]["uid"]);
    assert_eq!(pull_secrets_of(&s, "team-a", "puller"), ["acr-pull-app"]);

    // The same through a namespace's labels: a policy selecting team=a.
    s.kube
        .delete(
            "acrpull.microsoft.com/v1alpha1",
            "AcrPullPolicy",
            "",
            "team-a",
        )
        .unwrap();
    let mut by_label = team_a_policy(&[REGISTRY], &[MI_CLIENT]);
    by_label["metadata"]["name"] = json!("by-label");
    by_label["spec"]["namespaces"] = json!({"selector": {"matchLabels": {"team": "a"}}});
    s.create(by_label);
    s.wait_binding(V2, "team-a", "app", "revoked without a label", |b| {
        b["status"]["phase"] == "Failed"
    })
    .await;
    assert!(s
        .kube
        .get("v1", "Secret", "team-a", "acr-pull-app")
        .is_none());
    s.create(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "team-a", "labels": {"team": "a"}}}));
    let b = s.wait_ready(V2, "team-a", "app", true).await;
    let c = condition(&b, "Permitted").unwrap();
    assert_eq!(c["message"], "permitted by AcrPullPolicy by-label");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_delete_and_wildcard_scopes_are_refused_by_default() {
    let s = StandIns::start().await;
    s.create(sa("team-a", "puller", json!({})));
    let _ctrl = Controller::start(&s, Setup::default()).await;
    for (name, scope) in [
        ("push", "repository:app:pull,push"),
        ("delete", "repository:app:delete"),
        ("star", "repository:app:*"),
    ] {
        s.create(v2_managed("team-a", name, "puller", scope));
    }
    for name in ["push", "delete", "star"] {
        let b = s
            .wait_binding(V2, "team-a", name, "refused", |b| {
                b["status"]["phase"] == "Failed"
            })
            .await;
        assert_eq!(
            condition(&b, "Ready").unwrap()["reason"],
            "ActionNotAllowed"
        );
        let error = b["status"]["error"].as_str().unwrap();
        assert!(error.contains("--allowed-scope-actions"), "{error}");
        assert!(s
            .kube
            .get("v1", "Secret", "team-a", &format!("acr-pull-{name}"))
            .is_none());
    }
    assert!(s.azure.requests().is_empty(), "{:?}", s.azure.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_example_policy_is_valid_and_a_policy_covering_nothing_is_refused() {
    use acrpull::k8s::api::policy::AcrPullPolicy;
    let s = StandIns::start().await;
    // Through the API (schemas and CEL rules apply), as kubectl would create them.
    let mut config = kube::Config::new(s.kube.url().parse().unwrap());
    config.auth_info.token = Some(s.kube.admin_token().to_string().into());
    let api: kube::Api<AcrPullPolicy> = kube::Api::all(kube::Client::try_from(config).unwrap());
    let pp = kube::api::PostParams::default();
    let example: AcrPullPolicy = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/acrpullpolicy.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    api.create(&pp, &example)
        .await
        .expect("the example is valid");
    let empty: AcrPullPolicy = serde_json::from_value(
        json!({"apiVersion": "acrpull.microsoft.com/v1alpha1", "kind": "AcrPullPolicy",
               "metadata": {"name": "covers-nothing"},
               "spec": {"namespaces": {"names": []}, "registries": {"servers": [REGISTRY]}}}),
    )
    .unwrap();
    let err = api
        .create(&pp, &empty)
        .await
        .expect_err("a policy naming no namespace");
    assert!(err.to_string().contains("name namespaces"), "{err}");
}
