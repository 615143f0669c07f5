//! [`Context`]: what every reconcile pass shares. Built with a struct literal by the process
//! (`app`) and by the in-process tests alike; nothing in it is optional, so the sync gate
//! (readiness) and the leader gate (the writer) cannot be left unwired.

use kube::runtime::events::Reporter;

use super::ahead::Ahead;
use super::cache::Caches;
use super::crd_check::CrdSchemas;
use super::failures::Failures;
use super::metrics::ControllerMetrics;
use super::pacing::Pacing;
use super::requeue::Requeues;
use super::tracker::Tracker;
use super::verify::Verifier;
use super::writer::Writer;
use crate::azure::{IdentityAudience, TokenPipeline};
use crate::http::health::Readiness;
use crate::state::binding::Policy;
use crate::state::selector::Selector;

pub struct Context {
    /// The only way to the API server for writes: leader-gated and timed out.
    pub writer: Writer,
    pub pipeline: TokenPipeline,
    /// Checks new credentials at the registry (`--verify-credentials`).
    pub verifier: Verifier,
    pub policy: Policy,
    /// `--label-selector` (rule 2).
    pub selector: Selector,
    /// Secrets (metadata) and ServiceAccounts, fed by the watches and by our own writes.
    pub caches: Caches,
    /// The records `/debug/bindings` and the phase gauge show.
    pub tracker: Tracker,
    pub metrics: ControllerMetrics,
    /// The sync gate: no pass decides before every watch has delivered its initial list (a
    /// cache that has not could be missing a binding's Secret or ServiceAccount).
    pub readiness: Readiness,
    /// Audience of identity tokens (`--identity-audience`).
    pub audience: IdentityAudience,
    /// Who the controller's Events say reported them.
    pub reporter: Reporter,
    /// Recent failures per binding (in memory).
    pub failures: Failures,
    /// When new tokens are planned to be refreshed.
    pub pacing: Pacing,
    /// What the installed CRDs keep of the status (old CRDs prune most of it).
    pub crds: CrdSchemas,
    /// Passes waiting for a credential fetched ahead of them.
    pub ahead: Ahead,
    /// Passes planned for later (refreshes, retries).
    pub requeues: Requeues,
}
