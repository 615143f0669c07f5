//! Shared harness for tests that run the real `acrpull` binary against both stand-ins: the
//! stand-in Kubernetes API server and the stand-in Azure (IMDS, Entra, registries over HTTPS
//! with a generated CA). Registry and Entra host names stay realistic (`demo.azurecr.io`); the
//! controller reaches them through `--azure-resolve`, so TLS verification and the
//! allowed-suffix check stay on, as in production.
//!
//! The API server enforces what a cluster with `deploy/` installed enforces: the CRDs (schemas
//! and CEL rules), the RBAC of `deploy/rbac.yaml` and the admission policies of
//! `deploy/admission.yaml` (fail-closed), all installed through the API as `kubectl apply`
//! would ([`install_deploy`]). The controller runs with its own ServiceAccount's token
//! (`system:serviceaccount:acrpull-system:acrpull`), never as the admin; fixtures that create
//! what the controller may not (bindings, namespaces, ServiceAccounts) use the admin handle.
//! When an [`Env`] goes away at the end of a passing test it asserts that no request of the
//! controller was refused — no 401, no 403 (RBAC or policy), no admission denial — so a missing
//! RBAC verb or a policy that denies a legitimate request fails the test that made it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use azure_standin::{
    AzureStandIn, Config, FederatedCredential, Identity, IdentityKind, OidcIssuer, Registry,
    RoleAssignment, Sku, Tenant,
};
use kube_standin::StandIn;
use serde_json::{json, Value};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const MI_CLIENT: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub const MI_RESOURCE: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-pull";
pub const NOROLE_CLIENT: &str = "aaaaaaaa-0000-4000-8000-000000000002";
pub const WI_CLIENT: &str = "aaaaaaaa-0000-4000-8000-000000000003";
pub const REGISTRY: &str = "demo.azurecr.io";
pub const SA_AUDIENCE: &str = "api://AzureCRTokenExchange";
pub const V1: &str = "msi-acrpull.microsoft.com/v1beta1";
pub const V2: &str = "acrpull.microsoft.com/v1beta2";

/// The controller's namespace and ServiceAccount user, as `deploy/` installs them.
pub const CONTROLLER_NAMESPACE: &str = "acrpull-system";
pub const CONTROLLER_USER: &str = "system:serviceaccount:acrpull-system:acrpull";

/// What `kubectl apply -k deploy/` installs that the API server itself acts on, in order: the
/// CRDs, then RBAC (with the controller's ServiceAccount), then the admission policies.
pub fn deploy_manifests() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("deploy/crds"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    files.push(root.join("deploy/rbac.yaml"));
    files.push(root.join("deploy/admission.yaml"));
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f.display().to_string(), text)
        })
        .collect()
}

/// Install `deploy/`'s CRDs, RBAC and admission policies into `kube` through the API as the
/// admin, as `kubectl apply --server-side` would (validated, defaulted, admitted), into the
/// namespace `acrpull-system`; returns a token of the controller's ServiceAccount (24 h).
pub async fn install_deploy(kube: &kube_standin::Handle) -> String {
    kube.apply_yaml_checked(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {CONTROLLER_NAMESPACE}\n"
    ))
    .await
    .expect("namespace acrpull-system");
    for (file, text) in deploy_manifests() {
        kube.apply_yaml_checked(&text)
            .await
            .unwrap_or_else(|e| panic!("kubectl apply {file}: {e}"));
    }
    kube.service_account_token(
        CONTROLLER_NAMESPACE,
        "acrpull",
        Duration::from_secs(24 * 3600),
    )
    .expect("a token of acrpull-system/acrpull")
}

/// Every request of an acrpull controller (its `User-Agent`, `acrpull/<version> (<id>)`) that
/// the API server refused for lack of permission — 401, 403 (RBAC, or an admission policy
/// whose reason is Forbidden) — or that an admission policy denied with any status; requests
/// a test's injected fault answered are not the server's verdict and are left out. With
/// `as_service_account`, also every such request made as anyone but a ServiceAccount
/// `acrpull` (the admin, or nobody). Requests a test makes itself as the controller's
/// ServiceAccount (hostile ones, with another user agent) are not the controller's.
pub fn controller_refusals(kube: &kube_standin::Handle, as_service_account: bool) -> Vec<String> {
    let is_controller_sa =
        |u: &str| u.starts_with("system:serviceaccount:") && u.ends_with(":acrpull");
    kube.requests()
        .into_iter()
        .filter(|r| r.user_agent.starts_with("acrpull/"))
        .filter(|r| r.faults.is_empty())
        .filter_map(|r| {
            let what = format!(
                "{} {} {}{} by {:?} ({})",
                r.status,
                r.verb,
                r.path,
                if r.query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", r.query)
                },
                r.user,
                r.user_agent
            );
            if !r.denied_by_policy.is_empty() {
                Some(format!(
                    "{what}: denied by ValidatingAdmissionPolicy {}",
                    r.denied_by_policy
                ))
            } else if r.refused() {
                Some(format!("{what}: refused"))
            } else if as_service_account && !is_controller_sa(&r.user) {
                Some(format!(
                    "{what}: not made as the controller's ServiceAccount"
                ))
            } else {
                None
            }
        })
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn identity(name: &str, client: &str, object: &str, kind: IdentityKind) -> Identity {
    Identity {
        name: name.into(),
        client_id: client.into(),
        object_id: object.into(),
        resource_id: None,
        tenant: TENANT.into(),
        kind,
        assigned_to_vm: true,
    }
}

fn role(identity: &str, repository: &str, actions: &[&str]) -> RoleAssignment {
    RoleAssignment {
        identity: identity.into(),
        registry: REGISTRY.into(),
        repository: repository.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

/// Identities: `mi-pull` (managed, AcrPull on app and base), `mi-norole` (managed, no role),
/// `app-wi` (federated with `team-a/federated` of the kube stand-in's issuer).
pub fn azure_config(issuer: &str, jwks: Value) -> Config {
    let mut mi = identity(
        "mi-pull",
        MI_CLIENT,
        "bbbbbbbb-0000-4000-8000-000000000001",
        IdentityKind::Managed,
    );
    mi.resource_id = Some(MI_RESOURCE.into());
    Config {
        tenants: vec![Tenant {
            id: TENANT.into(),
            domains: vec![],
        }],
        identities: vec![
            mi,
            identity(
                "mi-norole",
                NOROLE_CLIENT,
                "bbbbbbbb-0000-4000-8000-000000000002",
                IdentityKind::Managed,
            ),
            identity(
                "app-wi",
                WI_CLIENT,
                "bbbbbbbb-0000-4000-8000-000000000003",
                IdentityKind::App,
            ),
        ],
        federated_credentials: vec![FederatedCredential {
            identity: "app-wi".into(),
            issuer: issuer.into(),
            subject: "system:serviceaccount:team-a:federated".into(),
            audiences: vec![SA_AUDIENCE.into()],
        }],
        registries: vec![Registry {
            host: REGISTRY.into(),
            sku: Sku::Premium,
            authentication_as_arm: true,
            ops_per_minute: None,
            tenant: None,
            upstream: None,
        }],
        role_assignments: vec![
            role("mi-pull", "app", &["pull"]),
            role("mi-pull", "base", &["pull"]),
            role("app-wi", "app", &["pull"]),
        ],
        oidc_issuers: vec![OidcIssuer {
            issuer: issuer.into(),
            jwks,
        }],
        ..Config::default()
    }
}

pub struct Env {
    pub kube: kube_standin::Handle,
    pub azure: azure_standin::Handle,
    pub dir: tempfile::TempDir,
    /// The admin's kubeconfig (kubectl and helm in tests).
    pub kubeconfig: PathBuf,
    /// The controller's kubeconfig: its ServiceAccount's token (the admin's when
    /// `Options::install_deploy` is off).
    pub controller_kubeconfig: PathBuf,
    /// Whether `deploy/` was installed (so the controller must run as its ServiceAccount and
    /// never be refused).
    pub enforced: bool,
    /// The controller's ServiceAccount token (with `Options::install_deploy`).
    pub controller_token: Option<String>,
    pub metrics_port: u16,
    pub probe_port: u16,
    /// `--debug-bind-address` (loopback): where `/debug/*` is served.
    pub debug_port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// Registry hosts of the Azure stand-in (resolved to it for the controller).
    registries: Vec<String>,
}

pub struct Options {
    pub extra_args: Vec<String>,
    pub spawn: bool,
    /// Changes to the Azure stand-in's configuration (e.g. another registry); every registry
    /// host it then holds is resolved to the stand-in for the controller.
    pub azure: Option<fn(&mut Config)>,
    /// Leave acrpull's CRDs out (a test installs others, e.g. the old controller's); only
    /// with `install_deploy` off.
    pub skip_crds: bool,
    /// Install `deploy/`'s CRDs, RBAC and admission policies and run the controller as its
    /// ServiceAccount (the default). Off: only the CRDs, everything else is the test's (a
    /// test that installs with helm), and the controller runs as the admin.
    pub install_deploy: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            extra_args: vec![],
            spawn: true,
            azure: None,
            skip_crds: false,
            install_deploy: true,
        }
    }
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube = StandIn::builder().start().await.expect("kube stand-in");
        assert!(
            !(opts.install_deploy && opts.skip_crds),
            "skip_crds needs install_deploy: false (deploy/ includes the CRDs)"
        );
        let token = if opts.install_deploy {
            Some(install_deploy(&kube).await)
        } else {
            let crds =
                std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds")).unwrap();
            for f in crds.filter(|_| !opts.skip_crds) {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
                kube.apply_yaml_checked(&text).await.expect("CRD applies");
            }
            None
        };
        for ns in ["team-a", "team-b"] {
            kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .unwrap();
        }
        let mut config = azure_config(&kube.issuer(), kube.jwks());
        if let Some(change) = opts.azure {
            change(&mut config);
        }
        let registries: Vec<String> = config.registries.iter().map(|r| r.host.clone()).collect();
        let azure = AzureStandIn::builder()
            .config(config)
            .start()
            .await
            .expect("azure stand-in");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).unwrap();
        let controller_kubeconfig = match &token {
            Some(token) => {
                let path = dir.path().join("acrpull.kubeconfig");
                kube.write_kubeconfig_for_token(&path, token).unwrap();
                path
            }
            None => kubeconfig.clone(),
        };
        let mut env = Env {
            kube,
            azure,
            kubeconfig,
            controller_kubeconfig,
            enforced: token.is_some(),
            controller_token: token.clone(),
            metrics_port: free_port(),
            probe_port: free_port(),
            debug_port: free_port(),
            log: dir.path().join("acrpull.log"),
            dir,
            child: None,
            registries,
        };
        if opts.spawn {
            env.spawn(&opts.extra_args);
        }
        env
    }

    /// The controller's command line against these stand-ins.
    pub fn args(&self) -> Vec<String> {
        let ca = self.dir.path().join("azure-ca.pem");
        self.azure.write_ca(&ca).unwrap();
        let https = self.azure.https_addr();
        vec![
            format!("--metrics-bind-address=127.0.0.1:{}", self.metrics_port),
            format!("--health-probe-bind-address=127.0.0.1:{}", self.probe_port),
            format!("--debug-bind-address=127.0.0.1:{}", self.debug_port),
            format!("--imds-endpoint={}", self.azure.imds_url()),
            format!(
                "--azure-resolve={},login.microsoftonline.com={https}",
                self.registries
                    .iter()
                    .map(|r| format!("{r}={https}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!("--azure-ca-file={}", ca.display()),
            "--log-level=info,acrpull=debug".into(),
        ]
    }

    pub fn spawn(&mut self, extra: &[String]) {
        let mut args = self.args();
        args.extend(extra.iter().cloned());
        self.child = Some(self.command(&args, &self.log));
    }

    /// Like [`Env::spawn`], but a flag in `extra` replaces the harness's own value of that flag
    /// (e.g. `--log-level=trace`) instead of being passed twice.
    pub fn spawn_overriding(&mut self, extra: &[String]) {
        let args = overriding(self.args(), extra);
        self.child = Some(self.command(&args, &self.log));
    }

    /// A controller process named `name` (its log is `<dir>/<name>.log`, returned) with its own
    /// probe and metrics ports; flags in `extra` replace the harness's values. Not owned by
    /// the `Env`: the caller kills and reaps it.
    pub fn replica(&self, name: &str, extra: &[String]) -> (Child, PathBuf) {
        let mut own = vec![
            format!("--metrics-bind-address=127.0.0.1:{}", free_port()),
            format!("--health-probe-bind-address=127.0.0.1:{}", free_port()),
            format!("--debug-bind-address=127.0.0.1:{}", free_port()),
        ];
        own.extend(extra.iter().cloned());
        let args = overriding(self.args(), &own);
        let log = self.dir.path().join(format!("{name}.log"));
        (self.command(&args, &log), log)
    }

    fn command(&self, args: &[String], log: &std::path::Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_acrpull"))
            .args(args)
            .env("KUBECONFIG", &self.controller_kubeconfig)
            .env_remove("ACR_SERVER")
            // The test runner's own pod (CI in Kubernetes) must not name every replica.
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("acrpull starts")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("spawned")
    }

    /// Send SIGTERM and wait for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("spawned");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "acrpull did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let client = reqwest::Client::new();
        match client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => {
                let code = r.status().as_u16();
                (code, r.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    pub fn create(&self, obj: Value) -> Value {
        self.kube.apply(obj).expect("apply")
    }

    /// Wait for a binding's Ready condition to be `want` ("True"/"False").
    pub async fn wait_ready(&self, api_version: &str, ns: &str, name: &str, want: &str) -> Value {
        let got = self
            .kube
            .wait_for(
                api_version,
                "AcrPullBinding",
                ns,
                name,
                |o| {
                    o.and_then(|o| o["status"]["conditions"].as_array().cloned())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == want)
                        })
                },
                Duration::from_secs(60),
            )
            .await;
        match got {
            Ok(Some(v)) => v,
            other => panic!(
                "{api_version} {ns}/{name} never had Ready={want}: {other:?}\nbinding: {:#?}\nlogs:\n{}",
                self.kube.get(api_version, "AcrPullBinding", ns, name),
                self.logs()
            ),
        }
    }

    pub async fn wait_gone(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        if self
            .kube
            .wait_for(
                api_version,
                kind,
                ns,
                name,
                |o| o.is_none(),
                Duration::from_secs(60),
            )
            .await
            .is_err()
        {
            panic!("{kind} {ns}/{name} still exists\nlogs:\n{}", self.logs());
        }
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.kube.get("v1", "Secret", ns, name)
    }

    pub fn service_account(&self, ns: &str, name: &str) -> Option<Value> {
        self.kube.get("v1", "ServiceAccount", ns, name)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // At the end of a test that passed: the API server refused the controller nothing.
        if self.enforced && !std::thread::panicking() {
            let refused = controller_refusals(&self.kube, true);
            assert!(
                refused.is_empty(),
                "the API server refused the controller (RBAC: deploy/rbac.yaml, policies: \
                 deploy/admission.yaml):\n{}\nlogs:\n{}",
                refused.join("\n"),
                self.logs()
            );
        }
    }
}

pub fn sa(ns: &str, name: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": ns, "annotations": annotations}})
}

/// The ServiceAccount `federated` in `ns`, annotated for workload identity with the app
/// registration the Azure stand-in federates (`WI_CLIENT` in `TENANT`).
pub fn federated_sa(ns: &str) -> Value {
    sa(
        ns,
        "federated",
        json!({"azure.workload.identity/client-id": WI_CLIENT,
               "azure.workload.identity/tenant-id": TENANT}),
    )
}

pub fn v2_managed(ns: &str, name: &str, sa: &str, scope: &str) -> Value {
    json!({"apiVersion": V2, "kind": "AcrPullBinding",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"acr": {"server": REGISTRY, "scope": scope, "environment": "PublicCloud"},
                    "auth": {"managedIdentity": {"clientID": MI_CLIENT}},
                    "serviceAccountName": sa}})
}

/// The pull secret's `.dockerconfigjson`, decoded.
pub fn docker_config(secret: &Value) -> Value {
    use base64::Engine;
    let b64 = secret["data"][".dockerconfigjson"]
        .as_str()
        .expect("dockerconfigjson");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

pub fn pull_secrets(sa: &Value) -> Vec<String> {
    sa["imagePullSecrets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `base` with every flag that `extra` sets replaced by `extra`'s value.
fn overriding(mut base: Vec<String>, extra: &[String]) -> Vec<String> {
    let flag = |a: &str| a.split('=').next().unwrap_or(a).to_string();
    let overridden: Vec<String> = extra.iter().map(|a| flag(a)).collect();
    base.retain(|a| !overridden.contains(&flag(a)));
    base.extend(extra.iter().cloned());
    base
}
