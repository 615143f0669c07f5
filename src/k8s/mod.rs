//! Everything that talks to the Kubernetes API, one job per file:
//!
//! | file | job |
//! |---|---|
//! | [`api`] | the `AcrPullBinding` types of both groups (the CRDs are generated from them) |
//! | [`binding`] | both versions seen through one trait; annotation times |
//! | [`run`] | the watches, caches and kube-runtime controllers, wired |
//! | [`cache`] | the namespace-indexed caches (fed by watches and by our own writes) |
//! | [`trim`] | what the caches keep of each object |
//! | [`written`] | our own writes until the watch delivers them (echoes do not wake a pass) |
//! | [`sa_locks`] | one attach at a time per ServiceAccount |
//! | [`observe`] | gathering one binding's snapshot from the caches |
//! | [`context`] | what every pass shares |
//! | [`crd_check`] | which status fields the installed CRDs keep (old CRDs after a swap) |
//! | [`reconcile`] | one pass: gates, decide, execute, publish the record; API-error backoff |
//! | [`edits`] | finalizers, a ServiceAccount's pull secrets, deleting a Secret |
//! | [`tenancy`] | the tenancy policies a pass reads, and the refusals it counts and tells |
//! | [`mint`] | minting a token and recording a failed mint |
//! | [`ahead`] | passes waiting for a credential fetched ahead of them, one wait per fetch |
//! | [`pull_secret`] | the pull Secret: content, writing, adoption |
//! | [`status`] | the status subresource, rendered from the record |
//! | [`events`] | Events, thinned |
//! | [`verify`] | checking new credentials at the registry |
//! | [`requeue`] | passes planned for later (refreshes, retries), kept compactly |
//! | [`pacing`] | when each new token is planned to be refreshed (spreading a fleet's refreshes) |
//! | [`writer`] | the single write path: leader-gated, timed out |
//! | [`error`] | how an API call failed |
//! | [`failures`] | recent failures per binding, in memory |
//! | [`tracker`] | the records `/debug/bindings` and the phase gauge show |
//! | [`leader`] | leader election on a Lease |
//! | [`sa_token`] | ServiceAccount tokens for workload identity |
//! | [`metrics`] | reconcile metrics |

pub mod ahead;
pub mod api;
pub mod binding;
pub mod cache;
pub mod context;
pub mod crd_check;
pub mod edits;
pub mod error;
pub mod events;
pub mod failures;
pub mod leader;
pub mod metrics;
pub mod mint;
pub mod observe;
pub mod pacing;
pub mod pull_secret;
pub mod reconcile;
pub mod requeue;
pub mod run;
pub mod sa_locks;
pub mod sa_token;
pub mod status;
pub mod tenancy;
pub mod tracker;
pub mod trim;
pub mod verify;
pub mod writer;
pub mod written;
