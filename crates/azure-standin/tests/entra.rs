//! Entra stand-in over real HTTPS: discovery, the federated client-assertion flow validated
//! against FICs, every AADSTS error, and JWKS discovery from an HTTP OIDC issuer.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use azure_standin::jwt::Signer;
use azure_standin::{FaultAction, FaultRule, Hop};
use common::*;
use serde_json::{json, Value};

/// A started stand-in whose FIC issuer JWKS is configured directly with `signer`'s key.
async fn start_with_jwks(signer: &Signer) -> (azure_standin::Handle, reqwest::Client) {
    let (handle, client) = start().await;
    handle
        .set_oidc_jwks(ISSUER, json!({"keys": [signer.jwk()]}))
        .unwrap();
    (handle, client)
}

fn valid_assertion(signer: &Signer) -> String {
    sa_token(signer, ISSUER, SUBJECT, AUDIENCE, now() - 10, now() + 3600)
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn assert_entra_error(body: &Value, code: u64, error: &str) {
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS{code}:")),
        "{body}"
    );
    for field in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(body[field].is_string(), "{field} missing: {body}");
    }
}

#[tokio::test]
async fn discovery_answers_with_issuer_on_its_own_host() {
    let (_handle, client) = start().await;
    for host in [
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
    ] {
        let body: Value = client
            .get(format!(
                "https://{host}/{TENANT}/v2.0/.well-known/openid-configuration"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["issuer"], format!("https://{host}/{TENANT}/v2.0"));
        assert_eq!(
            body["token_endpoint"],
            format!("https://{host}/{TENANT}/oauth2/v2.0/token")
        );
        assert!(body["authorization_endpoint"].is_string());
    }
    // A domain resolves to the tenant id in the issuer.
    let body: Value = client
        .get("https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["issuer"],
        format!("https://login.microsoftonline.com/{TENANT}/v2.0")
    );
}

#[tokio::test]
async fn unknown_tenant_is_aadsts90002() {
    let (_handle, client) = start().await;
    let r = client
        .get("https://login.microsoftonline.com/nope/v2.0/.well-known/openid-configuration")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, 90002, "invalid_tenant");
    assert_eq!(
        body["error_uri"],
        "https://login.microsoftonline.com/error?code=90002"
    );

    let signer = Signer::generate(Some("k".into())).unwrap();
    let r = entra_token(
        &client,
        "nope",
        APP_CLIENT,
        &valid_assertion(&signer),
        ARM_SCOPE,
    )
    .await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, 90002, "invalid_tenant");
}

#[tokio::test]
async fn client_assertion_exchanges_for_arm_token() {
    let signer = Signer::generate(Some("sa-key-1".into())).unwrap();
    let (handle, client) = start_with_jwks(&signer).await;
    let r = entra_token(
        &client,
        TENANT,
        APP_CLIENT,
        &valid_assertion(&signer),
        &format!("{ARM_SCOPE} openid offline_access profile"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let c = claims(body["access_token"].as_str().unwrap());
    // `/.default` stripped, the double slash leaves the trailing one.
    assert_eq!(c["aud"], "https://management.core.windows.net/");
    assert_eq!(c["appid"], APP_CLIENT);
    assert_eq!(c["tid"], TENANT);
    assert!(c.get("xms_mirid").is_none());

    // The same works through a tenant domain, and for a US Gov audience without a slash.
    let r = entra_token(
        &client,
        "contoso.onmicrosoft.com",
        APP_CLIENT,
        &valid_assertion(&signer),
        "https://management.core.usgovcloudapi.net/.default",
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["aud"],
        "https://management.core.usgovcloudapi.net"
    );
    let records = handle.requests_for(Hop::EntraToken);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].identity.as_deref(), Some("app-wi"));
    assert_eq!(records[0].client_id.as_deref(), Some(APP_CLIENT));
}

#[tokio::test]
async fn assertion_not_matching_a_fic_is_aadsts70021() {
    let signer = Signer::generate(Some("k".into())).unwrap();
    let (_handle, client) = start_with_jwks(&signer).await;
    let cases = [
        sa_token(
            &signer,
            ISSUER,
            "system:serviceaccount:team-a:other",
            AUDIENCE,
            now(),
            now() + 600,
        ),
        sa_token(
            &signer,
            ISSUER,
            SUBJECT,
            "api://AzureADTokenExchange",
            now(),
            now() + 600,
        ),
        sa_token(
            &signer,
            "https://other.example",
            SUBJECT,
            AUDIENCE,
            now(),
            now() + 600,
        ),
    ];
    for assertion in cases {
        let r = entra_token(&client, TENANT, APP_CLIENT, &assertion, ARM_SCOPE).await;
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400);
        assert_entra_error(&body, 70021, "invalid_request");
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .contains("No matching federated identity record found"));
    }
}

#[tokio::test]
async fn expired_or_future_assertion_is_aadsts700024() {
    let signer = Signer::generate(Some("k".into())).unwrap();
    let (_handle, client) = start_with_jwks(&signer).await;
    for (iat, exp) in [(now() - 7200, now() - 3600), (now() + 3600, now() + 7200)] {
        let assertion = sa_token(&signer, ISSUER, SUBJECT, AUDIENCE, iat, exp);
        let r = entra_token(&client, TENANT, APP_CLIENT, &assertion, ARM_SCOPE).await;
        let (status, body) = error_of(r).await;
        assert_eq!(status, 401);
        assert_entra_error(&body, 700024, "invalid_client");
    }
}

#[tokio::test]
async fn extreme_time_claims_do_not_break_the_server() {
    let signer = Signer::generate(Some("k".into())).unwrap();
    let (_handle, client) = start_with_jwks(&signer).await;
    let assertion = sa_token(&signer, ISSUER, SUBJECT, AUDIENCE, i64::MIN, i64::MAX);
    let r = entra_token(&client, TENANT, APP_CLIENT, &assertion, ARM_SCOPE).await;
    assert_eq!(r.status(), 200);
    let assertion = sa_token(&signer, ISSUER, SUBJECT, AUDIENCE, i64::MAX, i64::MIN);
    let r = entra_token(&client, TENANT, APP_CLIENT, &assertion, ARM_SCOPE).await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn unknown_client_or_client_of_another_tenant_is_aadsts700016() {
    let signer = Signer::generate(Some("k".into())).unwrap();
    let (_handle, client) = start_with_jwks(&signer).await;
    for client_id in ["99999999-9999-9999-9999-999999999999", FOREIGN_CLIENT] {
        let r = entra_token(
            &client,
            TENANT,
            client_id,
            &valid_assertion(&signer),
            ARM_SCOPE,
        )
        .await;
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400);
        assert_entra_error(&body, 700016, "unauthorized_client");
    }
}

#[tokio::test]
async fn bad_scope_is_aadsts70011() {
    let signer = Signer::generate(Some("k".into())).unwrap();
    let (_handle, client) = start_with_jwks(&signer).await;
    for scope in [
        "/.default",
        "https://management.azure.com/",
        "openid profile",
        "https://a/.default https://b/.default",
    ] {
        let r = entra_token(
            &client,
            TENANT,
            APP_CLIENT,
            &valid_assertion(&signer),
            scope,
        )
        .await;
        let (status, body) = error_of(r).await;
        assert_eq!(status, 400, "{scope}");
        assert_entra_error(&body, 70011, "invalid_scope");
    }
}

#[tokio::test]
async fn wrong_signature_is_rejected() {
    let signer = Signer::generate(Some("k".into())).unwrap();
    let impostor = Signer::generate(Some("k".into())).unwrap();
    let (_handle, client) = start_with_jwks(&signer).await;
    let r = entra_token(
        &client,
        TENANT,
        APP_CLIENT,
        &valid_assertion(&impostor),
        ARM_SCOPE,
    )
    .await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, 401);
    assert_entra_error(&body, 700027, "invalid_client");

    let r = entra_token(&client, TENANT, APP_CLIENT, "not-a-jwt", ARM_SCOPE).await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, 50027, "invalid_request");
}

#[tokio::test]
async fn missing_parameters_and_wrong_grant() {
    let (_handle, client) = start().await;
    let url = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
    let r = client
        .post(&url)
        .form(&[("grant_type", "password"), ("client_id", APP_CLIENT)])
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, 70003, "unsupported_grant_type");
    let r = client
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", APP_CLIENT),
            ("scope", ARM_SCOPE),
        ])
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, 900144, "invalid_request");
}

/// A minimal OIDC issuer on plain HTTP, like the kube stand-in's, counting JWKS fetches.
async fn oidc_issuer(jwks: Value) -> (String, Arc<AtomicUsize>) {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let fetches = Arc::new(AtomicUsize::new(0));
    let discovery = json!({"issuer": base, "jwks_uri": format!("{base}/openid/v1/jwks")});
    let counter = fetches.clone();
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(discovery) }),
        )
        .route(
            "/openid/v1/jwks",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { axum::Json(jwks) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, fetches)
}

#[tokio::test]
async fn discovers_and_caches_the_issuer_jwks_over_http() {
    let signer = Signer::generate(Some("kube-key".into())).unwrap();
    let (issuer, fetches) = oidc_issuer(json!({"keys": [signer.jwk()]})).await;
    let (handle, client) = start().await;
    handle
        .add_federated_credential(azure_standin::FederatedCredential {
            identity: "app-wi".into(),
            issuer: issuer.clone(),
            subject: SUBJECT.into(),
            audiences: vec![AUDIENCE.into()],
        })
        .unwrap();
    for _ in 0..3 {
        let assertion = sa_token(&signer, &issuer, SUBJECT, AUDIENCE, now(), now() + 600);
        let r = entra_token(&client, TENANT, APP_CLIENT, &assertion, ARM_SCOPE).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "JWKS is cached");

    // A key the cache does not know triggers one refetch (still unknown → bad signature).
    let rotated = Signer::generate(Some("kube-key-2".into())).unwrap();
    let assertion = sa_token(&rotated, &issuer, SUBJECT, AUDIENCE, now(), now() + 600);
    let r = entra_token(&client, TENANT, APP_CLIENT, &assertion, ARM_SCOPE).await;
    assert_eq!(r.status(), 401);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_issuer_is_aadsts90061() {
    let (handle, client) = start().await;
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    handle
        .add_federated_credential(azure_standin::FederatedCredential {
            identity: "app-wi".into(),
            issuer: dead.clone(),
            subject: SUBJECT.into(),
            audiences: vec![AUDIENCE.into()],
        })
        .unwrap();
    let signer = Signer::generate(None).unwrap();
    let assertion = sa_token(&signer, &dead, SUBJECT, AUDIENCE, now(), now() + 600);
    let r = entra_token(&client, TENANT, APP_CLIENT, &assertion, ARM_SCOPE).await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, 400);
    assert_entra_error(&body, 90061, "invalid_request");
}

#[tokio::test]
async fn entra_faults_use_entra_error_shape() {
    let signer = Signer::generate(Some("k".into())).unwrap();
    let (handle, client) = start_with_jwks(&signer).await;
    handle.faults().add(
        FaultRule::new(FaultAction::Status {
            status: 503,
            retry_after_secs: Some(3),
        })
        .hop(Hop::EntraToken)
        .identity("app-wi"),
    );
    let r = entra_token(
        &client,
        TENANT,
        APP_CLIENT,
        &valid_assertion(&signer),
        ARM_SCOPE,
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "3");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    // Discovery is another hop and is not affected.
    let r = client
        .get(format!(
            "https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
