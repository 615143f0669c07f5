//! Writing a kubeconfig that points kubectl and kube-rs at the stand-in (plain HTTP, a
//! placeholder bearer token).

use std::path::Path;

/// The kubeconfig text for a server URL.
pub fn render(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-standin
  cluster:
    server: {server}
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
    token: kube-standin-token
"
    )
}

/// Write the kubeconfig atomically (temp file then rename), so a script waiting for the file
/// never reads half of it.
pub fn write(path: &Path, server: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, render(server))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_server() {
        let k = super::render("http://127.0.0.1:1234");
        assert!(k.contains("server: http://127.0.0.1:1234"));
        let v: serde_json::Value = serde_saphyr::from_str(&k).unwrap();
        assert_eq!(v["current-context"].as_str(), Some("kube-standin"));
    }
}
