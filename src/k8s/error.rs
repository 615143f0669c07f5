//! [`ReconcileError`]: how a call to the API server failed, with its static [`Reason`].

use std::time::Duration;

use crate::state::reason::Reason;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// This replica does not hold the leader Lease: the write was not sent.
    #[error("not the leader; {op} was not sent")]
    NotLeader { op: &'static str },
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("{op}: {source}")]
    Kube {
        op: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    /// Static reason for metrics and logs.
    pub fn reason(&self) -> Reason {
        match self {
            ReconcileError::NotLeader { .. } => Reason::NotLeader,
            ReconcileError::Timeout { .. } => Reason::Timeout,
            ReconcileError::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => Reason::Conflict,
                kube::Error::Api(s) if s.code == 404 => Reason::NotFound,
                kube::Error::Api(_) => Reason::ApiError,
                _ => Reason::ClientError,
            },
        }
    }

    /// A create answered 409 AlreadyExists: an object of that name exists that the cache does
    /// not show.
    pub fn already_exists(&self) -> bool {
        matches!(self, ReconcileError::Kube { source: kube::Error::Api(s), .. }
            if s.code == 409 && s.reason == "AlreadyExists")
    }

    /// A 409 or 404 on a write: the cache was behind the API server.
    pub fn cache_was_behind(&self) -> bool {
        matches!(self.reason(), Reason::Conflict | Reason::NotFound)
    }
}
