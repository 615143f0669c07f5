//! The token pipeline over fake hops with paused tokio time: caching, single flight, the scale
//! target (calls = distinct keys per hop), limiter bounds under a burst, backoff and
//! Retry-After, classification, clouds and audiences, and the allowed-suffix guard.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acrpull::azure::{
    AccessTokenRequest, AcrApi, AcrCredential, AuthorityHosts, AzureError, CacheResult, Cloud,
    CredentialRequest, EntraApi, EntraTokenRequest, ErrorKind, ExchangeRequest, Hop, HopApis,
    Identity, IdentityAudience, IdentityToken, ImdsApi, ImdsSelector, ImdsTokenRequest,
    LimitConfig, PipelineConfig, PipelineMetrics, RetryPolicy, ServiceAccountTokenSource,
    TokenPipeline, TokioWallClock, VerifyRequest, WallClock,
};
use acrpull::state::tenancy::AllowedClouds;
use acrpull::state::token::SecretToken;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Fakes

fn jwt(exp: Timestamp, iat: Timestamp, tag: &str) -> String {
    let payload = serde_json::json!({"exp": exp.as_second(), "iat": iat.as_second(), "jti": tag});
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    )
}

/// Per-hop behaviour shared by the fakes: recorded call times, in-flight high-water mark,
/// scripted failures, latency.
struct HopLog<R> {
    calls: Mutex<Vec<(Instant, R)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    script: Mutex<VecDeque<AzureError>>,
    latency: Mutex<Duration>,
}

impl<R> Default for HopLog<R> {
    fn default() -> Self {
        Self {
            calls: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            script: Mutex::default(),
            latency: Mutex::default(),
        }
    }
}

impl<R: Clone> HopLog<R> {
    async fn enter(&self, request: R) -> Result<InFlight<'_, R>, AzureError> {
        self.calls.lock().unwrap().push((Instant::now(), request));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(self);
        let latency = *self.latency.lock().unwrap();
        tokio::time::sleep(latency).await;
        if let Some(err) = self.script.lock().unwrap().pop_front() {
            return Err(err);
        }
        Ok(guard)
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn times(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().map(|(t, _)| *t).collect()
    }

    fn requests(&self) -> Vec<R> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn fail_next(&self, errors: impl IntoIterator<Item = AzureError>) {
        self.script.lock().unwrap().extend(errors);
    }

    fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }
}

struct InFlight<'a, R>(&'a HopLog<R>);

impl<R> Drop for InFlight<'_, R> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct FakeImds {
    log: HopLog<ImdsTokenRequest>,
    clock: TokioWallClock,
    lifetime: Mutex<Duration>,
}

impl ImdsApi for FakeImds {
    fn token<'a>(
        &'a self,
        request: &'a ImdsTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>> {
        async move {
            let _guard = self.log.enter(request.clone()).await?;
            let now = self.clock.now();
            let expires_at = now + *self.lifetime.lock().unwrap();
            Ok(IdentityToken {
                token: SecretToken::new(jwt(expires_at, now, "imds")),
                expires_at,
            })
        }
        .boxed()
    }
}

struct FakeEntra {
    log: HopLog<EntraTokenRequest>,
    clock: TokioWallClock,
}

impl EntraApi for FakeEntra {
    fn token<'a>(
        &'a self,
        request: &'a EntraTokenRequest,
    ) -> BoxFuture<'a, Result<IdentityToken, AzureError>> {
        async move {
            let _guard = self.log.enter(request.clone()).await?;
            let now = self.clock.now();
            let expires_at = now + Duration::from_secs(3600);
            Ok(IdentityToken {
                token: SecretToken::new(jwt(expires_at, now, "entra")),
                expires_at,
            })
        }
        .boxed()
    }
}

struct FakeAcr {
    exchange: HopLog<ExchangeRequest>,
    token: HopLog<AccessTokenRequest>,
    verify: HopLog<VerifyRequest>,
    clock: TokioWallClock,
    refresh_lifetime: Mutex<Duration>,
    access_lifetime: Mutex<Duration>,
    issued: AtomicUsize,
}

impl FakeAcr {
    fn mint(&self, lifetime: Duration, kind: &str) -> SecretToken {
        let now = self.clock.now();
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        SecretToken::new(jwt(now + lifetime, now, &format!("{kind}-{n}")))
    }
}

impl AcrApi for FakeAcr {
    fn exchange<'a>(
        &'a self,
        request: &'a ExchangeRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        async move {
            let _guard = self.exchange.enter(request.clone()).await?;
            Ok(self.mint(*self.refresh_lifetime.lock().unwrap(), "refresh"))
        }
        .boxed()
    }

    fn token<'a>(
        &'a self,
        request: &'a AccessTokenRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        async move {
            let _guard = self.token.enter(request.clone()).await?;
            Ok(self.mint(*self.access_lifetime.lock().unwrap(), "access"))
        }
        .boxed()
    }

    fn verify<'a>(
        &'a self,
        request: &'a VerifyRequest,
    ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
        async move {
            let _guard = self.verify.enter(request.clone()).await?;
            Ok(self.mint(Duration::from_secs(300), "registry"))
        }
        .boxed()
    }
}

#[derive(Default)]
struct FakeSa {
    calls: Mutex<Vec<(String, String, String)>>,
    script: Mutex<VecDeque<Option<AzureError>>>,
}

impl ServiceAccountTokenSource for FakeSa {
    fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> BoxFuture<'_, Result<SecretToken, AzureError>> {
        self.calls
            .lock()
            .unwrap()
            .push((namespace.into(), name.into(), audience.into()));
        let token = SecretToken::new(format!("sa-token-{namespace}-{name}"));
        let scripted = self.script.lock().unwrap().pop_front();
        async move {
            match scripted {
                // `Some(None)`: hang (the pipeline's timeout must fire).
                Some(None) => std::future::pending().await,
                Some(Some(err)) => Err(err),
                None => Ok(token),
            }
        }
        .boxed()
    }
}

struct World {
    clock: TokioWallClock,
    imds: Arc<FakeImds>,
    entra: Arc<FakeEntra>,
    acr: Arc<FakeAcr>,
    sa: Arc<FakeSa>,
    metrics: PipelineMetrics,
    pipeline: TokenPipeline,
}

fn start() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn world(tweak: impl FnOnce(&mut PipelineConfig)) -> World {
    let clock = TokioWallClock::starting_at(start());
    let imds = Arc::new(FakeImds {
        log: HopLog::default(),
        clock,
        lifetime: Mutex::new(Duration::from_secs(24 * 3600)),
    });
    let entra = Arc::new(FakeEntra {
        log: HopLog::default(),
        clock,
    });
    let acr = Arc::new(FakeAcr {
        exchange: HopLog::default(),
        token: HopLog::default(),
        verify: HopLog::default(),
        clock,
        refresh_lifetime: Mutex::new(Duration::from_secs(3 * 3600)),
        access_lifetime: Mutex::new(Duration::from_secs(75 * 60)),
        issued: AtomicUsize::new(0),
    });
    let sa = Arc::new(FakeSa::default());
    let metrics = PipelineMetrics::new();
    let mut config = PipelineConfig {
        clock: Arc::new(clock),
        // The air-gapped cloud the tests use, as an operator would list it.
        allowed_clouds: AllowedClouds::new(
            ["https://login.air.test"],
            ["https://management.air.test/"],
        ),
        ..PipelineConfig::default()
    };
    tweak(&mut config);
    let apis = HopApis {
        imds: imds.clone(),
        entra: entra.clone(),
        acr: acr.clone(),
    };
    let pipeline = TokenPipeline::with_apis(config, apis, sa.clone(), metrics.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    World {
        clock,
        imds,
        entra,
        acr,
        sa,
        metrics,
        pipeline,
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
        server: "demo.azurecr.io".into(),
        scope: Some("repository:app:pull".into()),
        identity: Identity::Workload {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            service_account_namespace: namespace.into(),
            service_account_name: name.into(),
        },
        cloud,
        audience: IdentityAudience::ResourceManager,
        arm_resource_override: None,
        fresher_than: None,
    }
}

async fn ok(world: &World, req: &CredentialRequest) -> AcrCredential {
    world
        .pipeline
        .credential(req)
        .await
        .unwrap_or_else(|e| panic!("{e} ({})", e.hint()))
}

async fn err(world: &World, req: &CredentialRequest) -> AzureError {
    match world.pipeline.credential(req).await {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// (imds, entra, exchange, token) call counts.
fn calls(world: &World) -> (usize, usize, usize, usize) {
    (
        world.imds.log.count(),
        world.entra.log.count(),
        world.acr.exchange.count(),
        world.acr.token.count(),
    )
}

fn unavailable() -> AzureError {
    AzureError::new(ErrorKind::AzureUnavailable, "HTTP 503")
}

// ---------------------------------------------------------------------------------------------
// Caching

#[tokio::test(start_paused = true)]
async fn cached_tokens_are_reused_until_half_life() {
    let w = world(|_| {});
    let req = managed("c1", "demo.azurecr.io", Some("repository:app:pull"));
    let first = ok(&w, &req).await;
    assert_eq!(first.expires_at, start() + Duration::from_secs(75 * 60));
    assert_eq!(first.issued_at, Some(start()));
    assert_eq!(calls(&w), (1, 0, 1, 1));

    let again = ok(&w, &req).await;
    assert_eq!(again, first);
    assert_eq!(calls(&w), (1, 0, 1, 1));
    assert_eq!(w.metrics.cache_total(Hop::AcrToken, CacheResult::Hit), 1);

    // Past the access token's half-life (37.5 min): a new access token from the cached
    // refresh token (3 h, half-life 90 min).
    tokio::time::advance(Duration::from_secs(38 * 60)).await;
    let second = ok(&w, &req).await;
    assert_ne!(second.token, first.token);
    assert_eq!(calls(&w), (1, 0, 1, 2));

    // Past the refresh token's half-life: a new exchange with the cached 24 h identity token.
    tokio::time::advance(Duration::from_secs(60 * 60)).await;
    ok(&w, &req).await;
    assert_eq!(calls(&w), (1, 0, 2, 3));
    assert_eq!(w.metrics.cache_total(Hop::Imds, CacheResult::Hit), 1);
}

#[tokio::test(start_paused = true)]
async fn identity_tokens_are_reused_until_five_minutes_before_expiry() {
    let w = world(|_| {});
    *w.imds.lifetime.lock().unwrap() = Duration::from_secs(3600);
    // Unscoped and short-lived refresh tokens, so every few minutes needs a new exchange.
    *w.acr.refresh_lifetime.lock().unwrap() = Duration::from_secs(4 * 60);
    let req = managed("c1", "demo.azurecr.io", None);
    ok(&w, &req).await;
    for minute in [3, 30, 54] {
        let now = w.clock.now();
        let target = start() + Duration::from_secs(minute * 60);
        tokio::time::advance(Duration::try_from(target.duration_since(now)).unwrap()).await;
        ok(&w, &req).await;
        assert_eq!(
            w.imds.log.count(),
            1,
            "minute {minute}: identity token must be reused"
        );
    }
    tokio::time::advance(Duration::from_secs(2 * 60)).await; // 56 min: 4 min left
    ok(&w, &req).await;
    assert_eq!(w.imds.log.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn fresher_than_refuses_a_cached_token_that_is_not_newer() {
    let w = world(|_| {});
    let mut req = managed("c1", "demo.azurecr.io", Some("repository:app:pull"));
    let held = ok(&w, &req).await;
    tokio::time::advance(Duration::from_secs(60)).await;

    req.fresher_than = Some(held.expires_at - SignedDuration::from_secs(1));
    assert_eq!(
        ok(&w, &req).await,
        held,
        "the cached token is newer than the caller's"
    );
    assert_eq!(w.acr.token.count(), 1);

    req.fresher_than = Some(held.expires_at);
    let newer = ok(&w, &req).await;
    assert!(newer.expires_at > held.expires_at);
    assert_eq!(calls(&w), (1, 0, 1, 2), "only the last hop is repeated");

    // Unscoped: the refresh token is the credential and obeys fresher_than too.
    let mut unscoped = managed("c1", "demo.azurecr.io", None);
    let refresh = ok(&w, &unscoped).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    unscoped.fresher_than = Some(refresh.expires_at);
    let refreshed = ok(&w, &unscoped).await;
    assert!(refreshed.expires_at > refresh.expires_at);
    assert_eq!(w.acr.exchange.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Single flight and the scale target

#[tokio::test(start_paused = true)]
async fn concurrent_identical_requests_make_one_call_per_hop() {
    let w = Arc::new(world(|_| {}));
    for log_latency in [
        &w.imds.log.latency,
        &w.acr.exchange.latency,
        &w.acr.token.latency,
    ] {
        *log_latency.lock().unwrap() = Duration::from_millis(200);
    }
    let req = managed("c1", "demo.azurecr.io", Some("repository:app:pull"));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let w = w.clone();
            let req = req.clone();
            tokio::spawn(async move { w.pipeline.credential(&req).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap().unwrap().token);
    }
    assert!(tokens.windows(2).all(|p| p[0] == p[1]));
    assert_eq!(calls(&w), (1, 0, 1, 1));
    assert_eq!(w.metrics.cache_total(Hop::AcrToken, CacheResult::Miss), 1);
    assert_eq!(
        w.metrics.cache_total(Hop::AcrToken, CacheResult::Coalesced),
        199
    );
}

#[tokio::test(start_paused = true)]
async fn azure_calls_equal_distinct_keys_per_hop() {
    let w = Arc::new(world(|c| {
        c.allowed_suffixes = vec!["azurecr.io".into(), "example.test".into()];
    }));
    w.imds.log.set_latency(Duration::from_millis(50));
    w.acr.exchange.set_latency(Duration::from_millis(50));
    w.acr.token.set_latency(Duration::from_millis(50));
    let identities = ["id-a", "id-b", "id-c"];
    let registries = ["one.azurecr.io", "two.example.test"];
    let scopes = [
        "repository:a:pull",
        "repository:b:pull",
        "repository:c:pull,push",
        "repository:a:pull repository:b:pull",
    ];
    let mut tasks = Vec::new();
    for replica in 0..5 {
        for id in identities {
            for registry in registries {
                for scope in scopes {
                    // Equivalent spellings must share a cache entry.
                    let scope = if replica % 2 == 0 {
                        scope.to_string()
                    } else {
                        scope.split(' ').rev().collect::<Vec<_>>().join("  ")
                    };
                    let req = managed(id, registry, Some(&scope));
                    let w = w.clone();
                    tasks.push(tokio::spawn(
                        async move { w.pipeline.credential(&req).await },
                    ));
                }
            }
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(calls(&w), (3, 0, 3 * 2, 3 * 2 * 4));
}

#[tokio::test(start_paused = true)]
async fn workload_identity_cache_key_holds_the_service_account_and_authority() {
    let w = world(|c| {
        c.authority_hosts = AuthorityHosts {
            us_government: Some("https://login.gov.example.test".into()),
            ..AuthorityHosts::default()
        };
    });
    ok(&w, &workload("team-a", "puller", Cloud::Public)).await;
    ok(&w, &workload("team-a", "puller", Cloud::Public)).await;
    assert_eq!(w.entra.log.count(), 1);
    // Same tenant and client, other ServiceAccount: never served from the first SA's token.
    ok(&w, &workload("team-b", "puller", Cloud::Public)).await;
    ok(&w, &workload("team-a", "other", Cloud::Public)).await;
    // Same SA, other authority.
    ok(&w, &workload("team-a", "puller", Cloud::USGovernment)).await;
    assert_eq!(w.entra.log.count(), 4);
    let sa_calls = w.sa.calls.lock().unwrap().clone();
    assert_eq!(
        sa_calls,
        vec![
            (
                "team-a".into(),
                "puller".into(),
                "api://AzureCRTokenExchange".into()
            ),
            (
                "team-b".into(),
                "puller".into(),
                "api://AzureCRTokenExchange".into()
            ),
            (
                "team-a".into(),
                "other".into(),
                "api://AzureCRTokenExchange".into()
            ),
            (
                "team-a".into(),
                "puller".into(),
                "api://AzureCRTokenExchange".into()
            ),
        ]
    );
    let entra = w.entra.log.requests();
    assert_eq!(entra[0].assertion.expose(), "sa-token-team-a-puller");
    assert_eq!(entra[1].assertion.expose(), "sa-token-team-b-puller");
    assert_eq!(entra[3].authority, "https://login.gov.example.test");
    assert_eq!(
        entra[3].scope,
        "https://management.core.usgovcloudapi.net/.default"
    );
    assert_eq!(w.imds.log.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Limits

/// The largest number of events in any half-open window `[t, t + window)`.
fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[tokio::test(start_paused = true)]
async fn limiters_hold_under_a_burst_of_a_thousand_requests() {
    let w = Arc::new(world(|c| {
        c.limits.acr_per_registry = LimitConfig::new(50, 1, 10);
    }));
    w.imds.log.set_latency(Duration::from_millis(300));
    w.acr.exchange.set_latency(Duration::from_millis(100));
    let started = Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let w = w.clone();
            tokio::spawn(async move {
                w.pipeline
                    .credential(&managed(&format!("identity-{i}"), "demo.azurecr.io", None))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(w.imds.log.count(), 1000);
    assert!(max_in_window(&w.imds.log.times(), Duration::from_secs(1)) <= 20);
    assert!(w.imds.log.max_in_flight.load(Ordering::SeqCst) <= 5);
    assert!(max_in_window(&w.acr.exchange.times(), Duration::from_secs(1)) <= 50);
    assert!(w.acr.exchange.max_in_flight.load(Ordering::SeqCst) <= 10);
    // 1000 requests at 20/s with 5 × 300 ms slots (≈16.7/s) is concurrency-bound: ≈ 60 s.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(49), "{elapsed:?}");
    assert!(elapsed <= Duration::from_secs(70), "{elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// Retries

#[tokio::test(start_paused = true)]
async fn backoff_schedule_doubles_with_jitter() {
    let w = world(|c| {
        c.retry = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            ..RetryPolicy::default()
        };
    });
    w.imds
        .log
        .fail_next([unavailable(), unavailable(), unavailable()]);
    ok(&w, &managed("c1", "demo.azurecr.io", None)).await;
    let times = w.imds.log.times();
    assert_eq!(times.len(), 4);
    for (i, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let base = Duration::from_millis(500) * 2u32.pow(i as u32);
        assert!(
            gap >= base && gap < base * 2,
            "retry {i}: {gap:?} not in [{base:?}, {:?})",
            base * 2
        );
    }
    assert_eq!(w.metrics.retries_total(Hop::Imds), 3);
    assert_eq!(w.metrics.requests_total(Hop::Imds, "AzureUnavailable"), 3);
    assert_eq!(w.metrics.requests_total(Hop::Imds, "success"), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let w = world(|_| {});
    w.acr
        .exchange
        .fail_next([AzureError::new(ErrorKind::Throttled, "HTTP 429")
            .with_retry_after(Some(Duration::from_secs(7)))]);
    ok(&w, &managed("c1", "demo.azurecr.io", None)).await;
    let times = w.acr.exchange.times();
    assert_eq!(times.len(), 2);
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_secs(7) && gap < Duration::from_millis(7100),
        "{gap:?}"
    );

    // A Retry-After beyond the policy's bound is handed to the caller instead.
    w.acr
        .token
        .fail_next([AzureError::new(ErrorKind::Throttled, "HTTP 429")
            .with_retry_after(Some(Duration::from_secs(300)))]);
    let e = err(
        &w,
        &managed("c1", "demo.azurecr.io", Some("repository:a:pull")),
    )
    .await;
    assert_eq!(e.reason(), "Throttled");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(300)));
    assert_eq!(w.acr.token.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_endpoint_pauses_every_request_to_it() {
    let w = Arc::new(world(|_| {}));
    w.acr.exchange.set_latency(Duration::from_millis(10));
    w.acr
        .exchange
        .fail_next([AzureError::new(ErrorKind::Throttled, "HTTP 429")
            .with_retry_after(Some(Duration::from_secs(5)))]);
    let first = {
        let w = w.clone();
        tokio::spawn(async move {
            w.pipeline
                .credential(&managed("id-a", "demo.azurecr.io", None))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Other registries are not held back by the pause.
    let started = Instant::now();
    ok(&w, &managed("id-c", "other.azurecr.io", None)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // Another identity, same registry, asks during the pause.
    let second = w
        .pipeline
        .credential(&managed("id-b", "demo.azurecr.io", None))
        .await;
    assert!(second.is_ok());
    assert!(first.await.unwrap().is_ok());
    let demo: Vec<Instant> = w
        .acr
        .exchange
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, r)| r.server == "demo.azurecr.io")
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(demo.len(), 3);
    assert!(demo[1] - demo[0] >= Duration::from_secs(5), "{demo:?}");
    assert!(demo[2] - demo[0] >= Duration::from_secs(5), "{demo:?}");
}

#[tokio::test(start_paused = true)]
async fn persistent_transient_failures_stop_after_max_attempts() {
    let w = world(|c| c.retry.max_attempts = 3);
    w.acr.exchange.fail_next((0..10).map(|_| unavailable()));
    let e = err(&w, &managed("c1", "demo.azurecr.io", None)).await;
    assert_eq!(e.reason(), "AzureUnavailable");
    assert!(e.retryable());
    assert_eq!(w.acr.exchange.count(), 3);
    assert_eq!(w.metrics.retries_total(Hop::AcrExchange), 2);
}

// ---------------------------------------------------------------------------------------------
// Classification

#[tokio::test(start_paused = true)]
async fn hop_errors_surface_with_their_reason_and_are_not_retried_when_permanent() {
    let permanent = [
        ErrorKind::IdentityNotFound,
        ErrorKind::Unauthorized,
        ErrorKind::InvalidRequest,
        ErrorKind::InvalidScope,
    ];
    for kind in permanent {
        let w = world(|_| {});
        w.imds
            .log
            .fail_next([AzureError::new(kind, "imds says no")]);
        let e = err(&w, &managed("c1", "demo.azurecr.io", None)).await;
        assert_eq!(e.kind(), kind);
        assert!(!e.retryable());
        assert_eq!(calls(&w), (1, 0, 0, 0), "{kind}");
        assert_eq!(w.metrics.requests_total(Hop::Imds, kind.reason()), 1);
    }

    let w = world(|_| {});
    w.acr
        .exchange
        .fail_next([AzureError::new(ErrorKind::Unauthorized, "HTTP 401")
            .with_hint(acrpull::azure::hints::ACR_UNAUTHORIZED)]);
    let e = err(
        &w,
        &managed("c1", "demo.azurecr.io", Some("repository:a:pull")),
    )
    .await;
    assert_eq!(e.reason(), "Unauthorized");
    assert!(e.hint().contains("AcrPull"));
    assert_eq!(calls(&w), (1, 0, 1, 0));

    for kind in [
        ErrorKind::FederationMismatch,
        ErrorKind::TenantNotFound,
        ErrorKind::AssertionExpired,
    ] {
        let w = world(|_| {});
        w.entra
            .log
            .fail_next([AzureError::new(kind, "entra says no")]);
        let e = err(&w, &workload("ns", "sa", Cloud::Public)).await;
        assert_eq!(e.kind(), kind);
        assert_eq!(w.entra.log.count(), 1);
        assert_eq!(w.acr.exchange.count(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn service_account_token_failures_and_timeouts() {
    let w = world(|_| {});
    w.sa.script.lock().unwrap().extend([
        Some(AzureError::service_account_token(
            "serviceaccounts \"sa\" not found",
            false,
        )),
        Some(AzureError::new(
            ErrorKind::AzureUnavailable,
            "apiserver 503",
        )),
        None,
    ]);
    let e = err(&w, &workload("ns", "sa", Cloud::Public)).await;
    assert_eq!(e.reason(), "ServiceAccountTokenFailed");
    assert!(!e.retryable());
    assert!(e.to_string().contains("ns/sa"), "{e}");

    let e = err(&w, &workload("ns", "sa", Cloud::Public)).await;
    assert_eq!(e.reason(), "ServiceAccountTokenFailed");
    assert!(e.retryable());

    let started = Instant::now();
    let e = err(&w, &workload("ns", "sa", Cloud::Public)).await;
    assert_eq!(e.reason(), "ServiceAccountTokenFailed");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(w.entra.log.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_are_refused_before_any_call() {
    let w = world(|_| {});
    let mut bad_tenant = workload("ns", "sa", Cloud::Public);
    if let Identity::Workload { tenant_id, .. } = &mut bad_tenant.identity {
        *tenant_id = "../evil".into();
    }
    let bad_authority = workload(
        "ns",
        "sa",
        Cloud::Airgapped {
            entra_authority_host: "http://login.plain.test".into(),
            resource_manager_audience: "https://management.air.test/".into(),
        },
    );
    let empty_audience = CredentialRequest {
        cloud: Cloud::Airgapped {
            entra_authority_host: "login.air.test".into(),
            resource_manager_audience: " ".into(),
        },
        ..managed("c1", "demo.azurecr.io", None)
    };
    for req in [
        bad_tenant,
        bad_authority,
        empty_audience,
        managed("", "demo.azurecr.io", None),
        managed("c1", "https://demo.azurecr.io", None),
        managed("c1", "demo.azurecr.io/v2", None),
    ] {
        let e = err(&w, &req).await;
        assert_eq!(e.reason(), "InvalidRequest", "{req:?}: {e}");
    }
    assert_eq!(calls(&w), (0, 0, 0, 0));
    assert!(w.sa.calls.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn no_token_is_sent_to_a_registry_outside_the_allowed_suffixes() {
    let w = world(|_| {});
    for server in [
        "evil.example.com",
        "demo.azurecr.io.evil.com",
        "evilazurecr.io",
        "demo.azurecr.io.evil.com:8443",
    ] {
        let e = err(&w, &managed("c1", server, Some("repository:a:pull"))).await;
        assert_eq!(e.reason(), "RegistryNotAllowed", "{server}");
        let e = w
            .pipeline
            .verify(server, &SecretToken::new("x"), "repository:a:pull")
            .await
            .expect_err("must refuse");
        assert_eq!(e.reason(), "RegistryNotAllowed");
    }
    assert_eq!(calls(&w), (0, 0, 0, 0));
    assert_eq!(w.acr.verify.count(), 0);
    // Case and a trailing dot do not matter; a port does not either.
    ok(&w, &managed("c1", "DEMO.AzureCR.io", None)).await;
    ok(&w, &managed("c1", "demo.azurecr.io:8443", None)).await;
    // An explicitly empty list allows every host.
    let open = world(|c| c.allowed_suffixes.clear());
    ok(&open, &managed("c1", "registry.internal.test", None)).await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_requested_for_an_air_gapped_authority_or_audience_not_allowed() {
    // Defence in depth behind the controller's validation: the pipeline itself refuses an
    // air-gapped authority or audience the operator did not list, before the ServiceAccount
    // token is minted (it would be posted to that authority) and before IMDS is asked.
    let w = world(|_| {});
    let honeypot = |authority: &str, audience: &str| Cloud::Airgapped {
        entra_authority_host: authority.into(),
        resource_manager_audience: audience.into(),
    };
    for cloud in [
        honeypot(
            "https://login.honeypot.test",
            "https://management.air.test/",
        ),
        honeypot("login.air.test:8443", "https://management.air.test/"),
        honeypot(
            "https://login.air.test",
            "https://management.honeypot.test/",
        ),
    ] {
        let e = err(&w, &workload("ns", "sa", cloud.clone())).await;
        assert_eq!(e.reason(), "AuthorityNotAllowed", "{cloud:?}: {e}");
        let req = CredentialRequest {
            cloud: cloud.clone(),
            ..managed("c1", "demo.azurecr.io", None)
        };
        let e = err(&w, &req).await;
        assert_eq!(e.reason(), "AuthorityNotAllowed", "{cloud:?}: {e}");
    }
    assert_eq!(calls(&w), (0, 0, 0, 0));
    assert!(w.sa.calls.lock().unwrap().is_empty());
    // Nothing is allowed unless listed: the default configuration refuses every air-gapped
    // authority, even the one this test's world allows.
    let closed = world(|c| c.allowed_clouds = AllowedClouds::default());
    let air = honeypot("https://login.air.test", "https://management.air.test/");
    let e = err(&closed, &workload("ns", "sa", air)).await;
    assert_eq!(e.reason(), "AuthorityNotAllowed");
    assert!(closed.sa.calls.lock().unwrap().is_empty());
    // The control: the listed authority and audience are served.
    let air = honeypot("https://LOGIN.air.test/", "https://management.air.test");
    ok(&w, &workload("ns", "sa", air)).await;
    assert_eq!(w.entra.log.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Clouds and audiences

#[tokio::test(start_paused = true)]
async fn managed_identity_resource_per_cloud_override_and_acr_audience() {
    let w = world(|_| {});
    let air = Cloud::Airgapped {
        entra_authority_host: "https://login.air.test".into(),
        resource_manager_audience: "https://management.air.test/".into(),
    };
    let cases = [
        (
            Cloud::Public,
            IdentityAudience::ResourceManager,
            None,
            "https://management.core.windows.net/",
        ),
        (
            Cloud::USGovernment,
            IdentityAudience::ResourceManager,
            None,
            "https://management.core.usgovcloudapi.net",
        ),
        (
            Cloud::China,
            IdentityAudience::ResourceManager,
            None,
            "https://management.core.chinacloudapi.cn",
        ),
        (
            air,
            IdentityAudience::ResourceManager,
            None,
            "https://management.air.test/",
        ),
        (
            Cloud::Public,
            IdentityAudience::ResourceManager,
            Some(acrpull::azure::V1BETA1_DEFAULT_ARM_RESOURCE.to_string()),
            "https://management.azure.com/",
        ),
        (
            Cloud::Public,
            IdentityAudience::ContainerRegistry,
            None,
            "https://containerregistry.azure.net",
        ),
    ];
    for (cloud, audience, arm_resource_override, _) in cases.clone() {
        let req = CredentialRequest {
            cloud,
            audience,
            arm_resource_override,
            ..managed("c1", "demo.azurecr.io", None)
        };
        ok(&w, &req).await;
    }
    let resources: Vec<String> = w
        .imds
        .log
        .requests()
        .into_iter()
        .map(|r| r.resource)
        .collect();
    let expected: Vec<String> = cases.iter().map(|c| c.3.to_string()).collect();
    assert_eq!(resources, expected, "one identity token per audience");
    assert!(w
        .imds
        .log
        .requests()
        .iter()
        .all(|r| r.selector == ImdsSelector::ClientId("c1".into())));

    let req = CredentialRequest {
        identity: Identity::ManagedResourceId("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id".into()),
        ..managed("unused", "demo.azurecr.io", None)
    };
    ok(&w, &req).await;
    assert!(matches!(
        w.imds.log.requests().last().map(|r| r.selector.clone()),
        Some(ImdsSelector::ResourceId(id)) if id.ends_with("/userAssignedIdentities/id")
    ));
}

#[tokio::test(start_paused = true)]
async fn workload_identity_scope_and_authority_per_cloud() {
    let w = world(|_| {});
    let air = Cloud::Airgapped {
        entra_authority_host: "login.air.test".into(),
        resource_manager_audience: "https://management.air.test".into(),
    };
    let cases = [
        (
            Cloud::Public,
            "https://login.microsoftonline.com",
            "https://management.core.windows.net//.default",
        ),
        (
            Cloud::USGovernment,
            "https://login.microsoftonline.us",
            "https://management.core.usgovcloudapi.net/.default",
        ),
        (
            Cloud::China,
            "https://login.chinacloudapi.cn",
            "https://management.core.chinacloudapi.cn/.default",
        ),
        (
            air,
            "https://login.air.test",
            "https://management.air.test/.default",
        ),
    ];
    for (cloud, _, _) in cases.clone() {
        ok(&w, &workload("ns", "sa", cloud)).await;
    }
    let mut acr_audience = workload("ns", "sa", Cloud::Public);
    acr_audience.audience = IdentityAudience::ContainerRegistry;
    ok(&w, &acr_audience).await;

    let seen: Vec<(String, String)> = w
        .entra
        .log
        .requests()
        .into_iter()
        .map(|r| (r.authority, r.scope))
        .collect();
    let mut expected: Vec<(String, String)> = cases
        .iter()
        .map(|(_, a, s)| (a.to_string(), s.to_string()))
        .collect();
    expected.push((
        "https://login.microsoftonline.com".into(),
        "https://containerregistry.azure.net/.default".into(),
    ));
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn acr_requests_carry_server_and_normalised_scope() {
    let w = world(|_| {});
    ok(
        &w,
        &managed(
            "c1",
            "Demo.azurecr.io",
            Some("repository:b:push,pull repository:a:pull"),
        ),
    )
    .await;
    let exchange = w.acr.exchange.requests();
    assert_eq!(exchange[0].server, "demo.azurecr.io");
    let token = w.acr.token.requests();
    assert_eq!(token[0].scope, "repository:a:pull repository:b:pull,push");
    assert_eq!(token[0].server, "demo.azurecr.io");
    // The refresh token handed to /oauth2/token is the one /oauth2/exchange returned.
    assert!(token[0].refresh_token.expose().contains('.'));

    let credential = ok(
        &w,
        &managed("c1", "demo.azurecr.io", Some("repository:a:pull")),
    )
    .await;
    w.pipeline
        .verify(
            "demo.azurecr.io",
            &credential.token,
            "repository:a:pull repository:b:pull",
        )
        .await
        .unwrap();
    let verify = w.acr.verify.requests();
    assert_eq!(
        verify[0].scopes,
        vec!["repository:a:pull", "repository:b:pull"]
    );
    assert_eq!(verify[0].credential, credential.token);
    assert_eq!(w.metrics.requests_total(Hop::AcrVerify, "success"), 1);
}

#[tokio::test(start_paused = true)]
async fn unreadable_acr_tokens_are_invalid_responses() {
    struct OpaqueAcr;
    impl AcrApi for OpaqueAcr {
        fn exchange<'a>(
            &'a self,
            _: &'a ExchangeRequest,
        ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
            async { Ok(SecretToken::new("CANARY-opaque-refresh-token")) }.boxed()
        }
        fn token<'a>(
            &'a self,
            _: &'a AccessTokenRequest,
        ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
            async { Ok(SecretToken::new("CANARY.opaque.token")) }.boxed()
        }
        fn verify<'a>(
            &'a self,
            _: &'a VerifyRequest,
        ) -> BoxFuture<'a, Result<SecretToken, AzureError>> {
            async { Ok(SecretToken::new("x")) }.boxed()
        }
    }
    let w = world(|_| {});
    let pipeline = TokenPipeline::with_apis(
        PipelineConfig {
            clock: Arc::new(w.clock),
            ..PipelineConfig::default()
        },
        HopApis {
            imds: w.imds.clone(),
            entra: w.entra.clone(),
            acr: Arc::new(OpaqueAcr),
        },
        w.sa.clone(),
        PipelineMetrics::new(),
    )
    .unwrap();
    let e = pipeline
        .credential(&managed("c1", "demo.azurecr.io", None))
        .await
        .expect_err("not a JWT");
    assert_eq!(e.reason(), "InvalidResponse");
    assert!(!format!("{e} {e:?}").contains("CANARY"));
}

#[test]
fn metrics_register_all_documented_families() {
    let metrics = PipelineMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for family in [
        "acrpull_token_requests",
        "acrpull_token_request_duration_seconds",
        "acrpull_rate_limiter_wait_seconds",
        "acrpull_token_retries",
        "acrpull_token_cache",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "{family} missing:\n{text}"
        );
    }
}
