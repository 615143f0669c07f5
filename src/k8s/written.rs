//! The controller's own writes, remembered until their watch events arrive: the bindings our
//! writes returned ([`WrittenBindings`]) and the resourceVersions of our writes ([`Echoes`]),
//! so that the echo of a write of ours does not wake a pass.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::binding::BindingResource;
use super::cache::key;
use crate::state::binding::Version;

/// Bindings as our own writes (finalizer, status) returned them, until the binding watch has
/// caught up; and the echoes of those writes. The reflector store that kube-runtime hands a
/// pass can be behind our last write: a pass woken by something else then decides on the
/// newer of the two, instead of writing the same status again.
#[derive(Default, Clone)]
pub struct WrittenBindings(Arc<Mutex<WrittenInner>>);

/// Per binding (version, namespace, name): the resourceVersion of our latest write and the
/// binding as that write returned it.
type Latest = HashMap<(Version, String, String), (u64, Arc<dyn Any + Send + Sync>)>;

struct WrittenInner {
    echoes: HashMap<Version, Echoes>,
    latest: Latest,
    /// Bindings with a write of ours in flight, and how many.
    in_flight: HashMap<(Version, String, String), usize>,
    /// Bumped whenever a write ends, for [`WrittenBindings::settled`].
    ended: tokio::sync::watch::Sender<u64>,
}

impl Default for WrittenInner {
    fn default() -> Self {
        Self {
            echoes: HashMap::new(),
            latest: HashMap::new(),
            in_flight: HashMap::new(),
            ended: tokio::sync::watch::channel(0).0,
        }
    }
}

/// A write of ours to one binding, in flight until dropped.
pub struct BindingWrite {
    written: WrittenBindings,
    key: (Version, String, String),
}

impl Drop for BindingWrite {
    fn drop(&mut self) {
        let inner = &mut *self.written.lock();
        if let Some(n) = inner.in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                inner.in_flight.remove(&self.key);
            }
        }
        inner.ended.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// How long a binding's watch event waits for our write to it to be answered.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

impl WrittenBindings {
    /// Mark a write of ours to the binding in flight until the guard drops: the watch can
    /// deliver its event before the write's answer reaches [`WrittenBindings::written`].
    pub fn begin_write<K: BindingResource>(&self, namespace: &str, name: &str) -> BindingWrite {
        let key = (K::VERSION, namespace.to_string(), name.to_string());
        *self.lock().in_flight.entry(key.clone()).or_default() += 1;
        BindingWrite {
            written: self.clone(),
            key,
        }
    }

    /// Wait (at most [`SETTLE_LIMIT`]) until no write of ours to `object` is in flight, so
    /// that [`WrittenBindings::is_echo`] can tell its echo from someone else's change.
    pub async fn settled<K: BindingResource>(&self, object: &K) {
        let (ns, name) = key(object);
        let k = (K::VERSION, ns, name);
        let mut ended = {
            let inner = self.lock();
            if !inner.in_flight.contains_key(&k) {
                return;
            }
            inner.ended.subscribe()
        };
        let wait = async {
            loop {
                if ended.changed().await.is_err() {
                    return;
                }
                if !self.lock().in_flight.contains_key(&k) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(SETTLE_LIMIT, wait).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WrittenInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write of ours was answered with `object`.
    pub fn written<K: BindingResource>(&self, object: K) -> Arc<K> {
        let (ns, name) = key(&object);
        let rv = rv_of(object.meta().resource_version.as_deref());
        let object = Arc::new(object);
        let mut inner = self.lock();
        inner.echoes.entry(K::VERSION).or_default().expect(
            &ns,
            &name,
            object.meta().resource_version.as_deref(),
        );
        if let Some(rv) = rv {
            let held = inner
                .latest
                .entry((K::VERSION, ns, name))
                .or_insert((0, object.clone()));
            if rv >= held.0 {
                *held = (rv, object.clone());
            }
        }
        object
    }

    /// Whether the watch event of `object` is the echo of our own write; once the watch has
    /// delivered our latest write (or anything newer), the held copy is dropped.
    pub fn is_echo<K: BindingResource>(&self, object: &K) -> bool {
        let (ns, name) = key(object);
        let rv = object.meta().resource_version.as_deref();
        let mut inner = self.lock();
        let echo = inner
            .echoes
            .get_mut(&K::VERSION)
            .is_some_and(|e| e.is_echo(&ns, &name, rv));
        let k = (K::VERSION, ns, name);
        if let (Some(rv), Some(held)) = (rv_of(rv), inner.latest.get(&k)) {
            if rv >= held.0 {
                inner.latest.remove(&k);
            }
        }
        echo
    }

    /// The newer of `from_store` and what our own last write returned.
    pub fn newest<K: BindingResource>(&self, from_store: Arc<K>) -> Arc<K> {
        let (ns, name) = key(from_store.as_ref());
        let store_rv = rv_of(from_store.meta().resource_version.as_deref()).unwrap_or(0);
        let inner = self.lock();
        match inner.latest.get(&(K::VERSION, ns, name)) {
            Some((rv, held)) if *rv > store_rv => {
                held.clone().downcast::<K>().unwrap_or(from_store)
            }
            _ => from_store,
        }
    }

    /// Forget a binding (deleted, or no longer ours).
    pub fn forget<K: BindingResource>(&self, namespace: &str, name: &str) {
        let mut inner = self.lock();
        inner
            .latest
            .remove(&(K::VERSION, namespace.to_string(), name.to_string()));
        if let Some(e) = inner.echoes.get_mut(&K::VERSION) {
            e.0.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    /// Objects held (for tests and the memory bound).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.latest.len() + inner.echoes.values().map(Echoes::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The resourceVersions of our own writes, per object, that the watch has not delivered yet.
/// The watch event of a write whose answer the cache already holds (an "echo") tells the
/// controller nothing new, so it must not wake a pass: without this, every write of a
/// binding, its Secret or its ServiceAccount came back as a full reconcile (6.5 passes per
/// binding at 10,000). An event at any other resourceVersion is someone else's change, and
/// wakes as before; it also retires what it supersedes, so nothing is kept for long.
#[derive(Debug, Default)]
pub struct Echoes(HashMap<(String, String), Vec<u64>>);

fn rv_of(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|v| v.parse::<u64>().ok())
}

impl Echoes {
    /// We wrote `namespace/name` and were answered with `rv`.
    pub fn expect(&mut self, namespace: &str, name: &str, rv: Option<&str>) {
        if let Some(rv) = rv_of(rv) {
            self.0
                .entry((namespace.to_string(), name.to_string()))
                .or_default()
                .push(rv);
        }
    }

    /// Whether a watch event of `namespace/name` at `rv` is the echo of one of our writes.
    pub fn is_echo(&mut self, namespace: &str, name: &str, rv: Option<&str>) -> bool {
        let Some(rv) = rv_of(rv) else {
            return false;
        };
        let key = (namespace.to_string(), name.to_string());
        let Some(held) = self.0.get_mut(&key) else {
            return false;
        };
        let echo = held.contains(&rv);
        held.retain(|r| *r > rv);
        if held.is_empty() {
            self.0.remove(&key);
        }
        echo
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
