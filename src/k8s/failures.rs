//! What failed recently, per binding, in memory: the last failed mint (for the binding's
//! current generation; it drives the backoff in `decide` and is cleared by a successful mint)
//! and the count of consecutive passes that ended in an API error (it drives `error_policy`'s
//! backoff and is reset by any pass that ends well). API failures are never written to status
//! — the API is what is failing — so they live only here. Also the failure of a credential
//! fetch started ahead of the binding's pass (`mint::look_ahead`), which that pass reports
//! instead of asking Azure again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::tracker::BindingKey;
use crate::azure::{AzureError, CredentialRequest};
use crate::state::decide::Failure;

/// A fetch failure is handed to the binding's pass only this soon after it: the pass is
/// queued when the fetch ends, so an older one belongs to a pass that never came (this
/// replica lost the Lease), and the next pass asks afresh.
const FETCH_FAILURE_KEPT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Entry {
    mint: Option<(i64, Failure)>,
    api: u32,
    fetch: Option<Box<(CredentialRequest, AzureError, Instant)>>,
    /// When a pass last got a failure from Azure itself (it joined the fetch, or asked).
    answered: Option<Instant>,
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
            if e.mint.is_none() && e.fetch.is_none() {
                map.remove(key);
            }
        }
    }

    /// The credential fetch started ahead of this binding's pass at `started` failed. Not
    /// kept if a pass got a failure from Azure itself since then (it joined that fetch): it
    /// has reported it, and the binding's next mint must ask again.
    pub fn fetch_failed(
        &self,
        key: &BindingKey,
        request: CredentialRequest,
        error: AzureError,
        started: Instant,
    ) {
        let mut map = self.lock();
        let e = map.entry(key.clone()).or_default();
        if e.answered.is_none_or(|at| at < started) {
            e.fetch = Some(Box::new((request, error, Instant::now())));
        }
    }

    /// A pass got a failure from Azure itself: a fetch failure kept for it is not its answer.
    pub fn fetch_answered(&self, key: &BindingKey) {
        let mut map = self.lock();
        let e = map.entry(key.clone()).or_default();
        e.fetch = None;
        e.answered = Some(Instant::now());
    }

    /// The failure of the fetch for `request` started ahead of this pass, once.
    pub fn take_fetch_failure(
        &self,
        key: &BindingKey,
        request: &CredentialRequest,
    ) -> Option<AzureError> {
        let mut map = self.lock();
        let e = map.get_mut(key)?;
        let (asked, error, at) = *e.fetch.take()?;
        if e.mint.is_none() && e.api == 0 {
            map.remove(key);
        }
        (asked == *request && at.elapsed() < FETCH_FAILURE_KEPT).then_some(error)
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

    fn binding() -> BindingKey {
        BindingKey {
            version: Version::V1beta2,
            namespace: "ns".into(),
            name: "a".into(),
        }
    }

    #[test]
    fn a_fetch_failure_is_handed_once_and_only_for_its_request() {
        use crate::azure::{Cloud, ErrorKind, Identity, IdentityAudience};
        let f = Failures::default();
        let key = binding();
        let request = |scope: &str| CredentialRequest {
            server: "reg.azurecr.io".into(),
            scope: Some(scope.into()),
            identity: Identity::ManagedClientId("id".into()),
            cloud: Cloud::Public,
            audience: IdentityAudience::ResourceManager,
            arm_resource_override: None,
            fresher_than: None,
        };
        let error = AzureError::new(ErrorKind::Unauthorized, "no role");
        f.fetch_failed(
            &key,
            request("repository:a:pull"),
            error.clone(),
            Instant::now(),
        );
        assert_eq!(
            f.take_fetch_failure(&key, &request("repository:a:pull")),
            Some(error.clone())
        );
        assert_eq!(
            f.take_fetch_failure(&key, &request("repository:a:pull")),
            None
        );
        // The binding asks for something else now: the old failure is not its answer.
        f.fetch_failed(
            &key,
            request("repository:a:pull"),
            error.clone(),
            Instant::now(),
        );
        assert_eq!(
            f.take_fetch_failure(&key, &request("repository:b:pull")),
            None
        );
        assert_eq!(
            f.take_fetch_failure(&key, &request("repository:a:pull")),
            None
        );
        // A pass that joined the fetch got its failure from Azure itself, before or after the
        // look-ahead kept it: its next mint asks again.
        let started = Instant::now();
        f.fetch_answered(&key);
        f.fetch_failed(&key, request("repository:a:pull"), error.clone(), started);
        assert_eq!(
            f.take_fetch_failure(&key, &request("repository:a:pull")),
            None
        );
        f.fetch_failed(&key, request("repository:a:pull"), error, Instant::now());
        f.fetch_answered(&key);
        assert_eq!(
            f.take_fetch_failure(&key, &request("repository:a:pull")),
            None
        );
    }

    #[test]
    fn api_failures_count_up_and_reset_on_success() {
        let f = Failures::default();
        let key = binding();
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
