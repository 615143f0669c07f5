//! The state machine: from everything observed about one binding and `now`, derive its phase
//! and exactly one next action (SPEC §3, §4). No I/O and no clock: the k8s layer gathers the
//! [`Observed`] snapshot from its caches, calls [`decide`], performs the single [`Plan`] step
//! and comes back.

use jiff::Timestamp;

use super::binding::{validate, Invalid, Policy, Resolved, ServiceAccountView, Spec, Version};
use super::names::{secret_family, sort_pull_secrets, SecretFamily};
use super::refresh::{jittered_boundary, requeue_after, retry_at, seed_of};

/// A token is never refreshed sooner than this after it was minted, whatever its lifetime
/// says (an already-expired token from a skewed clock must not cause a mint loop).
pub const MIN_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The five phases of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Pending,
    Exchanging,
    Ready,
    Refreshing,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Pending,
        Phase::Exchanging,
        Phase::Ready,
        Phase::Refreshing,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Exchanging => "Exchanging",
            Phase::Ready => "Ready",
            Phase::Refreshing => "Refreshing",
            Phase::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

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

/// The status fields decisions compare against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusView {
    pub phase: Option<Phase>,
    pub error: String,
    pub last_refresh: Option<Timestamp>,
    pub expiry: Option<Timestamp>,
    pub next_refresh: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub observed_generation: Option<i64>,
    /// `(status, reason, message)` of the `Ready` condition.
    pub ready: Option<(bool, String, String)>,
    /// Status of the `CredentialVerified` condition, when present.
    pub verified: Option<bool>,
}

/// A Secret that belongs to this binding (labelled with its name and owned by its UID, or an
/// unowned legacy secret of the old controller).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretView {
    pub name: String,
    /// Parsed `token.expiry`; `None` when missing or unparsable.
    pub expiry: Option<Timestamp>,
    /// Parsed `token.refresh`; `None` when missing or unparsable.
    pub refresh: Option<Timestamp>,
    pub inputs: Option<String>,
    /// Type is `kubernetes.io/dockerconfigjson` and `.dockerconfigjson` is present.
    pub well_formed: bool,
    /// The verification outcome recorded when the token was minted (None: not checked).
    pub verified: Option<bool>,
}

/// The outcome of the last token attempt, kept in memory by the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    pub at: Timestamp,
    /// A retry must not happen before this (Azure's Retry-After), when known.
    pub not_before: Option<Timestamp>,
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
}

/// Why a token is minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintReason {
    /// No secret yet.
    Missing,
    /// The secret's token reached its refresh boundary.
    Due,
    /// The binding's inputs changed since the token was minted.
    InputsChanged,
    /// The secret's annotations or data cannot be read; treated as expired.
    Unreadable,
}

/// Deletion steps, one per pass.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanupStep {
    /// Remove the binding's secrets from this ServiceAccount's `imagePullSecrets`.
    Detach {
        service_account: String,
        pull_secrets: Vec<String>,
    },
    DeleteSecret(String),
    RemoveFinalizer,
}

/// The status the controller wants the binding to carry.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredStatus {
    pub phase: Phase,
    pub error: String,
    pub last_refresh: Option<Timestamp>,
    pub expiry: Option<Timestamp>,
    pub next_refresh: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub observed_generation: i64,
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    /// The `CredentialVerified` condition (None: not checked, no condition).
    pub verified: Option<bool>,
}

impl DesiredStatus {
    /// Whether `current` already says this (ignoring condition timestamps).
    pub fn matches(&self, current: &StatusView) -> bool {
        current.phase == Some(self.phase)
            && current.error == self.error
            && current.last_refresh == self.last_refresh
            && current.expiry == self.expiry
            && current.next_refresh == self.next_refresh
            && current.consecutive_failures == self.consecutive_failures
            && current.observed_generation == Some(self.observed_generation)
            && current.ready == Some((self.ready, self.reason.to_string(), self.message.clone()))
            && current.verified == self.verified
    }
}

/// The single next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Rule 2: not ours (label selector); no writes.
    Ignore,
    /// Rule 1: unwind a deleted binding.
    Cleanup(CleanupStep),
    /// Rule 3.
    AddFinalizer,
    /// Rules 4, 6 and failed mints: record the failure; retry at `retry_at` (None: wait for a
    /// change to the binding or its ServiceAccount, with the policy's re-check interval).
    Fail {
        status: DesiredStatus,
        retry_at: Option<Timestamp>,
    },
    /// Rule 5: remove references from a ServiceAccount that is no longer the target.
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
    /// Rule 9: detach (from every ServiceAccount listed) and delete a secret with an old name.
    RemoveExtraneousSecret {
        secret: String,
        detach_from: Vec<String>,
    },
    /// Rule 10.
    WriteStatus(DesiredStatus),
    /// Rule 11: nothing to do until `until`.
    Wait { until: Timestamp },
}

/// The phase and the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub phase: Phase,
    pub plan: Plan,
}

/// SPEC §4, in order; exactly one action.
pub fn decide(o: &Observed, now: Timestamp, policy: &Policy) -> Decision {
    let b = &o.binding;
    let current_phase = b.status.phase.unwrap_or(Phase::Pending);

    // Rule 1: deletion.
    if b.deleting {
        if !b.has_finalizer {
            return Decision {
                phase: current_phase,
                plan: Plan::Ignore,
            };
        }
        return Decision {
            phase: current_phase,
            plan: Plan::Cleanup(cleanup_step(o)),
        };
    }
    // Rule 2: label selector.
    if !o.matches_selector {
        return Decision {
            phase: current_phase,
            plan: Plan::Ignore,
        };
    }
    // Rule 3: finalizer.
    if !b.has_finalizer {
        return Decision {
            phase: Phase::Pending,
            plan: Plan::AddFinalizer,
        };
    }
    let seed = seed_of(&b.uid);
    let valid_secret_expiry = o
        .secrets
        .iter()
        .filter(|s| s.well_formed)
        .filter_map(|s| s.expiry)
        .filter(|e| *e > now)
        .max();

    // Rule 4: static validation.
    let stat = match validate(&b.name, &b.spec, policy) {
        Ok(s) => s,
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
        return Decision {
            phase: current_phase,
            plan: Plan::DetachExtraneous {
                service_account: sa.name.clone(),
                pull_secrets: sa
                    .pull_secrets
                    .iter()
                    .filter(|n| !is_own(n))
                    .cloned()
                    .collect(),
            },
        };
    }

    // Rule 6: target ServiceAccount (and the workload-identity one) must exist.
    let Some(target) = &o.target_service_account else {
        let invalid = Invalid {
            reason: "ServiceAccountNotFound",
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

    // Rule 7: mint when the secret is missing, due, unreadable or minted for other inputs.
    let secret = o.secrets.iter().find(|s| s.name == resolved.secret_name);
    let mint_reason = match secret {
        None => Some(MintReason::Missing),
        Some(s) => match (s.well_formed, s.expiry, s.refresh) {
            (true, Some(expiry), Some(refresh)) => {
                if s.inputs.as_deref() != Some(resolved.inputs_hash.as_str()) {
                    Some(MintReason::InputsChanged)
                } else if now
                    >= whole_seconds(jittered_boundary(
                        resolved.refresh_rule,
                        refresh,
                        expiry,
                        seed,
                    ))
                    && now >= add(refresh, MIN_REFRESH_INTERVAL)
                {
                    Some(MintReason::Due)
                } else {
                    None
                }
            }
            _ => Some(MintReason::Unreadable),
        },
    };
    if let Some(reason) = mint_reason {
        let phase = match reason {
            MintReason::Missing => Phase::Exchanging,
            MintReason::Unreadable if valid_secret_expiry.is_none() => Phase::Exchanging,
            _ => Phase::Refreshing,
        };
        // A recent failure for this generation: back off before the next attempt.
        if let Some(f) = &o.last_failure {
            let failures = b.status.consecutive_failures.max(1);
            let mut at = retry_at(
                f.at,
                failures,
                seed,
                policy.backoff_cap,
                valid_secret_expiry,
                policy.expiry_margin,
            );
            if let Some(nb) = f.not_before {
                at = at.max(nb);
            }
            if now < at {
                return Decision {
                    phase: Phase::Failed,
                    plan: Plan::Wait { until: at },
                };
            }
        }
        return Decision {
            phase,
            plan: Plan::Mint {
                request: Box::new(resolved),
                reason,
                current_expiry: secret.and_then(|s| s.expiry),
            },
        };
    }
    let secret = secret.expect("mint_reason is None only when the secret exists");
    let (expiry, refresh) = (secret.expiry.unwrap_or(now), secret.refresh.unwrap_or(now));

    // Rule 8: attach, keeping the order.
    if !target.pull_secrets.contains(&resolved.secret_name) {
        let mut list = target.pull_secrets.clone();
        list.push(resolved.secret_name.clone());
        sort_pull_secrets(&mut list);
        return Decision {
            phase: match current_phase {
                Phase::Ready => Phase::Ready,
                _ => Phase::Exchanging,
            },
            plan: Plan::Attach {
                service_account: target.name.clone(),
                pull_secrets: list,
            },
        };
    }

    // Rule 9: secrets of this binding with other names.
    if let Some(extra) = o.secrets.iter().find(|s| s.name != resolved.secret_name) {
        let detach_from = o
            .referencing_service_accounts
            .iter()
            .chain(std::iter::once(target))
            .filter(|sa| sa.pull_secrets.contains(&extra.name))
            .map(|sa| sa.name.clone())
            .fold(Vec::new(), |mut acc, n| {
                if !acc.contains(&n) {
                    acc.push(n);
                }
                acc
            });
        return Decision {
            phase: current_phase,
            plan: Plan::RemoveExtraneousSecret {
                secret: extra.name.clone(),
                detach_from,
            },
        };
    }

    // Rule 10: status from the secret.
    // Status times are stored to the second; compare at that precision or every pass would
    // rewrite an identical status.
    let next = whole_seconds(jittered_boundary(
        resolved.refresh_rule,
        refresh,
        expiry,
        seed,
    ));
    let desired = DesiredStatus {
        phase: Phase::Ready,
        error: String::new(),
        last_refresh: Some(refresh),
        expiry: Some(expiry),
        next_refresh: Some(next),
        consecutive_failures: 0,
        observed_generation: b.generation,
        ready: true,
        reason: "TokenIssued",
        message: format!(
            "pull secret {} is attached to service account {}",
            resolved.secret_name, target.name
        ),
        verified: secret.verified,
    };
    if !desired.matches(&b.status) {
        return Decision {
            phase: Phase::Ready,
            plan: Plan::WriteStatus(desired),
        };
    }
    // Rule 11.
    Decision {
        phase: Phase::Ready,
        plan: Plan::Wait { until: next },
    }
}

/// Rules 4 and 6: record a failure found in the observed state (bad spec, missing
/// ServiceAccount or annotation) once, then wait for a change.
fn fail(o: &Observed, invalid: Invalid, now: Timestamp, policy: &Policy) -> Decision {
    let b = &o.binding;
    let same = b.status.phase == Some(Phase::Failed) && b.status.error == invalid.message;
    let failures = if same {
        b.status.consecutive_failures.max(1)
    } else {
        b.status.consecutive_failures.saturating_add(1)
    };
    // These failures come from what is observed (the spec, a ServiceAccount), not from a
    // call that could succeed on retry: a change to the binding or its ServiceAccounts
    // triggers the next pass through the watches; the re-check interval is a safety net.
    let status = failed_status(o, &invalid, failures, b.status.next_refresh);
    if same && status.matches(&b.status) {
        return Decision {
            phase: Phase::Failed,
            plan: Plan::Wait {
                until: add(now, policy.recheck_interval),
            },
        };
    }
    Decision {
        phase: Phase::Failed,
        plan: Plan::Fail {
            status,
            retry_at: None,
        },
    }
}

fn failed_status(
    o: &Observed,
    invalid: &Invalid,
    failures: u32,
    next: Option<Timestamp>,
) -> DesiredStatus {
    let b = &o.binding;
    DesiredStatus {
        phase: Phase::Failed,
        error: invalid.message.clone(),
        // A failed refresh keeps the facts of the credential that still works.
        last_refresh: b.status.last_refresh,
        expiry: b.status.expiry,
        next_refresh: next,
        consecutive_failures: failures,
        observed_generation: b.generation,
        ready: false,
        reason: invalid.reason,
        message: invalid.message.clone(),
        verified: if VERIFICATION_FAILURES.contains(&invalid.reason) {
            Some(false)
        } else {
            b.status.verified
        },
    }
}

/// Failure reasons that mean the registry did not accept what was minted.
pub const VERIFICATION_FAILURES: [&str; 2] = ["ScopeNotGranted", "CredentialRejected"];

/// The status to write after a mint failed with `reason`/`message`. The existing secret is
/// untouched by the caller; this only records the failure and schedules the retry.
pub fn after_mint_failure(
    o: &Observed,
    reason: &'static str,
    message: String,
    retry_after: Option<std::time::Duration>,
    now: Timestamp,
    policy: &Policy,
) -> (DesiredStatus, Timestamp) {
    let seed = seed_of(&o.binding.uid);
    let valid = o
        .secrets
        .iter()
        .filter(|s| s.well_formed)
        .filter_map(|s| s.expiry)
        .filter(|e| *e > now)
        .max();
    let failures = o.binding.status.consecutive_failures.saturating_add(1);
    let mut at = retry_at(
        now,
        failures,
        seed,
        policy.backoff_cap,
        valid,
        policy.expiry_margin,
    );
    if let Some(ra) = retry_after {
        let nb = add(now, ra);
        // Honour Retry-After unless that would let a valid token lapse.
        if valid.is_none_or(|v| nb < v) {
            at = at.max(nb);
        }
    }
    let invalid = Invalid { reason, message };
    let at = whole_seconds(at).max(add(now, crate::state::refresh::MIN_REQUEUE));
    (failed_status(o, &invalid, failures, Some(at)), at)
}

/// Deletion, one step at a time: detach from every ServiceAccount, delete every secret,
/// then drop the finalizer.
fn cleanup_step(o: &Observed) -> CleanupStep {
    let own: Vec<&str> = o.secrets.iter().map(|s| s.name.as_str()).collect();
    let expected = expected_secret_name(&o.binding);
    let is_own = |n: &String| own.contains(&n.as_str()) || Some(n) == expected.as_ref();
    for sa in o
        .referencing_service_accounts
        .iter()
        .chain(o.target_service_account.iter())
    {
        if sa.pull_secrets.iter().any(is_own) {
            return CleanupStep::Detach {
                service_account: sa.name.clone(),
                pull_secrets: sa
                    .pull_secrets
                    .iter()
                    .filter(|n| !is_own(n))
                    .cloned()
                    .collect(),
            };
        }
    }
    if let Some(s) = o.secrets.first() {
        return CleanupStep::DeleteSecret(s.name.clone());
    }
    CleanupStep::RemoveFinalizer
}

fn expected_secret_name(b: &BindingView) -> Option<String> {
    Some(match b.version {
        Version::V1beta1 => super::names::legacy_pull_secret_name(&b.name),
        Version::V1beta2 => super::names::pull_secret_name(&b.name),
    })
}

/// How long to wait before the next pass for a plan that waits.
pub fn requeue_for(plan: &Plan, now: Timestamp, policy: &Policy) -> Option<std::time::Duration> {
    match plan {
        Plan::Wait { until } => Some(requeue_after(now, *until)),
        Plan::Fail { retry_at, .. } => Some(
            retry_at
                .map(|t| requeue_after(now, t))
                .unwrap_or(policy.recheck_interval),
        ),
        Plan::Ignore => None,
        _ => Some(std::time::Duration::ZERO),
    }
}

/// Whether a secret name is one acrpull manages (either family).
pub fn is_managed_secret_name(name: &str) -> bool {
    secret_family(name) != SecretFamily::Unmanaged
}

/// Truncate to whole seconds: the precision of RFC 3339 times in status and annotations.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn add(t: Timestamp, d: std::time::Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
