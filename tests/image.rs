//! The container image, built and run for real: `scripts/build-image.sh` assembles it from the
//! static release binary (no Docker, no base image pulled); `skopeo` pushes it to a real
//! registry (Debian `docker-registry`); a private containerd pulls it and runs it with runc the
//! way the Deployment does — uid 65532 from the image, read-only root filesystem, every
//! capability dropped, no new privileges, seccomp — against the stand-ins, until `/readyz`
//! answers and a binding is Ready. One container runs `/acrpull`, the chart's command, the
//! other `/manager`, upstream's; both take the Deployment's arguments from
//! `deploy/deployment.yaml`. SIGTERM then stops each container with exit status 0.
//!
//! Needs the static binary (`scripts/build-static.sh`, which `scripts/test.sh` runs first),
//! `skopeo` and `docker-registry` (component `registry`), and containerd, ctr and runc as root
//! (component `containerd`). A missing one fails the test; `ACRPULL_TEST_SKIP=image` (or
//! `registry`, `containerd`) opts out.

mod common;
mod containerd;
mod manifests;
mod prereq;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use containerd::Containerd;
use manifests::*;
use serde_json::{json, Value};

const TEST: &str = "image::image_builds_pushes_pulls_and_runs_like_the_deployment";
const TAG: &str = "test";
/// The capabilities containerd's default spec grants (Docker's default set).
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn static_binary() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| prereq::repo_root().join("target"));
    let binary = target.join("x86_64-unknown-linux-gnu/release/acrpull");
    assert!(
        binary.exists(),
        "no static release binary at {}: build it with scripts/build-static.sh (scripts/test.sh \
         does), or opt out with ACRPULL_TEST_SKIP=image",
        binary.display()
    );
    binary
}

fn build_image(binary: &Path, out: &Path) -> String {
    let output = Command::new(prereq::repo_root().join("scripts/build-image.sh"))
        .arg("--binary")
        .arg(binary)
        .arg("--out")
        .arg(out)
        .arg("--tag")
        .arg(TAG)
        .output()
        .expect("scripts/build-image.sh runs");
    assert!(
        output.status.success(),
        "scripts/build-image.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(out.join("oci/index.json")).unwrap()
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

fn json_blob(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(layout, digest)).unwrap()
}

/// `tar -tvzf` of a layer blob: one line per entry.
fn list_layer(layout: &Path, digest: &str) -> Vec<String> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let out = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-tvzf")
        .arg(layout.join("blobs/sha256").join(hex))
        .output()
        .expect("tar runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The instructions of deploy/Dockerfile, as (keyword, rest) pairs.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(prereq::repo_root().join("deploy/Dockerfile")).unwrap();
    let mut joined = String::new();
    let mut instructions = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && joined.is_empty()) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            joined.push_str(continued);
            continue;
        }
        joined.push_str(line);
        let (keyword, rest) = joined.split_once(' ').unwrap_or((&joined, ""));
        instructions.push((keyword.to_uppercase(), rest.trim().to_owned()));
        joined.clear();
    }
    instructions
}

/// Kills a process even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `docker-registry serve` without auth on a free loopback port.
fn start_registry(dir: &Path) -> (KillOnDrop, u16) {
    let port = free_port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry-data").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = KillOnDrop(
        Command::new(prereq::docker_registry())
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "registry never listened: {}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// A field of /proc/<pid>/status.
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

#[test]
fn image_layout_is_reproducible_and_matches_the_dockerfile() {
    if prereq::skipped(
        "image::image_layout_is_reproducible_and_matches_the_dockerfile",
        &["image"],
    ) {
        return;
    }
    let binary = static_binary();
    let dir = tempfile::tempdir().unwrap();
    let first = build_image(&binary, &dir.path().join("a"));
    let second = build_image(&binary, &dir.path().join("b"));
    assert_eq!(
        first, second,
        "two builds of the same binary, the same image"
    );

    let layout = dir.path().join("a/oci");
    let index: Value = serde_json::from_str(&first).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        TAG
    );
    let manifest = json_blob(&layout, entry["digest"].as_str().unwrap());
    let config = json_blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer, no base image");

    // The files: /manager is a hard link to /acrpull, root-owned, and nothing else is
    // executable.
    let entries = list_layer(&layout, layers[0]["digest"].as_str().unwrap());
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.ends_with(&format!(" {name}")) || e.contains(&format!(" {name} link to ")))
            .unwrap_or_else(|| panic!("no {name} in the layer: {entries:#?}"))
            .clone()
    };
    assert!(
        find("acrpull").starts_with("-rwxr-xr-x 0/0 "),
        "{entries:#?}"
    );
    assert!(
        find("manager").starts_with("hrwxr-xr-x 0/0 ")
            && find("manager").ends_with("link to acrpull"),
        "{entries:#?}"
    );
    for name in [
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(find(name).starts_with("-rw-r--r-- 0/0 "), "{entries:#?}");
    }
    assert!(find("tmp/").starts_with("drwxrwxrwt 0/0 "), "{entries:#?}");
    // The CA bundle is the Mozilla set of Debian's ca-certificates package, file by file in
    // name order, and nothing else (not this machine's /etc/ssl/certs bundle, which may hold
    // locally added CAs).
    let mozilla = Path::new("/usr/share/ca-certificates/mozilla");
    let mut names: Vec<PathBuf> = std::fs::read_dir(mozilla)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    names.sort();
    assert!(
        !names.is_empty(),
        "no certificates in {}",
        mozilla.display()
    );
    let mut expected = String::new();
    for name in &names {
        expected.push_str(&std::fs::read_to_string(name).unwrap());
        if !expected.ends_with('\n') {
            expected.push('\n');
        }
    }
    let bundle = std::fs::read_to_string(
        dir.path()
            .join("a/rootfs/etc/ssl/certs/ca-certificates.crt"),
    )
    .unwrap();
    assert!(
        bundle == expected,
        "the image's CA bundle is not Debian's Mozilla set ({} certificates, expected {})",
        bundle.matches("BEGIN CERTIFICATE").count(),
        names.len()
    );
    let passwd = std::fs::read_to_string(dir.path().join("a/rootfs/etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");

    // The Dockerfile builds the same image: FROM scratch, the same root filesystem, user,
    // entrypoint and ports.
    let cfg = &config["config"];
    assert_eq!(cfg["User"], "65532:65532");
    assert_eq!(cfg["Entrypoint"], json!(["/acrpull"]));
    let instructions = dockerfile();
    let get = |keyword: &str| -> Vec<String> {
        instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(get("FROM"), ["scratch"]);
    assert_eq!(get("COPY"), ["target/image/rootfs/ /"]);
    assert_eq!(get("USER"), [cfg["User"].as_str().unwrap()]);
    assert_eq!(
        get("ENTRYPOINT"),
        [serde_json::to_string(&cfg["Entrypoint"])
            .unwrap()
            .replace(',', ", ")]
    );
    assert_eq!(get("ENV"), ["PATH=/"]);
    assert_eq!(cfg["Env"], json!(["PATH=/"]));
    let mut ports: Vec<String> = cfg["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    ports.sort();
    assert_eq!(get("EXPOSE"), [ports.join(" ")]);
    // The Dockerfile's build context is that root filesystem.
    let ignore =
        std::fs::read_to_string(prereq::repo_root().join("deploy/Dockerfile.dockerignore"))
            .unwrap();
    assert!(
        ignore.lines().any(|l| l == "!target/image/rootfs"),
        "{ignore}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_builds_pushes_pulls_and_runs_like_the_deployment() {
    if prereq::skipped(TEST, &["image", "registry", "containerd"]) {
        return;
    }
    let binary = static_binary();
    let skopeo = prereq::skopeo();
    let env = Env::start_with(Options {
        spawn: false,
        ..Options::default()
    })
    .await;
    let dir = env.dir.path().to_path_buf();
    build_image(&binary, &dir.join("image"));

    // Push with skopeo to a real registry.
    let (_registry, port) = start_registry(&dir);
    let reference = format!("127.0.0.1:{port}/acrpull:{TAG}");
    let out = Command::new(&skopeo)
        .args(["--command-timeout=120s", "--insecure-policy", "copy"])
        .arg("--dest-tls-verify=false")
        .arg(format!("oci:{}:{TAG}", dir.join("image/oci").display()))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pull with containerd.
    let containerd = Containerd::start(&dir.join("containerd"));
    let pulled = containerd.run(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter=native",
        &reference,
    ]);
    assert!(
        pulled.ok,
        "ctr images pull: {}\n{}",
        pulled.stderr,
        containerd.log()
    );

    // What the container gets: a kubeconfig (its ServiceAccount's token, as in a pod) and the
    // stand-in Azure's CA, read-only, readable by uid 65532.
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::copy(&env.controller_kubeconfig, config.join("kubeconfig")).unwrap();
    let host_args = env.args();
    let host_ca = host_args
        .iter()
        .find_map(|a| a.strip_prefix("--azure-ca-file="))
        .unwrap();
    std::fs::copy(host_ca, config.join("azure-ca.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (config.clone(), 0o755),
        (config.join("kubeconfig"), 0o644),
        (config.join("azure-ca.pem"), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // The Deployment's arguments, with loopback ports (the containers share the host's
    // network to reach the stand-ins) and the stand-in Azure's endpoints.
    let docs = parse_docs(
        "deployment.yaml",
        &std::fs::read_to_string(prereq::repo_root().join("deploy/deployment.yaml")).unwrap(),
    );
    let deployment = controller_deployment(&docs);
    let namespace = deployment.namespace().unwrap().to_owned();
    let container = controller_container(deployment);
    assert_eq!(strings(container, "/command"), ["/acrpull"]);
    env.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}));

    struct Replica {
        id: &'static str,
        command: &'static str,
        probe_port: u16,
        run: KillOnDrop,
        log: PathBuf,
    }
    let mut replicas = Vec::new();
    for (id, command) in [("acrpull-a", "/acrpull"), ("acrpull-b", "/manager")] {
        let probe_port = free_port();
        let metrics_port = free_port();
        let mut args: Vec<String> = strings(container, "/args")
            .into_iter()
            .map(|a| {
                if a.starts_with("--metrics-bind-address=") {
                    format!("--metrics-bind-address=127.0.0.1:{metrics_port}")
                } else if a.starts_with("--health-probe-bind-address=") {
                    format!("--health-probe-bind-address=127.0.0.1:{probe_port}")
                } else {
                    a
                }
            })
            .collect();
        // Both replicas share the host's network: /debug's default port would collide.
        args.push(format!("--debug-bind-address=127.0.0.1:{}", free_port()));
        args.extend(host_args.iter().filter_map(|a| {
            if a.starts_with("--imds-endpoint=") || a.starts_with("--azure-resolve=") {
                Some(a.clone())
            } else if a.starts_with("--azure-ca-file=") {
                Some("--azure-ca-file=/config/azure-ca.pem".to_owned())
            } else {
                None
            }
        }));
        let log = dir.join(format!("{id}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mount = format!(
            "type=bind,src={},dst=/config,options=rbind:ro",
            config.display()
        );
        let pod_name = format!("POD_NAME={id}");
        let pod_namespace = format!("POD_NAMESPACE={namespace}");
        let pid_file = dir.join(format!("{id}.pid"));
        let pid_arg = format!("--pid-file={}", pid_file.display());
        // `drop: [ALL]`: ctr 1.6 has no ALL, so every capability of containerd's default set
        // is named (the checks below read the bounding set back: it must be empty).
        let cap_drops: Vec<String> = DEFAULT_CAPABILITIES
            .iter()
            .map(|c| format!("--cap-drop={c}"))
            .collect();
        let mut ctr_args: Vec<&str> = vec!["run"];
        ctr_args.extend(cap_drops.iter().map(String::as_str));
        ctr_args.extend([
            "--snapshotter=native",
            "--net-host",
            "--read-only",
            "--seccomp",
            "--mount",
            &mount,
            "--env=KUBECONFIG=/config/kubeconfig",
            "--env",
            &pod_name,
            "--env",
            &pod_namespace,
            &pid_arg,
            &reference,
            id,
            command,
        ]);
        ctr_args.extend(args.iter().map(String::as_str));
        let run = KillOnDrop(
            containerd
                .command(&ctr_args)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("ctr run starts"),
        );
        replicas.push(Replica {
            id,
            command,
            probe_port,
            run,
            log,
        });
    }
    let logs = |r: &Replica| std::fs::read_to_string(&r.log).unwrap_or_default();

    // Both answer /readyz (a standby is ready too).
    for replica in &replicas {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if env.http_get(replica.probe_port, "/readyz").await.0 == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} ({}) never answered /readyz\n{}\n{}",
                replica.id,
                replica.command,
                logs(replica),
                containerd.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Each process runs as the Deployment demands: uid/gid 65532, no capabilities at all, no
    // new privileges, seccomp filtering, and a read-only root filesystem.
    for replica in &replicas {
        let pid: u32 = std::fs::read_to_string(dir.join(format!("{}.pid", replica.id)))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let what = format!("{} ({})", replica.id, replica.command);
        assert_eq!(
            proc_status(pid, "Uid"),
            "65532\t65532\t65532\t65532",
            "{what}"
        );
        assert_eq!(
            proc_status(pid, "Gid"),
            "65532\t65532\t65532\t65532",
            "{what}"
        );
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(proc_status(pid, caps), "0000000000000000", "{what}: {caps}");
        }
        assert_eq!(proc_status(pid, "NoNewPrivs"), "1", "{what}");
        assert_eq!(
            proc_status(pid, "Seccomp"),
            "2",
            "{what}: seccomp filter mode"
        );
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root_mount = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .unwrap_or_else(|| panic!("{what}: no / in mountinfo:\n{mountinfo}"));
        let options = root_mount.split(' ').nth(5).unwrap_or("");
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{what}: root filesystem not read-only: {root_mount}"
        );
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.ends_with(replica.command.trim_start_matches('/')),
            "{what}: runs {}",
            exe.display()
        );
    }

    // They do the job: a binding becomes Ready, written by whichever holds the Lease.
    env.create(sa("team-a", "app", json!({})));
    env.create(v2_managed(
        "team-a",
        "from-image",
        "app",
        "repository:app:pull",
    ));
    let ready = env
        .kube
        .wait_for(
            V2,
            "AcrPullBinding",
            "team-a",
            "from-image",
            |o| {
                o.and_then(|o| o["status"]["conditions"].as_array().cloned())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            },
            Duration::from_secs(60),
        )
        .await;
    assert!(
        matches!(ready, Ok(Some(_))),
        "binding never Ready: {ready:?}\n{}\n{}",
        logs(&replicas[0]),
        logs(&replicas[1])
    );
    let lease = env
        .kube
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            &namespace,
            "aks.azure.com",
        )
        .expect("the leader's Lease");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or("");
    assert!(
        replicas.iter().any(|r| r.id == holder),
        "Lease held by {holder:?}"
    );

    // SIGTERM, as the kubelet sends it: each container exits 0.
    for replica in &mut replicas {
        let killed = containerd.run(&["tasks", "kill", "--signal", "SIGTERM", replica.id]);
        assert!(
            killed.ok,
            "ctr tasks kill {}: {}",
            replica.id, killed.stderr
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = replica.run.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM",
                replica.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM\n{}",
            replica.id,
            std::fs::read_to_string(&replica.log).unwrap_or_default()
        );
    }
}
