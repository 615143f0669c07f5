//! Asynchronous garbage collection, as the kube-controller-manager does it: after a
//! configurable delay following any change, dependents whose owners are all gone are deleted
//! (background), references to vanished owners are stripped, and `orphan` and
//! `foregroundDeletion` finalizers are processed. Nothing cascades inline, so tests cannot come
//! to depend on synchronous GC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::patch::PatchType;
use crate::resources::ResourceType;
use crate::store::{DeleteOpts, Store, WriteOpts};

const MANAGER: &str = "generic-garbage-collector";

fn deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    o["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn key(o: &Value) -> (String, String) {
    (
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn wopts() -> WriteOpts {
    WriteOpts {
        manager: MANAGER.into(),
        ..Default::default()
    }
}

/// What one pass decided to do to one object.
enum Act {
    /// Delete with this propagation policy.
    Delete(Arc<ResourceType>, (String, String), &'static str),
    /// Apply this merge patch.
    Merge(Arc<ResourceType>, (String, String), Value),
}

/// One GC pass; whether it changed anything. The decisions are made under the store's lock
/// on borrowed objects (nothing is copied), then carried out through the store's API.
pub fn pass(store: &Store) -> bool {
    let acts = store.scan(plan);
    let acted = !acts.is_empty();
    for act in acts {
        match act {
            Act::Delete(rt, (ns, name), policy) => {
                let opts = DeleteOpts {
                    propagation: Some(policy.into()),
                    ..Default::default()
                };
                let _ = store.delete(&rt, &ns, &name, &opts);
            }
            Act::Merge(rt, (ns, name), patch) => {
                let _ = store.patch(&rt, &ns, &name, PatchType::Merge, &patch, None, &wopts());
            }
        }
    }
    acted
}

fn plan(all: &[(&Arc<ResourceType>, &Value)]) -> Vec<Act> {
    let by_uid: HashMap<&str, &Value> = all
        .iter()
        .filter_map(|(_, o)| o["metadata"]["uid"].as_str().map(|u| (u, *o)))
        .collect();
    let mut acts = Vec::new();
    for (rt, o) in all {
        let Some(refs) = o["metadata"]["ownerReferences"]
            .as_array()
            .filter(|r| !r.is_empty())
        else {
            continue;
        };
        let mut keep = Vec::new();
        let mut dangling = 0;
        let mut foreground = false;
        for r in refs {
            match r["uid"].as_str().and_then(|u| by_uid.get(u)) {
                None => dangling += 1,
                Some(owner) if deleting(owner) && has_finalizer(owner, "orphan") => {}
                Some(owner) => {
                    if deleting(owner) && has_finalizer(owner, "foregroundDeletion") {
                        foreground = true;
                    }
                    keep.push(r.clone());
                }
            }
        }
        let rt = (*rt).clone();
        if keep.is_empty() && dangling > 0 {
            if !deleting(o) {
                acts.push(Act::Delete(rt, key(o), "Background"));
            }
        } else if keep.len() < refs.len() {
            let patch = json!({"metadata": {"ownerReferences": keep}});
            acts.push(Act::Merge(rt, key(o), patch));
        } else if foreground && !deleting(o) {
            acts.push(Act::Delete(rt, key(o), "Foreground"));
        }
    }
    for (rt, o) in all.iter().filter(|(_, o)| deleting(o)) {
        let uid = o["metadata"]["uid"].as_str().unwrap_or_default();
        let dependents: Vec<&Value> = all
            .iter()
            .map(|(_, d)| *d)
            .filter(|d| {
                d["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|r| r["uid"] == uid))
            })
            .collect();
        let mut remove = Vec::new();
        if has_finalizer(o, "orphan") && dependents.is_empty() {
            remove.push("orphan");
        }
        if has_finalizer(o, "foregroundDeletion") {
            let blocking = dependents.iter().any(|d| {
                d["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|rs| {
                        rs.iter()
                            .any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == true)
                    })
            });
            if !blocking {
                remove.push("foregroundDeletion");
            }
        }
        if !remove.is_empty() {
            let fins: Vec<Value> = o["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| !remove.iter().any(|r| *f == r))
                .cloned()
                .collect();
            let patch = json!({"metadata": {"finalizers": fins}});
            acts.push(Act::Merge((*rt).clone(), key(o), patch));
        }
    }
    acts
}

/// The GC loop: after every change, wait the GC delay, then run passes. A pass scans the
/// whole store, so with a large store and a steady stream of writes the next pass also waits
/// nineteen times as long as the last one took: GC stays under a twentieth of a core, as the real
/// collector (driven by its own informers) does not compete with the API server for CPU.
pub async fn run(store: Arc<Store>, delay: Duration) {
    let mut rv = store.rv_watch();
    let mut last = Duration::ZERO;
    loop {
        if rv.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(delay.max(last * 19)).await;
        rv.borrow_and_update();
        // Our own writes change the RV, so cascades continue on the next iteration.
        let started = std::time::Instant::now();
        pass(&store);
        last = started.elapsed();
    }
}
