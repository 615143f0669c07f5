//! The state machine: from everything observed about one binding and `now`, derive its
//! [`Record`] (phase, reason, times) and exactly one next action (SPEC §3, §4). No I/O and no
//! clock: the k8s layer gathers the [`Observed`] snapshot from its caches, calls [`decide`],
//! performs the single [`Plan`] step and comes back at [`Decision::requeue`].
//!
//! The plan carries its final values (pull-secret lists in their final order, the status to
//! write, when to come back), so the shell only executes. The outcome of a mint is only known
//! after the call; [`after_mint_failure`] is the pure continuation for a failed one.

use std::time::Duration;

use jiff::Timestamp;

use super::binding::{validate, Invalid, Policy, Resolved, ServiceAccountView, Spec, Version};
use super::names::{expected_secret_name, sort_pull_secrets};
use super::reason::Reason;
pub use super::record::{Phase, Record, StatusView};
use super::refresh::{add, ceil_seconds, planned_due, retry_at, seed_of};
use super::tenancy::{evaluate, Mode, Request, TenancyPolicy, Verdict};

/// The binding as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingView {
    pub version: Version,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub deleting: bool,
    pub has_finalizer: bool,
    pub spec: Spec,
    pub status: StatusView,
}

/// A Secret that belongs to this binding (labelled with its name and controlled by it: by its
/// UID, or by its name for the pull secret a previous binding of that name left). Only its
/// annotations are read: they stand for the token inside.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretView {
    pub name: String,
    /// Parsed `token.expiry`; `None` when missing or unparsable.
    pub expiry: Option<Timestamp>,
    /// Parsed `token.refresh` (when the token was written); `None` when missing or unparsable.
    pub refresh: Option<Timestamp>,
    /// Parsed `token.issued` (the token's `iat`), when recorded.
    pub issued: Option<Timestamp>,
    /// `token.inputs`: the old controller's hash of the inputs.
    pub inputs: Option<String>,
    /// `token.inputs-all`: every input (written by acrpull only).
    pub inputs_all: Option<String>,
    /// The verification outcome recorded when the token was minted (None: not checked).
    pub verified: Option<bool>,
    /// Parsed `token.refresh-at`: the refresh planned when the token was written.
    pub planned: Option<Timestamp>,
}

/// The outcome of the last failed mint for the binding's current generation, kept in memory
/// by the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    /// Consecutive failures, this one included.
    pub failures: u32,
    /// No new attempt before this (the backoff, or Azure's `Retry-After`).
    pub retry_at: Timestamp,
}

/// A mint that failed, as the shell reports it to [`after_mint_failure`].
#[derive(Debug, Clone, PartialEq)]
pub struct MintFailure {
    pub reason: Reason,
    /// What failed and what to do (never a token).
    pub message: String,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

/// Everything one decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub binding: BindingView,
    /// Rule 2: whether the binding matches `--label-selector`.
    pub matches_selector: bool,
    /// Secrets of this binding (see [`SecretView`]).
    pub secrets: Vec<SecretView>,
    /// The ServiceAccount the pull secret is attached to, if it exists.
    pub target_service_account: Option<ServiceAccountView>,
    /// The workload-identity ServiceAccount (`serviceAccountRef`), if needed and it exists.
    pub workload_service_account: Option<ServiceAccountView>,
    /// ServiceAccounts in the namespace that reference any of this binding's secrets
    /// (including the target, when it does).
    pub referencing_service_accounts: Vec<ServiceAccountView>,
    /// The last failed mint for the binding's current generation, if any.
    pub last_failure: Option<Failure>,
    /// The other bindings of this version in the namespace (for rule 8's batching).
    pub siblings: Vec<Sibling>,
    /// What tenancy decisions read (`None` with `--tenancy-mode=off`, or not gathered).
    pub tenancy: Option<TenancyView>,
}

/// The tenancy policies and the binding's namespace labels, from the watch caches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenancyView {
    /// Every `AcrPullPolicy` (a shared snapshot, rebuilt when a policy changes).
    pub policies: std::sync::Arc<Vec<TenancyPolicy>>,
    /// The binding's namespace labels; `None` while the namespace is not in the cache.
    pub namespace_labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Another binding of the same version in the binding's namespace, as far as attaching goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Sibling {
    pub name: String,
    pub spec: Spec,
    /// Its status says `Failed`.
    pub failed: bool,
}

/// The pull-secret name of a sibling that targets `service_account` and is on its way to a
/// pull secret: its spec is valid, it is not failing, and tenancy (rule 4b) would serve it.
/// A sibling the tenancy policies refuse, or cannot decide on yet, is never attached by
/// another binding's pass: its own pass would revoke it, the next batch would re-attach it.
/// Siblings are in the binding's namespace, so the namespace labels in `o.tenancy` are theirs.
fn attachable(o: &Observed, s: &Sibling, service_account: &str, policy: &Policy) -> Option<String> {
    if s.failed {
        return None;
    }
    let stat = validate(&s.name, &s.spec, policy).ok()?;
    if stat.target_service_account != service_account {
        return None;
    }
    if policy.tenancy_mode != Mode::Off {
        // Workload identity named only by its ServiceAccount's annotations: that
        // ServiceAccount is not gathered for siblings, so the sibling attaches itself.
        let resolved = stat.resolve(None).ok()?;
        match tenancy(o, &resolved, policy.tenancy_mode) {
            Tenancy::Off | Tenancy::Permitted(_) | Tenancy::Flagged(_) => {}
            Tenancy::Refused(_) | Tenancy::Undecided => return None,
        }
    }
    Some(stat.secret_name)
}

/// Why a token is minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintReason {
    /// No secret yet: nothing was ever issued.
    Missing,
    /// The secret's token reached its refresh boundary.
    Due,
    /// The binding's inputs changed since the token was minted.
    InputsChanged,
    /// The secret's annotations cannot be read; treated as expired.
    Unreadable,
}

impl MintReason {
    /// The Event for a success: a first token, or a new one in an existing secret.
    pub fn success_event(self) -> Reason {
        match self {
            MintReason::Missing => Reason::TokenIssued,
            _ => Reason::TokenRefreshed,
        }
    }

    /// The Event for a failure: nothing issued yet, or a refresh.
    pub fn failure_event(self) -> Reason {
        match self {
            MintReason::Missing => Reason::TokenIssueFailed,
            _ => Reason::TokenRefreshFailed,
        }
    }
}

/// Deletion steps, one per pass.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanupStep {
    /// Set this ServiceAccount's `imagePullSecrets` to the list (the binding's secrets removed).
    Detach {
        service_account: String,
        pull_secrets: Vec<String>,
    },
    DeleteSecret(String),
    RemoveFinalizer,
}

/// Removing a secret of this binding with another name (rule 9), one step per pass.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtraneousStep {
    /// Set this ServiceAccount's `imagePullSecrets` to the list (the secret removed).
    Detach {
        service_account: String,
        pull_secrets: Vec<String>,
    },
    Delete(String),
}

/// The single next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Rule 2 (or a deleted binding without our finalizer): not ours; no writes.
    Ignore,
    /// Rule 1: unwind a deleted binding.
    Cleanup(CleanupStep),
    /// Rule 3.
    AddFinalizer,
    /// Rules 4 and 6: write this failed status and a (thinned) Warning Event.
    Fail(Record),
    /// Rule 5: set a ServiceAccount that is no longer the target to this list.
    DetachExtraneous {
        service_account: String,
        pull_secrets: Vec<String>,
    },
    /// Rule 7: mint a token and create or update the secret.
    Mint {
        request: Box<Resolved>,
        reason: MintReason,
        /// Expiry of the token the secret holds now (the pipeline must return a newer one).
        current_expiry: Option<Timestamp>,
    },
    /// Rule 8: set the target's `imagePullSecrets` to this (ordered) list.
    Attach {
        service_account: String,
        pull_secrets: Vec<String>,
    },
    /// Rule 9.
    RemoveExtraneousSecret(ExtraneousStep),
    /// Rule 4b: the operator's policy refuses the binding: take its credential away, one step
    /// per pass (detach from every ServiceAccount, then delete each Secret); then `Fail`.
    Revoke(ExtraneousStep),
    /// Rule 10 (and a record that changed while backing off).
    WriteStatus(Record),
    /// Rule 11: nothing to do until [`Decision::requeue`].
    Wait,
}

/// The record, the plan, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The binding's state as of this pass: what status says or will say, and what
    /// `/debug`, metrics, Events and logs show.
    pub record: Record,
    pub plan: Plan,
    /// When to come back at the latest (None: only when something changes). A mint that
    /// fails replaces it with the retry from [`after_mint_failure`].
    pub requeue: Option<Timestamp>,
}

/// Whether rule 8 can attach in this observation: the binding is not being deleted, its pull
/// secret exists, and the target ServiceAccount does not name it. `siblings` are read only then, so a pass gathers
/// them (a cache lookup per sibling) only then, not at every step. Without them rule 8 still
/// attaches the binding itself; only the batching is lost.
pub fn may_attach(o: &Observed) -> bool {
    let expected = expected_secret_name(o.binding.version, &o.binding.name);
    !o.binding.deleting
        && o.target_service_account
            .as_ref()
            .is_some_and(|t| !t.pull_secrets.contains(&expected))
        && o.secrets.iter().any(|s| s.name == expected)
}

/// SPEC §4, in order; exactly one action.
pub fn decide(o: &Observed, now: Timestamp, policy: &Policy) -> Decision {
    let b = &o.binding;
    let current = b.status.as_record(b.generation);
    let after_write = Some(add(now, policy.after_write));

    // Rule 1: deletion.
    if b.deleting {
        if !b.has_finalizer {
            return decision(current, Plan::Ignore, None);
        }
        let step = cleanup_step(o);
        let requeue = (step != CleanupStep::RemoveFinalizer)
            .then_some(after_write)
            .flatten();
        let record = Record {
            reason: Reason::Deleting,
            ..current
        };
        return decision(record, Plan::Cleanup(step), requeue);
    }
    // Rule 2: label selector.
    if !o.matches_selector {
        return decision(current, Plan::Ignore, None);
    }
    // Rule 3: finalizer.
    if !b.has_finalizer {
        let record = Record {
            phase: Phase::Pending,
            reason: Reason::NewBinding,
            ..current
        };
        return decision(record, Plan::AddFinalizer, after_write);
    }

    // Rule 4: static validation. A refusal by the operator's allow-lists (actions, air-gapped
    // authorities) also takes away the credential the binding already has.
    let stat = match validate(&b.name, &b.spec, policy) {
        Ok(s) => s,
        Err(invalid) if invalid.revokes() => return revoke_or_fail(o, invalid, now, policy),
        Err(invalid) => return fail(o, invalid, now, policy),
    };

    // Rule 5: ServiceAccounts other than the target referencing this binding's secrets.
    let own_names: Vec<&str> = o.secrets.iter().map(|s| s.name.as_str()).collect();
    let is_own = |n: &String| n == &stat.secret_name || own_names.contains(&n.as_str());
    if let Some(sa) = o
        .referencing_service_accounts
        .iter()
        .find(|sa| sa.name != stat.target_service_account && sa.pull_secrets.iter().any(is_own))
    {
        let plan = Plan::DetachExtraneous {
            service_account: sa.name.clone(),
            pull_secrets: without(&sa.pull_secrets, is_own),
        };
        return decision(current, plan, after_write);
    }

    // Rule 6: target ServiceAccount (and the workload-identity one) must exist.
    let Some(target) = &o.target_service_account else {
        let invalid = Invalid {
            reason: Reason::ServiceAccountNotFound,
            message: format!(
                "service account {:?} not found",
                stat.target_service_account
            ),
        };
        return fail(o, invalid, now, policy);
    };
    let resolved = match stat.resolve(o.workload_service_account.as_ref()) {
        Ok(r) => r,
        Err(invalid) => return fail(o, invalid, now, policy),
    };

    // Rule 4b: tenancy policies (SPEC §12), once the identity is known (workload identity may
    // take it from the ServiceAccount's annotations), before any Azure call.
    let permitted = match tenancy(o, &resolved, policy.tenancy_mode) {
        Tenancy::Off => None,
        Tenancy::Permitted(message) => Some((true, message)),
        Tenancy::Flagged(message) => Some((false, message)),
        Tenancy::Refused(message) => {
            let invalid = Invalid {
                reason: Reason::NotPermitted,
                message,
            };
            return revoke_or_fail(o, invalid, now, policy);
        }
        // No definite decision (the namespace is not cached yet): change nothing, look again.
        Tenancy::Undecided => return decision(current, Plan::Wait, after_write),
    };
    let mut d = serve(o, target, &resolved, now, policy);
    d.record.permitted = permitted.clone();
    match &mut d.plan {
        Plan::WriteStatus(r) | Plan::Fail(r) => r.permitted = permitted,
        Plan::Wait if !d.record.matches(&b.status) => {
            d.plan = Plan::WriteStatus(d.record.clone());
        }
        _ => {}
    }
    d
}

/// The tenancy outcome of one pass.
enum Tenancy {
    Off,
    Permitted(String),
    /// Audit mode: served, but enforce would refuse it (the message says why).
    Flagged(String),
    Refused(String),
    Undecided,
}

fn tenancy(o: &Observed, resolved: &Resolved, mode: Mode) -> Tenancy {
    if mode == Mode::Off {
        return Tenancy::Off;
    }
    let Some(view) = &o.tenancy else {
        return Tenancy::Undecided;
    };
    let scopes = match &resolved.scope {
        Some(s) => match super::scope::parse(s) {
            Ok(scopes) => Some(scopes),
            Err(e) => return Tenancy::Refused(e.to_string()),
        },
        None => None,
    };
    let server = resolved.registry.authority();
    let request = Request {
        identity: &resolved.identity,
        registry_host: &resolved.registry.host,
        registry_server: &server,
        scopes: scopes.as_deref(),
    };
    match evaluate(
        &view.policies,
        &o.binding.namespace,
        view.namespace_labels.as_ref(),
        &request,
    ) {
        Verdict::Permitted { policies } => Tenancy::Permitted(format!(
            "permitted by AcrPullPolicy {}",
            policies.join(", ")
        )),
        Verdict::Denied { message } if mode == Mode::Audit => Tenancy::Flagged(format!(
            "audit: --tenancy-mode=enforce would refuse this binding: {message}"
        )),
        Verdict::Denied { message } => Tenancy::Refused(message),
        Verdict::Undecided => Tenancy::Undecided,
    }
}

/// Rules 7 to 11 for a binding that passed every check.
fn serve(
    o: &Observed,
    target: &ServiceAccountView,
    resolved: &Resolved,
    now: Timestamp,
    policy: &Policy,
) -> Decision {
    let b = &o.binding;
    let current = b.status.as_record(b.generation);
    let after_write = Some(add(now, policy.after_write));
    let resolved = resolved.clone();

    // Rule 7: mint when the secret is missing, due, unreadable or minted for other inputs.
    let seed = seed_of(&b.uid);
    let secret = o.secrets.iter().find(|s| s.name == resolved.secret_name);
    let mint_reason = match secret {
        None => Some(MintReason::Missing),
        Some(s) => match (s.expiry, s.refresh) {
            (Some(expiry), Some(refresh)) => {
                if !resolved.inputs_match(s.inputs.as_deref(), s.inputs_all.as_deref()) {
                    Some(MintReason::InputsChanged)
                } else {
                    let issued = s.issued.unwrap_or(refresh);
                    let due = planned_due(
                        resolved.refresh_rule,
                        issued,
                        refresh,
                        expiry,
                        seed,
                        s.planned,
                    );
                    (now >= due).then_some(MintReason::Due)
                }
            }
            _ => Some(MintReason::Unreadable),
        },
    };
    if let Some(reason) = mint_reason {
        if let Some(f) = &o.last_failure {
            let record = failure_record(o, &resolved, f, now);
            // Backing off: come back at the retry. The record can change meanwhile (the
            // credential expired): then status follows.
            if now < f.retry_at {
                let plan = if record.matches(&b.status) {
                    Plan::Wait
                } else {
                    Plan::WriteStatus(record.clone())
                };
                return decision(record, plan, Some(f.retry_at));
            }
            // Retrying: still failing until it succeeds.
            return decision(record, mint(&resolved, reason, secret), after_write);
        }
        let valid = valid_until(o, &resolved, now).is_some();
        let (phase, why) = match reason {
            MintReason::Missing => (Phase::Exchanging, Reason::NoPullSecret),
            MintReason::InputsChanged => (Phase::Refreshing, Reason::InputsChanged),
            MintReason::Due if valid => (Phase::Refreshing, Reason::RefreshDue),
            MintReason::Due | MintReason::Unreadable => (Phase::Exchanging, Reason::TokenExpired),
        };
        let record = Record {
            phase,
            reason: why,
            ..current
        };
        return decision(record, mint(&resolved, reason, secret), after_write);
    }
    let secret = secret.expect("mint_reason is None only when the secret exists");
    let (expiry, refresh) = (secret.expiry.unwrap_or(now), secret.refresh.unwrap_or(now));

    // Rule 8: attach, keeping the order. One patch per ServiceAccount, not one per binding:
    // the names of the other bindings that target it and are on their way to a pull secret go
    // in too (their passes then find themselves attached). A Pod created meanwhile already
    // names their secrets, and the kubelet reads pull secrets at every pull attempt.
    if !target.pull_secrets.contains(&resolved.secret_name) {
        let mut list = target.pull_secrets.clone();
        list.push(resolved.secret_name.clone());
        for name in o
            .siblings
            .iter()
            .filter_map(|s| attachable(o, s, &target.name, policy))
        {
            if !list.contains(&name) {
                list.push(name);
            }
        }
        sort_pull_secrets(&mut list);
        let record = if current.phase == Phase::Ready {
            current
        } else {
            Record {
                phase: Phase::Exchanging,
                reason: Reason::AttachingPullSecret,
                ..current
            }
        };
        let plan = Plan::Attach {
            service_account: target.name.clone(),
            pull_secrets: list,
        };
        return decision(record, plan, after_write);
    }

    // Rule 9: secrets of this binding with other names.
    if let Some(extra) = o.secrets.iter().find(|s| s.name != resolved.secret_name) {
        let detach = o
            .referencing_service_accounts
            .iter()
            .chain(std::iter::once(target))
            .find(|sa| sa.pull_secrets.contains(&extra.name));
        let step = match detach {
            Some(sa) => ExtraneousStep::Detach {
                service_account: sa.name.clone(),
                pull_secrets: without(&sa.pull_secrets, |n| *n == extra.name),
            },
            None => ExtraneousStep::Delete(extra.name.clone()),
        };
        return decision(current, Plan::RemoveExtraneousSecret(step), after_write);
    }

    // Rule 10: status from the secret.
    let issued = secret.issued.unwrap_or(refresh);
    let next = planned_due(
        resolved.refresh_rule,
        issued,
        refresh,
        expiry,
        seed,
        secret.planned,
    );
    let desired = Record {
        phase: Phase::Ready,
        reason: Reason::TokenIssued,
        ready: true,
        message: format!(
            "pull secret {} is attached to service account {}",
            resolved.secret_name, target.name
        ),
        error: String::new(),
        last_refresh: Some(refresh),
        expiry: Some(expiry),
        next_refresh: Some(next),
        consecutive_failures: 0,
        observed_generation: b.generation,
        verified: secret.verified,
        permitted: None,
    };
    if !desired.matches(&b.status) {
        return decision(desired.clone(), Plan::WriteStatus(desired), Some(next));
    }
    // Rule 11.
    decision(desired, Plan::Wait, Some(next))
}

fn decision(record: Record, plan: Plan, requeue: Option<Timestamp>) -> Decision {
    Decision {
        record,
        plan,
        requeue,
    }
}

fn mint(resolved: &Resolved, reason: MintReason, secret: Option<&SecretView>) -> Plan {
    Plan::Mint {
        request: Box::new(resolved.clone()),
        reason,
        current_expiry: secret.and_then(|s| s.expiry),
    }
}

/// `list` without the names `drop` matches, in the pull-secret order.
fn without(list: &[String], drop: impl Fn(&String) -> bool) -> Vec<String> {
    let mut kept: Vec<String> = list.iter().filter(|n| !drop(n)).cloned().collect();
    sort_pull_secrets(&mut kept);
    kept
}

/// The expiry of the binding's pull secret when it holds a token that still works for the
/// binding as it is now: the expected name, readable annotations, the current inputs, and not
/// expired at `now`. A failed refresh never makes such a binding `Failed`.
pub fn valid_until(o: &Observed, resolved: &Resolved, now: Timestamp) -> Option<Timestamp> {
    o.secrets
        .iter()
        .find(|s| s.name == resolved.secret_name)
        .filter(|s| {
            s.refresh.is_some()
                && resolved.inputs_match(s.inputs.as_deref(), s.inputs_all.as_deref())
        })
        .and_then(|s| s.expiry)
        .filter(|e| *e > now)
}

/// Rule 4b: the operator's policy refuses the binding. Every ServiceAccount loses its
/// reference to the binding's secrets, then every secret of the binding is deleted, one step
/// per pass; then the failure is recorded like any other. Only ever called on a definite
/// decision from synced caches, never on a transient error.
fn revoke_or_fail(o: &Observed, invalid: Invalid, now: Timestamp, policy: &Policy) -> Decision {
    let own: Vec<&str> = o.secrets.iter().map(|s| s.name.as_str()).collect();
    let expected = expected_secret_name(o.binding.version, &o.binding.name);
    let is_own = |n: &String| own.contains(&n.as_str()) || *n == expected;
    let after_write = Some(add(now, policy.after_write));
    let step = o
        .referencing_service_accounts
        .iter()
        .chain(o.target_service_account.iter())
        .find(|sa| sa.pull_secrets.iter().any(is_own))
        .map(|sa| ExtraneousStep::Detach {
            service_account: sa.name.clone(),
            pull_secrets: without(&sa.pull_secrets, is_own),
        })
        .or_else(|| {
            o.secrets
                .first()
                .map(|s| ExtraneousStep::Delete(s.name.clone()))
        });
    let Some(step) = step else {
        return fail(o, invalid, now, policy);
    };
    let b = &o.binding;
    let record = Record {
        phase: Phase::Failed,
        reason: invalid.reason,
        ready: false,
        message: invalid.message.clone(),
        error: invalid.message,
        last_refresh: None,
        expiry: None,
        next_refresh: None,
        consecutive_failures: b.status.consecutive_failures,
        observed_generation: b.generation,
        verified: None,
        permitted: None,
    };
    decision(record, Plan::Revoke(step), after_write)
}

/// Rules 4 and 6: record a failure found in the observed state (bad spec, missing
/// ServiceAccount or annotation) once, then wait for a change.
fn fail(o: &Observed, invalid: Invalid, now: Timestamp, policy: &Policy) -> Decision {
    let b = &o.binding;
    let same = b.status.is_failed_with(&invalid.message);
    let failures = if same {
        b.status.consecutive_failures.max(1)
    } else {
        b.status.consecutive_failures.saturating_add(1)
    };
    let permitted =
        (invalid.reason == Reason::NotPermitted).then(|| (false, invalid.message.clone()));
    let revoked = invalid.revokes();
    let record = Record {
        phase: Phase::Failed,
        reason: invalid.reason,
        ready: false,
        message: invalid.message.clone(),
        error: invalid.message,
        // The facts of the credential the secret holds stay in status (unless it was revoked).
        last_refresh: b.status.last_refresh.filter(|_| !revoked),
        expiry: b.status.expiry.filter(|_| !revoked),
        // Nothing is planned: a change to the binding or its ServiceAccounts triggers the
        // next pass through the watches; the re-check interval is a safety net.
        next_refresh: None,
        consecutive_failures: failures,
        observed_generation: b.generation,
        verified: b.status.verified.filter(|_| !revoked),
        permitted,
    };
    let requeue = Some(add(now, policy.recheck_interval));
    if same && record.matches(&b.status) {
        return decision(record, Plan::Wait, requeue);
    }
    decision(record.clone(), Plan::Fail(record), requeue)
}

/// The record of a binding whose last mint failed with `f`. With a token that still works (and
/// the registry did not reject what was minted) it is `Refreshing` and `Ready`: pulls keep
/// working until the expiry and the error is shown beside it. Otherwise `Failed`.
pub fn failure_record(o: &Observed, resolved: &Resolved, f: &Failure, now: Timestamp) -> Record {
    let b = &o.binding;
    let secret = o.secrets.iter().find(|s| s.name == resolved.secret_name);
    let valid = valid_until(o, resolved, now).filter(|_| !f.reason.is_verification_failure());
    let message = match valid {
        Some(expiry) => format!(
            "pull secret {} holds a token valid until {}; refreshing it failed ({}), next attempt at {}",
            resolved.secret_name, expiry, f.reason, f.retry_at
        ),
        None => f.message.clone(),
    };
    Record {
        phase: if valid.is_some() {
            Phase::Refreshing
        } else {
            Phase::Failed
        },
        reason: f.reason,
        ready: valid.is_some(),
        message,
        error: f.message.clone(),
        last_refresh: secret.and_then(|s| s.refresh).or(b.status.last_refresh),
        expiry: secret.and_then(|s| s.expiry).or(b.status.expiry),
        next_refresh: Some(f.retry_at),
        consecutive_failures: f.failures,
        observed_generation: b.generation,
        verified: if f.reason.is_verification_failure() {
            Some(false)
        } else {
            secret.map_or(b.status.verified, |s| s.verified)
        },
        permitted: b.status.permitted.clone(),
    }
}

/// After a mint for `request` failed at `now` (Azure error, failed verification, a foreign
/// Secret): the failure to remember and the record to write. The existing secret is untouched
/// by the caller. The retry is whole seconds, in the future, and before a working token
/// expires even when `Retry-After` asks for longer.
pub fn after_mint_failure(
    o: &Observed,
    request: &Resolved,
    failure: &MintFailure,
    now: Timestamp,
    policy: &Policy,
) -> (Record, Failure) {
    let seed = seed_of(&o.binding.uid);
    let valid = valid_until(o, request, now);
    let previous = o.last_failure.as_ref().map_or(0, |f| f.failures);
    let failures = o
        .binding
        .status
        .consecutive_failures
        .max(previous)
        .saturating_add(1);
    let mut at = retry_at(now, failures, seed, &policy.backoff(), valid);
    if let Some(wait) = failure.retry_after {
        let not_before = add(now, wait);
        // Honour Retry-After unless that would let a valid token lapse.
        if valid.is_none_or(|v| not_before < v) {
            at = at.max(not_before);
        }
    }
    let f = Failure {
        reason: failure.reason,
        message: failure.message.clone(),
        failures,
        retry_at: ceil_seconds(at.max(add(now, policy.min_requeue))),
    };
    (failure_record(o, request, &f, now), f)
}

/// Deletion, one step at a time: detach from every ServiceAccount, delete every secret,
/// then drop the finalizer.
fn cleanup_step(o: &Observed) -> CleanupStep {
    let own: Vec<&str> = o.secrets.iter().map(|s| s.name.as_str()).collect();
    let expected = expected_secret_name(o.binding.version, &o.binding.name);
    let is_own = |n: &String| own.contains(&n.as_str()) || *n == expected;
    for sa in o
        .referencing_service_accounts
        .iter()
        .chain(o.target_service_account.iter())
    {
        if sa.pull_secrets.iter().any(is_own) {
            return CleanupStep::Detach {
                service_account: sa.name.clone(),
                pull_secrets: without(&sa.pull_secrets, is_own),
            };
        }
    }
    if let Some(s) = o.secrets.first() {
        return CleanupStep::DeleteSecret(s.name.clone());
    }
    CleanupStep::RemoveFinalizer
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
