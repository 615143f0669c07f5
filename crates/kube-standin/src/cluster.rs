//! The state one stand-in cluster shares between its request path, its background
//! controllers, the control API and the typed handle: the store, the token signer, the
//! installed faults, the request log, settings and URLs. No HTTP here: listeners live in
//! `http/`.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::faults::Faults;
use crate::log::RequestLog;
use crate::store::Store;
use crate::tls::Tls;
use crate::token::Signer;

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

/// The shared state.
pub struct Cluster {
    /// Objects.
    pub store: Arc<Store>,
    /// Token signer.
    pub signer: Signer,
    /// The cluster CA and the API port's TLS configuration.
    pub tls: Tls,
    /// Installed faults.
    pub faults: Faults,
    /// Request log.
    pub log: RequestLog,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `https://127.0.0.1:PORT` (the same port).
    pub https_url: String,
    /// API port.
    pub port: u16,
    /// Control URL.
    pub control_url: RwLock<String>,
    issuer: RwLock<String>,
    bookmark_interval: RwLock<Duration>,
    /// GC delay.
    pub gc_delay: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Read a lock, ignoring poisoning.
pub fn read<T: Clone>(l: &RwLock<T>) -> T {
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

/// Lock a mutex, ignoring poisoning.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Cluster {
    /// A new cluster state for a server at `url`.
    pub fn new(
        store: Arc<Store>,
        signer: Signer,
        tls: Tls,
        port: u16,
        control_url: String,
        settings: &Settings,
    ) -> Self {
        let url = format!("http://127.0.0.1:{port}");
        Cluster {
            store,
            signer,
            tls,
            https_url: format!("https://127.0.0.1:{port}"),
            faults: Faults::default(),
            log: RequestLog::default(),
            issuer: RwLock::new(settings.issuer.clone().unwrap_or_else(|| url.clone())),
            url,
            port,
            control_url: RwLock::new(control_url),
            bookmark_interval: RwLock::new(settings.bookmark_interval),
            gc_delay: settings.gc_delay,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Token issuer.
    pub fn issuer(&self) -> String {
        read(&self.issuer)
    }

    /// Set the token issuer.
    pub fn set_issuer(&self, s: String) {
        write(&self.issuer, s)
    }

    /// Control URL.
    pub fn control_url(&self) -> String {
        read(&self.control_url)
    }

    /// Bookmark interval.
    pub fn bookmark_interval(&self) -> Duration {
        read(&self.bookmark_interval)
    }

    /// Set the bookmark interval (applies to new watches).
    pub fn set_bookmark_interval(&self, d: Duration) {
        write(&self.bookmark_interval, d)
    }

    /// Keep a background task to abort on shutdown.
    pub fn own_task(&self, h: JoinHandle<()>) {
        lock(&self.tasks).push(h);
    }

    /// Abort every background task.
    pub fn stop_tasks(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}
