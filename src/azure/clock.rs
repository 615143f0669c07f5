//! Wall-clock time for token expiry decisions, injectable so that tests with
//! `tokio::time::pause()` can move the pipeline's notion of "now" together with tokio's timers.
//!
//! Token expiries are wall-clock instants (`exp`, `expires_on`), so production must read the
//! system clock: a monotonic clock stops during VM suspend and would make tokens look younger
//! than they are. Rate limiting and backoff use tokio's monotonic clock instead (see
//! `limits.rs`, `retry.rs`).

use std::fmt;

use jiff::Timestamp;

/// A source of the current wall-clock time.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Wall time that advances with tokio's clock from a fixed start, for paused-time tests:
/// `start + (tokio::time::Instant::now() - created)`.
#[derive(Debug, Clone, Copy)]
pub struct TokioWallClock {
    start: Timestamp,
    created: tokio::time::Instant,
}

impl TokioWallClock {
    /// Starts at `start` now; call inside the (paused) runtime.
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            start,
            created: tokio::time::Instant::now(),
        }
    }
}

impl WallClock for TokioWallClock {
    fn now(&self) -> Timestamp {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.created);
        self.start.saturating_add(elapsed).unwrap_or(Timestamp::MAX)
    }
}
