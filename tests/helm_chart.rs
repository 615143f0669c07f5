//! The Helm chart `deploy/helm/acrpull`, driven by the real `helm` (v4, from
//! `scripts/install-tools.sh`):
//!
//! - `helm lint --strict` passes with the default values and with values files written for
//!   upstream msi-acrpull's chart (`tests/fixtures/helm/`);
//! - the kustomize manifests in `deploy/` are exactly the chart rendered by
//!   `scripts/gen-deploy.sh`, and the chart's CRDs are `deploy/crds/`, so the two cannot drift;
//!   `kubectl kustomize deploy/` (what `kubectl apply -k` sends) is the same objects as
//!   `helm template` with the kustomization's image;
//! - every rendering passes the checks of `tests/manifests/mod.rs` (RBAC exactly the permission
//!   table, admission policies, hardened Deployment, monitors), and upstream's keys keep their
//!   meaning;
//! - values the chart cannot honour fail the rendering with a message;
//! - the rendered container command, arguments and environment start the real `acrpull` (as
//!   `/acrpull` and as upstream's `/manager`) against the stand-ins and bindings become Ready;
//! - `helm install`, `helm upgrade` and `helm uninstall` work against the stand-in API server;
//! - the controller, run as its own ServiceAccount against the stand-in's RBAC after a
//!   `helm install`, does every kind of work without one refused request.
//!
//! A missing helm fails these tests; `ACRPULL_TEST_SKIP=helm` opts out (reported by
//! `scripts/test.sh`).

mod common;
mod manifests;
mod prereq;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use manifests::*;
use serde_json::{json, Value};

const UPSTREAM_VALUES: &str = "tests/fixtures/helm/upstream-values.yaml";
const ARO_HCP_VALUES: &str = "tests/fixtures/helm/aro-hcp-values.yaml";

fn root() -> &'static Path {
    prereq::repo_root()
}

fn chart_dir() -> PathBuf {
    root().join("deploy/helm/acrpull")
}

/// The real helm, or None when the user opted out of it (the test then returns).
fn helm_or_skip(test: &str) -> Option<PathBuf> {
    if prereq::skipped(&format!("helm_chart::{test}"), &["helm"]) {
        return None;
    }
    Some(prereq::helm())
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(program: &Path, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.ok,
        "{} {args:?} failed:\n{}\n{}",
        program.display(),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// `helm template` output split into documents, each labelled with its template
/// (`templates/rbac.yaml`).
fn split_rendered(rendered: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for chunk in rendered.split("\n---\n") {
        let file = chunk
            .lines()
            .find_map(|l| l.strip_prefix("# Source: acrpull/"))
            .unwrap_or("?")
            .to_owned();
        docs.extend(parse_docs(&file, chunk));
    }
    docs
}

/// The chart rendered with `args` (values files, `--set`), as documents.
fn render(helm: &Path, args: &[&str]) -> Vec<Doc> {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        "acrpull",
        chart.to_str().unwrap(),
        "--namespace",
        "acrpull-system",
    ];
    all.extend_from_slice(args);
    split_rendered(&run_ok(helm, &all))
}

/// The chart rendered with `args`, expected to fail; returns helm's error output.
fn render_err(helm: &Path, args: &[&str]) -> String {
    let chart = chart_dir();
    let mut all = vec!["template", "acrpull", chart.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(helm, &all);
    assert!(
        !out.ok,
        "helm template {args:?} should fail:\n{}",
        out.stdout
    );
    out.stderr
}

/// Every check of tests/manifests on one rendering whose objects live in `namespace`.
fn check_rendering(docs: &[Doc], namespace: &str) {
    check_named_objects(docs, namespace);
    check_deployment(docs, namespace);
    check_rbac(docs, namespace);
    check_monitors(docs);
    check_admission_takes_no_parameters(docs);
    assert_eq!(check_admission_bindings(docs), 3, "three policies, bound");
    assert_eq!(
        check_admission_matches_only(docs, &controller_user(namespace)),
        3
    );
    let container = controller_container(controller_deployment(docs));
    assert_eq!(check_token_audience(docs, container), 1);
    assert_eq!(check_token_expiry(docs), 1);
}

fn args_of(docs: &[Doc]) -> Vec<String> {
    strings(controller_container(controller_deployment(docs)), "/args")
}

#[test]
fn chart_lints_with_default_and_upstream_values() {
    let Some(helm) = helm_or_skip("chart_lints_with_default_and_upstream_values") else {
        return;
    };
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for values in [None, Some(UPSTREAM_VALUES), Some(ARO_HCP_VALUES)] {
        let mut args = vec!["lint", "--strict", chart];
        if let Some(v) = values {
            args.extend(["--values", v]);
        }
        let out = run_ok(&helm, &args);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{values:?}: {out}"
        );
    }
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["name"], "acrpull", "upstream's chart name");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion is the default image tag: keep it equal to Cargo.toml's version"
    );
}

#[test]
fn kustomize_manifests_are_the_chart_rendered() {
    let Some(helm) = helm_or_skip("kustomize_manifests_are_the_chart_rendered") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(root().join("scripts/gen-deploy.sh"))
        .arg("--out")
        .arg(out.path())
        .env("ACRPULL_HELM", &helm)
        .status()
        .expect("scripts/gen-deploy.sh runs");
    assert!(status.success(), "scripts/gen-deploy.sh --out failed");
    let mut generated: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    assert_eq!(
        generated,
        [
            "admission-fail-open.yaml",
            "admission.yaml",
            "deployment.yaml",
            "monitoring-podmonitor.yaml",
            "monitoring.yaml",
            "networkpolicy.yaml",
            "rbac.yaml"
        ]
    );
    for file in &generated {
        let want = std::fs::read_to_string(out.path().join(file)).unwrap();
        let have = std::fs::read_to_string(root().join("deploy").join(file)).unwrap();
        if want == have {
            continue;
        }
        // Name the objects that differ before failing on the text.
        let key = |d: &Doc| format!("{} {}", d.kind(), d.name());
        let want_docs: BTreeMap<String, Value> = parse_docs(file, &want)
            .iter()
            .map(|d| (key(d), d.value.clone()))
            .collect();
        let have_docs: BTreeMap<String, Value> = parse_docs(file, &have)
            .iter()
            .map(|d| (key(d), d.value.clone()))
            .collect();
        let differing: std::collections::BTreeSet<&String> = want_docs
            .keys()
            .chain(have_docs.keys())
            .filter(|k| want_docs.get(*k) != have_docs.get(*k))
            .collect();
        panic!(
            "deploy/{file} is not what the chart renders (objects that differ: {differing:?}; \
             none means comments or layout). Change deploy/helm/acrpull, then run \
             scripts/gen-deploy.sh."
        );
    }
}

#[test]
fn kubectl_apply_k_installs_what_helm_installs() {
    let Some(helm) = helm_or_skip("kubectl_apply_k_installs_what_helm_installs") else {
        return;
    };
    // kustomize as kubectl runs it (kubectl 1.33, kustomize 5.6, from the same npm layer).
    let kubectl = prereq::layer_kubectl();
    let built = run_ok(&kubectl, &["kustomize", "deploy/"]);
    let kustomized = parse_docs("kubectl kustomize deploy/", &built);
    // The chart with the image the kustomization sets.
    let kustomization: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("deploy/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let image = &kustomization["images"][0];
    assert_eq!(
        image["name"], "acrpull",
        "the placeholder the chart's default image uses"
    );
    let set_image = format!(
        "image.repository={},image.tag={}",
        image["newName"].as_str().unwrap(),
        image["newTag"].as_str().unwrap()
    );
    let rendered = render(&helm, &["--set", &set_image]);
    let key = |d: &Doc| {
        format!(
            "{} {} {}/{}",
            text(&d.value, "/apiVersion").unwrap_or(""),
            d.kind(),
            d.namespace().unwrap_or(""),
            d.name()
        )
    };
    let by_key = |docs: &[Doc]| -> BTreeMap<String, Value> {
        docs.iter()
            .map(|d| {
                let mut value = d.value.clone();
                // The chart adds the keep policy to the CRDs (Helm-only: kubectl ignores it).
                if d.kind() == "CustomResourceDefinition" {
                    if let Some(meta) = value["metadata"].as_object_mut() {
                        meta.remove("annotations");
                    }
                }
                (key(d), value)
            })
            .collect()
    };
    let helm_objects = by_key(&rendered);
    let kustomize_objects = by_key(&kustomized);
    assert_eq!(
        kustomize_objects.keys().collect::<Vec<_>>(),
        helm_objects.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (k, v) in &helm_objects {
        if let Some(difference) = first_difference(&kustomize_objects[k], v) {
            panic!("{k}: kustomize and helm differ at {difference}");
        }
    }
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let Some(helm) = helm_or_skip("chart_crds_are_the_generated_crds") else {
        return;
    };
    let crds_dir = root().join("deploy/crds");
    let mut names: Vec<String> = std::fs::read_dir(&crds_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut copies: Vec<String> = std::fs::read_dir(chart_dir().join("files/crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    copies.sort();
    assert_eq!(copies, names, "the chart's files/crds/ holds deploy/crds/");
    for name in &names {
        assert_eq!(
            std::fs::read_to_string(chart_dir().join("files/crds").join(name)).unwrap(),
            std::fs::read_to_string(crds_dir.join(name)).unwrap(),
            "deploy/helm/acrpull/files/crds/{name} differs from deploy/crds/{name}: run \
             scripts/gen-deploy.sh"
        );
    }
    // What the chart renders is those CRDs plus the keep policy.
    let rendered = render(&helm, &[]);
    let crds: Vec<&Doc> = of_kind(&rendered, "CustomResourceDefinition").collect();
    assert_eq!(crds.len(), names.len());
    for name in &names {
        let mut generated =
            parse_docs(name, &std::fs::read_to_string(crds_dir.join(name)).unwrap())
                .remove(0)
                .value;
        generated["metadata"]["annotations"] = json!({"helm.sh/resource-policy": "keep"});
        let crd_name = generated["metadata"]["name"].as_str().unwrap().to_owned();
        let found = crds
            .iter()
            .find(|d| d.name() == crd_name)
            .unwrap_or_else(|| panic!("the chart renders no CRD {crd_name}"));
        assert_eq!(found.value, generated, "{crd_name}");
    }
    // crds.install=false leaves them out.
    let without = render(&helm, &["--set", "crds.install=false"]);
    assert_eq!(of_kind(&without, "CustomResourceDefinition").count(), 0);
}

#[test]
fn every_rendering_passes_the_manifest_checks() {
    let Some(helm) = helm_or_skip("every_rendering_passes_the_manifest_checks") else {
        return;
    };
    let defaults = render(&helm, &[]);
    check_rendering(&defaults, DEFAULT_NAMESPACE);
    assert_eq!(
        of_kind(&defaults, "ServiceMonitor").count(),
        1,
        "defaults: a ServiceMonitor, as the kustomization installs"
    );
    assert_eq!(of_kind(&defaults, "PodMonitor").count(), 0);

    for (values, namespace) in [(UPSTREAM_VALUES, "acrpull"), (ARO_HCP_VALUES, "acrpull")] {
        let docs = render(&helm, &["--values", values]);
        check_rendering(&docs, namespace);
    }

    // Fail-open: the same policies, failurePolicy Ignore, nothing else changed.
    let open = render(&helm, &["--set", "admission.failurePolicy=Ignore"]);
    check_rendering(&open, DEFAULT_NAMESPACE);
    let policies_only = |docs: &[Doc]| -> Vec<Doc> {
        of_kind(docs, "ValidatingAdmissionPolicy")
            .cloned()
            .collect()
    };
    check_fail_closed_and_open(&policies_only(&defaults), &policies_only(&open));

    // Monitors: a PodMonitor instead, the Azure Monitor one in addition, another API group.
    let pod = render(
        &helm,
        &[
            "--set",
            "metrics.serviceMonitor.enabled=false,metrics.podMonitor.enabled=true,metrics.azurePodMonitor.enabled=true",
        ],
    );
    check_monitors(&pod);
    let groups: Vec<&str> = of_kind(&pod, "PodMonitor")
        .map(|d| text(&d.value, "/apiVersion").unwrap())
        .collect();
    assert_eq!(
        groups,
        ["monitoring.coreos.com/v1", "azmonitoring.coreos.com/v1"]
    );
    assert_eq!(of_kind(&pod, "ServiceMonitor").count(), 0);

    // The NetworkPolicy: off by default; when on, it selects the controller's pods and opens
    // the metrics port (by its container port name) to the given peers only.
    assert_eq!(of_kind(&defaults, "NetworkPolicy").count(), 0);
    let peer = json!({"namespaceSelector": {"matchLabels":
        {"kubernetes.io/metadata.name": "kube-system"}}});
    let with_policy = render(
        &helm,
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set-json",
            &format!("networkPolicy.metricsFrom=[{peer}]"),
        ],
    );
    check_rendering(&with_policy, DEFAULT_NAMESPACE);
    let policy = one(&with_policy, "NetworkPolicy", "acrpull");
    let deployment = controller_deployment(&with_policy);
    assert!(selects(
        &policy.value["spec"]["podSelector"],
        &deployment.value["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(
        policy.value["spec"]["ingress"],
        json!([{"from": [peer], "ports": [{"port": "metrics", "protocol": "TCP"}]}])
    );
    assert!(container_ports(controller_container(deployment)).contains_key("metrics"));
    let closed = render(&helm, &["--set", "networkPolicy.enabled=true"]);
    assert_eq!(
        one(&closed, "NetworkPolicy", "acrpull").value["spec"]["ingress"],
        json!([]),
        "no peers: nobody reaches the metrics port"
    );

    // No admission policies, no PodDisruptionBudget, no Namespace, when switched off.
    let bare = render(
        &helm,
        &[
            "--set",
            "admission.enabled=false,podDisruptionBudget.enabled=false,createNamespace=false",
        ],
    );
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "PodDisruptionBudget",
        "Namespace",
    ] {
        assert_eq!(of_kind(&bare, kind).count(), 0, "{kind}");
    }
    check_rbac(&bare, DEFAULT_NAMESPACE);
}

#[test]
fn upstream_values_keep_their_meaning() {
    let Some(helm) = helm_or_skip("upstream_values_keep_their_meaning") else {
        return;
    };
    let docs = render(&helm, &["--values", UPSTREAM_VALUES]);
    let deployment = controller_deployment(&docs);
    let pod = &deployment.value["spec"]["template"]["spec"];
    let container = controller_container(deployment);
    // namespace: every namespaced object, and the Namespace itself.
    one(&docs, "Namespace", "acrpull");
    for doc in docs.iter().filter(|d| d.namespace().is_some()) {
        assert_eq!(doc.namespace(), Some("acrpull"), "{}", doc.what());
    }
    // image: one string, used as it is.
    assert_eq!(
        container["image"],
        "myregistry.azurecr.io/msi-acrpull:v0.1.14"
    );
    assert_eq!(deployment.value["spec"]["replicas"], 3);
    // nodeSelector, tolerations, affinity: the user's, plus the chart's linux/amd64 and
    // anti-affinity defaults (merged, as Helm merges maps).
    assert_eq!(
        pod["nodeSelector"],
        json!({"agentpool": "system", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"})
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["key"],
        "kubernetes.azure.com/mode"
    );
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    // ttlRotationFraction, allowedACRServerSuffixes: the same flags as upstream's chart passes.
    let args = args_of(&docs);
    assert_eq!(flag(&args, "--ttl-rotation-fraction"), Some("0.7"));
    assert_eq!(
        flag(&args, "--allowed-acr-server-suffixes"),
        Some("azurecr.io")
    );
    // The admission policies follow the namespace.
    assert_eq!(
        check_admission_matches_only(&docs, "system:serviceaccount:acrpull:acrpull"),
        3
    );
    // Same selector as upstream's Deployment (immutable, so an upgrade in place keeps working).
    assert_eq!(
        deployment.value["spec"]["selector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "acrpull"}})
    );

    // An empty suffix list switched upstream's check off; here it passes an explicit empty
    // value (acrpull warns); null keeps acrpull's own default.
    let off = render(&helm, &["--set-json", "allowedACRServerSuffixes=[]"]);
    assert_eq!(
        flag(&args_of(&off), "--allowed-acr-server-suffixes"),
        Some("")
    );
    let default = render(&helm, &["--set-json", "allowedACRServerSuffixes=null"]);
    assert_eq!(
        flag(&args_of(&default), "--allowed-acr-server-suffixes"),
        None
    );

    // ARO-HCP's values: digest-pinned image string, strategy numbers as strings, a memory
    // request merged with the chart's limits, monitors in Azure Monitor's API group.
    let aro = render(&helm, &["--values", ARO_HCP_VALUES]);
    let deployment = controller_deployment(&aro);
    let container = controller_container(deployment);
    assert!(container["image"]
        .as_str()
        .unwrap()
        .starts_with("arohcpsvcdev.azurecr.io/acrpull/acrpull@sha256:"));
    assert_eq!(
        deployment.value["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 1, "maxUnavailable": 0})
    );
    assert_eq!(container["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    let monitor = of_kind(&aro, "ServiceMonitor")
        .next()
        .expect("a ServiceMonitor");
    assert_eq!(
        text(&monitor.value, "/apiVersion"),
        Some("azmonitoring.coreos.com/v1")
    );

    // The map form of image.
    let pinned = render(
        &helm,
        &[
            "--set",
            "image.repository=example.azurecr.io/acrpull,image.tag=1.2.3",
        ],
    );
    assert_eq!(
        controller_container(controller_deployment(&pinned))["image"],
        "example.azurecr.io/acrpull:1.2.3"
    );
}

#[test]
fn values_the_chart_cannot_honour_fail_the_rendering() {
    let Some(helm) = helm_or_skip("values_the_chart_cannot_honour_fail_the_rendering") else {
        return;
    };
    for (set, expected) in [
        ("ttlRotationFraction=1", "ttlRotationFraction"),
        ("admission.failurePolicy=Open", "failurePolicy"),
        ("logging.format=xml", "logging/format"),
        ("monitoringApiGroup=example.com", "monitoringApiGroup"),
        ("tenancy.mode=strict", "tenancy"),
        ("scopeActions.allowed={pu ll}", "scopeActions"),
        (
            "metrics.secure=true,metrics.podMonitor.enabled=true",
            "PodMonitors cannot present a token",
        ),
        ("prometheusRule.enabled=true", "prometheusRule"),
        (
            "metrics.service.enabled=false",
            "metrics.serviceMonitor needs metrics.service.enabled",
        ),
        (
            "serviceAccountTokenAudience=api://x'||true||'",
            "serviceAccountTokenAudience",
        ),
    ] {
        let err = render_err(&helm, &["--set", set]);
        assert!(err.contains(expected), "--set {set}: {err}");
    }
}

/// Kills a process even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the rendered container's command, arguments and literal environment as a real
/// process against the stand-ins (as whoever `kubeconfig` names), with three substitutions a test must make: the image path
/// (`/acrpull`, `/manager`) becomes the built binary (`/manager` through a symlink of that
/// name), the bind addresses become free loopback ports, and the downward-API variables get a
/// pod's values. The harness's Azure endpoint flags are appended. Returns the process, its log
/// and its probe port.
fn start_rendered(
    env: &Env,
    kubeconfig: &Path,
    docs: &[Doc],
    pod: &str,
) -> (KillOnDrop, PathBuf, u16) {
    let deployment = controller_deployment(docs);
    let namespace = deployment.namespace().unwrap();
    let container = controller_container(deployment);
    let command = strings(container, "/command");
    let program = match command.as_slice() {
        [one] if one == "/acrpull" => PathBuf::from(env!("CARGO_BIN_EXE_acrpull")),
        [one] if one == "/manager" => {
            let link = env.dir.path().join("manager");
            if !link.exists() {
                std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_acrpull"), &link).unwrap();
            }
            link
        }
        other => panic!("unexpected container command {other:?}"),
    };
    let probe_port = free_port();
    let mut args: Vec<String> = strings(container, "/args")
        .into_iter()
        .map(|arg| {
            if arg.starts_with("--metrics-bind-address=") {
                format!("--metrics-bind-address=127.0.0.1:{}", free_port())
            } else if arg.starts_with("--health-probe-bind-address=") {
                format!("--health-probe-bind-address=127.0.0.1:{probe_port}")
            } else {
                arg
            }
        })
        .collect();
    // /debug's default loopback port would collide between the processes tests run at once.
    args.push(format!("--debug-bind-address=127.0.0.1:{}", free_port()));
    assert!(
        args.iter()
            .any(|a| a.starts_with("--health-probe-bind-address=")),
        "the chart sets the probe address: {args:?}"
    );
    let azure_flags = ["--imds-endpoint=", "--azure-resolve=", "--azure-ca-file="];
    args.extend(
        env.args()
            .into_iter()
            .filter(|a| azure_flags.iter().any(|f| a.starts_with(f))),
    );
    let log_path = env.dir.path().join(format!("{pod}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for var in list(container, "/env") {
        let name = text(var, "/name").unwrap();
        match (
            text(var, "/value"),
            text(var, "/valueFrom/fieldRef/fieldPath"),
        ) {
            (Some(value), _) => cmd.env(name, value),
            (None, Some("metadata.name")) => cmd.env(name, pod),
            (None, Some("metadata.namespace")) => cmd.env(name, namespace),
            other => panic!("env {name}: cannot provide {other:?}"),
        };
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
    (KillOnDrop(child), log_path, probe_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_deployment_runs_the_real_binary_to_ready_bindings() {
    let Some(helm) = helm_or_skip("rendered_deployment_runs_the_real_binary_to_ready_bindings")
    else {
        return;
    };
    // The chart's defaults (/acrpull, acrpull-system), and an upstream values file with
    // upstream's /manager entrypoint (namespace acrpull, one suffix, another rotation fraction).
    for (values, command, namespace) in [
        (None, "/acrpull", DEFAULT_NAMESPACE),
        (Some(UPSTREAM_VALUES), "/manager", "acrpull"),
    ] {
        let mut args = vec![];
        if let Some(v) = values {
            args.extend(["--values", v, "--set-json", r#"command=["/manager"]"#]);
        }
        let docs = render(&helm, &args);
        assert_eq!(
            strings(
                controller_container(controller_deployment(&docs)),
                "/command"
            ),
            [command]
        );
        let env = Env::start_with(Options {
            spawn: false,
            install_deploy: false,
            ..Options::default()
        })
        .await;
        // What this rendering installs that the API server acts on — its namespace, RBAC
        // and admission policies — and the controller as the ServiceAccount it renders, so
        // the policies must match that user (templated from `namespace`) for anything to be
        // denied below.
        let kubeconfig = install_rendered(&env, &docs, namespace).await;
        let pod = "acrpull-5d8f7c9b6-x2x4q";
        let (mut child, log, probe_port) = start_rendered(&env, &kubeconfig, &docs, pod);
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        // Ready on the chart's probe port, or a clear failure if the arguments are refused.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while env.http_get(probe_port, "/readyz").await.0 != 200 {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("{command} with {values:?} exited ({status}):\n{}", logs());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{command} with {values:?}: /readyz never answered\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        env.create(sa("team-a", "app", json!({})));
        env.create(v2_managed("team-a", "v2-app", "app", "repository:app:pull"));
        env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
            "metadata": {"name": "v1-app", "namespace": "team-a"},
            "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
                     "scope": "repository:app:pull", "serviceAccountName": "app"}}));
        for (version, name) in [(V2, "v2-app"), (V1, "v1-app")] {
            let ready = env
                .kube
                .wait_for(
                    version,
                    "AcrPullBinding",
                    "team-a",
                    name,
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
            assert!(
                matches!(ready, Ok(Some(_))),
                "{command} with {values:?}: {version} {name} never Ready: {ready:?}\nlogs:\n{}",
                logs()
            );
        }
        let sa = env.service_account("team-a", "app").unwrap();
        assert_eq!(
            pull_secrets(&sa),
            ["acr-pull-v2-app", "v1-app-msi-acrpull-secret"]
        );
        // Leader election as the chart configures it: the Lease of the chart's id in the
        // chart's namespace, held under the pod's name.
        let lease = env
            .kube
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                namespace,
                "aks.azure.com",
            )
            .unwrap_or_else(|| panic!("no Lease aks.azure.com in {namespace}\n{}", logs()));
        assert_eq!(lease["spec"]["holderIdentity"], pod, "{lease:#}");
        // The chart's --log-format=json: every line a JSON object.
        let text = logs();
        assert!(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| { serde_json::from_str::<Value>(l).is_ok() }),
            "log lines are JSON:\n{text}"
        );
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        // The rendering's RBAC and policies refused the controller nothing ...
        let refused = controller_refusals(&env.kube, true);
        assert!(refused.is_empty(), "{values:?}: {refused:#?}\n{}", logs());
        // ... and its policies do apply to it: a TokenRequest for the API server's audience,
        // as the rendered ServiceAccount, is denied by the token policy.
        let out = std::process::Command::new(prereq::layer_kubectl())
            .arg(format!("--kubeconfig={}", env.kubeconfig.display()))
            .arg(format!("--as={}", controller_user(namespace)))
            .args(["create", "token", "app", "-n", "team-a", "--duration=10m"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains("ValidatingAdmissionPolicy 'acrpull-token-request'"),
            "{values:?}: a token for another audience as {}: {stderr}",
            controller_user(namespace)
        );
    }
}

/// Installs what `docs` (one rendering) holds that the API server acts on — the Namespace,
/// RBAC and the admission policies, through the API as `kubectl apply` would — and returns a
/// kubeconfig with a token of the ServiceAccount it renders in `namespace`.
async fn install_rendered(env: &Env, docs: &[Doc], namespace: &str) -> PathBuf {
    const KINDS: [&str; 8] = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    for kind in KINDS {
        for doc in of_kind(docs, kind) {
            env.kube
                .apply_yaml_checked(&doc.value.to_string())
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", doc.what()));
        }
    }
    let token = env
        .kube
        .service_account_token(namespace, SERVICE_ACCOUNT, Duration::from_secs(3600))
        .expect("the rendered ServiceAccount");
    let kubeconfig = env
        .dir
        .path()
        .join(format!("{namespace}-acrpull.kubeconfig"));
    env.kube
        .write_kubeconfig_for_token(&kubeconfig, &token)
        .unwrap();
    kubeconfig
}

/// `helm --kubeconfig ... args`, against the stand-in.
fn helm_at(helm: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
    all.extend_from_slice(args);
    run_ok(helm, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall_against_the_stand_in() {
    let Some(helm) = helm_or_skip("helm_install_upgrade_and_uninstall_against_the_stand_in") else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = kube_standin::StandIn::builder()
        .start()
        .await
        .expect("kube stand-in");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    // Helm keeps its release record in the release namespace.
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "acrpull-release"}}))
        .unwrap();
    // Helm validates every object against the server's OpenAPI v2 document first.
    let common = [
        "--namespace",
        "acrpull-release",
        // No Prometheus Operator CRDs in the stand-in.
        "--set",
        "metrics.serviceMonitor.enabled=false,networkPolicy.enabled=true",
    ];

    let mut args = vec!["install", "acrpull", chart];
    args.extend(common.iter().copied());
    helm_at(&helm, &kubeconfig, &args);
    let get = |api: &str, kind: &str, ns: &str, name: &str| kube.get(api, kind, ns, name);
    let deployment = get("apps/v1", "Deployment", "acrpull-system", "acrpull")
        .expect("helm install created the Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    for (api, kind, ns, name) in [
        ("v1", "Namespace", "", "acrpull-system"),
        ("v1", "ServiceAccount", "acrpull-system", "acrpull"),
        ("v1", "Service", "acrpull-system", "acrpull-metrics"),
        (
            "policy/v1",
            "PodDisruptionBudget",
            "acrpull-system",
            "acrpull",
        ),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "acrpull"),
        (
            "rbac.authorization.k8s.io/v1",
            "Role",
            "acrpull-system",
            "acrpull-leader-election",
        ),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "",
            "acrpull-token-request",
        ),
        (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "acrpullbindings.acrpull.microsoft.com",
        ),
    ] {
        assert!(get(api, kind, ns, name).is_some(), "{kind} {ns}/{name}");
    }
    let status = helm_at(
        &helm,
        &kubeconfig,
        &["status", "acrpull", "-n", "acrpull-release"],
    );
    assert!(status.contains("STATUS: deployed"), "{status}");

    // A user's binding, to survive everything below.
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}))
        .unwrap();
    kube.apply(v2_managed(
        "team-a",
        "keep-me",
        "default",
        "repository:app:pull",
    ))
    .unwrap();

    // Upgrade with an upstream values file: the objects move to its namespace, the old ones
    // go, the CRDs (and so the binding) stay.
    let mut args = vec!["upgrade", "acrpull", chart, "--values", UPSTREAM_VALUES];
    args.extend(common.iter().copied());
    helm_at(&helm, &kubeconfig, &args);
    let deployment = get("apps/v1", "Deployment", "acrpull", "acrpull")
        .expect("the upgrade created the Deployment in the upstream namespace");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "myregistry.azurecr.io/msi-acrpull:v0.1.14"
    );
    let gone = kube
        .wait_for(
            "apps/v1",
            "Deployment",
            "acrpull-system",
            "acrpull",
            |o| o.is_none(),
            Duration::from_secs(30),
        )
        .await;
    assert!(matches!(gone, Ok(None)), "old Deployment: {gone:?}");
    assert!(get(V2, "AcrPullBinding", "team-a", "keep-me").is_some());
    let history = helm_at(
        &helm,
        &kubeconfig,
        &["history", "acrpull", "-n", "acrpull-release"],
    );
    assert_eq!(
        history.lines().count(),
        3,
        "header and two revisions:\n{history}"
    );

    // Uninstall: everything goes but the CRDs (resource-policy keep), so the binding stays.
    // Purging the release record deletes Helm's release Secrets with a protobuf DeleteOptions
    // body.
    helm_at(
        &helm,
        &kubeconfig,
        &["uninstall", "acrpull", "-n", "acrpull-release"],
    );
    let status = run(
        &helm,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "status",
            "acrpull",
            "-n",
            "acrpull-release",
        ],
    );
    assert!(
        !status.ok && status.stderr.contains("release: not found"),
        "the release record is purged: {}{}",
        status.stdout,
        status.stderr
    );
    let records: Vec<Value> = kube
        .list("v1", "Secret", Some("acrpull-release"))
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["owner"] == "helm")
        .collect();
    assert!(records.is_empty(), "release Secrets left: {records:#?}");
    for (api, kind, ns, name) in [
        ("apps/v1", "Deployment", "acrpull", "acrpull"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "acrpull"),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "",
            "acrpull-token-request",
        ),
    ] {
        let gone = kube
            .wait_for(
                api,
                kind,
                ns,
                name,
                |o| o.is_none(),
                Duration::from_secs(30),
            )
            .await;
        assert!(
            matches!(gone, Ok(None)),
            "{kind} {ns}/{name} after uninstall: {gone:?}"
        );
    }
    for crd in [
        "acrpullbindings.acrpull.microsoft.com",
        "acrpullbindings.msi-acrpull.microsoft.com",
    ] {
        assert!(
            get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "",
                crd
            )
            .is_some(),
            "{crd} kept"
        );
    }
    assert!(get(V2, "AcrPullBinding", "team-a", "keep-me").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_needs_no_more_than_the_rbac_helm_installs() {
    let Some(helm) = helm_or_skip("the_controller_needs_no_more_than_the_rbac_helm_installs")
    else {
        return;
    };
    // The stand-ins, with the CRDs applied by the harness (so the release leaves them out).
    // The stand-ins with the CRDs only: helm installs the rest.
    let env = Env::start_with(Options {
        spawn: false,
        install_deploy: false,
        ..Options::default()
    })
    .await;
    env.create(json!({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "acrpull-release"}}));
    let chart = chart_dir();
    let args = [
        "install",
        "acrpull",
        chart.to_str().unwrap(),
        "--namespace",
        "acrpull-release",
        "--set",
        "crds.install=false,metrics.serviceMonitor.enabled=false",
    ];
    helm_at(&helm, &env.kubeconfig, &args);
    // The controller as its own ServiceAccount: every request it makes is authorized by the
    // RBAC the chart installed, and nothing else.
    let token = env
        .kube
        .service_account_token("acrpull-system", "acrpull", Duration::from_secs(3600))
        .expect("a token for acrpull-system/acrpull");
    let kubeconfig = env.dir.path().join("acrpull-sa.kubeconfig");
    env.kube
        .write_kubeconfig_for_token(&kubeconfig, &token)
        .unwrap();
    let installed = split_rendered(&helm_at(
        &helm,
        &env.kubeconfig,
        &["get", "manifest", "acrpull", "-n", "acrpull-release"],
    ));
    env.kube.clear_requests();
    let pod = "acrpull-6c7d8f9b5-q8w2e";
    let (mut child, log, probe_port) = start_rendered(&env, &kubeconfig, &installed, pod);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.http_get(probe_port, "/readyz").await.0 != 200 {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("acrpull exited ({status}):\n{}", logs());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never answered\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every kind of work: managed identity (v1beta2, v1beta1), workload identity (a
    // TokenRequest), a changed target (a ServiceAccount update elsewhere), a deletion (the
    // finalizer, Secret deletes).
    env.create(sa("team-a", "app", json!({})));
    env.create(sa("team-a", "other", json!({})));
    env.create(federated_sa("team-a"));
    env.create(v2_managed("team-a", "v2-app", "app", "repository:app:pull"));
    env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "v1-app", "namespace": "team-a"},
        "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
                 "scope": "repository:app:pull", "serviceAccountName": "app"}}));
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "wi-app", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull",
                         "environment": "PublicCloud"},
                 "auth": {"workloadIdentity": {"serviceAccountRef": "federated"}},
                 "serviceAccountName": "app"}}));
    for (version, name) in [(V2, "v2-app"), (V1, "v1-app"), (V2, "wi-app")] {
        env.wait_ready(version, "team-a", name, "True").await;
    }
    let mut moved = env
        .kube
        .get(V2, "AcrPullBinding", "team-a", "v2-app")
        .unwrap();
    moved["spec"]["serviceAccountName"] = json!("other");
    env.create(moved);
    let attached = env
        .kube
        .wait_for(
            "v1",
            "ServiceAccount",
            "team-a",
            "other",
            |o| o.is_some_and(|sa| pull_secrets(sa).contains(&"acr-pull-v2-app".to_owned())),
            Duration::from_secs(60),
        )
        .await;
    assert!(matches!(attached, Ok(Some(_))), "{attached:?}\n{}", logs());
    env.kube
        .delete(V2, "AcrPullBinding", "team-a", "wi-app")
        .unwrap();
    env.wait_gone(V2, "AcrPullBinding", "team-a", "wi-app")
        .await;
    env.wait_gone("v1", "Secret", "team-a", "acr-pull-wi-app")
        .await;
    let lease = env
        .kube
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            "acrpull-system",
            "aks.azure.com",
        )
        .expect("the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], pod);

    // No request of the controller was refused, by RBAC or by the chart's admission policies.
    let user = controller_user(DEFAULT_NAMESPACE);
    let requests = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.user == user)
        .count();
    assert!(
        requests > 20,
        "the controller's requests are logged under {user}: {requests} found"
    );
    let refused = controller_refusals(&env.kube, true);
    assert!(
        refused.is_empty(),
        "requests the chart's RBAC or policies refused: {refused:#?}\n{}",
        logs()
    );
}

/// The multi-tenant values render their flags, the policies and a secure ServiceMonitor; the
/// defaults (and an unquoted `mode: off`, YAML's false) render none of it, so a swap from the
/// old controller's values changes nothing; and the NetworkPolicy opens the metrics port to the
/// scraper and nothing else, whatever address /debug is given.
#[test]
fn tenancy_and_secure_metrics_values_render_what_they_say() {
    let Some(helm) = helm_or_skip("tenancy_and_secure_metrics_values_render_what_they_say") else {
        return;
    };
    let tenancy_flags = [
        "--tenancy-mode",
        "--allowed-scope-actions",
        "--allowed-entra-authority-hosts",
        "--allowed-resource-manager-audiences",
        "--debug-bind-address",
        "--debug-endpoint",
        "--metrics-secure",
        "--metrics-cert-dir",
    ];
    let dir = tempfile::tempdir().unwrap();
    let off = dir.path().join("off.yaml");
    std::fs::write(&off, "tenancy:\n  mode: off\n").unwrap();
    for args in [vec![], vec!["-f", off.to_str().unwrap()]] {
        let docs = render(&helm, &args);
        let container = controller_container(controller_deployment(&docs));
        let argv = strings(container, "/args");
        for flag in tenancy_flags {
            assert!(
                !argv.iter().any(|a| a.starts_with(flag)),
                "{args:?}: {flag} rendered: {argv:?}"
            );
        }
        assert_eq!(of_kind(&docs, "AcrPullPolicy").count(), 0);
    }

    let docs = render(
        &helm,
        &[
            "--set",
            "tenancy.mode=enforce,metrics.secure=true,metrics.certSecret=acrpull-metrics-tls",
            "--set",
            "scopeActions.allowed={pull,push}",
            "--set",
            "airgapped.allowedEntraAuthorityHosts={https://login.contoso.local}",
            "--set",
            "airgapped.allowedResourceManagerAudiences={https://management.contoso.local}",
            "--set",
            "debug.bindAddress=0.0.0.0:9443,networkPolicy.enabled=true",
            "--set-json",
            r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
            "--set-json",
            r#"tenancy.policies=[{"name":"team-a","spec":{"namespaces":{"names":["team-a"]},"registries":{"servers":["teama.azurecr.io"]}}}]"#,
        ],
    );
    let container = controller_container(controller_deployment(&docs));
    let argv = strings(container, "/args");
    for want in [
        "--tenancy-mode=enforce",
        "--allowed-scope-actions=pull,push",
        "--allowed-entra-authority-hosts=https://login.contoso.local",
        "--allowed-resource-manager-audiences=https://management.contoso.local",
        "--debug-bind-address=0.0.0.0:9443",
        "--metrics-secure",
        "--metrics-cert-dir=/etc/acrpull/metrics-certs",
    ] {
        assert!(argv.iter().any(|a| a == want), "{want} missing: {argv:?}");
    }
    let policy = of_kind(&docs, "AcrPullPolicy").next().expect("the policy");
    assert_eq!(text(&policy.value, "/metadata/name"), Some("team-a"));
    assert_eq!(
        text(&policy.value, "/apiVersion"),
        Some("acrpull.microsoft.com/v1alpha1")
    );
    let monitor = of_kind(&docs, "ServiceMonitor").next().unwrap();
    let endpoint = &monitor.value["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert!(endpoint["bearerTokenFile"].is_string(), "{endpoint}");
    // Only the metrics port, only from the scraper's namespace: the debug port stays closed
    // even when bound off loopback.
    let netpol = of_kind(&docs, "NetworkPolicy").next().unwrap();
    let ingress = list(&netpol.value, "/spec/ingress");
    assert_eq!(ingress.len(), 1, "{}", netpol.value);
    let ports: Vec<Value> = list(&ingress[0], "/ports").to_vec();
    assert_eq!(ports, [json!({"port": "metrics", "protocol": "TCP"})]);
    assert_eq!(list(&ingress[0], "/from").len(), 1);
    let reader = of_kind(&docs, "ClusterRole")
        .find(|r| r.name() == "acrpull-metrics-reader")
        .expect("the scrapers' ClusterRole");
    assert_eq!(
        reader.value["rules"],
        json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}])
    );
}
