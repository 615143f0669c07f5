//! The kustomize manifests under `deploy/` are consistent with what the controller does: every
//! YAML document is a named object in the right namespace, the kustomization installs every
//! manifest but the documented alternatives, and the checks of `tests/manifests/mod.rs` hold
//! (hardened Deployment, RBAC exactly the permission table, monitors that reach the metrics
//! port, admission policies without parameters that match only the controller, carry its token
//! audience and fail closed, with `admission-fail-open.yaml` differing only in failing open).
//!
//! The manifests are the Helm chart rendered by `scripts/gen-deploy.sh`; `tests/helm_chart.rs`
//! checks that they are, and runs the same checks on other renderings of the chart.

mod manifests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use manifests::*;

const NAMESPACE: &str = DEFAULT_NAMESPACE;

/// Manifests that are alternatives to listed ones, applied by hand instead of through the
/// kustomization.
const ALTERNATIVES: &[&str] = &[
    "admission-fail-open.yaml",
    "monitoring-podmonitor.yaml",
    "networkpolicy.yaml",
];
/// The manifest holding the fail-closed policies, installed by the kustomization.
const ADMISSION: &str = "admission.yaml";
/// The manifest holding the same policies failing open, applied by hand instead.
const ADMISSION_FAIL_OPEN: &str = "admission-fail-open.yaml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every `*.yaml`/`*.yml` under `deploy/`, except the Helm chart's templates (not YAML
/// until rendered) and `deploy/prometheus/` (a rules file and its own kustomization, checked
/// by `tests/prometheus_rules.rs`).
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path != deploy_dir().join("helm") && path != deploy_dir().join("prometheus") {
                yaml_files(&path, out);
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn parse_file(path: &Path) -> Vec<Doc> {
    let file = path
        .strip_prefix(deploy_dir())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    parse_docs(&file, &source)
}

/// Every document of every manifest, kustomization.yaml included.
fn all_docs() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.iter().flat_map(|path| parse_file(path)).collect()
}

/// The documents `kubectl apply -k deploy/` installs.
fn installed_docs() -> Vec<Doc> {
    kustomization_resources()
        .iter()
        .flat_map(|file| parse_file(&deploy_dir().join(file)))
        .collect()
}

fn kustomization_resources() -> Vec<String> {
    let kustomization = parse_file(&deploy_dir().join("kustomization.yaml"));
    assert_eq!(kustomization.len(), 1, "kustomization.yaml: one document");
    list(&kustomization[0].value, "/resources")
        .iter()
        .map(|r| r.as_str().expect("resources are file names").to_owned())
        .collect()
}

fn docs_of(file: &str) -> Vec<Doc> {
    parse_file(&deploy_dir().join(file))
}

#[test]
fn every_document_is_a_named_kubernetes_object() {
    let docs = all_docs();
    assert!(docs.len() >= 15, "found only {} documents", docs.len());
    let mut files: BTreeSet<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    files.remove("kustomization.yaml");
    for file in files {
        check_named_objects(&docs_of(file), NAMESPACE);
    }
    // Nothing the kustomization installs is defined twice.
    check_named_objects(&installed_docs(), NAMESPACE);
}

#[test]
fn kustomization_installs_every_manifest_but_the_alternatives() {
    let resources = kustomization_resources();
    let mut expected: BTreeSet<String> = [
        "rbac.yaml",
        "deployment.yaml",
        "monitoring.yaml",
        "admission.yaml",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut crds = Vec::new();
    yaml_files(&deploy_dir().join("crds"), &mut crds);
    assert_eq!(
        crds.len(),
        3,
        "the binding CRDs of both API groups and the AcrPullPolicy CRD"
    );
    for crd in &crds {
        let relative = crd.strip_prefix(deploy_dir()).unwrap();
        expected.insert(relative.to_string_lossy().into_owned());
    }
    let listed: BTreeSet<String> = resources.iter().cloned().collect();
    assert_eq!(listed.len(), resources.len(), "a resource is listed twice");
    assert_eq!(listed, expected, "kustomization.yaml resources");

    // Every other manifest must be a known alternative, so none is forgotten.
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    for path in files {
        let file = path.strip_prefix(deploy_dir()).unwrap().to_string_lossy();
        if file != "kustomization.yaml" && !listed.contains(file.as_ref()) {
            assert!(
                ALTERNATIVES.contains(&file.as_ref()),
                "{file} is neither in kustomization.yaml nor a known alternative"
            );
        }
    }
}

#[test]
fn deployment_is_hardened_leader_elected_and_probed() {
    let docs = installed_docs();
    check_deployment(&docs, NAMESPACE);
    assert_eq!(
        controller_deployment(&docs).value["spec"]["replicas"],
        2,
        "two replicas: one leader and a warm standby"
    );
}

#[test]
fn rbac_grants_exactly_the_permission_table() {
    check_rbac(&installed_docs(), NAMESPACE);
}

#[test]
fn monitors_scrape_the_metrics_port_on_the_pod_ip() {
    let docs = all_docs();
    assert!(
        of_kind(&docs, "PodMonitor").count() > 0 && of_kind(&docs, "ServiceMonitor").count() > 0,
        "both a PodMonitor and a ServiceMonitor are offered"
    );
    check_monitors(&docs);
}

#[test]
fn admission_policies_take_no_parameters() {
    let docs = all_docs();
    assert!(
        of_kind(&docs, "ValidatingAdmissionPolicy").count() >= 6
            && of_kind(&docs, "ValidatingAdmissionPolicyBinding").count() >= 3,
        "three policies in each admission manifest, three bindings"
    );
    check_admission_takes_no_parameters(&docs);
}

#[test]
fn admission_bindings_deny_and_cover_every_installed_policy() {
    let policies = check_admission_bindings(&installed_docs());
    assert!(
        policies >= 3,
        "token, Secret and ServiceAccount policies are installed"
    );
}

#[test]
fn admission_policies_fail_closed_and_the_alternative_differs_only_in_failing_open() {
    let closed: Vec<Doc> = docs_of(ADMISSION)
        .into_iter()
        .filter(|d| d.kind() == "ValidatingAdmissionPolicy")
        .collect();
    check_fail_closed_and_open(&closed, &docs_of(ADMISSION_FAIL_OPEN));
}

#[test]
fn admission_policies_match_only_the_controller() {
    let checked = check_admission_matches_only(&all_docs(), &controller_user(NAMESPACE));
    assert!(checked >= 6, "three policies in each admission manifest");
}

#[test]
fn token_policy_audience_literal_equals_the_controller_flag() {
    let docs = all_docs();
    let container = controller_container(controller_deployment(&docs));
    let checked = check_token_audience(&docs, container);
    assert!(
        checked >= 2,
        "a token-request policy in each admission manifest"
    );
}

#[test]
fn token_policy_expiry_cap_equals_what_the_controller_asks_for() {
    let checked = check_token_expiry(&all_docs());
    assert!(
        checked >= 2,
        "a token-request policy in each admission manifest"
    );
}

#[test]
fn flag_parsing_helpers() {
    let args: Vec<String> = ["--a=1", "--b", "2", "--leader-elect"]
        .map(str::to_owned)
        .to_vec();
    assert_eq!(flag(&args, "--a"), Some("1"));
    assert_eq!(flag(&args, "--b"), Some("2"));
    assert_eq!(flag(&args, "--c"), None);
    assert_eq!(bind_port(":8080"), 8080);
    assert_eq!(bind_host("127.0.0.1:8080"), "127.0.0.1");
    assert_eq!(bind_host("[::1]:8080"), "[::1]");
    assert_eq!(cel_string_literal(" 'api://x' "), Some("api://x"));
    assert_eq!(cel_string_literal("\"api://x\""), Some("api://x"));
    assert_eq!(cel_string_literal("'a' + 'b'"), None);
    assert_eq!(cel_string_literal("params.data.tokenAudience"), None);
}
