//! The `/_standin` control API over HTTP, runtime configuration (a registry added while
//! running gets a certificate), and the `azure-standin` binary.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn control_api_mirrors_the_handle() {
    let (handle, client) = start().await;
    let control = handle.control_url();

    let info: Value = client
        .get(format!("{control}/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["imds_url"], handle.imds_url());
    assert_eq!(info["https_port"], handle.https_addr().port());
    assert_eq!(info["ca_pem"], handle.ca_pem());
    let ca = client
        .get(format!("{control}/ca.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ca, handle.ca_pem());
    let signing = client
        .get(format!("{control}/registry-signing-cert.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(signing, handle.registry_signing_cert_pem());

    // Faults: add, list, remove one, clear.
    let added: Value = client
        .post(format!("{control}/faults"))
        .json(
            &json!({"hop": "imds", "trigger": {"kind": "next_n", "n": 1},
                      "action": {"kind": "status", "status": 410}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = added["id"].as_u64().unwrap();
    let listed: Value = client
        .get(format!("{control}/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(
        imds(&handle, &client, &[("client_id", MI_CLIENT)])
            .await
            .status(),
        410
    );
    let r = client
        .delete(format!("{control}/faults/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .delete(format!("{control}/faults/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .post(format!("{control}/faults"))
        .json(&json!({"action": {"kind": "explode"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Requests and counts.
    assert_eq!(
        imds(&handle, &client, &[("client_id", MI_CLIENT)])
            .await
            .status(),
        200
    );
    let requests: Value = client
        .get(format!("{control}/requests?hop=imds"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests.as_array().unwrap().len(), 2);
    assert_eq!(requests[0]["status"], 410);
    assert_eq!(requests[1]["identity"], "mi-pull");
    let counts: Value = client
        .get(format!("{control}/counts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["hops"]["imds"]["total"], 2);
    assert_eq!(counts["limiters"][0]["name"], "imds");
    assert_eq!(counts["limiters"][0]["peak_concurrency"], 1);
    client
        .delete(format!("{control}/requests"))
        .send()
        .await
        .unwrap();
    assert!(handle.requests().is_empty());

    // Minting an ARM token.
    let minted: Value = client
        .post(format!("{control}/tokens/arm"))
        .json(&json!({"identity": "mi-pull", "resource": "https://management.azure.com/"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["access_token"].as_str().unwrap();
    assert_eq!(exchange(&client, REGISTRY, token).await.status(), 200);

    let r = client.get(format!("{control}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn registry_added_at_runtime_is_served_with_a_new_certificate() {
    let (handle, _) = start().await;
    let control = handle.control_url();
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .post(format!("{control}/registries"))
        .json(&json!({"host": "late.azurecr.io", "sku": "premium"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = plain
        .post(format!("{control}/role-assignments"))
        .json(
            &json!({"identity": "mi-pull", "registry": "late.azurecr.io",
                      "repository": "*", "actions": ["pull"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Dangling references are refused.
    let r = plain
        .post(format!("{control}/role-assignments"))
        .json(&json!({"identity": "ghost", "registry": "late.azurecr.io",
                      "repository": "*", "actions": ["pull"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A client built now resolves the new host; its TLS verification must pass.
    let client = handle.client_builder().unwrap().build().unwrap();
    let refresh = refresh_token(&handle, &client, "late.azurecr.io").await;
    assert_eq!(claims(&refresh)["aud"], "late.azurecr.io");

    let config: Value = plain
        .get(format!("{control}/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["registries"].as_array().unwrap().len(), 4);

    // Replacing the whole configuration.
    let mut replaced = fixture();
    replaced.lifetimes.imds_secs = 30;
    let r = plain
        .put(format!("{control}/config"))
        .json(&replaced)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = imds(&handle, &client, &[("client_id", MI_CLIENT)]).await;
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["expires_in"], "30");
}

#[tokio::test]
async fn custom_entra_host_is_served() {
    let mut config = fixture();
    config.entra_hosts = vec!["login.airgap.example".into()];
    let (_handle, client) = start_with(config).await;
    let body: Value = client
        .get(format!(
            "https://login.airgap.example/{TENANT}/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["issuer"],
        format!("https://login.airgap.example/{TENANT}/v2.0")
    );
}

#[tokio::test]
async fn binary_serves_until_killed_and_writes_its_state() {
    install_provider();
    let dir = std::env::temp_dir().join(format!("azure-standin-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_vec(&fixture()).unwrap()).unwrap();
    let state_path = dir.join("state.json");
    let ca_path = dir.join("ca.pem");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_azure-standin"))
        .arg("--config")
        .arg(&config_path)
        .arg("--state-out")
        .arg(&state_path)
        .arg("--ca-out")
        .arg(&ca_path)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    // Wait for the state file (written once listening); bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let state: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&state_path) {
            break serde_json::from_str(&text).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state file never appeared"
        );
        assert!(child.0.try_wait().unwrap().is_none(), "binary exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ca = std::fs::read_to_string(&ca_path).unwrap();
    assert_eq!(state["ca_pem"], ca);
    let https: std::net::SocketAddr = state["https_addr"].as_str().unwrap().parse().unwrap();

    let mut roots = rustls::RootCertStore::empty();
    let b64: String = ca.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    roots
        .add(rustls::pki_types::CertificateDer::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        ))
        .unwrap();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .resolve(REGISTRY, https)
        .no_proxy()
        .build()
        .unwrap();
    let r = client
        .get(format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/&client_id={MI_CLIENT}",
            state["imds_url"].as_str().unwrap()
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let arm: Value = r.json().await.unwrap();
    let r = exchange(&client, REGISTRY, arm["access_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);

    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the spawned binary even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
