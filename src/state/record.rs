//! The one record of a binding's state — phase, reason, message, error, the credential's
//! times, the next planned action and the failure count — and the status as read back.
//!
//! [`decide`](super::decide::decide) produces a [`Record`] for every pass; the k8s layer renders
//! that same value as the status subresource, the `/debug/bindings` entry, the
//! `acrpull_bindings{phase}` gauge, the Event and the transition log line, so they cannot
//! disagree.

use jiff::Timestamp;

use super::reason::Reason;
use super::status_schema::StatusFields;

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

/// What a binding's status says (or will say once written).
///
/// `ready` is the `Ready` condition: true while the pull secret holds a valid token for the
/// binding's inputs and is attached — including while a refresh of it is failing (phase
/// `Refreshing`, `error` set), so `kubectl wait --for=condition=Ready` stays true while pulls
/// work.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub phase: Phase,
    pub reason: Reason,
    pub ready: bool,
    /// The `Ready` condition's message.
    pub message: String,
    /// `status.error`: what failed and what to do; empty when healthy.
    pub error: String,
    /// When the token in the pull secret was written.
    pub last_refresh: Option<Timestamp>,
    /// When the token in the pull secret expires.
    pub expiry: Option<Timestamp>,
    /// The next planned action: the refresh boundary, or the next retry after a failure.
    /// Never in the past when written.
    pub next_refresh: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub observed_generation: i64,
    /// The `CredentialVerified` condition (None: not checked, no condition).
    pub verified: Option<bool>,
    /// The `Permitted` condition `(status, message)` in tenancy modes audit and enforce (None:
    /// mode off, no condition). False in audit mode flags a binding enforce would refuse.
    pub permitted: Option<(bool, String)>,
}

impl Record {
    /// Whether `current` already says this (ignoring condition timestamps), as far as the
    /// installed CRD keeps status fields (`current.kept`): a field the API server prunes can
    /// never be read back, so it must not make the status look out of date.
    pub fn matches(&self, current: &StatusView) -> bool {
        let kept = current.kept;
        let same = |field: &str, equal: bool| !kept.keeps(field) || equal;
        same("phase", current.phase == Some(self.phase))
            && same("error", current.error == self.error)
            && same(
                "lastTokenRefreshTime",
                current.last_refresh == self.last_refresh,
            )
            && same("tokenExpirationTime", current.expiry == self.expiry)
            && same("nextRefreshTime", current.next_refresh == self.next_refresh)
            && same(
                "consecutiveFailures",
                current.consecutive_failures == self.consecutive_failures,
            )
            && same(
                "observedGeneration",
                current.observed_generation == Some(self.observed_generation),
            )
            && same(
                "conditions",
                current
                    .ready
                    .as_ref()
                    .is_some_and(|(ready, reason, message)| {
                        *ready == self.ready
                            && *reason == Some(self.reason)
                            && *message == self.message
                    })
                    && current.verified == self.verified
                    && current.permitted == self.permitted,
            )
    }
}

/// The status fields decisions compare against, as read from the binding.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusView {
    pub phase: Option<Phase>,
    pub error: String,
    pub last_refresh: Option<Timestamp>,
    pub expiry: Option<Timestamp>,
    pub next_refresh: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub observed_generation: Option<i64>,
    /// `(status, reason, message)` of the `Ready` condition; a reason acrpull does not know
    /// reads as `None` (and is rewritten).
    pub ready: Option<(bool, Option<Reason>, String)>,
    /// Status of the `CredentialVerified` condition, when present.
    pub verified: Option<bool>,
    /// `(status, message)` of the `Permitted` condition, when present.
    pub permitted: Option<(bool, String)>,
    /// The status fields the installed CRD keeps ([`StatusFields::ALL`] with acrpull's CRDs);
    /// the others read as absent whatever was written.
    pub kept: StatusFields,
}

impl Record {
    /// The status an API server holding acrpull's CRDs stores when this record is written (the
    /// inverse of [`StatusView::as_record`]).
    pub fn as_status(&self) -> StatusView {
        StatusView {
            phase: Some(self.phase),
            error: self.error.clone(),
            last_refresh: self.last_refresh,
            expiry: self.expiry,
            next_refresh: self.next_refresh,
            consecutive_failures: self.consecutive_failures,
            observed_generation: Some(self.observed_generation),
            ready: Some((self.ready, Some(self.reason), self.message.clone())),
            verified: self.verified,
            permitted: self.permitted.clone(),
            kept: StatusFields::ALL,
        }
    }
}

impl StatusView {
    /// Whether this status already reports the failure `message` (`Failed` with that error),
    /// as far as the CRD keeps phase and error.
    pub fn is_failed_with(&self, message: &str) -> bool {
        let phase_failed = !self.kept.keeps("phase") || self.phase == Some(Phase::Failed);
        let same_error = !self.kept.keeps("error") || self.error == message;
        phase_failed && same_error
    }

    /// The status as a record (for passes that change nothing): unknown fields default.
    pub fn as_record(&self, observed_generation: i64) -> Record {
        let (ready, reason, message) =
            self.ready
                .clone()
                .unwrap_or((false, Some(Reason::NewBinding), String::new()));
        Record {
            phase: self.phase.unwrap_or(Phase::Pending),
            reason: reason.unwrap_or(Reason::NewBinding),
            ready,
            message,
            error: self.error.clone(),
            last_refresh: self.last_refresh,
            expiry: self.expiry,
            next_refresh: self.next_refresh,
            consecutive_failures: self.consecutive_failures,
            observed_generation: self.observed_generation.unwrap_or(observed_generation),
            verified: self.verified,
            permitted: self.permitted.clone(),
        }
    }
}
