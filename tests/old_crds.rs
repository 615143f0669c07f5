//! The old controller's CRDs still installed after a swap (upstream msi-acrpull's
//! `config/helm/templates/*acrpullbindings.yaml`, vendored in `tests/fixtures/upstream/`): the
//! API server prunes every status field but `lastTokenRefreshTime`, `tokenExpirationTime` and
//! `error`. The real binary against the stand-in (which prunes like a real API server):
//!
//! - pull secrets work, and status keeps the old controller's three fields, correct;
//! - the operator is told once per CRD (an error log line naming the fields and the fix), on
//!   the `/readyz` body (still 200) and by `acrpull_crd_status_fields_dropped{crd}`;
//! - passes do not rewrite the status they cannot read back (the request log shows no status
//!   write while passes keep happening);
//! - applying acrpull's CRDs clears all of it without a restart, and `Ready` appears.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const OLD_CRDS: [&str; 2] = [
    "tests/fixtures/upstream/helm/templates/acrpull.microsoft.com_acrpullbindings.yaml",
    "tests/fixtures/upstream/helm/templates/msi-acrpull.microsoft.com_acrpullbindings.yaml",
];
const CRD_V2: &str = "acrpullbindings.acrpull.microsoft.com";
const CRD_V1: &str = "acrpullbindings.msi-acrpull.microsoft.com";

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Passes the controller has logged for `name` (its debug line per decision).
fn passes(env: &Env, name: &str) -> usize {
    env.logs()
        .lines()
        .filter(|l| l.contains("decided") && l.contains(&format!(" name={name} ")))
        .count()
}

/// Status writes of the binding `name` in the request log.
fn status_writes(env: &Env, name: &str) -> usize {
    env.kube
        .requests()
        .into_iter()
        .filter(|r| r.resource == "acrpullbindings" && r.subresource == "status" && r.name == name)
        .filter(|r| ["patch", "update"].contains(&r.verb.as_str()))
        .count()
}

async fn wait_until(env: &Env, what: &str, mut done: impl FnMut(&Env) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done(env) {
        assert!(
            std::time::Instant::now() < deadline,
            "never: {what}\nlogs:\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the binding's status to hold a token expiry and no error (all the old CRD keeps).
async fn wait_old_status(env: &Env, api_version: &str, name: &str) -> serde_json::Value {
    let got = env
        .kube
        .wait_for(
            api_version,
            "AcrPullBinding",
            "team-a",
            name,
            |o| {
                o.is_some_and(|o| {
                    o["status"]["tokenExpirationTime"].is_string()
                        && o["status"]["lastTokenRefreshTime"].is_string()
                        && o["status"]["error"].is_null()
                })
            },
            Duration::from_secs(60),
        )
        .await;
    match got {
        Ok(Some(v)) => v,
        other => panic!("{name}: {other:?}\n{}", env.logs()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_crds_are_reported_and_status_is_not_rewritten_until_they_are_replaced() {
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    // The cluster as the old controller's users left it: its CRDs, not acrpull's.
    for path in OLD_CRDS {
        env.kube.apply_yaml(&read(path)).expect("old CRD applies");
    }
    env.create(sa("team-a", "puller", json!({})));
    env.spawn(&["--crd-recheck-interval=1s".into()]);
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "legacy", "namespace": "team-a"},
        "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
                 "scope": "repository:app:pull", "serviceAccountName": "puller"}}));

    // Pull secrets work; status holds the old controller's fields, and nothing else survives.
    let app = wait_old_status(&env, V2, "app").await;
    let legacy = wait_old_status(&env, V1, "legacy").await;
    for binding in [&app, &legacy] {
        let status = binding["status"].as_object().unwrap();
        let mut fields: Vec<&String> = status.keys().collect();
        fields.sort();
        assert_eq!(
            fields,
            ["lastTokenRefreshTime", "tokenExpirationTime"],
            "{binding:#}"
        );
    }
    let secret = env.secret("team-a", "acr-pull-app").expect("pull secret");
    assert_eq!(
        app["status"]["tokenExpirationTime"],
        secret["metadata"]["annotations"]["acr.microsoft.com/token.expiry"]
    );
    assert!(env.secret("team-a", "legacy-msi-acrpull-secret").is_some());

    // Told once per CRD, however many checks and passes follow.
    env.kube.clear_requests();
    let crd_reads = |env: &Env| {
        env.kube
            .requests()
            .into_iter()
            .filter(|r| r.resource == "customresourcedefinitions" && r.verb == "get")
            .count()
    };
    wait_until(&env, "six more CRD reads (three checks)", |e| {
        crd_reads(e) >= 6
    })
    .await;
    for crd in [CRD_V2, CRD_V1] {
        let logs = env.logs();
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| {
                l.contains("ERROR") && l.contains(&format!("the installed CRD {crd} is outdated"))
            })
            .collect();
        assert_eq!(errors.len(), 1, "{crd}: {errors:#?}\n{}", env.logs());
        for needle in [
            "phase, conditions, observedGeneration, nextRefreshTime, consecutiveFailures",
            "apply the CRDs in deploy/crds",
            "helm upgrade",
        ] {
            assert!(errors[0].contains(needle), "{needle}: {}", errors[0]);
        }
    }
    let (code, body) = env.http_get(env.probe_port, "/readyz").await;
    assert_eq!(
        code, 200,
        "an old CRD does not make the replica unready: {body}"
    );
    for crd in [CRD_V2, CRD_V1] {
        assert!(
            body.contains(&format!("warning: the installed CRD {crd} is outdated")),
            "{body}"
        );
    }
    let (_, metrics) = env.http_get(env.metrics_port, "/metrics").await;
    for crd in [CRD_V2, CRD_V1] {
        let line = format!("acrpull_crd_status_fields_dropped{{crd=\"{crd}\"}} 5");
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }

    // Passes keep happening (each label change is a watch event and a pass) and none of them
    // rewrites the status it cannot read back.
    env.kube.clear_requests();
    for round in 0..3 {
        let before = passes(&env, "app");
        let mut app = env.kube.get(V2, "AcrPullBinding", "team-a", "app").unwrap();
        app["metadata"]["labels"] = json!({"touched": round.to_string()});
        env.create(app);
        wait_until(&env, "a pass after the label change", |e| {
            passes(e, "app") > before
        })
        .await;
    }
    assert_eq!(
        status_writes(&env, "app"),
        0,
        "status rewritten although nothing it keeps changed: {:#?}",
        env.kube
            .requests()
            .into_iter()
            .filter(|r| r.subresource == "status")
            .map(|r| format!("{} {} {}", r.verb, r.path, r.status))
            .collect::<Vec<_>>()
    );

    // The operator applies acrpull's CRDs: no restart, full status, Ready.
    let crds = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds")).unwrap();
    for f in crds {
        env.kube
            .apply_yaml(&std::fs::read_to_string(f.unwrap().path()).unwrap())
            .unwrap();
    }
    let app = env.wait_ready(V2, "team-a", "app", "True").await;
    assert_eq!(app["status"]["phase"], "Ready", "{app:#}");
    assert_eq!(
        app["status"]["observedGeneration"],
        app["metadata"]["generation"]
    );
    env.wait_ready(V1, "team-a", "legacy", "True").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = env.http_get(env.probe_port, "/readyz").await;
        if (code, body.as_str()) == (200, "ok") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{code}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = env.http_get(env.metrics_port, "/metrics").await;
    for crd in [CRD_V2, CRD_V1] {
        let line = format!("acrpull_crd_status_fields_dropped{{crd=\"{crd}\"}} 0");
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }
    assert!(
        env.logs().contains("keeps every status field again"),
        "{}",
        env.logs()
    );
    assert!(
        env.child().try_wait().unwrap().is_none(),
        "still the same process"
    );
}
