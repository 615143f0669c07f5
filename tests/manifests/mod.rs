//! Checks shared by the kustomize manifests (`tests/deploy_manifests.rs`) and the Helm chart's
//! renderings (`tests/helm_chart.rs`): the Deployment is hardened, leader-elected and probed on
//! the health port; RBAC grants exactly the permissions in [`REQUIRED`], no more and no less;
//! Prometheus scrapes a port the pod actually listens on from outside (not loopback); the
//! admission policies take no parameters, match only the controller, carry the controller's
//! token audience as a literal, and fail closed or, in the fail-open variant, differ only in
//! failing open.
//!
//! The permission table is the one place to change when the controller starts (or stops)
//! making an API call: check it against the controller's real request log, then update the
//! chart's `templates/rbac.yaml` and run `scripts/gen-deploy.sh`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The namespace of the kustomize manifests and the chart's default.
pub const DEFAULT_NAMESPACE: &str = "acrpull-system";
/// The controller's ServiceAccount name (fixed, in the chart too).
pub const SERVICE_ACCOUNT: &str = "acrpull";

/// `system:serviceaccount:<namespace>:acrpull`, the user the admission policies match.
pub fn controller_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
}

/// `--service-account-token-audience` when the flag is not given.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "api://AzureCRTokenExchange";
/// `--metrics-bind-address` when the flag is not given.
pub const DEFAULT_METRICS_BIND: &str = ":8080";
/// `--health-probe-bind-address` when the flag is not given.
pub const DEFAULT_HEALTH_BIND: &str = ":8081";

/// Where a permission has to be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// ClusterRole bound by a ClusterRoleBinding: objects in every namespace.
    Cluster,
    /// Role bound by a RoleBinding in the controller's own namespace.
    ControllerNamespace,
}

/// One row of the permission table: `verbs` on `resource` in each of `groups`.
pub struct Permission {
    pub scope: Scope,
    pub groups: &'static [&'static str],
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

pub const BINDING_GROUPS: &[&str] = &["acrpull.microsoft.com", "msi-acrpull.microsoft.com"];
pub const CORE: &[&str] = &[""];
pub const EVENT_GROUPS: &[&str] = &["", "events.k8s.io"];

/// Every API call the controller makes, and nothing else: RBAC must grant exactly these.
pub const REQUIRED: &[Permission] = &[
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
    // Tenancy modes audit and enforce: the AcrPullPolicy objects and the namespaces' labels.
    Permission {
        scope: Scope::Cluster,
        groups: &["acrpull.microsoft.com"],
        resource: "acrpullpolicies",
        verbs: &["get", "list", "watch"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: CORE,
        resource: "namespaces",
        verbs: &["get", "list", "watch"],
    },
    // --metrics-secure: TokenReview and SubjectAccessReview of /metrics and /debug callers.
    Permission {
        scope: Scope::Cluster,
        groups: &["authentication.k8s.io"],
        resource: "tokenreviews",
        verbs: &["create"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: &["authorization.k8s.io"],
        resource: "subjectaccessreviews",
        verbs: &["create"],
    },
    Permission {
        scope: Scope::Cluster,
        groups: &["apiextensions.k8s.io"],
        resource: "customresourcedefinitions",
        verbs: &["get"],
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
pub const NAMESPACED_KINDS: &[&str] = &[
    "ConfigMap",
    "Deployment",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "PodMonitor",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
    "ServiceMonitor",
];

/// One YAML document and the file it came from (relative to `deploy/`, or the chart template).
#[derive(Clone, Debug)]
pub struct Doc {
    pub file: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        text(&self.value, "/kind").unwrap_or("")
    }

    pub fn name(&self) -> &str {
        text(&self.value, "/metadata/name").unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        text(&self.value, "/metadata/namespace")
    }

    pub fn what(&self) -> String {
        format!("{} {} in {}", self.kind(), self.name(), self.file)
    }
}

pub fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

pub fn list<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn strings(value: &Value, pointer: &str) -> Vec<String> {
    list(value, pointer)
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

pub fn one<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}");
    found[0]
}

pub fn of_kind<'a>(docs: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> {
    docs.iter().filter(move |d| d.kind() == kind)
}

pub fn controller_deployment(docs: &[Doc]) -> &Doc {
    one(docs, "Deployment", "acrpull")
}

pub fn controller_container(deployment: &Doc) -> &Value {
    let containers = list(&deployment.value, "/spec/template/spec/containers");
    assert_eq!(containers.len(), 1, "{}: one container", deployment.what());
    &containers[0]
}

/// The value of `--flag=value` or `--flag value` in `args`, if given.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
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
pub fn effective_flag(container: &Value, name: &str, default: &str) -> String {
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
pub fn bind_port(address: &str) -> u64 {
    let (_, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("bind address {address:?} has no port"));
    port.parse()
        .unwrap_or_else(|_| panic!("bind address {address:?}: bad port"))
}

pub fn bind_host(address: &str) -> &str {
    address.rsplit_once(':').map(|(host, _)| host).unwrap_or("")
}

/// Container port name -> number.
pub fn container_ports(container: &Value) -> BTreeMap<String, u64> {
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
pub fn resolve_port(port: &Value, ports: &BTreeMap<String, u64>) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => ports.get(name).copied(),
        _ => None,
    }
}

/// Whether every label in `wanted` (a non-empty map) is on an object with `labels`.
pub fn labels_match(wanted: &Value, labels: &Value) -> bool {
    wanted
        .as_object()
        .is_some_and(|w| !w.is_empty() && w.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether a `matchLabels` selector selects an object with these labels.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    labels_match(&selector["matchLabels"], labels)
}

/// The Deployment is hardened, leader-elected, probed on the health port, sized, spread, and
/// covered by one PodDisruptionBudget with `minAvailable: 1`.
pub fn check_deployment(docs: &[Doc], namespace: &str) {
    let deployment = controller_deployment(docs);
    assert_eq!(
        deployment.namespace(),
        Some(namespace),
        "{}",
        deployment.what()
    );
    let what = deployment.what();
    let spec = &deployment.value["spec"];
    let pod = &spec["template"]["spec"];
    let container = controller_container(deployment);
    let args = strings(container, "/args");

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
    let budgets: Vec<&Doc> = of_kind(docs, "PodDisruptionBudget")
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
pub fn required_grants() -> BTreeSet<(Scope, String, String, String)> {
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
pub fn binds_controller(binding: &Doc, namespace: &str) -> bool {
    list(&binding.value, "/subjects").iter().any(|s| {
        text(s, "/kind") == Some("ServiceAccount")
            && text(s, "/name") == Some(SERVICE_ACCOUNT)
            && text(s, "/namespace") == Some(namespace)
    })
}

/// What the controller's ServiceAccount in `namespace` is granted by `docs`.
pub fn granted(docs: &[Doc], namespace: &str) -> BTreeSet<(Scope, String, String, String)> {
    let mut roles = Vec::new();
    for binding in docs.iter().filter(|d| binds_controller(d, namespace)) {
        let role_kind = text(&binding.value, "/roleRef/kind").unwrap();
        let role_name = text(&binding.value, "/roleRef/name").unwrap();
        let scope = match (binding.kind(), role_kind) {
            ("ClusterRoleBinding", "ClusterRole") => Scope::Cluster,
            ("RoleBinding", "Role") => {
                assert_eq!(binding.namespace(), Some(namespace), "{}", binding.what());
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
/// RBAC grants the controller's ServiceAccount exactly [`REQUIRED`]: no less, no more.
pub fn check_rbac(docs: &[Doc], namespace: &str) {
    let sa = one(docs, "ServiceAccount", SERVICE_ACCOUNT);
    assert_eq!(sa.namespace(), Some(namespace), "{}", sa.what());
    let required = required_grants();
    let granted = granted(docs, namespace);
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
/// Every PodMonitor and ServiceMonitor in `docs` scrapes the container port `metrics`, which the
/// metrics server binds on all interfaces (Prometheus scrapes the pod IP).
pub fn check_monitors(docs: &[Doc]) {
    let deployment = controller_deployment(docs);
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

    let pod_monitors: Vec<&Doc> = of_kind(docs, "PodMonitor").collect();
    let service_monitors: Vec<&Doc> = of_kind(docs, "ServiceMonitor").collect();
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
        let services: Vec<&Doc> = of_kind(docs, "Service")
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

/// The ValidatingAdmissionPolicies of `docs`, by name.
pub fn policies(docs: &[Doc]) -> BTreeMap<&str, &Doc> {
    let mut policies = BTreeMap::new();
    for policy in of_kind(docs, "ValidatingAdmissionPolicy") {
        assert!(
            policies.insert(policy.name(), policy).is_none(),
            "{} is defined twice",
            policy.what()
        );
    }
    policies
}

/// Whether a policy intercepts `resource` (e.g. `serviceaccounts/token`).
pub fn policy_matches_resource(policy: &Doc, resource: &str) -> bool {
    list(&policy.value, "/spec/matchConstraints/resourceRules")
        .iter()
        .any(|rule| strings(rule, "/resources").iter().any(|r| r == resource))
}

/// The text of a CEL string literal (`'…'` or `"…"`, no escapes), or None for any other
/// expression.
pub fn cel_string_literal(expression: &str) -> Option<&str> {
    let expression = expression.trim();
    ['\'', '"'].into_iter().find_map(|quote| {
        let inner = expression.strip_prefix(quote)?.strip_suffix(quote)?;
        (!inner.contains([quote, '\\'])).then_some(inner)
    })
}

/// No policy or binding takes parameters: the API server resolves parameters before
/// matchConditions, so a missing parameter object either switches a policy off (Allow) or denies
/// every matching request in the cluster, from any user (Deny).
pub fn check_admission_takes_no_parameters(docs: &[Doc]) {
    for policy in of_kind(docs, "ValidatingAdmissionPolicy") {
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
    for binding in of_kind(docs, "ValidatingAdmissionPolicyBinding") {
        assert!(
            binding.value.pointer("/spec/paramRef").is_none(),
            "{}: paramRef (the policies take no parameters)",
            binding.what()
        );
    }
}

/// The installed bindings deny (not just audit), each names an installed policy, and every
/// installed policy is bound. Returns the number of policies.
pub fn check_admission_bindings(installed: &[Doc]) -> usize {
    let policies = policies(installed);
    let mut bound = BTreeSet::new();
    for binding in of_kind(installed, "ValidatingAdmissionPolicyBinding") {
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
    policies.len()
}

/// A policy without its failurePolicy, for comparing the fail-closed and fail-open variants.
fn without_failure_policy(policy: &Doc) -> Value {
    let mut value = policy.value.clone();
    value["spec"]
        .as_object_mut()
        .expect("a policy has a spec")
        .remove("failurePolicy");
    value
}

/// Every policy in `closed` fails closed (`Fail`), every one in `open` fails open (`Ignore`),
/// `open` holds only policies, the same ones, and they differ in nothing else.
pub fn check_fail_closed_and_open(closed: &[Doc], open: &[Doc]) {
    for doc in open {
        assert_eq!(
            doc.kind(),
            "ValidatingAdmissionPolicy",
            "{}: the fail-open variant holds only policies",
            doc.what()
        );
    }
    let closed = policies(closed);
    let open = policies(open);
    assert!(
        closed.len() >= 3,
        "token, Secret and ServiceAccount policies"
    );
    assert_eq!(
        open.keys().collect::<Vec<_>>(),
        closed.keys().collect::<Vec<_>>(),
        "the fail-open variant must replace exactly the fail-closed policies"
    );
    for (policies, expected) in [(&closed, "Fail"), (&open, "Ignore")] {
        for policy in policies.values() {
            assert_eq!(
                text(&policy.value, "/spec/failurePolicy"),
                Some(expected),
                "{}: failurePolicy",
                policy.what()
            );
        }
    }
    for (name, policy) in &closed {
        assert_eq!(
            without_failure_policy(open[name]),
            without_failure_policy(policy),
            "{name}: the fail-open variant must differ only in failurePolicy"
        );
    }
}

/// Every policy applies only to requests of `user` (the controller's ServiceAccount) and
/// validates something. Returns the number of policies checked.
pub fn check_admission_matches_only(docs: &[Doc], user: &str) -> usize {
    let user_check = format!("request.userInfo.username == '{user}'");
    let mut checked = 0;
    for policy in of_kind(docs, "ValidatingAdmissionPolicy") {
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
    checked
}

/// The token-request policies of `docs` check TokenRequests against a string literal equal to
/// the controller's effective `--service-account-token-audience`. Returns how many there are.
pub fn check_token_audience(docs: &[Doc], container: &Value) -> usize {
    let audience = effective_flag(
        container,
        "--service-account-token-audience",
        DEFAULT_TOKEN_AUDIENCE,
    );
    let token_policies: Vec<&Doc> = of_kind(docs, "ValidatingAdmissionPolicy")
        .filter(|p| policy_matches_resource(p, "serviceaccounts/token"))
        .collect();
    for policy in &token_policies {
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
    token_policies.len()
}

/// The token-request policies of `docs` cap `expirationSeconds` at an integer literal equal to
/// the lifetime the controller asks for (`acrpull::k8s::sa_token::EXPIRATION_SECONDS`): lower
/// and every workload-identity binding fails, higher and a leaked token lives longer than
/// needed. Returns how many policies there are.
pub fn check_token_expiry(docs: &[Doc]) -> usize {
    let asked = acrpull::k8s::sa_token::EXPIRATION_SECONDS;
    let token_policies: Vec<&Doc> = of_kind(docs, "ValidatingAdmissionPolicy")
        .filter(|p| policy_matches_resource(p, "serviceaccounts/token"))
        .collect();
    for policy in &token_policies {
        let what = policy.what();
        let variable = list(&policy.value, "/spec/variables")
            .iter()
            .find(|v| text(v, "/name") == Some("maxExpirationSeconds"))
            .unwrap_or_else(|| panic!("{what}: no variable `maxExpirationSeconds`"));
        let expression = text(variable, "/expression").unwrap_or("").trim();
        assert_eq!(
            expression.parse::<i64>().ok(),
            Some(asked),
            "{what}: maxExpirationSeconds must be the literal {asked}, what the controller asks \
             for (src/k8s/sa_token.rs), not {expression:?}"
        );
        let rule = "object.spec.expirationSeconds <= variables.maxExpirationSeconds";
        assert!(
            list(&policy.value, "/spec/validations").iter().any(|v| {
                text(v, "/expression").is_some_and(|e| {
                    e.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .contains(rule)
                })
            }),
            "{what}: no validation `{rule}`"
        );
    }
    token_policies.len()
}

/// Every document is a named object, namespaced kinds in `namespace` and cluster-scoped ones
/// in none, and no object is defined twice.
pub fn check_named_objects(docs: &[Doc], namespace: &str) {
    let mut seen = BTreeSet::new();
    for doc in docs {
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            assert!(
                text(&doc.value, field).is_some_and(|v| !v.is_empty()),
                "{}: a document without {field}",
                doc.file
            );
        }
        if NAMESPACED_KINDS.contains(&doc.kind()) {
            assert_eq!(doc.namespace(), Some(namespace), "{}", doc.what());
        } else {
            assert_eq!(doc.namespace(), None, "{}: cluster-scoped", doc.what());
        }
        let key = (
            text(&doc.value, "/apiVersion").unwrap_or("").to_owned(),
            doc.kind().to_owned(),
            doc.name().to_owned(),
        );
        assert!(seen.insert(key), "{} is defined twice", doc.what());
    }
}

/// Parses a multi-document YAML `source`; `file` labels the documents in messages.
pub fn parse_docs(file: &str, source: &str) -> Vec<Doc> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(source).unwrap_or_else(|e| panic!("{file}: {e}"));
    documents
        .into_iter()
        .map(|value| Doc {
            file: file.to_owned(),
            value,
        })
        .filter(|doc| !doc.value.is_null())
        .collect()
}

/// The first place where `a` and `b` differ, as a JSON pointer with both values, or None when
/// they are equal. Numbers compare by value (`0` equals `0.0`: YAML tools rewrite them).
pub fn first_difference(a: &Value, b: &Value) -> Option<String> {
    fn walk(a: &Value, b: &Value, path: &mut String) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for key in keys {
                    let len = path.len();
                    path.push('/');
                    path.push_str(key);
                    let found = walk(
                        x.get(key).unwrap_or(&Value::Null),
                        y.get(key).unwrap_or(&Value::Null),
                        path,
                    );
                    path.truncate(len);
                    if found.is_some() {
                        return found;
                    }
                }
                None
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                x.iter().zip(y).enumerate().find_map(|(i, (u, v))| {
                    let len = path.len();
                    path.push_str(&format!("/{i}"));
                    let found = walk(u, v, path);
                    path.truncate(len);
                    found
                })
            }
            (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
            _ if a == b => None,
            _ => Some(format!("{path}: {a} != {b}")),
        }
    }
    walk(a, b, &mut String::new())
}
