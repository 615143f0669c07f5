//! Fault injection: what can go wrong (an [`Action`]), for which requests (a [`Matcher`]) and
//! when (a [`Trigger`]). The server consults [`Faults::evaluate`] for every API request; the
//! same faults are settable from Rust and from `PUT /_standin/faults` as JSON.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which requests a fault applies to; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Matcher {
    /// Verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`); empty matches any.
    pub verbs: Vec<String>,
    /// Resource plural (`leases`).
    pub resource: Option<String>,
    /// API group (`""` for core).
    pub group: Option<String>,
    /// Namespace.
    pub namespace: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// Subresource; `""` matches only the main resource.
    pub subresource: Option<String>,
    /// Substring of the `User-Agent` header.
    pub user_agent: Option<String>,
}

/// When a matching request triggers the fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// Every matching request.
    #[default]
    Always,
    /// Each matching request with this probability.
    Probability(f64),
    /// Only the nth matching request (1-based).
    Nth(u64),
    /// The next n matching requests.
    NextN(u64),
    /// Matching requests within a time window after the fault was added.
    #[serde(rename_all = "camelCase")]
    Window {
        /// Start, ms after installation.
        start_ms: u64,
        /// Length in ms.
        duration_ms: u64,
    },
}

fn default_500() -> u16 {
    500
}

fn default_one() -> u64 {
    1
}

/// What happens to a triggered request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    /// Delay the answer by `ms` plus up to `jitter_ms`.
    Latency {
        /// Fixed delay.
        ms: u64,
        /// Random extra delay, at most this.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Accept the request and never answer.
    Hang,
    /// Close the connection without an answer (connection reset).
    Reset,
    /// Answer an error `Status` (500, 429 with `retry_after`, 503, 401, 403, 404, ...).
    /// On a watch, code 410 is sent the way a real server does it: HTTP 200 and an
    /// `ERROR` event with an `Expired` Status.
    Error {
        /// HTTP code.
        code: u16,
        /// Message; a conventional one by default.
        #[serde(default)]
        message: Option<String>,
        /// `Retry-After` seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Answer 409 Conflict with the real stale-resourceVersion message.
    Conflict,
    /// Before the request is served, another writer updates the target object (an annotation
    /// `kube-standin/concurrent-writer`), so its resourceVersion really moves.
    ConcurrentWriter,
    /// Commit the write, then answer an error (or reset the connection).
    Ambiguous {
        /// Code to answer.
        #[serde(default = "default_500")]
        code: u16,
        /// Reset the connection instead of answering.
        #[serde(default)]
        reset: bool,
    },
    /// Close a watch after `events` events and/or `ms` milliseconds.
    WatchCloseAfter {
        /// Events to send before closing.
        #[serde(default)]
        events: Option<u64>,
        /// Time before closing.
        #[serde(default)]
        ms: Option<u64>,
    },
    /// Keep the watch open but send nothing (no events, no bookmarks).
    WatchStall,
    /// Drop the next `count` events (for `object_name`, or any object) on the watch.
    DropEvents {
        /// Only events for this object name.
        #[serde(default)]
        object_name: Option<String>,
        /// How many.
        #[serde(default = "default_one")]
        count: u64,
    },
    /// Send the next `count` events (for `object_name`, or any) twice.
    DuplicateEvents {
        /// Only events for this object name.
        #[serde(default)]
        object_name: Option<String>,
        /// How many.
        #[serde(default = "default_one")]
        count: u64,
    },
    /// Before the request is served, another identity takes the Lease it targets.
    LeaseTakeover {
        /// The new `holderIdentity`.
        holder: String,
    },
    /// TokenRequests get this lifetime instead of the requested one.
    TokenExpiry {
        /// Seconds.
        seconds: i64,
    },
}

/// A fault: action, matcher, trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Identifier; assigned when empty.
    #[serde(default)]
    pub id: String,
    /// Which requests.
    #[serde(default, rename = "match")]
    pub matcher: Matcher,
    /// When.
    #[serde(default)]
    pub trigger: Trigger,
    /// What.
    pub action: Action,
}

impl Fault {
    /// A fault with the given action for every request.
    pub fn new(action: Action) -> Self {
        Fault {
            id: String::new(),
            matcher: Matcher::default(),
            trigger: Trigger::Always,
            action,
        }
    }
    /// Set the id.
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_string();
        self
    }
    /// Add a verb.
    pub fn verb(mut self, verb: &str) -> Self {
        self.matcher.verbs.push(verb.to_string());
        self
    }
    /// Match a resource plural.
    pub fn resource(mut self, r: &str) -> Self {
        self.matcher.resource = Some(r.to_string());
        self
    }
    /// Match an API group.
    pub fn group(mut self, g: &str) -> Self {
        self.matcher.group = Some(g.to_string());
        self
    }
    /// Match a namespace.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.matcher.namespace = Some(ns.to_string());
        self
    }
    /// Match an object name.
    pub fn name(mut self, n: &str) -> Self {
        self.matcher.name = Some(n.to_string());
        self
    }
    /// Match a subresource (`""` = main resource only).
    pub fn subresource(mut self, s: &str) -> Self {
        self.matcher.subresource = Some(s.to_string());
        self
    }
    /// Match a user-agent substring.
    pub fn user_agent(mut self, ua: &str) -> Self {
        self.matcher.user_agent = Some(ua.to_string());
        self
    }
    /// Trigger with a probability.
    pub fn probability(mut self, p: f64) -> Self {
        self.trigger = Trigger::Probability(p);
        self
    }
    /// Trigger on the nth matching request only.
    pub fn nth(mut self, n: u64) -> Self {
        self.trigger = Trigger::Nth(n);
        self
    }
    /// Trigger on the next n matching requests.
    pub fn next(mut self, n: u64) -> Self {
        self.trigger = Trigger::NextN(n);
        self
    }
    /// Trigger within a window after installation.
    pub fn window(mut self, start: Duration, duration: Duration) -> Self {
        self.trigger = Trigger::Window {
            start_ms: start.as_millis() as u64,
            duration_ms: duration.as_millis() as u64,
        };
        self
    }
}

/// What the server knows about a request when evaluating faults.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// Verb.
    pub verb: String,
    /// Group.
    pub group: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// User agent.
    pub user_agent: String,
}

impl Matcher {
    fn matches(&self, r: &RequestFacts) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        (self.verbs.is_empty() || self.verbs.contains(&r.verb))
            && eq(&self.resource, &r.resource)
            && eq(&self.group, &r.group)
            && eq(&self.namespace, &r.namespace)
            && eq(&self.name, &r.name)
            && eq(&self.subresource, &r.subresource)
            && self
                .user_agent
                .as_deref()
                .is_none_or(|ua| r.user_agent.contains(ua))
    }
}

/// An installed fault and its counters.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultStatus {
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
    /// Matching requests seen.
    pub matched: u64,
    /// Times it fired.
    pub fired: u64,
}

struct Installed {
    status: FaultStatus,
    at: Instant,
}

/// The installed faults.
#[derive(Default)]
pub struct Faults {
    list: Mutex<Vec<Installed>>,
    next: AtomicU64,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Installed>> {
        match self.list.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Install a fault; returns its id.
    pub fn add(&self, mut fault: Fault) -> String {
        if fault.id.is_empty() {
            fault.id = format!("f{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        }
        let id = fault.id.clone();
        let mut l = self.lock();
        l.retain(|i| i.status.fault.id != id);
        l.push(Installed {
            status: FaultStatus {
                fault,
                matched: 0,
                fired: 0,
            },
            at: Instant::now(),
        });
        id
    }

    /// Remove a fault by id; whether it existed.
    pub fn remove(&self, id: &str) -> bool {
        let mut l = self.lock();
        let before = l.len();
        l.retain(|i| i.status.fault.id != id);
        l.len() != before
    }

    /// Remove every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Installed faults with counters.
    pub fn list(&self) -> Vec<FaultStatus> {
        self.lock().iter().map(|i| i.status.clone()).collect()
    }

    /// The actions of every fault that fires for this request, in installation order.
    pub fn evaluate(&self, r: &RequestFacts) -> Vec<(String, Action)> {
        let mut out = Vec::new();
        for i in self.lock().iter_mut() {
            if !i.status.fault.matcher.matches(r) {
                continue;
            }
            i.status.matched += 1;
            let n = i.status.matched;
            let fire = match &i.status.fault.trigger {
                Trigger::Always => true,
                Trigger::Probability(p) => rand::random::<f64>() < *p,
                Trigger::Nth(k) => n == *k,
                Trigger::NextN(k) => n <= *k,
                Trigger::Window {
                    start_ms,
                    duration_ms,
                } => {
                    let el = i.at.elapsed().as_millis() as u64;
                    el >= *start_ms && el < start_ms + duration_ms
                }
            };
            if fire {
                i.status.fired += 1;
                out.push((i.status.fault.id.clone(), i.status.fault.action.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(verb: &str) -> RequestFacts {
        RequestFacts {
            verb: verb.into(),
            resource: "leases".into(),
            group: "coordination.k8s.io".into(),
            user_agent: "acrpull/1 replica-a".into(),
            ..Default::default()
        }
    }

    #[test]
    fn triggers() {
        let f = Faults::default();
        f.add(Fault::new(Action::Conflict).verb("update").nth(2).id("a"));
        f.add(Fault::new(Action::Hang).resource("leases").next(1).id("b"));
        let fired = |v| {
            f.evaluate(&req(v))
                .into_iter()
                .map(|x| x.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(fired("update"), vec!["b"]);
        assert_eq!(fired("update"), vec!["a"]);
        assert!(fired("update").is_empty());
        assert!(fired("get").is_empty());
    }

    #[test]
    fn json_shape() {
        let f: Fault = serde_json::from_str(
            r#"{"match": {"verbs": ["get"], "userAgent": "replica-a"}, "trigger": {"nextN": 2},
                "action": {"type": "error", "code": 429, "retryAfter": 1}}"#,
        )
        .unwrap();
        assert_eq!(f.trigger, Trigger::NextN(2));
        assert!(f.matcher.matches(&req("get")));
        let w: Fault = serde_json::from_str(
            r#"{"trigger": {"window": {"startMs": 0, "durationMs": 10}}, "action": {"type": "watchCloseAfter", "events": 2}}"#,
        )
        .unwrap();
        assert!(matches!(
            w.action,
            Action::WatchCloseAfter {
                events: Some(2),
                ..
            }
        ));
    }
}
