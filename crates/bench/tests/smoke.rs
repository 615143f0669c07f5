//! End-to-end smoke run of `acrpull-bench --quick` (N=200) against the real controller binary,
//! asserting the invariants that must hold at any N (Azure calls at the minimum, nothing when
//! idle or after a restart, reconciles and API requests per binding under their limits). No
//! wall-clock thresholds: those belong in BENCHMARKS.md, not in a test on a shared machine.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The acrpull binary next to the bench's (`cargo test --workspace` builds it there); built on
/// demand when this test runs alone.
fn acrpull_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_acrpull-bench"));
    let bin = bench.with_file_name("acrpull");
    if !bin.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "acrpull", "--bin", "acrpull"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building acrpull failed");
    }
    bin
}

/// Run the bench with `args`, its report and controller logs in a temporary directory;
/// returns its standard output and its report.
fn run_bench(args: &[&OsStr]) -> (String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_acrpull-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (stdout, report)
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

#[test]
fn quick_run_meets_the_behavioural_invariants() {
    let (stdout, report) = run_bench(&[
        OsStr::new("--quick"),
        // The refresh phase doubles the run time in a debug build; `--quick` by hand covers it.
        OsStr::new("--no-refresh"),
        OsStr::new("--acrpull-bin"),
        acrpull_bin().as_os_str(),
    ]);
    assert!(stdout.contains("model of the old algorithm"), "{stdout}");
    let size = &report["sizes"][0];
    let n = u(&size["n"]);
    assert_eq!(n, 200);
    for run in size["runs"].as_array().unwrap() {
        let c = &run["convergence"];
        assert_eq!(u(&c["ready"]), n, "every binding Ready");
        let (azure, min) = (&c["azure"], &c["minimum"]);
        for hop in ["imds", "entra_token", "acr_exchange", "acr_token"] {
            assert_eq!(
                u(&azure[hop]),
                u(&min[hop]),
                "{hop}: Azure calls must equal the minimum (one per distinct key)"
            );
        }
        assert!(
            u(&min["entra_token"]) > 0,
            "the workload covers workload identity"
        );
        assert_eq!(u(&azure["throttled_429"]), 0, "never throttled by Azure");
        // Behaviour, not time: the controller's own work per binding. Events caused by its own
        // writes wake no pass, so a new binding costs about one pass; and its API requests
        // are a finalizer, a Secret, a status and a share of one ServiceAccount patch.
        let reconciles = c["reconciles_per_binding"].as_f64().unwrap();
        assert!(
            reconciles <= 1.5,
            "{reconciles} reconciles per binding (≤ 1.5)\n{stdout}"
        );
        let requests = c["requests_per_binding_excluding_events"].as_f64().unwrap();
        assert!(
            requests <= 4.0,
            "{requests} API requests per binding excluding Events (≤ 4)\n{stdout}"
        );
        let steady = &run["steady"];
        assert_eq!(u(&steady["azure"]["total"]), 0, "no Azure calls when idle");
        assert_eq!(u(&steady["api"]["writes"]), 0, "no API writes when idle");
        let restart = &run["restart"];
        assert_eq!(
            u(&restart["azure"]["total"]),
            0,
            "a restart with valid tokens calls Azure zero times"
        );
    }
    // `--no-refresh`: the refresh phase is not part of this run (the soak tests cover
    // refreshes under faults; `scripts/bench.sh --quick` measures smoothness).
    assert!(size["refresh"].is_null(), "{}", size["refresh"]);
}

/// `acrpull-kube-floor` (the kube-rs floor quoted in BENCHMARKS.md) must send the traffic it
/// claims to: every binding Ready, with acrpull's requests per binding (a finalizer, a Secret,
/// a status, a share of one ServiceAccount patch, and one Event), so its CPU and memory are
/// the cost of that traffic and nothing less.
#[test]
fn the_kube_floor_sends_the_controllers_requests() {
    let (stdout, report) = run_bench(&[
        OsStr::new("--converge-only"),
        OsStr::new("--n"),
        OsStr::new("200"),
        OsStr::new("--runs"),
        OsStr::new("1"),
        OsStr::new("--acrpull-bin"),
        OsStr::new(env!("CARGO_BIN_EXE_acrpull-kube-floor")),
    ]);
    let c = &report["200"][0];
    assert_eq!(u(&c["ready"]), 200, "every binding Ready\n{stdout}");
    let by = &c["api"]["by_verb_resource"];
    for write in [
        "patch acrpullbindings",
        "create secrets",
        "patch acrpullbindings/status",
        "create events",
    ] {
        assert_eq!(u(&by[write]), 200, "{write}: one per binding\n{stdout}");
    }
    // Two bindings per ServiceAccount at N=200: one batched patch for both.
    assert_eq!(u(&by["patch serviceaccounts"]), 100, "{stdout}");
    assert_eq!(u(&c["api"]["conflicts_409"]), 0);
    assert_eq!(c["reconciles_per_binding"].as_f64().unwrap(), 1.0);
    assert_eq!(u(&c["azure"]["total"]), 0, "the floor asks Azure nothing");
}
