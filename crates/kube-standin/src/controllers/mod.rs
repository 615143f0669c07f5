//! The controllers a real cluster runs around its API server that the stand-in reproduces:
//! the kube-controller-manager's garbage collector ([`gc`]), its namespace controllers
//! ([`namespace`]: `default` ServiceAccount, `kube-root-ca.crt`, namespace finalization) and
//! its ClusterRole aggregation ([`rbac_aggregation`]). Each reacts to store changes after the
//! configured delay (`Builder::gc_delay`) and writes straight to the store, never inline with a
//! request, so tests cannot come to depend on synchronous side effects.

pub mod gc;
pub mod namespace;
pub mod rbac_aggregation;

use std::sync::Arc;

use crate::cluster::Cluster;

/// Start every controller; they stop with the cluster.
pub fn spawn(cluster: &Arc<Cluster>) {
    let h = tokio::spawn(gc::run(cluster.store.clone(), cluster.gc_delay));
    cluster.own_task(h);
    let h = tokio::spawn(namespace::run(
        cluster.store.clone(),
        cluster.tls.ca_pem().to_string(),
        cluster.gc_delay,
    ));
    cluster.own_task(h);
    let h = tokio::spawn(rbac_aggregation::run(
        cluster.store.clone(),
        cluster.gc_delay,
    ));
    cluster.own_task(h);
}
