//! The manifests under `deploy/` are consistent with what the controller does: every YAML
//! document is a named object; the Deployment is hardened, leader-elected and probed on the
//! health port; RBAC grants exactly the permissions in [`REQUIRED`], no more and no less;
//! Prometheus scrapes a port the pod actually listens on from outside (not loopback); the
//! admission policies take no parameters (a missing parameter object would either switch
//! them off or deny every TokenRequest in the cluster), match only the controller, carry
//! the controller's token audience as a literal, and fail closed, while
//! `admission-fail-open.yaml` holds the same policies failing open.
//!
//! The permission table is the one place to change when the controller starts (or stops)
//! making an API call: check it against the controller's real request log, then update
//! `deploy/rbac.yaml` to match.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

const NAMESPACE: &str = "acrpull-system";
const SERVICE_ACCOUNT: &str = "acrpull";
const CONTROLLER_USER: &str = "system:serviceaccount:acrpull-system:acrpull";
/// `--service-account-token-audience` when the flag is not given.
const DEFAULT_TOKEN_AUDIENCE: &str = "api://AzureCRTokenExchange";
/// `--metrics-bind-address` when the flag is not given.
const DEFAULT_METRICS_BIND: &str = ":8080";
/// `--health-probe-bind-address` when the flag is not given.
const DEFAULT_HEALTH_BIND: &str = ":8081";

/// Where a permission has to be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// ClusterRole bound by a ClusterRoleBinding: objects in every namespace.
    Cluster,
    /// Role bound by a RoleBinding in the controller's own namespace.
    ControllerNamespace,
}

/// One row of the permission table: `verbs` on `resource` in each of `groups`.
struct Permission {
    scope: Scope,
    groups: &'static [&'static str],
    resource: &'static str,
    verbs: &'static [&'static str],
}

const BINDING_GROUPS: &[&str] = &["acrpull.microsoft.com", "msi-acrpull.microsoft.com"];
const CORE: &[&str] = &[""];
const EVENT_GROUPS: &[&str] = &["", "events.k8s.io"];

/// Every API call the controller makes, and nothing else: RBAC must grant exactly these.
const REQUIRED: &[Permission] = &[
    Permission {
        scope: Scope::Cluster,
        groups: BINDING_GROUPS,
        resource: "acrpullbindings",
        verbs: &["get", "list", "watch", "update", "patch"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: BINDING_GROUPS,
        resource: "acrpullbindings/status",
        verbs: &["get", "update", "patch"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: BINDING_GROUPS,
        resource: "acrpullbindings/finalizers",
        verbs: &["update"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: CORE,
        resource: "secrets",
        verbs: &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    },
    Permission {
        scope: Scope::Cluster,
        groups: CORE,
        resource: "serviceaccounts",
        verbs: &["get", "list", "watch", "update", "patch"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: CORE,
        resource: "serviceaccounts/token",
        verbs: &["create"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: EVENT_GROUPS,
        resource: "events",
        verbs: &["create"],
    },
    Permission {
        scope: Scope::ControllerNamespace,
        groups: &["coordination.k8s.io"],
        resource: "leases",
        verbs: &["get", "create", "update"],
    },
    Permission {
        scope: Scope::ControllerNamespace,
        groups: EVENT_GROUPS,
        resource: "events",
        verbs: &["create"],
    },
];

/// Kinds that live in a namespace; all other kinds used here are cluster-scoped.
const NAMESPACED_KINDS: &[&str] = &[
    "ConfigMap",
    "Deployment",
    "PodDisruptionBudget",
    "PodMonitor",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
    "ServiceMonitor",
];

/// Manifests that are alternatives to listed ones, applied by hand instead of through the
/// kustomization.
const ALTERNATIVES: &[&str] = &["admission-fail-open.yaml", "monitoring-podmonitor.yaml"];

/// One YAML document and the file it came from (relative to `deploy/`).
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        text(&self.value, "/kind").unwrap_or("")
    }

    fn name(&self) -> &str {
        text(&self.value, "/metadata/name").unwrap_or("")
    }

    fn namespace(&self) -> Option<&str> {
        text(&self.value, "/metadata/namespace")
    }

    fn what(&self) -> String {
        format!("{} {} in {}", self.kind(), self.name(), self.file)
    }
}

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
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&source).unwrap_or_else(|e| panic!("{file}: {e}"));
    documents
        .into_iter()
        .map(|value| Doc {
            file: file.clone(),
            value,
        })
        .filter(|doc| !doc.value.is_null())
        .collect()
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

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn list<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strings(value: &Value, pointer: &str) -> Vec<String> {
    list(value, pointer)
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

fn one<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}");
    found[0]
}

fn of_kind<'a>(docs: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> {
    docs.iter().filter(move |d| d.kind() == kind)
}

fn controller_deployment(docs: &[Doc]) -> &Doc {
    one(docs, "Deployment", "acrpull")
}

fn controller_container(deployment: &Doc) -> &Value {
    let containers = list(&deployment.value, "/spec/template/spec/containers");
    assert_eq!(containers.len(), 1, "{}: one container", deployment.what());
    &containers[0]
}

/// The value of `--flag=value` or `--flag value` in `args`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&prefix) {
            Some(value)
        } else if arg == name {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

/// The effective value of a flag: the argument, else its environment variable
/// (`ACRPULL_` + upper snake case), else the default.
fn effective_flag(container: &Value, name: &str, default: &str) -> String {
    let args = strings(container, "/args");
    if let Some(value) = flag(&args, name) {
        return value.to_owned();
    }
    let env_name = format!(
        "ACRPULL_{}",
        name.trim_start_matches("--")
            .replace('-', "_")
            .to_uppercase()
    );
    list(container, "/env")
        .iter()
        .find(|e| text(e, "/name") == Some(env_name.as_str()))
        .and_then(|e| text(e, "/value"))
        .unwrap_or(default)
        .to_owned()
}

/// The port number of a `host:port` / `:port` bind address.
fn bind_port(address: &str) -> u64 {
    let (_, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("bind address {address:?} has no port"));
    port.parse()
        .unwrap_or_else(|_| panic!("bind address {address:?}: bad port"))
}

fn bind_host(address: &str) -> &str {
    address.rsplit_once(':').map(|(host, _)| host).unwrap_or("")
}

/// Container port name -> number.
fn container_ports(container: &Value) -> BTreeMap<String, u64> {
    list(container, "/ports")
        .iter()
        .map(|p| {
            let name = text(p, "/name").expect("every container port is named");
            let number = p.pointer("/containerPort").and_then(Value::as_u64).unwrap();
            (name.to_owned(), number)
        })
        .collect()
}

/// A probe's or Service's port (a number, or a container port name) as a number.
fn resolve_port(port: &Value, ports: &BTreeMap<String, u64>) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => ports.get(name).copied(),
        _ => None,
    }
}

/// Whether every label in `wanted` (a non-empty map) is on an object with `labels`.
fn labels_match(wanted: &Value, labels: &Value) -> bool {
    wanted
        .as_object()
        .is_some_and(|w| !w.is_empty() && w.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether a `matchLabels` selector selects an object with these labels.
fn selects(selector: &Value, labels: &Value) -> bool {
    labels_match(&selector["matchLabels"], labels)
}

#[test]
fn every_document_is_a_named_kubernetes_object() {
    let docs = all_docs();
    assert!(docs.len() >= 15, "found only {} documents", docs.len());
    for doc in docs.iter().filter(|d| d.file != "kustomization.yaml") {
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            assert!(
                text(&doc.value, field).is_some_and(|v| !v.is_empty()),
                "{}: a document without {field}",
                doc.file
            );
        }
        if NAMESPACED_KINDS.contains(&doc.kind()) {
            assert_eq!(doc.namespace(), Some(NAMESPACE), "{}", doc.what());
        } else {
            assert_eq!(doc.namespace(), None, "{}: cluster-scoped", doc.what());
        }
    }
    let mut seen = BTreeSet::new();
    for doc in installed_docs() {
        let key = (
            doc.kind().to_owned(),
            doc.namespace().map(str::to_owned),
            doc.name().to_owned(),
        );
        assert!(seen.insert(key), "{} is defined twice", doc.what());
    }
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
    assert_eq!(crds.len(), 2, "two CRDs, one per API group");
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
    let docs = all_docs();
    let deployment = controller_deployment(&docs);
    let what = deployment.what();
    let spec = &deployment.value["spec"];
    let pod = &spec["template"]["spec"];
    let container = controller_container(deployment);
    let args = strings(container, "/args");

    assert_eq!(spec["replicas"], 2, "{what}: replicas");
    assert!(
        args.iter()
            .any(|a| a == "--leader-elect" || a == "--leader-elect=true"),
        "{what}: --leader-elect missing from {args:?}"
    );
    assert_eq!(text(pod, "/serviceAccountName"), Some(SERVICE_ACCOUNT));
    assert_eq!(pod["terminationGracePeriodSeconds"], 30, "{what}");

    // Container settings win over pod settings.
    let security = |field: &str| {
        container
            .pointer(&format!("/securityContext/{field}"))
            .or_else(|| pod.pointer(&format!("/securityContext/{field}")))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(security("runAsNonRoot"), true, "{what}: runAsNonRoot");
    assert_eq!(security("runAsUser"), 65532, "{what}: runAsUser");
    assert_eq!(
        security("seccompProfile/type"),
        "RuntimeDefault",
        "{what}: seccomp"
    );
    let container_security = |field: &str| container.pointer(&format!("/securityContext/{field}"));
    assert_eq!(
        container_security("readOnlyRootFilesystem"),
        Some(&Value::Bool(true)),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        container_security("allowPrivilegeEscalation"),
        Some(&Value::Bool(false)),
        "{what}: allowPrivilegeEscalation"
    );
    assert_eq!(
        strings(container, "/securityContext/capabilities/drop"),
        ["ALL"],
        "{what}: capabilities"
    );

    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = list(container, "/env")
            .iter()
            .find(|e| text(e, "/name") == Some(variable))
            .unwrap_or_else(|| panic!("{what}: env {variable} missing"));
        assert_eq!(
            text(env, "/valueFrom/fieldRef/fieldPath"),
            Some(field),
            "{what}: {variable} from the downward API"
        );
    }

    let ports = container_ports(container);
    let health_port = bind_port(&effective_flag(
        container,
        "--health-probe-bind-address",
        DEFAULT_HEALTH_BIND,
    ));
    assert_eq!(
        ports.get("health"),
        Some(&health_port),
        "{what}: port health"
    );
    assert_eq!(ports.get("metrics"), Some(&8080), "{what}: port metrics");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = container
            .pointer(&format!("/{probe}/httpGet"))
            .unwrap_or_else(|| panic!("{what}: no {probe}"));
        assert_eq!(text(get, "/path"), Some(path), "{what}: {probe} path");
        assert_eq!(
            resolve_port(&get["port"], &ports),
            Some(health_port),
            "{what}: {probe} must use the health port"
        );
    }

    let requests = &container["resources"]["requests"];
    assert!(
        requests.get("cpu").is_some() && requests.get("memory").is_some(),
        "{what}: resource requests"
    );
    assert!(
        container.pointer("/resources/limits/memory").is_some(),
        "{what}: memory limit"
    );

    let labels = &spec["template"]["metadata"]["labels"];
    let budgets: Vec<&Doc> = of_kind(&docs, "PodDisruptionBudget")
        .filter(|pdb| selects(&pdb.value["spec"]["selector"], labels))
        .collect();
    assert_eq!(budgets.len(), 1, "one PodDisruptionBudget selects the pods");
    assert_eq!(budgets[0].value["spec"]["minAvailable"], 1);
    assert!(
        pod.get("topologySpreadConstraints").is_some()
            || pod.pointer("/affinity/podAntiAffinity").is_some(),
        "{what}: replicas are not spread over nodes"
    );
}

/// (scope, group, resource, verb) for every verb in the table.
fn required_grants() -> BTreeSet<(Scope, String, String, String)> {
    let mut grants = BTreeSet::new();
    for p in REQUIRED {
        for group in p.groups {
            for verb in p.verbs {
                grants.insert((
                    p.scope,
                    group.to_string(),
                    p.resource.to_owned(),
                    verb.to_string(),
                ));
            }
        }
    }
    grants
}

/// Whether a RoleBinding/ClusterRoleBinding binds the controller's ServiceAccount.
fn binds_controller(binding: &Doc) -> bool {
    list(&binding.value, "/subjects").iter().any(|s| {
        text(s, "/kind") == Some("ServiceAccount")
            && text(s, "/name") == Some(SERVICE_ACCOUNT)
            && text(s, "/namespace") == Some(NAMESPACE)
    })
}

/// What the controller's ServiceAccount is granted by the installed manifests.
fn granted(docs: &[Doc]) -> BTreeSet<(Scope, String, String, String)> {
    let mut roles = Vec::new();
    for binding in docs.iter().filter(|d| binds_controller(d)) {
        let role_kind = text(&binding.value, "/roleRef/kind").unwrap();
        let role_name = text(&binding.value, "/roleRef/name").unwrap();
        let scope = match (binding.kind(), role_kind) {
            ("ClusterRoleBinding", "ClusterRole") => Scope::Cluster,
            ("RoleBinding", "Role") => {
                assert_eq!(binding.namespace(), Some(NAMESPACE), "{}", binding.what());
                Scope::ControllerNamespace
            }
            other => panic!("{}: unexpected binding {other:?}", binding.what()),
        };
        roles.push((scope, one(docs, role_kind, role_name)));
    }
    let mut grants = BTreeSet::new();
    for (scope, role) in roles {
        for rule in list(&role.value, "/rules") {
            let groups = strings(rule, "/apiGroups");
            let resources = strings(rule, "/resources");
            let verbs = strings(rule, "/verbs");
            for field in [&groups, &resources, &verbs] {
                assert!(
                    !field.iter().any(|v| v.contains('*')),
                    "{}: wildcard in {rule}",
                    role.what()
                );
            }
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{}: nonResourceURLs",
                role.what()
            );
            for group in &groups {
                for resource in &resources {
                    for verb in &verbs {
                        grants.insert((scope, group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    grants
}

#[test]
fn rbac_grants_exactly_the_permission_table() {
    let docs = installed_docs();
    one(&docs, "ServiceAccount", SERVICE_ACCOUNT);
    let required = required_grants();
    let granted = granted(&docs);
    let missing: Vec<_> = required.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&required).collect();
    assert!(
        missing.is_empty(),
        "RBAC lacks permissions the controller needs: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "RBAC grants permissions the controller does not use (least privilege): {extra:?}"
    );
}

#[test]
fn monitors_scrape_the_metrics_port_on_the_pod_ip() {
    let docs = all_docs();
    let deployment = controller_deployment(&docs);
    let container = controller_container(deployment);
    let ports = container_ports(container);
    let pod_labels = &deployment.value["spec"]["template"]["metadata"]["labels"];

    let metrics_bind = effective_flag(container, "--metrics-bind-address", DEFAULT_METRICS_BIND);
    let host = bind_host(&metrics_bind).trim_matches(['[', ']']);
    assert!(
        !(host == "localhost" || host.starts_with("127.") || host == "::1"),
        "--metrics-bind-address {metrics_bind} is loopback: Prometheus scrapes the pod IP"
    );
    assert_eq!(
        ports.get("metrics"),
        Some(&bind_port(&metrics_bind)),
        "container port metrics must be the port the metrics server binds"
    );

    let pod_monitors: Vec<&Doc> = of_kind(&docs, "PodMonitor").collect();
    let service_monitors: Vec<&Doc> = of_kind(&docs, "ServiceMonitor").collect();
    assert!(
        !pod_monitors.is_empty() && !service_monitors.is_empty(),
        "both a PodMonitor and a ServiceMonitor are offered"
    );
    for monitor in pod_monitors {
        assert!(
            selects(&monitor.value["spec"]["selector"], pod_labels),
            "{} does not select the controller's pods",
            monitor.what()
        );
        let endpoints = list(&monitor.value, "/spec/podMetricsEndpoints");
        assert!(!endpoints.is_empty(), "{}: no endpoints", monitor.what());
        for endpoint in endpoints {
            let port = text(endpoint, "/port").expect("PodMonitor endpoints name their port");
            assert_eq!(
                ports.get(port),
                ports.get("metrics"),
                "{} scrapes port {port}, not the container port metrics",
                monitor.what()
            );
        }
    }
    for monitor in service_monitors {
        let services: Vec<&Doc> = of_kind(&docs, "Service")
            .filter(|s| {
                selects(
                    &monitor.value["spec"]["selector"],
                    &s.value["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(services.len(), 1, "{} selects one Service", monitor.what());
        let service = &services[0].value;
        assert!(
            labels_match(&service["spec"]["selector"], pod_labels),
            "{} does not select the controller's pods",
            services[0].what()
        );
        let endpoints = list(&monitor.value, "/spec/endpoints");
        assert!(!endpoints.is_empty(), "{}: no endpoints", monitor.what());
        for endpoint in endpoints {
            let port = text(endpoint, "/port").expect("ServiceMonitor endpoints name their port");
            let service_port = list(service, "/spec/ports")
                .iter()
                .find(|p| text(p, "/name") == Some(port))
                .unwrap_or_else(|| panic!("{}: no Service port {port}", monitor.what()));
            let target = service_port
                .get("targetPort")
                .unwrap_or(&service_port["port"]);
            assert_eq!(
                resolve_port(target, &ports),
                ports.get("metrics").copied(),
                "{}: Service port {port} does not reach the container port metrics",
                monitor.what()
            );
        }
    }
}

/// The manifest holding the fail-closed policies, installed by the kustomization.
const ADMISSION: &str = "admission.yaml";
/// The manifest holding the same policies failing open, applied by hand instead.
const ADMISSION_FAIL_OPEN: &str = "admission-fail-open.yaml";

/// The ValidatingAdmissionPolicies of one manifest, by name.
fn policies_in<'a>(docs: &'a [Doc], file: &str) -> BTreeMap<&'a str, &'a Doc> {
    let mut policies = BTreeMap::new();
    for policy in of_kind(docs, "ValidatingAdmissionPolicy").filter(|p| p.file == file) {
        assert!(
            policies.insert(policy.name(), policy).is_none(),
            "{} is defined twice",
            policy.what()
        );
    }
    policies
}

/// Whether a policy intercepts `resource` (e.g. `serviceaccounts/token`).
fn policy_matches_resource(policy: &Doc, resource: &str) -> bool {
    list(&policy.value, "/spec/matchConstraints/resourceRules")
        .iter()
        .any(|rule| strings(rule, "/resources").iter().any(|r| r == resource))
}

/// The text of a CEL string literal (`'…'` or `"…"`, no escapes), or None for any other
/// expression.
fn cel_string_literal(expression: &str) -> Option<&str> {
    let expression = expression.trim();
    ['\'', '"'].into_iter().find_map(|quote| {
        let inner = expression.strip_prefix(quote)?.strip_suffix(quote)?;
        (!inner.contains([quote, '\\'])).then_some(inner)
    })
}

#[test]
fn admission_policies_take_no_parameters() {
    let docs = all_docs();
    let policies: Vec<&Doc> = of_kind(&docs, "ValidatingAdmissionPolicy").collect();
    let bindings: Vec<&Doc> = of_kind(&docs, "ValidatingAdmissionPolicyBinding").collect();
    assert!(
        policies.len() >= 6 && bindings.len() >= 3,
        "three policies in each admission manifest, three bindings"
    );
    // The API server resolves parameters before matchConditions: a missing parameter
    // object either switches a policy off (Allow) or denies every matching request in the
    // cluster, from any user (Deny). So there must be none.
    for policy in policies {
        assert!(
            policy.value.pointer("/spec/paramKind").is_none(),
            "{}: paramKind (the policy must not depend on a parameter object)",
            policy.what()
        );
        let expressions = [
            "/spec/validations",
            "/spec/variables",
            "/spec/matchConditions",
        ]
        .into_iter()
        .flat_map(|field| list(&policy.value, field))
        .flat_map(|item| ["/expression", "/messageExpression"].map(|f| text(item, f)))
        .flatten();
        for expression in expressions {
            assert!(
                !expression.contains("params."),
                "{}: expression reads params: {expression}",
                policy.what()
            );
        }
    }
    for binding in bindings {
        assert!(
            binding.value.pointer("/spec/paramRef").is_none(),
            "{}: paramRef (the policies take no parameters)",
            binding.what()
        );
    }
}

#[test]
fn admission_bindings_deny_and_cover_every_installed_policy() {
    let installed = installed_docs();
    let policies = policies_in(&installed, ADMISSION);
    assert!(
        policies.len() >= 3,
        "token, Secret and ServiceAccount policies are installed"
    );
    let mut bound = BTreeSet::new();
    for binding in of_kind(&installed, "ValidatingAdmissionPolicyBinding") {
        let what = binding.what();
        let spec = &binding.value["spec"];
        assert_eq!(
            text(&binding.value, "/apiVersion"),
            Some("admissionregistration.k8s.io/v1"),
            "{what}"
        );
        assert!(
            strings(spec, "/validationActions").contains(&"Deny".to_owned()),
            "{what}: validationActions must include Deny"
        );
        let policy_name = text(spec, "/policyName").unwrap_or("");
        assert!(
            policies.contains_key(policy_name),
            "{what}: no installed policy {policy_name}"
        );
        bound.insert(policy_name);
    }
    for (name, policy) in &policies {
        assert!(
            bound.contains(name),
            "{} is installed without a binding",
            policy.what()
        );
    }
}

#[test]
fn admission_policies_fail_closed_and_the_alternative_differs_only_in_failing_open() {
    let docs = all_docs();
    let closed = policies_in(&docs, ADMISSION);
    let open = policies_in(&docs, ADMISSION_FAIL_OPEN);
    assert!(
        closed.len() >= 3,
        "token, Secret and ServiceAccount policies"
    );
    // Only the policies are replaced; the bindings of admission.yaml stay.
    for doc in docs.iter().filter(|d| d.file == ADMISSION_FAIL_OPEN) {
        assert_eq!(
            doc.kind(),
            "ValidatingAdmissionPolicy",
            "{}: the fail-open file holds only policies",
            doc.what()
        );
    }
    assert_eq!(
        open.keys().collect::<Vec<_>>(),
        closed.keys().collect::<Vec<_>>(),
        "{ADMISSION_FAIL_OPEN} must replace exactly the policies of {ADMISSION}"
    );
    // Every policy anywhere but the fail-open file fails closed.
    for policy in of_kind(&docs, "ValidatingAdmissionPolicy") {
        let expected = if policy.file == ADMISSION_FAIL_OPEN {
            "Ignore"
        } else {
            "Fail"
        };
        assert_eq!(
            text(&policy.value, "/spec/failurePolicy"),
            Some(expected),
            "{}: failurePolicy",
            policy.what()
        );
    }
    let without_failure_policy = |policy: &Doc| {
        let mut value = policy.value.clone();
        value["spec"]
            .as_object_mut()
            .expect("a policy has a spec")
            .remove("failurePolicy");
        value
    };
    for (name, policy) in &closed {
        assert_eq!(
            without_failure_policy(open[name]),
            without_failure_policy(policy),
            "{name}: {ADMISSION_FAIL_OPEN} must differ from {ADMISSION} only in failurePolicy"
        );
    }
}

#[test]
fn admission_policies_match_only_the_controller() {
    let docs = all_docs();
    let user_check = format!("request.userInfo.username == '{CONTROLLER_USER}'");
    let mut checked = 0;
    for policy in of_kind(&docs, "ValidatingAdmissionPolicy") {
        let what = policy.what();
        assert_eq!(
            text(&policy.value, "/apiVersion"),
            Some("admissionregistration.k8s.io/v1"),
            "{what}"
        );
        // Exactly the user check, not merely containing it: `… || true` would match all.
        // All matchConditions must hold, so one such condition restricts the policy.
        assert!(
            list(&policy.value, "/spec/matchConditions")
                .iter()
                .any(|c| text(c, "/expression").is_some_and(|e| e.trim() == user_check)),
            "{what}: no matchCondition `{user_check}`"
        );
        assert!(
            !list(&policy.value, "/spec/validations").is_empty(),
            "{what}: no validations"
        );
        checked += 1;
    }
    assert!(checked >= 6, "three policies in each admission manifest");
}

#[test]
fn token_policy_audience_literal_equals_the_controller_flag() {
    let docs = all_docs();
    let container = controller_container(controller_deployment(&docs));
    let audience = effective_flag(
        container,
        "--service-account-token-audience",
        DEFAULT_TOKEN_AUDIENCE,
    );
    let token_policies: Vec<&Doc> = of_kind(&docs, "ValidatingAdmissionPolicy")
        .filter(|p| policy_matches_resource(p, "serviceaccounts/token"))
        .collect();
    assert!(
        token_policies.len() >= 2,
        "a token-request policy in each admission manifest"
    );
    for policy in token_policies {
        let what = policy.what();
        let variable = list(&policy.value, "/spec/variables")
            .iter()
            .find(|v| text(v, "/name") == Some("audience"))
            .unwrap_or_else(|| panic!("{what}: no variable `audience`"));
        let expression = text(variable, "/expression").unwrap_or("");
        let literal = cel_string_literal(expression).unwrap_or_else(|| {
            panic!("{what}: variable `audience` must be a string literal, not {expression}")
        });
        assert_eq!(
            literal, audience,
            "{what}: the audience literal must equal --service-account-token-audience"
        );
        // The literal must be what TokenRequests are checked against.
        let rule = "object.spec.audiences == [variables.audience]";
        assert!(
            list(&policy.value, "/spec/validations")
                .iter()
                .any(|v| text(v, "/expression").is_some_and(|e| e.contains(rule))),
            "{what}: no validation `{rule}`"
        );
    }
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
