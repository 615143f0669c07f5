//! The controllers a real cluster runs around its API server that the stand-in reproduces
//! (the kube-controller-manager's garbage collector and namespace finalizer, ...). Each one
//! reacts to store changes after a delay and writes through the store, never inline with a
//! request, so tests cannot come to depend on synchronous side effects.

pub mod gc;
pub mod rbac_aggregation;

use std::sync::Arc;

use crate::cluster::Cluster;

/// Start every controller; they stop with the cluster.
pub fn spawn(cluster: &Arc<Cluster>) {
    let h = tokio::spawn(gc::run(cluster.store.clone(), cluster.gc_delay));
    cluster.own_task(h);
    let h = tokio::spawn(rbac_aggregation::run(
        cluster.store.clone(),
        cluster.gc_delay,
    ));
    cluster.own_task(h);
}
