//! Passes waiting for a credential fetch started ahead of them ([`super::mint::look_ahead`]),
//! grouped by the fetch they wait for.
//!
//! Bindings share credentials: at 10,000 bindings ~1,000 fetches serve them all. Each binding
//! used to wait in a task of its own, holding its own copy of the request and its own future:
//! ~2 KB each, 10,000 at once while the registries' limiters worked through the fetches, and
//! the largest part of the controller's memory while a fleet converged (BENCHMARKS.md, issue
//! 19). Now one task waits per fetch, and a binding waits as its key, its start time and its
//! request, shared with the other waiters when it is the same request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use futures::channel::mpsc;

use super::tracker::BindingKey;
use crate::azure::{AzureError, CredentialRequest, Fetch, FetchId};
use crate::state::binding::Version;

/// A binding whose pass waits for a fetch.
#[derive(Debug)]
pub struct Waiter {
    pub key: BindingKey,
    /// The request its pass will make once the fetch ended.
    pub request: Arc<CredentialRequest>,
    /// When it began waiting: a failure kept for its pass must be newer than its last answer.
    pub started: Instant,
}

type Groups = HashMap<FetchId, Vec<Waiter>>;

/// The waiting bindings, and where each version's controller hears that a binding's fetch
/// ended. Cheap to clone.
#[derive(Clone, Default)]
pub struct Ahead {
    groups: Arc<Mutex<Groups>>,
    wake: Arc<[OnceLock<mpsc::UnboundedSender<BindingKey>>; 2]>,
}

fn slot(version: Version) -> usize {
    match version {
        Version::V1beta1 => 0,
        Version::V1beta2 => 1,
    }
}

impl Ahead {
    /// The bindings of `version` whose fetch ended, to queue their passes. Once per version (a
    /// second call gets a receiver that never yields).
    pub fn subscribe(&self, version: Version) -> mpsc::UnboundedReceiver<BindingKey> {
        let (tx, rx) = mpsc::unbounded();
        let _ = self.wake[slot(version)].set(tx);
        rx
    }

    /// Queue the pass of `key` once `fetch` ends. A failure is handed to `failed` for each
    /// waiter before its pass is queued.
    pub fn wait(
        &self,
        fetch: Fetch,
        key: BindingKey,
        request: CredentialRequest,
        started: Instant,
        failed: impl Fn(&Waiter, &AzureError) + Send + 'static,
    ) {
        let mut groups = self.lock();
        if let Some(waiters) = groups.get_mut(&fetch.id) {
            // Its task is waiting for the same fetch: this binding only joins the list.
            let request = match waiters.first() {
                Some(w) if *w.request == request => w.request.clone(),
                _ => Arc::new(request),
            };
            waiters.push(Waiter {
                key,
                request,
                started,
            });
            return;
        }
        let waiter = Waiter {
            key,
            request: Arc::new(request),
            started,
        };
        groups.insert(fetch.id, vec![waiter]);
        drop(groups);
        // The fetch may have ended already (its group gone): then `done` is ready at once.
        let this = self.clone();
        tokio::spawn(async move {
            let result = fetch.done.await;
            let waiters = this.lock().remove(&fetch.id).unwrap_or_default();
            for w in waiters {
                if let Err(e) = &result {
                    failed(&w, e);
                }
                if let Some(tx) = this.wake[slot(w.key.version)].get() {
                    let _ = tx.unbounded_send(w.key);
                }
            }
        });
    }

    /// Bindings waiting, and the fetches they wait for.
    pub fn waiting(&self) -> (usize, usize) {
        let groups = self.lock();
        (groups.values().map(Vec::len).sum(), groups.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use tokio::sync::oneshot;

    use super::*;
    use crate::azure::{Cloud, ErrorKind, Identity, IdentityAudience};

    fn key(version: Version, name: &str) -> BindingKey {
        BindingKey {
            version,
            namespace: "team".into(),
            name: name.into(),
        }
    }

    fn request(scope: &str) -> CredentialRequest {
        CredentialRequest {
            server: "reg.azurecr.io".into(),
            scope: Some(scope.into()),
            identity: Identity::ManagedClientId("00000000-0000-0000-0000-000000000001".into()),
            cloud: Cloud::Public,
            audience: IdentityAudience::ResourceManager,
            arm_resource_override: None,
            fresher_than: None,
        }
    }

    /// A fetch that ends when the returned sender says how.
    fn fetch(
        cache: &crate::azure::SingleFlight<&'static str, u32>,
        name: &'static str,
    ) -> (Fetch, oneshot::Sender<Result<u32, AzureError>>) {
        let (tx, rx) = oneshot::channel();
        let in_flight = cache
            .fetching(
                &name,
                jiff::Timestamp::UNIX_EPOCH,
                |_| true,
                move || {
                    async move {
                        let v = rx.await.unwrap()?;
                        Ok((v, jiff::Timestamp::MAX))
                    }
                    .boxed()
                },
            )
            .unwrap();
        (fetch_of(in_flight), tx)
    }

    fn fetch_of(in_flight: crate::azure::InFlight) -> Fetch {
        Fetch::of_test(in_flight)
    }

    fn join(cache: &crate::azure::SingleFlight<&'static str, u32>, name: &'static str) -> Fetch {
        let in_flight = cache
            .fetching(
                &name,
                jiff::Timestamp::UNIX_EPOCH,
                |_| true,
                || async { unreachable!("joins the fetch in flight") }.boxed(),
            )
            .unwrap();
        assert!(!in_flight.started);
        fetch_of(in_flight)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<BindingKey>) -> Option<BindingKey> {
        tokio::time::timeout(Duration::from_secs(5), rx.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn the_waiters_of_one_fetch_share_one_wait_and_are_queued_when_it_ends() {
        let ahead = Ahead::default();
        let (mut v1, mut v2) = (
            ahead.subscribe(Version::V1beta1),
            ahead.subscribe(Version::V1beta2),
        );
        let cache = crate::azure::SingleFlight::new();
        let (first, end_first) = fetch(&cache, "a");
        let (other, end_other) = fetch(&cache, "b");
        let now = Instant::now();
        let never = |_: &Waiter, _: &AzureError| panic!("no failure");
        for (fetch, version, name, scope) in [
            (first, Version::V1beta2, "one", "s"),
            (join(&cache, "a"), Version::V1beta1, "two", "s"),
            (join(&cache, "a"), Version::V1beta2, "three", "t"),
            (other, Version::V1beta2, "four", "s"),
        ] {
            ahead.wait(fetch, key(version, name), request(scope), now, never);
        }
        assert_eq!(ahead.waiting(), (4, 2), "4 bindings wait for 2 fetches");
        {
            let groups = ahead.lock();
            let a = groups.values().find(|g| g.len() == 3).unwrap();
            assert!(
                Arc::ptr_eq(&a[0].request, &a[1].request),
                "the same request, once"
            );
            assert!(!Arc::ptr_eq(&a[0].request, &a[2].request));
        }

        // Nothing is queued before its fetch ends.
        tokio::task::yield_now().await;
        assert!(v1.next().now_or_never().is_none());
        assert!(v2.next().now_or_never().is_none());

        end_first.send(Ok(7)).unwrap();
        assert_eq!(next(&mut v2).await.unwrap().name, "one");
        assert_eq!(next(&mut v2).await.unwrap().name, "three");
        assert_eq!(
            next(&mut v1).await.unwrap().name,
            "two",
            "on its own version's queue"
        );
        assert_eq!(ahead.waiting(), (1, 1));
        assert!(v2.next().now_or_never().is_none(), "four still waits");

        end_other.send(Ok(8)).unwrap();
        assert_eq!(next(&mut v2).await.unwrap().name, "four");
        assert_eq!(ahead.waiting(), (0, 0));
    }

    #[tokio::test]
    async fn a_failed_fetch_is_handed_to_each_waiter_before_its_pass_is_queued() {
        let ahead = Ahead::default();
        let mut v2 = ahead.subscribe(Version::V1beta2);
        let cache = crate::azure::SingleFlight::new();
        let (first, end) = fetch(&cache, "a");
        let failed = Arc::new(Mutex::new(Vec::new()));
        let record = |failed: &Arc<Mutex<Vec<(String, String)>>>| {
            let failed = failed.clone();
            move |w: &Waiter, e: &AzureError| {
                let scope = w.request.scope.clone().unwrap_or_default();
                assert_eq!(e.kind(), ErrorKind::AzureUnavailable);
                failed.lock().unwrap().push((w.key.name.clone(), scope));
            }
        };
        let now = Instant::now();
        ahead.wait(
            first,
            key(Version::V1beta2, "one"),
            request("s"),
            now,
            record(&failed),
        );
        ahead.wait(
            join(&cache, "a"),
            key(Version::V1beta2, "two"),
            request("t"),
            now,
            record(&failed),
        );
        end.send(Err(AzureError::new(ErrorKind::AzureUnavailable, "down")))
            .unwrap();
        assert_eq!(next(&mut v2).await.unwrap().name, "one");
        assert_eq!(next(&mut v2).await.unwrap().name, "two");
        assert_eq!(
            *failed.lock().unwrap(),
            [("one".into(), "s".into()), ("two".into(), "t".into())],
            "each waiter's failure, with its own request"
        );
    }

    #[tokio::test]
    async fn a_binding_that_joins_a_fetch_whose_wait_ended_is_still_queued() {
        let ahead = Ahead::default();
        let mut v2 = ahead.subscribe(Version::V1beta2);
        let cache = crate::azure::SingleFlight::new();
        let (first, end) = fetch(&cache, "a");
        // Handed out while in flight, registered only after the fetch and its wait ended.
        let late = join(&cache, "a");
        let now = Instant::now();
        let never = |_: &Waiter, _: &AzureError| panic!("no failure");
        ahead.wait(
            first,
            key(Version::V1beta2, "one"),
            request("s"),
            now,
            never,
        );
        end.send(Ok(7)).unwrap();
        assert_eq!(next(&mut v2).await.unwrap().name, "one");
        assert_eq!(ahead.waiting(), (0, 0));
        ahead.wait(
            late,
            key(Version::V1beta2, "late"),
            request("s"),
            now,
            never,
        );
        assert_eq!(next(&mut v2).await.unwrap().name, "late");
    }
}
