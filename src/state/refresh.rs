//! When to refresh a token, when to retry after a failure, and how to keep thousands of
//! bindings from doing either in lock-step. Pure arithmetic on timestamps passed in.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// v1beta1 refreshes this long before expiry (but never before half the token's lifetime).
pub const V1BETA1_REFRESH_BUFFER: Duration = Duration::from_secs(30 * 60);
/// No requeue is ever scheduled sooner than this.
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// Jitter pulls a refresh earlier by up to this fraction of the refresh window.
pub const JITTER_FRACTION: f64 = 0.1;

/// Which rule sets the refresh boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefreshRule {
    /// `expiry - 30 min`, but not before half the lifetime.
    V1beta1,
    /// `refresh + (expiry - refresh) × fraction`.
    V1beta2 { fraction: f64 },
}

/// The boundary without jitter, as the old controller computed it.
pub fn boundary(rule: RefreshRule, refreshed: Timestamp, expiry: Timestamp) -> Timestamp {
    match rule {
        // The old controller's rule, except that a token living less than an hour is not
        // refreshed before half its lifetime: with `expiry - 30 min` alone, a short-lived
        // token is due the moment it is minted and would be re-minted on every pass.
        RefreshRule::V1beta1 => sub(expiry, V1BETA1_REFRESH_BUFFER).max(boundary(
            RefreshRule::V1beta2 { fraction: 0.5 },
            refreshed,
            expiry,
        )),
        RefreshRule::V1beta2 { fraction } => {
            let ttl = expiry.duration_since(refreshed);
            let ttl_ns = ttl.as_nanos().max(0) as f64;
            add_ns(refreshed, ttl_ns * fraction.clamp(0.0, 1.0))
        }
    }
}

/// The boundary pulled earlier by a deterministic share (from `seed`, e.g. a hash of the
/// binding's UID) of up to [`JITTER_FRACTION`] of the window between `refreshed` and the
/// boundary. Earlier, never later: jitter must not bring a refresh closer to expiry.
pub fn jittered_boundary(
    rule: RefreshRule,
    refreshed: Timestamp,
    expiry: Timestamp,
    seed: u64,
) -> Timestamp {
    let b = boundary(rule, refreshed, expiry);
    let window = b.duration_since(refreshed).as_nanos().max(0) as f64;
    add_ns(b, -(window * JITTER_FRACTION * unit(seed)))
}

/// A token is never refreshed sooner than this after it was written, whatever its lifetime
/// says (an already-expired token from a skewed clock must not cause a mint loop).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// When a token is due for refresh: the jittered boundary computed from when it was issued
/// (`issued`, its `iat` when known), but never sooner than [`MIN_REFRESH_INTERVAL`] after it
/// was written, rounded up to whole seconds (the precision of status and annotations, so a
/// status read back compares equal and the plan is never earlier than the boundary).
pub fn due_at(
    rule: RefreshRule,
    issued: Timestamp,
    written: Timestamp,
    expiry: Timestamp,
    seed: u64,
) -> Timestamp {
    let boundary = jittered_boundary(rule, issued, expiry, seed);
    ceil_seconds(boundary.max(add(written, MIN_REFRESH_INTERVAL)))
}

/// When a token is due, given the refresh time planned when it was written (`planned`, the
/// `token.refresh-at` annotation): the plan when it lies between [`MIN_REFRESH_INTERVAL`] after
/// writing and the boundary without jitter — it spreads a fleet's refreshes over the window
/// (see `k8s::pacing`), is shared by every binding holding the same token (so they refresh
/// together, with one call) and is never later than the boundary (the margin before expiry
/// never shrinks). Otherwise, and for Secrets without a plan, [`due_at`].
pub fn planned_due(
    rule: RefreshRule,
    issued: Timestamp,
    written: Timestamp,
    expiry: Timestamp,
    seed: u64,
    planned: Option<Timestamp>,
) -> Timestamp {
    let earliest = add(written, MIN_REFRESH_INTERVAL);
    let latest = boundary(rule, issued, expiry);
    match planned {
        Some(p) if p >= earliest && p <= latest => ceil_seconds(p).min(latest.max(earliest)),
        _ => due_at(rule, issued, written, expiry, seed),
    }
}

/// Exponential backoff for the `failures`-th consecutive failure (1-based): `base`, 2 × `base`,
/// 4 × `base` … capped at `cap`, with ±20 % deterministic jitter from `seed`, never below
/// `base`.
pub fn backoff(failures: u32, seed: u64, base: Duration, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let nominal = base.saturating_mul(1u32 << exp.min(31)).min(cap);
    let factor = 0.8 + 0.4 * unit(seed ^ u64::from(failures).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    nominal.mul_f64(factor).min(cap).max(base.min(cap))
}

/// The per-binding retry schedule after failures (Azure or API alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay; doubles with each consecutive failure.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// A retry is scheduled at least this long before a still-valid token expires.
    pub expiry_margin: Duration,
}

/// When to retry after the `failures`-th consecutive failure: the [`backoff`], but a working
/// credential is replaced before it lapses. While `valid_until - expiry_margin` is ahead, the
/// retry is no later than that; once inside the margin, no later than halfway to the expiry, so
/// retries keep growing while there is time and close in on the expiry instead of passing it
/// (never the fixed one-second hammering of an API that is down).
pub fn retry_at(
    now: Timestamp,
    failures: u32,
    seed: u64,
    policy: &Backoff,
    valid_until: Option<Timestamp>,
) -> Timestamp {
    let delay = backoff(failures, seed, policy.base, policy.cap);
    let mut at = add(now, delay);
    if let Some(expiry) = valid_until {
        let latest = sub(expiry, policy.expiry_margin);
        if latest > now {
            at = at.min(latest);
        } else {
            let left = Duration::try_from(expiry.duration_since(now)).unwrap_or(Duration::ZERO);
            at = add(now, delay.min(left / 2));
        }
    }
    at.max(add(now, policy.base.min(MIN_REQUEUE)))
}

/// Time from `now` until `at`, never below `floor`.
pub fn requeue_after(now: Timestamp, at: Timestamp, floor: Duration) -> Duration {
    let d = at.duration_since(now);
    Duration::try_from(d).unwrap_or(Duration::ZERO).max(floor)
}

/// Truncate to whole seconds: the precision of RFC 3339 times in status and annotations.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Round up to whole seconds.
pub fn ceil_seconds(t: Timestamp) -> Timestamp {
    let down = whole_seconds(t);
    if down == t {
        t
    } else {
        add(down, Duration::from_secs(1))
    }
}

/// `t + d`, saturating.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// A stable seed from a string (binding UID or namespace/name): FNV-1a.
pub fn seed_of(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Map a seed to [0, 1) through a mixer so nearby seeds spread out.
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN)
}

fn add_ns(t: Timestamp, ns: f64) -> Timestamp {
    let ns = ns.clamp(i64::MIN as f64, i64::MAX as f64) as i64;
    t.checked_add(SignedDuration::from_nanos(ns))
        .unwrap_or(if ns > 0 {
            Timestamp::MAX
        } else {
            Timestamp::MIN
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn boundaries() {
        let refreshed = ts("2026-01-01T00:00:00Z");
        let expiry = ts("2026-01-01T03:00:00Z");
        let cases = [
            (RefreshRule::V1beta1, "2026-01-01T02:30:00Z"),
            (
                RefreshRule::V1beta2 { fraction: 0.5 },
                "2026-01-01T01:30:00Z",
            ),
            (
                RefreshRule::V1beta2 { fraction: 0.25 },
                "2026-01-01T00:45:00Z",
            ),
            (
                RefreshRule::V1beta2 { fraction: 0.9 },
                "2026-01-01T02:42:00Z",
            ),
        ];
        for (rule, want) in cases {
            assert_eq!(boundary(rule, refreshed, expiry), ts(want), "{rule:?}");
        }
        // A token shorter-lived than an hour is refreshed at half its lifetime, never at once
        // (a 10-minute token would otherwise be due the moment it was minted).
        let short = ts("2026-01-01T00:10:00Z");
        assert_eq!(
            boundary(RefreshRule::V1beta1, refreshed, short),
            ts("2026-01-01T00:05:00Z")
        );
        // 75-minute access tokens keep the old controller's expiry - 30 min.
        assert_eq!(
            boundary(RefreshRule::V1beta1, refreshed, ts("2026-01-01T01:15:00Z")),
            ts("2026-01-01T00:45:00Z")
        );
        // Expiry before refresh (a corrupted annotation) never lands after the refresh time.
        assert_eq!(
            boundary(RefreshRule::V1beta2 { fraction: 0.5 }, expiry, refreshed),
            expiry
        );
    }

    #[test]
    fn jitter_is_deterministic_earlier_and_bounded() {
        let refreshed = ts("2026-01-01T00:00:00Z");
        let expiry = ts("2026-01-01T01:15:00Z");
        let rule = RefreshRule::V1beta2 { fraction: 0.5 };
        let plain = boundary(rule, refreshed, expiry);
        let window = plain.duration_since(refreshed);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000u64 {
            let seed = seed_of(&format!("ns/binding-{i}"));
            let j = jittered_boundary(rule, refreshed, expiry, seed);
            assert_eq!(j, jittered_boundary(rule, refreshed, expiry, seed));
            assert!(j <= plain);
            assert!(plain.duration_since(j) <= window.mul_f64(JITTER_FRACTION));
            seen.insert(j.as_second());
        }
        // 1,000 bindings minted together spread over most of a 225 s jitter window.
        assert!(seen.len() > 150, "only {} distinct seconds", seen.len());
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn policy(cap: u64, margin: u64) -> Backoff {
        Backoff {
            base: SECOND,
            cap: Duration::from_secs(cap),
            expiry_margin: Duration::from_secs(margin),
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let cap = Duration::from_secs(300);
        let seed = seed_of("ns/b");
        let mut prev = Duration::ZERO;
        for failures in 1..=8 {
            let b = backoff(failures, seed, SECOND, cap);
            let nominal = Duration::from_secs(1 << (failures - 1));
            assert!(b >= nominal.mul_f64(0.8).max(MIN_REQUEUE) && b <= nominal.mul_f64(1.2));
            assert!(b > prev.mul_f64(1.2) || failures == 1);
            prev = b;
        }
        for failures in [10, 20, 100, u32::MAX] {
            let b = backoff(failures, seed, SECOND, cap);
            assert!(b <= cap && b >= cap.mul_f64(0.8), "{failures}: {b:?}");
        }
        // Another base scales the whole schedule (the in-process tests use milliseconds).
        let ms = Duration::from_millis(50);
        assert_eq!(backoff(1, seed, ms, cap), ms);
        let fourth = backoff(4, seed, ms, cap);
        assert!(
            fourth >= ms * 8 * 4 / 5 && fourth <= ms * 8 * 6 / 5,
            "{fourth:?}"
        );
        assert!(backoff(30, seed, ms, Duration::from_millis(400)) <= Duration::from_millis(400));
    }

    #[test]
    fn retry_never_lands_after_a_valid_token_expires() {
        let now = ts("2026-01-01T00:00:00Z");
        let p = policy(300, 60);
        // Far expiry: plain backoff.
        let far = ts("2026-01-01T05:00:00Z");
        let at = retry_at(now, 9, 1, &p, Some(far));
        assert!(at > ts("2026-01-01T00:03:00Z") && at <= ts("2026-01-01T00:05:00Z"));
        // Expiry in 3 minutes: retry at expiry - margin, earlier than the 4-5 minute backoff.
        let soon = ts("2026-01-01T00:03:00Z");
        assert_eq!(
            retry_at(now, 9, 1, &p, Some(soon)),
            ts("2026-01-01T00:02:00Z")
        );
        // Already inside the margin: halfway to the expiry at most, never in the past.
        let lapsing = ts("2026-01-01T00:00:30Z");
        assert_eq!(
            retry_at(now, 9, 1, &p, Some(lapsing)),
            ts("2026-01-01T00:00:15Z")
        );
        assert_eq!(
            retry_at(now, 9, 1, &p, Some(ts("2026-01-01T00:00:00.5Z"))),
            ts("2026-01-01T00:00:01Z")
        );
    }

    #[test]
    fn retries_inside_the_margin_grow_then_close_in_on_the_expiry() {
        // A 120 s token refreshed at half-life is inside the default 2-minute margin from the
        // start: retries still back off (1, 2, 4, 8 s …) instead of hammering every second,
        // and every one of them lands before the expiry.
        let p = policy(300, 120);
        let expiry = ts("2026-01-01T00:01:00Z");
        let mut now = ts("2026-01-01T00:00:00Z");
        let mut gaps = Vec::new();
        let mut failures = 1;
        // Down to the last two seconds (below that the one-second floor decides).
        while expiry.duration_since(now) > SignedDuration::from_secs(2) {
            let at = retry_at(now, failures, 7, &p, Some(expiry));
            assert!(at < expiry && at > now, "{failures}: {at}");
            gaps.push(at.duration_since(now).as_secs_f64());
            now = at;
            failures += 1;
        }
        assert!(gaps.len() >= 8, "{gaps:?}");
        assert!(gaps[0] >= 1.0 && gaps[1] > gaps[0] && gaps[2] > gaps[1] && gaps[3] > gaps[2]);
        assert!(
            gaps[gaps.len() - 1] < gaps[3],
            "closing in on the expiry: {gaps:?}"
        );
    }

    #[test]
    fn due_at_is_whole_seconds_and_never_right_after_writing() {
        let rule = RefreshRule::V1beta2 { fraction: 0.5 };
        let issued = ts("2026-01-01T00:00:00Z");
        let expiry = ts("2026-01-01T00:02:00Z");
        // Written with a fresh token: the (jittered) half-life, rounded up.
        let due = due_at(rule, issued, issued, expiry, 3);
        assert_eq!(due.subsec_nanosecond(), 0);
        assert!(due <= ts("2026-01-01T00:01:00Z") && due >= ts("2026-01-01T00:00:54Z"));
        // Written with a cached token already past its boundary: not before 5 s after writing.
        let written = ts("2026-01-01T00:01:10.2Z");
        assert_eq!(
            due_at(rule, issued, written, expiry, 3),
            ts("2026-01-01T00:01:16Z")
        );
    }

    #[test]
    fn a_planned_refresh_inside_the_window_is_kept_and_anything_else_is_not() {
        let rule = RefreshRule::V1beta2 { fraction: 0.5 };
        let issued = ts("2026-01-01T00:00:00Z");
        let expiry = ts("2026-01-01T00:02:00Z");
        let plan = |p: &str| planned_due(rule, issued, issued, expiry, 3, Some(ts(p)));
        // Inside [written + 5 s, half-life]: the plan, whatever the binding's own jitter.
        assert_eq!(plan("2026-01-01T00:00:20Z"), ts("2026-01-01T00:00:20Z"));
        assert_eq!(plan("2026-01-01T00:01:00Z"), ts("2026-01-01T00:01:00Z"));
        // Later than the boundary (the margin would shrink) or right after writing: ignored.
        let jittered = due_at(rule, issued, issued, expiry, 3);
        assert_eq!(plan("2026-01-01T00:01:01Z"), jittered);
        assert_eq!(plan("2026-01-01T00:00:02Z"), jittered);
        assert_eq!(planned_due(rule, issued, issued, expiry, 3, None), jittered);
    }

    #[test]
    fn requeue_floor() {
        let now = ts("2026-01-01T00:00:00Z");
        assert_eq!(
            requeue_after(now, ts("2025-01-01T00:00:00Z"), MIN_REQUEUE),
            MIN_REQUEUE
        );
        assert_eq!(
            requeue_after(now, ts("2026-01-01T00:00:00.5Z"), MIN_REQUEUE),
            MIN_REQUEUE
        );
        assert_eq!(
            requeue_after(now, ts("2026-01-01T00:01:00Z"), MIN_REQUEUE),
            Duration::from_secs(60)
        );
        assert_eq!(
            requeue_after(
                now,
                ts("2026-01-01T00:00:00.05Z"),
                Duration::from_millis(10)
            ),
            Duration::from_millis(50)
        );
    }
}
