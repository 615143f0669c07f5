//! The typed handle tests hold: start a server ([`StandIn::builder`]), seed and read objects,
//! wait on store conditions, read the request log, set faults, and drive the lifecycle
//! (down/up, compaction, shutdown).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::Settings;
use crate::faults::Faults;
use crate::http::{self, Server};
use crate::log::RequestRecord;
use crate::objects;
use crate::token::IssuedToken;

pub use crate::objects::{parse_documents, HandleError};

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
    /// Delay before the background controllers (garbage collector, namespace controllers,
    /// ClusterRole aggregation) act on a change.
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
        let server = http::start(
            self.port,
            Settings {
                bookmark_interval: self.bookmark_interval,
                gc_delay: self.gc_delay,
                issuer: self.issuer,
            },
            self.watch_cache_size,
        )
        .await?;
        let h = Handle {
            server: Arc::new(server),
        };
        for y in &self.seed {
            h.apply_yaml(y)?;
        }
        Ok(h)
    }
}

/// A running stand-in. Cloning shares it; [`Handle::shutdown`] stops it.
#[derive(Clone)]
pub struct Handle {
    server: Arc<Server>,
}

impl Handle {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.cluster.url.clone()
    }

    /// The API port.
    pub fn port(&self) -> u16 {
        self.server.cluster.port
    }

    /// URL of the control port (serves only `/_standin/...`, stays up while the API is down).
    pub fn control_url(&self) -> String {
        self.server.cluster.control_url()
    }

    /// `https://127.0.0.1:PORT`: the API port over TLS (the kubeconfig's server).
    pub fn https_url(&self) -> String {
        self.server.cluster.https_url.clone()
    }

    /// The cluster CA (PEM) the API port's certificate chains to.
    pub fn ca_pem(&self) -> String {
        self.server.cluster.tls.ca_pem().to_string()
    }

    /// The admin kubeconfig text: HTTPS with the cluster CA, the admin token.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_for_token(crate::authn::ADMIN_TOKEN)
    }

    /// Write the admin kubeconfig (atomically).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), HandleError> {
        self.write_kubeconfig_for_token(path, crate::authn::ADMIN_TOKEN)
    }

    /// The admin kubeconfig's bearer token (`system:admin`, cluster-admin).
    pub fn admin_token(&self) -> &'static str {
        crate::authn::ADMIN_TOKEN
    }

    /// A bearer token for the ServiceAccount `ns/name`, valid for `ttl` against this API
    /// server (audience: the issuer), signed like a TokenRequest's; requests with it run as
    /// `system:serviceaccount:NS:NAME` under RBAC. Not recorded in [`Handle::issued_tokens`].
    pub fn service_account_token(
        &self,
        ns: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String, HandleError> {
        let store = &self.server.cluster.store;
        let sa = objects::get(store, "v1", "ServiceAccount", ns, name).ok_or_else(|| {
            HandleError::Api(crate::ApiError::not_found("", "serviceaccounts", name))
        })?;
        let audiences = crate::authn::api_audiences(&self.server.cluster);
        let now = jiff::Timestamp::now().as_second();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        Ok(self.server.cluster.signer.service_account_token(
            &self.server.cluster.issuer(),
            &sa,
            &audiences,
            ttl,
            now,
        )?)
    }

    /// Kubeconfig text for this server authenticating with `token`.
    pub fn kubeconfig_for_token(&self, token: &str) -> String {
        crate::kubeconfig::render_for_token(
            &self.https_url(),
            self.server.cluster.tls.ca_pem(),
            token,
        )
    }

    /// Write a kubeconfig for this server authenticating with `token` (for instance a
    /// [`Handle::service_account_token`], to run kubectl or a controller as that
    /// ServiceAccount).
    pub fn write_kubeconfig_for_token(&self, path: &Path, token: &str) -> Result<(), HandleError> {
        Ok(crate::kubeconfig::write_text(
            path,
            &self.kubeconfig_for_token(token),
        )?)
    }

    /// Create or replace one object (status included, written through the status subresource).
    /// Unchecked: no validation (CRD schemas, CEL rules) and no validating admission
    /// (policies), so a test can seed an object "stored before the rule existed"; a client
    /// that should be checked goes through the API (with [`Handle::admin_token`] or a
    /// [`Handle::service_account_token`]).
    pub fn apply(&self, obj: Value) -> Result<Value, HandleError> {
        objects::apply(&self.server.cluster.store, obj)
    }

    /// Apply every document of a (multi-document) YAML or JSON text, in order.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>, HandleError> {
        objects::apply_yaml(&self.server.cluster.store, yaml)
    }

    /// Apply every document the way `kubectl apply --server-side --force-conflicts` run by
    /// the admin does: through the API (validated — CRD schemas and rules, policy objects —,
    /// defaulted, admitted by the ValidatingAdmissionPolicies, logged), unlike
    /// [`Handle::apply_yaml`], which stores unchecked. For what a cluster would have checked
    /// on the way in: RBAC, admission policies, CRDs.
    pub async fn apply_yaml_checked(&self, yaml: &str) -> Result<Vec<Value>, HandleError> {
        let mut out = Vec::new();
        for doc in objects::parse_documents(yaml)? {
            out.push(crate::pipeline::admin_apply(&self.server.cluster, &doc).await?);
        }
        Ok(out)
    }

    /// One object (`ns` is `""` for cluster-scoped types); `kind` may also be the plural,
    /// singular or a short name.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        objects::get(&self.server.cluster.store, api_version, kind, ns, name)
    }

    /// Objects of a type, in one namespace or all.
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        self.try_list(api_version, kind, ns).unwrap_or_default()
    }

    /// How many stored objects of a type satisfy `pred`, read under the store's lock without
    /// copying any (a poll of 10,000 objects by [`Handle::list`] copies them all). `pred` sees
    /// the stored form (the storage version), and must not call back into the stand-in.
    pub fn count(&self, api_version: &str, kind: &str, pred: impl Fn(&Value) -> bool) -> usize {
        let store = &self.server.cluster.store;
        match objects::resolve(store, api_version, kind) {
            Ok(rt) => store.count_of(&rt, pred),
            Err(_) => 0,
        }
    }

    /// Like [`Handle::list`], failing for unknown types.
    pub fn try_list(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<Vec<Value>, HandleError> {
        objects::list(&self.server.cluster.store, api_version, kind, ns)
    }

    /// Delete an object (background propagation, finalizers honoured).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<(), HandleError> {
        objects::delete(&self.server.cluster.store, api_version, kind, ns, name)
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
        let mut rx = self.server.cluster.store.rv_watch();
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
        let mut rx = self.server.cluster.store.rv_watch();
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
        self.server.cluster.log.all()
    }

    /// Empty the request log.
    pub fn clear_requests(&self) {
        self.server.cluster.log.clear()
    }

    /// Installed faults: `add`, `remove`, `clear`, `list`.
    pub fn faults(&self) -> &Faults {
        &self.server.cluster.faults
    }

    /// Compact at the current revision: watches and continue tokens from older
    /// resourceVersions get 410.
    pub fn compact(&self) {
        self.server.cluster.store.compact()
    }

    /// Current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.server.cluster.store.current_rv()
    }

    /// Set the RV counter (e.g. lower it to simulate an etcd restore: clients holding newer
    /// RVs get "Too large resource version").
    pub fn set_resource_version(&self, rv: u64) -> u64 {
        self.server.cluster.store.set_rv(rv)
    }

    /// Close the API port and kill every open connection (watches included); state is kept.
    pub fn down(&self) {
        self.server.api.down()
    }

    /// Rebind the API port.
    pub async fn up(&self) -> Result<(), HandleError> {
        Ok(self.server.api.up().await?)
    }

    /// Down now, up again after `d`.
    pub fn down_for(&self, d: Duration) {
        self.server.api.down_for(d)
    }

    /// Whether the API port is down.
    pub fn is_down(&self) -> bool {
        self.server.api.is_down()
    }

    /// Tokens issued through TokenRequest.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.server.cluster.signer.issued()
    }

    /// The JWKS that verifies issued tokens.
    pub fn jwks(&self) -> Value {
        self.server.cluster.signer.jwks()
    }

    /// The token issuer.
    pub fn issuer(&self) -> String {
        self.server.cluster.issuer()
    }

    /// Sign arbitrary claims with the service-account key (for negative tests).
    pub fn sign_claims(&self, claims: &Value) -> Result<String, HandleError> {
        Ok(self.server.cluster.signer.sign(claims)?)
    }

    /// Another identity takes over a Lease now.
    pub fn take_over_lease(&self, ns: &str, name: &str, holder: &str) {
        objects::take_over_lease(&self.server.cluster.store, ns, name, holder)
    }

    /// Interval of BOOKMARK events for new watches.
    pub fn set_bookmark_interval(&self, d: Duration) {
        self.server.cluster.set_bookmark_interval(d)
    }

    /// Stop serving (API and control ports, background tasks).
    pub fn shutdown(&self) {
        self.server.shutdown()
    }
}
