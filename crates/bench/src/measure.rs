//! Reading what happened from the stand-ins' own logs: API requests of the controller (by
//! User-Agent), Azure calls per hop, per-second call histograms, and waiting for conditions
//! without sleeping longer than a poll interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use azure_standin::{Hop, HopCounts};
use serde::Serialize;
use serde_json::Value;

use crate::workload::V2;

/// Requests of the controller, recognised by its User-Agent (`acrpull/<version> (...)`).
pub fn is_controller(r: &kube_standin::RequestRecord) -> bool {
    r.user_agent.contains("acrpull/")
}

pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// API request statistics of the controller over a slice of the log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiStats {
    /// `verb resource[/subresource]` → count.
    pub by_verb_resource: BTreeMap<String, u64>,
    pub requests: u64,
    pub writes: u64,
    /// Writes other than Events (Events are best-effort notes, not state).
    pub writes_excluding_events: u64,
    /// Requests other than Event writes.
    pub requests_excluding_events: u64,
    /// ServiceAccount TokenRequests (workload identity), counted as writes by the API server.
    pub token_requests: u64,
    pub conflicts_409: u64,
    pub other_errors: u64,
}

pub fn api_stats(records: &[kube_standin::RequestRecord]) -> ApiStats {
    let mut s = ApiStats::default();
    for r in records.iter().filter(|r| is_controller(r)) {
        s.requests += 1;
        let resource = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        let verb = if r.verb.is_empty() {
            "nonresource"
        } else {
            &r.verb
        };
        *s.by_verb_resource
            .entry(format!("{verb} {resource}"))
            .or_default() += 1;
        if !(is_write(&r.verb) && r.resource == "events") {
            s.requests_excluding_events += 1;
        }
        if is_write(&r.verb) {
            s.writes += 1;
            if r.resource != "events" {
                s.writes_excluding_events += 1;
            }
            if r.subresource == "token" {
                s.token_requests += 1;
            }
        }
        match r.status {
            409 => s.conflicts_409 += 1,
            200..=299 => {}
            _ => s.other_errors += 1,
        }
    }
    s
}

/// Azure calls per hop (every answered or abandoned request).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AzureCalls {
    pub imds: u64,
    pub entra_token: u64,
    pub acr_exchange: u64,
    pub acr_token: u64,
    pub other: u64,
    pub throttled_429: u64,
    pub total: u64,
    /// Every hop seen (registry `/v2/` checks and token GETs land in `other` above).
    pub by_hop: BTreeMap<String, u64>,
}

pub fn azure_calls(counts: &BTreeMap<Hop, HopCounts>) -> AzureCalls {
    let get = |h: Hop| counts.get(&h).map(|c| c.total).unwrap_or(0);
    let mut a = AzureCalls {
        imds: get(Hop::Imds),
        entra_token: get(Hop::EntraToken),
        acr_exchange: get(Hop::AcrExchange),
        acr_token: get(Hop::AcrToken),
        ..AzureCalls::default()
    };
    a.total = counts.values().map(|c| c.total).sum();
    a.other = a.total - a.imds - a.entra_token - a.acr_exchange - a.acr_token;
    a.throttled_429 = counts.values().map(|c| c.throttled).sum();
    a.by_hop = counts
        .iter()
        .map(|(h, c)| (h.as_str().to_string(), c.total))
        .collect();
    a
}

pub fn azure_delta(after: &AzureCalls, before: &AzureCalls) -> AzureCalls {
    AzureCalls {
        imds: after.imds - before.imds,
        entra_token: after.entra_token - before.entra_token,
        acr_exchange: after.acr_exchange - before.acr_exchange,
        acr_token: after.acr_token - before.acr_token,
        other: after.other - before.other,
        throttled_429: after.throttled_429 - before.throttled_429,
        total: after.total - before.total,
        by_hop: after
            .by_hop
            .iter()
            .map(|(k, v)| (k.clone(), v - before.by_hop.get(k).copied().unwrap_or(0)))
            .collect(),
    }
}

/// When each kind of controller request happened, in seconds after `start`: which phase of
/// convergence dominates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Span {
    pub count: u64,
    pub first_secs: f64,
    pub last_secs: f64,
}

pub fn api_profile(
    records: &[kube_standin::RequestRecord],
    start: jiff::Timestamp,
) -> BTreeMap<String, Span> {
    let mut out: BTreeMap<String, Span> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| is_controller(r) && is_write(&r.verb))
    {
        let Some(t) = parse_ts(&r.timestamp) else {
            continue;
        };
        let key = if r.subresource.is_empty() {
            format!("{} {}", r.verb, r.resource)
        } else {
            format!("{} {}/{}", r.verb, r.resource, r.subresource)
        };
        add_span(
            out.entry(key).or_default(),
            t.duration_since(start).as_secs_f64(),
        );
    }
    out
}

pub fn azure_profile(
    records: &[azure_standin::RequestRecord],
    start: jiff::Timestamp,
) -> BTreeMap<String, Span> {
    let mut out: BTreeMap<String, Span> = BTreeMap::new();
    for r in records {
        add_span(
            out.entry(r.hop.as_str().to_string()).or_default(),
            r.timestamp.duration_since(start).as_secs_f64(),
        );
    }
    out
}

fn add_span(s: &mut Span, at: f64) {
    if s.count == 0 {
        s.first_secs = at;
        s.last_secs = at;
    }
    s.count += 1;
    s.first_secs = s.first_secs.min(at);
    s.last_secs = s.last_secs.max(at);
}

pub fn parse_ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Whether a binding's Ready condition is True.
pub fn is_ready(b: &Value) -> bool {
    b["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Poll the store until every v1beta2 binding is Ready; returns how many are Ready at the end.
/// The poll interval only bounds detection: the convergence time itself comes from the
/// request log (the last status write).
pub async fn wait_all_ready(
    kube: &kube_standin::Handle,
    n: usize,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<usize> {
    let interval = if n >= 5_000 {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(100)
    };
    let deadline = Instant::now() + timeout;
    loop {
        // Counted in place: listing (copying) 10,000 bindings every poll cost the stand-ins,
        // which share the bench's 2 cores with the controller, a large part of their CPU.
        let ready = kube.count(V2, "AcrPullBinding", is_ready);
        if ready >= n {
            return Ok(ready);
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("only {ready} of {n} bindings Ready after {timeout:?}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// The arrival time of the last successful status write of the controller in `records`.
pub fn last_status_write(records: &[kube_standin::RequestRecord]) -> Option<jiff::Timestamp> {
    records
        .iter()
        .filter(|r| {
            is_controller(r)
                && r.resource == "acrpullbindings"
                && r.subresource == "status"
                && is_write(&r.verb)
                && (200..300).contains(&r.status)
        })
        .filter_map(|r| parse_ts(&r.timestamp))
        .max()
}

/// Wait until the controller has made no API write for `quiet`; returns how long it took.
pub async fn wait_quiet(
    kube: &kube_standin::Handle,
    quiet: Duration,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let mut seen = count_writes(kube);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = count_writes(kube);
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("the controller kept writing for {timeout:?}");
        }
    }
}

fn count_writes(kube: &kube_standin::Handle) -> usize {
    kube.requests()
        .iter()
        .filter(|r| is_controller(r) && is_write(&r.verb))
        .count()
}

/// Calls per whole second over `[start, start + secs)`; returns (peak, mean, total).
pub fn per_second(
    records: &[azure_standin::RequestRecord],
    start: jiff::Timestamp,
    secs: u64,
) -> (u64, f64, u64) {
    let mut buckets = vec![0u64; secs.max(1) as usize];
    let mut total = 0;
    for r in records {
        let offset = r.timestamp.duration_since(start).as_secs_f64();
        if offset >= 0.0 && (offset as u64) < secs {
            buckets[offset as usize] += 1;
            total += 1;
        }
    }
    let peak = buckets.iter().copied().max().unwrap_or(0);
    let mean = total as f64 / secs.max(1) as f64;
    (peak, mean, total)
}

/// Median of a non-empty list (the mean of the middle two for even lengths).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn writes_and_conflicts_are_counted_for_the_controller_only() {
        let rec = |verb: &str, resource: &str, sub: &str, status: u16, ua: &str| {
            kube_standin::RequestRecord {
                verb: verb.into(),
                resource: resource.into(),
                subresource: sub.into(),
                status,
                user_agent: ua.into(),
                ..Default::default()
            }
        };
        let log = vec![
            rec("patch", "serviceaccounts", "", 409, "acrpull/0.1.0 (x)"),
            rec("create", "events", "", 201, "acrpull/0.1.0 (x)"),
            rec("list", "secrets", "", 200, "acrpull/0.1.0 (x)"),
            rec("patch", "secrets", "", 200, "kubectl/1.32"),
        ];
        let s = api_stats(&log);
        assert_eq!((s.requests, s.writes, s.writes_excluding_events), (3, 2, 1));
        assert_eq!(s.conflicts_409, 1);
    }
}
