//! The sandbox end to end: the `acrpull-sandbox` binary with the real (debug) `acrpull`
//! binary, non-interactively (`--exit-when-ready`, state file contents) and through the
//! walkthrough of docs/sandbox.md with the real kubectl.
//!
//! Each test has its own state directory, kubectl cache and controller ports; the stand-ins
//! take ephemeral ports.
//!
//! They run with the sandbox's default two-minute tokens, so a v1beta1 binding whose token is
//! shorter than the old controller's 30-minute buffer is covered too (it refreshes at half
//! its lifetime).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SANDBOX: &str = env!("CARGO_BIN_EXE_acrpull-sandbox");
const LIFETIME: &str = "120";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The `acrpull` binary next to the sandbox's, built on demand (`cargo test --workspace`
/// builds it before running tests; `cargo test -p acrpull-sandbox` alone does not).
fn acrpull_bin() -> PathBuf {
    let bin = Path::new(SANDBOX)
        .parent()
        .expect("target dir")
        .join("acrpull");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "acrpull", "--bin", "acrpull"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building acrpull failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

fn sandbox_cmd(dir: &Path, metrics: u16, probe: u16) -> Command {
    let mut cmd = Command::new(SANDBOX);
    cmd.arg("--dir")
        .arg(dir)
        .arg("--acrpull-bin")
        .arg(acrpull_bin())
        .args(["--metrics-port", &metrics.to_string()])
        .args(["--probe-port", &probe.to_string()])
        .args(["--debug-port", &free_port().to_string()])
        .args(["--token-lifetime", LIFETIME])
        .stdin(Stdio::null());
    cmd
}

fn pid_alive(pid: i64) -> bool {
    // A zombie still has /proc/<pid>; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn wait_pid_gone(pid: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "acrpull (pid {pid}) outlived the sandbox"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exit_when_ready_settles_every_example_and_describes_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("out/state.json");
    let out = sandbox_cmd(&dir.path().join("sb"), free_port(), free_port())
        .arg("--state-file")
        .arg(&state_file)
        .args(["--exit-when-ready", "--timeout", "90"])
        .args(["--fault", "hop=imds,status=500,next=1"])
        .output()
        .expect("sandbox runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("sb/acrpull.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}\nacrpull log:\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Every example binding reached its expected state"));
    // The last table shows the settled states.
    let last = stdout.rsplit("[+").next().unwrap();
    for (name, phase) in [
        ("app-mi", "Ready"),
        ("app-wi", "Ready"),
        ("second-legacy", "Ready"),
        ("lookalike", "Failed"),
    ] {
        assert!(
            last.lines().any(|l| l.contains(name) && l.contains(phase)),
            "{name} not {phase} in:\n{last}"
        );
    }
    assert!(last.contains("is not under an allowed registr"), "{last}");

    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let setup = &state["setup"];
    assert_eq!(setup["namespaces"], serde_json::json!(["demo"]));
    let sas = setup["service_accounts"].as_array().unwrap();
    let sa = |n: &str| {
        sas.iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("SA {n}"))
    };
    assert_eq!(sa("puller")["namespace"], "demo");
    let wi = &sa("wi-puller")["annotations"];
    assert_eq!(
        wi["azure.workload.identity/client-id"],
        "22222222-2222-4222-8222-222222222222"
    );
    assert_eq!(
        wi["azure.workload.identity/tenant-id"],
        "33333333-3333-4333-8333-333333333333"
    );

    let ids = setup["identities"].as_array().unwrap();
    let id = |n: &str| {
        ids.iter()
            .find(|i| i["name"] == n)
            .unwrap_or_else(|| panic!("identity {n}"))
    };
    let mi = id("mi-demo");
    assert_eq!(mi["client_id"], "11111111-1111-4111-8111-111111111111");
    assert!(mi["resource_id"]
        .as_str()
        .unwrap()
        .ends_with("/userAssignedIdentities/mi-demo"));
    assert_eq!(mi["tenant"], "33333333-3333-4333-8333-333333333333");
    let grants = |i: &Value| -> Vec<String> {
        let mut g: Vec<String> = i["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                format!(
                    "{}/{}:{}",
                    g["registry"].as_str().unwrap(),
                    g["repository"].as_str().unwrap(),
                    g["actions"][0].as_str().unwrap()
                )
            })
            .collect();
        g.sort();
        g
    };
    assert_eq!(
        grants(mi),
        [
            "demo.azurecr.io/app:pull",
            "demo.azurecr.io/base:pull",
            "second.azurecr.io/app:pull"
        ]
    );
    let app = id("app-wi");
    assert_eq!(app["client_id"], "22222222-2222-4222-8222-222222222222");
    assert_eq!(
        app["federated_credentials"][0]["subject"],
        "system:serviceaccount:demo:wi-puller"
    );
    assert_eq!(
        app["federated_credentials"][0]["issuer"],
        state["kube"]["url"]
    );
    assert_eq!(grants(app), ["demo.azurecr.io/app:pull"]);
    assert_eq!(
        setup["registries"],
        serde_json::json!(["demo.azurecr.io", "second.azurecr.io"])
    );
    let expects: Vec<(String, String)> = setup["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["expect"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(expects.len(), 4);
    assert!(expects.contains(&("lookalike".into(), "Failed".into())));

    // URLs of both stand-ins and the controller, and the injected fault.
    for url in [
        &state["kube"]["url"],
        &state["kube"]["control_url"],
        &state["azure"]["imds_url"],
        &state["azure"]["control_url"],
    ] {
        assert!(
            url.as_str().unwrap().starts_with("http://127.0.0.1:"),
            "{url}"
        );
    }
    assert!(state["controller"]["metrics_url"]
        .as_str()
        .unwrap()
        .ends_with("/metrics"));
    assert!(state["controller"]["debug_url"]
        .as_str()
        .unwrap()
        .ends_with("/debug/bindings"));
    assert!(state["controller"]["command"]
        .as_str()
        .unwrap()
        .contains("--ttl-rotation-fraction=0.5"));
    assert_eq!(state["faults"][0]["action"]["status"], 500);
    // acrpull ran as its ServiceAccount under deploy/'s RBAC and admission policies, and was
    // refused nothing on the way to those states.
    assert_eq!(
        state["controller"]["user"],
        "system:serviceaccount:acrpull-system:acrpull"
    );
    assert_eq!(state["controller"]["refused"], serde_json::json!([]));
    let kubeconfig =
        std::fs::read_to_string(state["controller"]["kubeconfig"].as_str().unwrap()).unwrap();
    let admin = std::fs::read_to_string(state["kubeconfig"].as_str().unwrap()).unwrap();
    assert_ne!(
        kubeconfig, admin,
        "the controller does not get the admin's kubeconfig"
    );
    // Everything stopped with the sandbox.
    wait_pid_gone(state["controller"]["pid"].as_i64().unwrap());
}

/// A registry taken down with `--fault` keeps its binding from Ready: `--exit-when-ready` gives
/// up after `--timeout`, prints the table and exits 1.
#[test]
fn a_fault_from_the_command_line_keeps_a_binding_from_ready_and_the_timeout_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = sandbox_cmd(&dir.path().join("sb"), free_port(), free_port())
        .args(["--exit-when-ready", "--timeout", "8"])
        .args(["--fault", "registry=second.azurecr.io,down,for=10m"])
        .output()
        .expect("sandbox runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let (_, last) = stdout
        .split_once("Not every example binding reached its expected state within 8 s:")
        .unwrap_or_else(|| panic!("no timeout message in:\n{stdout}"));
    assert!(row(last, "app-mi").contains("Ready"), "{last}");
    let legacy = row(last, "second-legacy");
    assert!(!legacy.contains("Ready"), "{legacy}");
    // The table cut the look-alike's error; the end of the run prints it whole.
    assert!(row(last, "lookalike").ends_with('…'), "{last}");
    assert!(
        last.contains("Errors in full:\n")
            && last.contains("  demo/lookalike (v1beta2): server \"demo.azurecr.io.evil.example\" is not under an allowed registry suffix (azurecr.io, azurecr.us, azurecr.cn); use a registry under one of them or ask the operator to extend --allowed-acr-server-suffixes"),
        "{last}"
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("sb/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["faults"][0]["host"], "second.azurecr.io");
    assert_eq!(state["faults"][0]["action"]["kind"], "reset");
    wait_pid_gone(state["controller"]["pid"].as_i64().unwrap());
}

/// Stops the sandbox (SIGTERM, so it stops the controller too) if a test fails midway.
struct Running {
    child: Option<Child>,
}

impl Running {
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the sandbox did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
    }
}

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
    log: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs")
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}\nacrpull log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The ```sh block of docs/sandbox.md that contains `needle`, to run it as written.
fn doc_block(needle: &str) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/sandbox.md"
    ))
    .expect("docs/sandbox.md");
    doc.split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(needle))
        .unwrap_or_else(|| panic!("no sh block with {needle:?} in docs/sandbox.md"))
        .to_string()
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl runs")
}

fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

#[test]
fn readme_walkthrough_with_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sandbox");
    let state_file = sb.join("state.json");
    let mut running = Running {
        child: Some(
            sandbox_cmd(&sb, free_port(), free_port())
                .stdout(std::fs::File::create(dir.path().join("sandbox.out")).unwrap())
                .stderr(std::fs::File::create(dir.path().join("sandbox.err")).unwrap())
                .spawn()
                .expect("sandbox starts"),
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !state_file.is_file() {
        if let Some(status) = running.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "sandbox exited {status} before it was up:\n{}",
                std::fs::read_to_string(dir.path().join("sandbox.err")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no state file after 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let k = Kubectl {
        kubeconfig: PathBuf::from(state["kubeconfig"].as_str().unwrap()),
        cache: dir.path().join("kube-cache"),
        log: sb.join("acrpull.log"),
    };
    assert_eq!(k.kubeconfig, sb.join("kubeconfig"));

    // 1. The bindings settle; kubectl wait understands the Ready condition.
    let waited = k.ok(&[
        "wait",
        "--for=condition=Ready",
        "apb/app-mi",
        "apb/app-wi",
        "-n",
        "demo",
        "--timeout=90s",
    ]);
    assert!(
        waited.contains("acrpullbinding.acrpull.microsoft.com/app-mi condition met"),
        "{waited}"
    );
    k.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Failed",
        "apb/lookalike",
        "-n",
        "demo",
        "--timeout=60s",
    ]);

    // 2. get apb -A: printer columns, phases.
    let table = k.ok(&["get", "apb", "-A"]);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    for col in ["SERVER", "TARGET", "PHASE", "ERROR"] {
        assert!(table.lines().next().unwrap().contains(col), "{table}");
    }
    let mi = row(&table, "app-mi");
    assert!(
        mi.contains("demo.azurecr.io") && mi.contains("puller") && mi.contains("Ready"),
        "{mi}"
    );
    assert!(row(&table, "app-wi").contains("Ready"));
    let bad = row(&table, "lookalike");
    assert!(
        bad.contains("Failed") && bad.contains("not under an allowed registry suffix"),
        "{bad}"
    );

    // 3. describe: spec, status and the Ready condition.
    let described = k.ok(&["describe", "apb", "-n", "demo", "app-mi"]);
    for needle in [
        "Name:         app-mi",
        "Client ID:",
        "11111111-1111-4111-8111-111111111111",
        "Phase:",
        "Ready",
        "TokenIssued",
        "Token Expiration Time:",
    ] {
        assert!(
            described.contains(needle),
            "{needle:?} not in:\n{described}"
        );
    }

    // 4. The pull secret: a dockerconfigjson for demo.azurecr.io, owned by the binding.
    let secret = k.ok(&[
        "get",
        "secret",
        "-n",
        "demo",
        "acr-pull-app-mi",
        "-o",
        "yaml",
    ]);
    for needle in [
        ".dockerconfigjson:",
        "type: kubernetes.io/dockerconfigjson",
        "acr.microsoft.com/binding: app-mi",
        "acr.microsoft.com/token.expiry:",
        "kind: AcrPullBinding",
    ] {
        assert!(secret.contains(needle), "{needle:?} not in:\n{secret}");
    }
    let auth = k.ok(&[
        "get",
        "secret",
        "-n",
        "demo",
        "acr-pull-app-mi",
        "-o",
        r#"go-template={{index .data ".dockerconfigjson" | base64decode}}"#,
    ]);
    let auth: Value = serde_json::from_str(&auth).unwrap();
    assert_eq!(
        auth["auths"]["demo.azurecr.io"]["username"], "00000000-0000-0000-0000-000000000000",
        "{auth}"
    );
    let sa = k.ok(&[
        "get",
        "sa",
        "-n",
        "demo",
        "puller",
        "-o",
        "jsonpath={.imagePullSecrets[*].name}",
    ]);
    assert_eq!(
        sa,
        "acr-pull-app-mi acr-pull-app-wi second-legacy-msi-acrpull-secret"
    );

    // 5. The v1beta1 binding, listed by its full resource name.
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "acrpullbindings.msi-acrpull.microsoft.com/second-legacy",
        "-n",
        "demo",
        "--timeout=60s",
    ]);
    let legacy = k.ok(&[
        "get",
        "acrpullbindings.msi-acrpull.microsoft.com",
        "-n",
        "demo",
    ]);
    assert!(
        row(&legacy, "second-legacy").contains("second.azurecr.io"),
        "{legacy}"
    );
    k.ok(&[
        "get",
        "secret",
        "-n",
        "demo",
        "second-legacy-msi-acrpull-secret",
    ]);

    // 6. The invalid binding's message, and no Secret for it.
    let error = k.ok(&[
        "get",
        "apb",
        "-n",
        "demo",
        "lookalike",
        "-o",
        "jsonpath={.status.error}",
    ]);
    assert!(
        error.contains("\"demo.azurecr.io.evil.example\" is not under an allowed registry suffix (azurecr.io, azurecr.us, azurecr.cn)"),
        "{error}"
    );
    let missing = k.run(&["get", "secret", "-n", "demo", "acr-pull-lookalike"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));

    // 7. Deleting a binding removes its Secret and its entry in the ServiceAccount.
    let deleted = k.ok(&["delete", "apb", "-n", "demo", "app-wi"]);
    assert!(deleted.contains("deleted"), "{deleted}");
    k.ok(&[
        "wait",
        "--for=delete",
        "secret/acr-pull-app-wi",
        "-n",
        "demo",
        "--timeout=60s",
    ]);
    let sa = k.ok(&[
        "get",
        "sa",
        "-n",
        "demo",
        "puller",
        "-o",
        "jsonpath={.imagePullSecrets[*].name}",
    ]);
    assert_eq!(sa, "acr-pull-app-mi second-legacy-msi-acrpull-secret");

    // 7b. The doc's own commands: a new namespace and a v1beta1 binding without a
    // ServiceAccount name, attached to the namespace's default ServiceAccount.
    let out = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &doc_block("kubectl create namespace team-x"),
        ])
        .env("KUBECONFIG", &k.kubeconfig)
        .env("KUBECACHEDIR", &k.cache)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nacrpull log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&k.log).unwrap_or_default()
    );
    assert!(stdout.contains("namespace/team-x created"), "{stdout}");
    assert!(stdout.ends_with("mine-msi-acrpull-secret"), "{stdout}");

    // 8. The controller's endpoints printed in the state file answer.
    let debug = std::process::Command::new("curl")
        .args(["-sf", state["controller"]["debug_url"].as_str().unwrap()])
        .output();
    if let Ok(out) = debug {
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["leader"], true);
        }
    }

    // 9. SIGTERM stops everything and exits 0.
    let status = running.terminate();
    assert!(status.success(), "{status:?}");
    wait_pid_gone(state["controller"]["pid"].as_i64().unwrap());
    let out = std::fs::read_to_string(dir.path().join("sandbox.out")).unwrap();
    assert!(out.contains("export KUBECONFIG="), "{out}");
    assert!(out.contains("Stopping acrpull and the stand-ins"), "{out}");
}

/// `<dir>/state.json` never describes another run: it is replaced even when `--state-file`
/// points elsewhere and says `stopped` once the run ended, so the walkthrough's fault command
/// fails instead of posting to a dead URL. The banner numbers faults as `GET /faults` does.
#[test]
fn state_file_and_fault_ids_do_not_mislead() {
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sandbox");
    std::fs::create_dir_all(&sb).unwrap();
    // What an earlier run left behind.
    let stale = serde_json::json!({"status": "running", "azure": {"control_url": "http://127.0.0.1:9/_standin"}});
    std::fs::write(sb.join("state.json"), stale.to_string()).unwrap();
    let other = dir.path().join("other.json");
    let mut running = Running {
        child: Some(
            sandbox_cmd(&sb, free_port(), free_port())
                .arg("--state-file")
                .arg(&other)
                .args(["--no-controller", "--no-examples"])
                .args(["--fault", "hop=imds,status=500,nth=1000"])
                .args(["--fault", "hop=acr_token,status=429,retry-after=5,for=30s"])
                .stdout(std::fs::File::create(dir.path().join("sandbox.out")).unwrap())
                .stderr(std::fs::File::create(dir.path().join("sandbox.err")).unwrap())
                .spawn()
                .expect("sandbox starts"),
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !other.is_file() {
        if let Some(status) = running.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "sandbox exited {status}:\n{}",
                std::fs::read_to_string(dir.path().join("sandbox.err")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no state file after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let state = read(&other);
    assert_eq!(state["status"], "running");
    assert_eq!(
        read(&sb.join("state.json")),
        state,
        "the default state file is this run's"
    );
    let control = state["azure"]["control_url"].as_str().unwrap().to_string();
    assert_ne!(control, "http://127.0.0.1:9/_standin");

    // One numbering: the banner, the state file and GET /faults agree.
    let out = std::fs::read_to_string(dir.path().join("sandbox.out")).unwrap();
    let banner: Vec<Value> = out
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("fault"))
        .map(|j| serde_json::from_str(j.trim()).unwrap())
        .collect();
    let listed: Value =
        serde_json::from_slice(&curl(&["-f", &format!("{control}/faults")]).stdout).unwrap();
    let ids = |v: &[Value]| {
        v.iter()
            .map(|f| f["id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&banner), [1, 2], "{out}");
    assert_eq!(ids(listed.as_array().unwrap()), [1, 2], "{listed}");
    assert_eq!(banner, state["faults"].as_array().unwrap().clone());
    for (b, l) in banner.iter().zip(listed.as_array().unwrap()) {
        assert_eq!(b["action"], l["action"]);
        assert_eq!(b["hop"], l["hop"]);
    }

    // The walkthrough's command works while the run is up...
    let snippet = doc_block("sandbox/state.json");
    let run_snippet = || {
        Command::new("bash")
            .args(["-c", &snippet])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("bash runs")
    };
    let live = run_snippet();
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let listed: Value =
        serde_json::from_slice(&curl(&["-f", &format!("{control}/faults")]).stdout).unwrap();
    assert_eq!(ids(listed.as_array().unwrap()), [1, 2, 3], "{listed}");

    // ... and fails once it ended, instead of posting to a dead URL.
    let status = running.terminate();
    assert!(status.success(), "{status:?}");
    for p in [&other, &sb.join("state.json")] {
        let s = read(p);
        assert_eq!(s["status"], "stopped", "{}", p.display());
        assert!(s["stopped_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    let dead = run_snippet();
    assert!(
        !dead.status.success(),
        "the command ran against a stopped sandbox"
    );
}
