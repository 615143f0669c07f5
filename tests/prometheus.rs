//! acrpull scraped by the real Prometheus (Debian's `prometheus` package; a missing binary
//! fails the test unless `ACRPULL_TEST_SKIP=prometheus` opts out): the real binary against the stand-ins, with a Ready binding of each
//! version, a binding whose identity Azure refuses, and injected Kubernetes API errors.
//!
//! What it shows:
//! - Prometheus scrapes `/metrics` (OpenMetrics) with the target up and no scrape error, and
//!   its HTTP API returns the series operators use: bindings by phase, token requests by hop
//!   and outcome, the earliest expiry, the leader, reconcile errors and the
//!   controller-runtime compatibility series.
//! - The alerting rules of `deploy/prometheus/rules.yaml`, evaluated by this Prometheus:
//!   as committed, `AcrPullBindingFailed` and `AcrPullReconcileErrors` go *pending* (their
//!   expressions are true; their `for:` of 15 minutes cannot be waited out in a test). A copy
//!   of the same rules with every `for:` cut to 2 s (and a `copy="short-for"` label) must
//!   *fire* exactly those two and nothing else: no false alarm from a healthy leader, fresh
//!   tokens and a scraped, ready target.
//! - Every query of the Grafana dashboard evaluates without error, returns data, and names
//!   only metrics acrpull serves (or Prometheus' own `up`); so do the rules.

mod common;
mod prereq;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use kube_standin::faults::{Action, Fault};
use serde_json::{json, Value};

/// What the dashboard's template variables stand for in the test.
const VARIABLES: [(&str, &str); 3] = [("$__rate_interval", "1m"), ("${job}", ".+"), ("$job", ".+")];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A real Prometheus server on a free loopback port with a temporary TSDB; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second as job `acrpull` and evaluates `rule_files`
    /// every second.
    fn start(target: &str, rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": "acrpull",
                "static_configs": [{"targets": [target]}],
            }],
        });
        let config_file = dir.path().join("prometheus.yml");
        // JSON is YAML.
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(prereq::prometheus())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): install Debian's prometheus package (.ci/run does)")
            });
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = r.json().await.map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited: {status}\n{}", self.logs());
            }
            let ready = self
                .http
                .get(format!("{}/-/ready", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus never ready\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query's result vector (or the error Prometheus reports).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.get("/api/v1/query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `expr` until it returns at least one series.
    async fn wait_for(&self, expr: &str, what: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            match self.query(expr).await {
                Ok(v) if !v.is_empty() => return v,
                Ok(_) => {}
                Err(e) => panic!("query {expr}: {e}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {expr} stayed empty\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the single target has been scraped twice, failing at once if Prometheus
    /// reports it down or a scrape error (an OpenMetrics parse error, a timeout, ...).
    async fn wait_two_good_scrapes(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut scrapes = BTreeSet::new();
        loop {
            let data = self.get("/api/v1/targets", &[]).await.unwrap();
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(targets.len() <= 1, "{data:#}");
            let t = targets.first().cloned().unwrap_or_default();
            let last = t["lastScrape"].as_str().unwrap_or_default().to_string();
            if !targets.is_empty() && t["health"] != "unknown" {
                assert_eq!(
                    t["health"],
                    "up",
                    "target down: {}\n{t:#}\n{}",
                    t["lastError"],
                    self.logs()
                );
                assert_eq!(t["lastError"], "", "scrape error: {t:#}");
                scrapes.insert(last);
            }
            if scrapes.len() >= 2 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than two scrapes: {t:#}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every alerting rule Prometheus evaluates: (group, alert, state, alerts).
    async fn rules(&self) -> Vec<(String, String, String, Vec<Value>)> {
        let data = self
            .get("/api/v1/rules", &[("type", "alert")])
            .await
            .unwrap();
        let mut out = Vec::new();
        for g in data["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                assert_eq!(r["health"], "ok", "rule evaluation failed: {r:#}");
                out.push((
                    g["name"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["alerts"].as_array().cloned().unwrap_or_default(),
                ));
            }
        }
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The committed rules with every `for:` cut to 2 s, the group renamed and a
/// `copy="short-for"` label added, so both copies can be loaded side by side.
fn short_for_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap();
    let mut rules: Value = serde_saphyr::from_str(&text).unwrap();
    for group in rules["groups"].as_array_mut().unwrap() {
        group["name"] = json!(format!("{}-short-for", group["name"].as_str().unwrap()));
        for rule in group["rules"].as_array_mut().unwrap() {
            rule["for"] = json!("2s");
            rule["labels"]["copy"] = json!("short-for");
        }
    }
    let path = dir.join("short-for.json");
    std::fs::write(&path, rules.to_string()).unwrap();
    path
}

/// Metric names a PromQL expression selects: identifiers outside label matchers, ranges,
/// strings and grouping lists that are not functions, aggregations or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Drop strings, then `{...}` and `[...]`.
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    let mut depth = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                plain.push(' ');
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth > 0 => {}
            _ => plain.push(c),
        }
    }
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Binary operators, literals, and aggregations (followed by `by (...)`, not `(`).
    const KEYWORDS: [&str; 20] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let bytes: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            let next = bytes[i..].iter().find(|c| !c.is_whitespace()).copied();
            let preceded_by_digit = start > 0 && bytes[start - 1].is_ascii_digit();
            if GROUPING.contains(&word.to_lowercase().as_str()) {
                skip_list = true;
            } else if next == Some('(') || preceded_by_digit {
                // A function or aggregation, or a number's exponent.
            } else if !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_list {
            // The label list after by/without/on/ignoring/group_*: not metric names.
            while i < bytes.len() && bytes[i] != ')' {
                i += 1;
            }
            skip_list = false;
        } else if !c.is_whitespace() {
            skip_list = false;
        }
        i += 1;
    }
    names
}

/// The sample names acrpull's `/metrics` serves, from its `# TYPE` lines (a family with no
/// series yet still counts) and its samples.
fn served_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn metric_names_are_parsed_out_of_promql() {
    let got = metric_names(
        r#"histogram_quantile(0.99, sum by (hop, le) (rate(acrpull_token_request_duration_seconds_bucket{job=~"$job", x="a{b}"}[5m]))) / ignoring (le) group_left (hop) up offset 5m > bool 1e3 and on() absent(acrpull_leader)"#,
    );
    let want: BTreeSet<String> = [
        "acrpull_token_request_duration_seconds_bucket",
        "up",
        "acrpull_leader",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
    assert_eq!(
        metric_names("max by (namespace, job) (acrpull_bindings{phase=\"Failed\"}) > 0"),
        BTreeSet::from(["acrpull_bindings".to_string()])
    );
}

/// Every `expr` of every panel (rows included), with the panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.trim().is_empty(),
                    "panel {title}: a target without expr"
                );
                out.push((title.clone(), expr.to_string()));
            }
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let text =
        std::fs::read_to_string(root().join("deploy/prometheus/grafana-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "acrpull");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id {p:#}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{}: gridPos.{k}", p["title"]);
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{}: no query",
                p["title"]
            );
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{}: no description",
                p["title"]
            );
        }
    }
    // What the issue asks the dashboard to show.
    let all: String = dashboard_queries(&d)
        .into_iter()
        .map(|(_, e)| e)
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "acrpull_bindings",
        "acrpull_token_expiry_bindings",
        "acrpull_token_requests_total",
        "acrpull_token_request_duration_seconds_bucket",
        "acrpull_rate_limiter_wait_seconds_bucket",
        "acrpull_token_cache_total",
        "controller_runtime_reconcile_total",
        "acrpull_reconcile_errors_total",
        "acrpull_leader",
    ] {
        assert!(all.contains(needle), "no panel shows {needle}");
    }
}

fn number(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_alerts_and_serves_the_dashboard() {
    if prereq::skipped(
        "prometheus::real_prometheus_scrapes_alerts_and_serves_the_dashboard",
        &["prometheus"],
    ) {
        return;
    }
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Default::default()
    })
    .await;
    env.spawn(&[
        "--leader-elect".into(),
        "--leader-election-namespace=acrpull-system".into(),
        "--pod-name=scraped".into(),
    ]);
    // A Ready binding of each version, and one whose identity has no role on the registry:
    // the Azure stand-in refuses it, and it stays Failed.
    env.create(sa("team-a", "puller", json!({})));
    env.create(v2_managed("team-a", "app", "puller", "repository:app:pull"));
    env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "legacy", "namespace": "team-a"},
        "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
                 "managedIdentityResourceID": "", "scope": "repository:app:pull",
                 "serviceAccountName": "puller"}}));
    let mut norole = v2_managed("team-a", "norole", "puller", "repository:app:pull");
    norole["spec"]["auth"]["managedIdentity"]["clientID"] = json!(NOROLE_CLIENT);
    env.create(norole);
    env.wait_ready(V2, "team-a", "app", "True").await;
    env.wait_ready(V1, "team-a", "legacy", "True").await;
    let failed = env.wait_ready(V2, "team-a", "norole", "False").await;
    assert_eq!(failed["status"]["phase"], "Failed", "{failed:#}");

    let dir = tempfile::tempdir().unwrap();
    let rules = root().join("deploy/prometheus/rules.yaml");
    let mut prom = Prometheus::start(
        &format!("127.0.0.1:{}", env.metrics_port),
        &[rules, short_for_copy(dir.path())],
    );
    prom.wait_ready().await;
    prom.wait_two_good_scrapes().await;

    // The series operators use, as Prometheus stored them.
    let one = |v: Vec<Value>, what: &str| -> f64 {
        assert_eq!(v.len(), 1, "{what}: {v:#?}");
        number(&v[0])
    };
    let prom_ref = &prom;
    let q = move |e: &'static str| async move {
        prom_ref
            .query(e)
            .await
            .unwrap_or_else(|err| panic!("{e}: {err}"))
    };
    assert_eq!(one(q(r#"up{job="acrpull"}"#).await, "up"), 1.0);
    assert_eq!(
        one(q(r#"acrpull_bindings{phase="Ready"}"#).await, "Ready"),
        2.0
    );
    assert_eq!(
        one(q(r#"acrpull_bindings{phase="Failed"}"#).await, "Failed"),
        1.0
    );
    assert_eq!(q("acrpull_bindings").await.len(), 5, "one series per phase");
    assert!(
        one(
            q(r#"acrpull_token_requests_total{hop="imds",outcome="success"}"#).await,
            "imds"
        ) >= 1.0
    );
    assert!(
        one(
            q(r#"acrpull_token_requests_total{hop="acr_token",outcome="success"}"#).await,
            "acr_token"
        ) >= 1.0
    );
    let refused = q(r#"acrpull_token_requests_total{outcome!="success"} > 0"#).await;
    assert!(
        !refused.is_empty(),
        "the refused identity shows as a failed token request"
    );
    let expiry = one(q("acrpull_earliest_token_expiry_seconds").await, "expiry");
    assert!(expiry > 3600.0, "fresh tokens: {expiry}");
    assert_eq!(
        one(
            q(r#"acrpull_token_expiry_bindings{le="+Inf"}"#).await,
            "+Inf"
        ),
        2.0
    );
    assert_eq!(one(q("acrpull_leader").await, "leader"), 1.0);
    assert_eq!(one(q("acrpull_ready").await, "ready"), 1.0);
    let master = q(r#"leader_election_master_status{name="aks.azure.com"}"#).await;
    assert_eq!(one(master, "leader_election_master_status"), 1.0);
    for controller in ["acr-pull-binding", "acr-pull-binding-v1beta2"] {
        let passes = prom
            .query(&format!(
                r#"sum(controller_runtime_reconcile_total{{controller="{controller}"}})"#
            ))
            .await
            .unwrap();
        assert!(one(passes, controller) >= 1.0, "{controller}");
        let errors = prom
            .query(&format!(
                r#"controller_runtime_reconcile_errors_total{{controller="{controller}"}}"#
            ))
            .await
            .unwrap();
        assert_eq!(
            errors.len(),
            1,
            "{controller}: the error series exists from the start"
        );
    }
    assert_eq!(
        q(r#"controller_runtime_reconcile_time_seconds_bucket{controller="acr-pull-binding-v1beta2"}"#)
            .await
            .len(),
        41
    );

    // Kubernetes API errors while Prometheus watches: a Secret create fails with 500 (the pass
    // ends in ApiError and is retried). Twice, so the counter's series exists before it
    // increases and rate() sees the increase.
    for name in ["late-1", "late-2"] {
        env.kube.faults().add(
            Fault::new(Action::Error {
                code: 500,
                message: None,
                retry_after: None,
            })
            .verb("create")
            .resource("secrets")
            .next(1),
        );
        env.create(v2_managed("team-a", name, "puller", "repository:app:pull"));
        env.wait_ready(V2, "team-a", name, "True").await;
        prom.wait_for(
            &format!(
                r#"acrpull_reconcile_errors_total{{reason="ApiError"}} >= {}"#,
                if name == "late-1" { 1 } else { 2 }
            ),
            "the injected API error is counted",
        )
        .await;
    }
    prom.wait_for(
        "sum(rate(acrpull_reconcile_errors_total[5m])) > 0",
        "reconcile errors have a rate",
    )
    .await;

    // The alerts. With every for: cut to 2 s, exactly the two faults fire.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let want: BTreeSet<&str> = ["AcrPullBindingFailed", "AcrPullReconcileErrors"].into();
    let rules = loop {
        let rules = prom.rules().await;
        let firing: BTreeSet<&str> = rules
            .iter()
            .filter(|(g, _, s, _)| g.ends_with("-short-for") && s == "firing")
            .map(|(_, a, _, _)| a.as_str())
            .collect();
        if firing == want {
            break rules;
        }
        assert!(
            firing.is_subset(&want),
            "unexpected alerts firing: {firing:?}\n{rules:#?}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "never fired {want:?} (firing: {firing:?})\n{rules:#?}\n{}",
            prom.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (group, alert, state, alerts) in &rules {
        let expected = if want.contains(alert.as_str()) {
            if group.ends_with("-short-for") {
                "firing"
            } else {
                // The committed rule: the expression is true, the 15-minute clock runs.
                "pending"
            }
        } else {
            "inactive"
        };
        assert_eq!(state, expected, "{group}/{alert}: {alerts:#?}");
        if group.ends_with("-short-for") && state == "firing" {
            assert_eq!(alerts.len(), 1, "{alert}: one alert per job: {alerts:#?}");
            let labels = &alerts[0]["labels"];
            assert_eq!(labels["job"], "acrpull");
            assert_eq!(labels["severity"], "warning");
            assert!(
                alerts[0]["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap()
                    .starts_with("deploy/prometheus/RUNBOOK.md#"),
                "{alerts:#?}"
            );
        }
    }
    let firing =
        q(r#"ALERTS{alertname="AcrPullBindingFailed",alertstate="firing",copy="short-for"}"#).await;
    assert_eq!(firing.len(), 1, "{firing:#?}");

    // What acrpull serves, to hold the dashboard and the rules against.
    let (code, text) = env.http_get(env.metrics_port, "/metrics").await;
    assert_eq!(code, 200);
    let mut served = served_names(&text);
    served.insert("up".into()); // Prometheus' own, per target.
    assert!(served.contains("acrpull_reconcile_errors_total"));

    // Every rule selects only metrics acrpull serves.
    let plain: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap(),
    )
    .unwrap();
    for group in plain["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            let unknown: Vec<_> = metric_names(expr).difference(&served).cloned().collect();
            assert!(
                unknown.is_empty(),
                "{}: {unknown:?} not served",
                rule["alert"]
            );
        }
    }

    // Every dashboard query: no error, data, only served metrics.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{}", queries.len());
    for (title, expr) in queries {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{title}: {expr} selects no metric");
        let unknown: Vec<_> = names.difference(&served).cloned().collect();
        assert!(
            unknown.is_empty(),
            "panel {title}: {unknown:?} is not served by acrpull\n{expr}"
        );
        let mut concrete = expr.clone();
        for (var, value) in VARIABLES {
            concrete = concrete.replace(var, value);
        }
        assert!(
            !concrete.contains('$'),
            "{title}: unknown variable in {expr}"
        );
        match prom.query(&concrete).await {
            Ok(result) => assert!(!result.is_empty(), "panel {title}: no data for {concrete}"),
            Err(e) => panic!("panel {title}: {concrete}: {e}"),
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(def) = var["definition"].as_str() {
            // label_values(<metric>, <label>)
            let metric = def
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap()
                .trim();
            assert!(
                served.contains(metric),
                "variable {}: {metric}",
                var["name"]
            );
        }
    }
}
