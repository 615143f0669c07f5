//! [`Reason`]: the one static, PascalCase answer to "why is this binding in this state?".
//!
//! The same value is the `Ready` condition's reason in status, the reason of the Event about
//! it, the `reason` field of `/debug/bindings` and of the transition log line, and the label of
//! the reconcile-error metric. Nothing compares reason strings: code matches on the enum and
//! renders it with [`Reason::as_str`] at the edge. Azure's `ErrorKind` maps onto it one to one
//! (`impl From<ErrorKind> for Reason` in `azure::error`).

/// Why a binding is where it is, what an Event reports, or why an API call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // Healthy outcomes.
    /// The pull secret holds a valid token and is attached (`Ready` condition, first-mint Event).
    TokenIssued,
    /// Event: the pull secret got a new token.
    TokenRefreshed,
    /// Event: the pull secret was added to the ServiceAccount's `imagePullSecrets`.
    PullSecretAttached,
    /// Event: a deleted binding's secret was detached and deleted.
    CleanedUp,
    /// `CredentialVerified` condition: the registry granted every requested scope.
    Verified,

    // Work in progress (the transient phases Pending, Exchanging, Refreshing).
    /// Pending: the finalizer is being added.
    NewBinding,
    /// Exchanging: the binding has never had a pull secret.
    NoPullSecret,
    /// Exchanging: the pull secret's token has expired (or its annotations are unreadable).
    TokenExpired,
    /// Refreshing: the token reached its refresh boundary.
    RefreshDue,
    /// Refreshing: the binding's inputs changed since the token was minted.
    InputsChanged,
    /// The pull secret exists and is valid but is not attached to the ServiceAccount yet.
    AttachingPullSecret,
    /// The binding is being deleted.
    Deleting,

    // Failures found in what is observed (SPEC §4 rules 4 and 6).
    InvalidSpec,
    RegistryNotAllowed,
    ServiceAccountNotFound,
    /// A Secret of the pull secret's name exists and belongs to someone else.
    SecretConflict,

    // Refusals by the operator's allow-lists and tenancy policies (SPEC §12).
    /// A scope asks for an action outside `--allowed-scope-actions`.
    ActionNotAllowed,
    /// An air-gapped authority host or audience outside the operator's allow-lists.
    AuthorityNotAllowed,
    /// No `AcrPullPolicy` permits the binding (enforce: refused; audit: flagged).
    NotPermitted,
    /// `Permitted` condition: an `AcrPullPolicy` permits the binding.
    Permitted,
    /// Event: a credential was taken away because policy no longer permits it.
    CredentialRevoked,

    // Failures of the credential check at the registry.
    ScopeNotGranted,
    CredentialRejected,

    // Failures of the token pipeline (one per `azure::ErrorKind`).
    IdentityNotFound,
    TenantNotFound,
    FederationMismatch,
    AssertionExpired,
    InvalidScope,
    Throttled,
    AzureUnavailable,
    Unauthorized,
    InvalidRequest,
    ServiceAccountTokenFailed,
    InvalidResponse,
    InvalidConfig,

    // Warning Events about failed mints: nothing issued yet vs. a refresh.
    /// Event: the first token for a binding could not be issued (there is no pull secret).
    TokenIssueFailed,
    /// Event: refreshing an existing pull secret failed.
    TokenRefreshFailed,

    // Kubernetes API failures of a pass (reconcile-error metric, logs).
    /// A call to the API server timed out.
    Timeout,
    /// 409: the cache was behind the API server.
    Conflict,
    /// 404 on a write: the object is gone (the cache was behind).
    NotFound,
    /// Any other error status from the API server.
    ApiError,
    /// The API server could not be reached or its answer not read.
    ClientError,
    /// This replica does not hold the leader Lease; the write was not sent.
    NotLeader,
}

impl Reason {
    /// Every reason, for exhaustive tests.
    pub const ALL: [Reason; 43] = [
        Reason::TokenIssued,
        Reason::TokenRefreshed,
        Reason::PullSecretAttached,
        Reason::CleanedUp,
        Reason::Verified,
        Reason::NewBinding,
        Reason::NoPullSecret,
        Reason::TokenExpired,
        Reason::RefreshDue,
        Reason::InputsChanged,
        Reason::AttachingPullSecret,
        Reason::Deleting,
        Reason::InvalidSpec,
        Reason::RegistryNotAllowed,
        Reason::ServiceAccountNotFound,
        Reason::SecretConflict,
        Reason::ActionNotAllowed,
        Reason::AuthorityNotAllowed,
        Reason::NotPermitted,
        Reason::Permitted,
        Reason::CredentialRevoked,
        Reason::ScopeNotGranted,
        Reason::CredentialRejected,
        Reason::IdentityNotFound,
        Reason::TenantNotFound,
        Reason::FederationMismatch,
        Reason::AssertionExpired,
        Reason::InvalidScope,
        Reason::Throttled,
        Reason::AzureUnavailable,
        Reason::Unauthorized,
        Reason::InvalidRequest,
        Reason::ServiceAccountTokenFailed,
        Reason::InvalidResponse,
        Reason::InvalidConfig,
        Reason::TokenIssueFailed,
        Reason::TokenRefreshFailed,
        Reason::Timeout,
        Reason::Conflict,
        Reason::NotFound,
        Reason::ApiError,
        Reason::ClientError,
        Reason::NotLeader,
    ];

    /// The PascalCase name (condition reason, Event reason, metric label, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenIssued => "TokenIssued",
            Reason::TokenRefreshed => "TokenRefreshed",
            Reason::PullSecretAttached => "PullSecretAttached",
            Reason::CleanedUp => "CleanedUp",
            Reason::Verified => "Verified",
            Reason::NewBinding => "NewBinding",
            Reason::NoPullSecret => "NoPullSecret",
            Reason::TokenExpired => "TokenExpired",
            Reason::RefreshDue => "RefreshDue",
            Reason::InputsChanged => "InputsChanged",
            Reason::AttachingPullSecret => "AttachingPullSecret",
            Reason::Deleting => "Deleting",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::RegistryNotAllowed => "RegistryNotAllowed",
            Reason::ServiceAccountNotFound => "ServiceAccountNotFound",
            Reason::SecretConflict => "SecretConflict",
            Reason::ActionNotAllowed => "ActionNotAllowed",
            Reason::AuthorityNotAllowed => "AuthorityNotAllowed",
            Reason::NotPermitted => "NotPermitted",
            Reason::Permitted => "Permitted",
            Reason::CredentialRevoked => "CredentialRevoked",
            Reason::ScopeNotGranted => "ScopeNotGranted",
            Reason::CredentialRejected => "CredentialRejected",
            Reason::IdentityNotFound => "IdentityNotFound",
            Reason::TenantNotFound => "TenantNotFound",
            Reason::FederationMismatch => "FederationMismatch",
            Reason::AssertionExpired => "AssertionExpired",
            Reason::InvalidScope => "InvalidScope",
            Reason::Throttled => "Throttled",
            Reason::AzureUnavailable => "AzureUnavailable",
            Reason::Unauthorized => "Unauthorized",
            Reason::InvalidRequest => "InvalidRequest",
            Reason::ServiceAccountTokenFailed => "ServiceAccountTokenFailed",
            Reason::InvalidResponse => "InvalidResponse",
            Reason::InvalidConfig => "InvalidConfig",
            Reason::TokenIssueFailed => "TokenIssueFailed",
            Reason::TokenRefreshFailed => "TokenRefreshFailed",
            Reason::Timeout => "Timeout",
            Reason::Conflict => "Conflict",
            Reason::NotFound => "NotFound",
            Reason::ApiError => "ApiError",
            Reason::ClientError => "ClientError",
            Reason::NotLeader => "NotLeader",
        }
    }

    /// The reason named `s`, if any (reading a condition back from status).
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The registry refused what was minted: the credential is not usable, whatever its expiry.
    pub fn is_verification_failure(self) -> bool {
        matches!(self, Reason::ScopeNotGranted | Reason::CredentialRejected)
    }

    /// The reason of the Warning Event for a binding that failed with this reason (rules 4
    /// and 6, SPEC §8). `None` for failures of a mint, which are named by whether anything was
    /// issued before ([`Reason::TokenIssueFailed`] / [`Reason::TokenRefreshFailed`]).
    pub fn spec_event(self) -> Option<Reason> {
        match self {
            Reason::ServiceAccountNotFound => Some(Reason::ServiceAccountNotFound),
            Reason::InvalidSpec | Reason::RegistryNotAllowed => Some(Reason::InvalidSpec),
            Reason::ActionNotAllowed | Reason::AuthorityNotAllowed | Reason::NotPermitted => {
                Some(self)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert!(r.as_str().chars().next().is_some_and(char::is_uppercase));
            seen.insert(r);
        }
        assert_eq!(Reason::parse("Bogus"), None);
        assert_eq!(seen.len(), Reason::ALL.len(), "ALL lists every reason once");
    }
}
