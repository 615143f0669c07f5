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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::api::policy::AcrPullPolicy;
use super::observe::SecretMeta;

/// The caches the controllers read: Secrets (metadata) and ServiceAccounts, by namespace;
/// with `--tenancy-mode` audit or enforce also Namespaces (metadata: their labels) and
/// `AcrPullPolicy` objects, both cluster-scoped (namespace `""`).
#[derive(Default, Clone)]
pub struct Caches {
    pub secrets: NsCache<SecretMeta>,
    pub service_accounts: NsCache<ServiceAccount>,
    pub namespaces: NsCache<NamespaceMeta>,
    pub policies: NsCache<AcrPullPolicy>,
}

/// A Namespace as metadata only: the labels tenancy policies select on.
pub type NamespaceMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>;

type Index<K> = HashMap<String, BTreeMap<String, Arc<K>>>;

struct Inner<K> {
    live: Index<K>,
    buffer: Option<Index<K>>,
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
        })))
    }
}

fn key<K: ResourceExt>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: ResourceExt + Clone> NsCache<K> {
    pub fn apply_event(&self, event: &watcher::Event<K>) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => inner.buffer = Some(HashMap::new()),
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
            watcher::Event::Apply(o) => inner.upsert(o.clone()),
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
    }

    /// The object the API server answered a write of ours with.
    pub fn written(&self, object: K) {
        let mut inner = self.0.write().unwrap_or_else(|e| e.into_inner());
        inner.upsert(object);
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
}
