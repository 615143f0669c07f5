//! Token canary: a representative workload (managed and workload identity, v1beta1 unscoped
//! tokens, failing bindings, a throttled refresh, refresh cycles with 20-second ACR tokens, a
//! deletion) under `--log-level=trace`, in text and JSON log formats. Every token the stand-ins
//! issued that the test can see — every password ever written to a pull Secret, its docker
//! `auth` value, every ServiceAccount token from TokenRequest — is then searched for, in plain,
//! base64 and base64url form and by its payload and signature segments, in everything the
//! controller exposes: its logs, Kubernetes Events (core v1 and events.k8s.io/v1), /metrics,
//! binding status (errors included), /debug/bindings and /debug/bindings/{ns}/{name}.
//!
//! Tokens the test cannot see (IMDS and Entra access tokens, ACR refresh tokens behind scoped
//! tokens) are covered structurally: no JWT-shaped string may appear in any of those outputs.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use azure_standin::{FaultAction, FaultRule, Hop, Trigger};
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const UNFEDERATED_SA: &str = "unfederated";

/// Everything the controller exposed, gathered over the run.
#[derive(Default)]
struct Outputs {
    parts: Vec<(String, String)>, // (where, text)
}

impl Outputs {
    fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.parts.push((place.into(), text.into()));
    }
}

/// Passwords currently in the pull Secrets, with their docker `auth` values.
fn secret_credentials(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    for s in env.kube.list("v1", "Secret", None) {
        if s["type"] != "kubernetes.io/dockerconfigjson" {
            continue;
        }
        out.push(
            s["data"][".dockerconfigjson"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        for (_, entry) in docker_config(&s)["auths"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            for k in ["password", "auth"] {
                if let Some(v) = entry[k].as_str() {
                    out.push(v.to_string());
                }
            }
        }
    }
    out
}

/// The forms a leaked secret could take: itself, base64 and base64url, and for JWTs the payload
/// and signature segments on their own (a truncated log line still leaks them).
fn needles(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let mut n = vec![
        secret.to_string(),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        STANDARD.encode(format!("00000000-0000-0000-0000-000000000000:{secret}")),
    ];
    let segs: Vec<&str> = secret.split('.').collect();
    if segs.len() == 3 {
        n.push(format!("{}.{}", segs[1], segs[2]));
        n.push(segs[2].to_string());
        n.push(segs[1].to_string());
    }
    n.retain(|s| s.len() >= 16);
    n
}

/// A JWT-shaped string: `eyJ…` `.` `eyJ…` `.` signature.
fn find_jwt(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let is_b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let mut i = 0;
    while let Some(p) = text[i..].find("eyJ") {
        let start = i + p;
        let mut j = start;
        let mut segs = 0;
        let mut seg_len = 0;
        while j < b.len() && (is_b64(b[j]) || b[j] == b'.') {
            if b[j] == b'.' {
                if seg_len < 4 {
                    break;
                }
                segs += 1;
                seg_len = 0;
            } else {
                seg_len += 1;
            }
            j += 1;
        }
        if segs >= 2
            && seg_len >= 16
            && text[start..j]
                .split('.')
                .nth(1)
                .is_some_and(|s| s.starts_with("eyJ"))
        {
            return Some(text[start..j.min(start + 60)].to_string());
        }
        i = start + 3;
    }
    None
}

async fn snapshot(env: &Env, out: &mut Outputs, tag: &str) {
    let (_, metrics) = env.http_get(env.metrics_port, "/metrics").await;
    out.add(format!("/metrics ({tag})"), metrics);
    let (_, debug) = env.http_get(env.debug_port, "/debug/bindings").await;
    if let Ok(list) = serde_json::from_str::<Value>(&debug) {
        for b in list.as_array().cloned().unwrap_or_default() {
            let (ns, name) = (
                b["namespace"].as_str().unwrap_or(""),
                b["name"].as_str().unwrap_or(""),
            );
            let path = format!("/debug/bindings/{ns}/{name}");
            let (_, one) = env.http_get(env.debug_port, &path).await;
            out.add(format!("{path} ({tag})"), one);
        }
    }
    out.add(format!("/debug/bindings ({tag})"), debug);
    for api in [V1, V2] {
        for b in env.kube.list(api, "AcrPullBinding", None) {
            out.add(
                format!("{api} {} status ({tag})", b["metadata"]["name"]),
                b["status"].to_string(),
            );
        }
    }
}

async fn run_canary(format: &str) {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.azure
        .update_config(|c| c.lifetimes.acr_access_secs = 20)
        .unwrap();
    env.spawn_overriding(&["--log-level=trace".into(), format!("--log-format={format}")]);

    env.create(sa("team-a", "puller", json!({})));
    env.create(sa("team-a", "default", json!({})));
    env.create(federated_sa("team-a"));
    // Annotated, but no federated credential: Entra refuses the assertion.
    env.create(sa(
        "team-a",
        UNFEDERATED_SA,
        json!({
        "azure.workload.identity/client-id": WI_CLIENT,
        "azure.workload.identity/tenant-id": TENANT}),
    ));

    env.create(v2_managed(
        "team-a",
        "mi",
        "puller",
        "repository:app:pull repository:base:pull",
    ));
    let mut wi = v2_managed("team-a", "wi", "puller", "repository:app:pull");
    wi["spec"]["auth"] = json!({"workloadIdentity": {"serviceAccountRef": "federated"}});
    env.create(wi);
    // v1beta1 without a scope: the ACR refresh token itself is the password.
    env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "legacy", "namespace": "team-a"},
        "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT}}));
    // Failing: no role on the registry; workload identity without federation.
    let mut norole = v2_managed("team-a", "norole", "puller", "repository:app:pull");
    norole["spec"]["auth"]["managedIdentity"]["clientID"] = json!(NOROLE_CLIENT);
    env.create(norole);
    let mut unfed = v2_managed("team-a", "unfed", "puller", "repository:app:pull");
    unfed["spec"]["auth"] = json!({"workloadIdentity": {"serviceAccountRef": UNFEDERATED_SA}});
    env.create(unfed);
    // Disposable, deleted after its first token.
    env.create(v2_managed(
        "team-a",
        "doomed",
        "puller",
        "repository:app:pull",
    ));

    env.wait_ready(V2, "team-a", "mi", "True").await;
    env.wait_ready(V2, "team-a", "wi", "True").await;
    env.wait_ready(V1, "team-a", "legacy", "True").await;
    env.wait_ready(V2, "team-a", "norole", "False").await;
    env.wait_ready(V2, "team-a", "unfed", "False").await;
    env.wait_ready(V2, "team-a", "doomed", "True").await;

    let mut out = Outputs::default();
    let mut creds: BTreeSet<String> = secret_credentials(&env).into_iter().collect();
    snapshot(&env, &mut out, "initial").await;

    // Throttling and a server error on the refresh path, then let tokens roll over twice.
    env.azure.faults().add(
        FaultRule::new(FaultAction::Throttle {
            json: true,
            retry_after_secs: Some(1),
        })
        .hop(Hop::AcrToken)
        .trigger(Trigger::NextN { n: 2 }),
    );
    env.azure.faults().add(
        FaultRule::new(FaultAction::Status {
            status: 500,
            retry_after_secs: None,
        })
        .hop(Hop::AcrExchange)
        .trigger(Trigger::NextN { n: 1 }),
    );
    env.kube
        .delete(V2, "AcrPullBinding", "team-a", "doomed")
        .unwrap();
    let first: BTreeSet<String> = creds.clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rounds = 0;
    loop {
        creds.extend(secret_credentials(&env));
        let mi_pw = password(&env, "team-a", "acr-pull-mi");
        let wi_pw = password(&env, "team-a", "acr-pull-wi");
        let rolled = |pw: &Option<String>| pw.as_ref().is_some_and(|p| !first.contains(p));
        if rounds % 8 == 0 {
            snapshot(&env, &mut out, &format!("t{rounds}")).await;
        }
        rounds += 1;
        // Two refreshes seen for each scoped binding (20 s tokens refresh every ~10 s).
        let refreshed = creds.len() >= first.len() + 4 && rolled(&mi_pw) && rolled(&wi_pw);
        if refreshed && env.secret("team-a", "acr-pull-doomed").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh cycle within 90 s\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    env.wait_gone(V2, "AcrPullBinding", "team-a", "doomed")
        .await;
    snapshot(&env, &mut out, "final").await;

    // Everything issued that the test can see.
    let sa_tokens: Vec<String> = env
        .kube
        .issued_tokens()
        .into_iter()
        .map(|t| t.token)
        .collect();
    assert!(
        !sa_tokens.is_empty(),
        "workload identity requested ServiceAccount tokens"
    );
    let passwords = creds.len();
    let mut secrets: Vec<String> = creds.into_iter().collect();
    secrets.extend(sa_tokens.iter().cloned());

    let logs = env.logs();
    assert!(logs.lines().count() > 100, "trace logging produced output");
    if format == "json" {
        let bad = logs
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_err())
            .count();
        assert_eq!(bad, 0, "every JSON log line parses");
    }
    out.add("controller log", logs);
    for api in ["v1", "events.k8s.io/v1"] {
        let events = env.kube.list(api, "Event", None);
        assert!(!events.is_empty(), "{api} events exist");
        out.add(
            format!("{api} Events"),
            serde_json::to_string(&events).unwrap(),
        );
    }

    let mut leaks = Vec::new();
    for (place, text) in &out.parts {
        for s in &secrets {
            for n in needles(s) {
                if text.contains(&n) {
                    leaks.push(format!(
                        "{place}: contains a token (form of {} chars)",
                        n.len()
                    ));
                }
            }
        }
        if let Some(j) = find_jwt(text) {
            leaks.push(format!("{place}: JWT-shaped string {j}…"));
        }
    }
    leaks.dedup();
    eprintln!(
        "canary ({format}): {} pull-secret credentials, {} SA tokens, {} outputs, {} bytes searched",
        passwords,
        sa_tokens.len(),
        out.parts.len(),
        out.parts.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
    assert!(leaks.is_empty(), "token leaks:\n{}", leaks.join("\n"));
}

fn password(env: &Env, ns: &str, name: &str) -> Option<String> {
    let s = env.secret(ns, name)?;
    docker_config(&s)["auths"][REGISTRY]["password"]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_leaks_with_trace_text_logs() {
    run_canary("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_leaks_with_trace_json_logs() {
    run_canary("json").await;
}

#[test]
fn the_detectors_detect() {
    // A canary that cannot see a leak proves nothing.
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJlc2lnbmF0dXJlc2ln";
    assert!(find_jwt(&format!("token=\"{jwt}\" end")).is_some());
    assert!(find_jwt("no eyJ here eyJhbGci.nope").is_none());
    let n = needles(jwt);
    assert!(n.iter().any(|x| x == "c2lnbmF0dXJlc2lnbmF0dXJlc2ln"));
    let b64 = base64::engine::general_purpose::STANDARD.encode(jwt);
    assert!(n.contains(&b64));
}
