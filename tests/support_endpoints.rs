//! The support endpoints as an attacker on the pod network would try them, against the real
//! binary and the stand-in API server (real TokenReviews and SubjectAccessReviews):
//!
//! - `/debug` is not on the metrics port and listens on loopback only: not reachable through
//!   any other local address;
//! - with `--metrics-secure`, `/metrics` and `/debug` answer 401 without a token or with one the
//!   API server rejects, 403 to an authenticated caller without the ClusterRole, 200 with it;
//!   a caller allowed to read bindings in one namespace sees that namespace's entries only.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Every local IPv4 address of this machine (from the kernel's routing table), loopback
/// included.
fn local_addresses() -> Vec<std::net::Ipv4Addr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let lines: Vec<&str> = trie.lines().collect();
    let mut out = Vec::new();
    for pair in lines.windows(2) {
        if pair[1].contains("/32 host LOCAL") {
            if let Ok(ip) = pair[0].trim().trim_start_matches("|-- ").parse() {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// Local addresses of listening TCP sockets on `port` (from /proc/net/tcp).
fn listeners_on(port: u16) -> Vec<std::net::Ipv4Addr> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let (addr, p) = fields.get(1)?.split_once(':')?;
            // st 0A = LISTEN
            if fields.get(3) != Some(&"0A") || u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            let raw = u32::from_str_radix(addr, 16).ok()?;
            Some(std::net::Ipv4Addr::from(raw.swap_bytes()))
        })
        .collect()
}

async fn wait_for_ready(env: &Env) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.http_get(env.probe_port, "/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_is_off_the_metrics_port_and_bound_to_loopback_only() {
    let env = Env::start().await;
    wait_for_ready(&env).await;
    // Served where it is configured, over loopback...
    assert_eq!(env.http_get(env.debug_port, "/debug/bindings").await.0, 200);
    // ...not on the metrics port (which production binds on the pod IP)...
    let (code, _) = env.http_get(env.metrics_port, "/debug/bindings").await;
    assert_eq!(code, 404, "/debug on the metrics port");
    // ...and by a socket bound to 127.0.0.1 alone, so no other local address reaches it: the
    // rest of 127/8 (always there) and any address of a real interface.
    assert_eq!(
        listeners_on(env.debug_port),
        [std::net::Ipv4Addr::LOCALHOST],
        "listening sockets on the debug port"
    );
    let mut others: Vec<std::net::Ipv4Addr> = local_addresses()
        .into_iter()
        .filter(|a| *a != std::net::Ipv4Addr::LOCALHOST)
        .collect();
    others.push(std::net::Ipv4Addr::new(127, 0, 0, 2));
    for addr in others {
        let reached = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((addr, env.debug_port)),
        )
        .await;
        assert!(
            !matches!(reached, Ok(Ok(_))),
            "/debug reachable through {addr}"
        );
    }
}

/// `GET https://127.0.0.1:<port><path>` with an optional bearer token; the status code.
async fn get_tls(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client.get(format!("https://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// The shipped ClusterRole `name` from deploy/rbac.yaml.
fn shipped_cluster_role(name: &str) -> String {
    let rbac =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).unwrap();
    rbac.split("\n---\n")
        .find(|d| d.contains("kind: ClusterRole\n") && d.contains(&format!("  name: {name}\n")))
        .unwrap_or_else(|| panic!("deploy/rbac.yaml has no ClusterRole {name}"))
        .to_string()
}

fn namespaces_of(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    let mut ns: Vec<String> = v["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["namespace"].as_str().unwrap().to_string())
        .collect();
    ns.sort();
    ns.dedup();
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_metrics_and_debug_authenticate_and_authorize_every_caller() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.spawn(&["--metrics-secure".into()]);
    for role in ["acrpull-metrics-reader", "acrpull-debug-reader"] {
        env.kube.apply_yaml(&shipped_cluster_role(role)).unwrap();
    }
    for name in ["scraper", "nobody", "tenant", "debugger", "puller"] {
        env.create(sa("team-a", name, json!({})));
    }
    env.create(sa("team-b", "puller", json!({})));
    for (who, role) in [
        ("scraper", "acrpull-metrics-reader"),
        ("debugger", "acrpull-debug-reader"),
    ] {
        env.create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("{who}-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": "team-a"}]}));
    }
    // The tenant may read the bindings of team-a, as `kubectl get apb` would.
    env.create(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "binding-reader", "namespace": "team-a"},
        "rules": [{"apiGroups": ["acrpull.microsoft.com", "msi-acrpull.microsoft.com"],
                   "resources": ["acrpullbindings"], "verbs": ["get", "list"]}]}),
    );
    env.create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tenant-binding-reader", "namespace": "team-a"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "binding-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": "team-a"}]}));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.create(v2_managed(
        "team-b",
        "other",
        "puller",
        "repository:app:pull",
    ));
    wait_for_ready(&env).await;
    env.wait_ready(V2, "team-a", "app", "True").await;
    env.wait_ready(V2, "team-b", "other", "True").await;

    let token = |name: &str| {
        env.kube
            .service_account_token("team-a", name, Duration::from_secs(600))
            .unwrap()
    };
    let (scraper, nobody, tenant, debugger) = (
        token("scraper"),
        token("nobody"),
        token("tenant"),
        token("debugger"),
    );
    let port = env.metrics_port;
    // Plain HTTP is not served at all.
    assert_eq!(
        env.http_get(port, "/metrics").await.0,
        0,
        "plain HTTP answered"
    );

    // /metrics
    assert_eq!(get_tls(port, "/metrics", None).await.0, 401);
    assert_eq!(get_tls(port, "/metrics", Some("not-a-token")).await.0, 401);
    let forged = format!("{}x", &scraper[..scraper.len() - 1]);
    assert_eq!(get_tls(port, "/metrics", Some(&forged)).await.0, 401);
    assert_eq!(get_tls(port, "/metrics", Some(&nobody)).await.0, 403);
    assert_eq!(get_tls(port, "/metrics", Some(&tenant)).await.0, 403);
    let (code, body) = get_tls(port, "/metrics", Some(&scraper)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("acrpull_bindings"), "{body}");

    // /debug
    assert_eq!(get_tls(port, "/debug/bindings", None).await.0, 401);
    assert_eq!(get_tls(port, "/debug/bindings", Some("x")).await.0, 401);
    assert_eq!(get_tls(port, "/debug/bindings", Some(&nobody)).await.0, 403);
    assert_eq!(
        get_tls(port, "/debug/bindings", Some(&scraper)).await.0,
        403
    );
    let (code, body) = get_tls(port, "/debug/bindings", Some(&debugger)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(namespaces_of(&body), ["team-a", "team-b"]);
    // The tenant sees what `kubectl get apb -n team-a` shows them, nothing of team-b.
    let (code, body) = get_tls(port, "/debug/bindings", Some(&tenant)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(namespaces_of(&body), ["team-a"], "{body}");
    assert!(
        !body.contains("team-b") && !body.contains("\"other\""),
        "{body}"
    );
    let (code, _) = get_tls(port, "/debug/bindings/team-a/app", Some(&tenant)).await;
    assert_eq!(code, 200);
    // Not even whether a binding exists in another namespace.
    for path in [
        "/debug/bindings/team-b/other",
        "/debug/bindings/team-b/nope",
    ] {
        assert_eq!(get_tls(port, path, Some(&tenant)).await.0, 403, "{path}");
    }
    assert_eq!(
        get_tls(port, "/debug/bindings/team-b/other", Some(&debugger))
            .await
            .0,
        200
    );
    // No token in any of it.
    assert!(!env.logs().contains(&tenant[tenant.len() - 20..]));
}
