//! The storage stage: an in-memory stand-in for etcd and the watch cache. It holds an
//! etcd-like global `resourceVersion` counter, the objects of every served type and a bounded
//! history of changes (the watch cache, also used to serve consistent paginated lists and
//! `resourceVersionMatch=Exact`).
//!
//! Reads and watch starts live here; writes are prepared and committed in `write.rs`, with
//! the per-type rules of `strategy.rs` (the real server's registry strategies).

mod strategy;
mod write;

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::error::{ApiError, ApiResult};
use crate::resources::{Registry, ResourceType};
use crate::selector::Selectors;

pub use strategy::now;
pub use write::{CommitError, Plan, Written};

/// Type of a change, as in watch events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// API group of the object.
    pub group: String,
    /// Plural of the object's type.
    pub plural: String,
    /// Namespace (`""` if cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The new state (for deletions: the final state, with the deletion's RV).
    pub object: Value,
    /// The state before, if any.
    pub prev: Option<Value>,
}

type TypeKey = (String, String);
type ObjKey = (String, String);

/// Store-internal state, guarded by one mutex so every write is atomic and ordered.
pub struct Inner {
    rv: u64,
    registry: Registry,
    objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Value>>,
    history: VecDeque<Arc<Change>>,
    cache_size: usize,
    compacted: u64,
    /// The resourceVersion of the last change to any object of each API group (what a
    /// memo of values derived from a group's objects is valid for; see `Store::memo`).
    group_rv: HashMap<String, u64>,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Field manager (from `fieldManager` or the user agent).
    pub manager: String,
    /// `fieldValidation=Strict`.
    pub strict: bool,
    /// `force=true` (apply).
    pub force: bool,
    /// The request's version (for managedFields).
    pub version: String,
    /// managedFields computed by an apply that creates the object.
    pub managed_fields: Option<Value>,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `Background`, `Foreground` or `Orphan`.
    pub propagation: Option<String>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    /// Selectors.
    pub selectors: Selectors,
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub rv_match: Option<String>,
}

/// What a new watch starts from.
pub struct WatchStart {
    /// Objects to send as synthetic ADDED events.
    pub initial: Vec<Value>,
    /// Changes from the watch cache to replay.
    pub replay: Vec<Arc<Change>>,
    /// Live changes.
    pub rx: broadcast::Receiver<Arc<Change>>,
    /// The store RV when the watch started.
    pub start_rv: u64,
    /// The requested RV is older than the watch cache: send a 410 ERROR event.
    pub expired: Option<ApiError>,
}

/// The store.
pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    rv_tx: watch::Sender<u64>,
    /// Values derived from one API group's objects, by group and key (see [`Store::memo`]).
    memo: Mutex<HashMap<String, GroupMemo>>,
}

/// Values derived from one API group's objects as of one `group_rv`, by key.
type GroupMemo = (u64, HashMap<String, Arc<dyn Any + Send + Sync>>);

/// Memo entries kept at most per group; past it the group's memo starts over.
const MEMO_ENTRIES: usize = 4096;

fn list_kind(rt: &ResourceType) -> String {
    format!("{}List", rt.kind)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

/// Merge two iterators sorted by key with disjoint keys into one sorted iterator.
fn merge_sorted<'a, V: 'a>(
    a: impl Iterator<Item = (&'a ObjKey, V)>,
    b: impl Iterator<Item = (&'a ObjKey, V)>,
) -> impl Iterator<Item = (&'a ObjKey, V)> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((ka, _)), Some((kb, _))) => {
            if ka <= kb {
                a.next()
            } else {
                b.next()
            }
        }
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

impl Inner {
    fn objects_of(&self, rt: &ResourceType) -> Option<&BTreeMap<ObjKey, Value>> {
        self.objects.get(&rt.key())
    }

    fn get_obj(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects_of(rt)?
            .get(&(ns.to_string(), name.to_string()))
    }

    fn namespace(&self, ns: &str) -> Option<&Value> {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))?
            .get(&(String::new(), ns.to_string()))
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        tx: &broadcast::Sender<Arc<Change>>,
        kind: EventType,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        match self.group_rv.get_mut(&rt.group) {
            Some(at) => *at = self.rv,
            None => {
                self.group_rv.insert(rt.group.clone(), self.rv);
            }
        }
        strategy::meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let key = (ns.to_string(), name.to_string());
        let map = self.objects.entry(rt.key()).or_default();
        match kind {
            EventType::Deleted => {
                map.remove(&key);
            }
            _ => {
                map.insert(key, obj.clone());
            }
        }
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: ns.to_string(),
            name: name.to_string(),
            object: obj.clone(),
            prev,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.cache_size {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = tx.send(change);
        obj
    }
}

impl Store {
    /// A new store with `default` and `kube-system` namespaces.
    pub fn new(cache_size: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let (rv_tx, _) = watch::channel(0);
        let store = Store {
            inner: Mutex::new(Inner {
                rv: 0,
                registry: Registry::new(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                cache_size: cache_size.max(1),
                compacted: 0,
                group_rv: HashMap::new(),
            }),
            memo: Default::default(),
            tx,
            rv_tx,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = store.create(
                &store.type_by_path("", "v1", "namespaces").expect_builtin(),
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                &WriteOpts::default(),
            );
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn publish_rv(&self, inner: &Inner) {
        self.rv_tx.send_replace(inner.rv);
    }

    /// Subscribe to the current RV (changes on every commit).
    pub fn rv_watch(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// Current global resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The resourceVersion of the last change to an object of API group `group` (0: none
    /// since the store began): anything derived from the group's objects at this value is
    /// still current.
    pub fn group_rv(&self, group: &str) -> u64 {
        self.lock().group_rv.get(group).copied().unwrap_or(0)
    }

    /// What `derive` makes of the objects of API group `group`, remembered under `key` until
    /// any object of the group changes. The real API server's authorizer and admission
    /// plugins read informer caches; this spares every request a walk over, and a copy of,
    /// every ClusterRoleBinding and admission policy. `derive` runs without the store's lock
    /// held; what it returns is remembered only if no object of the group changed meanwhile.
    pub fn memo<V: Any + Send + Sync>(
        &self,
        group: &str,
        key: String,
        derive: impl FnOnce() -> V,
    ) -> Arc<V> {
        let rv = self.group_rv(group);
        let held = {
            let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            memo.get(group)
                .filter(|m| m.0 == rv)
                .and_then(|m| m.1.get(&key).cloned())
        };
        if let Some(v) = held.and_then(|v| v.downcast::<V>().ok()) {
            return v;
        }
        let v = Arc::new(derive());
        if self.group_rv(group) == rv {
            let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            let m = memo.entry(group.to_string()).or_default();
            if m.0 != rv || m.1.len() >= MEMO_ENTRIES {
                *m = (rv, HashMap::new());
            }
            m.1.insert(key, v.clone());
        }
        v
    }

    /// Compacted RV: watches and continue tokens from before it get 410.
    pub fn compacted_rv(&self) -> u64 {
        self.lock().compacted
    }

    /// A copy of the registry.
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Look up a type by URL parts.
    pub fn type_by_path(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceType>> {
        self.lock().registry.by_path(group, version, plural)
    }

    /// Drop the whole watch cache, as an etcd compaction at the current revision: watches and
    /// continue tokens from older resourceVersions get 410.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
    }

    /// Raise the RV counter (a restored etcd in reverse) or reset it; returns the new RV.
    pub fn set_rv(&self, rv: u64) -> u64 {
        let mut inner = self.lock();
        inner.rv = rv;
        inner.compacted = inner.compacted.min(rv);
        inner.history.retain(|c| c.rv <= rv);
        self.publish_rv(&inner);
        inner.rv
    }

    /// Run `f` over every stored object with its type, under the store's lock, cloning
    /// nothing (`f` must not call back into the store). The GC scans the whole store after
    /// every change; a scan that cloned every object made the stand-in's own GC its largest
    /// cost at 10,000 bindings (40,000 objects deep-copied every 100 ms).
    pub fn scan<R>(&self, f: impl FnOnce(&[(&Arc<ResourceType>, &Value)]) -> R) -> R {
        let inner = self.lock();
        let mut all = Vec::new();
        for ((g, p), objs) in &inner.objects {
            if let Some(rt) = inner.registry.by_key_ref(g, p) {
                all.extend(objs.values().map(|o| (rt, o)));
            }
        }
        f(&all)
    }

    /// How many current objects of a type satisfy `pred` (under the lock, nothing copied).
    pub fn count_of(&self, rt: &ResourceType, pred: impl Fn(&Value) -> bool) -> usize {
        let inner = self.lock();
        inner
            .objects_of(rt)
            .map(|m| m.values().filter(|o| pred(o)).count())
            .unwrap_or(0)
    }

    /// Every stored object with its type (for GC and the control API).
    pub fn all_objects(&self) -> Vec<(Arc<ResourceType>, Value)> {
        let inner = self.lock();
        let mut out = Vec::new();
        for ((g, p), objs) in &inner.objects {
            if let Some(rt) = inner.registry.by_key(g, p) {
                for o in objs.values() {
                    out.push((rt.clone(), o.clone()));
                }
            }
        }
        out
    }

    /// The current objects of a type by `group` and `plural`, in one namespace or all (for
    /// the authorizer and the controllers; no list semantics).
    pub fn objects(&self, group: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
        let inner = self.lock();
        inner
            .objects
            .get(&(group.to_string(), plural.to_string()))
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One current object by `group` and `plural` (`ns` is `""` for cluster-scoped types).
    pub fn object(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let inner = self.lock();
        inner
            .objects
            .get(&(group.to_string(), plural.to_string()))?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// GET.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
        let inner = self.lock();
        inner
            .get_obj(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// LIST: returns the list object (storage apiVersion on items; the caller rewrites).
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, opts: &ListOpts) -> ApiResult<Value> {
        let inner = self.lock();
        let current = inner.rv;
        let parse_rv = |s: &str| -> ApiResult<u64> {
            s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {s:?}"))
                    .with_details(json!({}))
            })
        };
        let mut start_after: Option<String> = None;
        let snapshot_rv = if let Some(tok) =
            opts.continue_token.as_deref().filter(|t| !t.is_empty())
        {
            let tok: ContinueToken = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
            if tok.rv < inner.compacted {
                return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
            }
            start_after = Some(tok.start);
            tok.rv
        } else {
            match (opts.resource_version.as_deref().filter(|s| !s.is_empty()), opts.rv_match.as_deref()) {
                (None, Some(m)) if !m.is_empty() => {
                    return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", "resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"))
                }
                (None, _) => current,
                (Some(v), Some("Exact")) => {
                    let n = parse_rv(v)?;
                    if n > current {
                        return Err(ApiError::too_large_rv(n, current));
                    }
                    if n < inner.compacted {
                        return Err(ApiError::expired(format!(
                            "too old resource version: {n} ({})",
                            inner.compacted
                        )));
                    }
                    n
                }
                (Some(v), _) => {
                    let n = parse_rv(v)?;
                    if n > current {
                        return Err(ApiError::too_large_rv(n, current));
                    }
                    current
                }
            }
        };
        // The objects as they were at `snapshot_rv`: the current map, overlaid with the state
        // before every later change of this type (oldest change wins). Only the page is
        // cloned, and the continuation starts with a range seek: a paginated list of N objects
        // costs O(N) in all, not O(N) per page (which a 10,000-object relist paid 20 times,
        // under the store's lock).
        let empty = BTreeMap::new();
        let current_objs = inner.objects_of(rt).unwrap_or(&empty);
        let mut overlay: BTreeMap<ObjKey, Option<&Value>> = BTreeMap::new();
        if snapshot_rv != current {
            for c in inner.history.iter().rev() {
                if c.rv <= snapshot_rv {
                    break;
                }
                if c.group == rt.group && c.plural == rt.plural {
                    overlay.insert((c.namespace.clone(), c.name.clone()), c.prev.as_ref());
                }
            }
        }
        // Keys are (namespace, name); a continue token's `start` is "namespace/name" (a
        // namespace has no '/'), and the page resumes strictly after it in the same order.
        let after: Option<ObjKey> = start_after.as_deref().map(|s| match s.split_once('/') {
            Some((n, name)) => (n.to_string(), name.to_string()),
            None => (String::new(), s.to_string()),
        });
        let lower = match &after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let from_current = current_objs
            .range::<ObjKey, _>((lower, Bound::Unbounded))
            .filter(|(k, _)| !overlay.contains_key(*k))
            .map(|(k, v)| (k, Some(v)));
        let from_overlay = overlay
            .range::<ObjKey, _>((lower, Bound::Unbounded))
            .map(|(k, v)| (k, *v));
        let matching = merge_sorted(from_current, from_overlay)
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
            .filter(|(_, o)| opts.selectors.matches(o));
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut page: Vec<Value> = Vec::new();
        let mut last: Option<&ObjKey> = None;
        let mut remaining = 0usize;
        for (k, o) in matching {
            if page.len() < limit {
                page.push(o.clone());
                last = Some(k);
            } else {
                remaining += 1;
            }
        }
        let last = last.map(|(n, name)| format!("{n}/{name}"));
        drop(inner);
        let mut metadata = json!({ "resourceVersion": snapshot_rv.to_string() });
        if let (true, Some(last)) = (remaining > 0, last) {
            let tok = ContinueToken {
                rv: snapshot_rv,
                start: last,
            };
            let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&tok).unwrap_or_default());
            metadata["continue"] = json!(enc);
            metadata["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "kind": list_kind(rt),
            "apiVersion": rt.api_version(rt.storage_version()),
            "metadata": metadata,
            "items": page,
        }))
    }

    /// Start a watch; see [`WatchStart`].
    pub fn watch_start(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        selectors: &Selectors,
        resource_version: Option<&str>,
        send_initial: bool,
    ) -> ApiResult<WatchStart> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let current = inner.rv;
        let rv = resource_version.filter(|s| !s.is_empty());
        let from_state = |inner: &Inner| -> Vec<Value> {
            inner
                .objects_of(rt)
                .map(|m| {
                    m.iter()
                        .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                        .filter(|(_, o)| selectors.matches(o))
                        .map(|(_, o)| o.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut start = WatchStart {
            initial: Vec::new(),
            replay: Vec::new(),
            rx,
            start_rv: current,
            expired: None,
        };
        match rv {
            None | Some("0") => {
                start.initial = from_state(&inner);
            }
            Some(v) => {
                let n: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {v:?}"))
                })?;
                if n > current {
                    return Err(ApiError::too_large_rv(n, current));
                }
                if send_initial {
                    start.initial = from_state(&inner);
                } else if n < inner.compacted {
                    start.expired = Some(ApiError::expired(format!(
                        "too old resource version: {n} ({})",
                        inner.compacted
                    )));
                } else {
                    start.replay = inner
                        .history
                        .iter()
                        .filter(|c| c.rv > n && c.group == rt.group && c.plural == rt.plural)
                        .cloned()
                        .collect();
                }
            }
        }
        Ok(start)
    }
}

trait ExpectBuiltin {
    fn expect_builtin(self) -> Arc<ResourceType>;
}

impl ExpectBuiltin for Option<Arc<ResourceType>> {
    #[allow(clippy::panic)]
    fn expect_builtin(self) -> Arc<ResourceType> {
        match self {
            Some(t) => t,
            None => panic!("built-in type missing from the registry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::PatchType;

    fn secrets(s: &Store) -> Arc<ResourceType> {
        s.type_by_path("", "v1", "secrets").unwrap()
    }

    #[test]
    fn create_sets_metadata_and_rv() {
        let s = Store::new(100);
        let rv0 = s.current_rv();
        let o = s
            .create(
                &secrets(&s),
                "default",
                json!({"metadata": {"name": "a"}, "stringData": {"k": "v"}}),
                &WriteOpts::default(),
            )
            .unwrap();
        assert_eq!(o["data"]["k"], "dg==");
        assert!(o.get("stringData").is_none());
        assert_eq!(o["type"], "Opaque");
        assert_eq!(o["metadata"]["resourceVersion"], (rv0 + 1).to_string());
        assert!(o["metadata"]["uid"].is_string());
        let err = s
            .create(
                &secrets(&s),
                "default",
                json!({"metadata": {"name": "a"}}),
                &WriteOpts::default(),
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        let err = s
            .create(
                &secrets(&s),
                "missing",
                json!({"metadata": {"name": "a"}}),
                &WriteOpts::default(),
            )
            .unwrap_err();
        assert_eq!(err.code, 404);
    }

    #[test]
    fn stale_update_conflicts_and_noop_keeps_rv() {
        let s = Store::new(100);
        let rt = secrets(&s);
        let o = s
            .create(
                &rt,
                "default",
                json!({"metadata": {"name": "a"}, "data": {}}),
                &WriteOpts::default(),
            )
            .unwrap();
        let same = s
            .update(&rt, "default", "a", o.clone(), None, &WriteOpts::default())
            .unwrap();
        assert_eq!(
            same["metadata"]["resourceVersion"],
            o["metadata"]["resourceVersion"]
        );
        let mut changed = o.clone();
        changed["data"] = json!({"x": "eA=="});
        s.update(
            &rt,
            "default",
            "a",
            changed.clone(),
            None,
            &WriteOpts::default(),
        )
        .unwrap();
        let err = s
            .update(&rt, "default", "a", changed, None, &WriteOpts::default())
            .unwrap_err();
        assert_eq!(err.code, 409);
    }

    #[test]
    fn stages_run_before_storage_answers_and_stale_commits_are_prepared_again() {
        let s = Store::new(100);
        let rt = secrets(&s);
        let body = json!({"metadata": {"name": "a"}, "data": {}});
        s.create(&rt, "default", body.clone(), &WriteOpts::default())
            .unwrap();
        // A denying stage answers before the storage's AlreadyExists, as admission does.
        let deny = |_: &Plan| Err(ApiError::new(403, "Forbidden", "denied by a policy"));
        let err = s
            .write(
                false,
                || s.prepare_create(&rt, "default", body.clone(), &WriteOpts::default()),
                deny,
            )
            .unwrap_err();
        assert_eq!(err.code, 403);
        let err = s
            .create(&rt, "default", body.clone(), &WriteOpts::default())
            .unwrap_err();
        assert_eq!(err.reason, "AlreadyExists");
        // Another writer commits between prepare and commit: the patch is prepared again on
        // the new object and keeps both changes; the stages see both attempts.
        let mut attempts = 0;
        let patch = json!({"data": {"mine": "eA=="}});
        let out = s
            .write(
                false,
                || {
                    s.prepare_patch(
                        &rt,
                        "default",
                        "a",
                        PatchType::Merge,
                        &patch,
                        None,
                        &WriteOpts::default(),
                    )
                },
                |_| {
                    attempts += 1;
                    if attempts == 1 {
                        let other = json!({"data": {"theirs": "eQ=="}});
                        s.patch(
                            &rt,
                            "default",
                            "a",
                            PatchType::Merge,
                            &other,
                            None,
                            &WriteOpts::default(),
                        )?;
                    }
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(
            out.object["data"],
            json!({"mine": "eA==", "theirs": "eQ=="})
        );
        // A PUT with the old resourceVersion cannot be prepared again: 409.
        let stale = json!({"metadata": {"name": "a", "resourceVersion": "1"}, "data": {}});
        let err = s
            .update(&rt, "default", "a", stale, None, &WriteOpts::default())
            .unwrap_err();
        assert_eq!(err.code, 409);
    }

    /// Pages resume after the last item in the order items are listed: (namespace, name).
    /// A memo is recomputed after any change to its group's objects (a create, an update
    /// or a delete) and only then; changes to other groups leave it.
    #[test]
    fn a_memo_lasts_until_its_group_changes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let s = Store::new(100);
        let roles = s
            .type_by_path("rbac.authorization.k8s.io", "v1", "clusterroles")
            .unwrap();
        let derived = AtomicUsize::new(0);
        let names = || {
            s.memo("rbac.authorization.k8s.io", "names".into(), || {
                derived.fetch_add(1, Ordering::SeqCst);
                s.objects("rbac.authorization.k8s.io", "clusterroles", None)
                    .iter()
                    .map(|o| {
                        o["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert!(names().is_empty());
        assert!(names().is_empty());
        assert_eq!(derived.load(Ordering::SeqCst), 1);
        let role = json!({"metadata": {"name": "r"}, "rules": []});
        s.create(&roles, "", role.clone(), &WriteOpts::default())
            .unwrap();
        assert_eq!(*names(), vec!["r".to_string()]);
        assert_eq!(derived.load(Ordering::SeqCst), 2);
        // A change to another group keeps it.
        s.create(
            &secrets(&s),
            "default",
            json!({"metadata": {"name": "x"}}),
            &WriteOpts::default(),
        )
        .unwrap();
        assert_eq!(*names(), vec!["r".to_string()]);
        assert_eq!(derived.load(Ordering::SeqCst), 2);
        let mut labelled = role;
        labelled["metadata"]["labels"] = json!({"a": "b"});
        s.update(&roles, "", "r", labelled, None, &WriteOpts::default())
            .unwrap();
        names();
        assert_eq!(derived.load(Ordering::SeqCst), 3);
        s.delete(&roles, "", "r", &DeleteOpts::default()).unwrap();
        assert!(names().is_empty());
        assert_eq!(derived.load(Ordering::SeqCst), 4);
    }

    /// Comparing "namespace/name" strings instead skipped namespace `a-b` after `a/x`
    /// ('-' sorts before '/').
    #[test]
    fn paginated_list_across_namespaces_returns_every_item_once() {
        let s = Store::new(100);
        let rt = secrets(&s);
        let nsrt = s.type_by_path("", "v1", "namespaces").unwrap();
        for ns in ["a", "a-b", "a.c"] {
            s.create(
                &nsrt,
                "",
                json!({"metadata": {"name": ns}}),
                &WriteOpts::default(),
            )
            .unwrap();
        }
        for (ns, name) in [
            ("a", "x"),
            ("a", "z"),
            ("a-b", "y"),
            ("a.c", "w"),
            ("default", "d"),
        ] {
            s.create(
                &rt,
                ns,
                json!({"metadata": {"name": name}}),
                &WriteOpts::default(),
            )
            .unwrap();
        }
        let key = |o: &Value| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        };
        let all: Vec<String> = s.list(&rt, None, &ListOpts::default()).unwrap()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(key)
            .collect();
        assert_eq!(all.len(), 5);
        let mut paged = Vec::new();
        let mut remaining = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = s
                .list(
                    &rt,
                    None,
                    &ListOpts {
                        limit: Some(1),
                        continue_token: token.clone(),
                        ..Default::default()
                    },
                )
                .unwrap();
            paged.extend(page["items"].as_array().unwrap().iter().map(key));
            remaining.push(page["metadata"]["remainingItemCount"].as_u64());
            token = page["metadata"]["continue"].as_str().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        assert_eq!(paged, all);
        assert_eq!(remaining, vec![Some(4), Some(3), Some(2), Some(1), None]);
    }

    #[test]
    fn paginated_list_is_consistent_and_expires() {
        let s = Store::new(100);
        let rt = secrets(&s);
        for i in 0..5 {
            s.create(
                &rt,
                "default",
                json!({"metadata": {"name": format!("s{i}")}}),
                &WriteOpts::default(),
            )
            .unwrap();
        }
        let p1 = s
            .list(
                &rt,
                Some("default"),
                &ListOpts {
                    limit: Some(2),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(p1["items"].as_array().unwrap().len(), 2);
        let tok = p1["metadata"]["continue"].as_str().unwrap().to_string();
        s.create(
            &rt,
            "default",
            json!({"metadata": {"name": "s9"}}),
            &WriteOpts::default(),
        )
        .unwrap();
        s.delete(&rt, "default", "s4", &DeleteOpts::default())
            .unwrap();
        let p2 = s
            .list(
                &rt,
                Some("default"),
                &ListOpts {
                    limit: Some(10),
                    continue_token: Some(tok.clone()),
                    ..Default::default()
                },
            )
            .unwrap();
        let names: Vec<&str> = p2["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["s2", "s3", "s4"]);
        s.compact();
        let err = s
            .list(
                &rt,
                Some("default"),
                &ListOpts {
                    continue_token: Some(tok),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(err.code, 410);
    }
}
