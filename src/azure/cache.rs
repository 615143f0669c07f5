//! A token cache with single flight: per key, a usable cached value is returned; otherwise one
//! fetch runs and every concurrent caller for that key awaits the same result.
//!
//! The fetch runs as its own tokio task and stores its result itself, so a caller that gives up
//! (its reconcile was cancelled) neither fails the others nor leaves a half-done request parked
//! while holding a rate-limiter slot. Errors are shared with the callers that coalesced onto
//! the fetch but never cached.
//! The lock is a std mutex held only for map operations, never across an `.await`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use jiff::Timestamp;

use super::error::{AzureError, ErrorKind};
use super::metrics::CacheResult;

type SharedFetch<V> = Shared<BoxFuture<'static, Result<V, AzureError>>>;

struct Slot<V: Clone> {
    value: Option<(V, Timestamp)>,
    inflight: Option<(u64, SharedFetch<V>)>,
}

impl<V: Clone> Slot<V> {
    fn empty() -> Self {
        Self {
            value: None,
            inflight: None,
        }
    }
}

struct Inner<K, V: Clone> {
    slots: HashMap<K, Slot<V>>,
    next_id: u64,
    sweep_at: usize,
}

/// A fetch in flight, as [`SingleFlight::fetching`] hands it out.
pub struct InFlight {
    /// Tells this fetch apart from every other fetch of the same cache.
    pub id: u64,
    /// Whether the call that handed it out started it.
    pub started: bool,
    /// Ends when the fetch does.
    pub done: BoxFuture<'static, Result<(), AzureError>>,
}

/// A keyed single-flight cache. Values carry the instant after which they are useless, so
/// expired entries can be dropped.
pub struct SingleFlight<K, V: Clone> {
    inner: Arc<Mutex<Inner<K, V>>>,
}

impl<K, V: Clone> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

const MIN_SWEEP: usize = 256;

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                slots: HashMap::new(),
                next_id: 0,
                sweep_at: MIN_SWEEP,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the cached value if `usable` accepts it, else joins the fetch in flight for
    /// `key`, else starts `fetch`. `fetch` returns the value and the instant it stops being
    /// useful (for eviction). `now` is used only for eviction.
    pub async fn get(
        &self,
        key: &K,
        now: Timestamp,
        usable: impl Fn(&V) -> bool,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<(V, Timestamp), AzureError>>,
    ) -> (Result<V, AzureError>, CacheResult) {
        let (shared, result) = {
            let mut inner = self.lock();
            if let Some(slot) = inner.slots.get(key) {
                if let Some((value, _)) = &slot.value {
                    if usable(value) {
                        return (Ok(value.clone()), CacheResult::Hit);
                    }
                }
                if let Some((_, shared)) = &slot.inflight {
                    (shared.clone(), CacheResult::Coalesced)
                } else {
                    (self.start(&mut inner, key, fetch).1, CacheResult::Miss)
                }
            } else {
                inner.maybe_sweep(now);
                (self.start(&mut inner, key, fetch).1, CacheResult::Miss)
            }
        };
        (shared.await, result)
    }

    /// Unless a usable value is cached, the fetch for `key` — the one in flight, or `fetch`,
    /// started now — as a future that ends with it (`true` when started here). Never waits.
    pub fn fetching(
        &self,
        key: &K,
        now: Timestamp,
        usable: impl Fn(&V) -> bool,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<(V, Timestamp), AzureError>>,
    ) -> Option<InFlight> {
        // Outside a runtime nobody would drive the fetch, and the key would stay in flight.
        tokio::runtime::Handle::try_current().ok()?;
        let mut inner = self.lock();
        let held = match inner.slots.get(key) {
            Some(slot) if slot.value.as_ref().is_some_and(|(v, _)| usable(v)) => return None,
            Some(slot) => slot
                .inflight
                .as_ref()
                .map(|(id, shared)| (*id, shared.clone())),
            None => {
                inner.maybe_sweep(now);
                None
            }
        };
        let ((id, shared), started) = match held {
            Some(held) => (held, false),
            // The fetch runs as its own task: nobody has to wait for it.
            None => (self.start(&mut inner, key, fetch), true),
        };
        Some(InFlight {
            id,
            started,
            done: shared.map(|r| r.map(|_| ())).boxed(),
        })
    }

    fn start(
        &self,
        inner: &mut Inner<K, V>,
        key: &K,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<(V, Timestamp), AzureError>>,
    ) -> (u64, SharedFetch<V>) {
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        let cache = self.clone();
        let owned_key = key.clone();
        let fut = fetch();
        // The fetch stores its own result, so it must run to the end even if every caller
        // stops waiting: a fetch parked mid-flight would hold a limiter slot forever.
        let task = async move {
            let result = fut.await;
            let mut inner = cache.lock();
            let slot = inner.slots.entry(owned_key).or_insert_with(Slot::empty);
            if slot.inflight.as_ref().is_some_and(|(i, _)| *i == id) {
                slot.inflight = None;
            }
            match result {
                Ok((value, useful_until)) => {
                    slot.value = Some((value.clone(), useful_until));
                    Ok(value)
                }
                Err(e) => Err(e),
            }
        };
        let shared = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let handle = runtime.spawn(task);
                let cache = self.clone();
                let owned_key = key.clone();
                async move {
                    match handle.await {
                        Ok(result) => result,
                        Err(join_error) => {
                            // Panicked or cancelled at runtime shutdown: unblock the key.
                            let mut inner = cache.lock();
                            if let Some(slot) = inner.slots.get_mut(&owned_key) {
                                if slot.inflight.as_ref().is_some_and(|(i, _)| *i == id) {
                                    slot.inflight = None;
                                }
                            }
                            Err(AzureError::new(
                                ErrorKind::AzureUnavailable,
                                format!("token fetch did not complete: {join_error}"),
                            ))
                        }
                    }
                }
                .boxed()
                .shared()
            }
            // Outside a runtime (not expected): the callers drive the fetch themselves.
            Err(_) => task.boxed().shared(),
        };
        let slot = inner.slots.entry(key.clone()).or_insert_with(Slot::empty);
        slot.inflight = Some((id, shared.clone()));
        (id, shared)
    }

    /// Number of keys held (cached or in flight).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + Hash, V: Clone> Inner<K, V> {
    /// Drops entries that are expired and idle, at most once per doubling of the map size.
    fn maybe_sweep(&mut self, now: Timestamp) {
        if self.slots.len() < self.sweep_at {
            return;
        }
        self.slots.retain(|_, slot| {
            slot.inflight.is_some() || slot.value.as_ref().is_some_and(|(_, until)| *until > now)
        });
        self.sweep_at = (self.slots.len() * 2).max(MIN_SWEEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::error::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn far() -> Timestamp {
        Timestamp::MAX
    }

    #[tokio::test(start_paused = true)]
    async fn fetching_starts_or_joins_one_fetch_and_skips_a_cached_value() {
        let cache: SingleFlight<&'static str, u32> = SingleFlight::new();
        let calls = Arc::new(AtomicU32::new(0));
        let fetch = || {
            let calls = calls.clone();
            move || {
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok((7, far()))
                }
                .boxed()
            }
        };
        let now = Timestamp::UNIX_EPOCH;
        let first = cache.fetching(&"k", now, |_| true, fetch()).unwrap();
        assert!(first.started);
        let second = cache.fetching(&"k", now, |_| true, fetch()).unwrap();
        assert!(!second.started, "joins the fetch in flight");
        assert_eq!(second.id, first.id, "and says which fetch it joined");
        let other = cache.fetching(&"other", now, |_| true, fetch()).unwrap();
        assert!(other.started);
        assert_ne!(other.id, first.id, "another key's fetch is another fetch");
        // A caller of `get` meanwhile joins it too.
        let (got, how) = cache.get(&"k", now, |_| true, fetch()).await;
        assert_eq!((got.unwrap(), how), (7, CacheResult::Coalesced));
        first.done.await.unwrap();
        second.done.await.unwrap();
        other.done.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            cache.fetching(&"k", now, |_| true, fetch()).is_none(),
            "cached"
        );
        // A cached value the caller cannot use is fetched again, as a new fetch.
        let again = cache.fetching(&"k", now, |v| *v > 7, fetch()).unwrap();
        assert!(again.started);
        assert!(![first.id, other.id].contains(&again.id));
        again.done.await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch() {
        let cache: SingleFlight<&'static str, u32> = SingleFlight::new();
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get(
                        &"k",
                        Timestamp::UNIX_EPOCH,
                        |_| true,
                        || {
                            let calls = calls.clone();
                            async move {
                                calls.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                Ok((7, far()))
                            }
                            .boxed()
                        },
                    )
                    .await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            if let Ok(r) = task.await {
                results.push(r);
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(results.len(), 50);
        assert!(results.iter().all(|(r, _)| r.as_ref().ok() == Some(&7)));
        let misses = results
            .iter()
            .filter(|(_, c)| *c == CacheResult::Miss)
            .count();
        assert_eq!(misses, 1);
        let (r, c) = cache
            .get(
                &"k",
                Timestamp::UNIX_EPOCH,
                |_| true,
                || async { Ok((8, far())) }.boxed(),
            )
            .await;
        assert_eq!((r, c), (Ok(7), CacheResult::Hit));
    }

    #[tokio::test]
    async fn errors_are_shared_but_not_cached_and_unusable_values_refetch() {
        let cache: SingleFlight<u8, u32> = SingleFlight::new();
        let (r, _) = cache
            .get(
                &1,
                Timestamp::UNIX_EPOCH,
                |_| true,
                || async { Err(AzureError::new(ErrorKind::Throttled, "429")) }.boxed(),
            )
            .await;
        assert_eq!(r.map_err(|e| e.reason()), Err("Throttled"));
        let (r, c) = cache
            .get(
                &1,
                Timestamp::UNIX_EPOCH,
                |_| true,
                || async { Ok((1, far())) }.boxed(),
            )
            .await;
        assert_eq!((r, c), (Ok(1), CacheResult::Miss));
        let (r, c) = cache
            .get(
                &1,
                Timestamp::UNIX_EPOCH,
                |v| *v > 1,
                || async { Ok((2, far())) }.boxed(),
            )
            .await;
        assert_eq!((r, c), (Ok(2), CacheResult::Miss));
        let (r, c) = cache
            .get(
                &1,
                Timestamp::UNIX_EPOCH,
                |v| *v > 1,
                || async { Ok((3, far())) }.boxed(),
            )
            .await;
        assert_eq!((r, c), (Ok(2), CacheResult::Hit));
    }

    #[tokio::test]
    async fn a_cancelled_caller_does_not_cancel_the_fetch() {
        let cache: SingleFlight<u8, u32> = SingleFlight::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get(
                        &1,
                        Timestamp::UNIX_EPOCH,
                        |_| true,
                        move || {
                            async move {
                                let _ = rx.await;
                                Ok((5, far()))
                            }
                            .boxed()
                        },
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        first.abort();
        let second = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get(
                        &1,
                        Timestamp::UNIX_EPOCH,
                        |_| true,
                        || async { Ok((6, far())) }.boxed(),
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        let _ = tx.send(());
        let (r, c) = second.await.unwrap_or((Ok(0), CacheResult::Miss));
        assert_eq!((r, c), (Ok(5), CacheResult::Coalesced));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_fetch_still_completes_and_is_cached() {
        let cache: SingleFlight<u8, u32> = SingleFlight::new();
        let caller = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get(
                        &1,
                        Timestamp::UNIX_EPOCH,
                        |_| true,
                        || {
                            async {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                Ok((9, far()))
                            }
                            .boxed()
                        },
                    )
                    .await
            })
        };
        tokio::task::yield_now().await;
        caller.abort();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (r, c) = cache
            .get(
                &1,
                Timestamp::UNIX_EPOCH,
                |_| true,
                || async { Ok((0, far())) }.boxed(),
            )
            .await;
        assert_eq!((r, c), (Ok(9), CacheResult::Hit));
    }

    #[tokio::test]
    async fn expired_idle_entries_are_swept() {
        let cache: SingleFlight<usize, u32> = SingleFlight::new();
        let t0 = Timestamp::UNIX_EPOCH;
        let later = Timestamp::from_second(100).unwrap_or(t0);
        for k in 0..MIN_SWEEP {
            let _ = cache
                .get(&k, t0, |_| true, || async move { Ok((1, later)) }.boxed())
                .await;
        }
        assert_eq!(cache.len(), MIN_SWEEP);
        let after = Timestamp::from_second(200).unwrap_or(t0);
        let _ = cache
            .get(
                &usize::MAX,
                after,
                |_| true,
                || async move { Ok((1, Timestamp::MAX)) }.boxed(),
            )
            .await;
        assert_eq!(cache.len(), 1);
    }
}
