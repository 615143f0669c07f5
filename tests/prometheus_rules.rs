//! The alerting rules in `deploy/prometheus/`, checked with the real `promtool` (Debian's
//! `prometheus` package; a missing `promtool` fails these tests unless
//! `ACRPULL_TEST_SKIP=prometheus` opts out): both rule files are valid,
//! they hold the same groups, the unit tests in `tests/prometheus/rules_test.yaml` pass, every
//! alert is tested firing and silent, has a runbook section, and carries only bounded labels.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

mod prereq;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `promtool` with `args`; returns its combined output, failing the test on a non-zero
/// exit or when promtool is not installed.
fn promtool(args: &[&str]) -> String {
    let out = Command::new(prereq::promtool())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool not runnable ({e}): install Debian's prometheus package (.ci/run does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn rules() -> Vec<Value> {
    let file = yaml("deploy/prometheus/rules.yaml");
    file["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn alert_names() -> BTreeSet<String> {
    rules()
        .iter()
        .map(|r| {
            r["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string()
        })
        .collect()
}

#[test]
fn promtool_accepts_the_rules_file_and_the_prometheus_rule() {
    if prereq::skipped(
        "prometheus_rules::promtool_accepts_the_rules_file_and_the_prometheus_rule",
        &["prometheus"],
    ) {
        return;
    }
    let out = promtool(&["check", "rules", "deploy/prometheus/rules.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // The PrometheusRule's spec is a rules file of its own.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    let rule = yaml("deploy/prometheus/prometheusrule.yaml");
    std::fs::write(&spec, rule["spec"].to_string()).unwrap();
    let out = promtool(&["check", "rules", spec.to_str().unwrap()]);
    assert!(
        out.contains(&format!("{} rules found", alert_names().len())),
        "{out}"
    );
}

#[test]
fn the_prometheus_rule_holds_exactly_the_rules_file_groups() {
    let plain = yaml("deploy/prometheus/rules.yaml");
    let rule = yaml("deploy/prometheus/prometheusrule.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "acrpull-system");
    assert_eq!(
        rule["spec"]["groups"], plain["groups"],
        "deploy/prometheus/prometheusrule.yaml differs from rules.yaml: run scripts/prometheus-rule.sh"
    );
    assert_eq!(rule["spec"].as_object().unwrap().len(), 1, "only groups");
}

#[test]
fn promtool_unit_tests_pass_and_cover_every_alert_firing_and_silent() {
    if prereq::skipped(
        "prometheus_rules::promtool_unit_tests_pass_and_cover_every_alert_firing_and_silent",
        &["prometheus"],
    ) {
        return;
    }
    let out = promtool(&["test", "rules", "tests/prometheus/rules_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");

    let tests = yaml("tests/prometheus/rules_test.yaml");
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_array().unwrap() {
        for check in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = check["alertname"].as_str().unwrap().to_string();
            let expected = check["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected == 0 {
                silent.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    let all = alert_names();
    assert_eq!(fires, all, "every alert must be tested firing");
    assert_eq!(silent, all, "every alert must be tested staying silent");
}

/// The label names an expression keeps with `by (...)`; an alert's labels come from these and
/// from the series it selects.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let inner = &rest[at + 4..];
        let end = inner.find(')').expect("closing parenthesis");
        out.extend(inner[..end].split(',').map(|l| l.trim().to_string()));
        rest = &inner[end..];
    }
    out
}

#[test]
fn every_alert_has_a_runbook_section_and_bounded_labels() {
    let runbook = std::fs::read_to_string(root().join("deploy/prometheus/RUNBOOK.md")).unwrap();
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_string)
        .collect();
    let text = std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap();
    assert!(
        !text.contains("{{"),
        "no Go templates: the file must embed in a Helm template as it is"
    );
    let bounded: BTreeSet<String> = ["namespace", "job", "hop"]
        .into_iter()
        .map(String::from)
        .collect();
    for rule in rules() {
        let alert = rule["alert"].as_str().unwrap();
        let labels = rule["labels"].as_object().unwrap();
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            ["severity"],
            "{alert}: severity is the only label a rule adds"
        );
        assert!(
            ["warning", "critical"].contains(&labels["severity"].as_str().unwrap()),
            "{alert}"
        );
        let expr = rule["expr"].as_str().unwrap();
        let kept = grouping_labels(expr);
        assert!(
            kept.is_subset(&bounded),
            "{alert} keeps labels {kept:?}; only {bounded:?} are bounded"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{alert} has no {key}"
            );
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        assert_eq!(
            url,
            format!("deploy/prometheus/RUNBOOK.md#{}", alert.to_lowercase()),
            "{alert}"
        );
        assert!(
            headings.contains(alert),
            "RUNBOOK.md has no section \"## {alert}\""
        );
    }
    // And no runbook section for an alert that does not exist.
    let alerts = alert_names();
    for h in &headings {
        assert!(alerts.contains(h), "RUNBOOK.md section {h} has no alert");
    }
}

#[test]
fn kustomize_renders_the_rule_and_the_dashboard_config_map() {
    let out = Command::new(prereq::kubectl())
        .args(["kustomize", "deploy/prometheus"])
        .current_dir(root())
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"],
        yaml("deploy/prometheus/rules.yaml")["groups"]
    );
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("dashboard ConfigMap");
    assert_eq!(cm["metadata"]["name"], "acrpull-grafana-dashboard");
    assert_eq!(cm["metadata"]["namespace"], "acrpull-system");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard =
        std::fs::read_to_string(root().join("deploy/prometheus/grafana-dashboard.json")).unwrap();
    assert_eq!(cm["data"]["acrpull.json"], dashboard.as_str());
}
