//! Leader-election decisions on a `coordination.k8s.io/v1` Lease, following client-go's
//! algorithm: a lease is considered expired `leaseDuration` after this replica last *saw it
//! change* (its own clock, so clock skew between replicas does not matter), a leader that has
//! not renewed within the renew deadline steps down, and every write carries the
//! resourceVersion it was decided on.

use std::time::Duration;

/// The Lease record as far as election cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub lease_duration: Duration,
    pub transitions: i32,
}

/// What to do with the observed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Nobody holds it, it expired, or we hold it: write ourselves as holder
    /// (`new_transition`: the holder changes, so bump `leaseTransitions` and `acquireTime`).
    Take { new_transition: bool },
    /// Someone else holds a live lease: stay a follower. It expires for us at `until` (same
    /// clock as `now`) unless it changes before.
    Follow { holder: String, until: Duration },
}

/// How the last acquire/renew attempt ended, for [`next_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease.
    Led,
    /// Someone else holds it until `until`, on the same clock as `now`.
    Followed { until: Duration, now: Duration },
    /// The API call failed (or timed out).
    Failed,
}

/// Wait after following an expiring lease, past the expiry instant itself.
const PAST_EXPIRY: Duration = Duration::from_millis(20);

/// How long to wait before the next attempt. A leader renews every retry period, as client-go
/// does. A follower also looks every retry period but never sleeps past the moment the lease
/// expires for it, so a dead leader is replaced `leaseDuration` after its last renew was seen
/// rather than up to a retry period later. A failed call is retried after a quarter period:
/// one lost request (an API 500) should not cost a takeover, or a renewal, a whole period.
pub fn next_attempt(after: Attempt, retry_period: Duration) -> Duration {
    match after {
        Attempt::Led => retry_period,
        Attempt::Followed { until, now } => {
            retry_period.min(until.saturating_sub(now) + PAST_EXPIRY)
        }
        Attempt::Failed => (retry_period / 4)
            .max(Duration::from_millis(100))
            .min(retry_period),
    }
}

/// Decide from the record, when we last saw it change (`observed_at`) and `now`
/// (both monotonic instants of this process, as durations since any fixed origin).
pub fn decide(me: &str, record: &LeaseRecord, observed_at: Duration, now: Duration) -> LeaseAction {
    match record.holder.as_deref() {
        Some(h) if h == me => LeaseAction::Take {
            new_transition: false,
        },
        Some(h) if !h.is_empty() && now < observed_at + record.lease_duration => {
            LeaseAction::Follow {
                holder: h.to_string(),
                until: observed_at + record.lease_duration,
            }
        }
        _ => LeaseAction::Take {
            new_transition: true,
        },
    }
}

/// Whether a leader whose last successful renew was at `last_renew` must step down at `now`.
pub fn must_step_down(last_renew: Duration, now: Duration, renew_deadline: Duration) -> bool {
    now >= last_renew + renew_deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: Option<&str>) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_string),
            lease_duration: Duration::from_secs(15),
            transitions: 3,
        }
    }

    #[test]
    fn table() {
        let s = Duration::from_secs;
        let cases = [
            // (holder, observed_at, now, expected)
            (
                None,
                s(0),
                s(0),
                LeaseAction::Take {
                    new_transition: true,
                },
            ),
            (
                Some(""),
                s(0),
                s(0),
                LeaseAction::Take {
                    new_transition: true,
                },
            ),
            (
                Some("me"),
                s(0),
                s(100),
                LeaseAction::Take {
                    new_transition: false,
                },
            ),
            (
                Some("other"),
                s(10),
                s(20),
                LeaseAction::Follow {
                    holder: "other".into(),
                    until: s(25),
                },
            ),
            (
                Some("other"),
                s(10),
                s(24),
                LeaseAction::Follow {
                    holder: "other".into(),
                    until: s(25),
                },
            ),
            // Expired 15 s after we last saw it change, whatever its renewTime says.
            (
                Some("other"),
                s(10),
                s(25),
                LeaseAction::Take {
                    new_transition: true,
                },
            ),
        ];
        for (holder, observed, now, want) in cases {
            assert_eq!(
                decide("me", &rec(holder), observed, now),
                want,
                "{holder:?} {now:?}"
            );
        }
    }

    #[test]
    fn next_attempt_table() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let cases = [
            (Attempt::Led, s(2)),
            // Far from expiry: the retry period.
            (
                Attempt::Followed {
                    until: s(25),
                    now: s(10),
                },
                s(2),
            ),
            // Expiring within the period: just past the expiry instant.
            (
                Attempt::Followed {
                    until: s(25),
                    now: ms(24_500),
                },
                ms(520),
            ),
            // Already expired (the take failed with a conflict): just past now.
            (
                Attempt::Followed {
                    until: s(25),
                    now: s(26),
                },
                ms(20),
            ),
            (Attempt::Failed, ms(500)),
        ];
        for (after, want) in cases {
            assert_eq!(next_attempt(after, s(2)), want, "{after:?}");
        }
        // Short periods: a failure waits at least 100 ms, never more than the period.
        assert_eq!(next_attempt(Attempt::Failed, ms(200)), ms(100));
        assert_eq!(next_attempt(Attempt::Failed, ms(50)), ms(50));
    }

    #[test]
    fn renew_deadline() {
        let s = Duration::from_secs;
        assert!(!must_step_down(s(100), s(109), s(10)));
        assert!(must_step_down(s(100), s(110), s(10)));
    }
}
