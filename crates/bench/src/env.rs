//! The benchmark environment: both stand-ins in this process (with realistic latencies), the
//! fleet seeded straight into the stand-in store, and the real `acrpull` binary as a child
//! process whose memory and CPU are read from `/proc`. The API server enforces `deploy/`'s
//! RBAC and admission policies and the controller runs as its ServiceAccount, as in a cluster.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use azure_standin::AzureStandIn;
use kube_standin::{Action, Fault, StandIn};

use crate::workload::{self, Workload};

const CRDS: [&str; 2] = [
    include_str!("../../../deploy/crds/acrpullbindings.acrpull.microsoft.com.yaml"),
    include_str!("../../../deploy/crds/acrpullbindings.msi-acrpull.microsoft.com.yaml"),
];
/// The controller's ServiceAccount and RBAC, and its admission policies: the controller runs
/// as in a cluster, so every request pays for RBAC and the policies' CEL as it would there.
const RBAC: &str = include_str!("../../../deploy/rbac.yaml");
const ADMISSION: &str = include_str!("../../../deploy/admission.yaml");
const CONTROLLER_NAMESPACE: &str = "acrpull-system";

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How the controller is started.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub bin: PathBuf,
    pub extra_args: Vec<String>,
    /// Run as the controller's ServiceAccount under deploy/'s RBAC and admission policies
    /// (the default). `false` runs it as the admin with no policies, as every figure recorded
    /// before the enforcement work was: the switch separates the stand-in's cost of
    /// authorization and CEL from the controller's.
    pub enforcement: bool,
    /// Serve `/debug` on the metrics port (no `--debug-bind-address`), as controllers built
    /// before the tenancy work did: lets the bench measure an older build on today's rig.
    pub debug_on_metrics_port: bool,
}

pub struct Env {
    pub kube: kube_standin::Handle,
    pub azure: azure_standin::Handle,
    pub dir: PathBuf,
    /// The controller's: its ServiceAccount's token, under deploy/'s RBAC and policies.
    pub kubeconfig: PathBuf,
    pub metrics_port: u16,
    pub probe_port: u16,
    /// `--debug-bind-address` (loopback), where `/debug/bindings` is served.
    pub debug_port: u16,
    pub controller: ControllerOptions,
    child: Option<Child>,
    starts: u32,
}

impl Env {
    /// Both stand-ins, the CRDs, namespaces and ServiceAccounts of the fleet (no bindings yet).
    pub async fn start(
        w: &Workload,
        controller: ControllerOptions,
        acr_access_secs: Option<u64>,
        dir: &Path,
    ) -> Result<Env> {
        // Large enough that a watch never falls out of the window while 10,000 objects are
        // created at once: a forced relist would measure the stand-in, not the controller.
        let kube = StandIn::builder()
            .watch_cache_size(w.n * 20 + 10_000)
            .start()
            .await
            .context("kube stand-in")?;
        for crd in CRDS {
            kube.apply_yaml_checked(crd).await.context("CRD")?;
        }
        kube.apply_yaml_checked(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {CONTROLLER_NAMESPACE}\n"
        ))
        .await?;
        kube.apply_yaml_checked(RBAC)
            .await
            .context("deploy/rbac.yaml")?;
        if controller.enforcement {
            kube.apply_yaml_checked(ADMISSION)
                .await
                .context("deploy/admission.yaml")?;
        }
        for o in w.namespace_objects() {
            kube.apply(o)?;
        }
        for o in w.service_account_objects() {
            kube.apply(o)?;
        }
        // Every API call of the controller costs 1–2 ms, as on a real (busy) API server.
        // Watches are left alone: their latency is the event delivery, not a round trip.
        let mut fault = Fault::new(Action::Latency {
            ms: workload::API_MS.0,
            jitter_ms: workload::API_MS.1,
        })
        .id("api-latency");
        for verb in ["get", "list", "create", "update", "patch", "delete"] {
            fault = fault.verb(verb);
        }
        kube.faults().add(fault);
        let azure = AzureStandIn::builder()
            .config(workload::azure_config(
                &kube.issuer(),
                kube.jwks(),
                w,
                acr_access_secs,
            ))
            .start()
            .await
            .context("azure stand-in")?;
        std::fs::create_dir_all(dir)?;
        let kubeconfig = dir.join("kubeconfig");
        if controller.enforcement {
            let token = kube.service_account_token(
                CONTROLLER_NAMESPACE,
                "acrpull",
                Duration::from_secs(24 * 3600),
            )?;
            kube.write_kubeconfig_for_token(&kubeconfig, &token)?;
        } else {
            kube.write_kubeconfig(&kubeconfig)?;
        }
        let metrics_port = free_port()?;
        Ok(Env {
            kube,
            azure,
            dir: dir.to_path_buf(),
            kubeconfig,
            metrics_port,
            probe_port: free_port()?,
            debug_port: if controller.debug_on_metrics_port {
                metrics_port
            } else {
                free_port()?
            },
            controller,
            child: None,
            starts: 0,
        })
    }

    /// Create every binding straight in the store (no HTTP), so creation is not the
    /// bottleneck. Returns the wall-clock time of the first create.
    pub fn create_bindings(&self, w: &Workload) -> Result<jiff::Timestamp> {
        let first = jiff::Timestamp::now();
        for b in &w.bindings {
            self.kube.apply(b.to_object())?;
        }
        Ok(first)
    }

    fn args(&self) -> Result<Vec<String>> {
        let ca = self.dir.join("azure-ca.pem");
        self.azure.write_ca(&ca)?;
        let https = self.azure.https_addr();
        let mut resolve = vec![format!("login.microsoftonline.com={https}")];
        for r in 0..workload::REGISTRIES {
            resolve.push(format!("{}={https}", workload::registry_host(r)));
        }
        let mut args = vec![
            format!("--metrics-bind-address=127.0.0.1:{}", self.metrics_port),
            format!("--health-probe-bind-address=127.0.0.1:{}", self.probe_port),
            format!("--imds-endpoint={}", self.azure.imds_url()),
            format!("--azure-resolve={}", resolve.join(",")),
            format!("--azure-ca-file={}", ca.display()),
            "--log-level=info".into(),
        ];
        if !self.controller.debug_on_metrics_port {
            args.push(format!(
                "--debug-bind-address=127.0.0.1:{}",
                self.debug_port
            ));
        }
        args.extend(self.controller.extra_args.iter().cloned());
        Ok(args)
    }

    /// Start the controller; returns the instant it was spawned.
    pub fn spawn(&mut self) -> Result<Instant> {
        if !self.controller.bin.is_file() {
            bail!(
                "acrpull binary not found at {} (build it: cargo build --release -p acrpull, or pass --acrpull-bin)",
                self.controller.bin.display()
            );
        }
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("acrpull-{}.log", self.starts)))?;
        let args = self.args()?;
        let started = Instant::now();
        let child = Command::new(&self.controller.bin)
            .args(&args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("ACR_SERVER")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.controller.bin.display()))?;
        self.child = Some(child);
        Ok(started)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the controller has exited (an early crash must fail the run, not hang it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM and wait for the exit (the controller's graceful path).
    pub async fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("acrpull did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let client = reqwest::Client::new();
        match client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(10))
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

    /// Poll `/readyz` until 200; returns when it answered.
    pub async fn wait_readyz(&mut self, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.http_get(self.probe_port, "/readyz").await.0 == 200 {
                return Ok(Instant::now());
            }
            if let Some(status) = self.exited() {
                bail!("acrpull exited ({status}) before it was ready");
            }
            if Instant::now() > deadline {
                bail!("acrpull not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Peak RSS (VmHWM) and current RSS of the controller, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let Some(pid) = self.pid() else {
            return (0, 0);
        };
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// CPU seconds (user + system) the controller has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.pid().map(cpu_seconds_of).unwrap_or(0.0)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("acrpull-{}.log", self.starts))
    }

    /// Fails when the API server refused the controller anything (RBAC or an admission
    /// policy of deploy/): a benchmark of a controller that cannot do its work measures
    /// nothing.
    pub fn check_not_refused(&self) -> Result<()> {
        let refused: Vec<String> = self
            .kube
            .requests()
            .into_iter()
            .filter(|r| r.user_agent.starts_with("acrpull/") && r.refused())
            .map(|r| format!("{} {} {} {}", r.status, r.verb, r.path, r.denied_by_policy))
            .collect();
        if !refused.is_empty() {
            bail!(
                "the API server refused acrpull {} request(s) (deploy/rbac.yaml, deploy/admission.yaml): {:?}",
                refused.len(),
                &refused[..refused.len().min(10)]
            );
        }
        Ok(())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kube.shutdown();
    }
}

/// utime + stime of a process from `/proc/<pid>/stat`, in seconds.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; fields after the closing parenthesis are fixed.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) as f64 / clock_ticks() as f64,
        _ => 0.0,
    }
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}
