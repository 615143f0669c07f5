//! The reconcile shell: read the caches, call the pure [`decide`], perform the single planned
//! step with a timeout, and say when to come back. Every write goes through here (the single
//! writer), only while this replica leads, with optimistic concurrency: a 409 Conflict means
//! "the cache was behind" and is retried after the watch catches up, never shown as `Failed`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Reporter};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::binding::{rfc3339, BindingResource};
use super::cache::NsCache;
use super::events::should_emit_failure;
use super::observe::{observe, SecretMeta};
use super::tracker::{BindingKey, Report, Tracker};
use crate::azure::{
    Cloud, CredentialRequest, Identity, IdentityAudience, TokenPipeline,
    V1BETA1_DEFAULT_ARM_RESOURCE,
};
use crate::state::binding::{CloudSpec, IdentitySpec, Policy, Resolved};
use crate::state::decide::{
    after_mint_failure, decide, requeue_for, CleanupStep, Decision, DesiredStatus, Failure,
    MintReason, Observed, Phase, Plan,
};
use crate::state::dockerconfig::docker_config_json;
use crate::state::names::{
    sort_pull_secrets, BINDING_LABEL, DOCKER_CONFIG_KEY, DOCKER_CONFIG_TYPE, EXPIRY_ANNOTATION,
    INPUTS_ANNOTATION, REFRESH_ANNOTATION, VERIFIED_ANNOTATION,
};
use crate::state::selector::Selector;

/// Field manager for every write.
pub const FIELD_MANAGER: &str = "acrpull";
/// After a write, come back at the latest after this (the watch usually triggers sooner).
const AFTER_WRITE: Duration = Duration::from_secs(5);
/// After a conflict, the cache is behind: come back shortly.
const AFTER_CONFLICT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("a Secret named {secret:?} already exists and is not managed by acrpull; rename or delete it")]
    Foreign { secret: String },
    #[error("{op}: {source}")]
    Kube {
        op: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Static label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Timeout { .. } => "Timeout",
            ReconcileError::Foreign { .. } => "SecretConflict",
            ReconcileError::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "Conflict",
                kube::Error::Api(s) if s.code == 404 => "NotFound",
                kube::Error::Api(_) => "ApiError",
                _ => "ClientError",
            },
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub pipeline: Arc<TokenPipeline>,
    pub policy: Policy,
    pub selector: Selector,
    pub secrets: NsCache<SecretMeta>,
    pub service_accounts: NsCache<ServiceAccount>,
    /// Who the controller's Events say reported them.
    pub reporter: Reporter,
    pub leader: watch::Receiver<bool>,
    pub tracker: Tracker,
    pub call_timeout: Duration,
    pub audience: IdentityAudience,
    failures: Mutex<HashMap<BindingKey, (i64, Failure)>>,
    pub metrics: super::metrics::ControllerMetrics,
    /// Check each new credential at the registry's token endpoint (`--verify-credentials`).
    pub verify: bool,
    /// Credentials already verified, by (registry, scope, SHA-256 of the token) → token
    /// expiry: bindings sharing a cached token are checked once, not once each.
    verified: Mutex<HashMap<VerifyKey, Timestamp>>,
    /// One check in flight per key: concurrent bindings with the same token wait for it.
    verifying: Mutex<HashMap<VerifyKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Readiness: reconciles wait until every watch has delivered its initial list, so a
    /// binding is never decided on a cache that has not seen its Secret yet.
    pub readiness: Option<crate::http::health::Readiness>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        pipeline: Arc<TokenPipeline>,
        policy: Policy,
        selector: Selector,
        secrets: NsCache<SecretMeta>,
        service_accounts: NsCache<ServiceAccount>,
        reporter: Reporter,
        leader: watch::Receiver<bool>,
        tracker: Tracker,
        call_timeout: Duration,
        audience: IdentityAudience,
        metrics: super::metrics::ControllerMetrics,
    ) -> Self {
        Self {
            client,
            pipeline,
            policy,
            selector,
            secrets,
            service_accounts,
            reporter,
            leader,
            tracker,
            call_timeout,
            audience,
            failures: Mutex::new(HashMap::new()),
            metrics,
            verify: true,
            verified: Mutex::new(HashMap::new()),
            verifying: Mutex::new(HashMap::new()),
            readiness: None,
        }
    }

    /// Gate reconciles on the caches having synced.
    pub fn with_readiness(mut self, readiness: crate::http::health::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Switch post-mint verification on or off.
    pub fn with_verification(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    fn last_failure(&self, key: &BindingKey, generation: i64) -> Option<Failure> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(g, _)| *g == generation)
            .map(|(_, f)| f.clone())
    }

    fn set_failure(&self, key: BindingKey, generation: i64, failure: Option<Failure>) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failure {
            Some(f) => {
                map.insert(key, (generation, f));
            }
            None => {
                map.remove(&key);
            }
        }
    }

    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ReconcileError> {
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(r) => r.map_err(|source| ReconcileError::Kube { op, source }),
            Err(_) => Err(ReconcileError::Timeout {
                op,
                after: self.call_timeout,
            }),
        }
    }
}

fn key_of<K: BindingResource>(b: &K) -> BindingKey {
    BindingKey {
        version: K::VERSION,
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
    }
}

/// One pass for one binding.
pub async fn reconcile<K: BindingResource>(
    binding: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let pass = ctx.metrics.reconcile_started(K::VERSION);
    let result = reconcile_inner(binding.as_ref(), &ctx).await;
    pass.finish(result.as_ref().map_err(ReconcileError::reason));
    result
}

async fn reconcile_inner<K: BindingResource>(
    binding: &K,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    if !*ctx.leader.borrow() {
        // Standby: caches stay warm; the leader's election triggers a full pass.
        return Ok(Action::await_change());
    }
    if ctx.readiness.as_ref().is_some_and(|r| !r.is_synced()) {
        // A cache that has not delivered its initial list could be missing this binding's
        // Secret: deciding now would mint a token it already has.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let key = key_of(binding);
    let generation = binding.meta().generation.unwrap_or(0);
    let matches = ctx.selector.matches(binding.labels());
    let observed = observe(
        binding,
        matches,
        &ctx.secrets.in_namespace(&key.namespace),
        &ctx.service_accounts.in_namespace(&key.namespace),
        ctx.last_failure(&key, generation),
    );
    let now = Timestamp::now();
    let decision = decide(&observed, now, &ctx.policy);
    track(ctx, &key, &observed, &decision, now);
    tracing::debug!(
        namespace = %key.namespace, name = %key.name, version = ?key.version,
        phase = decision.phase.as_str(), plan = plan_name(&decision.plan),
        "decided"
    );
    match execute(binding, &key, &observed, decision, ctx, now).await {
        Err(e) if e.reason() == "Conflict" || e.reason() == "NotFound" => {
            tracing::debug!(namespace = %key.namespace, name = %key.name, error = %e, "cache behind the API server; retrying");
            Ok(Action::requeue(AFTER_CONFLICT))
        }
        other => other,
    }
}

fn plan_name(plan: &Plan) -> &'static str {
    match plan {
        Plan::Ignore => "Ignore",
        Plan::Cleanup(CleanupStep::Detach { .. }) => "CleanupDetach",
        Plan::Cleanup(CleanupStep::DeleteSecret(_)) => "CleanupDeleteSecret",
        Plan::Cleanup(CleanupStep::RemoveFinalizer) => "RemoveFinalizer",
        Plan::AddFinalizer => "AddFinalizer",
        Plan::Fail { .. } => "Fail",
        Plan::DetachExtraneous { .. } => "DetachExtraneous",
        Plan::Mint { .. } => "Mint",
        Plan::Attach { .. } => "Attach",
        Plan::RemoveExtraneousSecret { .. } => "RemoveExtraneousSecret",
        Plan::WriteStatus(_) => "WriteStatus",
        Plan::Wait { .. } => "Wait",
    }
}

fn track(ctx: &Context, key: &BindingKey, o: &Observed, d: &Decision, now: Timestamp) {
    if matches!(d.plan, Plan::Ignore) {
        return;
    }
    let (reason, error) = match &d.plan {
        Plan::Fail { status, .. } => (status.reason.to_string(), status.error.clone()),
        _ => (
            o.binding
                .status
                .ready
                .as_ref()
                .map(|r| r.1.clone())
                .unwrap_or_else(|| plan_name(&d.plan).to_string()),
            o.binding.status.error.clone(),
        ),
    };
    let secret_name = super::observe::expected_secret_name(key.version, &key.name);
    let service_account = o
        .target_service_account
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let report = Report {
        phase: d.phase,
        reason: reason.clone(),
        error,
        last_refresh: o.binding.status.last_refresh,
        expiry: o.secrets.iter().filter_map(|s| s.expiry).max(),
        next_refresh: o.binding.status.next_refresh,
        consecutive_failures: o.binding.status.consecutive_failures,
        secret_name,
        service_account,
    };
    if let Some(previous) = ctx.tracker.record(key, report, now) {
        tracing::info!(
            namespace = %key.namespace, name = %key.name, api_version = key.version.api_version(),
            from = previous.map(Phase::as_str).unwrap_or("None"), to = d.phase.as_str(), reason = %reason,
            "phase transition"
        );
    }
}

async fn execute<K: BindingResource>(
    b: &K,
    key: &BindingKey,
    o: &Observed,
    d: Decision,
    ctx: &Context,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let ns = key.namespace.as_str();
    let bindings: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams::default();
    let rv = b.resource_version().unwrap_or_default();
    match d.plan {
        Plan::Ignore => {
            if o.binding.deleting || !o.matches_selector {
                ctx.tracker.forget(key);
            }
            Ok(Action::await_change())
        }
        Plan::AddFinalizer => {
            let mut finalizers = b.finalizers().to_vec();
            finalizers.push(crate::k8s::api::FINALIZER.to_string());
            let patch = json!({"metadata": {"resourceVersion": rv, "finalizers": finalizers}});
            ctx.call(
                "add finalizer",
                bindings.patch(&key.name, &pp, &Patch::Merge(&patch)),
            )
            .await?;
            Ok(Action::requeue(AFTER_WRITE))
        }
        Plan::Cleanup(CleanupStep::Detach {
            service_account,
            pull_secrets,
        })
        | Plan::DetachExtraneous {
            service_account,
            pull_secrets,
        } => {
            set_pull_secrets(ctx, &sas, &service_account, pull_secrets).await?;
            Ok(Action::requeue(AFTER_WRITE))
        }
        Plan::Cleanup(CleanupStep::DeleteSecret(name)) => {
            delete_secret(ctx, &secrets, &name).await?;
            Ok(Action::requeue(AFTER_WRITE))
        }
        Plan::Cleanup(CleanupStep::RemoveFinalizer) => {
            let finalizers: Vec<String> = b
                .finalizers()
                .iter()
                .filter(|f| *f != crate::k8s::api::FINALIZER)
                .cloned()
                .collect();
            let patch = json!({"metadata": {"resourceVersion": rv, "finalizers": finalizers}});
            ctx.call(
                "remove finalizer",
                bindings.patch(&key.name, &pp, &Patch::Merge(&patch)),
            )
            .await?;
            publish(
                ctx,
                b,
                EventType::Normal,
                "CleanedUp",
                "Cleanup",
                "pull secret detached and deleted".into(),
            )
            .await;
            ctx.set_failure(key.clone(), 0, None);
            ctx.tracker.forget(key);
            Ok(Action::await_change())
        }
        Plan::Fail { status, retry_at } => {
            write_status(ctx, &bindings, b, &status, now).await?;
            let failures = status.consecutive_failures;
            if should_emit_failure(failures, &o.binding.status.error, &status.error) {
                let reason = match status.reason {
                    "ServiceAccountNotFound" => "ServiceAccountNotFound",
                    "InvalidSpec" | "RegistryNotAllowed" => "InvalidSpec",
                    _ => "TokenRefreshFailed",
                };
                publish(
                    ctx,
                    b,
                    EventType::Warning,
                    reason,
                    "Validate",
                    status.error.clone(),
                )
                .await;
            }
            Ok(Action::requeue(
                retry_at
                    .map(|t| crate::state::refresh::requeue_after(now, t))
                    .unwrap_or(ctx.policy.recheck_interval),
            ))
        }
        Plan::Mint {
            request,
            reason,
            current_expiry,
        } => {
            mint(
                b,
                key,
                o,
                ctx,
                &secrets,
                &bindings,
                *request,
                reason,
                current_expiry,
                now,
            )
            .await
        }
        Plan::Attach {
            service_account,
            pull_secrets,
        } => {
            set_pull_secrets(ctx, &sas, &service_account, pull_secrets).await?;
            publish(
                ctx,
                b,
                EventType::Normal,
                "PullSecretAttached",
                "Attach",
                format!("pull secret attached to service account {service_account}"),
            )
            .await;
            Ok(Action::requeue(AFTER_WRITE))
        }
        Plan::RemoveExtraneousSecret {
            secret,
            detach_from,
        } => {
            if let Some(sa_name) = detach_from.first() {
                let current = ctx.service_accounts.get(ns, sa_name);
                if let Some(sa) = current {
                    let list: Vec<String> = sa
                        .image_pull_secrets
                        .iter()
                        .flatten()
                        .map(|r| r.name.clone())
                        .filter(|n| *n != secret)
                        .collect();
                    set_pull_secrets(ctx, &sas, sa_name, list).await?;
                }
            } else {
                delete_secret(ctx, &secrets, &secret).await?;
            }
            Ok(Action::requeue(AFTER_WRITE))
        }
        Plan::WriteStatus(status) => {
            write_status(ctx, &bindings, b, &status, now).await?;
            ctx.set_failure(key.clone(), 0, None);
            Ok(Action::requeue(
                requeue_for(
                    &Plan::Wait {
                        until: status.next_refresh.unwrap_or(now),
                    },
                    now,
                    &ctx.policy,
                )
                .unwrap_or(AFTER_WRITE),
            ))
        }
        Plan::Wait { until } => Ok(Action::requeue(crate::state::refresh::requeue_after(
            now, until,
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn mint<K: BindingResource>(
    b: &K,
    key: &BindingKey,
    o: &Observed,
    ctx: &Context,
    secrets: &Api<Secret>,
    bindings: &Api<K>,
    request: Resolved,
    reason: MintReason,
    current_expiry: Option<Timestamp>,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let generation = o.binding.generation;
    if reason == MintReason::Missing {
        // The cache shows no secret. Before minting, make sure none exists unlabelled
        // (secrets of the old controller, SPEC §4.1, or a label removed by hand): label it
        // so the Secret watch sees it, instead of minting a token and colliding on create.
        match adopt_existing(b, key, ctx, secrets, &request.secret_name).await {
            Ok(Some(action)) => return Ok(action),
            Ok(None) => {}
            Err(e @ ReconcileError::Foreign { .. }) => {
                return record_mint_failure(
                    b,
                    key,
                    o,
                    ctx,
                    bindings,
                    "SecretConflict",
                    e.to_string(),
                    None,
                    now,
                )
                .await;
            }
            Err(e) => return Err(e),
        }
    }
    let req = credential_request(&request, &key.namespace, ctx.audience, current_expiry);
    match ctx.pipeline.credential(&req).await {
        Ok(credential) => {
            let verified = match verify_credential(ctx, &request, &credential).await {
                Verification::Verified => Some(true),
                Verification::Unknown => None,
                Verification::Failed(reason, message) => {
                    return record_mint_failure(
                        b, key, o, ctx, bindings, reason, message, None, now,
                    )
                    .await;
                }
            };
            let data = docker_config_json(&request.registry.authority(), &credential.token);
            let existing = ctx.secrets.get(&key.namespace, &request.secret_name);
            let owner = OwnerReference {
                api_version: K::api_version(&()).to_string(),
                kind: K::kind(&()).to_string(),
                name: key.name.clone(),
                uid: b.meta().uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            };
            let annotations = json!({
                EXPIRY_ANNOTATION: rfc3339(credential.expires_at),
                // When the token was issued, not when it was written: a token served from the
                // cache part-way through its life must still refresh at its own half-life.
                REFRESH_ANNOTATION: rfc3339(credential.issued_at.filter(|t| *t <= now).unwrap_or(now)),
                INPUTS_ANNOTATION: request.inputs_hash,
                // null removes a stale outcome on update (merge patch).
                VERIFIED_ANNOTATION: verified.map(|v| v.to_string()),
            });
            let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
            match existing {
                None => {
                    let secret: Secret = serde_json::from_value(json!({
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {
                            "name": request.secret_name,
                            "namespace": key.namespace,
                            "labels": { BINDING_LABEL: key.name },
                            "annotations": annotations,
                            "ownerReferences": [owner],
                        },
                        "type": DOCKER_CONFIG_TYPE,
                        "data": { DOCKER_CONFIG_KEY: encoded },
                    }))
                    .map_err(|e| ReconcileError::Kube {
                        op: "build secret",
                        source: kube::Error::SerdeError(e),
                    })?;
                    ctx.call(
                        "create secret",
                        secrets.create(
                            &PostParams {
                                field_manager: Some(FIELD_MANAGER.into()),
                                ..Default::default()
                            },
                            &secret,
                        ),
                    )
                    .await?;
                }
                Some(meta) => {
                    let patch_at = |rv: Option<String>| {
                        json!({
                            "metadata": {
                                "resourceVersion": rv,
                                "labels": { BINDING_LABEL: key.name },
                                "annotations": annotations,
                                "ownerReferences": [owner],
                            },
                            "type": DOCKER_CONFIG_TYPE,
                            "data": { DOCKER_CONFIG_KEY: encoded },
                        })
                    };
                    let first = ctx
                        .call(
                            "update secret",
                            secrets.patch(
                                &request.secret_name,
                                &PatchParams::default(),
                                &Patch::Merge(&patch_at(meta.resource_version())),
                            ),
                        )
                        .await;
                    match first {
                        // The cache is behind (a slow or stalled watch): the token in hand
                        // is the newest, so write it over the live object instead of
                        // retrying from the stale cache until the Secret expires.
                        Err(e) if e.reason() == "Conflict" => {
                            let live = ctx
                                .call("read secret", secrets.get(&request.secret_name))
                                .await?;
                            ctx.call(
                                "update secret",
                                secrets.patch(
                                    &request.secret_name,
                                    &PatchParams::default(),
                                    &Patch::Merge(&patch_at(live.resource_version())),
                                ),
                            )
                            .await?;
                        }
                        other => {
                            other?;
                        }
                    }
                }
            }
            ctx.set_failure(key.clone(), generation, None);
            let (event, note) = match reason {
                MintReason::Missing => ("TokenIssued", "pull secret created"),
                _ => ("TokenRefreshed", "pull secret refreshed"),
            };
            publish(
                ctx,
                b,
                EventType::Normal,
                event,
                "Mint",
                format!("{note}; token expires {}", rfc3339(credential.expires_at)),
            )
            .await;
            Ok(Action::requeue(AFTER_WRITE))
        }
        Err(err) => {
            // What failed and what to do; pipeline errors never carry tokens.
            let message = err.user_message();
            record_mint_failure(
                b,
                key,
                o,
                ctx,
                bindings,
                err.reason(),
                message,
                err.retry_after(),
                now,
            )
            .await
        }
    }
}

/// Record a failed mint (Azure error or failed verification): status `Failed` with the
/// reason and backoff, an aggregated event, and the in-memory failure. The existing pull
/// secret is not touched.
#[allow(clippy::too_many_arguments)]
async fn record_mint_failure<K: BindingResource>(
    b: &K,
    key: &BindingKey,
    o: &Observed,
    ctx: &Context,
    bindings: &Api<K>,
    reason: &'static str,
    message: String,
    retry_after: Option<Duration>,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let (status, at) =
        after_mint_failure(o, reason, message.clone(), retry_after, now, &ctx.policy);
    ctx.set_failure(
        key.clone(),
        o.binding.generation,
        Some(Failure {
            reason,
            message,
            at: now,
            not_before: Some(at),
        }),
    );
    tracing::warn!(
        namespace = %key.namespace, name = %key.name, reason,
        failures = status.consecutive_failures, retry_at = %rfc3339(at),
        error = %status.error, "token request failed; the existing pull secret is kept"
    );
    write_status(ctx, bindings, b, &status, now).await?;
    if should_emit_failure(
        status.consecutive_failures,
        &o.binding.status.error,
        &status.error,
    ) {
        publish(
            ctx,
            b,
            EventType::Warning,
            "TokenRefreshFailed",
            "Mint",
            status.error.clone(),
        )
        .await;
    }
    Ok(Action::requeue(crate::state::refresh::requeue_after(
        now, at,
    )))
}

/// (registry, scope, SHA-256 of the token): the token itself is never a key.
type VerifyKey = (String, String, [u8; 32]);

/// What checking a fresh credential at the registry's token endpoint showed.
enum Verification {
    /// Every requested scope was granted.
    Verified,
    /// Not checked (switched off) or the check could not be made (transient error).
    Unknown,
    /// A failure to surface: (reason, message).
    Failed(&'static str, String),
}

/// Present the credential the way a pull client does and compare the granted access with
/// the binding's scopes. Counts against the registry's rate limiter (inside the pipeline).
async fn verify_credential(
    ctx: &Context,
    request: &Resolved,
    credential: &crate::azure::AcrCredential,
) -> Verification {
    if !ctx.verify {
        ctx.metrics.verification("skipped");
        return Verification::Unknown;
    }
    let scope = request.scope.clone().unwrap_or_default();
    let server = request.registry.authority();
    let key: VerifyKey = (
        server.clone(),
        scope.clone(),
        <sha2::Sha256 as sha2::Digest>::digest(credential.token.expose().as_bytes()).into(),
    );
    // Single flight per key: the first caller checks, the others find its result.
    let gate = {
        let mut inflight = ctx.verifying.lock().unwrap_or_else(|e| e.into_inner());
        inflight.retain(|_, g| Arc::strong_count(g) > 1);
        inflight.entry(key.clone()).or_default().clone()
    };
    let _turn = gate.lock().await;
    {
        let mut cache = ctx.verified.lock().unwrap_or_else(|e| e.into_inner());
        let now = Timestamp::now();
        cache.retain(|_, expiry| *expiry > now);
        if cache.contains_key(&key) {
            ctx.metrics.verification("cached");
            return Verification::Verified;
        }
    }
    let outcome = check_at_registry(ctx, &server, &scope, credential).await;
    if matches!(outcome, Verification::Verified) {
        ctx.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, credential.expires_at);
    }
    outcome
}

async fn check_at_registry(
    ctx: &Context,
    server: &str,
    scope: &str,
    credential: &crate::azure::AcrCredential,
) -> Verification {
    let scope = scope.to_string();
    let server = server.to_string();
    match ctx
        .pipeline
        .verify(&server, &credential.token, &scope)
        .await
    {
        Ok(registry_token) => {
            if scope.is_empty() {
                ctx.metrics.verification("verified");
                return Verification::Verified;
            }
            let granted =
                crate::state::jwt::granted_access(registry_token.expose()).unwrap_or_default();
            let missing = crate::state::verify::missing_access(&scope, &granted);
            if missing.is_empty() {
                ctx.metrics.verification("verified");
                Verification::Verified
            } else {
                ctx.metrics.verification("scope_not_granted");
                Verification::Failed(
                    "ScopeNotGranted",
                    format!(
                        "registry {server} did not grant {} to this identity; give the identity the AcrPull role on the registry (or on those repositories), or narrow spec.acr.scope",
                        missing.join(", ")
                    ),
                )
            }
        }
        Err(e) if e.reason() == "Unauthorized" => {
            ctx.metrics.verification("rejected");
            Verification::Failed(
                "CredentialRejected",
                format!(
                    "registry {server} rejected the new credential: {}",
                    e.user_message()
                ),
            )
        }
        Err(e) => {
            ctx.metrics.verification("unavailable");
            tracing::info!(registry = %server, reason = e.reason(), "credential check unavailable; writing the credential unverified");
            Verification::Unknown
        }
    }
}

/// If a Secret with the binding's pull-secret name exists but is not in the labelled cache,
/// label it when it is ours (owned by this binding, or an ownerless old-controller secret of
/// the right name family), or fail the binding when it belongs to someone else.
async fn adopt_existing<K: BindingResource>(
    b: &K,
    key: &BindingKey,
    ctx: &Context,
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Option<Action>, ReconcileError> {
    let Some(existing) = ctx.call("read secret", secrets.get_opt(name)).await? else {
        return Ok(None);
    };
    let uid = b.meta().uid.clone().unwrap_or_default();
    let owners = existing.owner_references();
    let ours = owners.is_empty()
        || owners
            .iter()
            .any(|o| o.kind == "AcrPullBinding" && (o.uid == uid || o.name == key.name));
    let labelled = existing.labels().get(BINDING_LABEL) == Some(&key.name);
    if ours && !labelled {
        let patch = json!({"metadata": {
            "resourceVersion": existing.resource_version(),
            "labels": { BINDING_LABEL: key.name },
        }});
        ctx.call(
            "label legacy secret",
            secrets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
        tracing::info!(namespace = %key.namespace, secret = name, "labelled an existing pull secret for this binding");
        return Ok(Some(Action::requeue(AFTER_WRITE)));
    }
    if ours {
        // Labelled but not cached yet: the watch is behind.
        return Ok(Some(Action::requeue(AFTER_CONFLICT)));
    }
    Err(ReconcileError::Foreign {
        secret: name.to_string(),
    })
}

fn credential_request(
    r: &Resolved,
    namespace: &str,
    audience: IdentityAudience,
    current_expiry: Option<Timestamp>,
) -> CredentialRequest {
    CredentialRequest {
        server: r.registry.authority(),
        scope: r.scope.clone(),
        identity: match &r.identity {
            IdentitySpec::ManagedClientId(c) => Identity::ManagedClientId(c.clone()),
            IdentitySpec::ManagedResourceId(id) => Identity::ManagedResourceId(id.clone()),
            IdentitySpec::Workload {
                tenant_id,
                client_id,
                service_account,
            } => Identity::Workload {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                service_account_namespace: namespace.to_string(),
                service_account_name: service_account.clone(),
            },
        },
        cloud: match &r.cloud {
            CloudSpec::Public => Cloud::Public,
            CloudSpec::USGovernment => Cloud::USGovernment,
            CloudSpec::China => Cloud::China,
            CloudSpec::Airgapped {
                entra_authority_host,
                resource_manager_audience,
            } => Cloud::Airgapped {
                entra_authority_host: entra_authority_host.clone(),
                resource_manager_audience: resource_manager_audience.clone(),
            },
        },
        audience,
        arm_resource_override: r.arm_resource_override.clone().or_else(|| {
            matches!(r.refresh_rule, crate::state::refresh::RefreshRule::V1beta1)
                .then(|| V1BETA1_DEFAULT_ARM_RESOURCE.to_string())
        }),
        fresher_than: current_expiry,
    }
}

async fn set_pull_secrets(
    ctx: &Context,
    sas: &Api<ServiceAccount>,
    name: &str,
    mut list: Vec<String>,
) -> Result<(), ReconcileError> {
    let current = sas
        .namespace()
        .and_then(|ns| ctx.service_accounts.get(ns, name));
    let Some(current) = current else {
        return Ok(());
    };
    // Callers pass an ordered list; sorting again also drops duplicates.
    sort_pull_secrets(&mut list);
    let refs: Vec<serde_json::Value> = list.iter().map(|n| json!({"name": n})).collect();
    let patch = json!({
        "metadata": {"resourceVersion": current.resource_version()},
        "imagePullSecrets": refs,
    });
    ctx.call(
        "update service account",
        sas.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    Ok(())
}

async fn delete_secret(
    ctx: &Context,
    secrets: &Api<Secret>,
    name: &str,
) -> Result<(), ReconcileError> {
    let uid = secrets
        .namespace()
        .and_then(|ns| ctx.secrets.get(ns, name))
        .and_then(|s| s.uid());
    let dp = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match ctx.call("delete secret", secrets.delete(name, &dp)).await {
        Err(e) if e.reason() == "NotFound" => Ok(()),
        other => other.map(|_| ()),
    }
}

async fn write_status<K: BindingResource>(
    ctx: &Context,
    api: &Api<K>,
    b: &K,
    s: &DesiredStatus,
    now: Timestamp,
) -> Result<(), ReconcileError> {
    let ready_status = if s.ready { "True" } else { "False" };
    let previous = b
        .status()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready").cloned());
    let transition = previous
        .as_ref()
        .filter(|c| c.status == ready_status)
        .map(|c| c.last_transition_time.0)
        .unwrap_or(now);
    let opt = |t: Option<Timestamp>| t.map(rfc3339);
    let mut conditions = vec![json!({
        "type": "Ready",
        "status": ready_status,
        "reason": s.reason,
        "message": s.message,
        "observedGeneration": s.observed_generation,
        "lastTransitionTime": rfc3339(transition),
    })];
    if let Some(verified) = s.verified {
        let status = if verified { "True" } else { "False" };
        let since = b
            .status()
            .and_then(|st| {
                st.conditions
                    .iter()
                    .find(|c| c.type_ == "CredentialVerified")
            })
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.0)
            .unwrap_or(now);
        let (reason, message) = if verified {
            (
                "Verified",
                "the registry granted every requested scope to the current credential".to_string(),
            )
        } else {
            (s.reason, s.message.clone())
        };
        conditions.push(json!({
            "type": "CredentialVerified",
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": s.observed_generation,
            "lastTransitionTime": rfc3339(since),
        }));
    }
    let patch = json!({
        "status": {
            "lastTokenRefreshTime": opt(s.last_refresh),
            "tokenExpirationTime": opt(s.expiry),
            "error": if s.error.is_empty() { None } else { Some(&s.error) },
            "phase": s.phase.as_str(),
            "conditions": conditions,
            "observedGeneration": s.observed_generation,
            "nextRefreshTime": opt(s.next_refresh),
            "consecutiveFailures": if s.consecutive_failures == 0 { None } else { Some(s.consecutive_failures) },
        }
    });
    ctx.call(
        "write status",
        api.patch_status(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await?;
    Ok(())
}

async fn publish<K: BindingResource>(
    ctx: &Context,
    b: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let reference = b.object_ref(&());
    let note = truncate_note(note);
    let result = tokio::time::timeout(
        ctx.call_timeout,
        publish_event(ctx, &reference, type_, reason, action, &note),
    )
    .await;
    match result {
        Ok(Ok(())) => {}
        // Events are best effort: a failure to record one never fails the reconcile.
        Ok(Err(e)) => tracing::debug!(error = %e, reason, "event not recorded"),
        Err(_) => tracing::debug!(reason, "event publish timed out"),
    }
}

/// Object names longer than this get a shortened Event name (see [`event_name`]).
const LONG_NAME: usize = 200;

/// `<object name>.<timestamp in hex nanoseconds>` as kube-runtime and client-go name Events;
/// for names longer than [`LONG_NAME`], which would push the Event's name past 253
/// characters, `<first 200 characters>.<hash of the full name>.<timestamp>`.
fn event_name(object: &str, now: Timestamp) -> String {
    if object.len() <= LONG_NAME {
        return format!("{object}.{:x}", now.as_nanosecond());
    }
    let mut cut = LONG_NAME;
    while !object.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = crate::state::names::base36_sha224(object.as_bytes());
    format!(
        "{}.{}.{:x}",
        object[..cut].trim_end_matches(['.', '-']),
        &hash[..hash.len().min(10)],
        now.as_nanosecond()
    )
}

/// Write one `events.k8s.io/v1` Event about `reference`. Written directly rather than through
/// kube-runtime's `Recorder`: the recorder keeps every Event it sent for 6 minutes to fold
/// repeats into a series, which is ~20,000 objects in memory while 10,000 bindings converge,
/// and acrpull already thins repeats itself (`k8s::events`).
async fn publish_event(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let now = Timestamp::now();
    let namespace = reference.namespace.clone().unwrap_or_default();
    let event = K8sEvent {
        metadata: ObjectMeta {
            name: Some(event_name(
                reference.name.as_deref().unwrap_or_default(),
                now,
            )),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        action: Some(action.into()),
        reason: Some(reason.into()),
        note: Some(note.into()),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        reporting_controller: Some(ctx.reporter.controller.clone()),
        reporting_instance: Some(
            ctx.reporter
                .instance
                .clone()
                .unwrap_or_else(|| ctx.reporter.controller.clone()),
        ),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    };
    let api: Api<K8sEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    api.create(&PostParams::default(), &event).await.map(|_| ())
}

fn truncate_note(mut note: String) -> String {
    if note.len() > 1000 {
        let cut = note.floor_char_boundary(1000);
        note.truncate(cut);
    }
    note
}

/// Called by kube-runtime when reconcile returns an error (timeouts, API errors other than
/// conflicts): retry with the same per-binding backoff as Azure failures.
pub fn error_policy<K: BindingResource>(
    binding: Arc<K>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    let failures = binding
        .status()
        .map(|s| s.consecutive_failures)
        .unwrap_or(0)
        .saturating_add(1);
    let seed = crate::state::refresh::seed_of(&binding.meta().uid.clone().unwrap_or_default());
    let delay = crate::state::refresh::backoff(failures.min(6), seed, Duration::from_secs(60));
    tracing::warn!(
        namespace = %binding.namespace().unwrap_or_default(), name = %binding.name_any(),
        reason = error.reason(), error = %error, retry_in = ?delay, "reconcile failed"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod event_name_tests {
    use super::*;

    #[test]
    fn event_names_are_valid_object_names() {
        let now: Timestamp = "2026-11-28T07:00:00Z".parse().unwrap();
        // `<name>.<nanoseconds since the epoch in hex>`, as kube-runtime names them.
        assert_eq!(event_name("app", now), "app.18ec2355242b6000");
        for len in [1, 199, 200, 201, 253] {
            let object = "a".repeat(len);
            let name = event_name(&object, now);
            assert!(name.len() <= 253, "{len}: {} characters", name.len());
            assert!(name.starts_with(&object[..len.min(LONG_NAME)]));
        }
        // Two long names that share their first 200 characters get different Event names.
        let a = format!("{}-one", "x".repeat(210));
        let b = format!("{}-two", "x".repeat(210));
        assert_ne!(event_name(&a, now), event_name(&b, now));
    }
}
