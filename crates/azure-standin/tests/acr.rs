//! ACR token server stand-in over real HTTPS: exchange, scoped access tokens (POST and the
//! Basic-auth GET), the `/v2/` challenge, audience/tenant/role checks, and the token format a
//! CNCF distribution registry verifies.

mod common;

use std::time::Duration;

use azure_standin::jwt::{libtrust_key_id, p256_spki_der, Unverified};
use azure_standin::{Hop, RoleAssignment};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn assert_unauthorized(status: u16, body: &Value) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED", "{body}");
    assert!(body["errors"][0]["message"].is_string());
}

/// Extracts the P-256 public point from a certificate's SubjectPublicKeyInfo.
fn cert_public_point(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(b64).unwrap();
    let prefix = &p256_spki_der(&[])[..];
    let at = der
        .windows(prefix.len())
        .position(|w| w == prefix)
        .expect("certificate holds a P-256 SubjectPublicKeyInfo");
    der[at + prefix.len()..at + prefix.len() + 65].to_vec()
}

#[tokio::test]
async fn exchange_then_scoped_access_token() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let c = claims(&refresh);
    assert_eq!(c["aud"], REGISTRY);
    assert_eq!(c["iss"], "Azure Container Registry");
    assert_eq!(c["grant_type"], "refresh_token");
    assert_eq!(c["sub"], MI_OBJECT);
    assert_eq!(c["tenant"], TENANT);
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3 * 3600
    );

    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    let (status, b) = body(r).await;
    assert_eq!(status, 200, "{b}");
    let access = b["access_token"].as_str().unwrap();
    let c = claims(access);
    assert_eq!(c["aud"], REGISTRY);
    assert_eq!(c["grant_type"], "access_token");
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": "app", "actions": ["pull"]}])
    );
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        75 * 60
    );

    let hops: Vec<Hop> = handle.requests().iter().map(|r| r.hop).collect();
    assert_eq!(hops, vec![Hop::Imds, Hop::AcrExchange, Hop::AcrToken]);
    assert!(handle
        .requests()
        .iter()
        .all(|r| r.identity.as_deref() == Some("mi-pull")));
}

#[tokio::test]
async fn access_claim_is_the_intersection_of_requested_and_granted() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    // Space-separated in one field (form-encoded with '+') plus a repeated field.
    let r = client
        .post(format!("https://{REGISTRY}/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("service", REGISTRY),
            (
                "scope",
                "repository:app:pull,push repository:tools:pull,delete",
            ),
            ("scope", "repository:secret:pull"),
            ("scope", "repository:tools:push"),
            ("refresh_token", &refresh),
        ])
        .send()
        .await
        .unwrap();
    let (status, b) = body(r).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        claims(b["access_token"].as_str().unwrap())["access"],
        json!([
            {"type": "repository", "name": "app", "actions": ["pull"]},
            {"type": "repository", "name": "tools", "actions": ["pull", "push"]},
        ])
    );
    // Nothing granted is not an error: the token carries an empty access list.
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:secret:pull").await;
    let (status, b) = body(r).await;
    assert_eq!(status, 200);
    assert_eq!(
        claims(b["access_token"].as_str().unwrap())["access"],
        json!([])
    );
    // A malformed scope is a bad request.
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn basic_auth_get_with_refresh_and_access_tokens() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let get = |password: String, scopes: &'static [&'static str]| {
        let client = client.clone();
        async move {
            let mut query: Vec<(&str, &str)> = vec![
                ("account", "00000000-0000-0000-0000-000000000000"),
                ("service", REGISTRY),
            ];
            query.extend(scopes.iter().map(|s| ("scope", *s)));
            client
                .get(format!("https://{REGISTRY}/oauth2/token"))
                .basic_auth("00000000-0000-0000-0000-000000000000", Some(password))
                .query(&query)
                .send()
                .await
                .unwrap()
        }
    };
    // With the refresh token: the identity's role assignments decide.
    let (status, b) = body(
        get(
            refresh.clone(),
            &["repository:app:pull,push", "repository:tools:push"],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["access_token"], b["token"]);
    assert_eq!(
        claims(b["token"].as_str().unwrap())["access"],
        json!([
            {"type": "repository", "name": "app", "actions": ["pull"]},
            {"type": "repository", "name": "tools", "actions": ["push"]},
        ])
    );

    // With an access token scoped to app:pull: never more than that token allows.
    let access = {
        let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
        body(r).await.1["access_token"].as_str().unwrap().to_owned()
    };
    let (status, b) = body(
        get(
            access.clone(),
            &["repository:app:pull,push", "repository:tools:pull"],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        claims(b["token"].as_str().unwrap())["access"],
        json!([{"type": "repository", "name": "app", "actions": ["pull"]}])
    );
    assert_eq!(handle.requests_for(Hop::AcrTokenGet).len(), 2);

    // An access token is not a refresh token for the POST refresh_token grant.
    let r = access_token_post(&client, REGISTRY, &access, "repository:app:pull").await;
    let (status, b) = body(r).await;
    assert_unauthorized(status, &b);

    // Wrong user name, no credentials, garbage password.
    let r = client
        .get(format!("https://{REGISTRY}/oauth2/token"))
        .basic_auth("admin", Some(&refresh))
        .query(&[("service", REGISTRY), ("scope", "repository:app:pull")])
        .send()
        .await
        .unwrap();
    let (status, b) = body(r).await;
    assert_unauthorized(status, &b);
    let r = client
        .get(format!("https://{REGISTRY}/oauth2/token"))
        .query(&[("service", REGISTRY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, b) = body(get("garbage".into(), &["repository:app:pull"]).await).await;
    assert_unauthorized(status, &b);
}

#[tokio::test]
async fn tokens_are_acceptable_to_a_distribution_registry() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    let access = body(r).await.1["access_token"].as_str().unwrap().to_owned();
    let pem = handle.registry_signing_cert_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let point = cert_public_point(&pem);
    for token in [&refresh, &access] {
        let h = header(token);
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["typ"], "JWT");
        // kid = libtrust id of the rootcertbundle certificate's key.
        assert_eq!(h["kid"], libtrust_key_id(&p256_spki_der(&point)));
        assert_eq!(h["kid"], handle.registry_signing_kid());
        let kid = h["kid"].as_str().unwrap();
        assert_eq!(kid.len(), 59);
        assert_eq!(kid.split(':').count(), 12);
        // x5c[0] is the very certificate of the bundle.
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(h["x5c"], json!([b64]));
        Unverified::parse(token).unwrap().verify(&point).unwrap();
        let c = claims(token);
        for t in ["exp", "nbf", "iat"] {
            assert!(c[t].is_i64(), "{t} must be an integer");
        }
        assert!(c["aud"].is_string());
        assert!(c["jti"].is_string());
    }
}

#[tokio::test]
async fn issuer_and_lifetimes_are_configurable() {
    let mut config = fixture();
    config.acr_issuer = "sandbox-token-issuer".into();
    config.lifetimes.acr_refresh_secs = 20;
    config.lifetimes.acr_access_secs = 5;
    let (handle, client) = start_with(config).await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let c = claims(&refresh);
    assert_eq!(c["iss"], "sandbox-token-issuer");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 20);
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    let c = claims(body(r).await.1["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 5);
}

#[tokio::test]
async fn exchange_rejections() {
    let (handle, client) = start().await;
    let arm = imds_token(&handle, &client, MI_CLIENT).await;

    // GET is 404, not 405.
    let r = client
        .get(format!("https://{REGISTRY}/oauth2/exchange"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Service must be this registry.
    let r = client
        .post(format!("https://{REGISTRY}/oauth2/exchange"))
        .form(&[
            ("grant_type", "access_token"),
            ("service", ARMLESS),
            ("access_token", &arm),
        ])
        .send()
        .await
        .unwrap();
    let (status, b) = body(r).await;
    assert_unauthorized(status, &b);

    // Tenant field must match the token.
    let r = client
        .post(format!("https://{REGISTRY}/oauth2/exchange"))
        .form(&[
            ("grant_type", "access_token"),
            ("service", REGISTRY),
            ("tenant", OTHER_TENANT),
            ("access_token", &arm),
        ])
        .send()
        .await
        .unwrap();
    let (status, b) = body(r).await;
    assert_unauthorized(status, &b);
    // ... and may be given when right; legacy grant with the token in both fields works.
    let r = client
        .post(format!("https://{REGISTRY}/oauth2/exchange"))
        .form(&[
            ("grant_type", "access_token_refresh_token"),
            ("service", REGISTRY),
            ("tenant", TENANT),
            ("access_token", &arm),
            ("refresh_token", &arm),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Expired ARM token.
    let expired = handle
        .issue_arm_token("mi-pull", "https://management.azure.com/", Duration::ZERO)
        .unwrap();
    let (status, b) = body(exchange(&client, REGISTRY, &expired).await).await;
    assert_unauthorized(status, &b);

    // Token not signed by the stand-in.
    let forged = azure_standin::jwt::Signer::generate(None)
        .unwrap()
        .sign(&claims(&arm))
        .unwrap();
    let (status, b) = body(exchange(&client, REGISTRY, &forged).await).await;
    assert_unauthorized(status, &b);

    // Wrong audience (e.g. a Graph token).
    let graph = handle
        .issue_arm_token(
            "mi-pull",
            "https://graph.microsoft.com/",
            Duration::from_secs(600),
        )
        .unwrap();
    let (status, b) = body(exchange(&client, REGISTRY, &graph).await).await;
    assert_unauthorized(status, &b);

    // Identity without a role assignment on the registry.
    let norole = imds_token(&handle, &client, NOROLE_CLIENT).await;
    let (status, b) = body(exchange(&client, REGISTRY, &norole).await).await;
    assert_unauthorized(status, &b);
    assert!(b["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("role assignment"));

    // Unsupported grant.
    let r = client
        .post(format!("https://{REGISTRY}/oauth2/exchange"))
        .form(&[("grant_type", "client_credentials"), ("service", REGISTRY)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let records = handle.requests_for(Hop::AcrExchange);
    assert!(records
        .iter()
        .any(|r| r.error.as_deref() == Some("UNAUTHORIZED")));
}

#[tokio::test]
async fn all_cloud_arm_audiences_and_the_acr_audience_are_accepted() {
    let mut config = fixture();
    config.arm_audiences = vec!["https://management.airgap.example/".into()];
    let (handle, client) = start_with(config).await;
    for aud in [
        "https://management.core.windows.net/",
        "https://management.azure.com",
        "https://management.core.usgovcloudapi.net",
        "https://management.usgovcloudapi.net/",
        "https://management.core.chinacloudapi.cn",
        "https://management.chinacloudapi.cn",
        "https://management.airgap.example",
        "https://containerregistry.azure.net",
    ] {
        let token = handle
            .issue_arm_token("mi-pull", aud, Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            exchange(&client, REGISTRY, &token).await.status(),
            200,
            "{aud}"
        );
    }
}

#[tokio::test]
async fn registry_without_authentication_as_arm_takes_only_acr_audience() {
    let (handle, client) = start().await;
    let arm = imds_token(&handle, &client, MI_CLIENT).await;
    let (status, b) = body(exchange(&client, ARMLESS, &arm).await).await;
    assert_unauthorized(status, &b);
    let acr = handle
        .issue_arm_token(
            "mi-pull",
            "https://containerregistry.azure.net/",
            Duration::from_secs(600),
        )
        .unwrap();
    assert_eq!(exchange(&client, ARMLESS, &acr).await.status(), 200);
}

#[tokio::test]
async fn registry_tenant_restriction() {
    let mut config = fixture();
    config.registries[0].tenant = Some(OTHER_TENANT.into());
    let (handle, client) = start_with(config).await;
    let arm = imds_token(&handle, &client, MI_CLIENT).await;
    let (status, b) = body(exchange(&client, REGISTRY, &arm).await).await;
    assert_unauthorized(status, &b);
}

#[tokio::test]
async fn refresh_token_of_one_registry_is_not_valid_at_another() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let r = access_token_post(&client, BASIC, &refresh, "repository:app:pull").await;
    let (status, b) = body(r).await;
    assert_unauthorized(status, &b);
}

#[tokio::test]
async fn revoked_role_assignment_stops_new_access_tokens() {
    let (handle, client) = start().await;
    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    handle.remove_role_assignments("mi-pull", REGISTRY).unwrap();
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    let (status, b) = body(r).await;
    assert_unauthorized(status, &b);
    handle
        .add_role_assignment(RoleAssignment {
            identity: "mi-pull".into(),
            registry: REGISTRY.into(),
            repository: "app".into(),
            actions: vec!["pull".into()],
        })
        .unwrap();
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn v2_challenges_and_accepts_access_tokens() {
    let (handle, client) = start().await;
    let r = client
        .get(format!("https://{REGISTRY}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        format!("Bearer realm=\"https://{REGISTRY}/oauth2/token\",service=\"{REGISTRY}\"")
    );
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["errors"][0]["code"], "UNAUTHORIZED");

    let refresh = refresh_token(&handle, &client, REGISTRY).await;
    let r = access_token_post(&client, REGISTRY, &refresh, "repository:app:pull").await;
    let access = body(r).await.1["access_token"].as_str().unwrap().to_owned();
    let r = client
        .get(format!("https://{REGISTRY}/v2/"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("https://{REGISTRY}/v2/"))
        .bearer_auth(&refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .ends_with(",error=\"invalid_token\""));
    assert_eq!(handle.counts()[&Hop::V2].total, 3);
}

#[tokio::test]
async fn unknown_hosts_and_paths_are_404() {
    let (handle, client) = start().await;
    let r = client
        .get(format!("https://{REGISTRY}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get("https://login.microsoftonline.com/oauth2/exchange")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(handle.counts()[&Hop::Other].total, 2);
}
