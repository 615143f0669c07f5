//! What failed recently, per binding, in memory: the last failed mint (for the binding's
//! current generation; it drives the backoff in `decide` and is cleared by a successful mint)
//! and the count of consecutive passes that ended in an API error (it drives `error_policy`'s
//! backoff and is reset by any pass that ends well). API failures are never written to status
//! — the API is what is failing — so they live only here.

use std::collections::HashMap;
use std::sync::Mutex;

use super::tracker::BindingKey;
use crate::state::decide::Failure;

#[derive(Debug, Default)]
struct Entry {
    mint: Option<(i64, Failure)>,
    api: u32,
}

#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<BindingKey, Entry>>);

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BindingKey, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last failed mint of this generation.
    pub fn mint(&self, key: &BindingKey, generation: i64) -> Option<Failure> {
        self.lock()
            .get(key)
            .and_then(|e| e.mint.as_ref())
            .filter(|(g, _)| *g == generation)
            .map(|(_, f)| f.clone())
    }

    pub fn mint_failed(&self, key: &BindingKey, generation: i64, failure: Failure) {
        self.lock().entry(key.clone()).or_default().mint = Some((generation, failure));
    }

    pub fn mint_succeeded(&self, key: &BindingKey) {
        if let Some(e) = self.lock().get_mut(key) {
            e.mint = None;
        }
    }

    /// Count one more consecutive API failure; returns the count.
    pub fn api_failed(&self, key: &BindingKey) -> u32 {
        let mut map = self.lock();
        let e = map.entry(key.clone()).or_default();
        e.api = e.api.saturating_add(1);
        e.api
    }

    /// A pass ended well: the API backoff starts over.
    pub fn api_succeeded(&self, key: &BindingKey) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(key) {
            e.api = 0;
            if e.mint.is_none() {
                map.remove(key);
            }
        }
    }

    pub fn api_failures(&self, key: &BindingKey) -> u32 {
        self.lock().get(key).map_or(0, |e| e.api)
    }

    pub fn forget(&self, key: &BindingKey) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::binding::Version;
    use crate::state::reason::Reason;

    #[test]
    fn api_failures_count_up_and_reset_on_success() {
        let f = Failures::default();
        let key = BindingKey {
            version: Version::V1beta2,
            namespace: "ns".into(),
            name: "a".into(),
        };
        assert_eq!(f.api_failed(&key), 1);
        assert_eq!(f.api_failed(&key), 2);
        assert_eq!(f.api_failed(&key), 3);
        f.api_succeeded(&key);
        assert_eq!(f.api_failures(&key), 0);
        assert_eq!(f.api_failed(&key), 1);
        // A mint failure is per generation and survives API successes.
        let failure = Failure {
            reason: Reason::Throttled,
            message: "slow down".into(),
            failures: 1,
            retry_at: jiff::Timestamp::UNIX_EPOCH,
        };
        f.mint_failed(&key, 3, failure.clone());
        f.api_succeeded(&key);
        assert_eq!(f.mint(&key, 3), Some(failure));
        assert_eq!(f.mint(&key, 4), None);
        f.mint_succeeded(&key);
        assert_eq!(f.mint(&key, 3), None);
    }
}
