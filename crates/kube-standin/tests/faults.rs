//! Every fault knob, observed by a kube-rs client or watcher the way it observes the real
//! failure.

mod common;

use std::time::{Duration, Instant};

use common::{client_for, install_crypto, namespace, start, start_with, T};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::ResourceExt;
use kube_standin::{Action, Fault, Handle, StandIn};
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn count(h: &Handle, verb: &str, resource: &str) -> usize {
    h.requests()
        .iter()
        .filter(|r| r.verb == verb && r.resource == resource)
        .count()
}

/// Drive a watcher until it yields an applied object named `name`.
async fn until_applied<S>(w: &mut S, name: &str) -> Vec<String>
where
    S: futures::Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin,
{
    let mut seen = Vec::new();
    let res = tokio::time::timeout(T, async {
        loop {
            match w.next().await {
                Some(Ok(Event::Apply(o))) | Some(Ok(Event::InitApply(o))) => {
                    seen.push(format!("apply:{}", o.name_any()));
                    if o.name_any() == name {
                        return;
                    }
                }
                Some(Ok(Event::Init)) => seen.push("init".into()),
                Some(Ok(Event::InitDone)) => seen.push("initdone".into()),
                Some(Ok(Event::Delete(o))) => seen.push(format!("delete:{}", o.name_any())),
                Some(Err(e)) => seen.push(format!("error:{e}")),
                None => panic!("watcher ended"),
            }
        }
    })
    .await;
    assert!(res.is_ok(), "watcher did not see {name}; saw {seen:?}");
    seen
}

#[tokio::test]
async fn latency_delays_matching_requests_only() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    cms.create(&PostParams::default(), &cm("slow"))
        .await
        .unwrap();
    h.faults().add(
        Fault::new(Action::Latency {
            ms: 300,
            jitter_ms: 50,
        })
        .verb("get")
        .name("slow"),
    );
    let t = Instant::now();
    cms.get("slow").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    cms.list(&Default::default()).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));
    h.shutdown();
}

#[tokio::test]
async fn hang_stalls_a_client_without_read_timeout() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    h.faults()
        .add(Fault::new(Action::Hang).verb("get").id("hang"));
    let r = tokio::time::timeout(Duration::from_millis(500), cms.get("anything")).await;
    assert!(r.is_err(), "kube 5 has no read timeout: the request hangs");
    assert!(h
        .requests()
        .iter()
        .any(|r| r.verb == "get" && r.faults == vec!["hang".to_string()]));
    h.faults().remove("hang");
    assert_eq!(api_code(cms.get("anything").await.unwrap_err()), 404);
    h.shutdown();
}

#[tokio::test]
async fn internal_error_surfaces_and_reset_is_a_transport_error() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    h.faults().add(
        Fault::new(Action::Error {
            code: 500,
            message: None,
            retry_after: None,
        })
        .verb("create")
        .nth(1),
    );
    assert_eq!(
        api_code(
            cms.create(&PostParams::default(), &cm("a"))
                .await
                .unwrap_err()
        ),
        500
    );
    cms.create(&PostParams::default(), &cm("a")).await.unwrap();
    h.faults()
        .add(Fault::new(Action::Reset).verb("get").next(1));
    let err = cms.get("a").await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    cms.get("a").await.unwrap();
    h.shutdown();
}

#[tokio::test]
async fn throttling_429_with_retry_after_is_retried_by_kube() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    cms.create(&PostParams::default(), &cm("t")).await.unwrap();
    h.faults().add(
        Fault::new(Action::Error {
            code: 429,
            message: None,
            retry_after: Some(1),
        })
        .verb("get")
        .next(1),
    );
    let t = Instant::now();
    cms.get("t").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    let gets: Vec<u16> = h
        .requests()
        .iter()
        .filter(|r| r.verb == "get")
        .map(|r| r.status)
        .collect();
    assert_eq!(gets, vec![429, 200]);
    // A 503 window is ridden out the same way.
    h.faults().add(
        Fault::new(Action::Error {
            code: 503,
            message: None,
            retry_after: None,
        })
        .verb("get")
        .window(Duration::ZERO, Duration::from_millis(300)),
    );
    cms.get("t").await.unwrap();
    assert!(h.requests().iter().any(|r| r.status == 503));
    h.shutdown();
}

#[tokio::test]
async fn injected_conflict_and_concurrent_writer() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    let obj = cms.create(&PostParams::default(), &cm("w")).await.unwrap();
    h.faults()
        .add(Fault::new(Action::Conflict).verb("update").nth(1));
    assert_eq!(
        api_code(
            cms.replace("w", &PostParams::default(), &obj)
                .await
                .unwrap_err()
        ),
        409
    );
    // The concurrent writer really moves the object: the re-get sees its write.
    let mut mine = cms.get("w").await.unwrap();
    mine.data = Some([("k".to_string(), "v".to_string())].into());
    h.faults().add(
        Fault::new(Action::ConcurrentWriter)
            .verb("update")
            .name("w")
            .next(1),
    );
    assert_eq!(
        api_code(
            cms.replace("w", &PostParams::default(), &mine)
                .await
                .unwrap_err()
        ),
        409
    );
    let fresh = cms.get("w").await.unwrap();
    assert_ne!(fresh.resource_version(), mine.resource_version());
    assert!(fresh
        .annotations()
        .contains_key("kube-standin/concurrent-writer"));
    let mut retry = fresh.clone();
    retry.data = mine.data.clone();
    cms.replace("w", &PostParams::default(), &retry)
        .await
        .unwrap();
    h.shutdown();
}

#[tokio::test]
async fn ambiguous_writes_commit_then_fail() {
    let (h, c) = start().await;
    let secrets: Api<Secret> = Api::default_namespaced(c);
    h.faults().add(
        Fault::new(Action::Ambiguous {
            code: 500,
            reset: false,
        })
        .verb("create")
        .resource("secrets")
        .nth(1),
    );
    let mut s = Secret::default();
    s.metadata.name = Some("amb".into());
    assert_eq!(
        api_code(
            secrets
                .create(&PostParams::default(), &s)
                .await
                .unwrap_err()
        ),
        500
    );
    assert!(
        h.get("v1", "Secret", "default", "amb").is_some(),
        "the write was committed"
    );
    assert_eq!(
        api_code(
            secrets
                .create(&PostParams::default(), &s)
                .await
                .unwrap_err()
        ),
        409
    );
    h.faults().add(
        Fault::new(Action::Ambiguous {
            code: 500,
            reset: true,
        })
        .verb("patch")
        .next(1),
    );
    let err = secrets
        .patch(
            "amb",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)));
    assert_eq!(
        h.get("v1", "Secret", "default", "amb").unwrap()["metadata"]["labels"]["a"],
        "b"
    );
    h.shutdown();
}

#[tokio::test]
async fn watch_closed_after_n_events_resumes_without_relist() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    cms.create(&PostParams::default(), &cm("seed"))
        .await
        .unwrap();
    h.faults().add(
        Fault::new(Action::WatchCloseAfter {
            events: Some(1),
            ms: None,
        })
        .verb("watch")
        .resource("configmaps")
        .next(2),
    );
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    until_applied(&mut w, "seed").await;
    for n in ["c1", "c2", "c3"] {
        cms.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    until_applied(&mut w, "c3").await;
    assert_eq!(count(&h, "list", "configmaps"), 1, "no relist");
    let watches: Vec<_> = h
        .requests()
        .into_iter()
        .filter(|r| r.verb == "watch")
        .collect();
    assert!(watches.len() >= 3, "{watches:?}");
    assert!(watches[1].query.contains("resourceVersion="));
    h.shutdown();
}

#[tokio::test]
async fn gone_410_and_compaction_force_a_relist() {
    let (h, c) = start_with(StandIn::builder().watch_cache_size(3)).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    cms.create(&PostParams::default(), &cm("first"))
        .await
        .unwrap();
    // The first watch closes after one event; the second gets 410: kube-runtime relists.
    h.faults().add(
        Fault::new(Action::WatchCloseAfter {
            events: Some(1),
            ms: None,
        })
        .verb("watch")
        .nth(1),
    );
    h.faults().add(
        Fault::new(Action::Error {
            code: 410,
            message: None,
            retry_after: None,
        })
        .verb("watch")
        .nth(2),
    );
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    until_applied(&mut w, "first").await;
    cms.create(&PostParams::default(), &cm("second"))
        .await
        .unwrap();
    until_applied(&mut w, "second").await;
    let relisted = until_applied(&mut w, "second").await;
    assert!(relisted.contains(&"init".to_string()), "{relisted:?}");
    assert_eq!(count(&h, "list", "configmaps"), 2);
    assert!(h
        .requests()
        .iter()
        .any(|r| r.verb == "watch" && r.status == 200 && !r.faults.is_empty()));
    // Compaction: while the API is down, more changes than the watch cache holds.
    h.faults().clear();
    h.down();
    for i in 0..5 {
        h.apply(
            serde_json::to_value(cm(&format!("while-down-{i}")))
                .map(|mut v| {
                    v["apiVersion"] = json!("v1");
                    v["kind"] = json!("ConfigMap");
                    v
                })
                .unwrap(),
        )
        .unwrap();
    }
    h.up().await.unwrap();
    let seen = until_applied(&mut w, "while-down-4").await;
    assert!(seen.contains(&"init".to_string()), "{seen:?}");
    assert!(count(&h, "list", "configmaps") >= 3);
    h.shutdown();
}

#[tokio::test]
async fn stalled_watch_makes_the_watcher_deaf() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    h.faults().add(Fault::new(Action::WatchStall).verb("watch"));
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    // The initial list still works.
    let init = tokio::time::timeout(T, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(init, Event::Init));
    // kube-root-ca.crt is listed first, as in any namespace of a real cluster.
    loop {
        match w.next().await.unwrap().unwrap() {
            Event::InitApply(o) => assert_eq!(o.metadata.name.as_deref(), Some("kube-root-ca.crt")),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    cms.create(&PostParams::default(), &cm("unheard"))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_millis(800), w.next()).await;
    assert!(r.is_err(), "no event arrives on a stalled watch: {r:?}");
    h.shutdown();
}

#[tokio::test]
async fn dropped_and_duplicated_watch_events() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    cms.create(&PostParams::default(), &cm("x")).await.unwrap();
    let (reader, writer) = kube::runtime::reflector::store::<ConfigMap>();
    h.faults().add(
        Fault::new(Action::DropEvents {
            object_name: Some("x".into()),
            count: 1,
        })
        .verb("watch")
        .nth(1),
    );
    let mut w = kube::runtime::reflector::reflector(
        writer,
        watcher::watcher(cms.clone(), watcher::Config::default()),
    )
    .boxed();
    until_applied(&mut w, "x").await;
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    cms.create(&PostParams::default(), &cm("y")).await.unwrap();
    until_applied(&mut w, "y").await;
    let cached = reader
        .get(&kube::runtime::reflector::ObjectRef::new("x").within("default"))
        .unwrap();
    assert!(
        cached.data.is_none(),
        "the update of x was lost: the cache is stale"
    );
    drop(w);

    h.faults().clear();
    h.faults().add(
        Fault::new(Action::DuplicateEvents {
            object_name: Some("z".into()),
            count: 1,
        })
        .verb("watch"),
    );
    let mut w2 = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    until_applied(&mut w2, "y").await;
    cms.create(&PostParams::default(), &cm("z")).await.unwrap();
    let first = until_applied(&mut w2, "z").await;
    let second = until_applied(&mut w2, "z").await;
    assert_eq!(first.last(), second.last(), "z was delivered twice");
    h.shutdown();
}

#[tokio::test]
async fn down_and_up_kills_watches_and_keeps_state() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    cms.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    until_applied(&mut w, "before").await;
    h.down();
    let err = cms.get("before").await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a transport error while down: {err:?}"
    );
    // The open watch was killed: the watcher reports errors (and backs off).
    tokio::time::timeout(T, async { while let Some(Ok(_)) = w.next().await {} })
        .await
        .expect("the watcher reports the dropped watch");
    h.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "during", "namespace": "default"}})).unwrap();
    h.up().await.unwrap();
    until_applied(&mut w, "during").await;
    assert!(cms.get("before").await.is_ok(), "state kept");
    // Same port, from the HTTP control port while the API is down.
    install_crypto();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/_standin/down?ms=300", h.control_url()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(h.is_down());
    assert!(cms.get("before").await.is_err());
    h.wait_until(|h| !h.is_down(), T).await.unwrap();
    cms.get("before").await.unwrap();
    h.shutdown();
}

#[tokio::test]
async fn lease_takeover_by_another_holder() {
    let (h, c) = start().await;
    namespace(&h, "le");
    let leases: Api<Lease> = Api::namespaced(c, "le");
    let mut l = Lease::default();
    l.metadata.name = Some("ctrl".into());
    l.spec = Some(LeaseSpec {
        holder_identity: Some("me".into()),
        lease_duration_seconds: Some(15),
        ..Default::default()
    });
    let mine = leases.create(&PostParams::default(), &l).await.unwrap();
    h.faults().add(
        Fault::new(Action::LeaseTakeover {
            holder: "intruder".into(),
        })
        .verb("update")
        .resource("leases")
        .nth(1),
    );
    let mut renew = mine.clone();
    renew.spec.as_mut().unwrap().renew_time =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
    assert_eq!(
        api_code(
            leases
                .replace("ctrl", &PostParams::default(), &renew)
                .await
                .unwrap_err()
        ),
        409
    );
    let now = leases.get("ctrl").await.unwrap();
    let spec = now.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("intruder"));
    assert_eq!(spec.lease_transitions, Some(1));
    h.take_over_lease("le", "ctrl", "me-again");
    assert_eq!(
        h.get("coordination.k8s.io/v1", "Lease", "le", "ctrl")
            .unwrap()["spec"]["holderIdentity"],
        "me-again"
    );
    h.shutdown();
}

#[tokio::test]
async fn token_request_faults() {
    let (h, c) = start().await;
    let sas: Api<ServiceAccount> = Api::default_namespaced(c);
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("wi".into());
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["aud".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    h.faults().add(
        Fault::new(Action::Error {
            code: 500,
            message: None,
            retry_after: None,
        })
        .resource("serviceaccounts")
        .subresource("token")
        .nth(1),
    );
    assert_eq!(
        api_code(
            sas.create_token_request("wi", &PostParams::default(), &tr)
                .await
                .unwrap_err()
        ),
        500
    );
    h.faults()
        .add(Fault::new(Action::TokenExpiry { seconds: 5 }).subresource("token"));
    let out = sas
        .create_token_request("wi", &PostParams::default(), &tr)
        .await
        .unwrap();
    let issued = h.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].expires_at - issued[0].issued_at, 5);
    assert_eq!(issued[0].token, out.status.unwrap().token);
    h.shutdown();
}

#[tokio::test]
async fn faults_scoped_by_user_agent() {
    let (h, _) = start().await;
    install_crypto();
    let client_as = |ua: &'static str| {
        let mut cfg = kube::Config::new(h.url().parse().unwrap());
        cfg.auth_info.token = Some(h.admin_token().to_string().into());
        cfg.headers
            .push((http::header::USER_AGENT, http::HeaderValue::from_static(ua)));
        Api::<ConfigMap>::default_namespaced(kube::Client::try_from(cfg).unwrap())
    };
    let a = client_as("acrpull/0.1 replica-a");
    let b = client_as("acrpull/0.1 replica-b");
    h.faults().add(
        Fault::new(Action::Error {
            code: 403,
            message: None,
            retry_after: None,
        })
        .user_agent("replica-a"),
    );
    assert_eq!(
        api_code(
            a.create(&PostParams::default(), &cm("x"))
                .await
                .unwrap_err()
        ),
        403
    );
    b.create(&PostParams::default(), &cm("x")).await.unwrap();
    let writes: Vec<_> = h
        .requests()
        .into_iter()
        .filter(|r| r.verb == "create" && r.status == 201)
        .collect();
    assert_eq!(writes.len(), 1);
    assert!(writes[0].user_agent.contains("replica-b"));
    let _ = client_for(&h);
    h.shutdown();
}

#[tokio::test]
async fn http_control_surface() {
    let h = StandIn::builder().start().await.unwrap();
    install_crypto();
    let http = reqwest::Client::new();
    let ctl = h.control_url();
    let r = http
        .put(format!("{ctl}/_standin/faults"))
        .body(r#"[{"id": "nf", "match": {"verbs": ["get"], "resource": "configmaps"}, "trigger": {"nextN": 1}, "action": {"type": "error", "code": 404}}]"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let listed: serde_json::Value = http
        .get(format!("{ctl}/_standin/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], "nf");
    let r = http
        .post(format!("{}/_standin/objects", h.url()))
        .body("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: seeded\n  namespace: default\ndata:\n  a: b\n")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let c = client_for(&h);
    let cms: Api<ConfigMap> = Api::default_namespaced(c);
    assert_eq!(api_code(cms.get("seeded").await.unwrap_err()), 404);
    assert_eq!(cms.get("seeded").await.unwrap().data.unwrap()["a"], "b");
    let got: serde_json::Value = http
        .get(format!(
            "{ctl}/_standin/objects?apiVersion=v1&kind=ConfigMap&namespace=default&name=seeded"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["data"]["a"], "b");
    let reqs: serde_json::Value = http
        .get(format!("{ctl}/_standin/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(reqs
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["verb"] == "get" && r["status"] == 404 && r["resource"] == "configmaps"));
    let r = http
        .post(format!("{ctl}/_standin/compact"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let info: serde_json::Value = http
        .get(format!("{ctl}/_standin/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["url"], h.url());
    assert_eq!(info["compactedResourceVersion"], info["resourceVersion"]);
    let jwks: serde_json::Value = http
        .get(format!("{ctl}/_standin/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks, h.jwks());
    h.shutdown();
}
