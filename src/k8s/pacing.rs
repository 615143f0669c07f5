//! Refresh pacing: when each new token is planned to be refreshed, so that a fleet's
//! refreshes are spread over the refresh window instead of repeating the shape of the burst
//! in which the tokens were minted.
//!
//! A token is refreshed at its boundary (half its life by default). Tokens minted in a burst —
//! 10,000 bindings created at once mint ~1,000 tokens as fast as the registries' rate limits
//! allow — would all come due in the same few seconds of every cycle, forever. So when a token
//! is written, [`Pacing::plan`] picks its refresh time between a few seconds after writing
//! and its boundary: the latest second that has the fewest refreshes planned so far. The first
//! cycle after a burst spreads the burst over the whole window (each token once refreshed
//! early); after that a token's planned time is its boundary whenever the schedule is level,
//! so it keeps its place and costs nothing extra. The plan is never later than the boundary:
//! the margin before expiry never shrinks.
//!
//! Every binding holding the same token gets the same plan (it is remembered per token, by
//! SHA-256), so they come due together and share one call. The plan is written into the pull
//! Secret (`token.refresh-at`), so a restarted controller keeps it; what is kept in memory is a
//! count per planned second and the plan per token, both forgotten once past.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::state::token::SecretToken;

#[derive(Debug, Default)]
struct Inner {
    /// Refreshes planned per whole second (unix seconds).
    planned: BTreeMap<i64, u32>,
    /// The plan of each token (by SHA-256 of its value).
    tokens: HashMap<[u8; 32], Timestamp>,
}

/// Shared by all passes.
#[derive(Debug, Default)]
pub struct Pacing(Mutex<Inner>);

impl Pacing {
    /// The refresh time of `token`: its plan if it has one, else the latest whole second in
    /// `[earliest, latest]` with the fewest refreshes planned (`latest` when the range is empty).
    pub fn plan(
        &self,
        token: &SecretToken,
        earliest: Timestamp,
        latest: Timestamp,
        now: Timestamp,
    ) -> Timestamp {
        let key: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        inner.forget_before(now);
        if let Some(p) = inner.tokens.get(&key) {
            return *p;
        }
        // Whole seconds inside the range.
        let lo = earliest.as_second() + i64::from(earliest.subsec_nanosecond() > 0);
        let hi = latest.as_second();
        let at = if hi < lo {
            latest
        } else {
            let mut best = (u32::MAX, hi);
            for second in (lo..=hi).rev() {
                let n = inner.planned.get(&second).copied().unwrap_or(0);
                if n < best.0 {
                    best = (n, second);
                    if n == 0 {
                        break;
                    }
                }
            }
            *inner.planned.entry(best.1).or_default() += 1;
            Timestamp::from_second(best.1).unwrap_or(latest)
        };
        inner.tokens.insert(key, at);
        at
    }

    /// Seconds planned and tokens remembered (for tests).
    pub fn len(&self) -> (usize, usize) {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (inner.planned.len(), inner.tokens.len())
    }
}

impl Inner {
    fn forget_before(&mut self, now: Timestamp) {
        let cut = now.as_second();
        if self
            .planned
            .first_key_value()
            .is_some_and(|(s, _)| *s < cut)
        {
            self.planned = self.planned.split_off(&cut);
            self.tokens.retain(|_, at| at.as_second() >= cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn token(i: usize) -> SecretToken {
        SecretToken::new(format!("token-{i}"))
    }

    #[test]
    fn a_burst_of_tokens_is_spread_over_the_window_and_then_keeps_its_place() {
        let pacing = Pacing::default();
        let t0 = ts("2026-01-01T00:00:00Z");
        // 600 tokens minted within 10 s, each due 60 s after it was minted.
        let mut at = Vec::new();
        for i in 0..600 {
            let minted = t0 + std::time::Duration::from_millis(i as u64 * 16);
            let p = pacing.plan(
                &token(i),
                minted + std::time::Duration::from_secs(5),
                minted + std::time::Duration::from_secs(60),
                minted,
            );
            assert!(p >= minted + std::time::Duration::from_secs(5));
            assert!(
                p <= minted + std::time::Duration::from_secs(60),
                "never later"
            );
            at.push(p.as_second() - t0.as_second());
        }
        // Level: every second between 6 and 60 holds 10 or 11 refreshes, not 600 in ten.
        let mut per_second = BTreeMap::new();
        for s in &at {
            *per_second.entry(*s).or_insert(0) += 1;
        }
        let peak = per_second.values().copied().max().unwrap();
        assert!(peak <= 12, "{per_second:?}");
        assert!(per_second.len() >= 50, "{per_second:?}");
        // The same token asks again (another binding holding it): the same plan.
        let again = pacing.plan(&token(7), t0, t0 + std::time::Duration::from_secs(60), t0);
        assert_eq!(again.as_second() - t0.as_second(), at[7]);
        // A token refreshed at its plan gets its boundary when the schedule is level.
        let refreshed = Timestamp::from_second(t0.as_second() + at[0]).unwrap();
        let next = pacing.plan(
            &token(10_000),
            refreshed + std::time::Duration::from_secs(5),
            refreshed + std::time::Duration::from_secs(60),
            refreshed,
        );
        assert_eq!(next, refreshed + std::time::Duration::from_secs(60));
        // What is past is forgotten.
        pacing.plan(
            &token(10_001),
            t0 + std::time::Duration::from_secs(500),
            t0 + std::time::Duration::from_secs(560),
            t0 + std::time::Duration::from_secs(400),
        );
        assert_eq!(pacing.len(), (1, 1));
    }
}
