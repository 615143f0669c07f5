//! Fault injection: rules scoped by hop, host and identity, fired by a trigger (always,
//! probability, the nth request, the next N, a time window), producing an error answer,
//! latency, a hang or a dropped connection.
//!
//! This module only decides *whether* and *which* fault applies; each hop shapes the error
//! body in its own wire format.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Latency;
use crate::log::{lock, Hop};

/// When a rule fires, counted over the requests that match its scope.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Every matching request.
    #[default]
    Always,
    /// Each matching request with probability `p` (0.0..=1.0).
    Probability { p: f64 },
    /// Only the `n`-th matching request (1-based) after the rule was added.
    Nth { n: u64 },
    /// The next `n` matching requests.
    NextN { n: u64 },
    /// Matching requests from `after_ms` after the rule was added, for `for_ms` (open-ended
    /// when absent).
    Window {
        #[serde(default)]
        after_ms: u64,
        #[serde(default)]
        for_ms: Option<u64>,
    },
}

/// What happens to a request a rule fires on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// IMDS: 400 `{"error":"invalid_request","error_description":"Identity not found"}`.
    IdentityNotFound,
    /// An answer with this status and the hop's usual error body (404 and 410 on IMDS mean
    /// "IMDS is updating"; 5xx a transient server error).
    Status {
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// 429. `json: false` answers with a non-JSON body like the Azure front door's.
    Throttle {
        #[serde(default = "yes")]
        json: bool,
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// A literal answer.
    Custom {
        status: u16,
        #[serde(default)]
        body: String,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Adds latency, then the request proceeds (other rules may still apply).
    Latency {
        #[serde(default)]
        fixed_ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Never answers (until the client gives up or the stand-in shuts down).
    Hang,
    /// Drops the connection without an answer. A rule with a `host` and no `hop` also drops
    /// new TLS connections for that host right after the ClientHello ("registry down").
    Reset,
}

fn yes() -> bool {
    true
}

/// A fault rule. `hop`, `host` and `identity` narrow its scope; absent means "any".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Assigned when the rule is added.
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub hop: Option<Hop>,
    /// Request host (registry or Entra host; `imds` hops match their Host header too).
    #[serde(default)]
    pub host: Option<String>,
    /// Identity name, client id, object id or resource id.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub trigger: Trigger,
    pub action: FaultAction,
}

impl FaultRule {
    pub fn new(action: FaultAction) -> Self {
        Self {
            id: 0,
            hop: None,
            host: None,
            identity: None,
            trigger: Trigger::Always,
            action,
        }
    }

    pub fn hop(mut self, hop: Hop) -> Self {
        self.hop = Some(hop);
        self
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }
}

/// Who and what a request is about, for scoping.
#[derive(Debug, Clone, Default)]
pub struct FaultScope<'a> {
    pub hop: Option<Hop>,
    pub host: &'a str,
    /// Every key the request's identity is known by (name, client id, object id, ...).
    pub identity_keys: Vec<String>,
}

/// The outcome of evaluating the rules for one request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    pub delay: Duration,
    /// First terminal action that fired, with its rule id.
    pub action: Option<(u64, FaultAction)>,
    /// Id of the first rule that fired (latency or terminal), for the log.
    pub fired: Option<u64>,
}

#[derive(Debug)]
struct RuleState {
    rule: FaultRule,
    added: Instant,
    matched: u64,
}

/// The active rules.
#[derive(Debug, Default)]
pub struct FaultSet {
    rules: Mutex<(u64, Vec<RuleState>)>,
}

impl FaultSet {
    /// Adds a rule and returns its id.
    pub fn add(&self, mut rule: FaultRule) -> u64 {
        let mut guard = lock(&self.rules);
        guard.0 += 1;
        rule.id = guard.0;
        let id = rule.id;
        guard.1.push(RuleState {
            rule,
            added: Instant::now(),
            matched: 0,
        });
        id
    }

    /// Removes one rule; returns whether it existed.
    pub fn remove(&self, id: u64) -> bool {
        let mut guard = lock(&self.rules);
        let before = guard.1.len();
        guard.1.retain(|r| r.rule.id != id);
        guard.1.len() != before
    }

    pub fn clear(&self) {
        lock(&self.rules).1.clear();
    }

    pub fn list(&self) -> Vec<FaultRule> {
        lock(&self.rules).1.iter().map(|r| r.rule.clone()).collect()
    }

    /// Evaluates every rule in insertion order for a request.
    pub fn evaluate(&self, scope: &FaultScope<'_>) -> Decision {
        let mut decision = Decision::default();
        let mut guard = lock(&self.rules);
        for state in guard.1.iter_mut() {
            if !in_scope(&state.rule, scope) {
                continue;
            }
            // Every in-scope request counts for every rule, so "the nth request" means the nth
            // request of that scope even when another rule answered an earlier one.
            state.matched += 1;
            let terminal = !matches!(state.rule.action, FaultAction::Latency { .. });
            if (terminal && decision.action.is_some())
                || !fires(&state.rule.trigger, state.matched, state.added)
            {
                continue;
            }
            decision.fired.get_or_insert(state.rule.id);
            match &state.rule.action {
                FaultAction::Latency {
                    fixed_ms,
                    jitter_ms,
                } => {
                    decision.delay += Latency {
                        fixed_ms: *fixed_ms,
                        jitter_ms: *jitter_ms,
                    }
                    .sample();
                }
                other => decision.action = Some((state.rule.id, other.clone())),
            }
        }
        decision
    }

    /// Whether a new connection for `host` (TLS SNI) must be dropped: a `Reset` rule scoped to
    /// that host and to no particular hop fires.
    pub fn drop_connection(&self, host: &str) -> Option<u64> {
        let mut guard = lock(&self.rules);
        for state in guard.1.iter_mut() {
            let rule = &state.rule;
            let host_matches = rule
                .host
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(host));
            if rule.action != FaultAction::Reset || rule.hop.is_some() || !host_matches {
                continue;
            }
            state.matched += 1;
            if fires(&state.rule.trigger, state.matched, state.added) {
                return Some(state.rule.id);
            }
        }
        None
    }
}

fn in_scope(rule: &FaultRule, scope: &FaultScope<'_>) -> bool {
    if let Some(hop) = rule.hop {
        if scope.hop != Some(hop) {
            return false;
        }
    }
    if let Some(host) = &rule.host {
        if !host.eq_ignore_ascii_case(scope.host) {
            return false;
        }
    }
    if let Some(identity) = &rule.identity {
        if !scope
            .identity_keys
            .iter()
            .any(|k| k.eq_ignore_ascii_case(identity))
        {
            return false;
        }
    }
    true
}

fn fires(trigger: &Trigger, matched: u64, added: Instant) -> bool {
    match trigger {
        Trigger::Always => true,
        // NaN never fires instead of panicking in `random_bool`.
        Trigger::Probability { p } => p.is_finite() && rand::random_bool(p.clamp(0.0, 1.0)),
        Trigger::Nth { n } => matched == *n,
        Trigger::NextN { n } => matched <= *n,
        Trigger::Window { after_ms, for_ms } => {
            let elapsed = added.elapsed().as_millis() as u64;
            elapsed >= *after_ms && for_ms.is_none_or(|f| elapsed < after_ms.saturating_add(f))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(hop: Hop, host: &str, ids: &[&str]) -> FaultScope<'static> {
        FaultScope {
            hop: Some(hop),
            host: Box::leak(host.to_owned().into_boxed_str()),
            identity_keys: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn nth_and_next_n_count_only_matching_requests() {
        let set = FaultSet::default();
        let nth = set.add(
            FaultRule::new(FaultAction::Status {
                status: 500,
                retry_after_secs: None,
            })
            .hop(Hop::Imds)
            .trigger(Trigger::Nth { n: 2 }),
        );
        let other = scope(Hop::AcrToken, "x", &[]);
        let imds = scope(Hop::Imds, "x", &[]);
        assert_eq!(set.evaluate(&other).action, None);
        assert_eq!(set.evaluate(&imds).action, None);
        assert_eq!(set.evaluate(&imds).action.map(|a| a.0), Some(nth));
        assert_eq!(set.evaluate(&imds).action, None);

        set.clear();
        set.add(FaultRule::new(FaultAction::Hang).trigger(Trigger::NextN { n: 2 }));
        assert!(set.evaluate(&imds).action.is_some());
        assert!(set.evaluate(&imds).action.is_some());
        assert!(set.evaluate(&imds).action.is_none());
    }

    #[test]
    fn identity_and_host_scope() {
        let set = FaultSet::default();
        set.add(
            FaultRule::new(FaultAction::IdentityNotFound)
                .identity("mi-a")
                .host("demo.azurecr.io"),
        );
        assert!(set
            .evaluate(&scope(Hop::V2, "demo.azurecr.io", &["mi-b"]))
            .action
            .is_none());
        assert!(set
            .evaluate(&scope(Hop::V2, "other.azurecr.io", &["mi-a"]))
            .action
            .is_none());
        assert!(set
            .evaluate(&scope(Hop::V2, "DEMO.azurecr.io", &["client", "mi-a"]))
            .action
            .is_some());
    }

    #[test]
    fn latency_accumulates_and_terminal_wins_first() {
        let set = FaultSet::default();
        set.add(FaultRule::new(FaultAction::Latency {
            fixed_ms: 5,
            jitter_ms: 0,
        }));
        let first = set.add(FaultRule::new(FaultAction::Hang));
        set.add(FaultRule::new(FaultAction::Reset));
        let d = set.evaluate(&scope(Hop::Imds, "h", &[]));
        assert_eq!(d.delay, Duration::from_millis(5));
        assert_eq!(d.action, Some((first, FaultAction::Hang)));
    }

    #[test]
    fn connection_drop_needs_host_scoped_reset_without_hop() {
        let set = FaultSet::default();
        set.add(
            FaultRule::new(FaultAction::Reset)
                .hop(Hop::V2)
                .host("a.azurecr.io"),
        );
        assert_eq!(set.drop_connection("a.azurecr.io"), None);
        let id = set.add(FaultRule::new(FaultAction::Reset).host("a.azurecr.io"));
        assert_eq!(set.drop_connection("A.azurecr.io"), Some(id));
        assert_eq!(set.drop_connection("b.azurecr.io"), None);
        assert!(set.remove(id));
        assert_eq!(set.drop_connection("a.azurecr.io"), None);
    }

    #[test]
    fn window_opens_after_delay() {
        let set = FaultSet::default();
        set.add(FaultRule::new(FaultAction::Hang).trigger(Trigger::Window {
            after_ms: 60_000,
            for_ms: None,
        }));
        assert!(set.evaluate(&scope(Hop::Imds, "h", &[])).action.is_none());
    }

    #[test]
    fn nan_probability_never_fires() {
        let set = FaultSet::default();
        set.add(FaultRule::new(FaultAction::Hang).trigger(Trigger::Probability { p: f64::NAN }));
        assert!(set.evaluate(&scope(Hop::Imds, "h", &[])).action.is_none());
    }

    #[test]
    fn rules_parse_from_json() {
        let rule: FaultRule = serde_json::from_str(
            r#"{"hop":"acr_exchange","host":"demo.azurecr.io",
                "trigger":{"kind":"next_n","n":3},
                "action":{"kind":"throttle","json":false,"retry_after_secs":2}}"#,
        )
        .unwrap();
        assert_eq!(
            rule.action,
            FaultAction::Throttle {
                json: false,
                retry_after_secs: Some(2)
            }
        );
    }
}
