//! The in-memory object store: an etcd-like global `resourceVersion` counter, the objects of
//! every served type, a bounded history of changes (the watch cache, also used to serve
//! consistent paginated lists and `resourceVersionMatch=Exact`), and the write semantics of
//! the real API server (create/update/patch/delete, status subresource, finalizers,
//! preconditions, generation, no-op writes, namespaces, Secrets, CRD registration).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, watch};

use crate::checks::{Checks, Lookup, PendingWrite};
use crate::crd;
use crate::error::{ApiError, ApiResult};
use crate::patch::{self, PatchType};
use crate::resources::{Registry, ResourceType};
use crate::selector::Selectors;
use crate::ssa;

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
    /// Validation and admission (none for the handle's and the server's own writes).
    pub checks: Checks,
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
    /// Validation and admission (none for the handle's and the server's own writes).
    pub checks: Checks,
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
}

/// RFC 3339 now, second precision, UTC.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta(obj: &Value, field: &str) -> String {
    obj["metadata"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj["metadata"].as_object_mut() {
        Some(m) => m,
        None => unreachable_meta(),
    }
}

#[allow(clippy::panic)]
fn unreachable_meta() -> ! {
    panic!("metadata was just set to an object")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn random_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
        .collect()
}

/// Content that is neither metadata nor status (what bumps `generation`).
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// Equality ignoring bookkeeping that does not make a write a real change.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

fn list_kind(rt: &ResourceType) -> String {
    format!("{}List", rt.kind)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
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
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
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

    /// The objects of a type as they were at `rv` (from the history).
    fn snapshot(&self, rt: &ResourceType, rv: u64) -> BTreeMap<ObjKey, Value> {
        let mut map = self.objects_of(rt).cloned().unwrap_or_default();
        for c in self.history.iter().rev() {
            if c.rv <= rv {
                break;
            }
            if c.group != rt.group || c.plural != rt.plural {
                continue;
            }
            let key = (c.namespace.clone(), c.name.clone());
            match &c.prev {
                Some(p) => {
                    map.insert(key, p.clone());
                }
                None => {
                    map.remove(&key);
                }
            }
        }
        map
    }
}

impl Lookup for Inner {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.get_obj(rt, ns, name)
    }

    fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<&Value> {
        self.objects_of(rt)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
            .map(|(_, o)| o)
            .collect()
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
            }),
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

    /// Run `f` with a consistent view of the stored objects.
    pub fn read<T>(&self, f: impl FnOnce(&dyn Lookup) -> T) -> T {
        f(&*self.lock())
    }

    /// Current global resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
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
        let snapshot = if snapshot_rv == current {
            inner.objects_of(rt).cloned().unwrap_or_default()
        } else {
            inner.snapshot(rt, snapshot_rv)
        };
        drop(inner);
        let matching: Vec<(String, &Value)> = snapshot
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
            .filter(|(_, o)| opts.selectors.matches(o))
            .map(|((n, name), o)| (format!("{n}/{name}"), o))
            .filter(|(k, _)| start_after.as_ref().is_none_or(|s| k > s))
            .collect();
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let page: Vec<Value> = matching
            .iter()
            .take(limit)
            .map(|(_, o)| (*o).clone())
            .collect();
        let mut metadata = json!({ "resourceVersion": snapshot_rv.to_string() });
        if matching.len() > page.len() {
            let last = matching[page.len() - 1].0.clone();
            let tok = ContinueToken {
                rv: snapshot_rv,
                start: last,
            };
            let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(serde_json::to_vec(&tok).unwrap_or_default());
            metadata["continue"] = json!(enc);
            metadata["remainingItemCount"] = json!(matching.len() - page.len());
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

    fn check_namespace(inner: &Inner, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<()> {
        if !rt.namespaced {
            return Ok(());
        }
        match inner.namespace(ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    crate::error::qualified(&rt.group, &rt.plural)
                ),
            )
            .with_details(json!({"name": name, "kind": rt.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}))),
            Some(_) => Ok(()),
        }
    }

    fn check_body(rt: &ResourceType, body: &mut Value, version: &str) -> ApiResult<()> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        if let Some(k) = body["kind"].as_str() {
            if k != rt.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        if let Some(av) = body["apiVersion"].as_str() {
            let (g, _) = crate::resources::split_api_version(av);
            if g != rt.group {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    rt.api_version(version)
                )));
            }
        }
        body["apiVersion"] = json!(rt.api_version(rt.storage_version()));
        body["kind"] = json!(rt.kind);
        if !body["metadata"].is_object() && !body["metadata"].is_null() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        Ok(())
    }

    /// Type-specific normalisation applied on every write.
    fn normalize(rt: &ResourceType, obj: &mut Value, opts: &WriteOpts) -> ApiResult<()> {
        crate::admission::objects::apply_defaults(rt, obj);
        if rt.custom {
            if let Some(schema) = rt.schemas.get(rt.storage_version()) {
                let pruned = crd::normalize(obj, schema);
                if opts.strict && !pruned.is_empty() {
                    let list: Vec<String> = pruned
                        .iter()
                        .map(|p| format!("unknown field \"{p}\""))
                        .collect();
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
            }
        }
        if rt.group.is_empty() && rt.plural == "secrets" {
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    obj["data"][k] =
                        json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()));
                }
            }
            if obj["type"].as_str().is_none_or(str::is_empty) {
                obj["type"] = json!("Opaque");
            }
            if let Some(d) = obj["data"].as_object() {
                for (k, v) in d {
                    let ok = v.as_str().is_some_and(|s| {
                        base64::engine::general_purpose::STANDARD.decode(s).is_ok()
                    });
                    if !ok {
                        return Err(ApiError::bad_request(format!(
                            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at data[{k:?}]"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// POST.
    pub fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut body: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let version = if opts.version.is_empty() {
            rt.storage_version().to_string()
        } else {
            opts.version.clone()
        };
        Self::check_body(rt, &mut body, &version)?;
        let mut inner = self.lock();
        let md = meta_mut(&mut body);
        if rt.namespaced {
            match md.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    md.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            md.remove("namespace");
        }
        let mut name = md
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            match md.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => {
                    name = format!("{g}{}", random_suffix());
                    md.insert("name".into(), json!(name));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.group,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ))
                }
            }
        }
        if !valid_name(&name) {
            return Err(ApiError::invalid(&rt.kind, &rt.group, &name, "metadata.name", &format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")));
        }
        Self::check_namespace(&inner, rt, ns, &name)?;
        if inner.get_obj(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        let now = now();
        for k in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            md.remove(k);
        }
        md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        md.insert("creationTimestamp".into(), json!(now));
        if rt.tracks_generation() {
            md.insert("generation".into(), json!(1));
        } else {
            md.remove("generation");
        }
        if rt.status_subresource && rt.custom {
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
        }
        Self::normalize(rt, &mut body, opts)?;
        let mut register = None;
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                body["spec"] = json!({"finalizers": ["kubernetes"]});
                body["status"] = json!({"phase": "Active"});
                meta_mut(&mut body)
                    .entry("labels")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .map(|l| l.insert("kubernetes.io/metadata.name".into(), json!(name)));
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let t = crd::resource_type(&body)?;
                if let Some(existing) = inner.registry.by_key(&t.group, &t.plural) {
                    if !existing.custom {
                        return Err(ApiError::invalid(
                            &rt.kind,
                            &rt.group,
                            &name,
                            "spec.group",
                            "Invalid value: conflicts with a built-in type",
                        ));
                    }
                }
                body["status"] = crd::accepted_status(&body, &now);
                register = Some(t);
            }
            _ => {}
        }
        let manager = if opts.manager.is_empty() {
            "unknown"
        } else {
            &opts.manager
        };
        ssa::record_update(
            None,
            &mut body,
            &ssa::Writer {
                manager,
                subresource: "",
                api_version: &rt.api_version(&version),
                now: &now,
            },
        );
        if let Some(mf) = &opts.managed_fields {
            body["metadata"]["managedFields"] = mf.clone();
        }
        // Validation and admission (crate::checks).
        opts.checks
            .run(&PendingWrite::create(rt, ns, &name, &body), &*inner)?;
        if opts.dry_run {
            return Ok(body);
        }
        if let Some(t) = register {
            inner.registry.upsert(t);
        }
        let out = inner.commit(&self.tx, EventType::Added, rt, ns, &name, body, None);
        self.publish_rv(&inner);
        Ok(out)
    }

    /// PUT (main resource or `status`).
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut body: Value,
        sub: Option<&str>,
        opts: &WriteOpts,
    ) -> ApiResult<Value> {
        let version = if opts.version.is_empty() {
            rt.storage_version().to_string()
        } else {
            opts.version.clone()
        };
        Self::check_body(rt, &mut body, &version)?;
        let mut inner = self.lock();
        let current = inner
            .get_obj(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let body_name = meta(&body, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta(&body, "namespace");
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        match body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            Some(rv) if rv != meta(&current, "resourceVersion") => {
                return Err(ApiError::conflict_stale(&rt.group, &rt.plural, name));
            }
            Some(_) => {}
            None if rt.custom || rt.kind == "CustomResourceDefinition" => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                ));
            }
            None => {}
        }
        self.finish_update(
            &mut inner, rt, ns, name, current, body, sub, opts, &version, false,
        )
    }

    /// PATCH (main resource or `status`); returns the object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &Value,
        sub: Option<&str>,
        opts: &WriteOpts,
    ) -> ApiResult<(Value, bool)> {
        let version = if opts.version.is_empty() {
            rt.storage_version().to_string()
        } else {
            opts.version.clone()
        };
        let mut inner = self.lock();
        let current = inner.get_obj(rt, ns, name).cloned();
        let Some(current) = current else {
            if ptype != PatchType::Apply || sub.is_some() {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            }
            let mut obj = body.clone();
            if !obj.is_object() {
                return Err(ApiError::bad_request("apply body must be an object"));
            }
            let now = now();
            let mut skeleton = json!({"metadata": {"name": name}});
            let applied = {
                let mut a = obj.clone();
                if let Some(m) = a["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                a
            };
            let w = ssa::Writer {
                manager: &opts.manager,
                subresource: "",
                api_version: &rt.api_version(&version),
                now: &now,
            };
            skeleton = ssa::apply(&skeleton, &applied, &w, true)
                .map_err(|_| ApiError::internal("apply on create"))?;
            let mf = skeleton["metadata"]["managedFields"].clone();
            meta_mut(&mut obj).insert("name".into(), json!(name));
            drop(inner);
            let created = self.create(
                rt,
                ns,
                obj,
                &WriteOpts {
                    managed_fields: Some(mf),
                    ..opts.clone()
                },
            )?;
            return Ok((created, true));
        };
        let mut new = current.clone();
        let sub_name = sub.unwrap_or("");
        let now = now();
        let mut apply_done = false;
        match ptype {
            PatchType::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge(&mut new, body)
            }
            PatchType::Strategic => {
                if rt.custom {
                    return Err(ApiError::unsupported_media_type(
                        "application/strategic-merge-patch+json",
                    ));
                }
                patch::strategic(&mut new, body).map_err(ApiError::bad_request)?
            }
            PatchType::Json => patch::json_patch(&mut new, body).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?,
            PatchType::Apply => {
                if opts.manager.is_empty() {
                    return Err(ApiError::invalid(
                        "PatchOptions",
                        "meta.k8s.io",
                        "",
                        "fieldManager",
                        "Required value: is required for apply patch",
                    ));
                }
                let mut applied = body.clone();
                if !applied.is_object() {
                    return Err(ApiError::bad_request("apply body must be an object"));
                }
                Self::check_body(rt, &mut applied, &version)?;
                let rv_pre = applied["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if let Some(m) = applied["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                let w = ssa::Writer {
                    manager: &opts.manager,
                    subresource: sub_name,
                    api_version: &rt.api_version(&version),
                    now: &now,
                };
                new = ssa::apply_with_csa_upgrade(&current, &applied, &w, opts.force).map_err(|c| {
                    let fields: Vec<String> = c.iter().map(|c| format!("conflict with \"{}\": {}", c.manager, c.field)).collect();
                    ApiError::new(409, "Conflict", format!("Apply failed with {} conflict{}: {}", c.len(), if c.len() == 1 { "" } else { "s" }, fields.join("\n")))
                        .with_details(json!({"name": name, "kind": rt.plural, "group": rt.group,
                            "causes": c.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field})).collect::<Vec<_>>()}))
                })?;
                if let Some(rv) = rv_pre {
                    new["metadata"]["resourceVersion"] = json!(rv);
                }
                apply_done = true;
            }
        }
        let cur_rv = meta(&current, "resourceVersion");
        match new["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() && rv != cur_rv => {
                return Err(ApiError::conflict_stale(&rt.group, &rt.plural, name));
            }
            _ => {}
        }
        if !new.is_object() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "the patch produced a non-object",
            ));
        }
        let out = self.finish_update(
            &mut inner, rt, ns, name, current, new, sub, opts, &version, apply_done,
        )?;
        Ok((out, false))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        current: Value,
        mut new: Value,
        sub: Option<&str>,
        opts: &WriteOpts,
        version: &str,
        managed_fields_done: bool,
    ) -> ApiResult<Value> {
        new["apiVersion"] = json!(rt.api_version(rt.storage_version()));
        new["kind"] = json!(rt.kind);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        let sub_name = sub.unwrap_or("");
        let mut client_mf: Option<Value> = None;
        match sub {
            Some("status") => {
                let status = new.get("status").cloned();
                let mf = new["metadata"]["managedFields"].clone();
                new = current.clone();
                match status {
                    Some(s) if !s.is_null() => new["status"] = s,
                    _ => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                if managed_fields_done {
                    new["metadata"]["managedFields"] = mf;
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported subresource {other:?}"
                )))
            }
            None => {
                if rt.status_subresource {
                    match current.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
            }
        }
        {
            let md = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "name",
                "namespace",
            ] {
                match current["metadata"].get(k) {
                    Some(v) => {
                        md.insert(k.into(), v.clone());
                    }
                    None => {
                        md.remove(k);
                    }
                }
            }
            if !managed_fields_done {
                // A client may rewrite managedFields explicitly (kubectl's client-side-apply
                // upgrade does); omitting them keeps the stored ones.
                match md.remove("managedFields") {
                    Some(mf) if Some(&mf) != current["metadata"].get("managedFields") => {
                        client_mf = Some(mf);
                    }
                    _ => {}
                }
            }
        }
        Self::normalize(rt, &mut new, opts)?;
        if !current["metadata"]["deletionTimestamp"].is_null() {
            let old: Vec<&Value> = current["metadata"]["finalizers"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let added: Vec<String> = new["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| !old.contains(f))
                .map(|f| format!("{f}"))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(&rt.kind, &rt.group, name, "metadata.finalizers", &format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}", added.join(", "))));
            }
        }
        let immutable_secret =
            rt.group.is_empty() && rt.plural == "secrets" && current["immutable"] == true;
        if immutable_secret
            && (new["data"] != current["data"]
                || new["immutable"] != current["immutable"]
                || new["type"] != current["type"])
        {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                name,
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
        let mut register = None;
        if rt.kind == "CustomResourceDefinition" {
            let t = crd::resource_type(&new)?;
            if sub_name.is_empty() {
                new["status"] = crd::accepted_status(&new, &meta(&current, "creationTimestamp"));
                if current.get("status").is_some() && current["status"]["conditions"].is_array() {
                    new["status"]["conditions"] = current["status"]["conditions"].clone();
                }
            }
            register = Some(t);
        }
        if rt.tracks_generation() && spec_part(&new) != spec_part(&current) {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        let now = now();
        if !managed_fields_done {
            let manager = if opts.manager.is_empty() {
                "unknown"
            } else {
                &opts.manager
            };
            let mut cur_for_diff = current.clone();
            if let Some(mf) = &client_mf {
                // `[{}]` (or an empty list) resets ownership.
                let entries: Vec<Value> = mf
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("manager").is_some())
                    .cloned()
                    .collect();
                cur_for_diff["metadata"]["managedFields"] = Value::Array(entries);
            }
            ssa::record_update(
                Some(&cur_for_diff),
                &mut new,
                &ssa::Writer {
                    manager,
                    subresource: sub_name,
                    api_version: &rt.api_version(version),
                    now: &now,
                },
            );
        }
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        // Validation and admission (crate::checks); a no-op write is checked too.
        let pending = PendingWrite::update(rt, sub_name, ns, name, &new, &current);
        opts.checks.run(&pending, &*inner)?;
        if same_content(&new, &current) && client_mf.is_none() {
            return Ok(current);
        }
        if opts.dry_run {
            return Ok(new);
        }
        if let Some(t) = register {
            inner.registry.upsert(t);
        }
        let finalizers_empty = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|a| a.is_empty());
        let deleting = !new["metadata"]["deletionTimestamp"].is_null();
        let out = if deleting && finalizers_empty && rt.plural != "namespaces" {
            self.remove(inner, rt, ns, name, new, current)
        } else {
            inner.commit(
                &self.tx,
                EventType::Modified,
                rt,
                ns,
                name,
                new,
                Some(current),
            )
        };
        self.publish_rv(inner);
        Ok(out)
    }

    /// Remove an object for good (cascading CRD instances).
    fn remove(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        last: Value,
        prev: Value,
    ) -> Value {
        let out = inner.commit(&self.tx, EventType::Deleted, rt, ns, name, last, Some(prev));
        if rt.kind == "CustomResourceDefinition" {
            if let Ok(t) = crd::resource_type(&out) {
                if let Some(served) = inner.registry.by_key(&t.group, &t.plural) {
                    let objs: Vec<(ObjKey, Value)> = inner
                        .objects_of(&served)
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default();
                    for ((n, nm), o) in objs {
                        inner.commit(
                            &self.tx,
                            EventType::Deleted,
                            &served,
                            &n,
                            &nm,
                            o.clone(),
                            Some(o),
                        );
                    }
                    inner.registry.remove(&t.group, &t.plural);
                }
            }
        }
        out
    }

    /// DELETE; returns the object if it still exists (finalizers), else a success `Status`.
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> ApiResult<(Value, bool)> {
        let mut inner = self.lock();
        let current = inner
            .get_obj(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if let Some(uid) = &opts.uid {
            let have = meta(&current, "uid");
            if *uid != have {
                return Err(ApiError::conflict(&rt.group, &rt.plural, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}")));
            }
        }
        if let Some(rv) = &opts.resource_version {
            let have = meta(&current, "resourceVersion");
            if *rv != have {
                return Err(ApiError::conflict(&rt.group, &rt.plural, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}")));
            }
        }
        // Validation and admission (crate::checks).
        opts.checks
            .run(&PendingWrite::delete(rt, ns, name, &current), &*inner)?;
        if !current["metadata"]["deletionTimestamp"].is_null() {
            return Ok((current, true));
        }
        let mut new = current.clone();
        let mut finalizers: Vec<Value> = new["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match opts.propagation.as_deref() {
            Some("Foreground") => {
                let f = json!("foregroundDeletion");
                if !finalizers.contains(&f) {
                    finalizers.push(f);
                }
            }
            Some("Orphan") => {
                let f = json!("orphan");
                if !finalizers.contains(&f) {
                    finalizers.push(f);
                }
            }
            Some("Background") | None => {}
            Some(other) => {
                return Err(ApiError::invalid("DeleteOptions", "meta.k8s.io", "", "propagationPolicy", &format!("Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\"")));
            }
        }
        let is_ns = rt.group.is_empty() && rt.plural == "namespaces";
        if is_ns && matches!(name, "default" | "kube-system" | "kube-public") {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        if opts.dry_run {
            return Ok((current, false));
        }
        if !finalizers.is_empty() || is_ns {
            if !finalizers.is_empty() {
                new["metadata"]["finalizers"] = Value::Array(finalizers);
            }
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if rt.tracks_generation() {
                let g = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                new["metadata"]["generation"] = json!(g);
            }
            if is_ns {
                new["status"]["phase"] = json!("Terminating");
            }
            let out = inner.commit(
                &self.tx,
                EventType::Modified,
                rt,
                ns,
                name,
                new,
                Some(current),
            );
            self.publish_rv(&inner);
            return Ok((out, true));
        }
        let out = self.remove(&mut inner, rt, ns, name, new, current);
        self.publish_rv(&inner);
        Ok((out, false))
    }

    /// Remove an object without finalizer processing (namespace lifecycle end).
    pub fn purge(&self, rt: &ResourceType, ns: &str, name: &str) {
        let mut inner = self.lock();
        if let Some(cur) = inner.get_obj(rt, ns, name).cloned() {
            self.remove(&mut inner, rt, ns, name, cur.clone(), cur);
            self.publish_rv(&inner);
        }
    }

    /// Write an object as-is (used by the control API and fault mutators): creates it if
    /// absent, else replaces it unconditionally keeping server-set metadata.
    pub fn put_unconditional(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        manager: &str,
    ) -> ApiResult<Value> {
        let name = meta(&obj, "name");
        let exists = self.lock().get_obj(rt, ns, &name).cloned();
        let opts = WriteOpts {
            manager: manager.to_string(),
            ..Default::default()
        };
        match exists {
            None => {
                let status = obj.get("status").cloned();
                let created = self.create(rt, ns, obj, &opts)?;
                match status {
                    Some(s) if rt.status_subresource && rt.custom => {
                        let mut with = created.clone();
                        with["status"] = s;
                        self.update(rt, ns, &name, with, Some("status"), &opts)
                    }
                    _ => Ok(created),
                }
            }
            Some(cur) => {
                obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                let status = obj.get("status").cloned();
                let updated = self.update(rt, ns, &name, obj, None, &opts)?;
                let still_there = self.lock().get_obj(rt, ns, &name).is_some();
                match status {
                    Some(s)
                        if rt.status_subresource
                            && still_there
                            && updated.get("status") != Some(&s) =>
                    {
                        let mut with = updated.clone();
                        with["status"] = s;
                        self.update(rt, ns, &name, with, Some("status"), &opts)
                    }
                    _ => Ok(updated),
                }
            }
        }
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
