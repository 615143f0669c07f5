//! In-memory record of every binding's phase and its recent transitions: the source of the
//! `/debug/bindings` endpoint, the bindings-by-phase gauge (computed at scrape time) and the
//! transition log lines. Holds no tokens — only phases, reasons and timestamps.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::Serialize;

use crate::state::binding::Version;
use crate::state::decide::Phase;

/// How many transitions are kept per binding.
pub const HISTORY: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindingKey {
    pub version: Version,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub at: String,
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub reason: String,
}

/// What `/debug/bindings` shows for one binding.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BindingEntry {
    pub namespace: String,
    pub name: String,
    pub api_version: &'static str,
    pub phase: &'static str,
    pub error: String,
    pub last_refresh: Option<String>,
    pub expiry: Option<String>,
    pub next_refresh: Option<String>,
    pub consecutive_failures: u32,
    pub secret_name: String,
    pub service_account: String,
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub transitions: VecDeque<Transition>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<BindingKey, BindingEntry>,
    transitions_total: BTreeMap<(&'static str, &'static str), u64>,
}

/// Shared tracker; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Mutex<Inner>>);

/// The facts a reconcile pass reports.
#[derive(Debug, Clone)]
pub struct Report {
    pub phase: Phase,
    pub reason: String,
    pub error: String,
    pub last_refresh: Option<Timestamp>,
    pub expiry: Option<Timestamp>,
    pub next_refresh: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub secret_name: String,
    pub service_account: String,
}

impl Tracker {
    /// Record a pass; returns the previous phase when the phase changed.
    pub fn record(
        &self,
        key: &BindingKey,
        report: Report,
        now: Timestamp,
    ) -> Option<Option<Phase>> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fmt = |t: Option<Timestamp>| t.map(crate::k8s::binding::rfc3339);
        let entry = inner
            .entries
            .entry(key.clone())
            .or_insert_with(|| BindingEntry {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                api_version: key.version.api_version(),
                phase: "",
                error: String::new(),
                last_refresh: None,
                expiry: None,
                next_refresh: None,
                consecutive_failures: 0,
                secret_name: String::new(),
                service_account: String::new(),
                transitions: VecDeque::new(),
            });
        let previous = Phase::parse(entry.phase);
        let changed = previous != Some(report.phase);
        if changed {
            entry.transitions.push_back(Transition {
                at: crate::k8s::binding::rfc3339(now),
                from: previous.map(Phase::as_str),
                to: report.phase.as_str(),
                reason: report.reason.clone(),
            });
            while entry.transitions.len() > HISTORY {
                entry.transitions.pop_front();
            }
        }
        entry.phase = report.phase.as_str();
        entry.error = report.error;
        entry.last_refresh = fmt(report.last_refresh);
        entry.expiry = fmt(report.expiry);
        entry.next_refresh = fmt(report.next_refresh);
        entry.consecutive_failures = report.consecutive_failures;
        entry.secret_name = report.secret_name;
        entry.service_account = report.service_account;
        if changed {
            let from = previous.map(Phase::as_str).unwrap_or("None");
            *inner
                .transitions_total
                .entry((from, report.phase.as_str()))
                .or_default() += 1;
            Some(previous)
        } else {
            None
        }
    }

    pub fn forget(&self, key: &BindingKey) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.remove(key);
    }

    /// All bindings, without their transition history.
    pub fn list(&self) -> Vec<BindingEntry> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .values()
            .map(|e| BindingEntry {
                transitions: VecDeque::new(),
                ..e.clone()
            })
            .collect()
    }

    /// One binding (both versions may share a name), with history.
    pub fn get(&self, namespace: &str, name: &str) -> Vec<BindingEntry> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .values()
            .filter(|e| e.namespace == namespace && e.name == name)
            .cloned()
            .collect()
    }

    /// Bindings per phase, for the scrape-time gauge.
    pub fn count_by_phase(&self) -> BTreeMap<&'static str, u64> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<&'static str, u64> =
            Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        for e in inner.entries.values() {
            *out.entry(e.phase).or_default() += 1;
        }
        out
    }

    /// The earliest token expiry among tracked bindings.
    pub fn earliest_expiry(&self) -> Option<Timestamp> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .values()
            .filter_map(|e| e.expiry.as_deref().and_then(|t| t.parse().ok()))
            .min()
    }

    pub fn transitions_total(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transitions_total
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(phase: Phase) -> Report {
        Report {
            phase,
            reason: "TokenIssued".into(),
            error: String::new(),
            last_refresh: None,
            expiry: Some("2026-01-01T01:00:00Z".parse().unwrap()),
            next_refresh: None,
            consecutive_failures: 0,
            secret_name: "acr-pull-a".into(),
            service_account: "default".into(),
        }
    }

    #[test]
    fn transitions_are_recorded_bounded_and_counted() {
        let t = Tracker::default();
        let key = BindingKey {
            version: Version::V1beta2,
            namespace: "ns".into(),
            name: "a".into(),
        };
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(t.record(&key, report(Phase::Pending), now), Some(None));
        assert_eq!(t.record(&key, report(Phase::Pending), now), None);
        assert_eq!(
            t.record(&key, report(Phase::Exchanging), now),
            Some(Some(Phase::Pending))
        );
        for i in 0..30 {
            let p = if i % 2 == 0 {
                Phase::Ready
            } else {
                Phase::Refreshing
            };
            t.record(&key, report(p), now);
        }
        let got = t.get("ns", "a");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].transitions.len(), HISTORY);
        assert_eq!(t.count_by_phase()["Refreshing"], 1);
        assert_eq!(t.count_by_phase()["Ready"], 0);
        assert_eq!(t.transitions_total()[&("Pending", "Exchanging")], 1);
        assert!(t.list()[0].transitions.is_empty());
        assert_eq!(
            t.earliest_expiry(),
            Some("2026-01-01T01:00:00Z".parse().unwrap())
        );
        t.forget(&key);
        assert!(t.list().is_empty());
    }
}
