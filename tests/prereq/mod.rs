//! The real components that tests drive (a registry, skopeo, containerd, helm, ...), found one
//! way everywhere, and the one way a test may run without one: the user opts out by name.
//!
//! A missing component fails the test with the command that installs it. With
//! `ACRPULL_TEST_SKIP=registry,containerd` (any of [`COMPONENTS`]) the tests that need those
//! components print a `SKIPPED` line instead and, when `ACRPULL_TEST_SKIP_LOG` names a file
//! (`scripts/test.sh` sets it), append `component<TAB>test<TAB>reason` to it, so the run's summary
//! can list what did not run and why. `scripts/prereqs.sh` installs the same components.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// Component names `ACRPULL_TEST_SKIP` accepts, each with what it stands for.
pub const COMPONENTS: &[(&str, &str)] = &[
    (
        "registry",
        "a real registry (Debian docker-registry) and skopeo",
    ),
    ("containerd", "containerd, ctr and runc, run as root"),
    (
        "helm",
        "helm v4 and kubectl from the npm layer (.tools/bin)",
    ),
    (
        "image",
        "the container image built from the static release binary",
    ),
    ("prometheus", "Debian's prometheus and promtool"),
];

/// The components the user opted out of, from `ACRPULL_TEST_SKIP` (comma or space separated).
/// An unknown name panics: a typo must not silently run less.
pub fn opted_out_components() -> Vec<String> {
    let raw = std::env::var("ACRPULL_TEST_SKIP").unwrap_or_default();
    let names: Vec<String> = raw
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    for name in &names {
        assert!(
            COMPONENTS.iter().any(|(known, _)| known == name),
            "ACRPULL_TEST_SKIP names an unknown component {name:?}; known: {}",
            COMPONENTS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    names
}

/// Whether `test` must be skipped because the user opted out of one of `components`. When it
/// must, prints the SKIPPED line and records it (see the module doc).
pub fn skipped(test: &str, components: &[&str]) -> bool {
    let opted_out = opted_out_components();
    let Some(component) = components
        .iter()
        .find(|c| opted_out.iter().any(|o| o == *c))
    else {
        return false;
    };
    let reason = format!("ACRPULL_TEST_SKIP includes {component}");
    eprintln!("SKIPPED {test}: {reason}");
    if let Ok(log) = std::env::var("ACRPULL_TEST_SKIP_LOG") {
        if !log.is_empty() {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("ACRPULL_TEST_SKIP_LOG {log}: {e}"));
            writeln!(file, "{component}\t{test}\t{reason}").unwrap();
        }
    }
    true
}

/// The repository root: the first directory above the including crate's manifest that holds
/// `scripts/test.sh` (this module is also included by the stand-in crates' tests).
pub fn repo_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("scripts/test.sh").is_file())
        .unwrap_or(manifest)
}

/// A tool from `$env_var`, else the first of `candidates` that exists; panics with `install`
/// (the exact command) and the opt-out when there is none.
pub fn tool(component: &str, env_var: &str, candidates: &[PathBuf], install: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        let path = PathBuf::from(path);
        assert!(path.exists(), "{env_var}={} does not exist", path.display());
        return path;
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "missing real component {component:?}: none of {candidates:?} exists (or set \
                 {env_var}). Install it: {install}. To run without it, opt out explicitly: \
                 ACRPULL_TEST_SKIP={component}"
            )
        })
}

/// Panics unless the tests run as root (containerd and runc need it).
pub fn require_root(component: &str) {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "component {component:?} needs root (containerd and runc manage namespaces and mounts); \
         run the tests as root, or opt out explicitly: ACRPULL_TEST_SKIP={component}"
    );
}

pub fn docker_registry() -> PathBuf {
    tool(
        "registry",
        "DOCKER_REGISTRY_BIN",
        &["/usr/bin/docker-registry".into()],
        "apt-get install -y docker-registry",
    )
}

pub fn skopeo() -> PathBuf {
    tool(
        "registry",
        "SKOPEO_BIN",
        &["/usr/bin/skopeo".into()],
        "apt-get install -y skopeo",
    )
}

pub fn containerd() -> PathBuf {
    tool(
        "containerd",
        "CONTAINERD_BIN",
        &["/usr/bin/containerd".into()],
        "apt-get install -y containerd runc",
    )
}

pub fn ctr() -> PathBuf {
    tool(
        "containerd",
        "CTR_BIN",
        &["/usr/bin/ctr".into()],
        "apt-get install -y containerd runc",
    )
}

/// The real helm (v4), from scripts/install-tools.sh.
pub fn helm() -> PathBuf {
    tool(
        "helm",
        "ACRPULL_HELM",
        &[repo_root().join(".tools/bin/helm")],
        "scripts/install-tools.sh (needs npm and unzip: apt-get install -y npm unzip)",
    )
}

/// The kubectl of the same npm layer as helm (1.33, with kustomize 5.6).
pub fn layer_kubectl() -> PathBuf {
    tool(
        "helm",
        "ACRPULL_KUBECTL",
        &[repo_root().join(".tools/bin/kubectl")],
        "scripts/install-tools.sh (needs npm and unzip: apt-get install -y npm unzip)",
    )
}

/// Debian's Prometheus server.
pub fn prometheus() -> PathBuf {
    tool(
        "prometheus",
        "PROMETHEUS_BIN",
        &["/usr/bin/prometheus".into()],
        "apt-get install -y prometheus",
    )
}

/// Debian's promtool (in the `prometheus` package).
pub fn promtool() -> PathBuf {
    tool(
        "prometheus",
        "PROMTOOL_BIN",
        &["/usr/bin/promtool".into()],
        "apt-get install -y prometheus",
    )
}

/// The real kubectl: `$ACRPULL_KUBECTL`, else the npm layer's (`.tools/bin`, 1.33), else
/// `/usr/bin/kubectl`. Not optional: the stand-in's conformance is judged by kubectl.
pub fn kubectl() -> PathBuf {
    if let Ok(path) = std::env::var("ACRPULL_KUBECTL") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "ACRPULL_KUBECTL={} does not exist",
            path.display()
        );
        return path;
    }
    let candidates = [
        repo_root().join(".tools/bin/kubectl"),
        PathBuf::from("/usr/bin/kubectl"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "missing kubectl: none of {candidates:?} exists (or set ACRPULL_KUBECTL). Install \
                 it: scripts/install-tools.sh (needs npm and unzip: apt-get install -y npm unzip)"
            )
        })
}
