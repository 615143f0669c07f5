//! `acrpull-sandbox`: see acrpull do its job on a laptop, without Azure or a cluster.
//!
//! It starts the stand-in Kubernetes API server (CRDs applied, namespace `demo` with two
//! ServiceAccounts), the stand-in Azure (IMDS, Entra, `demo.azurecr.io` and
//! `second.azurecr.io` over HTTPS with a generated CA), applies the example bindings from
//! `examples/`, runs the real `acrpull` binary against them, writes a kubeconfig for kubectl and
//! prints a live table of the bindings until Ctrl-C. `docs/sandbox.md` is the walkthrough.

mod controller;
mod fault;
mod setup;
mod table;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use azure_standin::{AzureStandIn, FaultRule};
use clap::Parser;
use kube_standin::StandIn;
use serde_json::{json, Value};

use crate::controller::{Controller, Output};

/// Run acrpull locally against stand-ins for Kubernetes and Azure, and watch it work.
#[derive(Debug, Parser)]
#[command(name = "acrpull-sandbox", version, after_help = AFTER_HELP)]
struct Args {
    /// The acrpull binary to run (default: `acrpull` next to this executable).
    #[arg(long, env = "ACRPULL_BIN")]
    acrpull_bin: Option<PathBuf>,
    /// State directory: kubeconfig, controller log, CA, state file.
    #[arg(long, default_value = "sandbox")]
    dir: PathBuf,
    /// Where to write the kubeconfig (default: <dir>/kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where to write the JSON state file once everything is up (default: <dir>/state.json).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Do not apply the example bindings.
    #[arg(long)]
    no_examples: bool,
    /// Do not start acrpull; print the command line to run it yourself (e.g. under a debugger).
    #[arg(long)]
    no_controller: bool,
    /// Show the controller's logs here, prefixed, instead of writing them to <dir>/acrpull.log.
    #[arg(long)]
    controller_logs: bool,
    /// Port of the Kubernetes stand-in (0 = any free port).
    #[arg(long, default_value_t = 0)]
    kube_port: u16,
    /// Port of the Azure stand-in's IMDS and control API (0 = any free port).
    #[arg(long, default_value_t = 0)]
    imds_port: u16,
    /// Port of the Azure stand-in's HTTPS endpoint: Entra and registries (0 = any free port).
    #[arg(long, default_value_t = 0)]
    https_port: u16,
    /// Port of acrpull's /metrics.
    #[arg(long, default_value_t = 8080)]
    metrics_port: u16,
    /// Port of acrpull's /debug/bindings (on 127.0.0.1, as acrpull serves it by default).
    #[arg(long, default_value_t = 8082)]
    debug_port: u16,
    /// Port of acrpull's /healthz and /readyz.
    #[arg(long, default_value_t = 8081)]
    probe_port: u16,
    /// Lifetime of the ACR tokens the stand-in issues, in seconds. With acrpull's rotation
    /// fraction 0.5 a binding refreshes after half of it.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(10..))]
    token_lifetime: u64,
    /// Inject an Azure fault (repeatable), e.g. `hop=acr_token,status=429,retry-after=5,for=30s`
    /// or `registry=demo.azurecr.io,down,for=60s`. See the syntax below.
    #[arg(long = "fault", value_name = "SPEC", value_parser = parse_fault)]
    faults: Vec<FaultRule>,
    /// Exit 0 once every example binding reached its expected state (valid ones Ready, the
    /// invalid one Failed); exit 1 after --timeout otherwise.
    #[arg(long, conflicts_with = "no_examples")]
    exit_when_ready: bool,
    /// Seconds --exit-when-ready waits.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Stop everything and exit 0 after this many seconds.
    #[arg(long, value_name = "SECS")]
    exit_after: Option<u64>,
}

const AFTER_HELP: &str = "\
Fault SPEC: comma-separated parts.
  scope:   hop=imds|entra_discovery|entra_token|acr_exchange|acr_token|acr_token_get|v2,
           registry=HOST, identity=NAME|CLIENT_ID|RESOURCE_ID
  action:  status=CODE [retry-after=SECS] | throttle [retry-after=SECS] | down (needs registry=,
           drops every connection) | reset | hang | identity-not-found | latency=DURATION
  trigger: for=DURATION and/or after=DURATION (window from start) | next=N | nth=N | p=0.3
  durations: 500ms, 30s, 2m or bare seconds

The walkthrough is docs/sandbox.md.";

fn parse_fault(s: &str) -> Result<FaultRule, String> {
    fault::parse(s).map_err(|e| e.to_string())
}

/// Every path the sandbox writes, made absolute so the printed commands work from anywhere.
struct Paths {
    dir: PathBuf,
    kubeconfig: PathBuf,
    /// The controller's: its ServiceAccount's token (the user's kubeconfig is the admin's).
    controller_kubeconfig: PathBuf,
    state_file: PathBuf,
    /// `<dir>/state.json`, written too when `--state-file` points elsewhere: the walkthrough
    /// reads it, and it must never describe an earlier run.
    default_state_file: PathBuf,
    ca: PathBuf,
    log: PathBuf,
}

impl Paths {
    /// The state files this run writes (one, or two with `--state-file` elsewhere).
    fn state_files(&self) -> Vec<&Path> {
        let mut v = vec![self.state_file.as_path()];
        if self.default_state_file != self.state_file {
            v.push(self.default_state_file.as_path());
        }
        v
    }
}

impl Paths {
    fn new(args: &Args) -> anyhow::Result<Paths> {
        let abs =
            |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
        let dir = abs(&args.dir)?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        Ok(Paths {
            kubeconfig: abs(args
                .kubeconfig
                .as_deref()
                .unwrap_or(&dir.join("kubeconfig")))?,
            state_file: abs(args
                .state_file
                .as_deref()
                .unwrap_or(&dir.join("state.json")))?,
            default_state_file: dir.join("state.json"),
            controller_kubeconfig: dir.join("acrpull.kubeconfig"),
            ca: dir.join("azure-ca.pem"),
            log: dir.join("acrpull.log"),
            dir,
        })
    }
}

/// Write a file atomically (temp file, then rename) so a script waiting for it never reads
/// half of it.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn check_port_free(port: u16, flag: &str) -> anyhow::Result<()> {
    if TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!(
            "port {port} on 127.0.0.1 is already in use (another sandbox or acrpull?); \
             stop that process or pick another port with {flag}"
        );
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,acrpull_sandbox=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("acrpull-sandbox: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// How the main loop ended.
enum Outcome {
    Signal,
    ExitAfter,
    Settled,
    TimedOut,
    ControllerDied(String),
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Both stand-ins and their clients use rustls with ring; another provider must not win.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let paths = Paths::new(&args)?;
    // A stale state file from an earlier run would tell a waiting script "up" too early, or
    // hand the walkthrough's commands the URLs of stand-ins that are gone.
    for f in paths.state_files() {
        let _ = std::fs::remove_file(f);
    }

    let bin = args
        .acrpull_bin
        .clone()
        .unwrap_or_else(controller::default_binary);
    if !args.no_controller {
        if !bin.is_file() {
            return Err(controller::ControllerError::NotFound(bin).into());
        }
        check_port_free(args.metrics_port, "--metrics-port")?;
        check_port_free(args.probe_port, "--probe-port")?;
        check_port_free(args.debug_port, "--debug-port")?;
        if args.metrics_port == args.probe_port
            || args.debug_port == args.metrics_port
            || args.debug_port == args.probe_port
        {
            bail!("--metrics-port, --probe-port and --debug-port must differ");
        }
    }

    // Kubernetes: CRDs, namespace, ServiceAccounts.
    let kube = StandIn::builder()
        .port(args.kube_port)
        .start()
        .await
        .with_context(|| {
            format!(
                "starting the Kubernetes stand-in (--kube-port {})",
                args.kube_port
            )
        })?;
    // deploy/'s CRDs, RBAC and admission policies, through the API as `kubectl apply` sends
    // them, and a token of the controller's ServiceAccount: acrpull runs as in a cluster.
    for crd in setup::CRDS {
        kube.apply_yaml_checked(crd)
            .await
            .context("applying the CRDs")?;
    }
    kube.apply_yaml_checked(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n",
        setup::CONTROLLER_NAMESPACE
    ))
    .await
    .context("creating the controller's namespace")?;
    kube.apply_yaml_checked(setup::RBAC)
        .await
        .context("applying deploy/rbac.yaml")?;
    kube.apply_yaml_checked(setup::ADMISSION)
        .await
        .context("applying deploy/admission.yaml")?;
    let token = kube
        .service_account_token(
            setup::CONTROLLER_NAMESPACE,
            setup::CONTROLLER_SERVICE_ACCOUNT,
            Duration::from_secs(30 * 24 * 3600),
        )
        .context("a token for the controller's ServiceAccount")?;
    write_atomic(
        &paths.controller_kubeconfig,
        kube.kubeconfig_for_token(&token).as_bytes(),
    )?;
    for obj in setup::kube_objects() {
        kube.apply(obj)
            .context("creating namespace demo and its ServiceAccounts")?;
    }

    // Azure, trusting the kube stand-in's ServiceAccount tokens for workload identity.
    let config = setup::azure_config(&kube.issuer(), kube.jwks(), args.token_lifetime)
        .context("building the Azure stand-in configuration")?;
    let azure = AzureStandIn::builder()
        .config(config.clone())
        .imds_bind(SocketAddr::from(([127, 0, 0, 1], args.imds_port)))
        .https_bind(SocketAddr::from(([127, 0, 0, 1], args.https_port)))
        .start()
        .await
        .with_context(|| {
            format!(
                "starting the Azure stand-in (--imds-port {}, --https-port {})",
                args.imds_port, args.https_port
            )
        })?;
    azure
        .write_ca(&paths.ca)
        .with_context(|| format!("writing {}", paths.ca.display()))?;
    for rule in &args.faults {
        azure.faults().add(rule.clone());
    }
    // As the stand-in numbers them (the ids `GET /faults` shows), for the banner and state.
    let faults = azure.faults().list();

    // The kubeconfig defaults to namespace demo, where everything of the sandbox lives.
    let kubeconfig = kube.kubeconfig_yaml().replace(
        "namespace: default",
        &format!("namespace: {}", setup::NAMESPACE),
    );
    write_atomic(&paths.kubeconfig, kubeconfig.as_bytes())?;

    if !args.no_examples {
        for e in setup::EXAMPLES {
            kube.apply_yaml(e.text)
                .with_context(|| format!("applying {}", e.file))?;
        }
    }

    // The controller, exactly as it would run in a cluster but pointed at the stand-ins.
    let https = azure.https_addr();
    let controller_args = vec![
        format!("--metrics-bind-address=127.0.0.1:{}", args.metrics_port),
        format!("--health-probe-bind-address=127.0.0.1:{}", args.probe_port),
        format!("--debug-bind-address=127.0.0.1:{}", args.debug_port),
        format!("--imds-endpoint={}", azure.imds_url()),
        format!(
            "--azure-resolve={}={https},{}={https},{}={https}",
            setup::DEMO_REGISTRY,
            setup::SECOND_REGISTRY,
            setup::ENTRA_HOST
        ),
        format!("--azure-ca-file={}", paths.ca.display()),
        "--ttl-rotation-fraction=0.5".into(),
        "--log-level=info".into(),
    ];
    let controller_env = vec![(
        "KUBECONFIG".to_string(),
        paths.controller_kubeconfig.display().to_string(),
    )];
    let command_line = controller::shell_line(&controller_env, &bin, &controller_args);
    let output = if args.controller_logs {
        Output::Interleaved
    } else {
        Output::File(paths.log.clone())
    };
    let mut child = if args.no_controller {
        None
    } else {
        Some(Controller::spawn(
            &bin,
            &controller_args,
            &controller_env,
            &output,
        )?)
    };

    let mut stop = std::pin::pin!(stop_signal());
    // Up means: the controller's watches have synced (readyz 200).
    if let Some(c) = child.as_mut() {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if controller::http_status(args.probe_port, "/readyz").await == Some(200) {
                break;
            }
            if let Some(status) = c.exited() {
                let log = match &output {
                    Output::File(p) => format!("\nlast lines of {}:\n{}", p.display(), tail(p, 20)),
                    Output::Interleaved => String::new(),
                };
                bail!("acrpull exited during start-up ({status}){log}");
            }
            if Instant::now() > deadline {
                tracing::warn!("acrpull is not ready after 60 s; carrying on (see its log)");
                break;
            }
            tokio::select! {
                _ = &mut stop => {
                    shutdown(child, kube, azure).await;
                    return Ok(ExitCode::SUCCESS);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    let metrics = format!("http://127.0.0.1:{}", args.metrics_port);
    let probes = format!("http://127.0.0.1:{}", args.probe_port);
    let mut state = json!({
        "status": "running",
        "dir": paths.dir,
        "kubeconfig": paths.kubeconfig,
        "sandbox_pid": std::process::id(),
        "kube": {"url": kube.url(), "control_url": format!("{}/_standin", kube.control_url())},
        "azure": {
            "imds_url": azure.imds_url(),
            "control_url": azure.control_url(),
            "https_addr": https.to_string(),
            "ca_file": paths.ca,
            "hosts": [setup::DEMO_REGISTRY, setup::SECOND_REGISTRY, setup::ENTRA_HOST],
        },
        "controller": {
            "running": child.is_some(),
            "pid": child.as_ref().and_then(Controller::id),
            "binary": bin,
            "command": command_line,
            "user": setup::CONTROLLER_USER,
            "kubeconfig": paths.controller_kubeconfig,
            "log_file": match &output { Output::File(p) => json!(p), Output::Interleaved => Value::Null },
            "metrics_url": format!("{metrics}/metrics"),
            "debug_url": format!("http://127.0.0.1:{}/debug/bindings", args.debug_port),
            "healthz_url": format!("{probes}/healthz"),
            "readyz_url": format!("{probes}/readyz"),
        },
        "faults": faults.iter().map(|f| serde_json::to_value(f).unwrap_or(Value::Null)).collect::<Vec<_>>(),
        "setup": setup::describe(&config, !args.no_examples),
    });
    for f in paths.state_files() {
        write_atomic(f, serde_json::to_string_pretty(&state)?.as_bytes())?;
    }
    print_banner(&args, &paths, &state, &command_line);

    // Live progress until a signal, a deadline or the expected states.
    let deadline_ready = started + Duration::from_secs(args.timeout);
    let deadline_exit = args.exit_after.map(|s| started + Duration::from_secs(s));
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            _ = &mut stop => break Outcome::Signal,
            _ = tick.tick() => {}
        }
        let rows = table::rows(&kube);
        let text = table::render(&rows);
        if text != last {
            println!("\n[+{:.1}s]\n{text}", started.elapsed().as_secs_f64());
            last = text;
        }
        if let Some(status) = child.as_mut().and_then(Controller::exited) {
            let log = match &output {
                Output::File(p) => format!("; last lines of {}:\n{}", p.display(), tail(p, 20)),
                Output::Interleaved => String::new(),
            };
            break Outcome::ControllerDied(format!("acrpull exited unexpectedly ({status}){log}"));
        }
        if args.exit_when_ready {
            if table::examples_settled(&rows) {
                break Outcome::Settled;
            }
            if Instant::now() >= deadline_ready {
                break Outcome::TimedOut;
            }
        }
        if deadline_exit.is_some_and(|d| Instant::now() >= d) {
            break Outcome::ExitAfter;
        }
    };
    let code = match outcome {
        Outcome::Signal | Outcome::ExitAfter => ExitCode::SUCCESS,
        Outcome::Settled => {
            println!("\nEvery example binding reached its expected state.");
            ExitCode::SUCCESS
        }
        Outcome::TimedOut => {
            println!(
                "\nNot every example binding reached its expected state within {} s:\n{}",
                args.timeout,
                table::render(&table::rows(&kube))
            );
            ExitCode::FAILURE
        }
        Outcome::ControllerDied(message) => {
            eprintln!("acrpull-sandbox: {message}");
            ExitCode::FAILURE
        }
    };
    // The table cuts long errors; the end of the run shows them whole.
    if let Some(full) = table::full_errors(&table::rows(&kube)) {
        println!("\n{full}");
    }
    // Anything deploy/'s RBAC or admission policies refused the controller: a sandbox that
    // reached its states with refusals on the way does not count as working.
    let refused = setup::controller_refusals(&kube.requests());
    let code = if refused.is_empty() {
        code
    } else {
        eprintln!(
            "\nThe API server refused acrpull {} request(s) (deploy/rbac.yaml, deploy/admission.yaml):\n  {}",
            refused.len(),
            refused.join("\n  ")
        );
        ExitCode::FAILURE
    };
    state["controller"]["refused"] = json!(refused);
    shutdown(child, kube, azure).await;
    // The stand-ins are gone: a state file must not offer their URLs as live.
    state["status"] = json!("stopped");
    state["stopped_at"] = json!(jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string());
    for f in paths.state_files() {
        if let Err(e) = write_atomic(f, serde_json::to_string_pretty(&state)?.as_bytes()) {
            tracing::warn!(error = %e, "Marking the state file stopped failed");
        }
    }
    Ok(code)
}

/// Controller first (so it does not log a storm of connection errors), then the stand-ins.
async fn shutdown(
    child: Option<Controller>,
    kube: kube_standin::Handle,
    azure: azure_standin::Handle,
) {
    println!("\nStopping acrpull and the stand-ins...");
    if let Some(c) = child {
        if let Some(status) = c.stop(Duration::from_secs(30)).await {
            if !status.success() {
                tracing::warn!("acrpull exited with {status}");
            }
        }
    }
    kube.shutdown();
    azure.shutdown().await;
}

fn print_banner(args: &Args, paths: &Paths, state: &Value, command_line: &str) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let kc = paths.kubeconfig.display();
    let c = &state["controller"];
    println!("acrpull sandbox is up.\n");
    println!("  kubeconfig       {kc}");
    println!("  state file       {}", paths.state_file.display());
    println!(
        "  acrpull runs as  {} ({}; RBAC and admission policies of deploy/)",
        s(&c["user"]),
        paths.controller_kubeconfig.display()
    );
    if args.no_controller {
        println!("\n  acrpull is NOT running (--no-controller). Run it yourself, e.g. under a debugger:\n");
        println!("    {command_line}\n");
    } else {
        match &c["log_file"] {
            Value::Null => println!("  controller log   (below, prefixed `acrpull |`)"),
            p => println!("  controller log   {}", s(p)),
        }
    }
    println!("  metrics          {}", s(&c["metrics_url"]));
    println!("  debug            {}", s(&c["debug_url"]));
    println!(
        "  probes           {}  {}",
        s(&c["healthz_url"]),
        s(&c["readyz_url"])
    );
    println!(
        "  kube stand-in    {}  (controls: {})",
        s(&state["kube"]["url"]),
        s(&state["kube"]["control_url"])
    );
    println!(
        "  azure stand-in   IMDS {}  HTTPS {}  (controls: {})",
        s(&state["azure"]["imds_url"]),
        s(&state["azure"]["https_addr"]),
        s(&state["azure"]["control_url"])
    );
    for f in state["faults"].as_array().into_iter().flatten() {
        println!("  fault            {f}");
    }
    println!("\nIn another terminal:\n");
    println!("  export KUBECONFIG={kc}");
    println!("  kubectl get apb -A -w");
    println!("  kubectl describe apb -n demo app-mi");
    println!("  kubectl get secret -n demo acr-pull-app-mi -o yaml");
    println!("  kubectl get acrpullbindings.msi-acrpull.microsoft.com -n demo");
    println!("\nWalkthrough: docs/sandbox.md. Ctrl-C stops everything.");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Args::command().debug_assert();
    }
}
