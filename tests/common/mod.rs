//! Shared harness for tests that run the real `acrpull` binary against both stand-ins: the
//! stand-in Kubernetes API server (CRDs from `deploy/crds/` applied) and the stand-in Azure
//! (IMDS, Entra, registries over HTTPS with a generated CA). Registry and Entra host names stay
//! realistic (`demo.azurecr.io`); the controller reaches them through `--azure-resolve`, so TLS
//! verification and the allowed-suffix check stay on, as in production.
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
    pub kubeconfig: PathBuf,
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
    /// Leave acrpull's CRDs out (a test installs others, e.g. the old controller's).
    pub skip_crds: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            extra_args: vec![],
            spawn: true,
            azure: None,
            skip_crds: false,
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
        let crds = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds")).unwrap();
        for f in crds.filter(|_| !opts.skip_crds) {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            kube.apply_yaml(&text).expect("CRD applies");
        }
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
        let mut env = Env {
            kube,
            azure,
            kubeconfig,
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
            .env("KUBECONFIG", &self.kubeconfig)
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
