//! The HTTP side: listeners (the API port, which can go down and come back on the same port,
//! and a control port that stays up), connection tracking so "down" really kills open
//! connections and watches, routing of non-resource paths (discovery, openapi, health, OIDC),
//! fault evaluation, and the request log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admission::user_of;
use crate::checks::{Compiled, RequestChecks};
use crate::error::ApiError;
use crate::faults::{Action, Faults, RequestFacts};
use crate::log::{RequestLog, RequestRecord};
use crate::rest::{self, Call};
use crate::store::{Store, WriteOpts};
use crate::token::{self, Signer};
use crate::watch::WatchFaults;
use crate::{control, discovery, openapi};

/// Response body type.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// The connection must be dropped without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
pub struct Reset;

/// A handler's answer.
pub enum Reply {
    /// A JSON body with a status code.
    Json(u16, Value),
    /// Any body with a content type.
    Raw(u16, String, Bytes),
    /// A watch stream.
    Stream(mpsc::Receiver<Bytes>),
}

impl Reply {
    /// JSON reply.
    pub fn json(code: u16, v: Value) -> Self {
        Reply::Json(code, v)
    }

    /// Status code.
    pub fn code(&self) -> u16 {
        match self {
            Reply::Json(c, _) | Reply::Raw(c, _, _) => *c,
            Reply::Stream(_) => 200,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        Reply::Json(e.code, e.to_status())
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn into_response(reply: Reply, retry_after: Option<u64>) -> Response<Body> {
    let (code, ct, body) = match reply {
        Reply::Json(c, v) => (c, "application/json".to_string(), full(v.to_string())),
        Reply::Raw(c, ct, b) => (c, ct, full(b)),
        Reply::Stream(rx) => {
            let s = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
            });
            (
                200,
                "application/json".to_string(),
                http_body_util::BodyExt::boxed_unsync(StreamBody::new(s)),
            )
        }
    };
    let mut r = Response::builder()
        .status(code)
        .header("content-type", ct)
        .header("cache-control", "no-cache, private");
    if let Some(s) = retry_after {
        r = r.header("retry-after", s.to_string());
    }
    match r.body(body) {
        Ok(r) => r,
        Err(_) => Response::new(full("internal error")),
    }
}

/// Add `Warning: 299 - "..."` headers, as the API server sends warnings (kubectl prints them).
fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text: String = w
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
        let value = format!("299 - \"{quoted}\"");
        if let Ok(v) = hyper::header::HeaderValue::from_bytes(value.as_bytes()) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bookmark interval.
    pub bookmark_interval: Duration,
    /// GC delay.
    pub gc_delay: Duration,
    /// Issuer override.
    pub issuer: Option<String>,
}

/// State shared by every connection and the handle.
pub struct Shared {
    /// Objects.
    pub store: Arc<Store>,
    /// Compiled CRD validators and admission policies.
    pub compiled: Arc<Compiled>,
    /// Token signer.
    pub signer: Signer,
    /// Installed faults.
    pub faults: Faults,
    /// Request log.
    pub log: RequestLog,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// API port.
    pub port: u16,
    /// Control URL.
    pub control_url: RwLock<String>,
    issuer: RwLock<String>,
    bookmark_interval: RwLock<Duration>,
    /// GC delay.
    pub gc_delay: Duration,
    kill_tx: watch::Sender<u64>,
    shutdown_tx: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
    down: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    match l.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn write<T>(l: &RwLock<T>, v: T) {
    match l.write() {
        Ok(mut g) => *g = v,
        Err(p) => *p.into_inner() = v,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Shared {
    /// Token issuer.
    pub fn issuer(&self) -> String {
        read(&self.issuer)
    }

    /// Set the token issuer.
    pub fn set_issuer(&self, s: String) {
        write(&self.issuer, s)
    }

    /// Bookmark interval.
    pub fn bookmark_interval(&self) -> Duration {
        read(&self.bookmark_interval)
    }

    /// Set the bookmark interval (applies to new watches).
    pub fn set_bookmark_interval(&self, d: Duration) {
        write(&self.bookmark_interval, d)
    }

    /// Whether the API port is down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Close the API listener and kill every open API connection (watches included).
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        if let Some(h) = lock(&self.accept).take() {
            h.abort();
        }
        self.kill_tx.send_modify(|g| *g += 1);
    }

    /// Rebind the API port.
    pub async fn up(self: &Arc<Self>) -> std::io::Result<()> {
        if !self.is_down() {
            return Ok(());
        }
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    let h = tokio::spawn(accept_loop(self.clone(), l, false));
                    *lock(&self.accept) = Some(h);
                    self.down.store(false, Ordering::SeqCst);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
    }

    /// Down now, up again after `d` (in the background).
    pub fn down_for(self: &Arc<Self>, d: Duration) {
        self.down();
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            if let Err(e) = me.up().await {
                tracing::warn!(error = %e, "Rebinding the API port failed");
            }
        });
    }

    /// Stop everything.
    pub fn shutdown(&self) {
        self.down();
        self.shutdown_tx.send_replace(true);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Keep a background task to abort on shutdown.
    pub fn own_task(&self, h: JoinHandle<()>) {
        lock(&self.tasks).push(h);
    }
}

/// Bind the listeners and start serving.
pub async fn start(
    port: u16,
    settings: Settings,
    cache_size: usize,
) -> std::io::Result<Arc<Shared>> {
    let api = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let port = api.local_addr()?.port();
    let ctl = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let ctl_port = ctl.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let signer = Signer::generate().map_err(|e| std::io::Error::other(e.to_string()))?;
    let (kill_tx, _) = watch::channel(0u64);
    let (shutdown_tx, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        store: Arc::new(Store::new(cache_size)),
        compiled: Arc::new(Compiled::default()),
        signer,
        faults: Faults::default(),
        log: RequestLog::default(),
        issuer: RwLock::new(settings.issuer.clone().unwrap_or_else(|| url.clone())),
        url,
        port,
        control_url: RwLock::new(format!("http://127.0.0.1:{ctl_port}")),
        bookmark_interval: RwLock::new(settings.bookmark_interval),
        gc_delay: settings.gc_delay,
        kill_tx,
        shutdown_tx,
        accept: Mutex::new(None),
        down: AtomicBool::new(false),
        tasks: Mutex::new(Vec::new()),
    });
    let h = tokio::spawn(accept_loop(shared.clone(), api, false));
    *lock(&shared.accept) = Some(h);
    let c = tokio::spawn(accept_loop(shared.clone(), ctl, true));
    shared.own_task(c);
    let gc = tokio::spawn(crate::gc::run(shared.clone()));
    shared.own_task(gc);
    Ok(shared)
}

/// Boxed with an explicit `Send` bound: the accept loop is (indirectly) spawned from a request
/// handler (`/_standin/up`), and the type cycle would otherwise hide `Send`.
fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    control: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(accept_loop_inner(shared, listener, control))
}

async fn accept_loop_inner(shared: Arc<Shared>, listener: TcpListener, control: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut kill = shared.kill_tx.subscribe();
        let mut shutdown = shared.shutdown_tx.subscribe();
        let sh = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh.clone();
                async move { handle(sh, req, control).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.changed(), if !control => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn now_millis() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    control: bool,
) -> Result<Response<Body>, Reset> {
    let path = req.uri().path().to_string();
    if path.starts_with("/_standin") {
        return Ok(control::handle(shared, req).await);
    }
    if control {
        return Ok(into_response(ApiError::no_route().into(), None));
    }
    let method = req.method().as_str().to_string();
    let query_str = req.uri().query().unwrap_or_default().to_string();
    let query = rest::parse_query(&query_str);
    let accept = header(&req, "accept");
    let content_type = header(&req, "content-type");
    let user_agent = header(&req, "user-agent");
    let user = user_of(req.headers());
    let mut record = RequestRecord {
        method: method.clone(),
        path: path.clone(),
        query: query_str.clone(),
        content_type: content_type.clone(),
        field_manager: query.get("fieldManager").cloned().unwrap_or_default(),
        user_agent: user_agent.clone(),
        timestamp: now_millis(),
        ..Default::default()
    };
    let Some(info) = rest::parse_path(&method, &path, &query) else {
        let reply = non_resource(&shared, &method, &path, &accept);
        record.verb = method.to_lowercase();
        record.status = reply.code();
        shared.log.push(record);
        return Ok(into_response(reply, None));
    };
    record.verb = info.verb.clone();
    record.group = info.group.clone();
    record.version = info.version.clone();
    record.resource = info.resource.clone();
    record.subresource = info.subresource.clone();
    record.namespace = info.namespace.clone().unwrap_or_default();
    record.name = info.name.clone().unwrap_or_default();
    let facts = RequestFacts {
        verb: info.verb.clone(),
        group: info.group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        user_agent: user_agent.clone(),
    };
    let fired = shared.faults.evaluate(&facts);
    record.faults = fired.iter().map(|(id, _)| id.clone()).collect();
    let mut watch_faults = WatchFaults::default();
    let mut token_expiry = None;
    let mut ambiguous: Option<(u16, bool)> = None;
    let mut early: Option<(Reply, Option<u64>)> = None;
    for (_, action) in &fired {
        match action {
            Action::Latency { ms, jitter_ms } => {
                let j = if *jitter_ms > 0 {
                    rand::random_range(0..=*jitter_ms)
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(ms + j)).await;
            }
            Action::Hang => {
                record.status = 0;
                shared.log.push(record);
                futures::future::pending::<()>().await;
                return Err(Reset);
            }
            Action::Reset => {
                record.status = 0;
                shared.log.push(record);
                return Err(Reset);
            }
            Action::Error {
                code,
                message,
                retry_after,
            } => {
                if info.verb == "watch" && *code == 410 {
                    watch_faults.gone = true;
                } else if early.is_none() {
                    let e = ApiError::from_code(*code, message.clone(), *retry_after);
                    early = Some((e.into(), *retry_after));
                }
            }
            Action::Conflict => {
                if early.is_none() {
                    early = Some((
                        ApiError::conflict_stale(&info.group, &info.resource, &record.name).into(),
                        None,
                    ));
                }
            }
            Action::ConcurrentWriter => {
                concurrent_write(&shared, &info, &record.namespace, &record.name)
            }
            Action::LeaseTakeover { holder } => {
                take_over_lease(&shared, &record.namespace, &record.name, holder)
            }
            Action::Ambiguous { code, reset } => ambiguous = Some((*code, *reset)),
            Action::WatchCloseAfter { events, ms } => {
                watch_faults.close_after_events = *events;
                watch_faults.close_after = ms.map(Duration::from_millis);
            }
            Action::WatchStall => watch_faults.stall = true,
            Action::DropEvents { object_name, count } => {
                watch_faults.drop = Some((object_name.clone(), *count))
            }
            Action::DuplicateEvents { object_name, count } => {
                watch_faults.duplicate = Some((object_name.clone(), *count))
            }
            Action::TokenExpiry { seconds } => token_expiry = Some(*seconds),
        }
    }
    if let Some((reply, retry)) = early {
        record.status = reply.code();
        shared.log.push(record);
        return Ok(into_response(reply, retry));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Reset),
    };
    let checks = RequestChecks::new(shared.compiled.clone(), user, &info.version);
    let call = Call {
        query,
        body,
        content_type,
        user_agent,
        accept,
        watch_faults,
        token_expiry,
        checks: checks.clone(),
    };
    let reply = match rest::serve(&shared, &info, call).await {
        Ok(r) => r,
        Err(e) => e.into(),
    };
    let notes = checks.take_notes();
    record.warnings = notes.warnings;
    record.audit_annotations = notes.audit;
    if let Some((code, reset)) = ambiguous {
        if reply.code() < 300 {
            record.status = if reset { 0 } else { code };
            let warnings = record.warnings.clone();
            shared.log.push(record);
            if reset {
                return Err(Reset);
            }
            let resp = into_response(ApiError::from_code(code, None, None).into(), None);
            return Ok(with_warnings(resp, &warnings));
        }
    }
    record.status = reply.code();
    let warnings = record.warnings.clone();
    shared.log.push(record);
    Ok(with_warnings(into_response(reply, None), &warnings))
}

/// Another writer bumps the object's resourceVersion (annotation write).
fn concurrent_write(shared: &Shared, info: &rest::RequestInfo, ns: &str, name: &str) {
    let Some(rt) = shared
        .store
        .type_by_path(&info.group, &info.version, &info.resource)
    else {
        return;
    };
    let ns = if rt.namespaced { ns } else { "" };
    let Ok(mut obj) = shared.store.get(&rt, ns, name) else {
        return;
    };
    let n = obj["metadata"]["annotations"]["kube-standin/concurrent-writer"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    obj["metadata"]["annotations"]["kube-standin/concurrent-writer"] = json!(n.to_string());
    let opts = WriteOpts {
        manager: "kube-standin-concurrent-writer".into(),
        ..Default::default()
    };
    let _ = shared.store.update(&rt, ns, name, obj, None, &opts);
}

/// Another identity takes the Lease.
pub fn take_over_lease(shared: &Shared, ns: &str, name: &str, holder: &str) {
    let Some(rt) = shared
        .store
        .type_by_path("coordination.k8s.io", "v1", "leases")
    else {
        return;
    };
    let Ok(mut obj) = shared.store.get(&rt, ns, name) else {
        return;
    };
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let transitions = obj["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
    if obj["spec"]["holderIdentity"] != json!(holder) {
        obj["spec"]["leaseTransitions"] = json!(transitions + 1);
    }
    obj["spec"]["holderIdentity"] = json!(holder);
    obj["spec"]["acquireTime"] = json!(now);
    obj["spec"]["renewTime"] = json!(now);
    let opts = WriteOpts {
        manager: holder.to_string(),
        ..Default::default()
    };
    let _ = shared.store.update(&rt, ns, name, obj, None, &opts);
}

fn non_resource(shared: &Shared, method: &str, path: &str, accept: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return ApiError::method_not_allowed().into();
    }
    let reg = shared.store.registry();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let agg = |core: bool| -> Reply {
        match discovery::aggregated_version(accept) {
            Some(dv) => Reply::Raw(
                200,
                format!("application/json;g=apidiscovery.k8s.io;v={dv};as=APIGroupDiscoveryList"),
                Bytes::from(discovery::aggregated(&reg, core, dv).to_string()),
            ),
            None if core => Reply::json(
                200,
                discovery::api_versions(&shared.url.replace("http://", "")),
            ),
            None => Reply::json(200, discovery::api_group_list(&reg)),
        }
    };
    let found = |v: Option<Value>| {
        v.map(|v| Reply::json(200, v))
            .unwrap_or_else(|| ApiError::no_route().into())
    };
    match segs.as_slice() {
        ["version"] => Reply::json(200, discovery::version()),
        ["api"] => agg(true),
        ["apis"] => agg(false),
        ["api", v] => found(discovery::resource_list(&reg, "", v)),
        ["apis", g] => found(discovery::api_group(&reg, g)),
        ["apis", g, v] => found(discovery::resource_list(&reg, g, v)),
        ["openapi", "v3"] => Reply::json(200, openapi::index(&reg)),
        ["openapi", "v3", "api", v] => found(openapi::document(&reg, "", v)),
        ["openapi", "v3", "apis", g, v] => found(openapi::document(&reg, g, v)),
        ["healthz"] | ["livez"] | ["readyz"] => {
            Reply::Raw(200, "text/plain".into(), Bytes::from_static(b"ok"))
        }
        [".well-known", "openid-configuration"] => Reply::json(
            200,
            token::openid_configuration(&shared.issuer(), &shared.url),
        ),
        ["openid", "v1", "jwks"] => Reply::Raw(
            200,
            "application/jwk-set+json".into(),
            Bytes::from(shared.signer.jwks().to_string()),
        ),
        _ => ApiError::no_route().into(),
    }
}

/// Turn a reply into a response (for the control API).
pub fn reply_response(reply: Reply) -> Response<Body> {
    into_response(reply, None)
}
