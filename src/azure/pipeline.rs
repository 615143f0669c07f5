//! [`TokenPipeline`]: the caching, coalescing, limiting and retrying layer over the three hops.
//!
//! Three single-flight caches, one per hop, nest so that N bindings sharing an identity,
//! registry and scope cost one call per hop:
//!
//! | cache    | key                                         | served while                                   |
//! |----------|---------------------------------------------|------------------------------------------------|
//! | identity | identity source × audience                  | more than `identity_refresh_margin` (5 min) left |
//! | refresh  | identity key × registry                     | before its half-life (and, if it is the credential, later than `fresher_than`) |
//! | access   | identity key × registry × normalised scope  | before its half-life and later than `fresher_than` |
//!
//! A workload identity's key holds the asserting ServiceAccount, tenant, client id and
//! authority: a binding whose ServiceAccount is not federated must never ride on a token
//! another ServiceAccount obtained.
//!
//! Every request to `https://<server>` is preceded by the allowed-suffix check.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};

use super::acr::{AccessTokenRequest, AcrApi, ExchangeRequest, ReqwestAcr, VerifyRequest};
use super::cache::SingleFlight;
use super::clock::{SystemClock, WallClock};
use super::cloud::{
    entra_scope, imds_resource, AuthorityHosts, Cloud, IdentityAudience,
    CONTAINER_REGISTRY_AUDIENCE,
};
use super::entra::{validate_tenant_id, EntraApi, EntraTokenRequest, ReqwestEntra};
use super::error::{AzureError, ErrorKind};
use super::http_client::{build_client, HttpSettings};
use super::imds::{ImdsApi, ImdsSelector, ImdsTokenRequest, ReqwestImds, DEFAULT_IMDS_BASE_URL};
use super::limits::{LimiterSet, Limits};
use super::metrics::{CacheResult, Hop, PipelineMetrics};
use super::registry_host::{
    ensure_allowed, normalize_scope, normalize_suffixes, parse_server, RegistryHost,
};
use super::retry::{with_retries, RetryPolicy};
use super::{AcrCredential, CredentialRequest, Identity, IdentityToken, ServiceAccountTokenSource};
use crate::state::jwt;
use crate::state::token::SecretToken;

/// A credential fetch in flight ([`TokenPipeline::fetching`]): which one, and a future that
/// ends with it.
pub struct Fetch {
    pub id: FetchId,
    pub done: BoxFuture<'static, Result<(), AzureError>>,
}

#[cfg(test)]
impl Fetch {
    /// A fetch of a test's own cache, as the pipeline hands it out.
    pub fn of_test(in_flight: super::cache::InFlight) -> Self {
        Self {
            id: FetchId {
                hop: Hop::AcrToken,
                id: in_flight.id,
            },
            done: in_flight.done,
        }
    }
}

/// Tells fetches in flight apart: two callers handed the same id wait for the same fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FetchId {
    /// The token fetched (an ACR access token, or an ACR refresh token).
    hop: Hop,
    /// The fetch's number in that token's cache.
    id: u64,
}

/// Timeouts of the pipeline's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// One attempt of one hop, body included.
    pub request: Duration,
    /// One Kubernetes TokenRequest.
    pub service_account_token: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(20),
            service_account_token: Duration::from_secs(10),
        }
    }
}

/// Everything the pipeline is configured with.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// IMDS scheme + host (+ port). Default `http://169.254.169.254`.
    pub imds_base_url: String,
    /// Overrides of the named clouds' Entra authority hosts.
    pub authority_hosts: AuthorityHosts,
    /// The ACR audience for [`IdentityAudience::ContainerRegistry`].
    pub acr_audience: String,
    /// `host → address` DNS overrides (the address port is used when a URL has none).
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// PEM CA certificates trusted in addition to the bundled web roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// Audience of the ServiceAccount tokens presented to Entra.
    pub service_account_token_audience: String,
    /// Allowed registry suffixes (exact or any subdomain); empty allows every host.
    pub allowed_suffixes: Vec<String>,
    /// Air-gapped Entra authorities and Resource Manager audiences requests may use; empty
    /// lists allow none (checked again here, right before any request, after the controller's
    /// own validation).
    pub allowed_clouds: crate::state::tenancy::AllowedClouds,
    /// Identity tokens are re-fetched when less than this is left.
    pub identity_refresh_margin: Duration,
    /// Wall clock for expiry decisions.
    pub clock: Arc<dyn WallClock>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            imds_base_url: DEFAULT_IMDS_BASE_URL.to_string(),
            authority_hosts: AuthorityHosts::default(),
            acr_audience: CONTAINER_REGISTRY_AUDIENCE.to_string(),
            resolve: Vec::new(),
            extra_ca_pem: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            service_account_token_audience: "api://AzureCRTokenExchange".to_string(),
            allowed_suffixes: vec![
                "azurecr.io".to_string(),
                "azurecr.us".to_string(),
                "azurecr.cn".to_string(),
            ],
            allowed_clouds: Default::default(),
            identity_refresh_margin: Duration::from_secs(5 * 60),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The three hop implementations (reqwest in production, fakes in tests).
#[derive(Clone)]
pub struct HopApis {
    pub imds: Arc<dyn ImdsApi>,
    pub entra: Arc<dyn EntraApi>,
    pub acr: Arc<dyn AcrApi>,
}

/// Where an identity token comes from; with the audience, the identity cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdentitySource {
    Managed(ImdsSelector),
    Workload {
        authority: String,
        tenant_id: String,
        client_id: String,
        service_account_namespace: String,
        service_account_name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IdentityKey {
    source: IdentitySource,
    audience: String,
}

impl IdentityKey {
    fn hop(&self) -> Hop {
        match self.source {
            IdentitySource::Managed(_) => Hop::Imds,
            IdentitySource::Workload { .. } => Hop::Entra,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefreshKey {
    identity: IdentityKey,
    registry: RegistryHost,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AccessKey {
    refresh: RefreshKey,
    scope: String,
}

/// An ACR token in a cache, with when we got it (for the half-life when `iat` is missing).
#[derive(Debug, Clone)]
struct CachedAcr {
    credential: AcrCredential,
    fetched_at: Timestamp,
}

impl CachedAcr {
    fn usable(&self, now: Timestamp, fresher_than: Option<Timestamp>) -> bool {
        let start = self
            .credential
            .issued_at
            .filter(|iat| *iat <= self.fetched_at)
            .unwrap_or(self.fetched_at);
        let lifetime = self.credential.expires_at.duration_since(start);
        let half_life = start
            .checked_add(lifetime / 2)
            .unwrap_or(self.credential.expires_at);
        now < half_life && fresher_than.is_none_or(|held| self.credential.expires_at > held)
    }
}

struct Inner {
    config: PipelineConfig,
    apis: HopApis,
    sa_tokens: Arc<dyn ServiceAccountTokenSource>,
    metrics: PipelineMetrics,
    limiters: LimiterSet,
    suffixes: Vec<String>,
    identities: SingleFlight<IdentityKey, IdentityToken>,
    refresh_tokens: SingleFlight<RefreshKey, CachedAcr>,
    access_tokens: SingleFlight<AccessKey, CachedAcr>,
    /// Identities this process has requested a token for (the first request is logged at
    /// info, later ones at debug).
    identities_used: std::sync::Mutex<std::collections::HashSet<IdentityKey>>,
}

/// The production token pipeline. Cheap to clone; clones share caches and limiters.
#[derive(Clone)]
pub struct TokenPipeline {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = &self.inner.config;
        f.debug_struct("TokenPipeline")
            .field("imds_base_url", &config.imds_base_url)
            .field("allowed_suffixes", &self.inner.suffixes)
            .field("limits", &config.limits)
            .finish_non_exhaustive()
    }
}

impl TokenPipeline {
    /// The pipeline over reqwest clients for IMDS, Entra and ACR.
    pub fn new(
        config: PipelineConfig,
        sa_tokens: Arc<dyn ServiceAccountTokenSource>,
        metrics: PipelineMetrics,
    ) -> Result<Self, AzureError> {
        let client = build_client(&HttpSettings {
            resolve: config.resolve.clone(),
            extra_ca_pem: config.extra_ca_pem.clone(),
            connect_timeout: config.timeouts.connect,
            request_timeout: config.timeouts.request,
        })?;
        let apis = HopApis {
            imds: Arc::new(ReqwestImds::new(
                client.clone(),
                &config.imds_base_url,
                config.clock.clone(),
            )?),
            entra: Arc::new(ReqwestEntra::new(client.clone(), config.clock.clone())),
            acr: Arc::new(ReqwestAcr::new(client, config.clock.clone())),
        };
        Self::with_apis(config, apis, sa_tokens, metrics)
    }

    /// The pipeline over the given hop implementations (tests use fakes).
    pub fn with_apis(
        config: PipelineConfig,
        apis: HopApis,
        sa_tokens: Arc<dyn ServiceAccountTokenSource>,
        metrics: PipelineMetrics,
    ) -> Result<Self, AzureError> {
        let limiters = LimiterSet::new(&config.limits)?;
        let suffixes = normalize_suffixes(&config.allowed_suffixes);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                apis,
                sa_tokens,
                metrics,
                limiters,
                suffixes,
                identities: SingleFlight::new(),
                refresh_tokens: SingleFlight::new(),
                access_tokens: SingleFlight::new(),
                identities_used: std::sync::Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    /// The registry credential for `req`: from cache when usable, else fetched with at most one
    /// concurrent call per hop and key.
    pub async fn credential(&self, req: &CredentialRequest) -> Result<AcrCredential, AzureError> {
        let inner = &self.inner;
        let registry = parse_server(&req.server)?;
        ensure_allowed(&registry, &inner.suffixes)?;
        let identity = inner.identity_key(req)?;
        let refresh = RefreshKey { identity, registry };
        match req.scope.as_deref().and_then(normalize_scope) {
            Some(scope) => {
                let key = AccessKey { refresh, scope };
                inner.clone().access_token(key, req.fresher_than).await
            }
            None => inner.clone().refresh_token(refresh, req.fresher_than).await,
        }
        .map(|cached| cached.credential)
    }

    /// Unless `req`'s credential is cached, the fetch of it — the one in flight, or one started
    /// now — as a future that ends with it; never waits. A later [`Self::credential`] for it
    /// is then a cache hit, or joins the fetch. The fetch is the one `credential` would make
    /// (limits, retries, single flight). `None` also for a request `credential` would refuse
    /// without calling Azure: that call says why.
    pub fn fetching(&self, req: &CredentialRequest) -> Option<Fetch> {
        let inner = &self.inner;
        let registry = parse_server(&req.server).ok()?;
        ensure_allowed(&registry, &inner.suffixes).ok()?;
        let identity = inner.identity_key(req).ok()?;
        let refresh = RefreshKey { identity, registry };
        match req.scope.as_deref().and_then(normalize_scope) {
            Some(scope) => inner.acr_fetching(
                &inner.access_tokens,
                AccessKey { refresh, scope },
                req.fresher_than,
                Hop::AcrToken,
                |this, key| this.fetch_access_token(key).boxed(),
            ),
            None => inner.acr_fetching(
                &inner.refresh_tokens,
                refresh,
                req.fresher_than,
                Hop::AcrExchange,
                |this, key| this.fetch_refresh_token(key).boxed(),
            ),
        }
    }

    /// Presents `credential` to the registry the way a kubelet does (Basic auth with the null
    /// GUID at `GET /oauth2/token`) and returns the registry token granted for `scope`
    /// (space-separated; may be empty for a plain login check).
    pub async fn verify(
        &self,
        server: &str,
        credential: &SecretToken,
        scope: &str,
    ) -> Result<SecretToken, AzureError> {
        let inner = &self.inner;
        let registry = parse_server(server)?;
        ensure_allowed(&registry, &inner.suffixes)?;
        let limiter = inner.limiters.acr(&registry.server)?;
        let request = VerifyRequest {
            server: registry.server.clone(),
            scopes: scope.split_whitespace().map(str::to_string).collect(),
            credential: credential.clone(),
        };
        let acr = &*inner.apis.acr;
        let request = &request;
        with_retries(
            &inner.config.retry,
            inner.config.timeouts.request,
            Hop::AcrVerify,
            &limiter,
            &inner.metrics,
            || acr.verify(request),
        )
        .await
    }
}

impl Inner {
    fn now(&self) -> Timestamp {
        self.config.clock.now()
    }

    fn audience(&self, req: &CredentialRequest) -> Result<String, AzureError> {
        let audience = match req.audience {
            IdentityAudience::ContainerRegistry => self.config.acr_audience.clone(),
            IdentityAudience::ResourceManager => req
                .arm_resource_override
                .as_deref()
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| req.cloud.resource_manager_audience())
                .to_string(),
        };
        if audience.trim().is_empty() {
            return Err(AzureError::new(
                ErrorKind::InvalidRequest,
                "the identity token audience is empty (check cloudConfig.resourceManagerAudience)",
            ));
        }
        Ok(audience)
    }

    /// Defence in depth for air-gapped clouds: the binding names the authority and the
    /// audience, so both must be on the operator's lists before anything is requested (for
    /// workload identity, before the ServiceAccount token is even minted).
    fn ensure_cloud_allowed(&self, req: &CredentialRequest) -> Result<(), AzureError> {
        let Cloud::Airgapped {
            entra_authority_host,
            resource_manager_audience,
        } = &req.cloud
        else {
            return Ok(());
        };
        let allowed = &self.config.allowed_clouds;
        let authority =
            crate::state::tenancy::normalize_authority(entra_authority_host).map_err(|why| {
                AzureError::new(
                    ErrorKind::InvalidRequest,
                    format!("the air-gapped Entra authority host {why}"),
                )
            })?;
        if !allowed.allows_authority(&authority) {
            return Err(AzureError::new(
                ErrorKind::AuthorityNotAllowed,
                "the air-gapped Entra authority host is not in --allowed-entra-authority-hosts; nothing was sent",
            ));
        }
        if !allowed.allows_audience(resource_manager_audience) {
            return Err(AzureError::new(
                ErrorKind::AuthorityNotAllowed,
                "the air-gapped Resource Manager audience is not in --allowed-resource-manager-audiences; nothing was sent",
            ));
        }
        Ok(())
    }

    fn identity_key(&self, req: &CredentialRequest) -> Result<IdentityKey, AzureError> {
        // Both are checks only (no request); a malformed request is reported as such first.
        let audience = self.audience(req)?;
        self.ensure_cloud_allowed(req)?;
        let non_empty = |value: &str, what: &str| {
            if value.trim().is_empty() {
                Err(AzureError::new(
                    ErrorKind::InvalidRequest,
                    format!("{what} is empty"),
                ))
            } else {
                Ok(value.to_string())
            }
        };
        let source = match &req.identity {
            Identity::ManagedClientId(id) => IdentitySource::Managed(ImdsSelector::ClientId(
                non_empty(id, "managed identity client id")?,
            )),
            Identity::ManagedResourceId(id) => IdentitySource::Managed(ImdsSelector::ResourceId(
                non_empty(id, "managed identity resource id")?,
            )),
            Identity::Workload {
                tenant_id,
                client_id,
                service_account_namespace,
                service_account_name,
            } => {
                validate_tenant_id(tenant_id)?;
                IdentitySource::Workload {
                    authority: req.cloud.authority(&self.config.authority_hosts)?,
                    tenant_id: tenant_id.clone(),
                    client_id: non_empty(client_id, "workload identity client id")?,
                    service_account_namespace: non_empty(
                        service_account_namespace,
                        "ServiceAccount namespace",
                    )?,
                    service_account_name: non_empty(service_account_name, "ServiceAccount name")?,
                }
            }
        };
        Ok(IdentityKey { source, audience })
    }

    /// Identity token for `key`, cached until `identity_refresh_margin` before expiry.
    async fn identity_token(
        self: Arc<Self>,
        key: IdentityKey,
    ) -> Result<IdentityToken, AzureError> {
        let now = self.now();
        let margin = SignedDuration::try_from(self.config.identity_refresh_margin)
            .unwrap_or(SignedDuration::MAX);
        let hop = key.hop();
        let this = self.clone();
        let fetch_key = key.clone();
        let (result, cache) = self
            .identities
            .get(
                &key,
                now,
                |token| token.expires_at.duration_since(now) > margin,
                move || {
                    async move {
                        let token = this.fetch_identity(&fetch_key).await?;
                        let until = token.expires_at;
                        Ok((token, until))
                    }
                    .boxed()
                },
            )
            .await;
        self.metrics.record_cache(hop, cache);
        result
    }

    /// Logs which identity a token is requested for (upstream issue #110): its client id or
    /// resource id (and, for workload identity, tenant and ServiceAccount) and the audience,
    /// never a token. At info the first time this process asks for that identity and audience,
    /// at debug on every later request.
    fn log_identity_request(&self, key: &IdentityKey) {
        let first = self
            .identities_used
            .lock()
            .map(|mut used| used.insert(key.clone()))
            .unwrap_or(false);
        let audience = key.audience.as_str();
        macro_rules! log {
            ($($field:tt)*) => {
                if first {
                    tracing::info!($($field)*);
                } else {
                    tracing::debug!($($field)*);
                }
            };
        }
        match &key.source {
            IdentitySource::Managed(selector) => {
                let (client_id, resource_id) = match selector {
                    ImdsSelector::ClientId(c) => (Some(c.as_str()), None),
                    ImdsSelector::ResourceId(r) => (None, Some(r.as_str())),
                };
                log!(
                    hop = "imds",
                    identity = "managed",
                    client_id,
                    resource_id,
                    audience,
                    "requesting a managed identity token"
                );
            }
            IdentitySource::Workload {
                authority,
                tenant_id,
                client_id,
                service_account_namespace,
                service_account_name,
            } => {
                log!(
                    hop = "entra", identity = "workload", client_id = client_id.as_str(),
                    tenant_id = tenant_id.as_str(), authority = authority.as_str(),
                    service_account = %format_args!("{service_account_namespace}/{service_account_name}"),
                    audience, "requesting a workload identity token"
                );
            }
        }
    }

    async fn fetch_identity(&self, key: &IdentityKey) -> Result<IdentityToken, AzureError> {
        self.log_identity_request(key);
        let retry = &self.config.retry;
        let timeout = self.config.timeouts.request;
        match &key.source {
            IdentitySource::Managed(selector) => {
                let request = ImdsTokenRequest {
                    resource: imds_resource(&key.audience).to_string(),
                    selector: selector.clone(),
                };
                let imds = &*self.apis.imds;
                let request = &request;
                with_retries(
                    retry,
                    timeout,
                    Hop::Imds,
                    &self.limiters.imds,
                    &self.metrics,
                    || imds.token(request),
                )
                .await
            }
            IdentitySource::Workload {
                authority,
                tenant_id,
                client_id,
                service_account_namespace,
                service_account_name,
            } => {
                let assertion = self
                    .service_account_token(service_account_namespace, service_account_name)
                    .await?;
                let request = EntraTokenRequest {
                    authority: authority.clone(),
                    tenant_id: tenant_id.clone(),
                    client_id: client_id.clone(),
                    scope: entra_scope(&key.audience),
                    assertion,
                };
                let entra = &*self.apis.entra;
                let request = &request;
                with_retries(
                    retry,
                    timeout,
                    Hop::Entra,
                    &self.limiters.entra,
                    &self.metrics,
                    || entra.token(request),
                )
                .await
            }
        }
    }

    async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<SecretToken, AzureError> {
        let audience = &self.config.service_account_token_audience;
        let timeout = self.config.timeouts.service_account_token;
        let context = format!("token for ServiceAccount {namespace}/{name}");
        let token =
            match tokio::time::timeout(timeout, self.sa_tokens.token(namespace, name, audience))
                .await
            {
                Ok(Ok(token)) => token,
                Ok(Err(e)) if e.kind() == ErrorKind::ServiceAccountTokenFailed => {
                    return Err(e.context(context))
                }
                Ok(Err(e)) => {
                    return Err(
                        AzureError::service_account_token(e.to_string(), e.retryable())
                            .with_retry_after(e.retry_after())
                            .context(context),
                    )
                }
                Err(_) => {
                    return Err(AzureError::service_account_token(
                        format!("timed out after {}s", timeout.as_secs_f64()),
                        true,
                    )
                    .context(context))
                }
            };
        if token.is_empty() {
            return Err(AzureError::service_account_token(
                "TokenRequest returned an empty token",
                true,
            )
            .context(context));
        }
        Ok(token)
    }

    /// An ACR token from `cache`, fetched with `fetch` when no usable one is held: served
    /// before its half-life and, when `fresher_than` is set, only if it expires later than that
    /// (the credential the caller already holds).
    async fn acr_token<K>(
        self: Arc<Self>,
        cache: &SingleFlight<K, CachedAcr>,
        key: K,
        fresher_than: Option<Timestamp>,
        hop: Hop,
        fetch: fn(Arc<Self>, K) -> BoxFuture<'static, Result<CachedAcr, AzureError>>,
    ) -> Result<CachedAcr, AzureError>
    where
        K: Eq + std::hash::Hash + Clone + Send + 'static,
    {
        let now = self.now();
        let (result, cached) = cache
            .get(
                &key,
                now,
                |cached| cached.usable(now, fresher_than),
                self.cache_fetch(key.clone(), fetch),
            )
            .await;
        self.metrics.record_cache(hop, cached);
        result
    }

    /// [`Self::acr_token`] without waiting: unless a usable token is cached, the fetch for
    /// `key` (in flight, or started now) as a future that ends with it.
    fn acr_fetching<K>(
        self: &Arc<Self>,
        cache: &SingleFlight<K, CachedAcr>,
        key: K,
        fresher_than: Option<Timestamp>,
        hop: Hop,
        fetch: fn(Arc<Self>, K) -> BoxFuture<'static, Result<CachedAcr, AzureError>>,
    ) -> Option<Fetch>
    where
        K: Eq + std::hash::Hash + Clone + Send + 'static,
    {
        let now = self.now();
        let in_flight = cache.fetching(
            &key,
            now,
            |cached| cached.usable(now, fresher_than),
            self.cache_fetch(key.clone(), fetch),
        )?;
        let result = if in_flight.started {
            CacheResult::Miss
        } else {
            CacheResult::Coalesced
        };
        self.metrics.record_cache(hop, result);
        Some(Fetch {
            id: FetchId {
                hop,
                id: in_flight.id,
            },
            done: in_flight.done,
        })
    }

    /// `fetch` for `key` as a cache fetch: the token, and until when it is kept.
    fn cache_fetch<K: Send + 'static>(
        self: &Arc<Self>,
        key: K,
        fetch: fn(Arc<Self>, K) -> BoxFuture<'static, Result<CachedAcr, AzureError>>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<(CachedAcr, Timestamp), AzureError>> {
        let this = self.clone();
        move || {
            async move {
                let cached = fetch(this, key).await?;
                let until = cached.credential.expires_at;
                Ok((cached, until))
            }
            .boxed()
        }
    }

    /// ACR refresh token for `key`. `fresher_than` applies only when it is the credential.
    async fn refresh_token(
        self: Arc<Self>,
        key: RefreshKey,
        fresher_than: Option<Timestamp>,
    ) -> Result<CachedAcr, AzureError> {
        let cache = self.refresh_tokens.clone();
        self.acr_token(&cache, key, fresher_than, Hop::AcrExchange, |this, key| {
            this.fetch_refresh_token(key).boxed()
        })
        .await
    }

    async fn fetch_refresh_token(
        self: Arc<Self>,
        key: RefreshKey,
    ) -> Result<CachedAcr, AzureError> {
        let identity = self.clone().identity_token(key.identity.clone()).await?;
        ensure_allowed(&key.registry, &self.suffixes)?;
        let limiter = self.limiters.acr(&key.registry.server)?;
        let request = ExchangeRequest {
            server: key.registry.server.clone(),
            identity_token: identity.token,
        };
        let acr = &*self.apis.acr;
        let request = &request;
        tracing::debug!(
            hop = "acr_exchange",
            "Exchanging identity token for an ACR refresh token"
        );
        let token = with_retries(
            &self.config.retry,
            self.config.timeouts.request,
            Hop::AcrExchange,
            &limiter,
            &self.metrics,
            || acr.exchange(request),
        )
        .await?;
        self.cache_entry("ACR refresh token", token)
    }

    /// ACR access token for `key`.
    async fn access_token(
        self: Arc<Self>,
        key: AccessKey,
        fresher_than: Option<Timestamp>,
    ) -> Result<CachedAcr, AzureError> {
        let cache = self.access_tokens.clone();
        self.acr_token(&cache, key, fresher_than, Hop::AcrToken, |this, key| {
            this.fetch_access_token(key).boxed()
        })
        .await
    }

    async fn fetch_access_token(self: Arc<Self>, key: AccessKey) -> Result<CachedAcr, AzureError> {
        let refresh = self
            .clone()
            .refresh_token(key.refresh.clone(), None)
            .await?;
        ensure_allowed(&key.refresh.registry, &self.suffixes)?;
        let limiter = self.limiters.acr(&key.refresh.registry.server)?;
        let request = AccessTokenRequest {
            server: key.refresh.registry.server.clone(),
            scope: key.scope.clone(),
            refresh_token: refresh.credential.token,
        };
        let acr = &*self.apis.acr;
        let request = &request;
        tracing::debug!(hop = "acr_token", "Requesting a scoped ACR access token");
        let token = with_retries(
            &self.config.retry,
            self.config.timeouts.request,
            Hop::AcrToken,
            &limiter,
            &self.metrics,
            || acr.token(request),
        )
        .await?;
        self.cache_entry("ACR access token", token)
    }

    fn cache_entry(&self, what: &str, token: SecretToken) -> Result<CachedAcr, AzureError> {
        let times = jwt::token_times(token.expose()).map_err(|e| {
            AzureError::new(
                ErrorKind::InvalidResponse,
                format!("{what} is unreadable: {e}"),
            )
        })?;
        Ok(CachedAcr {
            credential: AcrCredential {
                token,
                expires_at: times.expires_at,
                issued_at: times.issued_at,
            },
            fetched_at: self.now(),
        })
    }
}
