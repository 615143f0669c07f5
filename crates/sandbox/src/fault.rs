//! `--fault SPEC`: Azure faults from the command line, mapped onto the azure stand-in's
//! [`FaultRule`]s.
//!
//! A SPEC is a comma-separated list of `key=value` pairs and bare words, e.g.
//! `hop=acr_token,status=429,retry-after=5,for=30s` or `registry=demo.azurecr.io,down,for=60s`.
//!
//! * scope: `hop=<imds|entra_discovery|entra_token|acr_exchange|acr_token|acr_token_get|v2>`,
//!   `registry=HOST` (or `host=HOST`), `identity=NAME|CLIENT_ID|RESOURCE_ID`
//! * action (exactly one): `status=CODE` (with optional `retry-after=SECS`), `throttle`
//!   (429, optional `retry-after`), `down` (drop every connection to the host: needs
//!   `registry=` and no `hop=`), `reset`, `hang`, `identity-not-found`, `latency=DURATION`
//! * trigger (at most one kind; default: always): `for=DURATION` and/or `after=DURATION` (a
//!   time window from start), `next=N`, `nth=N`, `p=PROBABILITY`
//!
//! Durations are `500ms`, `30s`, `2m` or bare seconds.

use azure_standin::{FaultAction, FaultRule, Hop, Trigger};

/// A SPEC that does not parse; the message says which part and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultSpecError {
    #[error("unknown part {0:?} (see --help for the SPEC syntax)")]
    UnknownPart(String),
    #[error("bad value for {key}: {value:?} ({why})")]
    BadValue {
        key: String,
        value: String,
        why: String,
    },
    #[error("no action: give one of status=CODE, throttle, down, reset, hang, identity-not-found, latency=DURATION")]
    NoAction,
    #[error("more than one action: {0} and {1}")]
    TwoActions(String, String),
    #[error("more than one kind of trigger (for/after, next, nth, p)")]
    TwoTriggers,
    #[error("`down` drops connections to a host: it needs registry=HOST and no hop=")]
    DownNeedsHost,
    #[error("retry-after only goes with status= or throttle")]
    StrayRetryAfter,
}

fn bad(key: &str, value: &str, why: impl Into<String>) -> FaultSpecError {
    FaultSpecError::BadValue {
        key: key.into(),
        value: value.into(),
        why: why.into(),
    }
}

/// `500ms`, `30s`, `2m`, `1h` or bare seconds, in milliseconds.
pub fn parse_duration_ms(key: &str, value: &str) -> Result<u64, FaultSpecError> {
    let v = value.trim();
    let (digits, scale) = if let Some(d) = v.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = v.strip_suffix('s') {
        (d, 1_000)
    } else if let Some(d) = v.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = v.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        (v, 1_000)
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| bad(key, value, "expected e.g. 500ms, 30s, 2m"))
}

fn parse_hop(value: &str) -> Result<Hop, FaultSpecError> {
    let wanted = value.trim().replace('-', "_").to_ascii_lowercase();
    Hop::ALL
        .into_iter()
        .find(|h| h.as_str() == wanted)
        .ok_or_else(|| {
            let names: Vec<&str> = Hop::ALL.iter().map(|h| h.as_str()).collect();
            bad("hop", value, format!("one of {}", names.join(", ")))
        })
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, FaultSpecError> {
    value
        .trim()
        .parse()
        .map_err(|_| bad(key, value, "expected a number"))
}

/// Parses one SPEC.
pub fn parse(spec: &str) -> Result<FaultRule, FaultSpecError> {
    let mut hop = None;
    let mut host = None;
    let mut identity = None;
    let mut action: Option<(String, FaultAction)> = None;
    let mut retry_after = None;
    let mut window: Option<(u64, Option<u64>)> = None;
    let mut other_trigger: Option<Trigger> = None;

    let mut set_action = |name: &str, a: FaultAction| -> Result<(), FaultSpecError> {
        if let Some((prev, _)) = &action {
            return Err(FaultSpecError::TwoActions(prev.clone(), name.into()));
        }
        action = Some((name.into(), a));
        Ok(())
    };
    let mut set_trigger = |t: Trigger| -> Result<(), FaultSpecError> {
        if other_trigger.is_some() {
            return Err(FaultSpecError::TwoTriggers);
        }
        other_trigger = Some(t);
        Ok(())
    };

    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (part.to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            ("hop", Some(v)) => hop = Some(parse_hop(v)?),
            ("registry" | "host", Some(v)) if !v.is_empty() => host = Some(v.to_string()),
            ("identity", Some(v)) if !v.is_empty() => identity = Some(v.to_string()),
            ("status", Some(v)) => {
                let status: u16 = number("status", v)?;
                if !(100..=599).contains(&status) {
                    return Err(bad("status", v, "an HTTP status code"));
                }
                set_action(
                    part,
                    FaultAction::Status {
                        status,
                        retry_after_secs: None,
                    },
                )?
            }
            ("retry-after" | "retry_after", Some(v)) => {
                retry_after = Some(parse_duration_ms("retry-after", v)? / 1000)
            }
            ("latency", Some(v)) => set_action(
                part,
                FaultAction::Latency {
                    fixed_ms: parse_duration_ms("latency", v)?,
                    jitter_ms: 0,
                },
            )?,
            ("throttle", None) => set_action(
                part,
                FaultAction::Throttle {
                    json: true,
                    retry_after_secs: None,
                },
            )?,
            ("down", None) => set_action("down", FaultAction::Reset)?,
            ("reset", None) => set_action("reset", FaultAction::Reset)?,
            ("hang", None) => set_action("hang", FaultAction::Hang)?,
            ("identity-not-found" | "identity_not_found", None) => {
                set_action(part, FaultAction::IdentityNotFound)?
            }
            ("for", Some(v)) => {
                let w = window.get_or_insert((0, None));
                w.1 = Some(parse_duration_ms("for", v)?);
            }
            ("after", Some(v)) => {
                let w = window.get_or_insert((0, None));
                w.0 = parse_duration_ms("after", v)?;
            }
            ("next", Some(v)) => set_trigger(Trigger::NextN {
                n: number("next", v)?,
            })?,
            ("nth", Some(v)) => set_trigger(Trigger::Nth {
                n: number("nth", v)?,
            })?,
            ("p", Some(v)) => {
                let p: f64 = number("p", v)?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(bad("p", v, "a probability between 0 and 1"));
                }
                set_trigger(Trigger::Probability { p })?
            }
            _ => return Err(FaultSpecError::UnknownPart(part.to_string())),
        }
    }

    let (name, mut action) = action.ok_or(FaultSpecError::NoAction)?;
    if name == "down" && (host.is_none() || hop.is_some()) {
        return Err(FaultSpecError::DownNeedsHost);
    }
    if let Some(secs) = retry_after {
        match &mut action {
            FaultAction::Status {
                retry_after_secs, ..
            }
            | FaultAction::Throttle {
                retry_after_secs, ..
            } => *retry_after_secs = Some(secs),
            _ => return Err(FaultSpecError::StrayRetryAfter),
        }
    }
    let trigger = match (window, other_trigger) {
        (Some(_), Some(_)) => return Err(FaultSpecError::TwoTriggers),
        (Some((after_ms, for_ms)), None) => Trigger::Window { after_ms, for_ms },
        (None, Some(t)) => t,
        (None, None) => Trigger::Always,
    };
    let mut rule = FaultRule::new(action).trigger(trigger);
    rule.hop = hop;
    rule.host = host;
    rule.identity = identity;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_with_retry_after_in_a_window() {
        let r = parse("hop=acr_token,status=429,retry-after=5,for=30s").unwrap();
        assert_eq!(r.hop, Some(Hop::AcrToken));
        assert_eq!(
            r.action,
            FaultAction::Status {
                status: 429,
                retry_after_secs: Some(5)
            }
        );
        assert_eq!(
            r.trigger,
            Trigger::Window {
                after_ms: 0,
                for_ms: Some(30_000)
            }
        );
    }

    #[test]
    fn registry_down_drops_connections_for_a_while() {
        let r = parse("registry=demo.azurecr.io,down,for=60s").unwrap();
        assert_eq!(r.host.as_deref(), Some("demo.azurecr.io"));
        assert_eq!(r.hop, None, "a hop would stop the connection-level drop");
        assert_eq!(r.action, FaultAction::Reset);
        assert_eq!(
            r.trigger,
            Trigger::Window {
                after_ms: 0,
                for_ms: Some(60_000)
            }
        );
        assert_eq!(parse("down"), Err(FaultSpecError::DownNeedsHost));
        assert_eq!(
            parse("registry=x.azurecr.io,hop=v2,down"),
            Err(FaultSpecError::DownNeedsHost)
        );
    }

    #[test]
    fn other_actions_and_triggers() {
        let r = parse("hop=imds,identity=mi-demo,identity-not-found,next=3").unwrap();
        assert_eq!(r.identity.as_deref(), Some("mi-demo"));
        assert_eq!(r.action, FaultAction::IdentityNotFound);
        assert_eq!(r.trigger, Trigger::NextN { n: 3 });
        let r = parse("hop=entra-token,latency=1500ms,after=2m").unwrap();
        assert_eq!(r.hop, Some(Hop::EntraToken));
        assert_eq!(
            r.action,
            FaultAction::Latency {
                fixed_ms: 1500,
                jitter_ms: 0
            }
        );
        assert_eq!(
            r.trigger,
            Trigger::Window {
                after_ms: 120_000,
                for_ms: None
            }
        );
        assert_eq!(parse("hang").unwrap().trigger, Trigger::Always);
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse("hop=acr_token"), Err(FaultSpecError::NoAction));
        assert!(matches!(
            parse("hop=nope,hang"),
            Err(FaultSpecError::BadValue { .. })
        ));
        assert!(matches!(
            parse("status=429,hang"),
            Err(FaultSpecError::TwoActions(..))
        ));
        assert_eq!(
            parse("hang,for=1s,next=2"),
            Err(FaultSpecError::TwoTriggers)
        );
        assert_eq!(
            parse("hang,retry-after=3"),
            Err(FaultSpecError::StrayRetryAfter)
        );
        assert!(matches!(
            parse("hang,for=soon"),
            Err(FaultSpecError::BadValue { .. })
        ));
        assert!(matches!(
            parse("hang,frobnicate"),
            Err(FaultSpecError::UnknownPart(_))
        ));
        assert!(matches!(
            parse("status=99"),
            Err(FaultSpecError::BadValue { .. })
        ));
    }
}
