//! The stand-in's configuration: tenants, identities, federated credentials, registries, role
//! assignments, token lifetimes, latencies and limits.
//!
//! Everything is serde so the binary can load it from a JSON file and the control API can
//! replace it at runtime. Lookups used by the handlers live here too, so the handlers never
//! walk the lists themselves.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::host_without_port;
use crate::log::Hop;

/// The public-cloud Entra authority hosts that are always served.
pub const DEFAULT_ENTRA_HOSTS: [&str; 3] = [
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
];

/// ARM audiences of the public, US Government and China clouds (ARM metadata
/// `authentication.audiences`), each accepted with and without a trailing slash.
pub const DEFAULT_ARM_AUDIENCES: [&str; 6] = [
    "https://management.core.windows.net/",
    "https://management.azure.com/",
    "https://management.core.usgovcloudapi.net",
    "https://management.usgovcloudapi.net",
    "https://management.core.chinacloudapi.cn",
    "https://management.chinacloudapi.cn",
];

/// The ACR audience; tokens for it are accepted even when authentication-as-ARM is disabled.
pub const ACR_AUDIENCE: &str = "https://containerregistry.azure.net";

/// Whole stand-in configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub tenants: Vec<Tenant>,
    pub identities: Vec<Identity>,
    pub federated_credentials: Vec<FederatedCredential>,
    pub registries: Vec<Registry>,
    pub role_assignments: Vec<RoleAssignment>,
    /// OIDC issuers whose JWKS is configured directly instead of being discovered.
    pub oidc_issuers: Vec<OidcIssuer>,
    /// Extra Entra authority hosts (air-gapped clouds), served next to the public ones.
    pub entra_hosts: Vec<String>,
    /// Extra ARM audiences (air-gapped clouds) the ACR exchange accepts.
    pub arm_audiences: Vec<String>,
    /// `iss` of every ACR-issued JWT; the registry's token auth `issuer` must match it.
    pub acr_issuer: String,
    /// Whether ACR tokens carry the signing certificate in `x5c` (the `kid` is always set).
    pub acr_token_x5c: bool,
    pub lifetimes: Lifetimes,
    /// Fixed latency (plus jitter) added to every request of a hop.
    pub latencies: BTreeMap<Hop, Latency>,
    pub imds_limits: ImdsLimits,
    pub sku_ops_per_minute: SkuLimits,
    /// How long a discovered JWKS is cached, in seconds.
    pub jwks_cache_secs: u64,
    /// Clock skew tolerated on client assertions, in seconds (Entra allows about 5 minutes).
    pub assertion_clock_skew_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tenants: Vec::new(),
            identities: Vec::new(),
            federated_credentials: Vec::new(),
            registries: Vec::new(),
            role_assignments: Vec::new(),
            oidc_issuers: Vec::new(),
            entra_hosts: Vec::new(),
            arm_audiences: Vec::new(),
            acr_issuer: "Azure Container Registry".to_owned(),
            acr_token_x5c: true,
            lifetimes: Lifetimes::default(),
            latencies: BTreeMap::new(),
            imds_limits: ImdsLimits::default(),
            sku_ops_per_minute: SkuLimits::default(),
            jwks_cache_secs: 300,
            assertion_clock_skew_secs: 300,
        }
    }
}

/// An Entra tenant, addressable by id or by any of its domains.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    #[serde(default)]
    pub domains: Vec<String>,
}

/// Whether an identity is a managed identity (reachable through IMDS) or an app registration.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    #[default]
    Managed,
    App,
}

/// A managed identity or an app registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Name used to refer to the identity in this configuration (role assignments, FICs, logs).
    pub name: String,
    pub client_id: String,
    /// Object (principal) id; appears as `oid` in issued tokens.
    pub object_id: String,
    /// ARM resource id of a managed identity (`msi_res_id`), appears as `xms_mirid`.
    #[serde(default)]
    pub resource_id: Option<String>,
    pub tenant: String,
    #[serde(default)]
    pub kind: IdentityKind,
    /// Whether IMDS answers for it (the identity is assigned to "this VM"). Managed only.
    #[serde(default = "yes")]
    pub assigned_to_vm: bool,
}

fn yes() -> bool {
    true
}

/// A federated identity credential on an identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredential {
    /// Name of the identity the credential belongs to.
    pub identity: String,
    pub issuer: String,
    /// `system:serviceaccount:<namespace>:<name>` for Kubernetes.
    pub subject: String,
    pub audiences: Vec<String>,
}

/// Registry service tier; decides the default operations-per-minute limit.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sku {
    Basic,
    #[default]
    Standard,
    Premium,
}

/// A container registry served under its login-server host name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Login server, e.g. `demo.azurecr.io`, or `host:port` (e.g. `localhost:8443`) for a
    /// registry addressed with an explicit port. A bare host matches requests on any port; a
    /// `host:port` one matches only that authority and is the `service` and token `aud`, as
    /// real clients send the login server verbatim.
    pub host: String,
    #[serde(default)]
    pub sku: Sku,
    /// When false only ACR-audience tokens are accepted at the exchange.
    #[serde(default = "yes")]
    pub authentication_as_arm: bool,
    /// Overrides the SKU's operations-per-minute limit.
    #[serde(default)]
    pub ops_per_minute: Option<u32>,
    /// When set, only tokens of this tenant are accepted.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Base URL of a real registry (`http://127.0.0.1:5000`) this host fronts: `/v2` requests
    /// are reverse-proxied to it while `/oauth2/*` stays served here, so pull clients see one
    /// login server as in ACR. Plain `http://` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// Grants an identity actions on repositories of a registry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignment {
    pub identity: String,
    pub registry: String,
    /// Repository name or `*` for every repository.
    pub repository: String,
    /// e.g. `["pull"]`, `["pull","push"]`, `["*"]`.
    pub actions: Vec<String>,
}

/// An OIDC issuer whose keys are configured instead of discovered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    pub issuer: String,
    /// A JWKS document: `{"keys":[{"kty":"EC","crv":"P-256","kid":..,"x":..,"y":..}]}`.
    pub jwks: serde_json::Value,
}

/// Token lifetimes in seconds (may be a few seconds so rotation can be tested quickly).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Lifetimes {
    pub imds_secs: u64,
    pub entra_secs: u64,
    pub acr_refresh_secs: u64,
    pub acr_access_secs: u64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            imds_secs: 86_399,
            entra_secs: 3_599,
            acr_refresh_secs: 3 * 3_600,
            acr_access_secs: 75 * 60,
        }
    }
}

/// Latency added to a hop: `fixed_ms` plus a uniform random `0..=jitter_ms`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Latency {
    pub fixed_ms: u64,
    pub jitter_ms: u64,
}

impl Latency {
    /// Draws one delay.
    pub fn sample(&self) -> Duration {
        let jitter = if self.jitter_ms == 0 {
            0
        } else {
            rand::random_range(0..=self.jitter_ms)
        };
        Duration::from_millis(self.fixed_ms.saturating_add(jitter))
    }
}

/// IMDS managed-identity limits (Azure: 20 requests per second and 5 concurrent per VM).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ImdsLimits {
    pub enabled: bool,
    pub requests_per_second: u32,
    pub max_concurrent: u32,
}

impl Default for ImdsLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            requests_per_second: 20,
            max_concurrent: 5,
        }
    }
}

/// Read-style operations per minute per registry, by SKU.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SkuLimits {
    pub basic: u32,
    pub standard: u32,
    pub premium: u32,
}

impl Default for SkuLimits {
    fn default() -> Self {
        Self {
            basic: 1_000,
            standard: 3_000,
            premium: 10_000,
        }
    }
}

impl Config {
    /// Parses a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Resolves a tenant by id or domain (case-insensitive).
    pub fn tenant(&self, key: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| {
            t.id.eq_ignore_ascii_case(key) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(key))
        })
    }

    pub fn identity_by_name(&self, name: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.name == name)
    }

    pub fn identity_by_client_id(&self, client_id: &str) -> Option<&Identity> {
        self.identities
            .iter()
            .find(|i| i.client_id.eq_ignore_ascii_case(client_id))
    }

    pub fn identity_by_object_id(&self, object_id: &str) -> Option<&Identity> {
        self.identities
            .iter()
            .find(|i| i.object_id.eq_ignore_ascii_case(object_id))
    }

    pub fn identity_by_resource_id(&self, resource_id: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| {
            i.resource_id
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case(resource_id))
        })
    }

    /// The registry configured under exactly this login server (`host` or `host:port`).
    pub fn registry(&self, host: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .find(|r| r.host.eq_ignore_ascii_case(host))
    }

    /// The registry a request's authority (`Host` header, maybe with a port) addresses: a
    /// `host:port` registry of exactly that authority first, else a bare-host registry.
    pub fn registry_for(&self, authority: &str) -> Option<&Registry> {
        let host = host_without_port(authority);
        self.registries
            .iter()
            .find(|r| r.host.contains(':') && r.host.eq_ignore_ascii_case(authority))
            .or_else(|| {
                self.registries
                    .iter()
                    .find(|r| !r.host.contains(':') && r.host.eq_ignore_ascii_case(&host))
            })
    }

    /// Whether `host` is one of the Entra authority hosts served.
    pub fn is_entra_host(&self, host: &str) -> bool {
        DEFAULT_ENTRA_HOSTS
            .iter()
            .copied()
            .chain(self.entra_hosts.iter().map(String::as_str))
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Every host name the HTTPS certificate must cover.
    pub fn tls_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = DEFAULT_ENTRA_HOSTS.iter().map(|h| h.to_string()).collect();
        hosts.extend(self.entra_hosts.iter().cloned());
        hosts.extend(self.registries.iter().map(|r| host_without_port(&r.host)));
        hosts.push("localhost".to_owned());
        hosts.push("127.0.0.1".to_owned());
        let mut seen = std::collections::BTreeSet::new();
        hosts.retain(|h| seen.insert(h.to_ascii_lowercase()));
        hosts
    }

    /// Whether `aud` is an accepted ARM audience (default clouds plus configured ones).
    pub fn is_arm_audience(&self, aud: &str) -> bool {
        let trimmed = aud.trim_end_matches('/');
        DEFAULT_ARM_AUDIENCES
            .iter()
            .copied()
            .chain(self.arm_audiences.iter().map(String::as_str))
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(trimmed))
    }

    /// Operations per minute allowed on a registry.
    pub fn ops_per_minute(&self, registry: &Registry) -> u32 {
        registry.ops_per_minute.unwrap_or(match registry.sku {
            Sku::Basic => self.sku_ops_per_minute.basic,
            Sku::Standard => self.sku_ops_per_minute.standard,
            Sku::Premium => self.sku_ops_per_minute.premium,
        })
    }

    /// The role assignments of an identity on a registry.
    pub fn grants<'a>(
        &'a self,
        identity: &'a str,
        registry: &'a str,
    ) -> impl Iterator<Item = &'a RoleAssignment> + 'a {
        self.role_assignments
            .iter()
            .filter(move |r| r.identity == identity && r.registry.eq_ignore_ascii_case(registry))
    }

    /// Checks references between the lists, so a bad file fails at load, not at request time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for identity in &self.identities {
            if self.tenant(&identity.tenant).is_none() {
                return Err(ConfigError::UnknownTenant {
                    what: format!("identity {}", identity.name),
                    tenant: identity.tenant.clone(),
                });
            }
        }
        for fic in &self.federated_credentials {
            if self.identity_by_name(&fic.identity).is_none() {
                return Err(ConfigError::UnknownIdentity {
                    what: "federated credential".to_owned(),
                    identity: fic.identity.clone(),
                });
            }
        }
        for ra in &self.role_assignments {
            if self.identity_by_name(&ra.identity).is_none() {
                return Err(ConfigError::UnknownIdentity {
                    what: "role assignment".to_owned(),
                    identity: ra.identity.clone(),
                });
            }
            if self.registry(&ra.registry).is_none() {
                return Err(ConfigError::UnknownRegistry(ra.registry.clone()));
            }
        }
        for registry in &self.registries {
            let (name, port) = match registry.host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (registry.host.as_str(), None),
            };
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
            if name.is_empty() || name.contains([':', '/', '[']) || !port_ok {
                return Err(ConfigError::BadHost(registry.host.clone()));
            }
            if let Some(upstream) = &registry.upstream {
                let rest = upstream.strip_prefix("http://").unwrap_or_default();
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    return Err(ConfigError::BadUpstream(upstream.clone()));
                }
            }
        }
        Ok(())
    }
}

/// A configuration that refers to something it does not define.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{what} refers to unknown tenant {tenant}")]
    UnknownTenant { what: String, tenant: String },
    #[error("{what} refers to unknown identity {identity}")]
    UnknownIdentity { what: String, identity: String },
    #[error("role assignment refers to unknown registry {0}")]
    UnknownRegistry(String),
    #[error("registry host {0:?} must be a host name, optionally with :port")]
    BadHost(String),
    #[error("registry upstream {0:?} must be http://host:port")]
    BadUpstream(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_minimal_file() {
        let cfg = Config::from_json(
            r#"{"tenants":[{"id":"t1"}],
                "identities":[{"name":"mi","client_id":"c","object_id":"o","tenant":"t1"}],
                "registries":[{"host":"demo.azurecr.io","sku":"basic"}],
                "role_assignments":[{"identity":"mi","registry":"demo.azurecr.io","repository":"*","actions":["pull"]}]}"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.lifetimes.acr_access_secs, 4500);
        assert_eq!(cfg.ops_per_minute(&cfg.registries[0]), 1000);
        assert!(cfg.registries[0].authentication_as_arm);
        assert!(cfg.identities[0].assigned_to_vm);
        assert_eq!(cfg.identities[0].kind, IdentityKind::Managed);
    }

    #[test]
    fn dangling_references_are_rejected() {
        let cfg = Config {
            role_assignments: vec![RoleAssignment {
                identity: "nobody".into(),
                registry: "r".into(),
                repository: "*".into(),
                actions: vec![],
            }],
            ..Config::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::UnknownIdentity { .. })
        ));
    }

    fn registry(host: &str) -> Registry {
        Registry {
            host: host.into(),
            sku: Sku::Standard,
            authentication_as_arm: true,
            ops_per_minute: None,
            tenant: None,
            upstream: None,
        }
    }

    #[test]
    fn registry_hosts_may_carry_a_port() {
        let cfg = Config {
            registries: vec![registry("localhost:8443"), registry("demo.azurecr.io")],
            ..Config::default()
        };
        cfg.validate().unwrap();
        assert_eq!(
            cfg.registry_for("LOCALHOST:8443").unwrap().host,
            "localhost:8443"
        );
        // Another port of the same host is another login server.
        assert!(cfg.registry_for("localhost:9443").is_none());
        assert!(cfg.registry_for("localhost").is_none());
        // A bare host matches with or without a port.
        assert_eq!(
            cfg.registry_for("demo.azurecr.io:443").unwrap().host,
            "demo.azurecr.io"
        );
        assert_eq!(
            cfg.registry_for("demo.azurecr.io").unwrap().host,
            "demo.azurecr.io"
        );
        // The certificate names the host only.
        assert!(cfg.tls_hosts().contains(&"localhost".to_owned()));
        assert!(!cfg.tls_hosts().iter().any(|h| h.contains(':')));
        for bad in [
            "localhost:",
            "localhost:0",
            "localhost:x",
            ":443",
            "a/b",
            "a:1:2",
        ] {
            let cfg = Config {
                registries: vec![registry(bad)],
                ..Config::default()
            };
            assert_eq!(
                cfg.validate(),
                Err(ConfigError::BadHost(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn upstreams_must_be_plain_http_authorities() {
        for (upstream, ok) in [
            ("http://127.0.0.1:5000", true),
            ("http://127.0.0.1:5000/", true),
            ("https://127.0.0.1:5000", false),
            ("http://127.0.0.1:5000/v2", false),
            ("http://", false),
        ] {
            let mut r = registry("localhost:8443");
            r.upstream = Some(upstream.into());
            let cfg = Config {
                registries: vec![r],
                ..Config::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "{upstream}");
        }
    }

    #[test]
    fn arm_audiences_ignore_trailing_slash() {
        let cfg = Config {
            arm_audiences: vec!["https://management.airgap.example".into()],
            ..Config::default()
        };
        assert!(cfg.is_arm_audience("https://management.core.windows.net"));
        assert!(cfg.is_arm_audience("https://management.azure.com/"));
        assert!(cfg.is_arm_audience("https://management.airgap.example/"));
        assert!(!cfg.is_arm_audience(ACR_AUDIENCE));
    }
}
