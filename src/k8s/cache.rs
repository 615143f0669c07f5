//! A watch-fed cache indexed by namespace. Reconciles look up a binding's Secrets and
//! ServiceAccounts in its own namespace only, so a pass costs O(objects in the namespace),
//! not O(objects in the cluster) — with 10,000 bindings the difference is quadratic.
//!
//! It follows kube-runtime's watcher protocol: `Init` starts a fresh buffer, `InitApply` fills
//! it, `InitDone` swaps it in (so a relist after a 410 never shows a half-empty cache), and
//! `Apply`/`Delete` edit in place.
//!
//! The controller's own writes go in too ([`NsCache::written`], [`NsCache::deleted`]): the
//! object the API server answered a write with is the newest there is, so the next pass
//! decides — and preconditions its next write — on it instead of on whatever the watch has
//! delivered so far. Without this, every write made while a watch lagged (a stalled or
//! restarting watch, a busy API server) was preconditioned on a stale `resourceVersion` and
//! answered 409 (thousands per soak run). An event that arrives later and is older than what
//! the cache holds (both resourceVersions integers, as etcd's revisions are) is ignored; a
//! relist is taken as it is.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::api::policy::AcrPullPolicy;
use super::binding::BindingResource;
use super::observe::SecretMeta;
use crate::state::binding::{Version, WI_CLIENT_ID_ANNOTATION, WI_TENANT_ID_ANNOTATION};
use crate::state::names::{BINDING_LABEL, IDENTITY_AUDIENCE_ANNOTATION};

/// The prefix of the annotations acrpull writes on pull Secrets.
const ACRPULL_ANNOTATION_PREFIX: &str = "acr.microsoft.com/";
use crate::state::decide::Sibling;
use crate::state::record::Phase;

/// The caches keep only what decisions read (memory is per binding: at 10,000 bindings every
/// field kept costs it 10,000 times). Never `managedFields`, often the largest part of an
/// object, nor annotations a decision never reads (`kubectl apply` copies the whole object
/// into one): a binding keeps only its identity-audience annotation.
pub fn trim_binding<K: kube::Resource>(o: &mut K) {
    let m = o.meta_mut();
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == IDENTITY_AUDIENCE_ANNOTATION);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// A ServiceAccount: its pull secrets and the workload-identity annotations; not its token
/// secrets, labels, owners or other annotations.
pub fn trim_service_account(sa: &mut ServiceAccount) {
    sa.secrets = None;
    sa.automount_service_account_token = None;
    let m = &mut sa.metadata;
    m.managed_fields = None;
    m.labels = None;
    m.owner_references = None;
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == WI_CLIENT_ID_ANNOTATION || k == WI_TENANT_ID_ANNOTATION);
    }
}

/// A pull Secret's metadata: the binding label, acrpull's annotations and the owner.
pub fn trim_secret(s: &mut SecretMeta) {
    let m = &mut s.metadata;
    m.managed_fields = None;
    if let Some(l) = m.labels.as_mut() {
        l.retain(|k, _| k == BINDING_LABEL);
    }
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(ACRPULL_ANNOTATION_PREFIX));
    }
}

/// The caches the controllers read: Secrets (metadata) and ServiceAccounts, by namespace, and
/// the bindings our own writes returned; with `--tenancy-mode` audit or enforce also Namespaces
/// (metadata: their labels) and `AcrPullPolicy` objects, both cluster-scoped (namespace `""`).
#[derive(Default, Clone)]
pub struct Caches {
    pub secrets: NsCache<SecretMeta>,
    pub service_accounts: NsCache<ServiceAccount>,
    pub bindings: WrittenBindings,
    pub v1beta1: BindingIndex,
    pub v1beta2: BindingIndex,
    pub namespaces: NsCache<NamespaceMeta>,
    pub policies: NsCache<AcrPullPolicy>,
    /// One attach at a time per ServiceAccount (see [`ServiceAccountLocks`]).
    pub sa_locks: ServiceAccountLocks,
}

/// Per ServiceAccount, a lock its attach patches take. Bindings sharing a ServiceAccount are
/// often minted together; without it two passes patch it from the same cached
/// resourceVersion, one is answered 409 and its binding costs a second pass. Under the lock
/// the second pass sees the first one's answer in the cache — usually with its own name
/// already in it (rule 8 names the siblings) — and writes nothing. Entries live only while
/// held or awaited, so memory stays flat with the number of ServiceAccounts.
#[derive(Default, Clone)]
pub struct ServiceAccountLocks(Arc<Mutex<LockMap>>);

type LockMap = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// Held while a ServiceAccount is written; released (and forgotten when unused) on drop.
pub struct ServiceAccountGuard {
    locks: ServiceAccountLocks,
    key: (String, String),
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ServiceAccountLocks {
    pub async fn lock(&self, namespace: &str, name: &str) -> ServiceAccountGuard {
        let key = (namespace.to_string(), name.to_string());
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        ServiceAccountGuard {
            locks: self.clone(),
            key,
            guard: Some(guard),
        }
    }

    /// Locks held or awaited (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ServiceAccountGuard {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        // Only the map's reference left: nobody holds or awaits it.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

impl Caches {
    /// The binding index of `version`.
    pub fn index_of(&self, version: Version) -> &BindingIndex {
        match version {
            Version::V1beta1 => &self.v1beta1,
            Version::V1beta2 => &self.v1beta2,
        }
    }
}

/// What the controller keeps about every binding besides kube-runtime's own store: what maps a
/// ServiceAccount to its bindings and what rule 8 needs to attach siblings in one patch — not
/// the whole object a second time.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// ServiceAccounts whose changes matter to the binding (target, workload identity).
    pub service_accounts: Vec<String>,
    pub deleting: bool,
    pub sibling: Sibling,
}

impl IndexEntry {
    pub fn of<K: BindingResource>(b: &K) -> Self {
        Self {
            service_accounts: b.service_accounts(),
            deleting: b.meta().deletion_timestamp.is_some(),
            sibling: Sibling {
                name: b.name_any(),
                spec: b.spec_view(),
                failed: b
                    .status()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|p| p == Phase::Failed.as_str()),
            },
        }
    }
}

type EntryIndex = HashMap<String, BTreeMap<String, Arc<IndexEntry>>>;

/// The bindings of one version, by namespace, as [`IndexEntry`]s. Follows the watcher
/// protocol like [`NsCache`].
#[derive(Default, Clone)]
pub struct BindingIndex(Arc<RwLock<(EntryIndex, Option<EntryIndex>)>>);

impl BindingIndex {
    pub fn apply_event<K: BindingResource>(&self, event: &watcher::Event<K>) {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let (live, buffer) = &mut *guard;
        let put = |m: &mut EntryIndex, o: &K| {
            let (ns, name) = key(o);
            m.entry(ns)
                .or_default()
                .insert(name, Arc::new(IndexEntry::of(o)));
        };
        match event {
            watcher::Event::Init => *buffer = Some(HashMap::new()),
            watcher::Event::InitApply(o) => match buffer.as_mut() {
                Some(b) => put(b, o),
                None => put(live, o),
            },
            watcher::Event::InitDone => {
                if let Some(b) = buffer.take() {
                    *live = b;
                }
            }
            watcher::Event::Apply(o) => put(live, o),
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                if let Some(m) = live.get_mut(&ns) {
                    m.remove(&name);
                    if m.is_empty() {
                        live.remove(&ns);
                    }
                }
            }
        }
    }

    /// The bindings of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(String, Arc<IndexEntry>)> {
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        guard
            .0
            .get(namespace)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The other bindings of `namespace` that target `service_account` and are not being deleted.
    pub fn siblings(&self, namespace: &str, name: &str, service_account: &str) -> Vec<Sibling> {
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        guard
            .0
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(n, e)| {
                n.as_str() != name
                    && !e.deleting
                    && e.service_accounts.first().map(String::as_str) == Some(service_account)
            })
            .map(|(_, e)| e.sibling.clone())
            .collect()
    }
}

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

/// A Namespace as metadata only: the labels tenancy policies select on.
pub type NamespaceMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>;

type Index<K> = HashMap<String, BTreeMap<String, Arc<K>>>;

struct Inner<K> {
    live: Index<K>,
    buffer: Option<Index<K>>,
    /// resourceVersions our own writes were answered with, until the watch delivers them.
    echoes: Echoes,
    /// Objects with a write of ours in flight: how many, and the watch events that arrived
    /// meanwhile (see [`NsCache::begin_write`]).
    in_flight: HashMap<(String, String), Held<K>>,
    /// Wakes the bindings of an object whose held-back event was not our own.
    waker: Option<Waker<K>>,
}

type Waker<K> = Arc<dyn Fn(&K) + Send + Sync>;

/// Writes in flight to one object, and the watch events held back meanwhile.
type Held<K> = (usize, Vec<Arc<K>>);

/// A write of ours to one object, in flight until dropped (see [`NsCache::begin_write`]).
pub struct InFlight<K: ResourceExt + Clone> {
    cache: NsCache<K>,
    key: (String, String),
}

impl<K: ResourceExt + Clone> Drop for InFlight<K> {
    fn drop(&mut self) {
        let (waker, wake) = {
            let mut inner = self.cache.0.write().unwrap_or_else(|e| e.into_inner());
            let last = match inner.in_flight.get_mut(&self.key) {
                Some((n, _)) => {
                    *n -= 1;
                    *n == 0
                }
                None => false,
            };
            let wake = if last {
                inner
                    .in_flight
                    .remove(&self.key)
                    .map(|(_, d)| d)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            (inner.waker.clone(), wake)
        };
        // Someone else's change arrived while we wrote (or the write failed): wake as the
        // watch would have.
        if let Some(waker) = waker {
            for o in wake {
                waker(&o);
            }
        }
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

/// Shared, cheap to clone.
pub struct NsCache<K>(Arc<RwLock<Inner<K>>>);

impl<K> Clone for NsCache<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Default for NsCache<K> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Inner {
            live: HashMap::new(),
            buffer: None,
            echoes: Echoes::default(),
            in_flight: HashMap::new(),
            waker: None,
        })))
    }
}

fn key<K: ResourceExt>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: ResourceExt + Clone> NsCache<K> {
    /// Apply a watch event; returns whether it is the echo of our own write (see [`Echoes`]),
    /// which must not wake a pass.
    pub fn apply_event(&self, event: &watcher::Event<K>) -> bool {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => {
                inner.buffer = Some(HashMap::new());
                // A relist starts over: what it delivers is the state, not events.
                inner.echoes.clear();
            }
            watcher::Event::InitApply(o) => {
                let (ns, name) = key(o);
                let o = Arc::new(o.clone());
                match inner.buffer.as_mut() {
                    Some(b) => {
                        b.entry(ns).or_default().insert(name, o);
                    }
                    None => {
                        inner.live.entry(ns).or_default().insert(name, o);
                    }
                }
            }
            watcher::Event::InitDone => {
                if let Some(b) = inner.buffer.take() {
                    inner.live = b;
                }
            }
            watcher::Event::Apply(o) => {
                let (ns, name) = key(o);
                let echo = inner
                    .echoes
                    .is_echo(&ns, &name, o.meta().resource_version.as_deref());
                // A write of ours to it is in flight: its echo can arrive before its answer.
                // Held back until the answer tells which it is.
                let held = !echo
                    && match inner.in_flight.get_mut(&(ns, name)) {
                        Some((_, deferred)) => {
                            deferred.push(Arc::new(o.clone()));
                            true
                        }
                        None => false,
                    };
                inner.upsert(o.clone());
                return echo || held;
            }
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                if let Some(m) = inner.live.get_mut(&ns) {
                    m.remove(&name);
                    if m.is_empty() {
                        inner.live.remove(&ns);
                    }
                }
            }
        }
        false
    }

    /// The object the API server answered a write of ours with (its watch event, when it
    /// comes, is an echo).
    pub fn written(&self, object: K) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        let (ns, name) = key(&object);
        let answered = object.meta().resource_version.clone();
        // Its echo already arrived (held back, see `begin_write`): nothing to wake, nothing
        // to expect.
        if let Some((_, deferred)) = inner.in_flight.get_mut(&(ns.clone(), name.clone())) {
            let before = deferred.len();
            deferred.retain(|o| answered.is_none() || o.meta().resource_version != answered);
            if deferred.len() < before {
                inner.upsert(object);
                return;
            }
        }
        inner
            .echoes
            .expect(&ns, &name, object.meta().resource_version.as_deref());
        inner.upsert(object);
    }

    /// Mark a write of ours to `namespace/name` in flight until the returned guard is dropped.
    /// The watch can deliver the write's event before the write's answer reaches
    /// [`NsCache::written`]; such an event is held back rather than waking the bindings
    /// (their pass would find nothing to do). When the guard drops, held-back events that
    /// were not our write's are handed to the waker.
    pub fn begin_write(&self, namespace: &str, name: &str) -> InFlight<K> {
        let key = (namespace.to_string(), name.to_string());
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        inner.in_flight.entry(key.clone()).or_default().0 += 1;
        InFlight {
            cache: self.clone(),
            key,
        }
    }

    /// Set what wakes the bindings of an object whose held-back watch event was not ours.
    pub fn set_waker(&self, waker: impl Fn(&K) + Send + Sync + 'static) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        inner.waker = Some(Arc::new(waker));
    }

    /// An object we deleted.
    pub fn deleted(&self, namespace: &str, name: &str) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = inner.live.get_mut(namespace) {
            m.remove(name);
            if m.is_empty() {
                inner.live.remove(namespace);
            }
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.live.get(namespace).and_then(|m| m.get(name)).cloned()
    }

    /// Every object in `namespace`, ordered by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner
            .live
            .get(namespace)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner.live.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `incoming` is older than `held` (both integer resourceVersions).
fn older(incoming: Option<String>, held: Option<String>) -> bool {
    let parse = |rv: Option<String>| rv.and_then(|v| v.parse::<u64>().ok());
    matches!((parse(incoming), parse(held)), (Some(i), Some(h)) if i < h)
}

impl<K: ResourceExt + Clone> Inner<K> {
    /// Insert or replace, unless what is held is newer.
    fn upsert(&mut self, o: K) {
        let (ns, name) = key(&o);
        let m = self.live.entry(ns).or_default();
        if let Some(held) = m.get(&name) {
            if older(o.resource_version(), held.resource_version()) {
                return;
            }
        }
        m.insert(name, Arc::new(o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(ns: &str, name: &str, v: &str) -> ConfigMap {
        cm_at(ns, name, v, None)
    }

    fn cm_at(ns: &str, name: &str, v: &str, rv: Option<u64>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: rv.map(|r| r.to_string()),
                ..Default::default()
            },
            data: Some([("v".to_string(), v.to_string())].into()),
            ..Default::default()
        }
    }

    fn value(c: &NsCache<ConfigMap>, ns: &str, name: &str) -> Option<String> {
        c.get(ns, name)
            .and_then(|o| o.data.as_ref().and_then(|d| d.get("v").cloned()))
    }

    #[test]
    fn an_echo_that_beats_the_write_answer_wakes_nothing_and_a_foreign_change_still_wakes() {
        let c = NsCache::<ConfigMap>::default();
        let woken = Arc::new(Mutex::new(Vec::new()));
        let w = woken.clone();
        c.set_waker(move |o: &ConfigMap| {
            w.lock()
                .unwrap()
                .push(o.metadata.resource_version.clone().unwrap())
        });
        c.apply_event(&watcher::Event::Apply(cm_at("ns", "a", "0", Some(1))));
        // Our write is answered at rv 2, but the watch delivers rv 2 first.
        let flight = c.begin_write("ns", "a");
        assert!(c.apply_event(&watcher::Event::Apply(cm_at("ns", "a", "1", Some(2)))));
        c.written(cm_at("ns", "a", "1", Some(2)));
        drop(flight);
        assert!(woken.lock().unwrap().is_empty(), "{woken:?}");
        // No stale expectation: someone else's later change wakes at once.
        assert!(!c.apply_event(&watcher::Event::Apply(cm_at("ns", "a", "x", Some(3)))));
        // Someone else's change held back during a write that then failed: woken on drop.
        let flight = c.begin_write("ns", "a");
        assert!(c.apply_event(&watcher::Event::Apply(cm_at("ns", "a", "y", Some(4)))));
        assert!(woken.lock().unwrap().is_empty());
        drop(flight);
        assert_eq!(*woken.lock().unwrap(), vec!["4".to_string()]);
        assert_eq!(value(&c, "ns", "a").as_deref(), Some("y"));
    }

    #[test]
    fn follows_the_watcher_protocol() {
        let c = NsCache::<ConfigMap>::default();
        c.apply_event(&watcher::Event::Init);
        c.apply_event(&watcher::Event::InitApply(cm("a", "x", "1")));
        assert!(c.is_empty(), "a relist in progress is not visible");
        c.apply_event(&watcher::Event::InitDone);
        assert_eq!(value(&c, "a", "x").as_deref(), Some("1"));
        c.apply_event(&watcher::Event::Apply(cm("a", "y", "2")));
        c.apply_event(&watcher::Event::Apply(cm("b", "x", "3")));
        assert_eq!(c.in_namespace("a").len(), 2);
        assert_eq!(c.in_namespace("b").len(), 1);
        c.apply_event(&watcher::Event::Delete(cm("a", "y", "2")));
        assert_eq!(c.in_namespace("a").len(), 1);
        // A relist replaces everything at InitDone: objects deleted meanwhile disappear.
        c.apply_event(&watcher::Event::Init);
        c.apply_event(&watcher::Event::InitApply(cm("b", "x", "4")));
        assert_eq!(value(&c, "a", "x").as_deref(), Some("1"));
        c.apply_event(&watcher::Event::InitDone);
        assert_eq!(value(&c, "a", "x"), None);
        assert_eq!(value(&c, "b", "x").as_deref(), Some("4"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn own_writes_are_seen_at_once_and_never_undone_by_a_late_event() {
        let c = NsCache::<ConfigMap>::default();
        c.apply_event(&watcher::Event::Apply(cm_at("a", "x", "old", Some(10))));
        // Our write answered with resourceVersion 12: visible before the watch catches up.
        c.written(cm_at("a", "x", "ours", Some(12)));
        assert_eq!(value(&c, "a", "x").as_deref(), Some("ours"));
        // The lagging watch now delivers revision 11: older than what we hold, ignored.
        c.apply_event(&watcher::Event::Apply(cm_at("a", "x", "between", Some(11))));
        assert_eq!(value(&c, "a", "x").as_deref(), Some("ours"));
        // Its own event (12) and anything newer replace it as usual.
        c.apply_event(&watcher::Event::Apply(cm_at("a", "x", "later", Some(13))));
        assert_eq!(value(&c, "a", "x").as_deref(), Some("later"));
        // A write answered with an older revision than the watch already delivered: kept newer.
        c.written(cm_at("a", "x", "stale answer", Some(12)));
        assert_eq!(value(&c, "a", "x").as_deref(), Some("later"));
        // Deletions of ours are seen at once too.
        c.deleted("a", "x");
        assert_eq!(value(&c, "a", "x"), None);
        assert!(c.is_empty());
    }

    #[test]
    fn the_watch_event_of_our_own_write_is_an_echo_and_nothing_else_is() {
        let c = NsCache::<ConfigMap>::default();
        assert!(!c.apply_event(&watcher::Event::Apply(cm_at("a", "x", "v", Some(10)))));
        c.written(cm_at("a", "x", "ours", Some(12)));
        c.written(cm_at("a", "x", "ours again", Some(13)));
        // Our first write comes back: an echo.
        assert!(c.apply_event(&watcher::Event::Apply(cm_at("a", "x", "ours", Some(12)))));
        // Someone else's write in between ours: not an echo.
        c.written(cm_at("a", "x", "third", Some(15)));
        assert!(!c.apply_event(&watcher::Event::Apply(cm_at("a", "x", "theirs", Some(14)))));
        assert!(c.apply_event(&watcher::Event::Apply(cm_at("a", "x", "third", Some(15)))));
        // Everything delivered: nothing left to remember.
        assert!(c.0.read().unwrap().echoes.is_empty());
        // Another object at the same resourceVersion is not an echo.
        c.written(cm_at("a", "y", "ours", Some(20)));
        assert!(!c.apply_event(&watcher::Event::Apply(cm_at("b", "y", "other", Some(20)))));
        // A relist forgets expected echoes: it reports the state, and what it lists wakes.
        c.apply_event(&watcher::Event::Init);
        assert!(c.0.read().unwrap().echoes.is_empty());
    }
}
