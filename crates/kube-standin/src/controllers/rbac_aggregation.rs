//! The ClusterRole aggregation controller: after every change, re-aggregate the ClusterRoles
//! with an `aggregationRule` ([`crate::authz::aggregation`]).

use std::sync::Arc;
use std::time::Duration;

use crate::authz::aggregation::pass;
use crate::store::Store;

/// The controller loop: after every change, wait `delay`, then aggregate.
pub async fn run(store: Arc<Store>, delay: Duration) {
    let mut rv = store.rv_watch();
    loop {
        if rv.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        rv.borrow_and_update();
        pass(&store);
    }
}
