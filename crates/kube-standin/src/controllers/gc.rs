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

fn merge(store: &Store, rt: &Arc<ResourceType>, o: &Value, patch: Value) {
    let (ns, name) = key(o);
    let _ = store.patch(rt, &ns, &name, PatchType::Merge, &patch, None, &wopts());
}

fn delete(store: &Store, rt: &Arc<ResourceType>, o: &Value, policy: &str) {
    if deleting(o) {
        return;
    }
    let (ns, name) = key(o);
    let opts = DeleteOpts {
        propagation: Some(policy.into()),
        ..Default::default()
    };
    let _ = store.delete(rt, &ns, &name, &opts);
}

/// One GC pass over a snapshot; whether it changed anything.
pub fn pass(store: &Store) -> bool {
    let all = store.all_objects();
    let by_uid: HashMap<&str, &Value> = all
        .iter()
        .filter_map(|(_, o)| o["metadata"]["uid"].as_str().map(|u| (u, o)))
        .collect();
    let mut acted = false;
    for (rt, o) in &all {
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
        if keep.is_empty() && dangling > 0 {
            if !deleting(o) {
                delete(store, rt, o, "Background");
                acted = true;
            }
        } else if keep.len() < refs.len() {
            merge(store, rt, o, json!({"metadata": {"ownerReferences": keep}}));
            acted = true;
        } else if foreground && !deleting(o) {
            delete(store, rt, o, "Foreground");
            acted = true;
        }
    }
    for (rt, o) in all.iter().filter(|(_, o)| deleting(o)) {
        let uid = o["metadata"]["uid"].as_str().unwrap_or_default();
        let dependents: Vec<&Value> = all
            .iter()
            .map(|(_, d)| d)
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
            merge(store, rt, o, json!({"metadata": {"finalizers": fins}}));
            acted = true;
        }
    }
    acted
}

/// The GC loop: after every change, wait the GC delay, then run passes.
pub async fn run(store: Arc<Store>, delay: Duration) {
    let mut rv = store.rv_watch();
    loop {
        if rv.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        rv.borrow_and_update();
        // Our own writes change the RV, so cascades continue on the next iteration.
        pass(&store);
    }
}
