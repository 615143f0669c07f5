//! A version-agnostic view of a binding and its validation into a [`Resolved`] request.
//!
//! The k8s layer converts either CRD version into [`Spec`]; everything after that (defaults,
//! validation, identity selection, the inputs hash, the secret name) is decided here, so both
//! versions share one set of rules and one table of tests.

use super::inputs;
use super::names;
use super::reason::Reason;
use super::refresh::{Backoff, RefreshRule};
use super::scope;
use super::server::{check_server, AllowedSuffixes, RegistryHost};
use super::tenancy::{
    first_disallowed, normalize_authority, AllowedActions, AllowedClouds, Mode as TenancyMode,
};

/// Annotations workload identity reads from the asserting ServiceAccount.
pub const WI_CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
pub const WI_TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    V1beta1,
    V1beta2,
}

impl Version {
    pub fn api_version(self) -> &'static str {
        match self {
            Version::V1beta1 => "msi-acrpull.microsoft.com/v1beta1",
            Version::V1beta2 => "acrpull.microsoft.com/v1beta2",
        }
    }
}

/// The v1beta1 spec as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct V1beta1Spec {
    pub acr_server: String,
    pub scope: String,
    pub client_id: String,
    pub resource_id: String,
    pub service_account_name: String,
    /// The binding's `acr.microsoft.com/identity-audience` annotation, as written.
    pub identity_audience: Option<String>,
}

/// The v1beta2 spec as written (`None` = the object was absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct V1beta2Spec {
    pub server: String,
    pub scope: String,
    pub environment: String,
    pub cloud_config: Option<(String, String)>, // (entraAuthorityHost, resourceManagerAudience)
    pub managed: Option<(String, String)>,      // (clientID, resourceID)
    pub workload: Option<WorkloadSpec>,
    pub service_account_name: String,
    /// The binding's `acr.microsoft.com/identity-audience` annotation, as written.
    pub identity_audience: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadSpec {
    pub service_account_ref: String,
    pub client_id: String,
    pub tenant_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    V1beta1(V1beta1Spec),
    V1beta2(V1beta2Spec),
}

/// The controller's environment defaults for v1beta1 (`ACR_SERVER`, …).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvDefaults {
    pub acr_server: String,
    pub client_id: String,
    pub resource_id: String,
    /// `ARM_RESOURCE`: the IMDS resource for v1beta1 tokens.
    pub arm_resource: Option<String>,
}

/// Operator settings the decisions depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub allowed_suffixes: AllowedSuffixes,
    /// Accept `host:port` servers (tests against a local registry).
    pub allow_ports: bool,
    /// `--ttl-rotation-fraction` for v1beta2.
    pub ttl_rotation_fraction: f64,
    /// First backoff after a failure (Azure or API); doubles per consecutive failure.
    pub backoff_base: std::time::Duration,
    /// Largest backoff between failed attempts.
    pub backoff_cap: std::time::Duration,
    /// A retry is always scheduled at least this long before a valid token expires.
    pub expiry_margin: std::time::Duration,
    /// Re-check interval for bindings waiting on something outside their spec
    /// (a missing ServiceAccount appears through the watch; this is the safety net).
    pub recheck_interval: std::time::Duration,
    /// After a write, come back at the latest after this (the watch usually triggers sooner).
    pub after_write: std::time::Duration,
    /// No requeue is ever scheduled sooner than this.
    pub min_requeue: std::time::Duration,
    pub env: EnvDefaults,
    /// `--allowed-scope-actions`: the scope actions any binding may ask for (every mode).
    pub allowed_actions: AllowedActions,
    /// `--allowed-entra-authority-hosts` and `--allowed-resource-manager-audiences`.
    pub allowed_clouds: AllowedClouds,
    /// `--tenancy-mode`: whether `AcrPullPolicy` objects are evaluated, and with what effect.
    pub tenancy_mode: TenancyMode,
}

impl Policy {
    /// The per-binding retry schedule.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.backoff_base,
            cap: self.backoff_cap,
            expiry_margin: self.expiry_margin,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed_suffixes: AllowedSuffixes::defaults(),
            allow_ports: false,
            ttl_rotation_fraction: 0.5,
            backoff_base: std::time::Duration::from_secs(1),
            backoff_cap: std::time::Duration::from_secs(300),
            expiry_margin: std::time::Duration::from_secs(120),
            recheck_interval: std::time::Duration::from_secs(600),
            after_write: std::time::Duration::from_secs(5),
            min_requeue: super::refresh::MIN_REQUEUE,
            env: EnvDefaults::default(),
            allowed_actions: AllowedActions::default(),
            allowed_clouds: AllowedClouds::default(),
            tenancy_mode: TenancyMode::Off,
        }
    }
}

/// The Azure cloud a token is requested in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CloudSpec {
    Public,
    USGovernment,
    China,
    Airgapped {
        entra_authority_host: String,
        resource_manager_audience: String,
    },
}

/// The identity to request an Azure token for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentitySpec {
    ManagedClientId(String),
    ManagedResourceId(String),
    Workload {
        tenant_id: String,
        client_id: String,
        service_account: String,
    },
}

/// What identity tokens are requested for, when a binding chooses (the annotation
/// [`IDENTITY_AUDIENCE_ANNOTATION`](super::names::IDENTITY_AUDIENCE_ANNOTATION)); otherwise
/// `--identity-audience` decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenAudience {
    /// The cloud's Resource Manager (registries with authentication-as-ARM enabled).
    ResourceManager,
    /// The ACR audience (registries with authentication-as-ARM disabled).
    ContainerRegistry,
}

impl TokenAudience {
    /// The annotation's values (the same as `--identity-audience`'s).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAudience::ResourceManager => "resource-manager",
            TokenAudience::ContainerRegistry => "container-registry",
        }
    }

    /// The annotation's value; surrounding white space is ignored, nothing else.
    pub fn parse(value: &str) -> Result<TokenAudience, Invalid> {
        match value.trim() {
            "resource-manager" => Ok(TokenAudience::ResourceManager),
            "container-registry" => Ok(TokenAudience::ContainerRegistry),
            other => Err(Invalid::spec(format!(
                "annotation {}: {other:?} is not resource-manager or container-registry",
                super::names::IDENTITY_AUDIENCE_ANNOTATION
            ))),
        }
    }
}

/// What the ServiceAccounts a binding names look like (only what decisions need).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceAccountView {
    pub name: String,
    pub pull_secrets: Vec<String>,
    pub client_id_annotation: Option<String>,
    pub tenant_id_annotation: Option<String>,
}

/// A binding that passed validation: everything needed to mint, name and attach its secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub registry: RegistryHost,
    /// Canonical scope, or `None` for an unscoped (refresh) token (v1beta1 only).
    pub scope: Option<String>,
    pub identity: IdentitySpec,
    pub cloud: CloudSpec,
    pub arm_resource_override: Option<String>,
    /// The binding's own choice of token audience (None: the controller's default).
    pub audience: Option<TokenAudience>,
    /// Every input ([`inputs`] full hash): `acr.microsoft.com/token.inputs-all`.
    pub inputs_hash: String,
    /// The old controller's hash: `acr.microsoft.com/token.inputs`.
    pub legacy_inputs_hash: String,
    /// Whether a Secret of the old controller (no `token.inputs-all`) with the legacy hash
    /// counts as current: true unless the binding sets an input the old controller could not
    /// have served (the identity-audience annotation, an air-gapped cloud config).
    pub accepts_legacy_inputs: bool,
    pub secret_name: String,
    pub target_service_account: String,
    pub refresh_rule: RefreshRule,
}

impl Resolved {
    /// Whether a Secret's recorded inputs (`token.inputs`, `token.inputs-all`) are this
    /// binding's. A Secret acrpull wrote carries both and both must match (a hand edit of
    /// either re-mints). A Secret without `token.inputs-all` was written by the old controller
    /// (or an acrpull before that annotation): its `token.inputs` is current when it is the
    /// full hash, or the legacy hash when [`Resolved::accepts_legacy_inputs`] — the old
    /// controller never hashed workload-identity client and tenant ids, so its Secret for such
    /// a binding cannot say which ids it was minted for; it is taken as minted for the current
    /// ones (the old controller did the same) and replaced at its next refresh.
    pub fn inputs_match(&self, inputs: Option<&str>, inputs_all: Option<&str>) -> bool {
        match inputs_all {
            Some(all) => {
                all == self.inputs_hash && inputs == Some(self.legacy_inputs_hash.as_str())
            }
            None => inputs.is_some_and(|i| {
                i == self.inputs_hash
                    || (self.accepts_legacy_inputs && i == self.legacy_inputs_hash)
            }),
        }
    }
}

/// Why a binding cannot be served; `reason` is a static condition/event reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
}

impl Invalid {
    /// Whether this refusal is a definite operator decision that also takes away the
    /// credential the binding already has (not only stops new ones): a scope action, an
    /// air-gapped authority or a tenancy policy the operator did not allow.
    pub fn revokes(&self) -> bool {
        matches!(
            self.reason,
            Reason::ActionNotAllowed | Reason::AuthorityNotAllowed | Reason::NotPermitted
        )
    }

    fn spec(message: impl Into<String>) -> Self {
        Self {
            reason: Reason::InvalidSpec,
            message: message.into(),
        }
    }
}

/// Static checks of the spec (SPEC §4 rule 4): no ServiceAccount needed.
pub fn validate(name: &str, spec: &Spec, policy: &Policy) -> Result<Static, Invalid> {
    match spec {
        Spec::V1beta1(s) => validate_v1beta1(name, s, policy),
        Spec::V1beta2(s) => validate_v1beta2(name, s, policy),
    }
}

/// The result of static validation; workload identity still needs the ServiceAccount's
/// annotations (see [`Static::resolve`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Static {
    pub registry: RegistryHost,
    pub scope: Option<String>,
    pub auth: StaticAuth,
    pub cloud: CloudSpec,
    pub arm_resource_override: Option<String>,
    pub audience: Option<TokenAudience>,
    pub inputs_hash: String,
    pub legacy_inputs_hash: String,
    pub accepts_legacy_inputs: bool,
    pub secret_name: String,
    pub target_service_account: String,
    pub refresh_rule: RefreshRule,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StaticAuth {
    Managed(IdentitySpec),
    Workload {
        service_account: String,
        ids: Option<(String, String)>, // (client, tenant) from the spec
    },
}

impl Static {
    /// The ServiceAccount whose annotations are needed, if any.
    pub fn workload_service_account(&self) -> Option<&str> {
        match &self.auth {
            StaticAuth::Workload {
                service_account,
                ids: None,
            } => Some(service_account),
            _ => None,
        }
    }

    /// Finish resolution with the workload-identity ServiceAccount (when one is needed).
    pub fn resolve(&self, workload_sa: Option<&ServiceAccountView>) -> Result<Resolved, Invalid> {
        let identity = match &self.auth {
            StaticAuth::Managed(identity) => identity.clone(),
            StaticAuth::Workload {
                service_account,
                ids: Some((client_id, tenant_id)),
            } => IdentitySpec::Workload {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                service_account: service_account.clone(),
            },
            StaticAuth::Workload {
                service_account,
                ids: None,
            } => {
                let sa = workload_sa.ok_or_else(|| Invalid {
                    reason: Reason::ServiceAccountNotFound,
                    message: format!("service account {service_account:?} not found"),
                })?;
                let missing = |annotation: &str| {
                    Invalid {
                    reason: Reason::InvalidSpec,
                    message: format!(
                        "service account {service_account:?} is missing the {annotation} annotation; \
                         annotate it or set spec.auth.workloadIdentity.clientID and tenantID"
                    ),
                }
                };
                let client_id = non_empty(&sa.client_id_annotation)
                    .ok_or_else(|| missing(WI_CLIENT_ID_ANNOTATION))?;
                let tenant_id = non_empty(&sa.tenant_id_annotation)
                    .ok_or_else(|| missing(WI_TENANT_ID_ANNOTATION))?;
                check_guidish("client id", client_id, WI_CLIENT_ID_ANNOTATION)?;
                check_tenant(tenant_id, WI_TENANT_ID_ANNOTATION)?;
                IdentitySpec::Workload {
                    tenant_id: tenant_id.to_string(),
                    client_id: client_id.to_string(),
                    service_account: service_account.clone(),
                }
            }
        };
        Ok(Resolved {
            registry: self.registry.clone(),
            scope: self.scope.clone(),
            identity,
            cloud: self.cloud.clone(),
            arm_resource_override: self.arm_resource_override.clone(),
            audience: self.audience,
            inputs_hash: self.inputs_hash.clone(),
            legacy_inputs_hash: self.legacy_inputs_hash.clone(),
            accepts_legacy_inputs: self.accepts_legacy_inputs,
            secret_name: self.secret_name.clone(),
            target_service_account: self.target_service_account.clone(),
            refresh_rule: self.refresh_rule,
        })
    }
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn validate_v1beta1(name: &str, s: &V1beta1Spec, policy: &Policy) -> Result<Static, Invalid> {
    let env = &policy.env;
    let server = if s.acr_server.is_empty() {
        env.acr_server.as_str()
    } else {
        s.acr_server.as_str()
    };
    let client_id = if s.client_id.is_empty() {
        env.client_id.as_str()
    } else {
        s.client_id.as_str()
    };
    let cleaned = clean_path(&s.resource_id);
    let resource_id = if cleaned == "." {
        env.resource_id.clone()
    } else {
        cleaned
    };
    let registry =
        check_server(server, &policy.allowed_suffixes, policy.allow_ports).map_err(|e| {
            Invalid {
                reason: e.reason(),
                message: e.to_string(),
            }
        })?;
    let scope = if s.scope.trim().is_empty() {
        None
    } else {
        Some(scope_of(&s.scope, &policy.allowed_actions)?)
    };
    let identity = if !client_id.is_empty() {
        check_guidish(
            "managedIdentityClientID",
            client_id,
            "spec.managedIdentityClientID",
        )?;
        IdentitySpec::ManagedClientId(client_id.to_string())
    } else if !resource_id.is_empty() {
        check_resource_id(&resource_id)?;
        IdentitySpec::ManagedResourceId(resource_id.clone())
    } else {
        return Err(Invalid::spec(
            "no managed identity: set spec.managedIdentityClientID or spec.managedIdentityResourceID \
             (or MANAGED_IDENTITY_CLIENT_ID / MANAGED_IDENTITY_RESOURCE_ID on the controller)",
        ));
    };
    let secret_name = names::legacy_pull_secret_name(name);
    if secret_name.len() > 253 {
        return Err(Invalid::spec(format!(
            "the binding name is {} characters long, so its pull secret name \"<name>-msi-acrpull-secret\" would exceed the 253 characters Kubernetes allows; use a name of at most 234 characters (or the v1beta2 API, which shortens long names)",
            name.len()
        )));
    }
    let target = if s.service_account_name.is_empty() {
        names::DEFAULT_SERVICE_ACCOUNT.to_string()
    } else {
        s.service_account_name.clone()
    };
    check_object_name("spec.serviceAccountName", &target)?;
    let audience = s
        .identity_audience
        .as_deref()
        .map(TokenAudience::parse)
        .transpose()?;
    let annotation = audience.map(TokenAudience::as_str);
    Ok(Static {
        inputs_hash: inputs::v1beta1_all(client_id, &resource_id, server, &s.scope, annotation),
        legacy_inputs_hash: inputs::v1beta1(client_id, &resource_id, server, &s.scope),
        accepts_legacy_inputs: audience.is_none(),
        audience,
        registry,
        scope,
        auth: StaticAuth::Managed(identity),
        cloud: CloudSpec::Public,
        arm_resource_override: Some(
            env.arm_resource
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "https://management.azure.com/".to_string()),
        ),
        secret_name,
        target_service_account: target,
        refresh_rule: RefreshRule::V1beta1,
    })
}

fn validate_v1beta2(name: &str, s: &V1beta2Spec, policy: &Policy) -> Result<Static, Invalid> {
    let registry =
        check_server(&s.server, &policy.allowed_suffixes, policy.allow_ports).map_err(|e| {
            Invalid {
                reason: e.reason(),
                message: e.to_string(),
            }
        })?;
    let scope = scope_of(&s.scope, &policy.allowed_actions)?;
    let cloud = match (s.environment.as_str(), &s.cloud_config) {
        ("PublicCloud" | "", None) => CloudSpec::Public,
        ("USGovernmentCloud", None) => CloudSpec::USGovernment,
        ("ChinaCloud", None) => CloudSpec::China,
        ("AirgappedCloud", Some((authority, audience))) => {
            let authority = authority.trim();
            let audience = audience.trim();
            if authority.is_empty() || audience.is_empty() {
                return Err(Invalid::spec(
                    "spec.acr.cloudConfig needs both entraAuthorityHost and resourceManagerAudience",
                ));
            }
            if !authority.starts_with("https://") {
                return Err(Invalid::spec(format!(
                    "spec.acr.cloudConfig.entraAuthorityHost {:?} must be an https:// URL",
                    truncate(authority)
                )));
            }
            check_cloud(authority, audience, &policy.allowed_clouds)?;
            CloudSpec::Airgapped {
                entra_authority_host: authority.to_string(),
                resource_manager_audience: audience.to_string(),
            }
        }
        ("AirgappedCloud", None) => {
            return Err(Invalid::spec(
                "environment AirgappedCloud needs spec.acr.cloudConfig with entraAuthorityHost and resourceManagerAudience",
            ))
        }
        ("PublicCloud" | "" | "USGovernmentCloud" | "ChinaCloud", Some(_)) => {
            return Err(Invalid::spec(
                "spec.acr.cloudConfig is only allowed with environment AirgappedCloud",
            ))
        }
        (other, _) => {
            return Err(Invalid::spec(format!(
                "unknown environment {:?}; use PublicCloud, USGovernmentCloud, ChinaCloud or AirgappedCloud",
                truncate(other)
            )))
        }
    };
    let auth = match (&s.managed, &s.workload) {
        (Some(_), Some(_)) => return Err(Invalid::spec(
            "set exactly one of spec.auth.managedIdentity and spec.auth.workloadIdentity, not both",
        )),
        (None, None) => {
            return Err(Invalid::spec(
                "set one of spec.auth.managedIdentity or spec.auth.workloadIdentity",
            ))
        }
        (Some((client, resource)), None) => match (client.is_empty(), resource.is_empty()) {
            (false, true) => {
                check_guidish("clientID", client, "spec.auth.managedIdentity.clientID")?;
                StaticAuth::Managed(IdentitySpec::ManagedClientId(client.clone()))
            }
            (true, false) => {
                check_resource_id(resource)?;
                StaticAuth::Managed(IdentitySpec::ManagedResourceId(resource.clone()))
            }
            (false, false) => {
                return Err(Invalid::spec(
                    "spec.auth.managedIdentity: set clientID or resourceID, not both",
                ))
            }
            (true, true) => {
                return Err(Invalid::spec(
                    "spec.auth.managedIdentity: set clientID or resourceID",
                ))
            }
        },
        (None, Some(w)) => {
            if w.service_account_ref.is_empty() {
                return Err(Invalid::spec(
                    "spec.auth.workloadIdentity.serviceAccountRef is required",
                ));
            }
            check_object_name(
                "spec.auth.workloadIdentity.serviceAccountRef",
                &w.service_account_ref,
            )?;
            let ids = match (w.client_id.is_empty(), w.tenant_id.is_empty()) {
                (true, true) => None,
                (false, false) => {
                    check_guidish("clientID", &w.client_id, "spec.auth.workloadIdentity.clientID")?;
                    check_tenant(&w.tenant_id, "spec.auth.workloadIdentity.tenantID")?;
                    Some((w.client_id.clone(), w.tenant_id.clone()))
                }
                _ => {
                    return Err(Invalid::spec(
                        "spec.auth.workloadIdentity: clientID and tenantID must be set together, if at all",
                    ))
                }
            };
            StaticAuth::Workload {
                service_account: w.service_account_ref.clone(),
                ids,
            }
        }
    };
    if s.service_account_name.is_empty() {
        return Err(Invalid::spec("spec.serviceAccountName is required"));
    }
    check_object_name("spec.serviceAccountName", &s.service_account_name)?;
    let audience = s
        .identity_audience
        .as_deref()
        .map(TokenAudience::parse)
        .transpose()?;
    let hashed = inputs::V1beta2Inputs {
        service_account_name: &s.service_account_name,
        managed: s.managed.as_ref().map(|(c, r)| (c.as_str(), r.as_str())),
        workload_service_account: s.workload.as_ref().map(|w| w.service_account_ref.as_str()),
        workload_ids: s
            .workload
            .as_ref()
            .map(|w| (w.client_id.as_str(), w.tenant_id.as_str())),
        environment: &s.environment,
        server: &s.server,
        scope: &s.scope,
        cloud_config: s
            .cloud_config
            .as_ref()
            .map(|(a, b)| (a.as_str(), b.as_str())),
        identity_audience: audience.map(TokenAudience::as_str),
    };
    Ok(Static {
        registry,
        scope: Some(scope),
        auth,
        cloud,
        arm_resource_override: None,
        audience,
        inputs_hash: inputs::v1beta2(&hashed),
        legacy_inputs_hash: inputs::v1beta2_legacy(&hashed),
        // The old controller's CEL typo kept cloudConfig off every binding, and it never read
        // the annotation: a Secret of it cannot be current for either.
        accepts_legacy_inputs: audience.is_none() && s.cloud_config.is_none(),
        secret_name: names::pull_secret_name(name),
        target_service_account: s.service_account_name.clone(),
        refresh_rule: RefreshRule::V1beta2 {
            fraction: policy.ttl_rotation_fraction,
        },
    })
}

/// Parse and canonicalise a scope, refusing actions the operator did not allow (in every
/// tenancy mode: push, delete and `*` are not for pull secrets unless allowed).
fn scope_of(raw: &str, allowed: &AllowedActions) -> Result<String, Invalid> {
    let scopes = scope::parse(raw).map_err(|e| Invalid::spec(e.to_string()))?;
    if let Some((s, action)) = first_disallowed(&scopes, |a| allowed.allows(a)) {
        return Err(Invalid {
            reason: Reason::ActionNotAllowed,
            message: format!(
                "scope {:?} asks for action {action:?}, which this controller does not grant \
                 (allowed: {}); an operator can allow more actions with --allowed-scope-actions \
                 (Helm value scopeActions.allowed)",
                truncate(&s.to_string()),
                allowed.as_slice().join(", ")
            ),
        });
    }
    Ok(scope::canonical(&scopes))
}

/// An air-gapped binding's authority and audience are used only when the operator listed
/// them: otherwise a binding could send the controller's ServiceAccount token (a credential
/// for every identity federated with it) to any host it names.
fn check_cloud(authority: &str, audience: &str, allowed: &AllowedClouds) -> Result<(), Invalid> {
    let normalized = normalize_authority(authority).map_err(|why| {
        Invalid::spec(format!(
            "spec.acr.cloudConfig.entraAuthorityHost {:?} {why}",
            truncate(authority)
        ))
    })?;
    if !allowed.allows_authority(&normalized) {
        return Err(Invalid {
            reason: Reason::AuthorityNotAllowed,
            message: format!(
                "spec.acr.cloudConfig.entraAuthorityHost {normalized:?} is not an Entra authority \
                 this controller may send tokens to; an operator must list it in \
                 --allowed-entra-authority-hosts (Helm value airgapped.allowedEntraAuthorityHosts)",
            ),
        });
    }
    if !allowed.allows_audience(audience) {
        return Err(Invalid {
            reason: Reason::AuthorityNotAllowed,
            message: format!(
                "spec.acr.cloudConfig.resourceManagerAudience {:?} is not an audience this \
                 controller may request tokens for; an operator must list it in \
                 --allowed-resource-manager-audiences (Helm value \
                 airgapped.allowedResourceManagerAudiences)",
                truncate(audience)
            ),
        });
    }
    Ok(())
}

/// Client ids are GUIDs; reject anything else before it reaches a URL.
fn check_guidish(what: &str, value: &str, field: &str) -> Result<(), Invalid> {
    let ok = value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid::spec(format!(
            "{field}: {what} {:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
            truncate(value)
        )))
    }
}

/// Tenant ids are GUIDs or verified domain names (`^[0-9a-zA-Z-.]+$`, as azidentity checks).
fn check_tenant(value: &str, field: &str) -> Result<(), Invalid> {
    // The tenant id becomes a URL path segment at the authority: no empty labels, so no `.`
    // or `..` segment can move the request to another path.
    if !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && value.split('.').all(|label| !label.is_empty())
    {
        Ok(())
    } else {
        Err(Invalid::spec(format!(
            "{field}: tenant id {:?} must be a GUID or a domain name",
            truncate(value)
        )))
    }
}

/// `/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`.
fn check_resource_id(value: &str) -> Result<(), Invalid> {
    let lower = value.to_ascii_lowercase();
    let ok = lower.starts_with("/subscriptions/")
        && lower.contains("/providers/microsoft.managedidentity/userassignedidentities/")
        && value.len() <= 1024
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.()".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Invalid::spec(format!(
            "managed identity resource id {:?} must look like /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>",
            truncate(value)
        )))
    }
}

/// ServiceAccount names are RFC 1123 subdomains.
fn check_object_name(field: &str, value: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid::spec(format!(
            "{field} {:?} is not a valid ServiceAccount name",
            truncate(value)
        )))
    }
}

fn truncate(s: &str) -> String {
    super::text::truncate(s, 80)
}

/// Go's `path.Clean`: the old controller cleaned v1beta1 resource ids this way, and the
/// inputs hash depends on the result. `""` cleans to `"."`.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}
