//! The production pipeline (reqwest clients, real TLS verification, allowed-suffix check on)
//! end to end against the azure stand-in: managed and workload identity, all four clouds, the
//! ACR-audience option, Azure-side failures, and the credential presented to the registry's
//! Basic-auth token endpoint the way a kubelet would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use acrpull::azure::{
    AcrCredential, AzureError, Cloud, CredentialRequest, Hop, Identity, IdentityAudience,
    PipelineConfig, PipelineMetrics, ServiceAccountTokenSource, TokenPipeline,
};
use acrpull::state::jwt;
use acrpull::state::token::SecretToken;
use azure_standin::jwt::Signer;
use azure_standin::{
    AzureStandIn, Config, FaultAction, FaultRule, FederatedCredential, Handle,
    Identity as SIdentity, IdentityKind, Registry, RoleAssignment, Sku, Tenant, Trigger,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const MI_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const MI_RESOURCE: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-pull";
const NOROLE_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000002";
const UNASSIGNED_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000005";
const APP_CLIENT: &str = "aaaaaaaa-0000-0000-0000-000000000003";
const REGISTRY: &str = "demo.azurecr.io";
const ARMLESS: &str = "armless.azurecr.io";
const ISSUER: &str = "https://oidc.cluster.example/";
const SA_AUDIENCE: &str = "api://AzureCRTokenExchange";
const AIR_AUTHORITY: &str = "login.air.example";
const AIR_ARM: &str = "https://management.air.example/";
/// A registry under a suffix the operator added (not Azure's).
const CUSTOM_REGISTRY: &str = "registry.air.example";

fn identity(name: &str, client: &str, object: &str, kind: IdentityKind) -> SIdentity {
    SIdentity {
        name: name.into(),
        client_id: client.into(),
        object_id: object.into(),
        resource_id: None,
        tenant: TENANT.into(),
        kind,
        assigned_to_vm: true,
    }
}

fn role(identity: &str, registry: &str, repository: &str) -> RoleAssignment {
    RoleAssignment {
        identity: identity.into(),
        registry: registry.into(),
        repository: repository.into(),
        actions: vec!["pull".into()],
    }
}

fn registry(host: &str, authentication_as_arm: bool) -> Registry {
    Registry {
        host: host.into(),
        sku: Sku::Premium,
        authentication_as_arm,
        ops_per_minute: None,
        tenant: None,
        upstream: None,
    }
}

fn standin_config() -> Config {
    let mut mi = identity(
        "mi-pull",
        MI_CLIENT,
        "bbbbbbbb-0000-0000-0000-000000000001",
        IdentityKind::Managed,
    );
    mi.resource_id = Some(MI_RESOURCE.into());
    let mut unassigned = identity(
        "mi-unassigned",
        UNASSIGNED_CLIENT,
        "bbbbbbbb-0000-0000-0000-000000000005",
        IdentityKind::Managed,
    );
    unassigned.assigned_to_vm = false;
    Config {
        tenants: vec![Tenant {
            id: TENANT.into(),
            domains: vec![],
        }],
        identities: vec![
            mi,
            identity(
                "mi-norole",
                NOROLE_CLIENT,
                "bbbbbbbb-0000-0000-0000-000000000002",
                IdentityKind::Managed,
            ),
            unassigned,
            identity(
                "app-wi",
                APP_CLIENT,
                "bbbbbbbb-0000-0000-0000-000000000003",
                IdentityKind::App,
            ),
        ],
        federated_credentials: vec![FederatedCredential {
            identity: "app-wi".into(),
            issuer: ISSUER.into(),
            subject: "system:serviceaccount:team-a:puller".into(),
            audiences: vec![SA_AUDIENCE.into()],
        }],
        registries: vec![
            registry(REGISTRY, true),
            registry(ARMLESS, false),
            registry(CUSTOM_REGISTRY, true),
        ],
        role_assignments: vec![
            role("mi-pull", REGISTRY, "app"),
            role("mi-pull", ARMLESS, "*"),
            role("app-wi", REGISTRY, "app"),
        ],
        entra_hosts: vec![AIR_AUTHORITY.into()],
        arm_audiences: vec![AIR_ARM.into()],
        ..Config::default()
    }
}

/// Mints Kubernetes-style ServiceAccount tokens signed with a key whose JWKS the stand-in's
/// Entra trusts for `ISSUER` (what the kube-apiserver and its OIDC discovery would provide).
struct SignedServiceAccounts {
    signer: Signer,
    minted: Mutex<Vec<String>>,
}

impl ServiceAccountTokenSource for SignedServiceAccounts {
    fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> BoxFuture<'_, Result<SecretToken, AzureError>> {
        let now = jiff::Timestamp::now().as_second();
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
        });
        let result = self
            .signer
            .sign(&claims)
            .map_err(|e| AzureError::service_account_token(e.to_string(), false));
        if let Ok(token) = &result {
            self.minted.lock().unwrap().push(token.clone());
        }
        async move { result.map(SecretToken::new) }.boxed()
    }
}

struct Env {
    standin: Handle,
    sa: Arc<SignedServiceAccounts>,
    pipeline: TokenPipeline,
    metrics: PipelineMetrics,
}

async fn env() -> Env {
    env_with(|_| {}).await
}

async fn env_with(tweak: impl FnOnce(&mut PipelineConfig)) -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let standin = AzureStandIn::builder()
        .config(standin_config())
        .start()
        .await
        .expect("stand-in starts");
    let signer = Signer::generate(Some("sa-key".into())).expect("key");
    standin
        .set_oidc_jwks(ISSUER, json!({"keys": [signer.jwk()]}))
        .expect("jwks");
    let sa = Arc::new(SignedServiceAccounts {
        signer,
        minted: Mutex::new(Vec::new()),
    });
    let https = standin.https_addr();
    let resolve = [
        REGISTRY,
        ARMLESS,
        CUSTOM_REGISTRY,
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        AIR_AUTHORITY,
    ]
    .iter()
    .map(|host| (host.to_string(), https))
    .collect();
    let mut config = PipelineConfig {
        imds_base_url: standin.imds_url(),
        resolve,
        extra_ca_pem: Some(standin.ca_pem().into_bytes()),
        // The stand-in's air-gapped cloud, as an operator would list it.
        allowed_clouds: acrpull::state::tenancy::AllowedClouds::new(
            [format!("https://{AIR_AUTHORITY}")],
            [AIR_ARM],
        ),
        ..PipelineConfig::default()
    };
    config.retry.base_delay = Duration::from_millis(50);
    tweak(&mut config);
    let metrics = PipelineMetrics::new();
    let pipeline = TokenPipeline::new(config, sa.clone(), metrics.clone()).expect("pipeline");
    Env {
        standin,
        sa,
        pipeline,
        metrics,
    }
}

fn managed(client_id: &str, server: &str, scope: Option<&str>) -> CredentialRequest {
    CredentialRequest {
        server: server.into(),
        scope: scope.map(str::to_string),
        identity: Identity::ManagedClientId(client_id.into()),
        cloud: Cloud::Public,
        audience: IdentityAudience::ResourceManager,
        arm_resource_override: None,
        fresher_than: None,
    }
}

fn workload(namespace: &str, name: &str, cloud: Cloud) -> CredentialRequest {
    CredentialRequest {
        server: REGISTRY.into(),
        scope: Some("repository:app:pull".into()),
        identity: Identity::Workload {
            tenant_id: TENANT.into(),
            client_id: APP_CLIENT.into(),
            service_account_namespace: namespace.into(),
            service_account_name: name.into(),
        },
        cloud,
        audience: IdentityAudience::ResourceManager,
        arm_resource_override: None,
        fresher_than: None,
    }
}

async fn ok(env: &Env, req: &CredentialRequest) -> AcrCredential {
    env.pipeline
        .credential(req)
        .await
        .unwrap_or_else(|e| panic!("{e} [{}] ({})", e.reason(), e.hint()))
}

async fn fails(env: &Env, req: &CredentialRequest) -> AzureError {
    match env.pipeline.credential(req).await {
        Ok(_) => panic!("expected {req:?} to fail"),
        Err(e) => e,
    }
}

/// The registry token the kubelet would get for `scope` with this credential, and what it grants.
async fn registry_grant(
    env: &Env,
    credential: &AcrCredential,
    scope: &str,
) -> Result<Vec<(String, String, Vec<String>)>, AzureError> {
    let token = env
        .pipeline
        .verify(REGISTRY, &credential.token, scope)
        .await?;
    Ok(jwt::granted_access(token.expose())
        .expect("registry token is a JWT")
        .into_iter()
        .map(|a| (a.resource_type, a.name, a.actions))
        .collect())
}

fn pull(repository: &str) -> Vec<(String, String, Vec<String>)> {
    vec![("repository".into(), repository.into(), vec!["pull".into()])]
}

#[tokio::test]
async fn managed_identity_end_to_end_and_the_kubelet_view() {
    let env = env().await;
    let credential = ok(
        &env,
        &managed(MI_CLIENT, REGISTRY, Some("repository:app:pull")),
    )
    .await;
    let times = jwt::token_times(credential.token.expose()).unwrap();
    assert_eq!(credential.expires_at, times.expires_at);
    let lifetime = credential.expires_at.duration_since(jiff::Timestamp::now());
    assert!(lifetime.as_secs() > 70 * 60 && lifetime.as_secs() <= 75 * 60);

    assert_eq!(
        registry_grant(&env, &credential, "repository:app:pull")
            .await
            .unwrap(),
        pull("app")
    );
    match registry_grant(&env, &credential, "repository:other:pull").await {
        Ok(granted) => assert!(granted.is_empty(), "granted outside the scope: {granted:?}"),
        Err(e) => assert_eq!(e.reason(), "Unauthorized"),
    }

    // Unscoped: the refresh token is the credential; the registry grants from the role.
    let unscoped = ok(&env, &managed(MI_CLIENT, REGISTRY, None)).await;
    assert_eq!(
        registry_grant(&env, &unscoped, "repository:app:pull")
            .await
            .unwrap(),
        pull("app")
    );
    assert!(registry_grant(&env, &unscoped, "repository:secret:pull")
        .await
        .map(|g| g.is_empty())
        .unwrap_or(true));

    // By resource id too.
    let by_resource = CredentialRequest {
        identity: Identity::ManagedResourceId(MI_RESOURCE.into()),
        ..managed("", REGISTRY, Some("repository:app:pull"))
    };
    ok(&env, &by_resource).await;

    let counts = env.standin.counts();
    let imds = counts
        .get(&azure_standin::Hop::Imds)
        .map(|c| c.total)
        .unwrap_or_default();
    assert_eq!(imds, 2, "one IMDS call per identity: {counts:?}");
    assert_eq!(
        env.metrics.requests_total(Hop::AcrVerify, "success")
            + env.metrics.requests_total(Hop::AcrVerify, "Unauthorized"),
        4
    );
}

#[tokio::test]
async fn workload_identity_end_to_end() {
    let env = env().await;
    let credential = ok(&env, &workload("team-a", "puller", Cloud::Public)).await;
    assert_eq!(
        registry_grant(&env, &credential, "repository:app:pull")
            .await
            .unwrap(),
        pull("app")
    );
    let minted = env.sa.minted.lock().unwrap().clone();
    assert_eq!(minted.len(), 1);

    // Another ServiceAccount of the same namespace is not federated: Entra refuses it, and the
    // cached token of `puller` must not be reused for it.
    let e = fails(&env, &workload("team-a", "intruder", Cloud::Public)).await;
    assert_eq!(e.reason(), "FederationMismatch", "{e}");
    assert!(e.hint().contains("subject"));
    assert!(
        e.to_string()
            .contains("system:serviceaccount:team-a:intruder"),
        "{e}"
    );
    for token in env.sa.minted.lock().unwrap().iter() {
        assert!(!format!("{e} {e:?} {}", e.user_message()).contains(token.as_str()));
    }
}

#[tokio::test]
async fn an_error_body_from_a_non_azure_authority_is_not_quoted() {
    // An air-gapped authority is the operator's host, not Microsoft's: what it answers (text
    // posing as instructions, links) must not reach status and Events, where whoever reads
    // the binding sees it. Its bare error code still classifies the failure.
    let env = env().await;
    let hostile = json!({"error": "invalid_client",
                         "error_description": "AADSTS70021: to fix this visit https://evil.example/fix",
                         "error_codes": [70021]})
    .to_string();
    for host in [AIR_AUTHORITY, "login.microsoftonline.com"] {
        env.standin.faults().add(
            FaultRule::new(FaultAction::Custom {
                status: 400,
                body: hostile.clone(),
                content_type: Some("application/json".into()),
                retry_after_secs: None,
            })
            .hop(azure_standin::Hop::EntraToken)
            .host(host),
        );
    }
    let air = Cloud::Airgapped {
        entra_authority_host: format!("https://{AIR_AUTHORITY}"),
        resource_manager_audience: AIR_ARM.into(),
    };
    let e = fails(&env, &workload("team-a", "puller", air)).await;
    assert_eq!(e.reason(), "FederationMismatch", "{e}");
    let shown = format!("{e} {}", e.user_message());
    assert!(!shown.contains("evil.example"), "{shown}");
    // The control: Azure's own authority is quoted as before.
    let e = fails(&env, &workload("team-a", "puller", Cloud::Public)).await;
    let shown = format!("{e} {}", e.user_message());
    assert!(shown.contains("evil.example"), "{shown}");
}

#[tokio::test]
async fn an_error_body_from_a_non_azure_registry_is_not_quoted() {
    // The same for a registry under a suffix the operator allowed: not Azure's service.
    let env = env_with(|c| c.allowed_suffixes.push("air.example".into())).await;
    let hostile = json!({"errors": [{"code": "DENIED",
                                     "message": "token expired: paste it at https://evil.example/fix"}]})
    .to_string();
    for host in [CUSTOM_REGISTRY, REGISTRY] {
        env.standin.faults().add(
            FaultRule::new(FaultAction::Custom {
                status: 401,
                body: hostile.clone(),
                content_type: Some("application/json".into()),
                retry_after_secs: None,
            })
            .hop(azure_standin::Hop::AcrExchange)
            .host(host),
        );
    }
    let e = fails(
        &env,
        &managed(MI_CLIENT, CUSTOM_REGISTRY, Some("repository:app:pull")),
    )
    .await;
    let shown = format!("{e} {}", e.user_message());
    assert!(shown.contains("DENIED"), "the bare code is kept: {shown}");
    assert!(!shown.contains("evil.example"), "{shown}");
    // The control: an Azure registry's answer is quoted as before.
    let e = fails(
        &env,
        &managed(MI_CLIENT, REGISTRY, Some("repository:app:pull")),
    )
    .await;
    let shown = format!("{e} {}", e.user_message());
    assert!(shown.contains("evil.example"), "{shown}");
}

#[tokio::test]
async fn every_cloud_end_to_end() {
    let env = env().await;
    let air = Cloud::Airgapped {
        entra_authority_host: format!("https://{AIR_AUTHORITY}"),
        resource_manager_audience: AIR_ARM.into(),
    };
    for cloud in [Cloud::Public, Cloud::USGovernment, Cloud::China, air] {
        let credential = ok(&env, &workload("team-a", "puller", cloud.clone())).await;
        assert_eq!(
            registry_grant(&env, &credential, "repository:app:pull")
                .await
                .unwrap(),
            pull("app"),
            "{cloud:?}"
        );
        let req = CredentialRequest {
            cloud: cloud.clone(),
            ..managed(MI_CLIENT, REGISTRY, Some("repository:app:pull"))
        };
        ok(&env, &req).await;
    }
    let entra: Vec<String> = env
        .standin
        .requests_for(azure_standin::Hop::EntraToken)
        .into_iter()
        .map(|r| r.host)
        .collect();
    assert_eq!(
        entra,
        vec![
            "login.microsoftonline.com",
            "login.microsoftonline.us",
            "login.chinacloudapi.cn",
            AIR_AUTHORITY
        ]
    );
}

#[tokio::test]
async fn acr_audience_option_for_registries_without_authentication_as_arm() {
    let env = env().await;
    let arm = managed(MI_CLIENT, ARMLESS, Some("repository:app:pull"));
    let e = fails(&env, &arm).await;
    assert_eq!(e.reason(), "Unauthorized");
    assert!(e.hint().contains("authentication-as-ARM"));
    assert_eq!(
        env.metrics.requests_total(Hop::AcrExchange, "Unauthorized"),
        1,
        "401 is not retried"
    );

    let acr = CredentialRequest {
        audience: IdentityAudience::ContainerRegistry,
        ..arm.clone()
    };
    ok(&env, &acr).await;
    let mut wi = workload("team-a", "puller", Cloud::Public);
    wi.audience = IdentityAudience::ContainerRegistry;
    ok(&env, &wi).await;
}

#[tokio::test]
async fn azure_side_failures_are_classified() {
    let env = env().await;
    let e = fails(&env, &managed(UNASSIGNED_CLIENT, REGISTRY, None)).await;
    assert_eq!(e.reason(), "IdentityNotFound", "{e}");
    assert!(e.hint().contains("VM or VMSS"));

    let e = fails(&env, &managed(NOROLE_CLIENT, REGISTRY, None)).await;
    assert_eq!(e.reason(), "Unauthorized", "{e}");
    assert!(e.hint().contains("AcrPull"));

    let mut wrong_tenant = workload("team-a", "puller", Cloud::Public);
    if let Identity::Workload { tenant_id, .. } = &mut wrong_tenant.identity {
        *tenant_id = "00000000-0000-0000-0000-00000000dead".into();
    }
    let e = fails(&env, &wrong_tenant).await;
    assert_eq!(e.reason(), "TenantNotFound", "{e}");

    let mut unknown_app = workload("team-a", "puller", Cloud::Public);
    if let Identity::Workload { client_id, .. } = &mut unknown_app.identity {
        *client_id = "cccccccc-0000-0000-0000-000000000000".into();
    }
    let e = fails(&env, &unknown_app).await;
    assert_eq!(e.reason(), "IdentityNotFound", "{e}");
    assert!(e.hint().contains("AADSTS700016"));
}

#[tokio::test]
async fn throttling_and_outages_are_retried_honouring_retry_after() {
    let env = env().await;
    env.standin.faults().add(
        FaultRule::new(FaultAction::Throttle {
            json: false,
            retry_after_secs: Some(1),
        })
        .hop(azure_standin::Hop::AcrExchange)
        .trigger(Trigger::NextN { n: 1 }),
    );
    env.standin.faults().add(
        FaultRule::new(FaultAction::Status {
            status: 410,
            retry_after_secs: Some(1),
        })
        .hop(azure_standin::Hop::Imds)
        .trigger(Trigger::NextN { n: 1 }),
    );
    let started = std::time::Instant::now();
    ok(&env, &managed(MI_CLIENT, REGISTRY, None)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.metrics.retries_total(Hop::Imds), 1);
    assert_eq!(env.metrics.retries_total(Hop::AcrExchange), 1);
    assert_eq!(env.metrics.requests_total(Hop::AcrExchange, "Throttled"), 1);
    assert_eq!(env.metrics.requests_total(Hop::Imds, "AzureUnavailable"), 1);
}

#[tokio::test]
async fn hangs_time_out_and_tls_names_are_verified() {
    let env = env_with(|c| {
        c.timeouts.request = Duration::from_millis(500);
        c.retry.max_attempts = 2;
    })
    .await;
    env.standin
        .faults()
        .add(FaultRule::new(FaultAction::Hang).hop(azure_standin::Hop::Imds));
    let e = fails(&env, &managed(MI_CLIENT, REGISTRY, None)).await;
    assert_eq!(e.reason(), "AzureUnavailable");
    assert!(e.to_string().contains("timed out"), "{e}");
    env.standin.faults().clear();

    // A host the stand-in's certificate does not cover is refused by TLS verification.
    let other = env_with(|c| {
        c.allowed_suffixes = vec!["azurecr.io".into(), "example.org".into()];
        c.resolve.push(("evil.example.org".into(), c.resolve[0].1));
    })
    .await;
    let e = fails(&other, &managed(MI_CLIENT, "evil.example.org", None)).await;
    assert_eq!(e.reason(), "InvalidConfig", "{e}");
}
