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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::api::policy::AcrPullPolicy;
use super::binding::BindingResource;
use crate::state::binding::Version;
use crate::state::decide::Sibling;
use crate::state::record::Phase;

pub use super::sa_locks::{ServiceAccountGuard, ServiceAccountLocks};
pub use super::trim::{
    cached_secret_event, trim_binding, trim_service_account, CachedSecret, Owner,
};
pub use super::written::{BindingWrite, Echoes, WrittenBindings};

/// The caches the controllers read: Secrets (metadata) and ServiceAccounts, by namespace, and
/// the bindings our own writes returned; with `--tenancy-mode` audit or enforce also Namespaces
/// (metadata: their labels) and `AcrPullPolicy` objects, both cluster-scoped (namespace `""`).
#[derive(Default, Clone)]
pub struct Caches {
    pub secrets: NsCache<CachedSecret>,
    pub service_accounts: NsCache<ServiceAccount>,
    pub bindings: WrittenBindings,
    pub v1beta1: BindingIndex,
    pub v1beta2: BindingIndex,
    pub namespaces: NsCache<NamespaceMeta>,
    pub policies: NsCache<AcrPullPolicy>,
    /// One attach at a time per ServiceAccount (see [`ServiceAccountLocks`]).
    pub sa_locks: ServiceAccountLocks,
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
/// ServiceAccount to its bindings — not the object a second time. What rule 8 needs of a
/// sibling (its spec, whether it failed) is read from kube-runtime's store when a pass asks
/// (see [`BindingIndex::set_lookup`]): a copy of every binding's spec here was ~4.8 MB at
/// 10,000 bindings.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// ServiceAccounts whose changes matter to the binding (target, workload identity).
    pub service_accounts: Vec<String>,
    pub deleting: bool,
}

impl IndexEntry {
    pub fn of<K: BindingResource>(b: &K) -> Self {
        Self {
            service_accounts: b.service_accounts(),
            deleting: b.meta().deletion_timestamp.is_some(),
        }
    }
}

/// A binding as rule 8 sees it from another binding's pass.
pub fn sibling_of<K: BindingResource>(b: &K) -> Sibling {
    Sibling {
        name: b.name_any(),
        spec: b.spec_view(),
        failed: b
            .status()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == Phase::Failed.as_str()),
    }
}

/// Finds a binding of the index's version by namespace and name (in kube-runtime's store).
type Lookup = Arc<dyn Fn(&str, &str) -> Option<Sibling> + Send + Sync>;

impl IndexEntry {
    /// The ServiceAccount the binding's pull secret goes to.
    fn target(&self) -> &str {
        self.service_accounts.first().map_or("", String::as_str)
    }
}

/// One namespace's bindings: by name, and the names by target ServiceAccount (so a pass finds
/// its siblings without walking every binding of the namespace; at 10,000 bindings that walk,
/// made at every step of every pass, was the largest part of deciding).
#[derive(Default)]
struct NsEntries {
    by_name: BTreeMap<String, Arc<IndexEntry>>,
    by_target: HashMap<String, BTreeSet<String>>,
}

impl NsEntries {
    fn insert(&mut self, name: String, entry: Arc<IndexEntry>) {
        self.by_target
            .entry(entry.target().to_string())
            .or_default()
            .insert(name.clone());
        if let Some(old) = self.by_name.insert(name.clone(), entry) {
            self.unlink(&name, &old);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.unlink(name, &old);
        }
    }

    /// Forget `name` under `old`'s target, unless its current entry has the same target.
    fn unlink(&mut self, name: &str, old: &IndexEntry) {
        let target = old.target();
        if self.by_name.get(name).is_some_and(|e| e.target() == target) {
            return;
        }
        if let Some(names) = self.by_target.get_mut(target) {
            names.remove(name);
            if names.is_empty() {
                self.by_target.remove(target);
            }
        }
    }
}

type EntryIndex = HashMap<String, NsEntries>;

/// The bindings of one version, by namespace, as [`IndexEntry`]s. Follows the watcher
/// protocol like [`NsCache`].
#[derive(Default, Clone)]
pub struct BindingIndex {
    entries: Arc<RwLock<(EntryIndex, Option<EntryIndex>)>>,
    lookup: Arc<RwLock<Option<Lookup>>>,
}

impl BindingIndex {
    /// Where [`BindingIndex::siblings`] reads a sibling's spec and phase: the binding store
    /// of the controller of this version. Without one, a pass has no siblings (its own pass
    /// attaches each binding).
    pub fn set_lookup(
        &self,
        lookup: impl Fn(&str, &str) -> Option<Sibling> + Send + Sync + 'static,
    ) {
        *self.lookup.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(lookup));
    }

    pub fn apply_event<K: BindingResource>(&self, event: &watcher::Event<K>) {
        let mut guard = self.entries.write().unwrap_or_else(|e| e.into_inner());
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
                    if m.by_name.is_empty() {
                        live.remove(&ns);
                    }
                }
            }
        }
    }

    /// The bindings of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(String, Arc<IndexEntry>)> {
        let guard = self.entries.read().unwrap_or_else(|e| e.into_inner());
        guard
            .0
            .get(namespace)
            .map(|m| {
                m.by_name
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The other bindings of `namespace` that target `service_account` and are not being
    /// deleted, by name.
    pub fn siblings(&self, namespace: &str, name: &str, service_account: &str) -> Vec<Sibling> {
        let Some(lookup) = self
            .lookup
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Vec::new();
        };
        let names: Vec<String> = {
            let guard = self.entries.read().unwrap_or_else(|e| e.into_inner());
            let Some(m) = guard.0.get(namespace) else {
                return Vec::new();
            };
            m.by_target
                .get(service_account)
                .into_iter()
                .flatten()
                .filter(|n| n.as_str() != name)
                .filter(|n| {
                    m.by_name
                        .get(*n)
                        .is_some_and(|e| !e.deleting && e.target() == service_account)
                })
                .cloned()
                .collect()
        };
        // Not under the index's lock: the store has its own. A binding the store does not
        // hold yet (its event is between the two) is left to its own pass.
        names.iter().filter_map(|n| lookup(namespace, n)).collect()
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

/// What an [`NsCache`] needs of the objects it holds: where each is, and its resourceVersion.
pub trait Cached: Clone {
    /// (namespace, name).
    fn cache_key(&self) -> (String, String);
    fn cache_rv(&self) -> Option<&str>;
}

impl<K: kube::Resource + Clone> Cached for K {
    fn cache_key(&self) -> (String, String) {
        key(self)
    }

    fn cache_rv(&self) -> Option<&str> {
        self.meta().resource_version.as_deref()
    }
}

impl Cached for CachedSecret {
    fn cache_key(&self) -> (String, String) {
        (self.namespace.clone(), self.view.name.clone())
    }

    fn cache_rv(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

/// A write of ours to one object, in flight until dropped (see [`NsCache::begin_write`]).
pub struct InFlight<K: Cached> {
    cache: NsCache<K>,
    key: (String, String),
}

impl<K: Cached> Drop for InFlight<K> {
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

pub(super) fn key<K: ResourceExt>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: Cached> NsCache<K> {
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
                let (ns, name) = o.cache_key();
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
                let (ns, name) = o.cache_key();
                let echo = inner.echoes.is_echo(&ns, &name, o.cache_rv());
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
                let (ns, name) = o.cache_key();
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
        let (ns, name) = object.cache_key();
        let answered = object.cache_rv().map(str::to_string);
        // Its echo already arrived (held back, see `begin_write`): nothing to wake, nothing
        // to expect.
        if let Some((_, deferred)) = inner.in_flight.get_mut(&(ns.clone(), name.clone())) {
            let before = deferred.len();
            deferred.retain(|o| answered.is_none() || o.cache_rv() != answered.as_deref());
            if deferred.len() < before {
                inner.upsert(object);
                return;
            }
        }
        inner.echoes.expect(&ns, &name, object.cache_rv());
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

    /// The objects in `namespace` that `keep` keeps, ordered by name: a pass looks at a few
    /// of a namespace's objects, and cloning every one of them at every step was a large part
    /// of deciding at 10,000 bindings.
    pub fn in_namespace_where(&self, namespace: &str, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        let inner = self.0.read().unwrap_or_else(|e| e.into_inner());
        inner
            .live
            .get(namespace)
            .map(|m| m.values().filter(|o| keep(o)).cloned().collect())
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
fn older(incoming: Option<&str>, held: Option<&str>) -> bool {
    let parse = |rv: Option<&str>| rv.and_then(|v| v.parse::<u64>().ok());
    matches!((parse(incoming), parse(held)), (Some(i), Some(h)) if i < h)
}

impl<K: Cached> Inner<K> {
    /// Insert or replace, unless what is held is newer.
    fn upsert(&mut self, o: K) {
        let (ns, name) = o.cache_key();
        let m = self.live.entry(ns).or_default();
        if let Some(held) = m.get(&name) {
            if older(o.cache_rv(), held.cache_rv()) {
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
        let woken = Arc::new(std::sync::Mutex::new(Vec::new()));
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

    fn apb(name: &str, sa: &str, deleting: bool) -> crate::k8s::api::v1beta2::AcrPullBinding {
        let mut meta = serde_json::json!({"name": name, "namespace": "team"});
        if deleting {
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding",
            "metadata": meta,
            "spec": {"acr": {"server": "demo.azurecr.io", "scope": "repository:app:pull"},
                     "auth": {"managedIdentity": {"clientID": "c"}}, "serviceAccountName": sa}}))
        .unwrap()
    }

    /// Siblings come from the by-target index: a binding that moves to another
    /// ServiceAccount, is deleted or is being deleted stops being a sibling.
    #[test]
    fn siblings_follow_target_changes_and_deletions() {
        let index = BindingIndex::default();
        assert!(index.siblings("team", "me", "sa1").is_empty());
        index.set_lookup(|_, name| Some(sibling_of(&apb(name, "from-the-store", false))));
        let names = |sa: &str| -> Vec<String> {
            index
                .siblings("team", "me", sa)
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        for (name, sa) in [("me", "sa1"), ("b", "sa1"), ("a", "sa1"), ("c", "sa2")] {
            index.apply_event(&watcher::Event::Apply(apb(name, sa, false)));
        }
        assert_eq!(names("sa1"), vec!["a", "b"]);
        assert_eq!(names("sa2"), vec!["c"]);
        // b moves to sa2; a is being deleted; c is deleted.
        index.apply_event(&watcher::Event::Apply(apb("b", "sa2", false)));
        assert_eq!(names("sa1"), vec!["a"]);
        assert_eq!(names("sa2"), vec!["b", "c"]);
        index.apply_event(&watcher::Event::Apply(apb("a", "sa1", true)));
        index.apply_event(&watcher::Event::Delete(apb("c", "sa2", false)));
        assert!(names("sa1").is_empty());
        assert_eq!(names("sa2"), vec!["b"]);
        assert_eq!(names("elsewhere"), Vec::<String>::new());
        // A relist replaces everything at once.
        type Apb = crate::k8s::api::v1beta2::AcrPullBinding;
        index.apply_event(&watcher::Event::<Apb>::Init);
        index.apply_event(&watcher::Event::InitApply(apb("z", "sa1", false)));
        assert_eq!(names("sa2"), vec!["b"]);
        index.apply_event(&watcher::Event::<Apb>::InitDone);
        assert_eq!(names("sa1"), vec!["z"]);
        assert!(names("sa2").is_empty());
        assert_eq!(index.in_namespace("team").len(), 1);
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
