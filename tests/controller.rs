//! Controller-level tests: the reconcile machinery in-process (see `inprocess/mod.rs`) against
//! both stand-ins — the gates (caches synced, leadership at the moment of each write), the
//! per-binding backoff of API failures, and one record rendered the same way by status,
//! `/debug/bindings`, `/metrics`, Events and logs under every fault of the sandbox's list.

mod common;
mod inprocess;

use std::sync::Arc;
use std::time::Duration;

use acrpull::k8s::api::v1beta2;
use acrpull::k8s::binding::BindingResource;
use acrpull::k8s::cache::CachedSecret;
use acrpull::k8s::leader::LeaderConfig;
use acrpull::k8s::observe::{observe, SecretMeta};
use acrpull::k8s::tracker::BindingKey;
use acrpull::state::binding::{validate, Policy, Version};
use acrpull::state::decide::{decide, Plan};
use azure_standin::{FaultAction, FaultRule, Hop};
use common::{sa, v2_managed, REGISTRY, V2};
use inprocess::{condition, eventually, Controller, Setup, StandIns};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube_standin::{Action, Fault};
use serde_json::{json, Value};

/// Writes (not reads, not the Lease) in the API server's log made by `identity`.
fn writes_by(s: &StandIns, identity: &str) -> Vec<kube_standin::log::RequestRecord> {
    s.kube
        .requests()
        .into_iter()
        .filter(|r| r.user_agent.contains(&format!("({identity})")))
        .filter(|r| ["create", "update", "patch", "delete"].contains(&r.verb.as_str()))
        .filter(|r| r.resource != "leases")
        .collect()
}

fn ms(timestamp: &str) -> i64 {
    timestamp
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// 1. The sync gate.

/// Seed `n` converged bindings — finalizer, a valid labelled Secret, attached, and the exact
/// status the controller itself would write (computed with its own `decide` and `status::render`)
/// — as a previous run of the controller would have left them.
fn seed_converged(s: &StandIns, namespaces: &[&str], n: usize) -> Vec<(String, String)> {
    let policy = Policy::default();
    let now = jiff::Timestamp::now();
    let refresh = acrpull::k8s::binding::rfc3339(now - jiff::SignedDuration::from_secs(60));
    let expiry = acrpull::k8s::binding::rfc3339(now + jiff::SignedDuration::from_secs(3600));
    let mut seeded = Vec::new();
    for i in 0..n {
        let ns = namespaces[i % namespaces.len()];
        let name = format!("b-{i:04}");
        let secret_name = format!("acr-pull-{name}");
        let sa_name = format!("sa-{i:04}");
        s.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa_name, "namespace": ns},
            "imagePullSecrets": [{"name": secret_name}]}));
        let mut b = v2_managed(ns, &name, &sa_name, "repository:app:pull");
        b["metadata"]["finalizers"] = json!(["msi-acrpull.microsoft.com"]);
        let stored = s.create(b);
        let typed: v1beta2::AcrPullBinding = serde_json::from_value(stored.clone()).unwrap();
        let inputs = validate(&name, &typed.spec_view(), &policy)
            .unwrap()
            .inputs_hash;
        let secret = s.create(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret_name, "namespace": ns,
                "labels": {"acr.microsoft.com/binding": name},
                "annotations": {
                    "acr.microsoft.com/token.expiry": expiry,
                    "acr.microsoft.com/token.refresh": refresh,
                    "acr.microsoft.com/token.inputs": inputs,
                    "acr.microsoft.com/token.verified": "true"},
                "ownerReferences": [{"apiVersion": V2, "kind": "AcrPullBinding", "name": name,
                    "uid": stored["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "e30="}}));
        let secret: SecretMeta = serde_json::from_value(secret).unwrap();
        let sa: ServiceAccount =
            serde_json::from_value(s.kube.get("v1", "ServiceAccount", ns, &sa_name).unwrap())
                .unwrap();
        let o = observe(
            &typed,
            true,
            &[Arc::new(CachedSecret::from(&secret))],
            &[Arc::new(sa)],
            None,
            vec![],
        );
        let Plan::WriteStatus(record) = decide(&o, now, &policy).plan else {
            panic!("seeding {name}: expected a status write");
        };
        let mut with_status = stored;
        with_status["status"] =
            serde_json::to_value(acrpull::k8s::status::render(&record, None, now)).unwrap();
        let stored = s.create(with_status);
        // What the controller will see: nothing left to do.
        let typed: v1beta2::AcrPullBinding = serde_json::from_value(stored).unwrap();
        let o = observe(
            &typed,
            true,
            &o_secrets(s, ns, &secret_name),
            &o_sas(s, ns),
            None,
            vec![],
        );
        assert_eq!(
            decide(&o, now, &policy).plan,
            Plan::Wait,
            "{name} is converged"
        );
        seeded.push((ns.to_string(), name));
    }
    seeded
}

fn o_secrets(s: &StandIns, ns: &str, name: &str) -> Vec<Arc<CachedSecret>> {
    let v = s.kube.get("v1", "Secret", ns, name).unwrap();
    let meta: SecretMeta = serde_json::from_value(v).unwrap();
    vec![Arc::new(CachedSecret::from(&meta))]
}

fn o_sas(s: &StandIns, ns: &str) -> Vec<Arc<ServiceAccount>> {
    s.kube
        .list("v1", "ServiceAccount", Some(ns))
        .into_iter()
        .map(|v| Arc::new(serde_json::from_value(v).unwrap()))
        .collect()
}

/// SPEC §4 at a restart: with the Secret and ServiceAccount lists slow and the bindings' fast,
/// no binding may be decided on a cache that has not seen its Secret or ServiceAccount. 1,000
/// converged bindings: no write, no Azure call, nothing Failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_decides_nothing_before_every_cache_has_synced() {
    let s = StandIns::start().await;
    let namespaces = ["sync-0", "sync-1", "sync-2", "sync-3"];
    for ns in namespaces {
        s.namespace(ns);
    }
    let seeded = seed_converged(&s, &namespaces, 1000);
    for resource in ["secrets", "serviceaccounts"] {
        s.kube.faults().add(
            Fault::new(Action::Latency {
                ms: 3000,
                jitter_ms: 0,
            })
            .verb("list")
            .resource(resource),
        );
    }
    s.kube.clear_requests();
    let c = Controller::start(
        &s,
        Setup {
            identity: "restarted".into(),
            ..Setup::default()
        },
    )
    .await;
    // Every binding was looked at once the caches were complete.
    eventually(120, "a record for every binding", || {
        (c.ctx.tracker.list().len() == seeded.len()).then_some(())
    })
    .await;
    let writes = writes_by(&s, "restarted");
    assert!(
        writes.is_empty(),
        "{} writes at a restart, first: {:?}",
        writes.len(),
        writes.first()
    );
    assert!(
        s.azure.requests().is_empty(),
        "Azure calls at a restart: {:?}",
        s.azure.requests().first()
    );
    let failed: Vec<_> = c
        .ctx
        .tracker
        .list()
        .into_iter()
        .filter(|e| e.phase != "Ready")
        .map(|e| format!("{}/{} {} {}", e.namespace, e.name, e.phase, e.error))
        .collect();
    assert!(failed.is_empty(), "not Ready: {failed:?}");
    let metrics = c.get("/metrics").await;
    assert!(
        metrics.contains("acrpull_bindings{phase=\"Ready\"} 1000"),
        "{metrics}"
    );
    for (ns, name) in seeded.iter().take(50) {
        let b = s.binding(V2, ns, name).unwrap();
        assert_eq!(b["status"]["phase"], "Ready", "{ns}/{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Leadership at the moment of each write.

fn lease(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: common::CONTROLLER_NAMESPACE.into(),
        name: "aks.azure.com".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(10),
        renew_deadline: Duration::from_secs(5),
        retry_period: Duration::from_millis(200),
    }
}

/// A live leader loses the Lease while its passes wait on slow Azure calls (managed identity)
/// and on a slow API read before a TokenRequest (workload identity). From the moment its
/// Lease request saw the new holder, the API server receives no write from it — no Secret,
/// status, Event, ServiceAccount or TokenRequest — even from passes that started as leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_the_lease_mid_pass_writes_nothing_afterwards() {
    let s = StandIns::start().await;
    s.create(sa("team-a", "puller", json!({})));
    s.create(common::federated_sa("team-a"));
    let c = Controller::start(
        &s,
        Setup {
            identity: "victim".into(),
            leader: Some(lease("victim")),
            // Slow is not failed: the registry's answers arrive within the attempt timeout.
            timeouts: acrpull::azure::Timeouts {
                request: Duration::from_secs(20),
                ..Setup::default().timeouts
            },
            ..Setup::default()
        },
    )
    .await;
    eventually(30, "the victim leads", || {
        c.ctx.writer.is_leader().then_some(())
    })
    .await;
    // Slow passes: every token call at the registry takes 5 s, and the workload-identity
    // binding's read before its TokenRequest takes 5 s.
    s.azure.faults().add(
        FaultRule::new(FaultAction::Latency {
            fixed_ms: 5000,
            jitter_ms: 0,
        })
        .hop(Hop::AcrExchange),
    );
    s.kube.faults().add(
        Fault::new(Action::Latency {
            ms: 5000,
            jitter_ms: 0,
        })
        .verb("get")
        .resource("secrets")
        .name("acr-pull-wi"),
    );
    let names = ["one", "two", "three"];
    for name in names {
        s.create(v2_managed("team-a", name, "puller", "repository:app:pull"));
    }
    s.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "wi", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"workloadIdentity": {"serviceAccountRef": "federated"}},
                 "serviceAccountName": "puller"}}));
    // Every binding's credential is being fetched (the record in flight says so) ...
    let minting = || {
        c.ctx
            .tracker
            .list()
            .iter()
            .filter(|e| e.phase == "Exchanging")
            .count()
    };
    eventually(30, "every binding minting", || {
        (minting() == 4).then_some(())
    })
    .await;
    // ... and every pass inside its mint: the fetches started ahead of the passes (look-ahead)
    // queue the passes only once they end, so a change of the ServiceAccount wakes the passes
    // now, and they join the fetches.
    let mut puller = s
        .kube
        .get("v1", "ServiceAccount", "team-a", "puller")
        .unwrap();
    puller["metadata"]["labels"] = json!({"touched": "yes"});
    s.create(puller);
    let in_flight = r#"controller_runtime_active_workers{controller="acr-pull-binding-v1beta2"} 4"#;
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = c.get("/metrics").await;
        if metrics.lines().any(|l| l == in_flight) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.lines().any(|l| l == in_flight),
        "the four passes never ran at once: {metrics}"
    );
    // ... when another holder takes the Lease, seen by the victim's next Lease request.
    let takeover = s.kube.faults().add(
        Fault::new(Action::LeaseTakeover {
            holder: "usurper".into(),
        })
        .verb("get")
        .resource("leases")
        .user_agent("(victim)")
        .next(1),
    );
    eventually(30, "the victim to step down", || {
        (!c.ctx.writer.is_leader()).then_some(())
    })
    .await;
    let lost_at = s
        .kube
        .requests()
        .into_iter()
        .find(|r| r.faults.contains(&takeover))
        .expect("the takeover request is in the log")
        .timestamp;
    // The slow passes end: each is refused at its first write (or, were the gate missing,
    // writes its Secret) ...
    let all = ["one", "two", "three", "wi"];
    eventually(60, "the four slow passes to reach a write", || {
        let logs = inprocess::logs();
        let stopped = |name: &str| {
            logs.iter().any(|l| {
                l["namespace"] == "team-a"
                    && l["name"] == name
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("the Lease was lost"))
            })
        };
        let wrote = |name: &str| {
            s.kube
                .get("v1", "Secret", "team-a", &format!("acr-pull-{name}"))
                .is_some()
        };
        all.iter().all(|n| stopped(n) || wrote(n)).then_some(())
    })
    .await;
    // ... and none of them wrote after the Lease was lost.
    let late: Vec<String> = writes_by(&s, "victim")
        .into_iter()
        .filter(|r| ms(&r.timestamp) > ms(&lost_at))
        .map(|r| {
            format!(
                "{} {} {}/{} {}",
                r.timestamp, r.verb, r.resource, r.name, r.subresource
            )
        })
        .collect();
    assert!(
        late.is_empty(),
        "writes after the Lease was lost at {lost_at}: {late:#?}"
    );
    // The passes did reach their writes: the slow calls completed.
    assert!(
        !s.azure.requests_for(Hop::AcrExchange).is_empty(),
        "no registry call completed: {:#?}\n{:#?}",
        s.azure.requests(),
        inprocess::logs_about("team-a")
    );
    for name in all {
        assert!(
            s.kube
                .get("v1", "Secret", "team-a", &format!("acr-pull-{name}"))
                .is_none(),
            "{name}: a Secret was written after the Lease was lost"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. API failures back off per binding.

/// A binding the API server keeps answering 500 for (its finalizer patch, the pass's first
/// write): that binding retries with growing intervals (each at least the backoff of its failure count), the other bindings converge
/// untouched, and the count starts over once a pass ends well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_api_error_backs_off_for_that_binding_only() {
    let s = StandIns::start().await;
    s.namespace("backoff");
    let base = Duration::from_millis(50);
    let c = Controller::start(
        &s,
        Setup {
            policy: Policy {
                backoff_base: base,
                backoff_cap: Duration::from_secs(30),
                min_requeue: Duration::from_millis(10),
                ..Policy::default()
            },
            ..Setup::default()
        },
    )
    .await;
    let fault = s.kube.faults().add(
        Fault::new(Action::Error {
            code: 500,
            message: None,
            retry_after: None,
        })
        // Not the Secret: a v1beta2 Secret is created without a read first, and a create names
        // its object in the body, not in the URL this fault matches on. The pass's first write,
        // so no write of its own earlier in the pass wakes it before its backoff.
        .resource("acrpullbindings")
        .namespace("backoff")
        .name("bad"),
    );
    // Own ServiceAccounts: no other binding's write triggers the failing one early. Its own
    // ServiceAccount's watch event must not either: on a loaded machine it could arrive after
    // the first failure and wake a retry before the backoff. So every ServiceAccount comes
    // first, and the failing binding only once the others are Ready (their passes needed
    // their ServiceAccounts, which the watch delivers in order, after `sa-bad`).
    for name in ["bad", "good-1", "good-2", "good-3"] {
        s.create(sa("backoff", &format!("sa-{name}"), json!({})));
    }
    for name in ["good-1", "good-2", "good-3"] {
        s.create(v2_managed(
            "backoff",
            name,
            &format!("sa-{name}"),
            "repository:app:pull",
        ));
    }
    for name in ["good-1", "good-2", "good-3"] {
        s.wait_ready(V2, "backoff", name, true).await;
    }
    s.create(v2_managed(
        "backoff",
        "bad",
        "sa-bad",
        "repository:app:pull",
    ));
    let attempts = |s: &StandIns| -> Vec<i64> {
        s.kube
            .requests()
            .iter()
            .filter(|r| r.resource == "acrpullbindings" && r.verb == "patch" && r.name == "bad")
            .map(|r| ms(&r.timestamp))
            .collect()
    };
    let times = eventually(60, "seven attempts on the failing binding", || {
        let t = attempts(&s);
        (t.len() >= 7).then_some(t)
    })
    .await;
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let gaps: Vec<i64> = sorted.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate().take(6) {
        // The k-th retry waits at least the k-th backoff: base × 2^(k-1), less 20 % jitter
        // (and 2 ms for the log's millisecond timestamps).
        let nominal = base.as_millis() as i64 * (1 << i);
        let floor = if i == 0 { nominal } else { nominal * 4 / 5 } - 2;
        assert!(
            *gap >= floor,
            "retry {} after {gap} ms, want ≥ {floor} ms: {gaps:?}",
            i + 1
        );
    }
    // The others were untouched: Ready, and never a server error on their own objects.
    for name in ["good-1", "good-2", "good-3"] {
        let b = s.binding(V2, "backoff", name).unwrap();
        assert_eq!(b["status"]["phase"], "Ready");
        let requests = s.kube.requests();
        let theirs: Vec<_> = requests.iter().filter(|r| r.name == name).collect();
        assert!(theirs.iter().all(|r| r.status < 500), "{theirs:?}");
    }
    // Never shown as Failed: an API error is not the binding's fault.
    let key = BindingKey {
        version: Version::V1beta2,
        namespace: "backoff".into(),
        name: "bad".into(),
    };
    assert!(c.ctx.failures.api_failures(&key) >= 6);
    let bad = s.binding(V2, "backoff", "bad").unwrap();
    assert_ne!(bad["status"]["phase"], "Failed", "{bad:#}");
    // The API recovers: the binding converges and its backoff starts over.
    s.kube.faults().remove(&fault);
    s.wait_ready(V2, "backoff", "bad", true).await;
    eventually(30, "the API backoff reset", || {
        (c.ctx.failures.api_failures(&key) == 0).then_some(())
    })
    .await;
}

/// A binding given a token from the pipeline's cache (issued for an earlier binding) reports
/// when its Secret was written as its last refresh, never the older issue time, and still
/// plans the refresh at the token's own half-life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_is_not_reported_older_than_its_secret() {
    let s = StandIns::start().await;
    s.namespace("cached");
    s.azure
        .update_config(|c| c.lifetimes.acr_access_secs = 600)
        .unwrap();
    let _c = Controller::start(&s, Setup::default()).await;
    s.create(sa("cached", "puller", json!({})));
    s.create(v2_managed(
        "cached",
        "first",
        "puller",
        "repository:app:pull",
    ));
    let first = s.wait_ready(V2, "cached", "first", true).await;
    // Two seconds later a second binding with the same identity, registry and scope gets the
    // same (cached) token.
    let issued: jiff::Timestamp = first["status"]["lastTokenRefreshTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    while jiff::Timestamp::now() < issued + jiff::SignedDuration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.create(v2_managed(
        "cached",
        "second",
        "puller",
        "repository:app:pull",
    ));
    let second = s.wait_ready(V2, "cached", "second", true).await;
    assert_eq!(
        second["status"]["tokenExpirationTime"], first["status"]["tokenExpirationTime"],
        "the same cached token"
    );
    let secret = s
        .kube
        .get("v1", "Secret", "cached", "acr-pull-second")
        .unwrap();
    let created = secret["metadata"]["creationTimestamp"].as_str().unwrap();
    let last = second["status"]["lastTokenRefreshTime"].as_str().unwrap();
    assert!(
        ms(last) >= ms(created),
        "lastTokenRefreshTime {last} is older than the Secret it describes (created {created})"
    );
    // The refresh is still planned at the token's half-life (5 minutes after issue, less
    // jitter), not half-way through what was left of it.
    let next = second["status"]["nextRefreshTime"].as_str().unwrap();
    assert!(
        ms(next)
            <= ms(&acrpull::k8s::binding::rfc3339(
                issued + jiff::SignedDuration::from_secs(300)
            )),
        "next refresh {next} is after the token's half-life"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. One record: status, /debug, /metrics, Events and logs agree.

/// A binding's Events, newest last: (type, reason, note).
fn events(s: &StandIns, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let mut evs: Vec<Value> = s
        .kube
        .list("events.k8s.io/v1", "Event", Some(ns))
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .collect();
    evs.sort_by_key(|e| e["eventTime"].as_str().unwrap_or_default().to_string());
    evs.iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The last phase-transition log line about a binding.
fn last_transition(ns: &str, name: &str) -> Option<Value> {
    inprocess::logs()
        .into_iter()
        .rev()
        .find(|l| l["namespace"] == ns && l["name"] == name && l["message"] == "phase transition")
}

/// Status, the `/debug` entry, the `/metrics` gauge and the newest log line all say the same
/// thing about `ns/name` (the only binding in `ns`). A pass that is writing right then can put
/// one rendering a moment ahead of the others, so the comparison is made again until they
/// agree, for at most 10 s.
async fn assert_one_record(s: &StandIns, c: &Controller, ns: &str, name: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match one_record(s, c, ns, name).await {
            Ok(b) => return b,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn one_record(s: &StandIns, c: &Controller, ns: &str, name: &str) -> Result<Value, String> {
    let b = s.binding(V2, ns, name).unwrap();
    let st = &b["status"];
    let ready = condition(&b, "Ready").ok_or("no Ready condition")?;
    let d = c.debug(V2, ns, name).await;
    let context = format!(
        "status {st:#}\ndebug {d:#}\nlogs {:#?}",
        inprocess::logs_about(ns)
    );
    let same = |what: &str, a: &Value, b: &Value| {
        if a == b {
            Ok(())
        } else {
            Err(format!("{what}: {a} != {b}\n{context}"))
        }
    };
    same("phase", &d["phase"], &st["phase"])?;
    same("reason", &d["reason"], &ready["reason"])?;
    same("ready", &d["ready"], &json!(ready["status"] == "True"))?;
    same(
        "error",
        &json!(d["error"].as_str().unwrap_or_default()),
        &json!(st["error"].as_str().unwrap_or_default()),
    )?;
    for (debug, status) in [
        ("expiry", "tokenExpirationTime"),
        ("lastRefresh", "lastTokenRefreshTime"),
        ("nextRefresh", "nextRefreshTime"),
    ] {
        same(debug, &d[debug], &st[status])?;
    }
    same(
        "failures",
        &json!(d["consecutiveFailures"].as_u64().unwrap_or(0)),
        &json!(st["consecutiveFailures"].as_u64().unwrap_or(0)),
    )?;
    // A planned time is never in the past when written: not before the status write that
    // carried it reached the API server.
    if let Some(next) = st["nextRefreshTime"].as_str() {
        let written = s
            .kube
            .requests()
            .into_iter()
            .filter(|r| r.namespace == ns && r.name == name && r.subresource == "status")
            .filter(|r| r.verb == "patch" && r.status < 300)
            .map(|r| r.timestamp)
            .next_back()
            .ok_or("no status write")?;
        if ms(next) < ms(&written) {
            return Err(format!(
                "nextRefreshTime {next} is before the status write at {written}\n{context}"
            ));
        }
    }
    // The gauge counts this binding in its phase (each test's controller has one binding).
    let metrics = c.get("/metrics").await;
    let phase = st["phase"].as_str().unwrap_or_default();
    if !metrics.contains(&format!("acrpull_bindings{{phase=\"{phase}\"}} 1")) {
        return Err(format!("gauge\n{metrics}\n{context}"));
    }
    // The newest log line about the binding's state (a phase transition, or a failed mint
    // that kept the phase) names the phase and the reason.
    let said = inprocess::logs()
        .into_iter()
        .rfind(|l| {
            l["namespace"] == ns
                && l["name"] == name
                && l["reason"].is_string()
                && (l["to"].is_string() || l["phase"].is_string())
        })
        .ok_or("no log line about the binding's state")?;
    let logged_phase = if said["to"].is_string() {
        &said["to"]
    } else {
        &said["phase"]
    };
    same("logged phase", logged_phase, &st["phase"])?;
    same("logged reason", &said["reason"], &ready["reason"])?;
    Ok(b)
}

/// While a retry after a failed first mint is in flight (a slow, throttled registry), status,
/// `/debug` and the gauge keep saying `Failed`: a retry is not a new exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_in_flight_still_shows_the_failure() {
    let s = StandIns::start().await;
    s.namespace("inflight");
    let c = Controller::start(&s, Setup::default()).await;
    s.azure.faults().add(
        FaultRule::new(FaultAction::Latency {
            fixed_ms: 2000,
            jitter_ms: 0,
        })
        .hop(Hop::AcrToken),
    );
    s.azure.faults().add(
        FaultRule::new(FaultAction::Throttle {
            json: true,
            retry_after_secs: None,
        })
        .hop(Hop::AcrToken),
    );
    s.create(sa("inflight", "puller", json!({})));
    s.create(v2_managed(
        "inflight",
        "app",
        "puller",
        "repository:app:pull",
    ));
    let b = s
        .wait_binding(V2, "inflight", "app", "Failed", |b| {
            b["status"]["phase"] == "Failed"
        })
        .await;
    // Half a second after the planned retry the next attempt is in flight (it takes 4 s).
    let retry: jiff::Timestamp = b["status"]["nextRefreshTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    while jiff::Timestamp::now() < retry + jiff::SignedDuration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = c.debug(V2, "inflight", "app").await;
    assert_eq!(d["phase"], "Failed", "{d:#}");
    let metrics = c.get("/metrics").await;
    assert!(
        metrics.contains("acrpull_bindings{phase=\"Failed\"} 1"),
        "{metrics}"
    );
    let b = s.binding(V2, "inflight", "app").unwrap();
    assert_eq!(b["status"]["phase"], "Failed");
}

enum Stage {
    /// The fault is there before the binding: its first mint meets it.
    FirstMint,
    /// The binding is Ready first; the fault meets its refresh.
    Refresh,
}

/// One fault of `crates/sandbox/src/fault.rs`'s list, with what the binding must show.
struct Case {
    name: &'static str,
    rule: FaultRule,
    /// The reason the binding shows while the fault lasts (None: it converges regardless).
    reason: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let on = |hop: Hop, action: FaultAction| FaultRule::new(action).hop(hop);
    vec![
        Case {
            name: "throttle",
            rule: on(
                Hop::AcrToken,
                FaultAction::Throttle {
                    json: true,
                    retry_after_secs: Some(1),
                },
            ),
            reason: Some("Throttled"),
        },
        Case {
            name: "status-503",
            rule: on(
                Hop::AcrExchange,
                FaultAction::Status {
                    status: 503,
                    retry_after_secs: None,
                },
            ),
            reason: Some("AzureUnavailable"),
        },
        Case {
            name: "imds-410",
            rule: on(
                Hop::Imds,
                FaultAction::Status {
                    status: 410,
                    retry_after_secs: None,
                },
            ),
            reason: Some("AzureUnavailable"),
        },
        Case {
            name: "registry-down",
            rule: FaultRule::new(FaultAction::Reset).host(REGISTRY),
            reason: Some("AzureUnavailable"),
        },
        Case {
            name: "reset",
            rule: on(Hop::AcrToken, FaultAction::Reset),
            reason: Some("AzureUnavailable"),
        },
        Case {
            name: "hang",
            rule: on(Hop::AcrToken, FaultAction::Hang),
            reason: Some("AzureUnavailable"),
        },
        Case {
            name: "identity-not-found",
            rule: on(Hop::Imds, FaultAction::IdentityNotFound),
            reason: Some("IdentityNotFound"),
        },
        Case {
            name: "latency",
            rule: on(
                Hop::AcrToken,
                FaultAction::Latency {
                    fixed_ms: 1500,
                    jitter_ms: 0,
                },
            ),
            reason: None,
        },
    ]
}

/// Make the binding's token due now, as time would (the Secret's times moved an hour back).
fn make_due(s: &StandIns, ns: &str, name: &str) {
    let mut secret = s
        .kube
        .get("v1", "Secret", ns, &format!("acr-pull-{name}"))
        .unwrap();
    let hour_ago = acrpull::k8s::binding::rfc3339(
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600),
    );
    let ann = &mut secret["metadata"]["annotations"];
    ann["acr.microsoft.com/token.refresh"] = json!(hour_ago);
    ann["acr.microsoft.com/token.issued"] = json!(hour_ago);
    s.kube.apply(secret).unwrap();
}

async fn one_fault(case: Case, stage: Stage) {
    let s = StandIns::start().await;
    let ns = format!(
        "{}-{}",
        case.name,
        match stage {
            Stage::FirstMint => "first",
            Stage::Refresh => "refresh",
        }
    );
    s.namespace(&ns);
    // A refresh must reach every hop: identity tokens (cached until 5 minutes before expiry)
    // and ACR refresh tokens (until half-life, 3 s here) are not reusable by then.
    s.azure
        .update_config(|c| {
            c.lifetimes.acr_access_secs = 3600;
            c.lifetimes.acr_refresh_secs = 6;
            c.lifetimes.imds_secs = 300;
            c.lifetimes.entra_secs = 300;
        })
        .unwrap();
    let mut setup = Setup::default();
    if case.reason.is_none() {
        // Slow must not mean failed: the attempt timeout is well above the added latency.
        setup.timeouts.request = Duration::from_secs(20);
    }
    let c = Controller::start(&s, setup).await;
    s.create(sa(&ns, "puller", json!({})));
    let mut fault = None;
    if matches!(stage, Stage::FirstMint) {
        fault = Some(s.azure.faults().add(case.rule.clone()));
    }
    s.create(v2_managed(&ns, "app", "puller", "repository:app:pull"));
    let mut first_refresh = None;
    if matches!(stage, Stage::Refresh) {
        let b = s.wait_ready(V2, &ns, "app", true).await;
        assert_one_record(&s, &c, &ns, "app").await;
        first_refresh = b["status"]["lastTokenRefreshTime"]
            .as_str()
            .map(String::from);
        // The cached ACR refresh token is past its half-life (3 s) four seconds after it was
        // issued; the refresh then goes through every hop.
        let minted: jiff::Timestamp = first_refresh.as_deref().unwrap().parse().unwrap();
        let reusable_until = minted + jiff::SignedDuration::from_secs(4);
        while jiff::Timestamp::now() < reusable_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fault = Some(s.azure.faults().add(case.rule.clone()));
        make_due(&s, &ns, "app");
    }
    match case.reason {
        Some(reason) => {
            let b = s
                .wait_binding(V2, &ns, "app", &format!("failing with {reason}"), |b| {
                    condition(b, "Ready").is_some_and(|c| c["reason"] == reason)
                })
                .await;
            let b2 = assert_one_record(&s, &c, &ns, "app").await;
            let st = &b2["status"];
            assert!(
                st["consecutiveFailures"].as_u64().unwrap_or(0) >= 1,
                "{b:#}"
            );
            assert!(!st["error"].as_str().unwrap_or_default().is_empty());
            let evs = events(&s, &ns, "app");
            let warning = evs
                .iter()
                .rev()
                .find(|e| e.0 == "Warning")
                .unwrap_or_else(|| panic!("no Warning event: {evs:?}"));
            assert_eq!(
                warning.2,
                st["error"].as_str().unwrap(),
                "event note is the error"
            );
            let transition = last_transition(&ns, "app").unwrap();
            match stage {
                Stage::FirstMint => {
                    // Nothing was ever issued: Failed, and said so.
                    assert_eq!(st["phase"], "Failed");
                    assert_eq!(condition(&b2, "Ready").unwrap()["status"], "False");
                    assert_eq!(warning.1, "TokenIssueFailed", "{evs:?}");
                    assert!(evs.iter().all(|e| e.1 != "TokenRefreshFailed"), "{evs:?}");
                    let logs = inprocess::logs_about(&ns).join("\n");
                    assert!(!logs.contains("existing pull secret"), "{logs}");
                    assert!(logs.contains("there is no pull secret yet"), "{logs}");
                    assert_eq!(transition["to"], "Failed");
                }
                Stage::Refresh => {
                    // The token still works: Refreshing and Ready, never Failed.
                    assert_eq!(st["phase"], "Refreshing", "{b2:#}");
                    assert_eq!(condition(&b2, "Ready").unwrap()["status"], "True");
                    assert_eq!(warning.1, "TokenRefreshFailed", "{evs:?}");
                    assert!(s.kube.get("v1", "Secret", &ns, "acr-pull-app").is_some());
                    assert_eq!(transition["to"], "Refreshing");
                }
            }
            s.azure.faults().remove(fault.unwrap());
            // Recovery: Ready again, with its own reason (not the fault's).
            s.wait_binding(V2, &ns, "app", "recovered", |b| {
                b["status"]["phase"] == "Ready"
            })
            .await;
            let b = assert_one_record(&s, &c, &ns, "app").await;
            assert_eq!(condition(&b, "Ready").unwrap()["reason"], "TokenIssued");
            let t = last_transition(&ns, "app").unwrap();
            assert_eq!(
                (t["to"].as_str(), t["reason"].as_str()),
                (Some("Ready"), Some("TokenIssued"))
            );
        }
        None => {
            // Slow but successful: Ready with a new token.
            s.wait_binding(V2, &ns, "app", "Ready with a new token", |b| {
                b["status"]["phase"] == "Ready"
                    && b["status"]["lastTokenRefreshTime"].as_str() != first_refresh.as_deref()
            })
            .await;
            assert!(fault.is_some());
            assert_one_record(&s, &c, &ns, "app").await;
            let evs = events(&s, &ns, "app");
            assert!(evs.iter().all(|e| e.0 == "Normal"), "{evs:?}");
        }
    }
}

macro_rules! fault_tests {
    ($($first:ident, $refresh:ident, $case:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $first() {
            one_fault(case($case), Stage::FirstMint).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $refresh() {
            one_fault(case($case), Stage::Refresh).await;
        }
    )*};
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap()
}

fault_tests! {
    one_record_throttled_first_mint, one_record_throttled_refresh, "throttle";
    one_record_503_first_mint, one_record_503_refresh, "status-503";
    one_record_imds_410_first_mint, one_record_imds_410_refresh, "imds-410";
    one_record_registry_down_first_mint, one_record_registry_down_refresh, "registry-down";
    one_record_reset_first_mint, one_record_reset_refresh, "reset";
    one_record_hang_first_mint, one_record_hang_refresh, "hang";
    one_record_identity_not_found_first_mint, one_record_identity_not_found_refresh, "identity-not-found";
    one_record_latency_first_mint, one_record_latency_refresh, "latency";
}

/// A binding on the identity without a role, in `ns`, sharing one credential request.
fn norole(ns: &str, name: &str) -> Value {
    let mut b = v2_managed(ns, name, "puller", "repository:app:pull");
    b["spec"]["auth"]["managedIdentity"]["clientID"] = json!(common::NOROLE_CLIENT);
    b
}

/// A binding whose credential is being fetched holds no pass slot: its pass is queued once the
/// fetch ended (look-ahead). With 8 slots and 12 bindings waiting on one slow identity, a
/// binding created after them on another identity is Ready while they all still wait.
/// Without the look-ahead, their passes fill every slot and wait, and the last binding's pass
/// runs only after their fetch failed and they were marked Failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_waiting_for_its_credential_holds_no_pass_slot() {
    let s = StandIns::start().await;
    s.namespace("slots");
    let c = Controller::start(
        &s,
        Setup {
            // 8 pass slots.
            concurrency: 1,
            ..Setup::default()
        },
    )
    .await;
    s.azure.faults().add(
        FaultRule::new(FaultAction::Latency {
            fixed_ms: 4000,
            jitter_ms: 0,
        })
        .hop(Hop::Imds)
        .identity("mi-norole"),
    );
    s.create(sa("slots", "puller", json!({})));
    // Once a first binding is Ready the caches have synced: the next events are looked ahead.
    s.create(v2_managed(
        "slots",
        "warm",
        "puller",
        "repository:base:pull",
    ));
    s.wait_ready(V2, "slots", "warm", true).await;
    for i in 0..12 {
        s.create(norole("slots", &format!("slow-{i}")));
    }
    s.create(v2_managed("slots", "fast", "puller", "repository:app:pull"));
    s.wait_ready(V2, "slots", "fast", true).await;
    let failed: Vec<String> = (0..12)
        .map(|i| format!("slow-{i}"))
        .filter(|name| {
            s.binding(V2, "slots", name)
                .is_some_and(|b| b["status"]["phase"] == "Failed")
        })
        .collect();
    assert!(
        failed.is_empty(),
        "the binding behind them waited for their fetch: {failed:?} already Failed"
    );
    // And they fail as they should once their fetch does.
    for i in 0..12 {
        s.wait_binding(V2, "slots", &format!("slow-{i}"), "Failed", |b| {
            b["status"]["phase"] == "Failed"
        })
        .await;
    }
    drop(c);
}

/// A credential fetch started ahead of the passes that fails is the answer of every pass that
/// waited for it: one failed registry request for three bindings (the identity has no role,
/// so the registry refuses its exchange), not one more per pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_ahead_of_the_passes_is_not_asked_again() {
    let s = StandIns::start().await;
    s.namespace("ahead");
    let mut setup = Setup::default();
    // No retry within the test.
    setup.policy.backoff_base = Duration::from_secs(600);
    let c = Controller::start(&s, setup).await;
    // The fetch is slow enough for all three bindings to wait for it.
    s.azure.faults().add(
        FaultRule::new(FaultAction::Latency {
            fixed_ms: 1500,
            jitter_ms: 0,
        })
        .hop(Hop::Imds)
        .identity("mi-norole"),
    );
    s.create(sa("ahead", "puller", json!({})));
    // Once a first binding is Ready the caches have synced: the next events are looked ahead.
    s.create(v2_managed("ahead", "warm", "puller", "repository:app:pull"));
    s.wait_ready(V2, "ahead", "warm", true).await;
    s.azure.clear_requests();
    for name in ["a", "b", "c"] {
        s.create(norole("ahead", name));
    }
    for name in ["a", "b", "c"] {
        let b = s
            .wait_binding(V2, "ahead", name, "Failed", |b| {
                b["status"]["phase"] == "Failed"
            })
            .await;
        let error = b["status"]["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{b:#}");
    }
    let registry: Vec<_> = s
        .azure
        .requests()
        .into_iter()
        .filter(|r| r.hop.is_acr())
        .collect();
    assert_eq!(registry.len(), 1, "registry requests: {registry:#?}");
    drop(c);
}
