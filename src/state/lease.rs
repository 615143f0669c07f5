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
    /// Someone else holds a live lease: stay a follower.
    Follow { holder: String },
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
                },
            ),
            (
                Some("other"),
                s(10),
                s(24),
                LeaseAction::Follow {
                    holder: "other".into(),
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
    fn renew_deadline() {
        let s = Duration::from_secs;
        assert!(!must_step_down(s(100), s(109), s(10)));
        assert!(must_step_down(s(100), s(110), s(10)));
    }
}
