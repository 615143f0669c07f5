//! The typed handle tests hold: start a server ([`StandIn::builder`]), seed and read objects,
//! wait on store conditions, read the request log, set faults, and drive the lifecycle
//! (down/up, compaction, shutdown).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::ApiError;
use crate::faults::Faults;
use crate::log::RequestRecord;
use crate::resources::ResourceType;
use crate::server::{self, Settings, Shared};
use crate::store::{DeleteOpts, ListOpts};
use crate::token::IssuedToken;

/// Errors of the handle.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The API answered an error.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// A document did not parse.
    #[error("invalid YAML/JSON: {0}")]
    Parse(String),
    /// No served type matches.
    #[error("no served type for apiVersion {0:?}, kind {1:?}")]
    UnknownType(String, String),
    /// A wait timed out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Binding or file IO.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Entry point: `StandIn::builder()`.
pub struct StandIn;

impl StandIn {
    /// A builder with defaults: watch cache of 1024 changes, 10 s bookmarks, 100 ms GC delay,
    /// issuer = the server URL, ephemeral port.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

/// Server options.
#[derive(Debug, Clone)]
pub struct Builder {
    watch_cache_size: usize,
    bookmark_interval: Duration,
    gc_delay: Duration,
    issuer: Option<String>,
    port: u16,
    seed: Vec<String>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            watch_cache_size: 1024,
            bookmark_interval: Duration::from_secs(10),
            gc_delay: Duration::from_millis(100),
            issuer: None,
            port: 0,
            seed: Vec::new(),
        }
    }
}

impl Builder {
    /// Changes kept for watch resumption and consistent pagination.
    pub fn watch_cache_size(mut self, n: usize) -> Self {
        self.watch_cache_size = n;
        self
    }
    /// Interval of BOOKMARK events.
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }
    /// Delay before the garbage collector acts on a change.
    pub fn gc_delay(mut self, d: Duration) -> Self {
        self.gc_delay = d;
        self
    }
    /// Token issuer (`iss`); default: the server URL.
    pub fn issuer(mut self, url: impl Into<String>) -> Self {
        self.issuer = Some(url.into());
        self
    }
    /// Port (0 = ephemeral).
    pub fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    /// Apply these YAML documents (CRDs, objects) at start.
    pub fn seed_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.seed.push(yaml.into());
        self
    }
    /// Start serving.
    pub async fn start(self) -> Result<Handle, HandleError> {
        let shared = server::start(
            self.port,
            Settings {
                bookmark_interval: self.bookmark_interval,
                gc_delay: self.gc_delay,
                issuer: self.issuer,
            },
            self.watch_cache_size,
        )
        .await?;
        let h = Handle { shared };
        for y in &self.seed {
            h.apply_yaml(y)?;
        }
        Ok(h)
    }
}

/// A running stand-in. Cloning shares it; [`Handle::shutdown`] stops it.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

fn is_events_v1(t: &ResourceType) -> bool {
    t.group == "events.k8s.io" && t.plural == "events"
}

/// Parse multi-document YAML (or JSON) into objects, skipping empty documents.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, HandleError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| HandleError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for v in docs {
        match v {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

impl Handle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Handle { shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The API port.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// URL of the control port (serves only `/_standin/...`, stays up while the API is down).
    pub fn control_url(&self) -> String {
        match self.shared.control_url.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Kubeconfig text for this server.
    pub fn kubeconfig_yaml(&self) -> String {
        crate::kubeconfig::render(&self.url())
    }

    /// Write a kubeconfig for this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), HandleError> {
        Ok(crate::kubeconfig::write(path, &self.url())?)
    }

    /// The stored type (events.k8s.io Events are stored as core Events).
    fn resolve(&self, api_version: &str, kind: &str) -> Result<Arc<ResourceType>, HandleError> {
        let reg = self.shared.store.registry();
        let t = reg
            .by_api_version(api_version, kind)
            .ok_or_else(|| HandleError::UnknownType(api_version.into(), kind.into()))?;
        if is_events_v1(&t) {
            return reg
                .by_key("", "events")
                .ok_or_else(|| HandleError::UnknownType(api_version.into(), kind.into()));
        }
        Ok(t)
    }

    fn present(rt: &ResourceType, api_version: &str, v: Value) -> Value {
        let (group, version) = crate::resources::split_api_version(api_version);
        if group == "events.k8s.io" && rt.plural == "events" {
            return crate::events::to_events_v1(&v);
        }
        crate::watch::present(rt, version, v)
    }

    /// Create or replace one object (status included, written through the status subresource).
    pub fn apply(&self, obj: Value) -> Result<Value, HandleError> {
        let av = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let rt = self.resolve(&av, &kind)?;
        let obj = if av.starts_with("events.k8s.io/") {
            crate::events::to_core(&obj)
        } else {
            obj
        };
        let ns = if rt.namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let out = self
            .shared
            .store
            .put_unconditional(&rt, &ns, obj, "kube-standin")?;
        Ok(Self::present(&rt, &av, out))
    }

    /// Apply every document of a (multi-document) YAML or JSON text, in order.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>, HandleError> {
        parse_documents(yaml)?
            .into_iter()
            .map(|d| self.apply(d))
            .collect()
    }

    /// One object (`ns` is `""` for cluster-scoped types); `kind` may also be the plural,
    /// singular or a short name.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let rt = self.resolve(api_version, kind).ok()?;
        let ns = if rt.namespaced { ns } else { "" };
        self.shared
            .store
            .get(&rt, ns, name)
            .ok()
            .map(|v| Self::present(&rt, api_version, v))
    }

    /// Objects of a type, in one namespace or all.
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        self.try_list(api_version, kind, ns).unwrap_or_default()
    }

    /// Like [`Handle::list`], failing for unknown types.
    pub fn try_list(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<Vec<Value>, HandleError> {
        let rt = self.resolve(api_version, kind)?;
        let l = self
            .shared
            .store
            .list(&rt, ns.filter(|n| !n.is_empty()), &ListOpts::default())?;
        Ok(l["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|v| Self::present(&rt, api_version, v))
            .collect())
    }

    /// Delete an object (background propagation, finalizers honoured).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<(), HandleError> {
        let rt = self.resolve(api_version, kind)?;
        let ns = if rt.namespaced { ns } else { "" };
        self.shared
            .store
            .delete(&rt, ns, name, &DeleteOpts::default())?;
        Ok(())
    }

    /// Wait until `pred` holds for the object (`None` = absent); returns the object then.
    pub async fn wait_for(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        pred: impl Fn(Option<&Value>) -> bool,
        timeout: Duration,
    ) -> Result<Option<Value>, HandleError> {
        let mut rx = self.shared.store.rv_watch();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            let cur = self.get(api_version, kind, ns, name);
            if pred(cur.as_ref()) {
                return Ok(cur);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(HandleError::Timeout(timeout)),
            }
        }
    }

    /// Wait until `pred` holds for the handle (re-checked after every store change and every
    /// 20 ms, for conditions on the request log).
    pub async fn wait_until(
        &self,
        pred: impl Fn(&Handle) -> bool,
        timeout: Duration,
    ) -> Result<(), HandleError> {
        let mut rx = self.shared.store.rv_watch();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if pred(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HandleError::Timeout(timeout));
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
        }
    }

    /// The request log.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.all()
    }

    /// Empty the request log.
    pub fn clear_requests(&self) {
        self.shared.log.clear()
    }

    /// Installed faults: `add`, `remove`, `clear`, `list`.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Compact at the current revision: watches and continue tokens from older
    /// resourceVersions get 410.
    pub fn compact(&self) {
        self.shared.store.compact()
    }

    /// Current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }

    /// Set the RV counter (e.g. lower it to simulate an etcd restore: clients holding newer
    /// RVs get "Too large resource version").
    pub fn set_resource_version(&self, rv: u64) -> u64 {
        self.shared.store.set_rv(rv)
    }

    /// Close the API port and kill every open connection (watches included); state is kept.
    pub fn down(&self) {
        self.shared.down()
    }

    /// Rebind the API port.
    pub async fn up(&self) -> Result<(), HandleError> {
        Ok(self.shared.up().await?)
    }

    /// Down now, up again after `d`.
    pub fn down_for(&self, d: Duration) {
        self.shared.down_for(d)
    }

    /// Whether the API port is down.
    pub fn is_down(&self) -> bool {
        self.shared.is_down()
    }

    /// Tokens issued through TokenRequest.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.shared.signer.issued()
    }

    /// The JWKS that verifies issued tokens.
    pub fn jwks(&self) -> Value {
        self.shared.signer.jwks()
    }

    /// The token issuer.
    pub fn issuer(&self) -> String {
        self.shared.issuer()
    }

    /// Sign arbitrary claims with the service-account key (for negative tests).
    pub fn sign_claims(&self, claims: &Value) -> Result<String, HandleError> {
        Ok(self.shared.signer.sign(claims)?)
    }

    /// Another identity takes over a Lease now.
    pub fn take_over_lease(&self, ns: &str, name: &str, holder: &str) {
        server::take_over_lease(&self.shared, ns, name, holder)
    }

    /// Interval of BOOKMARK events for new watches.
    pub fn set_bookmark_interval(&self, d: Duration) {
        self.shared.set_bookmark_interval(d)
    }

    /// Stop serving (API and control ports, background tasks).
    pub fn shutdown(&self) {
        self.shared.shutdown()
    }
}
