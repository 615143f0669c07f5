//! `msi-acrpull.microsoft.com/v1beta1`: the legacy API. Managed identity only; every field may
//! be empty and then falls back to the controller's environment (`ACR_SERVER`,
//! `MANAGED_IDENTITY_CLIENT_ID`, `MANAGED_IDENTITY_RESOURCE_ID`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::status::AcrPullBindingStatus;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "msi-acrpull.microsoft.com",
    version = "v1beta1",
    kind = "AcrPullBinding",
    plural = "acrpullbindings",
    singular = "acrpullbinding",
    shortname = "msiapb",
    shortname = "msiapbs",
    category = "acrpull",
    namespaced,
    status = "AcrPullBindingStatus",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.acrServer","description":"FQDN of the ACR."}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope","priority":1,"description":"Scope of the ACR token."}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.serviceAccountName","description":"ServiceAccount the pull secret is attached to (default if empty)."}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Last Refresh","type":"date","jsonPath":".status.lastTokenRefreshTime","priority":1}"#,
    printcolumn = r#"{"name":"Expiration","type":"string","jsonPath":".status.tokenExpirationTime","description":"When the token in the pull secret expires (RFC 3339). A string column: kubectl prints date columns as ages, which cannot show a future time."}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = require_acr_server)]
pub struct AcrPullBindingSpec {
    /// The registry's host name, e.g. `example.azurecr.io`. Empty: the controller's `ACR_SERVER`.
    #[serde(default)]
    pub acr_server: String,
    /// ACR token scope, e.g. `repository:my-repo:pull`. Empty: an unscoped (refresh) token.
    #[serde(default)]
    pub scope: String,
    /// Client id of the user-assigned managed identity. Empty: `MANAGED_IDENTITY_CLIENT_ID`.
    #[serde(default, rename = "managedIdentityClientID")]
    pub managed_identity_client_id: String,
    /// ARM resource id of the managed identity, used when no client id is set.
    /// Empty: `MANAGED_IDENTITY_RESOURCE_ID`.
    #[serde(default, rename = "managedIdentityResourceID")]
    pub managed_identity_resource_id: String,
    /// ServiceAccount to attach the pull secret to. Empty: `default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
}

fn require_acr_server(schema: &mut schemars::Schema) {
    super::schema::require(schema, &["acrServer"]);
}
