//! One attach at a time per ServiceAccount.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Per ServiceAccount, a lock its attach patches take. Bindings sharing a ServiceAccount are
/// often minted together; without it two passes patch it from the same cached
/// resourceVersion, one is answered 409 and its binding costs a second pass. Under the lock
/// the second pass sees the first one's answer in the cache — usually with its own name
/// already in it (rule 8 names the siblings) — and writes nothing. Entries live only while
/// held or awaited, so memory stays flat with the number of ServiceAccounts.
#[derive(Default, Clone)]
pub struct ServiceAccountLocks(Arc<Mutex<LockMap>>);

type LockMap = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// Held while a ServiceAccount is written; released (and forgotten when unused) on drop.
pub struct ServiceAccountGuard {
    locks: ServiceAccountLocks,
    key: (String, String),
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ServiceAccountLocks {
    pub async fn lock(&self, namespace: &str, name: &str) -> ServiceAccountGuard {
        let key = (namespace.to_string(), name.to_string());
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        ServiceAccountGuard {
            locks: self.clone(),
            key,
            guard: Some(guard),
        }
    }

    /// Locks held or awaited (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ServiceAccountGuard {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        // Only the map's reference left: nobody holds or awaits it.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}
