//! ACR tokens against a real CNCF distribution registry 2.8 (Debian `docker-registry`) with
//! token auth and the stand-in's signing certificate as `rootcertbundle`.
//!
//! A missing registry binary fails the test with the install command (`apt-get install
//! docker-registry`, or point `DOCKER_REGISTRY_BIN` at one), unless the user opts out with
//! `ACRPULL_TEST_SKIP=registry` (see `tests/prereq` at the repository root).

mod common;
#[path = "../../../tests/prereq/mod.rs"]
mod prereq;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Kills the registry even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn scoped(client: &reqwest::Client, refresh: &str, scope: &str) -> String {
    let r = access_token_post(client, REGISTRY, refresh, scope).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn distribution_registry_accepts_acr_tokens() {
    if prereq::skipped(
        "azure-standin distribution::distribution_registry_accepts_acr_tokens",
        &["registry"],
    ) {
        return;
    }
    let bin = prereq::docker_registry();
    let (handle, client) = start().await;
    let dir = std::env::temp_dir().join(format!("azure-standin-dist-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let bundle = dir.join("signing.pem");
    std::fs::write(&bundle, handle.registry_signing_cert_pem()).unwrap();
    // A free port for the registry (released just before it binds).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n\
         http:\n  addr: 127.0.0.1:{port}\n\
         auth:\n  token:\n    realm: https://{REGISTRY}/oauth2/token\n    service: {REGISTRY}\n    issuer: \"Azure Container Registry\"\n    rootcertbundle: {bundle}\n",
        data = dir.join("data").display(),
        bundle = bundle.display(),
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let _registry = KillOnDrop(
        std::process::Command::new(&bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");

    // Wait until the registry answers its challenge.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let challenge = loop {
        if let Ok(r) = plain.get(format!("{base}/v2/")).send().await {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "registry never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(challenge.status(), 401);
    assert!(challenge.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains(&format!("realm=\"https://{REGISTRY}/oauth2/token\"")));

    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let pull_app = scoped(&client, &refresh, "repository:app:pull").await;
    let r = plain
        .get(format!("{base}/v2/"))
        .bearer_auth(&pull_app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Authorized for app: the registry looks it up (and finds nothing) instead of a 401.
    let r = plain
        .get(format!("{base}/v2/app/tags/list"))
        .bearer_auth(&pull_app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
    // Not authorized for another repository.
    let r = plain
        .get(format!("{base}/v2/tools/tags/list"))
        .bearer_auth(&pull_app)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A token obtained through the Basic-auth GET works the same.
    let r = client
        .get(format!("https://{REGISTRY}/oauth2/token"))
        .basic_auth("00000000-0000-0000-0000-000000000000", Some(&refresh))
        .query(&[("service", REGISTRY), ("scope", "repository:tools:pull")])
        .send()
        .await
        .unwrap();
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = plain
        .get(format!("{base}/v2/tools/tags/list"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A token for another registry (audience) is refused.
    let basic_refresh = refresh_token(&handle, &client, BASIC).await;
    let r = access_token_post(&client, BASIC, &basic_refresh, "repository:app:pull").await;
    let other = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = plain
        .get(format!("{base}/v2/app/tags/list"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Without `x5c` the registry finds the key by its libtrust `kid` among the bundle's keys.
    handle.update_config(|c| c.acr_token_x5c = false).unwrap();
    let kid_only = scoped(&client, &refresh, "repository:app:pull").await;
    let h = header(&kid_only);
    assert!(h.get("x5c").is_none());
    assert_eq!(h["kid"], handle.registry_signing_kid());
    let r = plain
        .get(format!("{base}/v2/app/tags/list"))
        .bearer_auth(&kid_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}
