//! The request log and per-hop counters, so tests can assert from the server side what the
//! client did (and wait for it without sleeping).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// One kind of endpoint ("hop") of the token pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    Imds,
    EntraDiscovery,
    EntraToken,
    AcrExchange,
    AcrToken,
    AcrTokenGet,
    V2,
    /// Anything else (unknown host or path, control API is not logged).
    Other,
}

impl Hop {
    pub const ALL: [Hop; 8] = [
        Hop::Imds,
        Hop::EntraDiscovery,
        Hop::EntraToken,
        Hop::AcrExchange,
        Hop::AcrToken,
        Hop::AcrTokenGet,
        Hop::V2,
        Hop::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Imds => "imds",
            Hop::EntraDiscovery => "entra_discovery",
            Hop::EntraToken => "entra_token",
            Hop::AcrExchange => "acr_exchange",
            Hop::AcrToken => "acr_token",
            Hop::AcrTokenGet => "acr_token_get",
            Hop::V2 => "v2",
            Hop::Other => "other",
        }
    }

    /// Whether the hop is served by a registry (and counts against its operations limit).
    pub fn is_acr(self) -> bool {
        matches!(
            self,
            Hop::AcrExchange | Hop::AcrToken | Hop::AcrTokenGet | Hop::V2
        )
    }
}

/// One answered (or abandoned) request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    /// Position in the log, starting at 1.
    pub seq: u64,
    pub hop: Hop,
    pub method: String,
    pub host: String,
    pub path: String,
    /// HTTP status, or 0 when the request was never answered (hang, reset).
    pub status: u16,
    /// Client id presented or resolved (IMDS selector, Entra `client_id`, ARM `appid`).
    pub client_id: Option<String>,
    /// Configured identity name, when one was resolved.
    pub identity: Option<String>,
    /// Error code returned (`invalid_request`, `AADSTS70021`, `UNAUTHORIZED`, ...).
    pub error: Option<String>,
    /// Id of the fault rule that shaped the answer, if any.
    pub fault: Option<u64>,
    pub timestamp: jiff::Timestamp,
    pub duration_ms: u64,
}

/// Totals per hop.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HopCounts {
    pub total: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 4xx answers other than 429.
    pub client_errors: u64,
    pub throttled: u64,
    pub server_errors: u64,
    /// Hangs and resets.
    pub unanswered: u64,
    /// Requests shaped by a fault rule.
    pub faulted: u64,
}

/// Append-only log with a notifier for waiters.
#[derive(Debug, Default)]
pub struct RequestLog {
    records: Mutex<Vec<RequestRecord>>,
    counts: Mutex<BTreeMap<Hop, HopCounts>>,
    notify: Notify,
}

impl RequestLog {
    /// Appends a record (its `seq` is assigned here) and wakes waiters.
    pub fn push(&self, mut record: RequestRecord) {
        {
            let mut counts = lock(&self.counts);
            let c = counts.entry(record.hop).or_default();
            c.total += 1;
            match record.status {
                0 => c.unanswered += 1,
                200..=299 => c.ok += 1,
                429 => c.throttled += 1,
                400..=499 => c.client_errors += 1,
                500..=599 => c.server_errors += 1,
                _ => {}
            }
            if record.fault.is_some() {
                c.faulted += 1;
            }
        }
        {
            let mut records = lock(&self.records);
            record.seq = records.len() as u64 + 1;
            records.push(record);
        }
        self.notify.notify_waiters();
    }

    pub fn records(&self) -> Vec<RequestRecord> {
        lock(&self.records).clone()
    }

    pub fn counts(&self) -> BTreeMap<Hop, HopCounts> {
        lock(&self.counts).clone()
    }

    /// Forgets records and counters.
    pub fn clear(&self) {
        lock(&self.records).clear();
        lock(&self.counts).clear();
    }

    /// Waits until `pred` holds over the records, or `timeout` passes. Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[RequestRecord]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&lock(&self.records)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&lock(&self.records));
            }
        }
    }
}

/// Locks a mutex, recovering the data if a holder panicked (a poisoned log is still a log).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
