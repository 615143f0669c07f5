//! Shared fixture for the integration tests: a configuration with two tenants, managed
//! identities, a workload-identity app and three registries, plus small HTTP helpers.
//! Every test starts its own stand-in on ephemeral ports.
#![allow(dead_code)]

use std::time::Duration;

use azure_standin::jwt::{Signer, Unverified};
use azure_standin::{
    AzureStandIn, Config, FederatedCredential, Handle, Identity, IdentityKind, Registry,
    RoleAssignment, Sku, Tenant,
};
use serde_json::{json, Value};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const OTHER_TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const MI_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000001";
pub const MI_OBJECT: &str = "bbbbbbbb-0000-0000-0000-000000000001";
pub const MI_RESOURCE: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-pull";
pub const NOROLE_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000002";
pub const APP_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000003";
pub const FOREIGN_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000004";
pub const REGISTRY: &str = "demo.azurecr.io";
pub const ARMLESS: &str = "armless.azurecr.io";
pub const BASIC: &str = "basic.azurecr.io";
pub const ISSUER: &str = "https://oidc.cluster.example/";
pub const SUBJECT: &str = "system:serviceaccount:team-a:puller";
pub const AUDIENCE: &str = "api://AzureCRTokenExchange";
pub const ARM_SCOPE: &str = "https://management.core.windows.net//.default";

fn identity(name: &str, client: &str, object: &str, tenant: &str, kind: IdentityKind) -> Identity {
    Identity {
        name: name.into(),
        client_id: client.into(),
        object_id: object.into(),
        resource_id: None,
        tenant: tenant.into(),
        kind,
        assigned_to_vm: true,
    }
}

fn role(identity: &str, registry: &str, repository: &str, actions: &[&str]) -> RoleAssignment {
    RoleAssignment {
        identity: identity.into(),
        registry: registry.into(),
        repository: repository.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

pub fn fixture() -> Config {
    let mut mi = identity(
        "mi-pull",
        MI_CLIENT,
        MI_OBJECT,
        TENANT,
        IdentityKind::Managed,
    );
    mi.resource_id = Some(MI_RESOURCE.into());
    Config {
        tenants: vec![
            Tenant {
                id: TENANT.into(),
                domains: vec!["contoso.onmicrosoft.com".into()],
            },
            Tenant {
                id: OTHER_TENANT.into(),
                domains: vec![],
            },
        ],
        identities: vec![
            mi,
            identity(
                "mi-norole",
                NOROLE_CLIENT,
                "bbbbbbbb-0000-0000-0000-000000000002",
                TENANT,
                IdentityKind::Managed,
            ),
            identity(
                "app-wi",
                APP_CLIENT,
                "bbbbbbbb-0000-0000-0000-000000000003",
                TENANT,
                IdentityKind::App,
            ),
            identity(
                "app-foreign",
                FOREIGN_CLIENT,
                "bbbbbbbb-0000-0000-0000-000000000004",
                OTHER_TENANT,
                IdentityKind::App,
            ),
        ],
        federated_credentials: vec![FederatedCredential {
            identity: "app-wi".into(),
            issuer: ISSUER.into(),
            subject: SUBJECT.into(),
            audiences: vec![AUDIENCE.into()],
        }],
        registries: vec![
            Registry {
                host: REGISTRY.into(),
                sku: Sku::Premium,
                authentication_as_arm: true,
                ops_per_minute: None,
                tenant: None,
                upstream: None,
            },
            Registry {
                host: ARMLESS.into(),
                sku: Sku::Standard,
                authentication_as_arm: false,
                ops_per_minute: None,
                tenant: None,
                upstream: None,
            },
            Registry {
                host: BASIC.into(),
                sku: Sku::Basic,
                authentication_as_arm: true,
                ops_per_minute: None,
                tenant: None,
                upstream: None,
            },
        ],
        role_assignments: vec![
            role("mi-pull", REGISTRY, "app", &["pull"]),
            role("mi-pull", REGISTRY, "tools", &["pull", "push"]),
            role("mi-pull", ARMLESS, "*", &["pull"]),
            role("mi-pull", BASIC, "*", &["pull"]),
            role("app-wi", REGISTRY, "*", &["*"]),
        ],
        ..Config::default()
    }
}

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn start_with(config: Config) -> (Handle, reqwest::Client) {
    install_provider();
    let handle = AzureStandIn::builder()
        .config(config)
        .start()
        .await
        .expect("stand-in starts");
    let client = handle
        .client_builder()
        .expect("client builder")
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    (handle, client)
}

pub async fn start() -> (Handle, reqwest::Client) {
    start_with(fixture()).await
}

/// IMDS token request with the usual parameters plus `extra`.
pub async fn imds(
    handle: &Handle,
    client: &reqwest::Client,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut query = vec![
        ("api-version", "2018-02-01"),
        ("resource", "https://management.azure.com/"),
    ];
    query.extend_from_slice(extra);
    client
        .get(format!(
            "{}/metadata/identity/oauth2/token",
            handle.imds_url()
        ))
        .header("Metadata", "true")
        .query(&query)
        .send()
        .await
        .expect("imds answers")
}

pub async fn imds_token(handle: &Handle, client: &reqwest::Client, client_id: &str) -> String {
    let r = imds(handle, client, &[("client_id", client_id)]).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

pub async fn exchange(
    client: &reqwest::Client,
    registry: &str,
    access_token: &str,
) -> reqwest::Response {
    client
        .post(format!(
            "https://{registry}/oauth2/exchange?api-version=2021-07-01"
        ))
        .form(&[
            ("grant_type", "access_token"),
            ("service", registry),
            ("access_token", access_token),
        ])
        .send()
        .await
        .expect("exchange answers")
}

pub async fn refresh_token(handle: &Handle, client: &reqwest::Client, registry: &str) -> String {
    let arm = imds_token(handle, client, MI_CLIENT).await;
    let r = exchange(client, registry, &arm).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["refresh_token"].as_str().unwrap().to_owned()
}

pub async fn access_token_post(
    client: &reqwest::Client,
    registry: &str,
    refresh: &str,
    scope: &str,
) -> reqwest::Response {
    client
        .post(format!("https://{registry}/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("service", registry),
            ("scope", scope),
            ("refresh_token", refresh),
        ])
        .send()
        .await
        .expect("token answers")
}

pub fn claims(token: &str) -> Value {
    Unverified::parse(token).expect("a JWT").claims
}

pub fn header(token: &str) -> Value {
    Unverified::parse(token).expect("a JWT").header
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A Kubernetes-style service-account token signed by `signer`.
pub fn sa_token(signer: &Signer, iss: &str, sub: &str, aud: &str, iat: i64, exp: i64) -> String {
    signer
        .sign(&json!({
            "iss": iss,
            "sub": sub,
            "aud": [aud],
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "puller"}},
        }))
        .unwrap()
}

/// Entra token request with a client assertion, as MSAL Go sends it.
pub async fn entra_token(
    client: &reqwest::Client,
    tenant: &str,
    client_id: &str,
    assertion: &str,
    scope: &str,
) -> reqwest::Response {
    client
        .post(format!(
            "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
        ))
        .form(&[
            ("client_assertion", assertion),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_id", client_id),
            ("client_info", "1"),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("entra answers")
}
