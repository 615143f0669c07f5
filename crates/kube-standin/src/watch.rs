//! Watch streams: chunked JSON lines fed from the store's change broadcast.
//!
//! A watch starts from current state (synthetic ADDED), from the watch cache (replay after a
//! resourceVersion) or with `sendInitialEvents` (ADDED for everything, then the
//! `k8s.io/initial-events-end` bookmark). Live changes are filtered by namespace and selectors,
//! with selector transitions turned into ADDED/DELETED. A consumer that falls behind the
//! broadcast buffer has its stream closed, as the real watch cache does. Watch faults (close
//! after N events, stall, dropped or duplicated events) are applied here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selector::Selectors;
use crate::store::{Change, EventType, Store, WatchStart};

/// Per-watch faults.
#[derive(Debug, Clone, Default)]
pub struct WatchFaults {
    /// Close after this many events.
    pub close_after_events: Option<u64>,
    /// Close after this long.
    pub close_after: Option<Duration>,
    /// Send nothing, ever.
    pub stall: bool,
    /// Drop the next n events (for an object name, or any).
    pub drop: Option<(Option<String>, u64)>,
    /// Duplicate the next n events (for an object name, or any).
    pub duplicate: Option<(Option<String>, u64)>,
    /// Answer a 410 ERROR event and close.
    pub gone: bool,
}

/// Everything a watch needs.
pub struct WatchParams {
    /// The type.
    pub rt: Arc<ResourceType>,
    /// Requested version (for apiVersion rewriting).
    pub version: String,
    /// Namespace, or all.
    pub namespace: Option<String>,
    /// Selectors.
    pub selectors: Selectors,
    /// Send BOOKMARK events.
    pub bookmarks: bool,
    /// Bookmark interval.
    pub bookmark_interval: Duration,
    /// End of the stream.
    pub timeout: Duration,
    /// Faults for this watch.
    pub faults: WatchFaults,
    /// Send the initial-events-end bookmark after the initial ADDED events.
    pub initial_events_end: bool,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Rewrite the stored object's apiVersion to the requested version.
pub fn present(rt: &ResourceType, version: &str, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(rt.api_version(version));
    obj
}

fn error_line(e: &ApiError) -> Bytes {
    line("ERROR", &e.to_status())
}

struct Emitter {
    tx: mpsc::Sender<Bytes>,
    faults: WatchFaults,
    sent: u64,
}

impl Emitter {
    /// Send one event, applying drop/duplicate faults; false when the stream must end.
    async fn event(&mut self, kind: &str, obj: &Value) -> bool {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let hits = |f: &Option<(Option<String>, u64)>| {
            f.as_ref()
                .is_some_and(|(n, c)| *c > 0 && n.as_deref().is_none_or(|n| n == name))
        };
        if hits(&self.faults.drop) {
            if let Some((_, c)) = self.faults.drop.as_mut() {
                *c -= 1;
            }
            return true;
        }
        let copies = if hits(&self.faults.duplicate) {
            if let Some((_, c)) = self.faults.duplicate.as_mut() {
                *c -= 1;
            }
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.tx.send(line(kind, obj)).await.is_err() {
                return false;
            }
            self.sent += 1;
            if self
                .faults
                .close_after_events
                .is_some_and(|n| self.sent >= n)
            {
                return false;
            }
        }
        true
    }
}

fn transition(c: &Change, ns: Option<&str>, sel: &Selectors) -> Option<(&'static str, Value)> {
    if ns.is_some_and(|n| n != c.namespace) {
        return None;
    }
    match c.kind {
        EventType::Added => sel.matches(&c.object).then(|| ("ADDED", c.object.clone())),
        EventType::Deleted => {
            let was = c.prev.as_ref().unwrap_or(&c.object);
            sel.matches(was).then(|| ("DELETED", c.object.clone()))
        }
        EventType::Modified => {
            let was = c.prev.as_ref().is_some_and(|p| sel.matches(p));
            let is = sel.matches(&c.object);
            match (was, is) {
                (true, true) => Some(("MODIFIED", c.object.clone())),
                (false, true) => Some(("ADDED", c.object.clone())),
                (true, false) => Some(("DELETED", c.object.clone())),
                (false, false) => None,
            }
        }
    }
}

/// Spawn the task that produces the stream; returns the receiving end of its lines.
pub fn spawn(store: Arc<Store>, p: WatchParams, start: WatchStart) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(run(store, p, start, tx));
    rx
}

async fn run(store: Arc<Store>, p: WatchParams, start: WatchStart, tx: mpsc::Sender<Bytes>) {
    let WatchStart {
        initial,
        replay,
        mut rx,
        start_rv,
        expired,
    } = start;
    let rt = p.rt.clone();
    let ns = p.namespace.as_deref();
    let mut em = Emitter {
        tx: tx.clone(),
        faults: p.faults.clone(),
        sent: 0,
    };
    if p.faults.gone {
        let _ = tx
            .send(error_line(&ApiError::expired(format!(
                "too old resource version: {start_rv}"
            ))))
            .await;
        return;
    }
    if let Some(e) = expired {
        let _ = tx.send(error_line(&e)).await;
        return;
    }
    if p.faults.stall {
        tx.closed().await;
        return;
    }
    let started = tokio::time::Instant::now();
    let deadline = started + p.faults.close_after.unwrap_or(p.timeout).min(p.timeout);
    let body = async {
        for o in initial {
            if !em.event("ADDED", &present(&rt, &p.version, o)).await {
                return;
            }
        }
        if p.initial_events_end {
            let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(&p.version),
                "metadata": {"resourceVersion": start_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(line("BOOKMARK", &bm)).await.is_err() {
                return;
            }
        }
        for c in replay {
            if c.group != rt.group || c.plural != rt.plural {
                continue;
            }
            if let Some((k, o)) = transition(&c, ns, &p.selectors) {
                if !em.event(k, &present(&rt, &p.version, o)).await {
                    return;
                }
            }
        }
        let mut tick = tokio::time::interval(p.bookmark_interval.max(Duration::from_millis(10)));
        tick.tick().await;
        let mut last_rv = start_rv;
        // As the watch cache does: one more bookmark shortly before the client's timeout, so
        // the client resumes from an RV as recent as possible.
        let pre_timeout =
            tokio::time::sleep_until(started + p.timeout - pre_timeout_offset(p.timeout));
        tokio::pin!(pre_timeout);
        let mut pre_timeout_sent = false;
        loop {
            let bookmark_due = tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick(), if p.bookmarks => true,
                _ = &mut pre_timeout, if p.bookmarks && !pre_timeout_sent => {
                    pre_timeout_sent = true;
                    true
                }
                r = rx.recv() => match r {
                    Ok(c) => {
                        last_rv = last_rv.max(c.rv);
                        if c.group != rt.group || c.plural != rt.plural {
                            continue;
                        }
                        if let Some((k, o)) = transition(&c, ns, &p.selectors) {
                            if !em.event(k, &present(&rt, &p.version, o)).await {
                                return;
                            }
                        }
                        false
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            };
            if bookmark_due {
                // Every change up to the store's RV has been pulled from the channel when
                // the channel is empty after reading it, so that RV is safe to resume from.
                let rv = store.current_rv();
                if rx.is_empty() {
                    last_rv = last_rv.max(rv);
                }
                let bm = json!({"kind": rt.kind, "apiVersion": rt.api_version(&p.version), "metadata": {"resourceVersion": last_rv.to_string()}});
                if tx.send(line("BOOKMARK", &bm)).await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, body).await;
}

/// How long before the client's timeout the last bookmark goes out: 2 s, as in the real
/// watch cache, or half the timeout for timeouts under 4 s (the real cache sends none then;
/// tests with second-scale timeouts would never see it).
pub fn pre_timeout_offset(timeout: Duration) -> Duration {
    (timeout / 2).min(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::LabelSelector;

    #[test]
    fn pre_timeout_bookmark_offset() {
        assert_eq!(
            pre_timeout_offset(Duration::from_secs(290)),
            Duration::from_secs(2)
        );
        assert_eq!(
            pre_timeout_offset(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(
            pre_timeout_offset(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn selector_transitions() {
        let sel = Selectors {
            label: LabelSelector::parse("app=x").unwrap(),
            ..Default::default()
        };
        let mk = |l: &str| json!({"metadata": {"name": "a", "labels": {"app": l}}});
        let c = Change {
            rv: 2,
            kind: EventType::Modified,
            group: String::new(),
            plural: "configmaps".into(),
            namespace: "n".into(),
            name: "a".into(),
            object: mk("y"),
            prev: Some(mk("x")),
        };
        assert_eq!(transition(&c, None, &sel).unwrap().0, "DELETED");
        let c2 = Change {
            object: mk("x"),
            prev: Some(mk("y")),
            ..c.clone()
        };
        assert_eq!(transition(&c2, None, &sel).unwrap().0, "ADDED");
        assert!(transition(&c2, Some("other"), &sel).is_none());
    }
}
