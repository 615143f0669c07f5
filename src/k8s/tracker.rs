//! In memory, the latest [`Record`] of every binding and its recent transitions: the source of
//! the `/debug/bindings` endpoint, the bindings-by-phase gauge (computed at scrape time) and
//! the transition log lines. The record is the one `decide` produced and the status writer
//! wrote, so the endpoints cannot disagree with `kubectl get`. Holds no tokens — only phases,
//! reasons and timestamps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use serde::Serialize;

use crate::state::binding::Version;
use crate::state::names::expected_secret_name;
use crate::state::reason::Reason;
use crate::state::record::{Phase, Record};

/// How many transitions are kept per binding.
pub const HISTORY: usize = 10;

/// What one binding takes in the `/debug/bindings` page, at most, as a rule.
const PAGE_BYTES_PER_ENTRY: usize = 448;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindingKey {
    pub version: Version,
    pub namespace: String,
    pub name: String,
}

impl BindingKey {
    /// The binding's API group (`acrpull.microsoft.com` or `msi-acrpull.microsoft.com`).
    pub fn group(&self) -> &'static str {
        group_of(self.version.api_version())
    }
}

fn group_of(api_version: &'static str) -> &'static str {
    api_version.split('/').next().unwrap_or_default()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    #[serde(serialize_with = "text")]
    pub at: Timestamp,
    pub from: Option<&'static str>,
    pub to: &'static str,
    /// Why the binding entered `to` (the new record's reason).
    pub reason: &'static str,
}

/// What `/debug/bindings` shows for one binding.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BindingEntry {
    pub namespace: String,
    pub name: String,
    pub api_version: &'static str,
    pub phase: &'static str,
    pub reason: &'static str,
    pub ready: bool,
    pub error: String,
    #[serde(serialize_with = "opt_text")]
    pub last_refresh: Option<Timestamp>,
    #[serde(serialize_with = "opt_text")]
    pub expiry: Option<Timestamp>,
    #[serde(serialize_with = "opt_text")]
    pub next_refresh: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub secret_name: String,
    pub service_account: String,
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub transitions: VecDeque<Transition>,
}

/// A time as the status shows it (`2026-12-07T15:00:00Z`). Kept as a [`Timestamp`] and
/// written out only when shown: 10,000 entries × 4 times as text were ~1 MB.
fn text<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::k8s::binding::rfc3339(*t))
}

fn opt_text<S: serde::Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => text(t, s),
        None => s.serialize_none(),
    }
}

impl BindingEntry {
    /// The binding's API group (`acrpull.microsoft.com` or `msi-acrpull.microsoft.com`).
    pub fn group(&self) -> &'static str {
        group_of(self.api_version)
    }
}

/// What the tracker holds per binding: what [`BindingEntry`] shows, without what its key
/// says (namespace, name, version) or implies (the pull secret's name), with phases and
/// reasons as their one-byte enums, and transitions as [`Step`]s. At 10,000 bindings the
/// entries were the largest part of acrpull's own memory (~0.7 KB each).
#[derive(Debug)]
struct Entry {
    phase: Option<Phase>,
    reason: Option<Reason>,
    ready: bool,
    consecutive_failures: u32,
    error: Box<str>,
    service_account: Box<str>,
    last_refresh: Option<Timestamp>,
    expiry: Option<Timestamp>,
    next_refresh: Option<Timestamp>,
    transitions: VecDeque<Step>,
}

/// A [`Transition`] as kept.
#[derive(Debug, Clone, Copy)]
struct Step {
    at: Timestamp,
    from: Option<Phase>,
    to: Phase,
    reason: Reason,
}

impl Step {
    fn shown(self) -> Transition {
        Transition {
            at: self.at,
            from: self.from.map(Phase::as_str),
            to: self.to.as_str(),
            reason: self.reason.as_str(),
        }
    }
}

impl Entry {
    fn shown(&self, key: &BindingKey, history: bool) -> BindingEntry {
        BindingEntry {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            api_version: key.version.api_version(),
            phase: self.phase.map_or("", Phase::as_str),
            reason: self.reason.map_or("", Reason::as_str),
            ready: self.ready,
            error: self.error.to_string(),
            last_refresh: self.last_refresh,
            expiry: self.expiry,
            next_refresh: self.next_refresh,
            consecutive_failures: self.consecutive_failures,
            secret_name: expected_secret_name(key.version, &key.name),
            service_account: self.service_account.to_string(),
            transitions: if history {
                self.transitions.iter().map(|t| t.shown()).collect()
            } else {
                VecDeque::new()
            },
        }
    }
}

/// A [`BindingEntry`] without its history, borrowed (the list's form).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    namespace: &'a str,
    name: &'a str,
    api_version: &'static str,
    phase: &'static str,
    reason: &'static str,
    ready: bool,
    error: &'a str,
    #[serde(serialize_with = "opt_text")]
    last_refresh: Option<Timestamp>,
    #[serde(serialize_with = "opt_text")]
    expiry: Option<Timestamp>,
    #[serde(serialize_with = "opt_text")]
    next_refresh: Option<Timestamp>,
    consecutive_failures: u32,
    secret_name: String,
    service_account: &'a str,
}

impl<'a> Summary<'a> {
    fn of(key: &'a BindingKey, e: &'a Entry) -> Self {
        Summary {
            namespace: &key.namespace,
            name: &key.name,
            api_version: key.version.api_version(),
            phase: e.phase.map_or("", Phase::as_str),
            reason: e.reason.map_or("", Reason::as_str),
            ready: e.ready,
            error: &e.error,
            last_refresh: e.last_refresh,
            expiry: e.expiry,
            next_refresh: e.next_refresh,
            consecutive_failures: e.consecutive_failures,
            secret_name: expected_secret_name(key.version, &key.name),
            service_account: &e.service_account,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Boxed: the B-tree's nodes hold room for 11 values, mostly empty; boxed, the empty
    /// room costs 8 bytes a slot.
    entries: BTreeMap<BindingKey, Box<Entry>>,
    transitions_total: BTreeMap<(&'static str, &'static str), u64>,
}

/// Shared tracker; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Mutex<Inner>>);

/// What a reconcile pass reports: the binding's record and where its secret goes (the
/// secret's name follows from the binding's: [`expected_secret_name`]).
#[derive(Debug, Clone)]
pub struct Report {
    pub record: Record,
    pub service_account: String,
}

impl Tracker {
    /// Record a pass; returns the transition when the phase changed.
    pub fn record(&self, key: &BindingKey, report: Report, now: Timestamp) -> Option<Transition> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.entries.entry(key.clone()).or_insert_with(|| {
            Box::new(Entry {
                phase: None,
                reason: None,
                ready: false,
                consecutive_failures: 0,
                error: Box::default(),
                service_account: Box::default(),
                last_refresh: None,
                expiry: None,
                next_refresh: None,
                transitions: VecDeque::new(),
            })
        });
        let r = report.record;
        let previous = entry.phase;
        let step = (previous != Some(r.phase)).then_some(Step {
            at: now,
            from: previous,
            to: r.phase,
            reason: r.reason,
        });
        if let Some(t) = step {
            if entry.transitions.len() == HISTORY {
                entry.transitions.pop_front();
            }
            // Most bindings see two or three transitions: room for three, not the four a
            // first push would reserve.
            if entry.transitions.capacity() == 0 {
                entry.transitions.reserve_exact(3);
            }
            entry.transitions.push_back(t);
        }
        entry.phase = Some(r.phase);
        entry.reason = Some(r.reason);
        entry.ready = r.ready;
        if *entry.error != *r.error {
            entry.error = r.error.into_boxed_str();
        }
        entry.last_refresh = r.last_refresh;
        entry.expiry = r.expiry;
        entry.next_refresh = r.next_refresh;
        entry.consecutive_failures = r.consecutive_failures;
        if *entry.service_account != *report.service_account {
            entry.service_account = report.service_account.into_boxed_str();
        }
        let transition = step.map(Step::shown);
        if let Some(t) = &transition {
            *inner
                .transitions_total
                .entry((t.from.unwrap_or("None"), t.to))
                .or_default() += 1;
        }
        transition
    }

    /// Drop every record (not the transition counters): this replica lost the Lease, so what it
    /// saw is no longer current (`/debug` on a standby must not show it).
    pub fn clear(&self) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.clear();
    }

    /// Clear the records each time `leader` turns false, until it closes.
    pub async fn clear_on_standby(self, mut leader: tokio::sync::watch::Receiver<bool>) {
        loop {
            if !*leader.borrow_and_update() {
                self.clear();
            }
            if leader.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn forget(&self, key: &BindingKey) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.remove(key);
    }

    /// The API group and namespace of every tracked binding (what a caller of
    /// `/debug/bindings` must be allowed to read).
    pub fn scopes(&self) -> BTreeSet<(String, String)> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .keys()
            .map(|k| (k.group().to_string(), k.namespace.clone()))
            .collect()
    }

    /// `{"leader": …, "bindings": […]}` with the bindings `keep` accepts, without their
    /// history, serialized under the lock: at 10,000 bindings a copy of the entries, and a
    /// `serde_json::Value` of them, were the largest allocations the controller made.
    pub fn list_json(&self, leader: bool, keep: impl Fn(&BindingKey) -> bool) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a, I: Iterator<Item = Summary<'a>> + Clone> {
            leader: bool,
            #[serde(serialize_with = "seq")]
            bindings: I,
        }
        fn seq<'a, I, S>(items: &I, s: S) -> Result<S::Ok, S::Error>
        where
            I: Iterator<Item = Summary<'a>> + Clone,
            S: serde::Serializer,
        {
            s.collect_seq(items.clone())
        }
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let bindings = inner
            .entries
            .iter()
            .filter(|(k, _)| leader && keep(k))
            .map(|(k, e)| Summary::of(k, e));
        // Sized once for the whole page (~300-450 bytes per entry), not grown by doubling:
        // every doubling leaves a freed buffer behind, and the bench polls this page while
        // a restart lists 10,000 bindings.
        let shown = inner.entries.keys().filter(|k| leader && keep(k)).count();
        let mut page = Vec::with_capacity(64 + shown * PAGE_BYTES_PER_ENTRY);
        match serde_json::to_writer(&mut page, &Body { leader, bindings }) {
            Ok(()) => page,
            Err(_) => Vec::new(),
        }
    }

    /// All bindings, without their transition history.
    pub fn list(&self) -> Vec<BindingEntry> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .iter()
            .map(|(k, e)| e.shown(k, false))
            .collect()
    }

    /// One binding (both versions may share a name), with history.
    pub fn get(&self, namespace: &str, name: &str) -> Vec<BindingEntry> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .iter()
            .filter(|(k, _)| k.namespace == namespace && k.name == name)
            .map(|(k, e)| e.shown(k, true))
            .collect()
    }

    /// Bindings per phase, for the scrape-time gauge.
    pub fn count_by_phase(&self) -> BTreeMap<&'static str, u64> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<&'static str, u64> =
            Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        for phase in inner.entries.values().filter_map(|e| e.phase) {
            *out.entry(phase.as_str()).or_default() += 1;
        }
        out
    }

    /// The earliest token expiry among tracked bindings.
    pub fn earliest_expiry(&self) -> Option<Timestamp> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.values().filter_map(|e| e.expiry).min()
    }

    /// How many bindings' tokens expire within each of `bounds` (seconds from `now`; an
    /// expired token counts in every bucket), and how many have a token at all: counted under
    /// the lock, without copying a single entry (a scrape at 10,000 bindings used to clone
    /// them all).
    pub fn expiry_counts(&self, now: Timestamp, bounds: &[u32]) -> (Vec<u64>, u64) {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = vec![0u64; bounds.len()];
        let mut total = 0;
        for expiry in inner.entries.values().filter_map(|e| e.expiry) {
            total += 1;
            let left = expiry.duration_since(now).as_secs_f64();
            for (count, bound) in counts.iter_mut().zip(bounds) {
                if left <= f64::from(*bound) {
                    *count += 1;
                }
            }
        }
        (counts, total)
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
            record: Record {
                phase,
                reason: Reason::TokenIssued,
                ready: phase == Phase::Ready,
                message: String::new(),
                error: String::new(),
                last_refresh: None,
                expiry: Some("2026-01-01T01:00:00Z".parse().unwrap()),
                next_refresh: None,
                consecutive_failures: 0,
                observed_generation: 1,
                verified: None,
                permitted: None,
            },
            service_account: "default".into(),
        }
    }

    /// The list is rendered from borrowed summaries; they must say exactly what the entries
    /// say without their history (a field added to one and not the other fails here).
    #[test]
    fn list_json_is_the_entries_without_history() {
        let t = Tracker::default();
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for (ns, version) in [("a", Version::V1beta2), ("b", Version::V1beta1)] {
            let key = BindingKey {
                version,
                namespace: ns.into(),
                name: "x".into(),
            };
            t.record(&key, report(Phase::Pending), now);
            let mut failed = report(Phase::Failed);
            failed.record.error = "boom".into();
            failed.record.next_refresh = Some(now);
            t.record(&key, failed, now);
        }
        let expected: Vec<serde_json::Value> = t
            .list()
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        assert!(t.get("a", "x")[0].transitions.len() == 2);
        // Times are held as times and shown as the status shows them.
        let full = serde_json::to_value(&t.get("a", "x")[0]).unwrap();
        assert_eq!(full["expiry"], "2026-01-01T01:00:00Z");
        assert_eq!(full["nextRefresh"], "2026-01-01T00:00:00Z");
        assert_eq!(full["lastRefresh"], serde_json::Value::Null);
        assert_eq!(full["transitions"][1]["at"], "2026-01-01T00:00:00Z");
        let got: serde_json::Value = serde_json::from_slice(&t.list_json(true, |_| true)).unwrap();
        assert_eq!(got["leader"], true);
        assert_eq!(got["bindings"], serde_json::Value::from(expected.clone()));
        let only_b: serde_json::Value =
            serde_json::from_slice(&t.list_json(true, |k| k.namespace == "b")).unwrap();
        let b: Vec<serde_json::Value> = expected
            .iter()
            .filter(|e| e["namespace"] == "b")
            .cloned()
            .collect();
        assert_eq!(b.len(), 1);
        assert_eq!(only_b["bindings"], serde_json::Value::from(b));
        let standby: serde_json::Value =
            serde_json::from_slice(&t.list_json(false, |_| true)).unwrap();
        assert_eq!(
            standby,
            serde_json::json!({"leader": false, "bindings": []})
        );
        assert_eq!(
            t.scopes().into_iter().collect::<Vec<_>>(),
            vec![
                ("acrpull.microsoft.com".to_string(), "a".to_string()),
                ("msi-acrpull.microsoft.com".to_string(), "b".to_string())
            ]
        );
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
        assert_eq!(
            t.record(&key, report(Phase::Pending), now).unwrap().from,
            None
        );
        assert_eq!(t.record(&key, report(Phase::Pending), now), None);
        let mut exchanging = report(Phase::Exchanging);
        exchanging.record.reason = Reason::NoPullSecret;
        let tr = t.record(&key, exchanging, now).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.reason),
            (Some("Pending"), "Exchanging", "NoPullSecret")
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
        // 01:00 is 3,600 s after midnight: within an hour, not within half of one.
        assert_eq!(
            t.expiry_counts("2026-01-01T00:00:00Z".parse().unwrap(), &[1800, 3600, 7200]),
            (vec![0, 1, 1], 1)
        );
        t.forget(&key);
        assert!(t.list().is_empty());
        t.record(&key, report(Phase::Ready), now);
        t.clear();
        assert!(t.list().is_empty());
        assert_eq!(t.transitions_total()[&("Pending", "Exchanging")], 1);
    }
}
