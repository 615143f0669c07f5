//! The swap from upstream msi-acrpull to acrpull, end to end, by Helm and by kustomize, as
//! `docs/migration.md` tells an operator to do it.
//!
//! The old controller's world is built first: upstream's own chart (vendored under
//! `tests/fixtures/upstream/helm`, installed with the real helm and a user's values file, or
//! rendered and applied with kubectl), its CRDs, its namespace `acrpull` and object names, its
//! Deployment, bindings of both versions — managed identity by client id and by resource id,
//! workload identity with and without `clientID`/`tenantID` — with the Secrets, status and
//! ServiceAccount references the old controller leaves, and its Lease `aks.azure.com` held by a
//! client-go `hostname_uuid` identity that its pods keep renewing.
//!
//! There is no kubelet: the test plays it. The old pods are a task renewing the old Lease (every
//! 2 s, controller-runtime's retry period) until their Deployment is replaced or deleted; they
//! then stop without releasing it, as controller-runtime v0.17 does by default. The new pods are
//! the real `acrpull` binary started with the command, arguments and environment of the
//! Deployment found in the stand-in after the swap, as its ServiceAccount (a token of the
//! ServiceAccount the installed RBAC binds).
//!
//! What is counted, from the stand-ins' request logs, from the moment the new pods start:
//! Azure calls (0), Secret writes (0), ServiceAccount writes (0), binding writes other than
//! status (0), status writes (one per binding: the new status fields), and writes of any kind
//! while the old pods still hold the Lease (0). The Secrets acrpull leaves (the old ones, and new
//! ones it mints after the swap) are checked against the old controller's own rules,
//! re-implemented here from `internal/controller/*.go` at upstream commit 8ad7a99: a rollback
//! (`helm rollback`, tested) finds nothing to re-mint. The old controller itself is not run
//! (no Go toolchain here); its rules are.

mod common;
mod prereq;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

const UPSTREAM_CHART: &str = "tests/fixtures/upstream/helm";
const USER_VALUES: &str = "tests/fixtures/helm/upstream-values.yaml";
/// The user's values: `namespace: acrpull`, `ttlRotationFraction: 0.7`, suffixes `[azurecr.io]`.
const OLD_NAMESPACE: &str = "acrpull";
const FRACTION: f64 = 0.7;
const LEASE: &str = "aks.azure.com";
/// The old pods' identity: client-go's `<hostname>_<uuid>`, the hostname being the pod's name.
const OLD_HOLDER: &str = "acrpull-7c9d8f6b5-k2x4q_4f1c2a9e-8d3b-4e5f-9a6b-7c8d9e0f1a2b";
/// acrpull's image, as the operator sets it in the swap.
const IMAGE: &str = "example.azurecr.io/acrpull:0.1.0";
const WI_IDS_CLIENT: &str = WI_CLIENT;

fn root() -> &'static Path {
    prereq::repo_root()
}

// ---------------------------------------------------------------------------------------------
// Real tools
// ---------------------------------------------------------------------------------------------

fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
}

impl Tools {
    fn helm(&self, env: &Env, args: &[&str]) -> String {
        let mut all = vec!["--kubeconfig", env.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&self.helm, &all, None)
    }

    fn kubectl(&self, env: &Env, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["--kubeconfig", env.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&self.kubectl, &all, stdin)
    }
}

fn tools_or_skip(test: &str) -> Option<Tools> {
    if prereq::skipped(&format!("migration::{test}"), &["helm"]) {
        return None;
    }
    Some(Tools {
        helm: prereq::helm(),
        kubectl: prereq::layer_kubectl(),
    })
}

/// Helm validates against the server's OpenAPI v2 document when the server has one.
async fn openapi_flags(env: &Env) -> Vec<&'static str> {
    let served = reqwest::Client::new()
        .get(format!("{}/openapi/v2", env.kube.url()))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if served {
        vec![]
    } else {
        vec!["--disable-openapi-validation"]
    }
}

/// The Prometheus Operator's CRDs, as on a cluster running it (upstream's chart always renders
/// a PodMonitor, acrpull's a ServiceMonitor); schemaless: nothing here evaluates them.
fn install_prometheus_operator_crds(env: &Env) {
    for (kind, plural) in [
        ("PodMonitor", "podmonitors"),
        ("ServiceMonitor", "servicemonitors"),
    ] {
        env.create(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
            },
        }));
    }
}

// ---------------------------------------------------------------------------------------------
// The old controller's world
// ---------------------------------------------------------------------------------------------

/// One binding as the old controller left it.
struct Seeded {
    api_version: &'static str,
    name: &'static str,
    secret: String,
}

fn rfc3339(t: Timestamp) -> String {
    acrpull::k8s::binding::rfc3339(t)
}

/// The old controller's v1beta2 `inputsHash`, as its Go code concatenates (not acrpull's code).
fn old_v2_hash(spec: &Value) -> String {
    let mut s = spec["serviceAccountName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let auth = &spec["auth"];
    if auth["managedIdentity"].is_object() {
        let mi = &auth["managedIdentity"];
        s.push_str("managedIdentity");
        s.push_str(mi["resourceID"].as_str().unwrap_or(""));
        s.push_str(mi["clientID"].as_str().unwrap_or(""));
    } else if auth["workloadIdentity"].is_object() {
        s.push_str("workloadIdentity");
        s.push_str(
            auth["workloadIdentity"]["serviceAccountRef"]
                .as_str()
                .unwrap_or(""),
        );
    }
    let acr = &spec["acr"];
    s.push_str(acr["environment"].as_str().unwrap_or("PublicCloud"));
    s.push_str(acr["server"].as_str().unwrap_or(""));
    s.push_str(acr["scope"].as_str().unwrap_or(""));
    acrpull::state::names::base36_sha224(s.as_bytes())
}

/// The old controller's v1beta1 hash: `specOrDefault` (no defaults set here; Go's
/// `path.Clean("")` is `"."`, which means "use the (empty) default") then the concatenation.
fn old_v1_hash(spec: &Value) -> String {
    let client = spec["managedIdentityClientID"].as_str().unwrap_or("");
    let resource = spec["managedIdentityResourceID"].as_str().unwrap_or("");
    let resource = if resource.is_empty() { "" } else { resource };
    let s = format!(
        "{client}{resource}{}{}",
        spec["acrServer"].as_str().unwrap_or(""),
        spec["scope"].as_str().unwrap_or("")
    );
    acrpull::state::names::base36_sha224(s.as_bytes())
}

/// A pull Secret as the old controller writes it (`newPullSecret`).
fn old_secret(
    binding: &Value,
    name: &str,
    inputs: &str,
    refresh: Timestamp,
    expiry: Timestamp,
) -> Value {
    use base64::Engine;
    let token = format!(
        "old-controller-token-for-{}",
        binding["metadata"]["name"].as_str().unwrap()
    );
    let doc = acrpull::state::dockerconfig::docker_config_json(
        REGISTRY,
        &acrpull::state::token::SecretToken::new(&token),
    );
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "namespace": "team-a",
            "labels": {"acr.microsoft.com/binding": binding["metadata"]["name"]},
            "annotations": {
                "acr.microsoft.com/token.expiry": rfc3339(expiry),
                "acr.microsoft.com/token.refresh": rfc3339(refresh),
                "acr.microsoft.com/token.inputs": inputs},
            "ownerReferences": [{"apiVersion": binding["apiVersion"], "kind": "AcrPullBinding",
                "name": binding["metadata"]["name"], "uid": binding["metadata"]["uid"],
                "controller": true, "blockOwnerDeletion": true}]},
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(doc)}})
}

/// The bindings, Secrets, status and ServiceAccounts the old controller leaves in `team-a`.
fn seed_old_bindings(env: &Env) -> Vec<Seeded> {
    env.create(federated_sa("team-a"));
    let now = Timestamp::now();
    // 3-hour tokens minted 10 minutes ago: far from either refresh rule.
    let refresh = now - SignedDuration::from_mins(10);
    let expiry = refresh + SignedDuration::from_hours(3);
    let specs: [(&'static str, &'static str, Value); 5] = [
        (
            "v1",
            "legacy",
            json!({"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
            "scope": "repository:app:pull", "serviceAccountName": "puller"}),
        ),
        (
            "v2",
            "by-client-id",
            json!({"acr": {"server": REGISTRY, "scope": "repository:app:pull",
                "environment": "PublicCloud"},
            "auth": {"managedIdentity": {"clientID": MI_CLIENT}}, "serviceAccountName": "puller"}),
        ),
        (
            "v2",
            "by-resource-id",
            json!({"acr": {"server": REGISTRY, "scope": "repository:base:pull",
                "environment": "PublicCloud"},
            "auth": {"managedIdentity": {"resourceID": MI_RESOURCE}}, "serviceAccountName": "puller"}),
        ),
        (
            "v2",
            "wi-with-ids",
            json!({"acr": {"server": REGISTRY, "scope": "repository:app:pull",
                "environment": "PublicCloud"},
            "auth": {"workloadIdentity": {"serviceAccountRef": "federated",
                "clientID": WI_IDS_CLIENT, "tenantID": TENANT}},
            "serviceAccountName": "puller"}),
        ),
        (
            "v2",
            "wi-annotations",
            json!({"acr": {"server": REGISTRY, "scope": "repository:app:pull",
                "environment": "PublicCloud"},
            "auth": {"workloadIdentity": {"serviceAccountRef": "federated"}},
            "serviceAccountName": "puller"}),
        ),
    ];
    let mut seeded = Vec::new();
    for (version, name, spec) in specs {
        let api_version = if version == "v1" { V1 } else { V2 };
        let binding = env.create(json!({"apiVersion": api_version, "kind": "AcrPullBinding",
            "metadata": {"name": name, "namespace": "team-a",
                "finalizers": ["msi-acrpull.microsoft.com"]},
            "spec": spec,
            "status": {"lastTokenRefreshTime": rfc3339(refresh),
                       "tokenExpirationTime": rfc3339(expiry)}}));
        let (secret, inputs) = if version == "v1" {
            (
                format!("{name}-msi-acrpull-secret"),
                old_v1_hash(&binding["spec"]),
            )
        } else {
            (format!("acr-pull-{name}"), old_v2_hash(&binding["spec"]))
        };
        env.create(old_secret(&binding, &secret, &inputs, refresh, expiry));
        seeded.push(Seeded {
            api_version,
            name,
            secret,
        });
    }
    // The target ServiceAccount with every pull secret, in the old controller's order
    // (acr-pull-* before *-msi-acrpull-secret, each sorted).
    let mut current: Vec<&String> = seeded
        .iter()
        .map(|s| &s.secret)
        .filter(|s| s.starts_with("acr-pull-"))
        .collect();
    current.sort();
    let mut refs: Vec<Value> = current.iter().map(|n| json!({"name": n})).collect();
    refs.push(json!({"name": "legacy-msi-acrpull-secret"}));
    env.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "puller", "namespace": "team-a"}, "imagePullSecrets": refs}));
    seeded
}

/// The old controller's Lease in its namespace, as controller-runtime v0.17 leaves it.
fn seed_old_lease(env: &Env) {
    let now = Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    env.create(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": OLD_NAMESPACE},
        "spec": {"holderIdentity": OLD_HOLDER, "leaseDurationSeconds": 15,
                 "acquireTime": now, "renewTime": now, "leaseTransitions": 3}}),
    );
}

/// The old Deployment's pods, as far as the Lease sees them: the leader renews every 2 s until
/// it is stopped, and then stops without releasing (controller-runtime's default).
struct OldPods {
    running: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OldPods {
    fn start(env: &Env) -> OldPods {
        let running = Arc::new(AtomicBool::new(true));
        let kube = env.kube.clone();
        let flag = running.clone();
        let task = tokio::spawn(async move {
            while flag.load(Ordering::Acquire) {
                kube.take_over_lease(OLD_NAMESPACE, LEASE, OLD_HOLDER);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        OldPods {
            running,
            task: Some(task),
        }
    }

    /// The rollout (or the deletion) terminates them.
    async fn terminate(&mut self) {
        self.running.store(false, Ordering::Release);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kubelet's part: run a Deployment's container as a process
// ---------------------------------------------------------------------------------------------

struct Pod {
    name: String,
    child: Child,
    log: PathBuf,
    probe_port: u16,
}

impl Pod {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the container of the Deployment `namespace/acrpull` as stored in the stand-in, as the
/// pod `name` running as its ServiceAccount: the image's `/acrpull` or `/manager` is the built
/// binary, bind addresses become free loopback ports, the downward API gets the pod's values,
/// and the harness's Azure endpoint flags are appended.
fn start_pod(env: &Env, namespace: &str, name: &str) -> Pod {
    let deployment = env
        .kube
        .get("apps/v1", "Deployment", namespace, "acrpull")
        .unwrap_or_else(|| panic!("no Deployment {namespace}/acrpull"));
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let container = &pod_spec["containers"][0];
    let service_account = pod_spec["serviceAccountName"].as_str().unwrap();
    let token = env
        .kube
        .service_account_token(namespace, service_account, Duration::from_secs(3600))
        .expect("a token of the pod's ServiceAccount");
    let kubeconfig = env.dir.path().join(format!("{name}.kubeconfig"));
    env.kube
        .write_kubeconfig_for_token(&kubeconfig, &token)
        .unwrap();
    let command: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
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
    let mut args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_string())
        .map(|arg| {
            if arg.starts_with("--metrics-bind-address=") {
                format!("--metrics-bind-address=127.0.0.1:{}", free_port())
            } else if arg.starts_with("--health-probe-bind-address=") {
                format!("--health-probe-bind-address=127.0.0.1:{probe_port}")
            } else if arg.starts_with("--debug-bind-address=") {
                format!("--debug-bind-address=127.0.0.1:{}", free_port())
            } else {
                arg
            }
        })
        .collect();
    // Pods share this host's loopback, not one network namespace each: /debug's default
    // address (127.0.0.1:8082) would clash between replicas.
    if !args.iter().any(|a| a.starts_with("--debug-bind-address=")) {
        args.push(format!("--debug-bind-address=127.0.0.1:{}", free_port()));
    }
    let azure_flags = ["--imds-endpoint=", "--azure-resolve=", "--azure-ca-file="];
    args.extend(
        env.args()
            .into_iter()
            .filter(|a| azure_flags.iter().any(|f| a.starts_with(f))),
    );
    let log = env.dir.path().join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for var in container["env"].as_array().into_iter().flatten() {
        let key = var["name"].as_str().unwrap();
        match (
            var["value"].as_str(),
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(value), _) => cmd.env(key, value),
            (None, Some("metadata.name")) => cmd.env(key, name),
            (None, Some("metadata.namespace")) => cmd.env(key, namespace),
            other => panic!("env {key}: cannot provide {other:?}"),
        };
    }
    let child = cmd.spawn().expect("the pod's process starts");
    Pod {
        name: name.to_string(),
        child,
        log,
        probe_port,
    }
}

async fn wait_ready_probe(env: &Env, pod: &mut Pod) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.http_get(pod.probe_port, "/readyz").await.0 != 200 {
        if let Some(status) = pod.child.try_wait().unwrap() {
            panic!("pod {} exited ({status}):\n{}", pod.name, pod.logs());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pod {}: /readyz never 200\n{}",
            pod.name,
            pod.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The old controller's rules
// ---------------------------------------------------------------------------------------------

/// What the old controller would do first for a binding (`genericReconciler.reconcile`), for a
/// binding that is not being deleted; `None` when it would only requeue.
fn old_controller_action(
    env: &Env,
    api_version: &str,
    name: &str,
    now: Timestamp,
) -> Option<String> {
    let binding = env
        .kube
        .get(api_version, "AcrPullBinding", "team-a", name)?;
    let v1 = api_version == V1;
    let spec = &binding["spec"];
    let finalizers = binding["metadata"]["finalizers"].to_string();
    if !finalizers.contains("msi-acrpull.microsoft.com") {
        return Some("add the finalizer".into());
    }
    let server = if v1 {
        &spec["acrServer"]
    } else {
        &spec["acr"]["server"]
    };
    let host = server.as_str().unwrap_or("");
    if !(host == "azurecr.io" || host.ends_with(".azurecr.io")) {
        return Some(format!("fail validation: {host}"));
    }
    let sa_name = spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    // Secrets indexed by the binding label (or legacy name).
    let secrets: Vec<Value> = env
        .kube
        .list("v1", "Secret", Some("team-a"))
        .into_iter()
        .filter(|s| {
            s["metadata"]["labels"]["acr.microsoft.com/binding"] == name
                || (s["metadata"]["labels"]["acr.microsoft.com/binding"].is_null()
                    && s["metadata"]["name"]
                        .as_str()
                        .and_then(|n| n.strip_suffix("-msi-acrpull-secret"))
                        == Some(name))
        })
        .collect();
    let expected = if v1 {
        format!("{name}-msi-acrpull-secret")
    } else {
        format!("acr-pull-{name}")
    };
    let secret_names: Vec<String> = secrets
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let names = if secret_names.is_empty() {
        vec![expected.clone()]
    } else {
        secret_names.clone()
    };
    for sa in env.kube.list("v1", "ServiceAccount", Some("team-a")) {
        let sa_is_target = sa["metadata"]["name"] == sa_name;
        let refs: Vec<String> = sa["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        if !sa_is_target && refs.iter().any(|r| names.contains(r)) {
            return Some(format!("detach from {}", sa["metadata"]["name"]));
        }
    }
    let sa = env.kube.get("v1", "ServiceAccount", "team-a", sa_name)?;
    let Some(secret) = secrets
        .iter()
        .find(|s| s["metadata"]["name"] == expected.as_str())
    else {
        return Some("re-mint: no pull secret".into());
    };
    let annotations = &secret["metadata"]["annotations"];
    let time = |key: &str| {
        annotations[key]
            .as_str()
            .and_then(|v| v.parse::<Timestamp>().ok())
    };
    let (Some(expiry), refresh) = (
        time("acr.microsoft.com/token.expiry"),
        time("acr.microsoft.com/token.refresh"),
    ) else {
        return Some("re-mint: unreadable expiry".into());
    };
    let needs_refresh = if v1 {
        now > expiry - SignedDuration::from_mins(30)
    } else {
        let Some(refresh) = refresh else {
            return Some("re-mint: unreadable refresh".into());
        };
        let ttl = expiry.duration_since(refresh).as_secs_f64();
        now > refresh + SignedDuration::from_secs_f64(ttl * FRACTION)
    };
    if needs_refresh {
        return Some("re-mint: due".into());
    }
    let inputs = if v1 {
        old_v1_hash(spec)
    } else {
        old_v2_hash(spec)
    };
    if annotations["acr.microsoft.com/token.inputs"] != inputs.as_str() {
        return Some(format!(
            "re-mint: inputs changed ({} != {inputs})",
            annotations["acr.microsoft.com/token.inputs"]
        ));
    }
    let refs: Vec<&str> = sa["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    if !refs.contains(&expected.as_str()) {
        return Some("add the pull secret to the ServiceAccount".into());
    }
    if let Some(extra) = secret_names.iter().find(|n| **n != expected) {
        return Some(format!("clean up extraneous secret {extra}"));
    }
    // setSuccessStatus: status reflects the Secret.
    let status = &binding["status"];
    let status_time = |key: &str| {
        status[key]
            .as_str()
            .and_then(|v| v.parse::<Timestamp>().ok())
    };
    let error = status["error"].as_str().unwrap_or("");
    if !error.is_empty()
        || status_time("tokenExpirationTime") != Some(expiry)
        || status_time("lastTokenRefreshTime") != refresh
    {
        return Some(format!("update status (error {error:?}, status {status})"));
    }
    None
}

/// Every binding's old-controller action; all must be None.
fn assert_old_controller_finds_nothing_to_do(env: &Env, bindings: &[(&str, &str)], when: &str) {
    let now = Timestamp::now();
    let pending: BTreeMap<String, String> = bindings
        .iter()
        .filter_map(|(api, name)| {
            old_controller_action(env, api, name, now).map(|a| (format!("{api} {name}"), a))
        })
        .collect();
    assert!(
        pending.is_empty(),
        "{when}: the old controller would act on: {pending:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Counts {
    azure_calls: usize,
    secret_writes: Vec<String>,
    service_account_writes: Vec<String>,
    binding_writes: Vec<String>,
    status_writes: BTreeMap<String, usize>,
    refused: Vec<String>,
}

fn count(env: &Env, user: &str) -> Counts {
    let mut c = Counts {
        azure_calls: env.azure.requests().len(),
        ..Counts::default()
    };
    for r in env.kube.requests().into_iter().filter(|r| r.user == user) {
        if r.status == 401 || r.status == 403 {
            c.refused
                .push(format!("{} {} {}", r.status, r.verb, r.path));
        }
        if !["create", "update", "patch", "delete"].contains(&r.verb.as_str()) {
            continue;
        }
        let line = format!("{} {} {}", r.verb, r.path, r.status);
        match (r.resource.as_str(), r.subresource.as_str()) {
            ("secrets", _) => c.secret_writes.push(line),
            ("serviceaccounts", "") => c.service_account_writes.push(line),
            ("acrpullbindings", "status") => {
                *c.status_writes.entry(r.name.clone()).or_default() += 1;
            }
            ("acrpullbindings", _) => c.binding_writes.push(line),
            _ => {}
        }
    }
    c
}

/// Writes by `user` that took effect or tried to change something other than the Lease: a
/// Lease create or update refused with 409 is a replica losing the election race (both pods
/// start together and try to create the Lease), not a second writer.
fn writes_by(env: &Env, user: &str) -> Vec<String> {
    env.kube
        .requests()
        .into_iter()
        .filter(|r| r.user == user)
        .filter(|r| ["create", "update", "patch", "delete"].contains(&r.verb.as_str()))
        .filter(|r| !(r.resource == "leases" && r.status == 409))
        .map(|r| format!("{} {} {} ({})", r.verb, r.path, r.status, r.user_agent))
        .collect()
}

/// Lease reads by each pod (its User-Agent names it).
fn lease_reads(env: &Env, pod: &str) -> usize {
    env.kube
        .requests()
        .into_iter()
        .filter(|r| r.resource == "leases" && r.verb == "get" && r.user_agent.contains(pod))
        .count()
}

fn holder(env: &Env, namespace: &str) -> String {
    env.kube
        .get("coordination.k8s.io/v1", "Lease", namespace, LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
        .unwrap_or_default()
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never: {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The swap's numbers, printed for docs/migration.md and the report.
fn report(path: &str, c: &Counts, bindings: usize) {
    eprintln!(
        "MIGRATION {path}: {bindings} bindings; Azure calls {}; Secret writes {}; ServiceAccount writes {}; binding writes {}; status writes {} ({:?})",
        c.azure_calls,
        c.secret_writes.len(),
        c.service_account_writes.len(),
        c.binding_writes.len(),
        c.status_writes.values().sum::<usize>(),
        c.status_writes
    );
}

fn assert_swap_counts(path: &str, c: &Counts, seeded: &[Seeded], logs: &str) {
    report(path, c, seeded.len());
    assert_eq!(
        c.azure_calls, 0,
        "{path}: Azure was called at the swap\n{logs}"
    );
    assert!(
        c.secret_writes.is_empty(),
        "{path}: Secret writes {:#?}\n{logs}",
        c.secret_writes
    );
    assert!(
        c.service_account_writes.is_empty(),
        "{path}: ServiceAccount writes {:#?}",
        c.service_account_writes
    );
    assert!(
        c.binding_writes.is_empty(),
        "{path}: binding writes {:#?}",
        c.binding_writes
    );
    assert!(
        c.refused.is_empty(),
        "{path}: refused requests {:#?}",
        c.refused
    );
    for s in seeded {
        assert_eq!(
            c.status_writes.get(s.name).copied().unwrap_or(0),
            1,
            "{path}: {}: one status write (the new fields), got {:?}",
            s.name,
            c.status_writes
        );
    }
}

/// Each seeded Secret still holds the old controller's token.
fn assert_old_tokens_kept(env: &Env, seeded: &[Seeded]) {
    for s in seeded {
        let secret = env.secret("team-a", &s.secret).unwrap();
        assert_eq!(
            docker_config(&secret)["auths"][REGISTRY]["password"],
            format!("old-controller-token-for-{}", s.name),
            "{}",
            s.secret
        );
    }
}

/// Waits until the request log holds a status write of each binding by `user` (the store sees
/// a write before the log records its request).
async fn wait_status_logged(env: &Env, user: &str, seeded: &[Seeded]) {
    wait_until(
        "every binding's status write is in the request log",
        Duration::from_secs(30),
        || {
            let c = count(env, user);
            seeded.iter().all(|s| c.status_writes.contains_key(s.name))
        },
        String::new,
    )
    .await;
}

async fn wait_all_ready(env: &Env, seeded: &[Seeded], pods: &[&Pod]) {
    for s in seeded {
        let ready = env
            .kube
            .wait_for(
                s.api_version,
                "AcrPullBinding",
                "team-a",
                s.name,
                |o| {
                    o.and_then(|o| o["status"]["conditions"].as_array().cloned())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                },
                Duration::from_secs(90),
            )
            .await;
        assert!(
            matches!(ready, Ok(Some(_))),
            "{} never Ready: {ready:?}\n{}",
            s.name,
            pods.iter()
                .map(|p| p.logs())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
}

/// Bindings created after the swap: acrpull mints their Secrets; the old controller's rules
/// must find those current too.
async fn mint_new_bindings(env: &Env, pods: &[&Pod]) -> Vec<Seeded> {
    env.create(json!({"apiVersion": V1, "kind": "AcrPullBinding",
        "metadata": {"name": "new-legacy", "namespace": "team-a"},
        "spec": {"acrServer": REGISTRY, "managedIdentityClientID": MI_CLIENT,
                 "scope": "repository:app:pull", "serviceAccountName": "puller"}}));
    env.create(v2_managed(
        "team-a",
        "new-managed",
        "puller",
        "repository:app:pull",
    ));
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "new-wi-with-ids", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"workloadIdentity": {"serviceAccountRef": "federated",
                          "clientID": WI_IDS_CLIENT, "tenantID": TENANT}},
                 "serviceAccountName": "puller"}}));
    let new = vec![
        Seeded {
            api_version: V1,
            name: "new-legacy",
            secret: "new-legacy-msi-acrpull-secret".into(),
        },
        Seeded {
            api_version: V2,
            name: "new-managed",
            secret: "acr-pull-new-managed".into(),
        },
        Seeded {
            api_version: V2,
            name: "new-wi-with-ids",
            secret: "acr-pull-new-wi-with-ids".into(),
        },
    ];
    wait_all_ready(env, &new, pods).await;
    for s in &new {
        let secret = env.secret("team-a", &s.secret).unwrap();
        assert!(
            secret["metadata"]["annotations"]["acr.microsoft.com/token.inputs-all"].is_string(),
            "{secret:#}"
        );
    }
    new
}

fn all_bindings<'a>(seeded: &'a [Seeded], new: &'a [Seeded]) -> Vec<(&'a str, &'a str)> {
    seeded
        .iter()
        .chain(new)
        .map(|s| (s.api_version, s.name))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The swaps
// ---------------------------------------------------------------------------------------------

async fn old_world() -> Env {
    let env = Env::start_with(Options {
        spawn: false,
        skip_crds: true,
        // The old controller's world is installed by its own chart, not from deploy/.
        install_deploy: false,
        ..Default::default()
    })
    .await;
    install_prometheus_operator_crds(&env);
    env
}

/// Helm: `helm upgrade` of the upstream release with the user's values file and acrpull's
/// image; then `helm rollback`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_by_helm_upgrade_keeps_every_token_and_rolls_back() {
    let Some(tools) = tools_or_skip("swap_by_helm_upgrade_keeps_every_token_and_rolls_back") else {
        return;
    };
    let env = old_world().await;
    let openapi = openapi_flags(&env).await;

    // The old controller, installed from its own chart with the user's values.
    let mut install = vec![
        "install",
        "acrpull",
        UPSTREAM_CHART,
        "-n",
        "default",
        "-f",
        USER_VALUES,
    ];
    install.extend(openapi.iter().copied());
    tools.helm(&env, &install);
    let old = env
        .kube
        .get("apps/v1", "Deployment", OLD_NAMESPACE, "acrpull")
        .expect("upstream's Deployment");
    assert_eq!(
        old["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["/manager"])
    );
    let seeded = seed_old_bindings(&env);
    seed_old_lease(&env);
    let mut old_pods = OldPods::start(&env);

    // The swap.
    let set_image = format!("image={IMAGE}");
    let mut upgrade = vec![
        "upgrade",
        "acrpull",
        "deploy/helm/acrpull",
        "-n",
        "default",
        "-f",
        USER_VALUES,
        "--set",
        &set_image,
    ];
    upgrade.extend(openapi.iter().copied());
    tools.helm(&env, &upgrade);
    let deployment = env
        .kube
        .get("apps/v1", "Deployment", OLD_NAMESPACE, "acrpull")
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        IMAGE
    );
    assert_eq!(deployment["spec"]["replicas"], 3, "the user's replicas");
    // Upstream-only objects are gone; the CRDs are acrpull's now.
    for (api, kind, ns, name) in [
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "",
            "acrpull-controller",
        ),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "",
            "controller-token-request-policy",
        ),
        (
            "v1",
            "ConfigMap",
            OLD_NAMESPACE,
            "admission-policies-controller-config",
        ),
        (
            "monitoring.coreos.com/v1",
            "PodMonitor",
            OLD_NAMESPACE,
            "acrpull-monitor",
        ),
    ] {
        let gone = env
            .kube
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
            "{kind} {name} left after the upgrade"
        );
    }
    let crd = env
        .kube
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "acrpullbindings.acrpull.microsoft.com",
        )
        .unwrap();
    assert!(
        crd.to_string().contains("observedGeneration"),
        "acrpull's CRD installed"
    );

    // The rollout: new pods start while the old leader still renews the Lease.
    env.kube.clear_requests();
    env.azure.clear_requests();
    let user = format!("system:serviceaccount:{OLD_NAMESPACE}:acrpull");
    let mut a = start_pod(&env, OLD_NAMESPACE, "acrpull-6b8f9d7c4-p2q7r");
    let mut b = start_pod(&env, OLD_NAMESPACE, "acrpull-6b8f9d7c4-x9z3w");
    wait_ready_probe(&env, &mut a).await;
    wait_ready_probe(&env, &mut b).await;
    let logs = || format!("{}\n----\n{}", a.logs(), b.logs());
    wait_until(
        "each new pod looked at the Lease three times",
        Duration::from_secs(60),
        || lease_reads(&env, &a.name) >= 3 && lease_reads(&env, &b.name) >= 3,
        logs,
    )
    .await;
    assert_eq!(
        holder(&env, OLD_NAMESPACE),
        OLD_HOLDER,
        "the old leader keeps the Lease"
    );
    let overlap = writes_by(&env, &user);
    assert!(
        overlap.is_empty(),
        "new pods wrote while the old pods held the Lease: {overlap:#?}"
    );

    // The old pods terminate (without releasing); one new pod takes over.
    old_pods.terminate().await;
    wait_until(
        "a new pod holds the Lease",
        Duration::from_secs(60),
        || [a.name.as_str(), b.name.as_str()].contains(&holder(&env, OLD_NAMESPACE).as_str()),
        logs,
    )
    .await;
    wait_all_ready(&env, &seeded, &[&a, &b]).await;
    wait_status_logged(&env, &user, &seeded).await;
    let counts = count(&env, &user);
    assert_swap_counts("helm", &counts, &seeded, &logs());
    assert_old_tokens_kept(&env, &seeded);

    // acrpull's own Secrets (new bindings) and the old ones: current by the old rules.
    let new = mint_new_bindings(&env, &[&a, &b]).await;
    let bindings = all_bindings(&seeded, &new);
    assert_old_controller_finds_nothing_to_do(&env, &bindings, "after the swap");

    // Rollback: the upstream chart again (its Deployment, CRDs, RBAC and policies); the new
    // pods go, the old controller's rules find nothing to re-mint.
    tools.helm(&env, &["rollback", "acrpull", "1", "-n", "default"]);
    drop(a);
    drop(b);
    let back = env
        .kube
        .get("apps/v1", "Deployment", OLD_NAMESPACE, "acrpull")
        .unwrap();
    assert_eq!(
        back["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["/manager"])
    );
    assert!(back["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string()
        .contains("--metrics-bind-address=127.0.0.1:8080"));
    let crd = env
        .kube
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "acrpullbindings.acrpull.microsoft.com",
        )
        .unwrap();
    assert!(
        !crd.to_string().contains("observedGeneration"),
        "upstream's CRD is back"
    );
    assert_old_controller_finds_nothing_to_do(&env, &bindings, "after the rollback");
}

/// kustomize: the old Deployment deleted (its pods stop), `kubectl apply -k deploy/`, the old
/// namespace and cluster objects removed, as docs/migration.md lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_by_kustomize_keeps_every_token_and_leaves_one_writer() {
    let Some(tools) = tools_or_skip("swap_by_kustomize_keeps_every_token_and_leaves_one_writer")
    else {
        return;
    };
    let env = old_world().await;
    // The old controller, installed from manifests (its chart rendered and applied).
    let rendered = run(
        &tools.helm,
        &["template", "acrpull", UPSTREAM_CHART, "-f", USER_VALUES],
        None,
    );
    tools.kubectl(&env, &["apply", "-f", "-"], Some(&rendered));
    let seeded = seed_old_bindings(&env);
    seed_old_lease(&env);
    let mut old_pods = OldPods::start(&env);

    // The swap, in the documented order: the old Deployment goes first (its pods stop)...
    tools.kubectl(
        &env,
        &["delete", "deployment", "acrpull", "-n", OLD_NAMESPACE],
        None,
    );
    old_pods.terminate().await;
    // ... then acrpull's manifests.
    tools.kubectl(&env, &["apply", "-k", "deploy/"], None);
    let deployment = env
        .kube
        .get("apps/v1", "Deployment", manifests_namespace(), "acrpull")
        .expect("acrpull's Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.azurecr.io/acrpull:0.1.0"
    );
    // ... and the old controller's leftovers, as the guide lists them.
    for args in OLD_OBJECTS_CLEANUP {
        tools.kubectl(&env, args, None);
    }
    for (api, kind, name) in [
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "acrpull-controller",
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "acrpull-controller-binding",
        ),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "controller-token-request-policy",
        ),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "controller-secret-mutation-policy",
        ),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicy",
            "controller-service-account-mutation-policy",
        ),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingAdmissionPolicyBinding",
            "controller-token-request-policy-binding",
        ),
    ] {
        assert!(
            env.kube.get(api, kind, "", name).is_none(),
            "{kind} {name} left"
        );
    }
    let old_ns_gone = env
        .kube
        .wait_for(
            "v1",
            "Namespace",
            "",
            OLD_NAMESPACE,
            |o| o.is_none(),
            Duration::from_secs(60),
        )
        .await;
    assert!(
        matches!(old_ns_gone, Ok(None)),
        "namespace {OLD_NAMESPACE} left: {old_ns_gone:?}"
    );

    env.kube.clear_requests();
    env.azure.clear_requests();
    let ns = manifests_namespace();
    let user = format!("system:serviceaccount:{ns}:acrpull");
    let mut a = start_pod(&env, ns, "acrpull-5d8f7c9b6-m4n5b");
    let mut b = start_pod(&env, ns, "acrpull-5d8f7c9b6-v6c7x");
    wait_ready_probe(&env, &mut a).await;
    wait_ready_probe(&env, &mut b).await;
    let logs = || format!("{}\n----\n{}", a.logs(), b.logs());
    wait_until(
        "a new pod holds acrpull's Lease",
        Duration::from_secs(60),
        || [a.name.as_str(), b.name.as_str()].contains(&holder(&env, ns).as_str()),
        logs,
    )
    .await;
    wait_all_ready(&env, &seeded, &[&a, &b]).await;
    wait_status_logged(&env, &user, &seeded).await;
    let counts = count(&env, &user);
    assert_swap_counts("kustomize", &counts, &seeded, &logs());
    assert_old_tokens_kept(&env, &seeded);
    // One writer: every write came from the Lease holder.
    let leader = holder(&env, ns);
    let strays: Vec<String> = writes_by(&env, &user)
        .into_iter()
        .filter(|w| !w.contains(&leader))
        .collect();
    assert!(strays.is_empty(), "writes from a non-leader: {strays:#?}");

    let new = mint_new_bindings(&env, &[&a, &b]).await;
    assert_old_controller_finds_nothing_to_do(&env, &all_bindings(&seeded, &new), "after the swap");
}

/// The namespace of the kustomize manifests.
fn manifests_namespace() -> &'static str {
    "acrpull-system"
}

/// `kubectl` commands docs/migration.md gives for the old controller's objects after a
/// kustomize swap (its chart's names).
const OLD_OBJECTS_CLEANUP: &[&[&str]] = &[
    &[
        "delete",
        "clusterrolebinding",
        "acrpull-controller-binding",
        "--ignore-not-found",
    ],
    &[
        "delete",
        "clusterrole",
        "acrpull-controller",
        "--ignore-not-found",
    ],
    &[
        "delete",
        "validatingadmissionpolicybinding",
        "controller-token-request-policy-binding",
        "controller-secret-mutation-policy-binding",
        "controller-service-account-mutation-policy-binding",
        "--ignore-not-found",
    ],
    &[
        "delete",
        "validatingadmissionpolicy",
        "controller-token-request-policy",
        "controller-secret-mutation-policy",
        "controller-service-account-mutation-policy",
        "--ignore-not-found",
    ],
    &["delete", "namespace", "acrpull", "--ignore-not-found"],
];
