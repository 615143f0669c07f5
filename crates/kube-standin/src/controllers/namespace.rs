//! The namespace controllers of a real cluster, after a delay following any change:
//! - the ServiceAccount controller: every active namespace has a `default` ServiceAccount
//!   (created again when deleted);
//! - the root-CA publisher: every active namespace has the `kube-root-ca.crt` ConfigMap with
//!   the cluster CA under `ca.crt` (created again, or put back, when deleted or changed);
//! - the namespace lifecycle controller: a terminating namespace is emptied (every object in
//!   it deleted, finalizers honoured), then removed.
//!
//! All three write as `kube-controller-manager`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::store::{DeleteOpts, Store, WriteOpts};

const MANAGER: &str = "kube-controller-manager";
/// The ConfigMap the root-CA publisher maintains.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

fn opts() -> WriteOpts {
    WriteOpts {
        manager: MANAGER.into(),
        ..Default::default()
    }
}

fn terminating(ns: &Value) -> bool {
    !ns["metadata"]["deletionTimestamp"].is_null()
}

/// The `default` ServiceAccount and `kube-root-ca.crt` in one active namespace; whether
/// anything was written.
fn ensure_namespace_defaults(store: &Store, ns: &str, ca_pem: &str) -> bool {
    let mut acted = false;
    if store.object("", "serviceaccounts", ns, "default").is_none() {
        if let Some(rt) = store.type_by_path("", "v1", "serviceaccounts") {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": ns}});
            acted |= store.create(&rt, ns, sa, &opts()).is_ok();
        }
    }
    let want_data = json!({"ca.crt": ca_pem});
    let current = store.object("", "configmaps", ns, ROOT_CA_CONFIGMAP);
    if current.as_ref().is_some_and(|c| c["data"] == want_data) {
        return acted;
    }
    let Some(rt) = store.type_by_path("", "v1", "configmaps") else {
        return acted;
    };
    match current {
        None => {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                             "annotations": {"kubernetes.io/description": DESCRIPTION}},
                "data": want_data});
            acted |= store.create(&rt, ns, cm, &opts()).is_ok();
        }
        Some(mut cm) => {
            cm["data"] = want_data;
            acted |= store
                .update(&rt, ns, ROOT_CA_CONFIGMAP, cm, None, &opts())
                .is_ok();
        }
    }
    acted
}

/// Empty a terminating namespace, then remove it; whether anything was done.
fn finalize(store: &Store, ns: &Value) -> bool {
    let name = ns["metadata"]["name"].as_str().unwrap_or_default();
    let contents: Vec<_> = store
        .all_objects()
        .into_iter()
        .filter(|(t, o)| t.namespaced && o["metadata"]["namespace"] == name)
        .collect();
    if contents.is_empty() {
        if let Some(rt) = store.type_by_path("", "v1", "namespaces") {
            store.purge(&rt, "", name);
        }
        return true;
    }
    let mut acted = false;
    for (rt, o) in contents {
        if !o["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let oname = o["metadata"]["name"].as_str().unwrap_or_default();
        let del = DeleteOpts {
            propagation: Some("Background".into()),
            ..Default::default()
        };
        acted |= store.delete(&rt, name, oname, &del).is_ok();
    }
    acted
}

/// One pass over every namespace; whether it changed anything.
pub fn pass(store: &Store, ca_pem: &str) -> bool {
    let mut acted = false;
    for ns in store.objects("", "namespaces", None) {
        if terminating(&ns) {
            acted |= finalize(store, &ns);
        } else if let Some(name) = ns["metadata"]["name"].as_str() {
            acted |= ensure_namespace_defaults(store, name, ca_pem);
        }
    }
    acted
}

/// The controller loop: after every change, wait `delay`, then reconcile every namespace.
pub async fn run(store: Arc<Store>, ca_pem: String, delay: Duration) {
    let mut rv = store.rv_watch();
    loop {
        if rv.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        rv.borrow_and_update();
        pass(&store, &ca_pem);
    }
}
