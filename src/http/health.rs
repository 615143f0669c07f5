//! `/healthz` and `/readyz`.
//!
//! `/healthz` answers 200 while the process runs. `/readyz` answers 200 only after every watch
//! has delivered its initial list, and 503 again once shutdown starts, so a Service or a
//! rolling update never routes to, or waits on, a replica that cannot act.
//!
//! Conditions an operator must fix but that do not stop the replica from working (an outdated
//! CRD) are warnings: `/readyz` stays 200 and its body lists them after `ok`, one
//! `warning: ...` line each. Failing readiness for them would stall every rollout of the
//! controller (the new pods never become ready) while the pull secrets are kept fresh anyway.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// Shared readiness: a count of watches still syncing and a shutdown flag.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    pending: AtomicUsize,
    shutting_down: AtomicBool,
    /// Warnings by key, shown in the `/readyz` body.
    warnings: Mutex<BTreeMap<String, String>>,
}

impl Readiness {
    /// Not ready until `watches` watches have each called [`Readiness::synced`] once.
    pub fn new(watches: usize) -> Self {
        Self(Arc::new(Inner {
            pending: AtomicUsize::new(watches),
            shutting_down: AtomicBool::new(false),
            warnings: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Show `message` under `key` in the `/readyz` body (replacing an earlier one).
    pub fn set_warning(&self, key: &str, message: String) {
        if let Ok(mut w) = self.0.warnings.lock() {
            w.insert(key.to_string(), message);
        }
    }

    pub fn clear_warning(&self, key: &str) {
        if let Ok(mut w) = self.0.warnings.lock() {
            w.remove(key);
        }
    }

    /// The warnings, ordered by key.
    pub fn warnings(&self) -> Vec<String> {
        self.0
            .warnings
            .lock()
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One watch delivered its initial list. Call once per watch.
    pub fn synced(&self) {
        let _ = self
            .0
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Shutdown started: not ready from now on.
    pub fn shutting_down(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
    }

    /// Every watch has delivered its initial list (regardless of shutdown).
    pub fn is_synced(&self) -> bool {
        self.0.pending.load(Ordering::Acquire) == 0
    }

    pub fn is_ready(&self) -> bool {
        self.0.pending.load(Ordering::Acquire) == 0 && !self.0.shutting_down.load(Ordering::Acquire)
    }
}

/// The probe routes.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(r): State<Readiness>) -> (StatusCode, String) {
    let (code, state) = if r.is_ready() {
        (StatusCode::OK, "ok")
    } else if r.0.shutting_down.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches syncing")
    };
    let mut body = state.to_string();
    for warning in r.warnings() {
        body.push_str("\nwarning: ");
        body.push_str(&warning);
    }
    (code, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_status(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let code = buf[9..12].parse().unwrap();
        let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (code, body)
    }

    #[tokio::test]
    async fn readiness_follows_sync_and_shutdown() {
        let readiness = Readiness::new(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(readiness.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        assert_eq!(get_status(addr, "/healthz").await.0, 200);
        assert_eq!(
            get_status(addr, "/readyz").await,
            (503, "caches syncing".into())
        );
        readiness.synced();
        assert_eq!(
            get_status(addr, "/readyz").await.0,
            503,
            "one watch still syncing"
        );
        readiness.synced();
        readiness.synced(); // extra calls do not underflow
        assert_eq!(get_status(addr, "/readyz").await, (200, "ok".into()));
        readiness.shutting_down();
        assert_eq!(
            get_status(addr, "/readyz").await,
            (503, "shutting down".into())
        );
        assert_eq!(
            get_status(addr, "/healthz").await.0,
            200,
            "alive while draining"
        );
    }

    #[tokio::test]
    async fn warnings_are_listed_without_failing_readiness() {
        let readiness = Readiness::new(0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(readiness.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        readiness.set_warning("b", "second".into());
        readiness.set_warning("a", "first".into());
        assert_eq!(
            get_status(addr, "/readyz").await,
            (200, "ok\nwarning: first\nwarning: second".into())
        );
        readiness.clear_warning("a");
        readiness.clear_warning("b");
        assert_eq!(get_status(addr, "/readyz").await, (200, "ok".into()));
    }
}
