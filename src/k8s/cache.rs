//! A watch-fed cache indexed by namespace. Reconciles look up a binding's Secrets and
//! ServiceAccounts in its own namespace only, so a pass costs O(objects in the namespace),
//! not O(objects in the cluster) — with 10,000 bindings the difference is quadratic.
//!
//! It follows kube-runtime's watcher protocol: `Init` starts a fresh buffer, `InitApply` fills
//! it, `InitDone` swaps it in (so a relist after a 410 never shows a half-empty cache), and
//! `Apply`/`Delete` edit in place.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use kube::runtime::watcher;
use kube::ResourceExt;

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
            watcher::Event::Apply(o) => {
                let (ns, name) = key(o);
                inner
                    .live
                    .entry(ns)
                    .or_default()
                    .insert(name, Arc::new(o.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(ns: &str, name: &str, v: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
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
}
