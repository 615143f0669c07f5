//! Rule 7, the one plan whose outcome is known only afterwards: get a credential from the token
//! pipeline, check it at the registry, write it into the pull Secret — or, when any of that
//! fails, remember the failure, write the failed record and tell the user (first mints and
//! refreshes are named differently: nothing was issued yet vs. a working secret is kept).

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::binding::BindingResource;
use super::context::Context;
use super::error::ReconcileError;
use super::events::{publish, should_emit_failure, Notes, Severity};
use super::pull_secret::{self, Adoption, NewToken};
use super::reconcile::{write_status, Done, Step};
use super::tracker::BindingKey;
use super::verify::Verification;
use crate::azure::{
    AcrCredential, Cloud, CredentialRequest, Identity, IdentityAudience,
    V1BETA1_DEFAULT_ARM_RESOURCE,
};
use crate::state::binding::{CloudSpec, IdentitySpec, Resolved, TokenAudience, Version};
use crate::state::decide::{after_mint_failure, Decision, MintFailure, MintReason, Observed, Plan};
use crate::state::reason::Reason;
use crate::state::record::Phase;
use crate::state::refresh::{add, boundary, ceil_seconds, RefreshRule, MIN_REFRESH_INTERVAL};

/// What to mint, as decided.
pub struct Mint<'a> {
    pub request: Resolved,
    pub reason: MintReason,
    pub current_expiry: Option<Timestamp>,
    pub decision: &'a Decision,
}

pub async fn run<K: BindingResource>(
    ctx: &Context,
    b: &K,
    key: &BindingKey,
    o: &Observed,
    m: Mint<'_>,
    notes: &mut Notes,
) -> Result<Step<K>, ReconcileError> {
    // After a SecretConflict the Secret in the way is known to exist: look before minting
    // again, so a retry calls Azure only once it was handed over or removed.
    if looks_before_minting(key, o, m.reason) {
        // The cache shows no secret. The old controller's v1beta1 secrets may be unlabelled
        // (SPEC §4.1), invisible to the label-filtered watch: before minting, look for one by
        // name and adopt it with its still-valid token instead of calling Azure. v1beta2
        // secrets were always labelled, so their create goes first and a 409 is handled after.
        if let Some(done) = adopt(ctx, b, key, o, &m).await? {
            return Ok(Step::Stop(done));
        }
    }
    let (req, audience) = request_for(ctx, key, &m.request, m.current_expiry);
    log_exchange(key, &m, audience);
    // A fetch started ahead of this pass that failed is this pass's answer: not asked again.
    let fetched = match ctx.failures.take_fetch_failure(key, &req) {
        Some(e) => Err(e),
        None => {
            let fetched = ctx.pipeline.credential(&req).await;
            if fetched.is_err() {
                ctx.failures.fetch_answered(key);
            }
            fetched
        }
    };
    let credential = match fetched {
        Ok(c) => c,
        // The TokenRequest inside (workload identity) was refused because the Lease was lost.
        Err(_) if !ctx.writer.is_leader() => {
            return Err(ReconcileError::NotLeader { op: "mint" });
        }
        Err(e) => {
            let failure = MintFailure {
                reason: e.kind().into(),
                // What failed and what to do; pipeline errors never carry tokens.
                message: e.user_message(),
                retry_after: e.retry_after(),
            };
            return failed(ctx, b, key, o, &m, failure).await.map(Step::Stop);
        }
    };
    let verified = match ctx.verifier.verify(&m.request, &credential).await {
        Verification::Verified => Some(true),
        Verification::Unknown => None,
        Verification::Failed(reason, message) => {
            let failure = MintFailure {
                reason,
                message,
                retry_after: None,
            };
            return failed(ctx, b, key, o, &m, failure).await.map(Step::Stop);
        }
    };
    let now = Timestamp::now();
    let token = NewToken {
        request: &m.request,
        credential: &credential,
        verified,
        now,
        refresh_at: Some(refresh_at(ctx, &m.request, &credential, now)),
    };
    match pull_secret::write(&ctx.writer, &ctx.caches.secrets, b, &token).await {
        Ok(()) => {}
        // A Secret of that name exists that the watch does not show (its label was removed,
        // or the watch is behind): read it once and take it over if it is ours.
        Err(e) if e.already_exists() => {
            let api = kube::Api::<Secret>::namespaced(ctx.writer.client().clone(), &key.namespace);
            let existing = ctx
                .writer
                .read("read secret", api.get(&m.request.secret_name))
                .await?;
            if pull_secret::adoption(&existing, key.version, &key.name) == Adoption::Foreign {
                let failure = foreign(&existing);
                return failed(ctx, b, key, o, &m, failure).await.map(Step::Stop);
            }
            pull_secret::overwrite(
                &ctx.writer,
                &ctx.caches.secrets,
                b,
                &token,
                existing.resource_version(),
            )
            .await?;
        }
        Err(e) => return Err(e),
    }
    ctx.failures.mint_succeeded(key);
    notes.minted(
        m.reason.success_event(),
        &m.request.secret_name,
        &super::binding::rfc3339(credential.expires_at),
    );
    Ok(Step::Continue { binding: None })
}

/// Whether a mint of `reason` first looks for a Secret to adopt (an API read that may end
/// the pass without calling Azure).
fn looks_before_minting(key: &BindingKey, o: &Observed, reason: MintReason) -> bool {
    let conflicted = o
        .last_failure
        .as_ref()
        .is_some_and(|f| f.reason == Reason::SecretConflict);
    reason == MintReason::Missing && (key.version == Version::V1beta1 || conflicted)
}

/// The pipeline request for a binding's resolved spec, and the audience it uses.
fn request_for(
    ctx: &Context,
    key: &BindingKey,
    r: &Resolved,
    current_expiry: Option<Timestamp>,
) -> (CredentialRequest, IdentityAudience) {
    let audience = match r.audience {
        Some(TokenAudience::ResourceManager) => IdentityAudience::ResourceManager,
        Some(TokenAudience::ContainerRegistry) => IdentityAudience::ContainerRegistry,
        None => ctx.audience,
    };
    let req = credential_request(r, &key.namespace, audience, current_expiry);
    (req, audience)
}

/// Look-ahead: when a binding's watch event shows its pass will mint, start fetching the
/// credential now, and queue the pass only once the fetch ended (then a cache hit, or its
/// failure, kept for the pass) instead of letting it hold a pass slot while it waits. The
/// registries' limiters then work on every credential the fleet needs, in the order the
/// bindings came, while the slots write for bindings whose credential is there
/// (BENCHMARKS.md, issue 19). Only what the pass itself would mint right away is fetched, on
/// the same decision: nothing for a binding that first looks for a Secret to adopt, is
/// refused, backing off, or has a valid token. The waiting is [`super::ahead`]'s, one wait per
/// fetch. `true`: the pass is queued when the fetch ends; `false`: queue it now.
pub fn look_ahead(ctx: &Arc<Context>, key: &BindingKey, decision: &Decision, o: &Observed) -> bool {
    let Plan::Mint {
        request,
        reason,
        current_expiry,
    } = &decision.plan
    else {
        return false;
    };
    if looks_before_minting(key, o, *reason) {
        return false;
    }
    let (req, _) = request_for(ctx, key, request, *current_expiry);
    let started = std::time::Instant::now();
    let Some(fetch) = ctx.pipeline.fetching(&req) else {
        return false;
    };
    let failures = ctx.clone();
    ctx.ahead
        .wait(fetch, key.clone(), req, started, move |w, e| {
            // Kept for the pass only while this replica leads: a failure from losing the
            // Lease (workload identity's TokenRequest) is not the binding's.
            if failures.writer.is_leader() {
                let request = (*w.request).clone();
                failures
                    .failures
                    .fetch_failed(&w.key, request, e.clone(), w.started);
            }
        });
    true
}

/// When the new token is planned to be refreshed: paced (see [`super::pacing`]) between a few
/// seconds after writing and its boundary.
fn refresh_at(
    ctx: &Context,
    request: &Resolved,
    credential: &AcrCredential,
    now: Timestamp,
) -> Timestamp {
    let written = ceil_seconds(now);
    let issued = credential
        .issued_at
        .filter(|t| *t < written)
        .unwrap_or(written);
    let latest = boundary(request.refresh_rule, issued, credential.expires_at);
    let earliest = add(written, MIN_REFRESH_INTERVAL);
    ctx.pacing.plan(&credential.token, earliest, latest, now)
}

fn foreign(existing: &Secret) -> MintFailure {
    MintFailure {
        reason: Reason::SecretConflict,
        message: format!(
            "a Secret named {:?} already exists and is not managed by acrpull (no controller \
             ownerReference to this AcrPullBinding); rename or delete it",
            existing.name_any()
        ),
        retry_after: None,
    }
}

/// The identity a binding's token exchange uses, for logs (upstream issue #110): ids and
/// names only, never a token.
struct IdentityFields<'a> {
    kind: &'static str,
    client_id: Option<&'a str>,
    resource_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    service_account: Option<&'a str>,
}

fn identity_fields(r: &Resolved) -> IdentityFields<'_> {
    match &r.identity {
        IdentitySpec::ManagedClientId(c) => IdentityFields {
            kind: "managed",
            client_id: Some(c),
            resource_id: None,
            tenant_id: None,
            service_account: None,
        },
        IdentitySpec::ManagedResourceId(id) => IdentityFields {
            kind: "managed",
            client_id: None,
            resource_id: Some(id),
            tenant_id: None,
            service_account: None,
        },
        IdentitySpec::Workload {
            tenant_id,
            client_id,
            service_account,
        } => IdentityFields {
            kind: "workload",
            client_id: Some(client_id),
            resource_id: None,
            tenant_id: Some(tenant_id),
            service_account: Some(service_account),
        },
    }
}

fn audience_name(audience: IdentityAudience) -> &'static str {
    match audience {
        IdentityAudience::ResourceManager => "resource-manager",
        IdentityAudience::ContainerRegistry => "container-registry",
    }
}

/// Says which identity and audience a binding's exchange uses: at info for its first token and
/// after its inputs changed (the identity may be another), at debug for a refresh.
fn log_exchange(key: &BindingKey, m: &Mint<'_>, audience: IdentityAudience) {
    let id = identity_fields(&m.request);
    let registry = m.request.registry.authority();
    macro_rules! log {
        ($level:ident) => {
            tracing::$level!(
                namespace = %key.namespace, name = %key.name, identity = id.kind,
                client_id = id.client_id, resource_id = id.resource_id, tenant_id = id.tenant_id,
                service_account = id.service_account, audience = audience_name(audience),
                registry = %registry, reason = ?m.reason, "exchanging a token for the binding's identity"
            )
        };
    }
    match m.reason {
        MintReason::Missing | MintReason::InputsChanged => log!(info),
        MintReason::Due | MintReason::Unreadable => log!(debug),
    }
}

/// Label or take up a Secret of the pull secret's name that the cache did not show; fail the
/// binding when it belongs to someone else. `None`: there is none, mint.
async fn adopt<K: BindingResource>(
    ctx: &Context,
    b: &K,
    key: &BindingKey,
    o: &Observed,
    m: &Mint<'_>,
) -> Result<Option<Done>, ReconcileError> {
    let api = kube::Api::<Secret>::namespaced(ctx.writer.client().clone(), &key.namespace);
    let name = m.request.secret_name.as_str();
    let Some(existing) = ctx.writer.read("read secret", api.get_opt(name)).await? else {
        return Ok(None);
    };
    let again = Done {
        record: None,
        requeue: m.decision.requeue,
    };
    match pull_secret::adoption(&existing, key.version, &key.name) {
        Adoption::Label => {
            pull_secret::label(&ctx.writer, &ctx.caches.secrets, &existing, &key.name).await?;
            tracing::info!(namespace = %key.namespace, secret = name, "labelled an existing pull secret for this binding");
            Ok(Some(again))
        }
        Adoption::Cache => {
            // Labelled but not cached yet: the watch is behind; what was read is current.
            ctx.caches.secrets.written(pull_secret::cached(existing));
            Ok(Some(again))
        }
        Adoption::Foreign => {
            let failure = foreign(&existing);
            failed(ctx, b, key, o, m, failure).await.map(Some)
        }
    }
}

/// Record a failed mint: remember it (backoff), write the failed record, log and tell the user.
/// The existing pull secret is not touched.
async fn failed<K: BindingResource>(
    ctx: &Context,
    b: &K,
    key: &BindingKey,
    o: &Observed,
    m: &Mint<'_>,
    failure: MintFailure,
) -> Result<Done, ReconcileError> {
    // The retry is planned from when the failure happened, not from when the pass started
    // (the pipeline may have retried for up to a minute).
    let now = Timestamp::now();
    let (mut record, f) = after_mint_failure(o, &m.request, &failure, now, &ctx.policy);
    // The tenancy condition this pass decided stays as decided.
    record.permitted = m.decision.record.permitted.clone();
    ctx.failures
        .mint_failed(key, o.binding.generation, f.clone());
    let summary = match (m.reason, record.phase) {
        (MintReason::Missing, _) => "token request failed; there is no pull secret yet",
        (_, Phase::Refreshing) => "token refresh failed; the pull secret keeps its valid token",
        _ => "token refresh failed; the pull secret holds no valid token",
    };
    let id = identity_fields(&m.request);
    tracing::warn!(
        namespace = %key.namespace, name = %key.name, reason = record.reason.as_str(),
        identity = id.kind, client_id = id.client_id, resource_id = id.resource_id,
        tenant_id = id.tenant_id,
        phase = record.phase.as_str(), failures = record.consecutive_failures,
        retry_at = %f.retry_at, valid_until = ?record.expiry.filter(|_| record.ready),
        error = %record.error, "{summary}"
    );
    write_status(ctx, b, &record, now).await?;
    if should_emit_failure(
        record.consecutive_failures,
        &o.binding.status.error,
        &record.error,
    ) {
        publish(
            &ctx.writer,
            &ctx.reporter,
            b,
            Severity::Warning,
            m.reason.failure_event(),
            "Mint",
            record.error.clone(),
        )
        .await;
    }
    Ok(Done {
        requeue: Some(f.retry_at),
        record: Some(record),
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
            matches!(r.refresh_rule, RefreshRule::V1beta1)
                .then(|| V1BETA1_DEFAULT_ARM_RESOURCE.to_string())
        }),
        fresher_than: current_expiry,
    }
}
