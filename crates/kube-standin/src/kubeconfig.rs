//! Writing a kubeconfig that points kubectl and kube-rs at the stand-in (HTTPS with the
//! cluster CA, a bearer token): the admin's ([`crate::authn::ADMIN_TOKEN`], cluster-admin) or
//! any other, such as a ServiceAccount token to run a client with that ServiceAccount's RBAC.
//! HTTPS because kubectl sends no credentials to a plain-HTTP server.

use std::path::Path;

use base64::Engine as _;

use crate::authn::ADMIN_TOKEN;

/// The admin kubeconfig text for a server URL and its CA (PEM).
pub fn render(server: &str, ca_pem: &str) -> String {
    render_for_token(server, ca_pem, ADMIN_TOKEN)
}

/// A kubeconfig text authenticating with `token`.
pub fn render_for_token(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = if ca_pem.is_empty() {
        String::new()
    } else {
        format!(
            "\n    certificate-authority-data: {}",
            base64::engine::general_purpose::STANDARD.encode(ca_pem)
        )
    };
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-standin
  cluster:
    server: {server}{ca}
contexts:
- name: kube-standin
  context:
    cluster: kube-standin
    user: kube-standin
    namespace: default
current-context: kube-standin
users:
- name: kube-standin
  user:
    token: {token}
"
    )
}

/// Write a kubeconfig text atomically (temp file then rename), so a script waiting for the
/// file never reads half of it.
pub fn write_text(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_server() {
        let k = super::render("https://127.0.0.1:1234", "-----BEGIN CERTIFICATE-----\n");
        assert!(k.contains("server: https://127.0.0.1:1234"));
        let v: serde_json::Value = serde_saphyr::from_str(&k).unwrap();
        assert_eq!(v["current-context"].as_str(), Some("kube-standin"));
        assert_eq!(
            v["users"][0]["user"]["token"].as_str(),
            Some(crate::authn::ADMIN_TOKEN)
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"].as_str(),
            Some("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==")
        );
    }
}
