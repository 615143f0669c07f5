//! `acrpull.microsoft.com/v1beta2`: the current API. Managed or workload identity, any Azure
//! cloud, scoped tokens. The CEL rules here are the old controller's with its
//! `'ArigappedCloud'` typo fixed, so air-gapped bindings can carry their `cloudConfig`.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use super::status::AcrPullBindingStatus;

/// The environments a binding may name.
pub const ENVIRONMENTS: [&str; 4] = [
    "PublicCloud",
    "USGovernmentCloud",
    "ChinaCloud",
    "AirgappedCloud",
];

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "acrpull.microsoft.com",
    version = "v1beta2",
    kind = "AcrPullBinding",
    plural = "acrpullbindings",
    singular = "acrpullbinding",
    category = "acrpull",
    shortname = "apb",
    shortname = "apbs",
    namespaced,
    status = "AcrPullBindingStatus",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.acr.server","description":"FQDN of the ACR."}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.acr.scope","priority":1,"description":"Scope of the ACR token."}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.serviceAccountName","description":"ServiceAccount the pull secret is attached to."}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Last Refresh","type":"date","jsonPath":".status.lastTokenRefreshTime","priority":1}"#,
    printcolumn = r#"{"name":"Expiration","type":"string","jsonPath":".status.tokenExpirationTime","description":"When the token in the pull secret expires (RFC 3339). A string column: kubectl prints date columns as ages, which cannot show a future time."}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = require_spec_fields)]
pub struct AcrPullBindingSpec {
    /// The registry and the token requested from it.
    #[serde(default)]
    pub acr: AcrConfiguration,
    /// How to authenticate to Azure: exactly one of managed or workload identity.
    #[serde(default)]
    pub auth: AuthenticationMethod,
    /// ServiceAccount to attach the pull secret to.
    #[serde(default)]
    pub service_account_name: String,
}

fn require_spec_fields(schema: &mut schemars::Schema) {
    super::schema::require(schema, &["acr", "auth", "serviceAccountName"]);
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.environment == 'AirgappedCloud' ? has(self.cloudConfig) : !has(self.cloudConfig)").message("a custom cloud configuration must be present for air-gapped cloud environments, and only for them"))]
#[schemars(transform = require_acr_fields)]
pub struct AcrConfiguration {
    /// The registry's host name, e.g. `example.azurecr.io` (no scheme or path).
    #[serde(default)]
    #[x_kube(validation = Rule::new("isURL('https://' + self) && (url('https://' + self).getHostname() == self || url('https://' + self).getHostname() + ':' + url('https://' + self).getPort() == self)").message("server must be a fully-qualified domain name, without scheme, path or query"))]
    pub server: String,
    /// One or more space-separated scopes, e.g. `repository:my-repo:pull repository:base:pull`.
    /// There is no wildcard repository.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub scope: String,
    /// Azure cloud of the registry.
    #[serde(default = "default_environment")]
    #[schemars(extend("enum" = ENVIRONMENTS))]
    pub environment: String,
    /// Endpoints of an air-gapped cloud; required for, and only for, `AirgappedCloud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_config: Option<Box<AirgappedCloudConfiguration>>,
}

fn require_acr_fields(schema: &mut schemars::Schema) {
    super::schema::require(schema, &["environment", "scope", "server"]);
}

pub fn default_environment() -> String {
    "PublicCloud".to_string()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = require_cloud_fields)]
pub struct AirgappedCloudConfiguration {
    /// The Entra authority host of the air-gapped cloud, e.g. `https://login.example.cloud/`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub entra_authority_host: String,
    /// The Resource Manager audience tokens are requested for.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub resource_manager_audience: String,
}

fn require_cloud_fields(schema: &mut schemars::Schema) {
    super::schema::require(schema, &["entraAuthorityHost", "resourceManagerAudience"]);
}

// The identity parts are boxed: a binding has one of them, and the binding store keeps every
// binding (two empty inline options cost more than one box). Not a doc comment: it would
// become the schema's description.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.managedIdentity), has(self.workloadIdentity)].exists_one(x, x)").message("exactly one of managedIdentity or workloadIdentity must be set"))]
pub struct AuthenticationMethod {
    /// Authenticate with a managed identity of the node (through IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<Box<ManagedIdentityAuth>>,
    /// Authenticate with a ServiceAccount federated to an Entra identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<Box<WorkloadIdentityAuth>>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.clientID), has(self.resourceID)].exists_one(x, x)").message("exactly one of clientID or resourceID must be set"))]
pub struct ManagedIdentityAuth {
    /// Client id of the managed identity.
    #[serde(default, rename = "clientID", skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// ARM resource id of the managed identity.
    #[serde(
        default,
        rename = "resourceID",
        skip_serializing_if = "String::is_empty"
    )]
    pub resource_id: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientID) == has(self.tenantID)").message("clientID and tenantID must be provided together, if at all"))]
#[schemars(transform = require_sa_ref)]
pub struct WorkloadIdentityAuth {
    /// The ServiceAccount whose federated token is exchanged at Entra.
    #[serde(default, rename = "serviceAccountRef")]
    pub service_account_ref: String,
    /// Client id of the federated identity; default: the ServiceAccount's
    /// `azure.workload.identity/client-id` annotation.
    #[serde(default, rename = "clientID", skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Tenant id of the federated identity; default: the ServiceAccount's
    /// `azure.workload.identity/tenant-id` annotation.
    #[serde(default, rename = "tenantID", skip_serializing_if = "String::is_empty")]
    pub tenant_id: String,
}

fn require_sa_ref(schema: &mut schemars::Schema) {
    super::schema::require(schema, &["serviceAccountRef"]);
}
