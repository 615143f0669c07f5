//! Micro-benchmarks of the controller's hot path (`cargo bench`): the pure decision for a
//! converged and a new binding, a token-cache hit in the pipeline, and building the pull
//! Secret. A regression here shows in nanoseconds before it shows in the scale bench.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use acrpull::azure::{
    AccessTokenRequest, AcrApi, AcrCredential, AzureError, Cloud, CredentialRequest, EntraApi,
    EntraTokenRequest, ExchangeRequest, HopApis, Identity, IdentityAudience, IdentityToken,
    ImdsApi, ImdsTokenRequest, PipelineConfig, PipelineMetrics, ServiceAccountTokenSource,
    TokenPipeline, VerifyRequest,
};
use acrpull::k8s::api::v1beta2;
use acrpull::k8s::pull_secret::{document, NewToken};
use acrpull::state::binding::{validate, Policy, ServiceAccountView, Spec, V1beta2Spec, Version};
use acrpull::state::decide::{decide, BindingView, Observed, Plan, SecretView, StatusView};
use acrpull::state::token::SecretToken;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::Timestamp;

const CLIENT: &str = "aaaaaaaa-0000-4000-8000-000000000001";

fn jwt(exp: Timestamp, iat: Timestamp) -> String {
    let payload = serde_json::json!({"exp": exp.as_second(), "iat": iat.as_second(),
        "access": [{"type": "repository", "name": "app", "actions": ["pull"]}]});
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

fn spec() -> V1beta2Spec {
    V1beta2Spec {
        server: "reg0.azurecr.io".into(),
        scope: "repository:app:pull repository:base:pull".into(),
        environment: "PublicCloud".into(),
        managed: Some((CLIENT.into(), String::new())),
        service_account_name: "sa-0".into(),
        ..Default::default()
    }
}

fn new_binding() -> Observed {
    Observed {
        binding: BindingView {
            version: Version::V1beta2,
            namespace: "bench-000".into(),
            name: "pull-0000".into(),
            uid: "9a4f6c1e-0000-4000-8000-000000000000".into(),
            generation: 1,
            deleting: false,
            has_finalizer: true,
            spec: Spec::V1beta2(spec()),
            status: StatusView::default(),
        },
        matches_selector: true,
        secrets: vec![],
        target_service_account: Some(ServiceAccountView {
            name: "sa-0".into(),
            pull_secrets: vec!["acr-pull-pull-0100".into(), "unmanaged".into()],
            ..Default::default()
        }),
        workload_service_account: None,
        referencing_service_accounts: vec![],
        last_failure: None,
        siblings: vec![],
        tenancy: None,
    }
}

/// The same binding converged: its Secret fresh, attached, status written.
fn converged(now: Timestamp, policy: &Policy) -> Observed {
    let mut o = new_binding();
    let inputs = validate(&o.binding.name, &o.binding.spec, policy)
        .unwrap()
        .inputs_hash;
    o.secrets = vec![SecretView {
        name: "acr-pull-pull-0000".into(),
        expiry: Some(now + Duration::from_secs(4500)),
        refresh: Some(now - Duration::from_secs(60)),
        issued: None,
        inputs: Some(inputs),
        inputs_all: None,
        verified: Some(true),
        planned: None,
    }];
    let target = o.target_service_account.as_mut().unwrap();
    target.pull_secrets.push("acr-pull-pull-0000".into());
    o.referencing_service_accounts = vec![target.clone()];
    let Plan::WriteStatus(record) = decide(&o, now, policy).plan else {
        panic!("expected a status write");
    };
    o.binding.status = record.as_status();
    assert_eq!(decide(&o, now, policy).plan, Plan::Wait);
    o
}

fn bench_decide(c: &mut Criterion) {
    let policy = Policy::default();
    let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
    let ready = converged(now, &policy);
    let new = new_binding();
    c.bench_function("decide/converged (Wait)", |b| {
        b.iter(|| decide(black_box(&ready), now, &policy))
    });
    c.bench_function("decide/new binding (Mint)", |b| {
        b.iter(|| decide(black_box(&new), now, &policy))
    });
}

/// Hops that answer at once; after the first call everything is a cache hit.
struct Instant;

impl ImdsApi for Instant {
    fn token<'a>(
        &'a self,
        _: &'a ImdsTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>> {
        let now = Timestamp::now();
        let expires_at = now + Duration::from_secs(24 * 3600);
        async move {
            Ok(IdentityToken {
                token: SecretToken::new(jwt(expires_at, now)),
                expires_at,
            })
        }
        .boxed()
    }
}

impl EntraApi for Instant {
    fn token<'a>(
        &'a self,
        _: &'a EntraTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>> {
        unreachable!("managed identity only")
    }
}

impl AcrApi for Instant {
    fn exchange<'a>(
        &'a self,
        _: &'a ExchangeRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        let now = Timestamp::now();
        async move {
            Ok(SecretToken::new(jwt(
                now + Duration::from_secs(3 * 3600),
                now,
            )))
        }
        .boxed()
    }

    fn token<'a>(
        &'a self,
        _: &'a AccessTokenRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        let now = Timestamp::now();
        async move { Ok(SecretToken::new(jwt(now + Duration::from_secs(4500), now))) }.boxed()
    }

    fn verify<'a>(
        &'a self,
        _: &'a VerifyRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        unreachable!("not verified here")
    }
}

impl ServiceAccountTokenSource for Instant {
    fn token(&self, _: &str, _: &str, _: &str) -> BoxFuture<'_, Result<SecretToken, AzureError>> {
        unreachable!("managed identity only")
    }
}

fn bench_token_cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hops = Arc::new(Instant);
    let apis = HopApis {
        imds: hops.clone(),
        entra: hops.clone(),
        acr: hops.clone(),
    };
    let pipeline = TokenPipeline::with_apis(
        PipelineConfig::default(),
        apis,
        hops,
        PipelineMetrics::default(),
    )
    .unwrap();
    let request = CredentialRequest {
        server: "reg0.azurecr.io".into(),
        scope: Some("repository:app:pull repository:base:pull".into()),
        identity: Identity::ManagedClientId(CLIENT.into()),
        cloud: Cloud::Public,
        audience: IdentityAudience::ResourceManager,
        arm_resource_override: None,
        fresher_than: None,
    };
    runtime.block_on(pipeline.credential(&request)).unwrap();
    c.bench_function("token cache/hit", |b| {
        b.iter(|| runtime.block_on(pipeline.credential(black_box(&request))))
    });
}

fn bench_secret(c: &mut Criterion) {
    let policy = Policy::default();
    let o = new_binding();
    let resolved = validate(&o.binding.name, &o.binding.spec, &policy)
        .unwrap()
        .resolve(None)
        .unwrap();
    let now = Timestamp::now();
    let credential = AcrCredential {
        token: SecretToken::new(jwt(now + Duration::from_secs(4500), now)),
        expires_at: now + Duration::from_secs(4500),
        issued_at: Some(now),
    };
    let binding: v1beta2::AcrPullBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
        "metadata": {"name": "pull-0000", "namespace": "bench-000", "uid": "9a4f6c1e"},
        "spec": {"acr": {"server": "reg0.azurecr.io", "scope": "repository:app:pull",
                         "environment": "PublicCloud"},
                 "auth": {"managedIdentity": {"clientID": CLIENT}},
                 "serviceAccountName": "sa-0"}}))
    .unwrap();
    let token = NewToken {
        request: &resolved,
        credential: &credential,
        verified: Some(true),
        now,
        refresh_at: Some(now + Duration::from_secs(2000)),
    };
    c.bench_function("secret/document (built and serialised)", |b| {
        b.iter(|| serde_json::to_vec(&document(black_box(&binding), &token)).unwrap())
    });
}

criterion_group!(
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_decide, bench_token_cache, bench_secret
);
criterion_main!(benches);
