//! Process-level tests of the real binary: probes and readiness at start and shutdown,
//! metrics and debug content, SIGTERM, leader election with two replicas, and the RBAC
//! manifests covering every request the controller makes.

mod common;

use std::time::Duration;

use common::*;
use kube_standin::faults::{Action, Fault};
use serde_json::json;

async fn wait_http(env: &Env, port: u16, path: &str, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = env.http_get(port, path).await;
        if code == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never answered {want} (last {code}: {body})\nlogs:\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_every_watch_and_flips_on_sigterm() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    // Fail the ServiceAccount list: the process is alive but not ready.
    let hold = env.kube.faults().add(
        Fault::new(Action::Error {
            code: 500,
            message: None,
            retry_after: None,
        })
        .verb("list")
        .resource("serviceaccounts"),
    );
    env.spawn(&[]);
    wait_http(&env, env.probe_port, "/healthz", 200).await;
    let body = wait_http(&env, env.probe_port, "/readyz", 503).await;
    assert!(body.contains("syncing"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.http_get(env.probe_port, "/readyz").await.0, 503);
    env.kube.faults().remove(&hold);
    // The watcher retries with backoff; readiness follows once the list completes.
    wait_http(&env, env.probe_port, "/readyz", 200).await;

    let status = env.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", env.logs());
    assert!(env.logs().contains("shutting down"), "{}", env.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_debug_show_bindings_without_tokens() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    let mut bad = v2_managed("team-a", "bad", "puller", "repository:app:pull");
    bad["spec"]["acr"]["server"] = json!("evil.example.com");
    env.create(bad);
    env.wait_ready(V2, "team-a", "app", "True").await;
    env.wait_ready(V2, "team-a", "bad", "False").await;
    let token = docker_config(&env.secret("team-a", "acr-pull-app").unwrap())["auths"][REGISTRY]
        ["password"]
        .as_str()
        .unwrap()
        .to_string();

    let metrics = wait_http(&env, env.metrics_port, "/metrics", 200).await;
    for needle in [
        "acrpull_bindings{phase=\"Ready\"} 1",
        "acrpull_bindings{phase=\"Failed\"} 1",
        "acrpull_token_requests_total{hop=\"imds\",outcome=\"success\"} 1",
        "acrpull_token_requests_total{hop=\"acr_exchange\",outcome=\"success\"} 1",
        "acrpull_token_requests_total{hop=\"acr_token\",outcome=\"success\"} 1",
        "acrpull_leader 1",
        "acrpull_earliest_token_expiry_seconds",
        "acrpull_reconcile_duration_seconds_bucket",
        "# EOF",
    ] {
        assert!(metrics.contains(needle), "missing {needle}\n{metrics}");
    }
    assert!(
        !metrics.contains("name=\"app\""),
        "no binding names as labels"
    );

    let list = wait_http(&env, env.debug_port, "/debug/bindings", 200).await;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let app = v["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "app")
        .unwrap()
        .clone();
    assert_eq!(app["phase"], "Ready");
    assert_eq!(app["apiVersion"], V2);
    assert_eq!(app["secretName"], "acr-pull-app");
    assert_eq!(app["serviceAccount"], "puller");
    assert!(app["expiry"].is_string());
    let one = wait_http(&env, env.debug_port, "/debug/bindings/team-a/bad", 200).await;
    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    let bad = &v["bindings"][0];
    assert_eq!(bad["phase"], "Failed");
    assert!(bad["error"]
        .as_str()
        .unwrap()
        .contains("allowed registry suffix"));
    assert!(!bad["transitions"].as_array().unwrap().is_empty());
    assert_eq!(
        env.http_get(env.debug_port, "/debug/bindings/team-a/nope")
            .await
            .0,
        404
    );
    for body in [&metrics, &list, &one] {
        assert!(!body.contains(&token), "token leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_failover() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.create(sa("team-a", "puller", json!({})));
    let lease_args = |name: &str| {
        vec![
            "--leader-elect".to_string(),
            "--leader-election-namespace=acrpull-system".to_string(),
            "--lease-duration=3s".to_string(),
            "--renew-deadline=2s".to_string(),
            "--retry-period=500ms".to_string(),
            format!("--pod-name={name}"),
        ]
    };
    env.spawn(&lease_args("replica-a"));
    let (mut second, _) = env.replica("replica-b", &lease_args("replica-b"));
    // One of them takes the Lease.
    let lease = env
        .kube
        .wait_for(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
            |l| l.is_some_and(|l| l["spec"]["holderIdentity"].is_string()),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap();
    let leader = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.wait_ready(V2, "team-a", "app", "True").await;

    // Every write of a controller came from the leader.
    let writes: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("acrpull/"))
        .filter(|r| ["create", "update", "patch", "delete"].contains(&r.verb.as_str()))
        .filter(|r| r.resource != "leases" && r.resource != "events")
        .collect();
    assert!(!writes.is_empty());
    for w in &writes {
        assert!(
            w.user_agent.contains(&leader),
            "write from a non-leader: {w:?}"
        );
    }

    // Kill -9 the leader; the other takes over within the lease duration (+ slack) and
    // the bindings keep converging.
    let follower = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    if leader == "replica-a" {
        let _ = env.child().kill();
    } else {
        let _ = second.kill();
    }
    let started = std::time::Instant::now();
    env.kube
        .wait_for(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
            |l| l.is_some_and(|l| l["spec"]["holderIdentity"] == follower),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let takeover = started.elapsed();
    assert!(
        takeover < Duration::from_secs(3 + 3),
        "takeover took {takeover:?}"
    );
    env.create(v2_managed(
        "team-a",
        "after",
        "puller",
        "repository:app:pull",
    ));
    env.wait_ready(V2, "team-a", "after", "True").await;
    let _ = second.kill();
    let _ = second.wait();
}

/// Two replicas as upstream's Deployment runs them: no `POD_NAME` (so every pod would be
/// `acrpull-1` if the identity came from the PID). Each takes client-go's `<hostname>_<uuid>`,
/// they differ although host name and binary are the same, and exactly one of them writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_without_pod_name_have_distinct_identities_and_one_writer() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.create(sa("team-a", "puller", json!({})));
    let args = [
        "--leader-elect".to_string(),
        "--leader-election-namespace=acrpull-system".to_string(),
    ];
    env.spawn(&args);
    let (mut second, second_log) = env.replica("replica-b", &args);
    let lease = env
        .kube
        .wait_for(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
            |l| l.is_some_and(|l| l["spec"]["holderIdentity"].is_string()),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap();
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap()
        .to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let uuid_of = |id: &str| -> Option<String> {
        let rest = id.strip_prefix(&format!("{host}_"))?;
        let ok = rest.len() == 36
            && rest.chars().enumerate().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        ok.then(|| rest.to_string())
    };
    assert!(
        uuid_of(&holder).is_some(),
        "holder {holder:?} is not <hostname>_<uuid>\n{}",
        env.logs()
    );
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.wait_ready(V2, "team-a", "app", "True").await;
    // Both replicas asked for the Lease, under two different identities of that form (the
    // User-Agent carries the identity: `acrpull/<version> (<identity>)`).
    let identities: std::collections::BTreeSet<String> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.resource == "leases")
        .filter_map(|r| {
            r.user_agent
                .split_once(" (")
                .map(|(_, id)| id.trim_end_matches(')').to_string())
        })
        .collect();
    assert_eq!(identities.len(), 2, "{identities:?}");
    for id in &identities {
        assert!(uuid_of(id).is_some(), "{id:?} is not <hostname>_<uuid>");
    }
    // Every write came from the Lease holder.
    let writes: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| ["create", "update", "patch", "delete"].contains(&r.verb.as_str()))
        .filter(|r| r.resource != "leases")
        // The controllers' writes, not the test's own (it installs deploy/ as the admin).
        .filter(|r| r.user_agent.starts_with("acrpull/"))
        .collect();
    assert!(!writes.is_empty());
    let strays: Vec<_> = writes
        .iter()
        .filter(|w| !w.user_agent.contains(&holder))
        .map(|w| format!("{} {} {}", w.verb, w.path, w.user_agent))
        .collect();
    assert!(
        strays.is_empty(),
        "writes from a non-leader: {strays:#?}\n{}\n{}",
        env.logs(),
        std::fs::read_to_string(&second_log).unwrap_or_default()
    );
    let _ = second.kill();
    let _ = second.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_for_a_fast_successor() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.spawn(&[
        "--leader-elect".into(),
        "--leader-election-namespace=acrpull-system".into(),
        "--lease-duration=60s".into(),
        "--pod-name=only".into(),
    ]);
    env.kube
        .wait_for(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
            |l| l.is_some_and(|l| l["spec"]["holderIdentity"] == "only"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let status = env.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", env.logs());
    let lease = env
        .kube
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
        )
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "lease not released: {lease:#}\n{}",
        env.logs()
    );
}

/// Shutdown waits for the elector to release the Lease (bounded by its own timeout), not a
/// fixed 200 ms: with the API server taking a second to answer the release, the Lease is still
/// released before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_slow_lease_release() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.spawn(&[
        "--leader-elect".into(),
        "--leader-election-namespace=acrpull-system".into(),
        "--lease-duration=60s".into(),
        "--pod-name=slow-release".into(),
    ]);
    env.kube
        .wait_for(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
            |l| l.is_some_and(|l| l["spec"]["holderIdentity"] == "slow-release"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    env.kube.faults().add(
        Fault::new(Action::Latency {
            ms: 1000,
            jitter_ms: 0,
        })
        .verb("update")
        .resource("leases"),
    );
    let status = env.terminate();
    assert!(status.success(), "{}", env.logs());
    let lease = env
        .kube
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
        )
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "lease not released before exit: {lease:#}\n{}",
        env.logs()
    );
    assert!(env.logs().contains("lease released"), "{}", env.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_takeover_by_another_holder_stops_writes() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.create(sa("team-a", "puller", json!({})));
    env.spawn(&[
        "--leader-elect".into(),
        "--leader-election-namespace=acrpull-system".into(),
        "--lease-duration=30s".into(),
        "--renew-deadline=2s".into(),
        "--retry-period=200ms".into(),
        "--pod-name=victim".into(),
    ]);
    env.kube
        .wait_for(
            "coordination.k8s.io/v1",
            "Lease",
            CONTROLLER_NAMESPACE,
            "aks.azure.com",
            |l| l.is_some_and(|l| l["spec"]["holderIdentity"] == "victim"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    // A binding the victim makes Ready while it leads.
    env.create(v2_managed(
        "team-a",
        "before",
        "puller",
        "repository:app:pull",
    ));
    env.wait_ready(V2, "team-a", "before", "True").await;
    let m = wait_http(&env, env.metrics_port, "/metrics", 200).await;
    for line in [
        "acrpull_bindings{phase=\"Ready\"} 1",
        "acrpull_earliest_token_expiry_seconds ",
        "leader_election_master_status{name=\"aks.azure.com\"} 1",
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    env.kube
        .take_over_lease(CONTROLLER_NAMESPACE, "aks.azure.com", "usurper");
    // The victim notices at its next renew and reports it is no longer leader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let m = loop {
        let (_, m) = env.http_get(env.metrics_port, "/metrics").await;
        if m.contains("acrpull_leader 0") {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "still leader:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // What it last saw as leader is not reported as current: the new leader reports the
    // bindings, and a frozen expiry would count down to a false alarm.
    assert!(m.contains("acrpull_bindings{phase=\"Ready\"} 0"), "{m}");
    assert!(!m.contains("acrpull_earliest_token_expiry_seconds"), "{m}");
    assert!(
        m.contains("leader_election_master_status{name=\"aks.azure.com\"} 0"),
        "{m}"
    );
    env.kube.clear_requests();
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| ["create", "update", "patch", "delete"].contains(&r.verb.as_str()))
        .filter(|r| r.resource == "acrpullbindings" || r.resource == "secrets")
        .filter(|r| r.user_agent.contains("victim"))
        .collect();
    assert!(writes.is_empty(), "a non-leader wrote: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_manifests_cover_every_request_the_controller_makes() {
    let env = Env::start_with(Options {
        extra_args: vec![
            "--leader-elect".into(),
            "--leader-election-namespace=acrpull-system".into(),
            "--pod-name=rbac".into(),
            // The tenancy watches and the reviews of --metrics-secure are requests too.
            "--tenancy-mode=audit".into(),
            "--metrics-secure".into(),
        ],
        ..Default::default()
    })
    .await;
    env.create(
        json!({"apiVersion": "acrpull.microsoft.com/v1alpha1", "kind": "AcrPullPolicy",
        "metadata": {"name": "team-a"},
        "spec": {"namespaces": {"names": ["team-a"]},
                 "managedIdentities": {"clientIDs": [MI_CLIENT]},
                 "registries": {"servers": [REGISTRY]}}}),
    );
    // Exercise every path: managed and workload identity, attach, failure, deletion.
    env.create(sa("team-a", "puller", json!({})));
    env.create(federated_sa("team-a"));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "wi", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"workloadIdentity": {"serviceAccountRef": "federated"}},
                 "serviceAccountName": "puller"}}));
    env.create(v2_managed(
        "team-a",
        "nosa",
        "missing",
        "repository:app:pull",
    ));
    env.wait_ready(V2, "team-a", "app", "True").await;
    env.wait_ready(V2, "team-a", "wi", "True").await;
    env.wait_ready(V2, "team-a", "nosa", "False").await;
    env.kube
        .delete(V2, "AcrPullBinding", "team-a", "app")
        .unwrap();
    env.wait_gone(V2, "AcrPullBinding", "team-a", "app").await;
    // A secure scrape: a TokenReview and a SubjectAccessReview.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scrape = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{}/metrics", env.metrics_port))
        .bearer_auth(env.kube.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status().as_u16(), 200);

    let rules = rbac_rules();
    let mut missing = Vec::new();
    for r in env.kube.requests() {
        if !r.user_agent.contains("acrpull/") || r.verb.is_empty() {
            continue;
        }
        let resource = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        let allowed = rules.iter().any(|(groups, resources, verbs)| {
            groups.contains(&r.group) && (resources.contains(&resource)) && verbs.contains(&r.verb)
        });
        if !allowed {
            missing.push(format!("{} {}/{} ({})", r.verb, r.group, resource, r.path));
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "requests not allowed by deploy/rbac.yaml: {missing:#?}"
    );
}

/// (apiGroups, resources, verbs) of every Role and ClusterRole in deploy/rbac.yaml.
fn rbac_rules() -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).unwrap();
    let mut out = Vec::new();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    for v in docs {
        if v["kind"] != "ClusterRole" && v["kind"] != "Role" {
            continue;
        }
        for rule in v["rules"].as_array().into_iter().flatten() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            };
            out.push((list("apiGroups"), list("resources"), list("verbs")));
        }
    }
    out
}

/// How long a SIGTERMed replica may take to exit: upstream msi-acrpull's Deployment gives its
/// pods 10 s (`terminationGracePeriodSeconds`), and a swap keeps old pods' settings until the
/// rollout; past it the kubelet sends SIGKILL.
const UPSTREAM_GRACE: Duration = Duration::from_secs(10);

/// Sends SIGTERM and waits for the exit: the status and how long it took (None: still running
/// after [`UPSTREAM_GRACE`]; the process is then killed).
fn terminate_within_grace(env: &mut Env) -> Option<(std::process::ExitStatus, Duration)> {
    let child = env.child();
    let started = std::time::Instant::now();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    while started.elapsed() < UPSTREAM_GRACE {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Waits until the controller's log contains `line`.
async fn wait_log(env: &Env, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !env.logs().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "never logged {line:?}:\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM while the API server cannot be reached, after the leader noticed (its renew failed
/// and it stepped down): the process exits within the grace period with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_while_the_api_server_is_unreachable() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.create(sa("team-a", "puller", json!({})));
    env.spawn(&[
        "--leader-elect".into(),
        "--leader-election-namespace=acrpull-system".into(),
        "--pod-name=cut-off".into(),
    ]);
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.wait_ready(V2, "team-a", "app", "True").await;
    wait_http(&env, env.probe_port, "/readyz", 200).await;
    env.kube.down();
    wait_log(&env, "stepping down").await;
    let exited = terminate_within_grace(&mut env);
    env.kube.up().await.unwrap();
    let Some((status, took)) = exited else {
        panic!(
            "still running {UPSTREAM_GRACE:?} after SIGTERM (the kubelet would SIGKILL it)\n{}",
            env.logs()
        );
    };
    assert!(status.success(), "exit status {status:?}\n{}", env.logs());
    assert!(env.logs().contains("stopped"), "{}", env.logs());
    eprintln!("exited {took:?} after SIGTERM");
}

/// SIGTERM to a replica that never reached the API server (it is down from the start, so no
/// watch has delivered its initial list): the process exits within the grace period. kube-runtime
/// holds an unsynced controller until its first list, so it used to wait out the 20 s drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_when_the_api_server_was_never_reachable() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.kube.down();
    env.spawn(&[
        "--leader-elect".into(),
        "--leader-election-namespace=acrpull-system".into(),
        "--pod-name=never".into(),
    ]);
    wait_log(&env, "lease renew/acquire failed").await;
    let exited = terminate_within_grace(&mut env);
    let Some((status, took)) = exited else {
        panic!(
            "still running {UPSTREAM_GRACE:?} after SIGTERM (the kubelet would SIGKILL it)\n{}",
            env.logs()
        );
    };
    assert!(status.success(), "exit status {status:?}\n{}", env.logs());
    assert!(env.logs().contains("stopped"), "{}", env.logs());
    eprintln!("exited {took:?} after SIGTERM");
}

/// Upstream's command line as existing Deployments write it — Go's single-dash spellings,
/// controller-runtime's `-kubeconfig` and `-zap-*` flags — starts the real binary, which then
/// does its job: `-kubeconfig` is used before `KUBECONFIG` (which points at nothing here), the
/// zap flags set the log format and level, and the ones without effect are reported once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_command_line_in_go_spellings_starts_the_real_binary() {
    let env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.create(sa("team-a", "puller", json!({})));
    let probe_port = free_port();
    let mut args: Vec<String> = vec![
        format!("-health-probe-bind-address=127.0.0.1:{probe_port}"),
        "-metrics-bind-address".into(),
        format!("127.0.0.1:{}", free_port()),
        "-leader-elect".into(),
        "-leader-election-namespace=acrpull-system".into(),
        "-ttl-rotation-fraction=0.5".into(),
        "-allowed-acr-server-suffixes=azurecr.io".into(),
        "-kubeconfig".into(),
        env.controller_kubeconfig.display().to_string(),
        "-zap-devel=false".into(),
        "-zap-log-level".into(),
        "debug".into(),
        "-zap-stacktrace-level=error".into(),
        "-zap-time-encoding=rfc3339nano".into(),
    ];
    let azure_flags = ["--imds-endpoint=", "--azure-resolve=", "--azure-ca-file="];
    args.extend(
        env.args()
            .into_iter()
            .filter(|a| azure_flags.iter().any(|f| a.starts_with(f)))
            // Go spelling for these too.
            .map(|a| a[1..].to_string()),
    );
    let log_path = env.dir.path().join("upstream-args.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_acrpull"))
        .args(&args)
        .env("KUBECONFIG", env.dir.path().join("no-such-kubeconfig"))
        .env_remove("POD_NAME")
        .env_remove("ACRPULL_LOG_LEVEL")
        .env_remove("ACRPULL_LOG_FORMAT")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.http_get(probe_port, "/readyz").await.0 != 200 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited ({status}):\n{}", logs());
        }
        assert!(std::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    let ready = env
        .kube
        .wait_for(
            V2,
            "AcrPullBinding",
            "team-a",
            "app",
            |o| {
                o.and_then(|o| o["status"]["conditions"].as_array().cloned())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            },
            Duration::from_secs(60),
        )
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(ready, Ok(Some(_))), "{ready:?}\n{}", logs());
    let text = logs();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "-zap-log-level debug: no debug line\n{text}"
    );
    for flag in [
        "--zap-stacktrace-level=error",
        "--zap-time-encoding=rfc3339nano",
    ] {
        let notes = lines
            .iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(flag)))
            .count();
        assert_eq!(notes, 1, "{flag} reported once\n{text}");
    }
}
