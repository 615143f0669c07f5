//! The pull secrets the controller writes work for real pull clients against a real registry.
//!
//! A CNCF distribution registry (Debian `docker-registry` 2.8) runs with token auth behind the
//! azure stand-in, which fronts it as login server `localhost:<https port>`: `/v2` goes to the
//! real registry, `/oauth2/*` to the stand-in's ACR token server — one host, as in ACR. The
//! controller writes the Secret for that server; `skopeo` and containerd's `ctr` then pull with
//! the Secret's credential exactly as a kubelet's runtime would: `/v2/` challenge → realm on the
//! stand-in (Basic-auth GET for skopeo, `grant_type=password` POST for ctr) → registry token →
//! manifest and blobs from the real registry.
//!
//! Needs `docker-registry` and `skopeo` (component `registry`) and, for the containerd part,
//! `containerd`/`ctr` run as root (component `containerd`). A missing one fails the test with
//! the command that installs it (`scripts/prereqs.sh` installs them all); the only way to run
//! without one is to opt out by name, `ACRPULL_TEST_SKIP=registry` or `=containerd`, which
//! `scripts/test.sh`'s summary reports.

mod common;
mod containerd;
mod prereq;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use azure_standin::{Hop, Registry, RoleAssignment, Sku};
use common::*;
use containerd::Containerd;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const NS: &str = "team-a";
const SA: &str = "puller";
const BINDING: &str = "real-registry";
const SECRET: &str = "acr-pull-real-registry";
const LAYER_FILE: &[u8] = b"hello from acrpull\n";

/// Kills a helper process even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client command's outcome; the credential is replaced before anything is printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(bin: &Path, args: &[String], secrets: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} did not finish in 120 s", bin.display()))
    .unwrap_or_else(|e| panic!("{} does not start: {e}", bin.display()));
    let redact = |b: &[u8]| {
        let mut s = String::from_utf8_lossy(b).into_owned();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            s = s.replace(secret, "<redacted>");
        }
        s
    };
    Run {
        ok: out.status.success(),
        stdout: redact(&out.stdout),
        stderr: redact(&out.stderr),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An uncompressed tar with one regular file (ustar header written by hand: no tar crate).
fn tar_with(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let put =
        |h: &mut [u8; 512], at: usize, value: &[u8]| h[at..at + value.len()].copy_from_slice(value);
    put(&mut header, 0, name.as_bytes());
    put(&mut header, 100, b"0000644\0");
    put(&mut header, 108, b"0000000\0");
    put(&mut header, 116, b"0000000\0");
    put(
        &mut header,
        124,
        format!("{:011o}\0", content.len()).as_bytes(),
    );
    put(&mut header, 136, b"00000000000\0");
    put(&mut header, 148, b"        ");
    header[156] = b'0';
    put(&mut header, 257, b"ustar\0");
    put(&mut header, 263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    put(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// The seeded image: an OCI layout with one layer; returns (manifest digest, layer bytes).
fn write_oci_layout(dir: &Path) -> (String, Vec<u8>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let layer = tar_with("hello.txt", LAYER_FILE);
    let layer_digest = put(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    (manifest_digest, layer)
}

/// Starts `docker-registry serve` with `auth` (YAML under `auth:`, or none) on a free port.
async fn start_registry(
    bin: &Path,
    dir: &Path,
    name: &str,
    storage: &Path,
    auth: &str,
) -> (KillOnDrop, u16) {
    let port = free_port();
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n{auth}",
        storage = storage.display(),
    );
    let path = dir.join(format!("{name}.yml"));
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = KillOnDrop(
        std::process::Command::new(bin)
            .arg("serve")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts"),
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://127.0.0.1:{port}/v2/"))
        .send()
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "registry {name} never came up: {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

/// The Secret's `.dockerconfigjson`, written as a client auth file; returns it and the password.
fn write_authfile(env: &Env, path: &Path) -> (Value, String) {
    let secret = env
        .secret(NS, SECRET)
        .unwrap_or_else(|| panic!("no Secret {SECRET}\nlogs:\n{}", env.logs()));
    let config = docker_config(&secret);
    std::fs::write(path, config.to_string()).unwrap();
    let password = config["auths"]
        .as_object()
        .and_then(|a| a.values().next())
        .and_then(|e| e["password"].as_str())
        .unwrap_or_default()
        .to_owned();
    (config, password)
}

fn try_expiry(secret: &Value) -> Option<jiff::Timestamp> {
    secret["metadata"]["annotations"]["acr.microsoft.com/token.expiry"]
        .as_str()
        .and_then(|s| s.parse().ok())
}

fn expiry(secret: &Value) -> jiff::Timestamp {
    try_expiry(secret).expect("token.expiry annotation")
}

/// What every skopeo call shares: a bounded run, no signature policy, the stand-in's CA.
struct Skopeo {
    bin: PathBuf,
    certs: PathBuf,
    login: String,
}

impl Skopeo {
    async fn inspect(&self, authfile: &Path, repo: &str, secrets: &[&str]) -> Run {
        let args = vec![
            "--command-timeout=60s".into(),
            "inspect".into(),
            format!("--authfile={}", authfile.display()),
            format!("--cert-dir={}", self.certs.display()),
            format!("docker://{}/{repo}:v1", self.login),
        ];
        run(&self.bin, &args, secrets).await
    }

    async fn inspect_with_creds(&self, creds: &str, repo: &str) -> Run {
        let args = vec![
            "--command-timeout=60s".into(),
            "inspect".into(),
            format!("--creds={creds}"),
            format!("--cert-dir={}", self.certs.display()),
            format!("docker://{}/{repo}:v1", self.login),
        ];
        run(&self.bin, &args, &[creds]).await
    }

    async fn copy_to_dir(&self, authfile: &Path, repo: &str, out: &Path, secrets: &[&str]) -> Run {
        let args = vec![
            "--command-timeout=60s".into(),
            "--insecure-policy".into(),
            "copy".into(),
            format!("--src-authfile={}", authfile.display()),
            format!("--src-cert-dir={}", self.certs.display()),
            format!("docker://{}/{repo}:v1", self.login),
            format!("dir:{}", out.display()),
        ];
        run(&self.bin, &args, secrets).await
    }
}

fn assert_denied(r: &Run, what: &str) {
    assert!(!r.ok, "{what} should be refused, got:\n{}", r.stdout);
    let text = r.stderr.to_ascii_lowercase();
    assert!(
        text.contains("unauthorized") || text.contains("denied") || text.contains("401"),
        "{what} failed for another reason than authorization:\n{}",
        r.stderr
    );
}

/// A refresh token of `mi-pull` for the login server (unscoped: what its roles allow).
async fn identity_refresh_token(env: &Env, login: &str) -> String {
    let client = env.azure.client_builder().unwrap().build().unwrap();
    let arm: Value = client
        .get(format!(
            "{}/metadata/identity/oauth2/token",
            env.azure.imds_url()
        ))
        .header("Metadata", "true")
        .query(&[
            ("api-version", "2018-02-01"),
            ("resource", "https://management.azure.com/"),
            ("client_id", MI_CLIENT),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r: Value = client
        .post(format!("https://{login}/oauth2/exchange"))
        .form(&[
            ("grant_type", "access_token"),
            ("service", login),
            ("access_token", arm["access_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secrets_work_for_real_clients_against_a_real_registry() {
    if prereq::skipped(
        "registry_e2e::pull_secrets_work_for_real_clients_against_a_real_registry",
        &["registry"],
    ) {
        return;
    }
    let registry_bin = prereq::docker_registry();
    let skopeo_bin = prereq::skopeo();
    let mut env = Env::start_with(Options {
        spawn: false,
        ..Options::default()
    })
    .await;
    let dir = env.dir.path().to_path_buf();
    let https = env.azure.https_addr();
    // The login server is the stand-in's own HTTPS port on `localhost` (its certificate covers
    // it), so skopeo and ctr reach it without DNS tricks; the docker config key, the ACR
    // `service` and the registry's `service` are all this `host:port`.
    let login = format!("localhost:{}", https.port());

    // Seed `app` and `other` through an auth-less registry, then serve the same storage with
    // token auth.
    let storage = dir.join("storage");
    let layout = dir.join("layout");
    let (manifest_digest, layer) = write_oci_layout(&layout);
    {
        let (_seed, seed_port) = start_registry(&registry_bin, &dir, "seed", &storage, "").await;
        for repo in ["app", "other"] {
            let r = run(
                &skopeo_bin,
                &[
                    "--command-timeout=60s".into(),
                    "--insecure-policy".into(),
                    "copy".into(),
                    "--dest-tls-verify=false".into(),
                    // Keep the uncompressed layer and the manifest as written, so digests and
                    // bytes can be compared after the pull.
                    "--preserve-digests".into(),
                    format!("oci:{}:v1", layout.display()),
                    format!("docker://127.0.0.1:{seed_port}/{repo}:v1"),
                ],
                &[],
            )
            .await;
            assert!(r.ok, "seeding {repo}: {}", r.stderr);
        }
    }
    let signing = dir.join("acr-signing.pem");
    std::fs::write(&signing, env.azure.registry_signing_cert_pem()).unwrap();
    let auth = format!(
        "auth:\n  token:\n    realm: https://{login}/oauth2/token\n    service: {login}\n    \
         issuer: \"Azure Container Registry\"\n    rootcertbundle: {}\n",
        signing.display()
    );
    let (_registry, registry_port) =
        start_registry(&registry_bin, &dir, "registry", &storage, &auth).await;

    // The stand-in fronts it; mi-pull may pull both repositories, so only the binding's scope
    // keeps `other` out of the Secret's credential.
    env.azure
        .add_registry(Registry {
            host: login.clone(),
            sku: Sku::Premium,
            authentication_as_arm: true,
            ops_per_minute: None,
            tenant: None,
            upstream: Some(format!("http://127.0.0.1:{registry_port}")),
        })
        .unwrap();
    for repo in ["app", "other"] {
        env.azure
            .add_role_assignment(RoleAssignment {
                identity: "mi-pull".into(),
                registry: login.clone(),
                repository: repo.into(),
                actions: vec!["pull".into()],
            })
            .unwrap();
    }
    let controller_args = [
        "--allowed-acr-server-suffixes=localhost".to_owned(),
        "--allow-registry-ports".to_owned(),
        format!("--azure-resolve=localhost={https}"),
    ];
    env.spawn(&controller_args);

    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    env.azure.write_ca(&certs.join("ca.crt")).unwrap();
    let skopeo = Skopeo {
        bin: skopeo_bin,
        certs: certs.clone(),
        login: login.clone(),
    };
    // Positive control: `other` exists and the identity may pull it with an unscoped token.
    let refresh = identity_refresh_token(&env, &login).await;
    let r = skopeo
        .inspect_with_creds(
            &format!("00000000-0000-0000-0000-000000000000:{refresh}"),
            "other",
        )
        .await;
    assert!(
        r.ok,
        "other is pullable with the identity's own token: {}",
        r.stderr
    );

    env.create(sa(NS, SA, json!({})));
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": BINDING, "namespace": NS},
        "spec": {"acr": {"server": login, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"managedIdentity": {"clientID": MI_CLIENT}},
                 "serviceAccountName": SA}}));
    env.wait_ready(V2, NS, BINDING, "True").await;
    let authfile = dir.join("auth.json");
    let (config, password) = write_authfile(&env, &authfile);
    assert!(
        config["auths"].get(&login).is_some(),
        "the docker config is keyed by the login server {login}"
    );
    assert!(pull_secrets(&env.service_account(NS, SA).unwrap()).contains(&SECRET.to_owned()));

    // 1. The granted repository pulls: manifest and the layer blob, byte for byte.
    env.azure.clear_requests();
    let r = skopeo.inspect(&authfile, "app", &[&password]).await;
    assert!(r.ok, "skopeo inspect app with the Secret: {}", r.stderr);
    let inspected: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(inspected["Digest"], manifest_digest.as_str());
    let out = dir.join("pulled");
    let r = skopeo
        .copy_to_dir(&authfile, "app", &out, &[&password])
        .await;
    assert!(r.ok, "skopeo copy app with the Secret: {}", r.stderr);
    let layer_hex = sha256_hex(&layer);
    assert_eq!(std::fs::read(out.join(&layer_hex)).unwrap(), layer);
    // The credential went through the stand-in's token server and the blobs through the real
    // registry.
    let gets = env.azure.requests_for(Hop::AcrTokenGet);
    assert!(gets.iter().any(|r| r.status == 200), "{gets:?}");
    assert!(env
        .azure
        .requests_for(Hop::V2)
        .iter()
        .any(|r| r.status == 200));

    // 2. A repository outside the binding's scope is refused by the registry.
    let r = skopeo.inspect(&authfile, "other", &[&password]).await;
    assert_denied(&r, "skopeo inspect other");

    // 3. containerd pulls with the same credential (grant_type=password POST to the realm).
    containerd_pulls(&dir, &login, &password).await;

    // 4. Past its expiry the credential is refused. A fresh controller (its token cache is per
    // process) re-mints the deleted Secret with short-lived tokens, then stops so it cannot
    // refresh.
    env.terminate();
    env.azure
        .update_config(|c| c.lifetimes.acr_access_secs = 10)
        .unwrap();
    let old_expiry = expiry(&env.secret(NS, SECRET).unwrap());
    env.kube.delete("v1", "Secret", NS, SECRET).unwrap();
    env.spawn(&controller_args);
    let short = env
        .kube
        .wait_for(
            "v1",
            "Secret",
            NS,
            SECRET,
            |s| s.and_then(try_expiry).is_some_and(|e| e < old_expiry),
            Duration::from_secs(60),
        )
        .await;
    assert!(
        matches!(short, Ok(Some(_))),
        "no short-lived Secret: {short:?}\nlogs:\n{}",
        env.logs()
    );
    env.terminate();
    let (_, short_password) = write_authfile(&env, &authfile);
    let short_expiry = expiry(&env.secret(NS, SECRET).unwrap());
    // While it lasts it works; afterwards it does not.
    let r = skopeo.inspect(&authfile, "app", &[&short_password]).await;
    if jiff::Timestamp::now() < short_expiry {
        assert!(
            r.ok,
            "the short-lived credential works before expiry: {}",
            r.stderr
        );
    } else {
        eprintln!("note: the short-lived credential expired before it could be tried");
    }
    // Waits for a known instant (the token's `exp` plus a margin), not for an event.
    let wait = short_expiry.duration_since(jiff::Timestamp::now());
    let wait = Duration::try_from(wait).unwrap_or_default() + Duration::from_secs(2);
    tokio::time::sleep(wait).await;
    env.azure.clear_requests();
    let r = skopeo.inspect(&authfile, "app", &[&short_password]).await;
    assert_denied(&r, "skopeo inspect app with an expired Secret");
    // The token server refused it; the registry never served the manifest.
    let gets = env.azure.requests_for(Hop::AcrTokenGet);
    assert!(
        !gets.is_empty() && gets.iter().all(|r| r.status == 401),
        "{gets:?}"
    );

    // 5. A restarted controller refreshes the expired Secret and the pull works again.
    env.azure
        .update_config(|c| c.lifetimes = Default::default())
        .unwrap();
    env.spawn(&controller_args);
    let refreshed = env
        .kube
        .wait_for(
            "v1",
            "Secret",
            NS,
            SECRET,
            |s| s.and_then(try_expiry).is_some_and(|e| e > short_expiry),
            Duration::from_secs(60),
        )
        .await;
    assert!(
        matches!(refreshed, Ok(Some(_))),
        "the expired Secret was not refreshed: {refreshed:?}\nlogs:\n{}",
        env.logs()
    );
    let (_, new_password) = write_authfile(&env, &authfile);
    let r = skopeo.inspect(&authfile, "app", &[&new_password]).await;
    assert!(r.ok, "skopeo inspect app after the refresh: {}", r.stderr);
    let r = skopeo.inspect(&authfile, "other", &[&new_password]).await;
    assert_denied(&r, "skopeo inspect other after the refresh");

    // 6. Deleting the binding leaves no Secret to use and no reference to it.
    env.kube.delete(V2, "AcrPullBinding", NS, BINDING).unwrap();
    env.wait_gone("v1", "Secret", NS, SECRET).await;
    let sa_after = env.service_account(NS, SA).unwrap();
    assert!(
        !pull_secrets(&sa_after).contains(&SECRET.to_owned()),
        "{sa_after:#}"
    );
    assert!(env
        .kube
        .list("v1", "Secret", Some(NS))
        .iter()
        .all(|s| { s["type"] != "kubernetes.io/dockerconfigjson" }));
}

/// `ctr images pull` through a containerd this test starts (root, own root/state/socket,
/// native snapshotter so no overlay mount is needed): `app` pulls, `other` is refused.
async fn containerd_pulls(dir: &Path, login: &str, password: &str) {
    if prereq::skipped(
        "registry_e2e::pull_secrets_work_for_real_clients_against_a_real_registry (containerd part)",
        &["containerd"],
    ) {
        return;
    }
    let containerd = Containerd::start(&dir.join("containerd"));
    let base = containerd.base.clone();
    let ctr = containerd.ctr.clone();
    let address = containerd.address.clone();
    // ctr treats `localhost` as plain HTTP unless a hosts.toml says otherwise.
    let hosts = base.join("certs.d");
    std::fs::create_dir_all(hosts.join(login)).unwrap();
    let ca = dir.join("certs/ca.crt");
    std::fs::write(
        hosts.join(login).join("hosts.toml"),
        format!(
            "server = \"https://{login}\"\n\n[host.\"https://{login}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let user = format!("00000000-0000-0000-0000-000000000000:{password}");
    let pull = |repo: &str| {
        vec![
            address.clone(),
            "images".into(),
            "pull".into(),
            "--snapshotter=native".into(),
            format!("--user={user}"),
            format!("--hosts-dir={}", hosts.display()),
            format!("{login}/{repo}:v1"),
        ]
    };
    let r = run(&ctr, &pull("app"), &[password]).await;
    assert!(
        r.ok,
        "ctr pull app with the Secret:\n{}\n{}",
        r.stdout, r.stderr
    );
    let r = run(
        &ctr,
        &[address.clone(), "images".into(), "ls".into(), "-q".into()],
        &[],
    )
    .await;
    assert!(
        r.stdout.contains(&format!("{login}/app:v1")),
        "{}",
        r.stdout
    );
    let r = run(&ctr, &pull("other"), &[password]).await;
    assert!(!r.ok, "ctr pull other should be refused:\n{}", r.stdout);
    let text = format!("{}{}", r.stdout, r.stderr).to_ascii_lowercase();
    assert!(
        text.contains("unauthorized") || text.contains("denied") || text.contains("401"),
        "ctr pull other failed for another reason than authorization:\n{}",
        r.stderr
    );
}
