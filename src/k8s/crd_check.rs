//! The installed `AcrPullBinding` CRDs: which status fields they keep.
//!
//! A cluster swapped from the old controller may still run its CRDs, whose status schema
//! declares only `lastTokenRefreshTime`, `tokenExpirationTime` and `error`; the API server then
//! prunes `phase`, `conditions` and the rest from every status write. acrpull reads both CRDs
//! (`get`, by name) at start and every `--crd-recheck-interval`, and for each one:
//!
//! - publishes what it keeps ([`CrdSchemas::kept`]): passes compare, and status writes send,
//!   only those fields, so nothing is rewritten in a loop and the old controller's three fields
//!   stay correct (pull secrets are unaffected: they do not depend on status);
//! - logs one error when a CRD starts dropping fields (and one info line when that ends),
//!   naming the fields and the fix;
//! - shows it as a warning in the `/readyz` body (readiness itself is not failed: see
//!   `http::health`) and as `acrpull_crd_status_fields_dropped{crd}`;
//! - on any change, makes every binding take a pass ([`CrdSchemas::changes`]), so an operator
//!   who applies the new CRDs sees full status (and `kubectl wait --for=condition=Ready`
//!   succeed) without restarting the controller.
//!
//! A CRD that cannot be read (RBAC without `get` on `customresourcedefinitions`, an API error)
//! is assumed current, with one warning: the controller behaves as before this check existed.
//! Once a CRD has been read, a failed re-read keeps what was read.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use crate::http::health::Readiness;
use crate::state::binding::Version;
use crate::state::status_schema::{kept_by, StatusFields, StatusSchema};

/// The CRDs acrpull serves, with the version of each it reconciles.
pub const CRDS: [(Version, &str, &str); 2] = [
    (
        Version::V1beta1,
        "acrpullbindings.msi-acrpull.microsoft.com",
        "v1beta1",
    ),
    (
        Version::V1beta2,
        "acrpullbindings.acrpull.microsoft.com",
        "v1beta2",
    ),
];

fn index(version: Version) -> usize {
    match version {
        Version::V1beta1 => 0,
        Version::V1beta2 => 1,
    }
}

/// What was last learnt about one CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Not read yet.
    Unknown,
    Read(StatusSchema),
    /// Reading it failed; the string is the kind of failure (for logging once per kind).
    Unreadable(String),
}

/// What the installed CRDs keep of acrpull's status, shared by the check, the passes and the
/// metrics. Until a CRD has been read it counts as keeping everything.
#[derive(Clone, Debug)]
pub struct CrdSchemas(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    kept: [AtomicU16; 2],
    seen: Mutex<[Seen; 2]>,
    changed: watch::Sender<u64>,
}

impl Default for CrdSchemas {
    fn default() -> Self {
        Self(Arc::new(Inner {
            kept: [
                AtomicU16::new(StatusFields::ALL.bits()),
                AtomicU16::new(StatusFields::ALL.bits()),
            ],
            seen: Mutex::new([Seen::Unknown, Seen::Unknown]),
            changed: watch::Sender::new(0),
        }))
    }
}

impl CrdSchemas {
    /// The status fields the installed CRD of `version` keeps.
    pub fn kept(&self, version: Version) -> StatusFields {
        StatusFields::from_bits(self.0.kept[index(version)].load(Ordering::Acquire))
    }

    /// A counter that moves whenever what a CRD keeps changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }

    /// Records what was learnt about `version`'s CRD; returns the previous state.
    fn record(&self, version: Version, seen: Seen) -> Seen {
        let i = index(version);
        let kept = match &seen {
            Seen::Read(schema) => schema.kept(),
            Seen::Unknown | Seen::Unreadable(_) => StatusFields::ALL,
        };
        let before = self.0.kept[i].swap(kept.bits(), Ordering::AcqRel);
        if before != kept.bits() {
            self.0.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        let mut all = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut all[i], seen)
    }

    fn seen(&self, version: Version) -> Seen {
        let all = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        all[index(version)].clone()
    }

    /// `(crd name, fields dropped)` for every CRD read so far.
    fn dropped(&self) -> Vec<(&'static str, usize)> {
        let all = self.0.seen.lock().unwrap_or_else(|p| p.into_inner());
        CRDS.iter()
            .zip(all.iter())
            .filter_map(|((_, name, _), seen)| match seen {
                Seen::Read(schema) => Some((*name, schema.kept().missing().len())),
                _ => None,
            })
            .collect()
    }
}

/// The operator-facing sentence for a CRD that drops status fields, or None when it keeps
/// them all.
fn problem(name: &str, schema: &StatusSchema) -> Option<String> {
    let fix = "apply the CRDs in deploy/crds (kubectl apply -f deploy/crds) or `helm upgrade` with acrpull's chart";
    match schema {
        StatusSchema::Subresource(kept) if kept.is_all() => None,
        StatusSchema::Subresource(kept) => Some(format!(
            "the installed CRD {name} is outdated: the API server drops the status fields {} that acrpull writes, so status keeps only {} and `kubectl wait --for=condition=Ready` cannot succeed; {fix}",
            kept.missing().join(", "),
            if kept.is_empty() { "nothing".to_string() } else { kept.names().join(", ") },
        )),
        StatusSchema::NoSubresource => Some(format!(
            "the installed CRD {name} has no status subresource: acrpull cannot write status at all; {fix}"
        )),
        StatusSchema::NotServed => Some(format!(
            "the installed CRD {name} does not serve the version acrpull reconciles; {fix}"
        )),
    }
}

/// Reads both CRDs once and publishes what they keep (logging, `/readyz` warnings and change
/// notifications included). Each read is bounded by `timeout`.
pub async fn check(
    client: &Client,
    schemas: &CrdSchemas,
    readiness: &Readiness,
    timeout: Duration,
) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (version, name, served) in CRDS {
        let seen = match tokio::time::timeout(timeout, api.get_opt(name)).await {
            Ok(Ok(Some(crd))) => match serde_json::to_value(&crd) {
                Ok(value) => Seen::Read(kept_by(&value, served)),
                Err(e) => Seen::Unreadable(format!("unreadable: {e}")),
            },
            Ok(Ok(None)) => Seen::Unreadable("not found".into()),
            Ok(Err(kube::Error::Api(s))) if s.code == 403 => Seen::Unreadable(
                "forbidden (grant get on customresourcedefinitions: acrpull's chart and deploy/rbac.yaml do)".into(),
            ),
            Ok(Err(e)) => Seen::Unreadable(format!("{e}")),
            Err(_) => Seen::Unreadable(format!("timed out after {timeout:?}")),
        };
        if let Seen::Unreadable(why) = &seen {
            if matches!(schemas.seen(version), Seen::Read(_)) {
                // Known before: keep what was read rather than flip on an API blip.
                tracing::debug!(crd = name, error = %why, "re-reading the CRD failed; keeping what was read before");
                continue;
            }
        }
        let before = schemas.record(version, seen.clone());
        if before == seen {
            continue;
        }
        let key = format!("crd:{name}");
        match &seen {
            Seen::Read(schema) => {
                match problem(name, schema) {
                    Some(message) => {
                        tracing::error!(
                            crd = name,
                            dropped = ?schema.kept().missing(),
                            kept = ?schema.kept().names(),
                            "{message}"
                        );
                        readiness.set_warning(&key, message);
                    }
                    None => {
                        if matches!(before, Seen::Read(ref b) if problem(name, b).is_some()) {
                            tracing::info!(crd = name, "the installed CRD keeps every status field again; writing full status");
                        }
                        readiness.clear_warning(&key);
                    }
                }
            }
            Seen::Unreadable(why) => {
                tracing::warn!(crd = name, error = %why, "cannot read the CRD to check its status schema; assuming it is current");
            }
            Seen::Unknown => {}
        }
    }
}

/// Re-checks every `interval` until `shutdown` resolves.
pub async fn run(
    client: Client,
    schemas: CrdSchemas,
    readiness: Readiness,
    timeout: Duration,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut shutdown => return,
        }
        check(&client, &schemas, &readiness, timeout).await;
    }
}

/// `acrpull_crd_status_fields_dropped{crd}`: how many of acrpull's status fields each
/// installed CRD drops (0: current). A CRD not read yet has no series.
#[derive(Debug)]
pub struct CrdCollector(pub CrdSchemas);

impl Collector for CrdCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "acrpull_crd_status_fields_dropped",
            "Status fields acrpull writes that the installed CRD drops (0: the CRD is current; apply deploy/crds otherwise)",
            None,
            MetricType::Gauge,
        )?;
        for (crd, dropped) in self.0.dropped() {
            let labels = [("crd", crd)];
            ConstGauge::new(dropped as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_counted_and_unread_crds_keep_everything() {
        let s = CrdSchemas::default();
        let mut rx = s.changes();
        assert!(s.kept(Version::V1beta2).is_all());
        let old = StatusFields::of(&["lastTokenRefreshTime", "tokenExpirationTime", "error"]);
        s.record(Version::V1beta2, Seen::Read(StatusSchema::Subresource(old)));
        assert_eq!(s.kept(Version::V1beta2), old);
        assert!(s.kept(Version::V1beta1).is_all());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        // The same again: no change.
        s.record(Version::V1beta2, Seen::Read(StatusSchema::Subresource(old)));
        assert!(!rx.has_changed().unwrap());
        assert_eq!(s.dropped(), [("acrpullbindings.acrpull.microsoft.com", 5)]);
        // Unreadable: assumed current.
        s.record(Version::V1beta2, Seen::Unreadable("forbidden".into()));
        assert!(s.kept(Version::V1beta2).is_all());
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn the_problem_names_the_fields_and_the_fix() {
        let old = StatusFields::of(&["lastTokenRefreshTime", "tokenExpirationTime", "error"]);
        let m = problem("crd.x", &StatusSchema::Subresource(old)).unwrap();
        assert!(
            m.contains(
                "phase, conditions, observedGeneration, nextRefreshTime, consecutiveFailures"
            ),
            "{m}"
        );
        assert!(m.contains("apply the CRDs in deploy/crds"), "{m}");
        assert!(m.contains("helm upgrade"), "{m}");
        assert!(problem("crd.x", &StatusSchema::Subresource(StatusFields::ALL)).is_none());
        assert!(problem("crd.x", &StatusSchema::NoSubresource)
            .unwrap()
            .contains("no status subresource"));
    }
}
