//! Status shared by both API versions: the old controller's three fields (same JSON names)
//! plus the phase, conditions and scheduling facts acrpull adds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcrPullBindingStatus {
    /// When the ACR token in the pull secret was last refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_refresh_time: Option<Time>,
    /// When the ACR token in the pull secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expiration_time: Option<Time>,
    /// The last error, as a message a user can act on; empty when healthy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Pending, Exchanging, Ready, Refreshing or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Pending", "Exchanging", "Ready", "Refreshing", "Failed"]))]
    pub phase: Option<String>,
    /// Standard conditions; `Ready` is always present once the controller has seen the binding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the controller plans to refresh the token next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,
    /// Failed attempts since the last success; drives the per-binding backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
