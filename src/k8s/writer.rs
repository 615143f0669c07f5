//! The single write path: every object the controller writes — Secrets, ServiceAccounts,
//! binding finalizers and status, Events, ServiceAccount TokenRequests — goes through
//! [`Writer`], which
//!
//! - checks leadership immediately before sending (not once per pass: a pass can wait a minute
//!   on Azure or a slow API server, and the Lease can be lost meanwhile), refusing with
//!   [`ReconcileError::NotLeader`];
//! - bounds every call with a timeout (kube's client has no read timeout of its own here);
//! - names the field manager.
//!
//! Reads go through [`Writer::read`] (timeout only). The Lease itself is written by the elector
//! (`k8s::leader`), which is how leadership is established in the first place.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use super::error::ReconcileError;

/// Field manager for every write.
pub const FIELD_MANAGER: &str = "acrpull";

/// A namespaced object the controller writes.
pub trait Writable:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + Serialize
{
}

impl<K> Writable for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + Serialize
{
}

/// Leader-gated, timeout-wrapped access to the API server. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    leader: watch::Receiver<bool>,
    timeout: Duration,
    /// Calls in flight at once (`--concurrency`): the load the passes put on the API server is
    /// bounded here, not by how many passes run, so a pass waiting for Azure holds no slot.
    in_flight: Arc<Semaphore>,
}

impl Writer {
    /// `leader` is true while this replica holds the Lease (always, without leader election).
    pub fn new(client: Client, leader: watch::Receiver<bool>, timeout: Duration) -> Self {
        Self {
            client,
            leader,
            timeout,
            in_flight: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        }
    }

    /// At most `calls` API calls in flight at once (the rest wait their turn).
    pub fn with_in_flight(mut self, calls: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(calls.max(1)));
        self
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// The leadership channel this writer is gated on.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api<K: Writable>(&self, namespace: &str) -> Api<K> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn patch_params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }
    }

    fn post_params() -> PostParams {
        PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }
    }

    /// A read, bounded by the call timeout.
    pub async fn read<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ReconcileError> {
        // The semaphore is never closed; without a permit the call still goes out.
        let _slot = self.in_flight.acquire().await.ok();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(|source| ReconcileError::Kube { op, source }),
            Err(_) => Err(ReconcileError::Timeout {
                op,
                after: self.timeout,
            }),
        }
    }

    /// A write: refused unless this replica leads at the moment of sending. `call` builds the
    /// request only after the check (the future is created, and so sent, after it).
    async fn send<T, F: Future<Output = Result<T, kube::Error>>>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> F,
    ) -> Result<T, ReconcileError> {
        if !self.is_leader() {
            return Err(ReconcileError::NotLeader { op });
        }
        self.read(op, call()).await
    }

    /// JSON merge patch of an object (its `metadata.resourceVersion`, when present in the
    /// patch, is a precondition).
    pub async fn patch<K: Writable>(
        &self,
        op: &'static str,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<K, ReconcileError> {
        let api = self.api::<K>(namespace);
        let pp = Self::patch_params();
        self.send(op, || async move {
            api.patch(name, &pp, &Patch::Merge(patch)).await
        })
        .await
    }

    /// JSON merge patch of an object's status subresource.
    pub async fn patch_status<K: Writable>(
        &self,
        namespace: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<K, ReconcileError> {
        let api = self.api::<K>(namespace);
        let pp = Self::patch_params();
        self.send("write status", || async move {
            api.patch_status(name, &pp, &Patch::Merge(patch)).await
        })
        .await
    }

    pub async fn create<K: Writable>(
        &self,
        op: &'static str,
        namespace: &str,
        object: &K,
    ) -> Result<K, ReconcileError> {
        let api = self.api::<K>(namespace);
        let pp = Self::post_params();
        self.send(op, || async move { api.create(&pp, object).await })
            .await
    }

    /// Delete; a missing object is fine.
    pub async fn delete<K: Writable>(
        &self,
        op: &'static str,
        namespace: &str,
        name: &str,
        params: &DeleteParams,
    ) -> Result<(), ReconcileError> {
        let api = self.api::<K>(namespace);
        match self
            .send(op, || async move { api.delete(name, params).await })
            .await
        {
            Err(e) if e.reason() == crate::state::reason::Reason::NotFound => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// A TokenRequest for a ServiceAccount (workload identity): it is a write (it creates a
    /// credential), so a replica that does not lead never asks for one.
    pub async fn token_request(
        &self,
        namespace: &str,
        name: &str,
        request: &TokenRequest,
    ) -> Result<TokenRequest, ReconcileError> {
        let api = self.api::<ServiceAccount>(namespace);
        let pp = PostParams::default();
        self.send("request service account token", || async move {
            api.create_token_request(name, &pp, request).await
        })
        .await
    }
}
