//! One pass for one binding: behind the leader and sync gates, read the caches, ask the pure
//! [`decide`] for the record and the single next step, perform it, publish the record, and say
//! when to come back. API failures back off per binding ([`error_policy`]), like Azure ones.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::binding::BindingResource;
use super::context::Context;
use super::edits::{delete_secret, set_finalizers, set_pull_secrets};
use super::error::ReconcileError;
use super::events::{publish, should_emit_failure, Notes, Severity};
use super::mint::{self, Mint};
use super::observe::{observe, pull_secret_names};
use super::status;
use super::tenancy::{policy_signals, tenancy_view};
use super::tracker::{BindingKey, Report};
use crate::state::decide::{
    decide, may_attach, CleanupStep, Decision, ExtraneousStep, Observed, Plan,
};
use crate::state::names::expected_secret_name;
use crate::state::reason::Reason;
use crate::state::record::{Phase, Record};
use crate::state::refresh::{requeue_after, retry_at, seed_of};

/// While the caches sync, passes look again this often.
const SYNC_POLL: Duration = Duration::from_millis(200);

/// At most this many steps in one pass; a pass that still has work after them comes back
/// at once (a safety net: every step's write changes what the next decision sees).
const MAX_STEPS: usize = 8;

/// What a performed step leaves when the pass stops there: the record to publish when the step
/// changed it (a failed mint), and when to come back.
pub struct Done {
    pub record: Option<Record>,
    pub requeue: Option<Timestamp>,
}

/// How a pass goes on after one step.
pub enum Step<K> {
    /// The step's outcome is known (its write went into the caches, or returned the binding):
    /// decide again in the same pass.
    Continue { binding: Option<Arc<K>> },
    /// Stop here.
    Stop(Done),
}

pub fn key_of<K: BindingResource>(b: &K) -> BindingKey {
    BindingKey {
        version: K::VERSION,
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
    }
}

/// One pass for one binding (kube-runtime's reconcile function).
pub async fn reconcile<K: BindingResource>(
    binding: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let timing = ctx.metrics.reconcile_started(K::VERSION);
    let key = key_of(binding.as_ref());
    let result = match pass(binding.clone(), &key, &ctx).await {
        Ok(next) => {
            ctx.failures.api_succeeded(&key);
            Ok(next)
        }
        // The Lease was lost during the pass: nothing was sent; the next leader takes over.
        Err(ReconcileError::NotLeader { op }) => {
            tracing::info!(
                namespace = %key.namespace, name = %key.name, op,
                "the Lease was lost during the pass; stopped before writing"
            );
            Ok(Next::Now(Action::await_change()))
        }
        // A 409 or 404 on a write: the cache was behind. Normal, not an error (not counted
        // as one), but retried on the same per-binding backoff so a conflict that persists
        // does not become a hot loop.
        Err(e) if e.cache_was_behind() => {
            let delay = api_retry(binding.as_ref(), &key, &ctx);
            tracing::debug!(
                namespace = %key.namespace, name = %key.name, error = %e,
                retry_in = ?delay, "cache behind the API server; retrying"
            );
            Ok(Next::Now(Action::requeue(delay)))
        }
        Err(e) => Err(e),
    };
    let asked = result.as_ref().map(Next::asked);
    timing.finish(asked.as_ref().map_err(|e| e.reason().as_str()));
    match result? {
        Next::Now(action) => Ok(action),
        Next::Later(after) => {
            ctx.requeues.after(&key, after);
            Ok(Action::await_change())
        }
    }
}

/// What a pass asks for next.
enum Next {
    /// Of kube-runtime: a short wait (caches syncing, an API retry) or nothing.
    Now(Action),
    /// A pass after this long: a token's refresh or a retry, planned in [`Requeues`], which
    /// keeps it in less memory than kube-runtime's scheduler.
    ///
    /// [`Requeues`]: super::requeue::Requeues
    Later(Duration),
}

impl Next {
    /// What the pass asked for, as the reconcile metrics count it.
    fn asked(&self) -> Action {
        match self {
            Next::Now(action) => action.clone(),
            Next::Later(after) => Action::requeue(*after),
        }
    }
}

/// One pass: decide and perform steps while each step's outcome is known from its own answer
/// (SPEC §4's order, one action per decision), so a new binding is finalised, minted,
/// attached and marked Ready in one pass instead of one pass per step, each woken by the
/// watch event of the previous write.
async fn pass<K: BindingResource>(
    from_store: Arc<K>,
    key: &BindingKey,
    ctx: &Context,
) -> Result<Next, ReconcileError> {
    if !ctx.writer.is_leader() {
        // Standby: caches stay warm; becoming leader triggers a full pass.
        return Ok(Next::Now(Action::await_change()));
    }
    if !ctx.readiness.is_synced() {
        // A cache that has not delivered its initial list could be missing this binding's
        // Secret or ServiceAccount: deciding now would fail it or mint a token it has.
        return Ok(Next::Now(Action::requeue(SYNC_POLL)));
    }
    // kube-runtime's store can be behind our own last write of this binding.
    let mut b = ctx.caches.bindings.newest(from_store);
    let mut notes = Notes::default();
    let mut steps = 0;
    let outcome = loop {
        let (observed, decision, now) = decide_now(b.as_ref(), key, ctx);
        if matches!(decision.plan, Plan::Ignore) {
            if observed.binding.deleting || !observed.matches_selector {
                ctx.tracker.forget(key);
                ctx.requeues.forget(key);
                ctx.failures.forget(key);
                ctx.caches.bindings.forget::<K>(&key.namespace, &key.name);
            }
            break Ok(None);
        }
        if matches!(decision.plan, Plan::Wait) {
            break Ok(Some((observed, decision.record, decision.requeue)));
        }
        if matches!(decision.plan, Plan::Mint { .. }) {
            // Minting can take long (Azure retries): show what is in flight meanwhile.
            report(ctx, key, &observed, &decision.record, now);
        }
        steps += 1;
        let step = execute(&b, key, &observed, &decision, ctx, now, &mut notes).await;
        if step.is_ok() {
            policy_signals(ctx, b.as_ref(), &observed, &decision).await;
        }
        match step {
            Err(e) => break Err(e),
            Ok(Step::Stop(done)) => {
                break Ok(done
                    .requeue
                    .map(|at| (observed, done.record.unwrap_or(decision.record), Some(at))))
            }
            Ok(Step::Continue { binding }) => {
                if let Some(newer) = binding {
                    b = newer;
                }
                if steps >= MAX_STEPS {
                    tracing::warn!(
                        namespace = %key.namespace, name = %key.name, steps,
                        "still work to do after the pass's last step; coming back"
                    );
                    break Ok(Some((observed, decision.record, decision.requeue)));
                }
            }
        }
    };
    // Events of what happened, folded, even when a later step failed.
    notes.publish(&ctx.writer, &ctx.reporter, b.as_ref()).await;
    let Some((observed, record, requeue)) = outcome? else {
        return Ok(Next::Now(Action::await_change()));
    };
    report(ctx, key, &observed, &record, Timestamp::now());
    let Some(requeue) = requeue else {
        return Ok(Next::Now(Action::await_change()));
    };
    let floor = ctx.policy.min_requeue;
    Ok(Next::Later(requeue_after(Timestamp::now(), requeue, floor)))
}

/// Observe the binding in the caches and decide.
fn decide_now<K: BindingResource>(
    b: &K,
    key: &BindingKey,
    ctx: &Context,
) -> (Observed, Decision, Timestamp) {
    let observed = observe_now(b, key, ctx);
    let now = Timestamp::now();
    let decision = decide(&observed, now, &ctx.policy);
    tracing::debug!(
        namespace = %key.namespace, name = %key.name, version = ?key.version,
        phase = decision.record.phase.as_str(), reason = decision.record.reason.as_str(),
        plan = plan_name(&decision.plan), "decided"
    );
    (observed, decision, now)
}

fn observe_now<K: BindingResource>(b: &K, key: &BindingKey, ctx: &Context) -> Observed {
    let ns = key.namespace.as_str();
    // Only the namespace's objects `observe` can pick: Secrets labelled with the binding's
    // name, and ServiceAccounts it names or that name one of those Secrets.
    let secrets = ctx.caches.secrets.in_namespace_where(ns, |s| {
        s.binding_label.as_deref() == Some(key.name.as_str())
    });
    let named = b.service_accounts();
    let expected = expected_secret_name(K::VERSION, &key.name);
    let service_accounts = ctx.caches.service_accounts.in_namespace_where(ns, |sa| {
        sa.metadata.name.as_ref().is_some_and(|n| named.contains(n))
            || sa
                .image_pull_secrets
                .iter()
                .flatten()
                .any(|r| r.name == expected || secrets.iter().any(|s| s.view.name == r.name))
    });
    let mut observed = observe(
        b,
        ctx.selector.matches(b.labels()),
        &secrets,
        &service_accounts,
        ctx.failures.mint(key, b.meta().generation.unwrap_or(0)),
        Vec::new(),
    );
    if may_attach(&observed) {
        let target = named.first().map_or("", String::as_str);
        observed.siblings = ctx
            .caches
            .index_of(K::VERSION)
            .siblings(ns, &key.name, target);
    }
    observed.tenancy = tenancy_view(ctx, ns);
    // An outdated CRD prunes most status fields: compare only the ones it keeps.
    observed.binding.status.kept = ctx.crds.kept(K::VERSION);
    observed
}

/// A binding's watch event, on its way to the controller's queue: if its pass will mint a
/// credential that is not cached, the fetch of it, started now, to queue the pass after (see
/// [`mint::look_ahead`]). Behind the same gates as a pass (leader, caches synced), on the
/// same decision. `true`: the pass will be queued when the fetch ends.
pub fn look_ahead<K: BindingResource>(b: &Arc<K>, ctx: &Arc<Context>) -> bool {
    if !ctx.writer.is_leader() || !ctx.readiness.is_synced() {
        return false;
    }
    let key = key_of(b.as_ref());
    let b = ctx.caches.bindings.newest(b.clone());
    let mut observed = observe_now(b.as_ref(), &key, ctx);
    let now = Timestamp::now();
    let mut decision = decide(&observed, now, &ctx.policy);
    if matches!(decision.plan, Plan::AddFinalizer) {
        // A new binding's pass adds the finalizer first, then decides again.
        observed.binding.has_finalizer = true;
        decision = decide(&observed, now, &ctx.policy);
    }
    if !mint::look_ahead(ctx, &key, &decision, &observed) {
        return false;
    }
    // What is in flight shows meanwhile (`/debug`, the phase gauge), as a pass minting shows it.
    report(ctx, &key, &observed, &decision.record, now);
    true
}

fn plan_name(plan: &Plan) -> &'static str {
    match plan {
        Plan::Ignore => "Ignore",
        Plan::Cleanup(CleanupStep::Detach { .. }) => "CleanupDetach",
        Plan::Cleanup(CleanupStep::DeleteSecret(_)) => "CleanupDeleteSecret",
        Plan::Cleanup(CleanupStep::RemoveFinalizer) => "RemoveFinalizer",
        Plan::AddFinalizer => "AddFinalizer",
        Plan::Fail(_) => "Fail",
        Plan::DetachExtraneous { .. } => "DetachExtraneous",
        Plan::Mint { .. } => "Mint",
        Plan::Attach { .. } => "Attach",
        Plan::RemoveExtraneousSecret(_) => "RemoveExtraneousSecret",
        Plan::Revoke(ExtraneousStep::Detach { .. }) => "RevokeDetach",
        Plan::Revoke(ExtraneousStep::Delete(_)) => "RevokeDeleteSecret",
        Plan::WriteStatus(_) => "WriteStatus",
        Plan::Wait => "Wait",
    }
}

/// Publish `record` (the `/debug` entry and the phase gauge) and log a phase transition with
/// the reason it happened for.
fn report(ctx: &Context, key: &BindingKey, o: &Observed, record: &Record, now: Timestamp) {
    let report = Report {
        record: record.clone(),
        service_account: o
            .target_service_account
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
    };
    if let Some(t) = ctx.tracker.record(key, report, now) {
        tracing::info!(
            namespace = %key.namespace, name = %key.name, api_version = key.version.api_version(),
            from = t.from.unwrap_or("None"), to = t.to, reason = t.reason,
            error = %record.error, "phase transition"
        );
    }
}

/// Perform the decided step.
async fn execute<K: BindingResource>(
    b: &Arc<K>,
    key: &BindingKey,
    o: &Observed,
    d: &Decision,
    ctx: &Context,
    now: Timestamp,
    notes: &mut Notes,
) -> Result<Step<K>, ReconcileError> {
    let ns = key.namespace.as_str();
    let go_on = Step::Continue { binding: None };
    let stop = Step::Stop(Done {
        record: None,
        requeue: d.requeue,
    });
    let step = match &d.plan {
        Plan::Ignore | Plan::Wait => stop,
        Plan::AddFinalizer => {
            let mut finalizers = b.finalizers().to_vec();
            finalizers.push(crate::k8s::api::FINALIZER.to_string());
            let written = set_finalizers(ctx, b.as_ref(), finalizers, "add finalizer").await?;
            Step::Continue {
                binding: Some(written),
            }
        }
        Plan::Cleanup(CleanupStep::Detach {
            service_account,
            pull_secrets,
        })
        | Plan::DetachExtraneous {
            service_account,
            pull_secrets,
        }
        | Plan::RemoveExtraneousSecret(ExtraneousStep::Detach {
            service_account,
            pull_secrets,
        }) => {
            if set_pull_secrets(ctx, ns, service_account, pull_secrets).await? {
                go_on
            } else {
                stop
            }
        }
        Plan::Cleanup(CleanupStep::DeleteSecret(name))
        | Plan::RemoveExtraneousSecret(ExtraneousStep::Delete(name)) => {
            delete_secret(ctx, ns, name).await?;
            go_on
        }
        Plan::Revoke(ExtraneousStep::Detach {
            service_account,
            pull_secrets,
        }) => {
            if !set_pull_secrets(ctx, ns, service_account, pull_secrets).await? {
                stop
            } else {
                tracing::warn!(
                    namespace = %key.namespace, name = %key.name, service_account = %service_account,
                    reason = d.record.reason.as_str(),
                    "policy refuses the binding: pull secret detached from the service account"
                );
                go_on
            }
        }
        Plan::Revoke(ExtraneousStep::Delete(name)) => {
            delete_secret(ctx, ns, name).await?;
            ctx.metrics.revocations.inc();
            tracing::warn!(
                namespace = %key.namespace, name = %key.name, secret = %name,
                reason = d.record.reason.as_str(), error = %d.record.error,
                "policy refuses the binding: pull secret deleted"
            );
            publish(
                &ctx.writer,
                &ctx.reporter,
                b.as_ref(),
                Severity::Warning,
                Reason::CredentialRevoked,
                "Revoke",
                format!("pull secret {name} deleted: {}", d.record.error),
            )
            .await;
            go_on
        }
        Plan::Cleanup(CleanupStep::RemoveFinalizer) => {
            let finalizers = b
                .finalizers()
                .iter()
                .filter(|f| *f != crate::k8s::api::FINALIZER)
                .cloned()
                .collect();
            set_finalizers(ctx, b.as_ref(), finalizers, "remove finalizer").await?;
            publish(
                &ctx.writer,
                &ctx.reporter,
                b.as_ref(),
                Severity::Normal,
                Reason::CleanedUp,
                "Cleanup",
                "pull secret detached and deleted".into(),
            )
            .await;
            ctx.failures.forget(key);
            ctx.tracker.forget(key);
            ctx.requeues.forget(key);
            ctx.caches.bindings.forget::<K>(&key.namespace, &key.name);
            Step::Stop(Done {
                record: None,
                requeue: None,
            })
        }
        Plan::Fail(record) => {
            write_status(ctx, b.as_ref(), record, now).await?;
            if should_emit_failure(
                record.consecutive_failures,
                &o.binding.status.error,
                &record.error,
            ) {
                publish(
                    &ctx.writer,
                    &ctx.reporter,
                    b.as_ref(),
                    Severity::Warning,
                    record.reason.spec_event().unwrap_or(Reason::InvalidSpec),
                    "Validate",
                    record.error.clone(),
                )
                .await;
            }
            stop
        }
        Plan::Mint {
            request,
            reason,
            current_expiry,
        } => {
            let m = Mint {
                request: request.as_ref().clone(),
                reason: *reason,
                current_expiry: *current_expiry,
                decision: d,
            };
            mint::run(ctx, b.as_ref(), key, o, m, notes).await?
        }
        Plan::Attach {
            service_account,
            pull_secrets,
        } => {
            // One attach per ServiceAccount at a time. A pass that waited finds the other's
            // patch in the cache: the list it decided on is stale, so it decides again
            // (usually finding itself attached by the other's batch) instead of sending a
            // patch the API server would refuse with 409.
            let _held = ctx.caches.sa_locks.lock(ns, service_account).await;
            let decided_on = o.target_service_account.as_ref().map(|t| &t.pull_secrets);
            let cached = ctx
                .caches
                .service_accounts
                .get(ns, service_account)
                .map(|sa| pull_secret_names(&sa));
            if cached.is_some() && cached.as_ref() != decided_on {
                go_on
            } else if set_pull_secrets(ctx, ns, service_account, pull_secrets).await? {
                notes.attached(service_account);
                go_on
            } else {
                stop
            }
        }
        Plan::WriteStatus(record) => {
            let written = write_status(ctx, b.as_ref(), record, now).await?;
            if record.phase == Phase::Ready {
                ctx.failures.mint_succeeded(key);
            }
            match written {
                Some(written) => Step::Continue {
                    binding: Some(written),
                },
                // No status subresource: nothing more this pass can change.
                None => stop,
            }
        }
    };
    Ok(step)
}

/// Write `record` as the binding's status, in the fields the installed CRD keeps; returns the
/// binding as written (also kept in the caches, so its watch event is known as our own), or
/// `None` when the CRD keeps no status at all (nothing was sent).
pub async fn write_status<K: BindingResource>(
    ctx: &Context,
    b: &K,
    record: &Record,
    now: Timestamp,
) -> Result<Option<Arc<K>>, ReconcileError> {
    let kept = ctx.crds.kept(K::VERSION);
    let _flight = ctx
        .caches
        .bindings
        .begin_write::<K>(&b.namespace().unwrap_or_default(), &b.name_any());
    let Some(mut written) = status::write(&ctx.writer, kept, b, record, now).await? else {
        return Ok(None);
    };
    super::cache::trim_binding(&mut written);
    Ok(Some(ctx.caches.bindings.written(written)))
}

/// The next attempt after the binding's latest API failure: the per-binding backoff — the same
/// schedule as Azure failures, growing with each consecutive failure up to the policy's cap,
/// reset by the next pass that ends well, and always before a still-valid token expires.
fn api_retry<K: BindingResource>(binding: &K, key: &BindingKey, ctx: &Context) -> Duration {
    let failures = ctx.failures.api_failed(key);
    let now = Timestamp::now();
    let valid_until = ctx
        .caches
        .secrets
        .get(&key.namespace, &expected_secret_name(K::VERSION, &key.name))
        .and_then(|s| s.view.expiry)
        .filter(|e| *e > now);
    let seed = seed_of(&binding.meta().uid.clone().unwrap_or_default());
    let at = retry_at(now, failures, seed, &ctx.policy.backoff(), valid_until);
    let floor = ctx.policy.min_requeue.min(ctx.policy.backoff_base);
    requeue_after(now, at, floor)
}

/// Called by kube-runtime when a pass ended in an API error (timeouts, 5xx, refusals): retry
/// with the per-binding backoff (`api_retry`).
pub fn error_policy<K: BindingResource>(
    binding: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = key_of(binding.as_ref());
    let delay = api_retry(binding.as_ref(), &key, &ctx);
    tracing::warn!(
        namespace = %key.namespace, name = %key.name, reason = error.reason().as_str(),
        error = %error, failures = ctx.failures.api_failures(&key), retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}
