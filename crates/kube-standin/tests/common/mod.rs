//! Helpers shared by the integration tests: a server per test, a kube client for it, a
//! namespace per test, the project-shaped CRDs as kube-rs types.
#![allow(dead_code)]

use std::time::Duration;

use kube::{Client, CustomResource};
use kube_standin::{Handle, StandIn};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const T: Duration = Duration::from_secs(10);

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client as the admin kubeconfig's user (`system:admin`, cluster-admin).
pub fn client_for(h: &Handle) -> Client {
    client_with_token(h, h.admin_token())
}

/// A client authenticating with `token` (a ServiceAccount token runs under RBAC).
pub fn client_with_token(h: &Handle, token: &str) -> Client {
    install_crypto();
    let mut cfg = kube::Config::new(h.url().parse().expect("url"));
    cfg.default_namespace = "default".into();
    cfg.auth_info.token = Some(token.to_string().into());
    Client::try_from(cfg).expect("client")
}

pub async fn start() -> (Handle, Client) {
    start_with(StandIn::builder()).await
}

pub async fn start_with(b: kube_standin::Builder) -> (Handle, Client) {
    let h = b.start().await.expect("start stand-in");
    let c = client_for(&h);
    (h, c)
}

pub fn namespace(h: &Handle, name: &str) {
    h.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .expect("namespace");
}

pub mod v1beta2 {
    use super::*;

    #[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
    #[kube(
        group = "acrpull.microsoft.com",
        version = "v1beta2",
        kind = "AcrPullBinding",
        namespaced,
        status = "BindingStatus",
        shortname = "apb",
        shortname = "apbs",
        printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
    )]
    #[serde(rename_all = "camelCase")]
    pub struct BindingSpec {
        pub server: String,
        pub scope: String,
        pub service_account_name: String,
    }

    #[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct BindingStatus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub phase: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub observed_generation: Option<i64>,
    }
}

pub mod v1beta1 {
    use super::*;

    #[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
    #[kube(
        group = "msi-acrpull.microsoft.com",
        version = "v1beta1",
        kind = "AcrPullBinding",
        namespaced,
        status = "LegacyStatus",
        shortname = "apb",
        shortname = "apbs"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct LegacySpec {
        pub acr_server: String,
        pub managed_identity_client_id: String,
    }

    #[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
    #[serde(rename_all = "camelCase")]
    pub struct LegacyStatus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_token_refresh_time: Option<String>,
    }
}

/// Register both CRDs through the API (as real manifests) and wait until they are served.
pub async fn install_crds(h: &Handle) {
    use kube::CustomResourceExt;
    for crd in [
        v1beta2::AcrPullBinding::crd(),
        v1beta1::AcrPullBinding::crd(),
    ] {
        h.apply(serde_json::to_value(&crd).expect("crd json"))
            .expect("apply crd");
    }
}
