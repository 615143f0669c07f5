//! The synthetic fleet: namespaces, ServiceAccounts, v1beta2 bindings, the Azure identities,
//! registries and role assignments they need, and the minimum number of Azure calls per hop
//! any controller must make to serve them.
//!
//! Everything derives from a fixed seed, so two runs at the same N create the same objects and
//! the numbers are comparable across runs and machines.

use std::collections::BTreeSet;

use azure_standin::{
    Config, FederatedCredential, Identity, IdentityKind, Latency, OidcIssuer, Registry,
    RoleAssignment, Sku, Tenant,
};
use serde::Serialize;
use serde_json::{json, Value};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const V2: &str = "acrpull.microsoft.com/v1beta2";
pub const SA_AUDIENCE: &str = "api://AzureCRTokenExchange";
pub const NAMESPACES: usize = 100;
pub const MANAGED_IDENTITIES: usize = 10;
pub const REGISTRIES: usize = 5;
/// Bindings per ServiceAccount (on average): several bindings share one pull-secret target.
pub const BINDINGS_PER_SA: usize = 4;
/// The workload-identity ServiceAccount of each workload-identity namespace.
pub const WI_SA: &str = "wi-sa";
/// The app registration workload-identity bindings authenticate as.
pub const WI_CLIENT: &str = "cccccccc-0000-4000-8000-000000000001";
/// Repositories scopes are drawn from.
const REPOS: [&str; 4] = ["app", "base", "tools", "web"];

/// Hop latencies of the stand-in Azure (fixed + jitter, milliseconds).
pub const IMDS_MS: (u64, u64) = (20, 4);
pub const ENTRA_MS: (u64, u64) = (50, 10);
pub const EXCHANGE_MS: (u64, u64) = (80, 16);
pub const TOKEN_MS: (u64, u64) = (40, 8);
/// API server latency per call (fixed + jitter, milliseconds).
pub const API_MS: (u64, u64) = (1, 1);

pub fn managed_client(i: usize) -> String {
    format!("aaaaaaaa-0000-4000-8000-{:012}", i + 1)
}

pub fn registry_host(r: usize) -> String {
    format!("reg{r}.azurecr.io")
}

fn registry_sku(r: usize) -> Sku {
    match r {
        0 | 1 => Sku::Premium,
        2 | 3 => Sku::Standard,
        _ => Sku::Basic,
    }
}

pub fn namespace(i: usize) -> String {
    format!("bench-{i:03}")
}

/// Whether namespace `i` holds workload-identity bindings (one namespace in ten).
fn wi_namespace(i: usize) -> bool {
    i % 10 == 5
}

/// How the binding authenticates; the identity *key* the controller caches tokens under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Auth {
    Managed {
        client_id: String,
    },
    /// Workload identity is keyed by its asserting ServiceAccount (never shared across them).
    Workload {
        namespace: String,
    },
}

#[derive(Debug, Clone)]
pub struct BindingSpec {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub registry: String,
    /// Normalised: repositories sorted, `repository:<r>:pull` space-separated.
    pub scope: String,
    pub auth: Auth,
}

impl BindingSpec {
    pub fn to_object(&self) -> Value {
        let auth = match &self.auth {
            Auth::Managed { client_id } => json!({"managedIdentity": {"clientID": client_id}}),
            Auth::Workload { .. } => json!({"workloadIdentity": {"serviceAccountRef": WI_SA}}),
        };
        json!({"apiVersion": V2, "kind": "AcrPullBinding",
               "metadata": {"name": self.name, "namespace": self.namespace},
               "spec": {"acr": {"server": self.registry, "scope": self.scope,
                                "environment": "PublicCloud"},
                        "auth": auth,
                        "serviceAccountName": self.service_account}})
    }
}

/// The minimum Azure calls per hop for a fleet: one identity token per identity, one
/// exchange per identity × registry, one access token per identity × registry × scope.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Minimum {
    pub imds: u64,
    pub entra_token: u64,
    pub acr_exchange: u64,
    pub acr_token: u64,
    /// Exchanges + access tokens per registry: the calls its client-side limiter must pass.
    pub acr_per_registry: std::collections::BTreeMap<String, u64>,
}

impl Minimum {
    /// The Azure floor: the minimum rate-limited calls on the busiest client-side limiter
    /// divided by its rate (IMDS and Entra 20/s by default, ACR `acr_rps` per registry). No
    /// controller can converge faster at these limits.
    pub fn floor_seconds(&self, acr_rps: f64) -> f64 {
        let acr = self
            .acr_per_registry
            .values()
            .map(|c| *c as f64 / acr_rps)
            .fold(0.0, f64::max);
        acr.max(self.imds as f64 / 20.0)
            .max(self.entra_token as f64 / 20.0)
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub n: usize,
    pub bindings: Vec<BindingSpec>,
    /// (namespace, name) of every ServiceAccount to create.
    pub service_accounts: Vec<(String, String, bool)>,
    pub namespaces: Vec<String>,
}

/// splitmix64: a tiny deterministic generator (no dependency, same sequence everywhere).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl Workload {
    /// `n` bindings over 100 namespaces; each namespace has one identity (a team), each
    /// binding one of five registries and a 1–3 repository scope from a pool of four; one
    /// namespace in ten has half its bindings on workload identity.
    pub fn generate(n: usize) -> Workload {
        let mut rng = Rng(0xACE0_2025);
        let per_ns = n.div_ceil(NAMESPACES);
        let sas_per_ns = per_ns.div_ceil(BINDINGS_PER_SA).max(1);
        let mut bindings = Vec::with_capacity(n);
        for k in 0..n {
            let i = k % NAMESPACES;
            let j = k / NAMESPACES;
            let ns = namespace(i);
            let count = 1 + rng.below(3);
            let mut repos: BTreeSet<&str> = BTreeSet::new();
            while repos.len() < count {
                repos.insert(REPOS[rng.below(REPOS.len())]);
            }
            let scope = repos
                .iter()
                .map(|r| format!("repository:{r}:pull"))
                .collect::<Vec<_>>()
                .join(" ");
            let auth = if wi_namespace(i) && j.is_multiple_of(2) {
                Auth::Workload {
                    namespace: ns.clone(),
                }
            } else {
                Auth::Managed {
                    client_id: managed_client(i % MANAGED_IDENTITIES),
                }
            };
            bindings.push(BindingSpec {
                name: format!("pull-{j:04}"),
                service_account: format!("sa-{}", j % sas_per_ns),
                registry: registry_host((i / 10 + j) % REGISTRIES),
                scope,
                auth,
                namespace: ns,
            });
        }
        let namespaces: Vec<String> = (0..NAMESPACES).map(namespace).collect();
        let mut service_accounts = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            for s in 0..sas_per_ns {
                service_accounts.push((ns.clone(), format!("sa-{s}"), false));
            }
            if wi_namespace(i) {
                service_accounts.push((ns.clone(), WI_SA.to_string(), true));
            }
        }
        Workload {
            n,
            bindings,
            service_accounts,
            namespaces,
        }
    }

    pub fn minimum(&self) -> Minimum {
        let mut ids = BTreeSet::new();
        let mut wi = BTreeSet::new();
        let mut exchange = BTreeSet::new();
        let mut token = BTreeSet::new();
        for b in &self.bindings {
            match &b.auth {
                Auth::Managed { client_id } => ids.insert(client_id.clone()),
                Auth::Workload { namespace } => wi.insert(namespace.clone()),
            };
            exchange.insert((b.auth.clone(), b.registry.clone()));
            token.insert((b.auth.clone(), b.registry.clone(), b.scope.clone()));
        }
        let mut acr_per_registry = std::collections::BTreeMap::new();
        for (_, registry) in &exchange {
            *acr_per_registry.entry(registry.clone()).or_default() += 1;
        }
        for (_, registry, _) in &token {
            *acr_per_registry.entry(registry.clone()).or_default() += 1;
        }
        Minimum {
            imds: ids.len() as u64,
            entra_token: wi.len() as u64,
            acr_exchange: exchange.len() as u64,
            acr_token: token.len() as u64,
            acr_per_registry,
        }
    }

    pub fn workload_identity_bindings(&self) -> usize {
        self.bindings
            .iter()
            .filter(|b| matches!(b.auth, Auth::Workload { .. }))
            .count()
    }

    pub fn namespace_objects(&self) -> Vec<Value> {
        self.namespaces
            .iter()
            .map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .collect()
    }

    pub fn service_account_objects(&self) -> Vec<Value> {
        self.service_accounts
            .iter()
            .map(|(ns, name, wi)| {
                let annotations = if *wi {
                    json!({"azure.workload.identity/client-id": WI_CLIENT,
                           "azure.workload.identity/tenant-id": TENANT})
                } else {
                    json!({})
                };
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": name, "namespace": ns, "annotations": annotations}})
            })
            .collect()
    }
}

/// The stand-in Azure for the fleet: ten managed identities and one app registration with
/// pull on every repository of five registries (two Premium, two Standard, one Basic),
/// realistic hop latencies, IMDS and per-registry SKU limits left at Azure's values.
pub fn azure_config(
    issuer: &str,
    jwks: Value,
    workload: &Workload,
    acr_access_secs: Option<u64>,
) -> Config {
    let mut identities: Vec<Identity> = (0..MANAGED_IDENTITIES)
        .map(|i| Identity {
            name: format!("mi-{i}"),
            client_id: managed_client(i),
            object_id: format!("bbbbbbbb-0000-4000-8000-{:012}", i + 1),
            resource_id: None,
            tenant: TENANT.into(),
            kind: IdentityKind::Managed,
            assigned_to_vm: true,
        })
        .collect();
    identities.push(Identity {
        name: "app-wi".into(),
        client_id: WI_CLIENT.into(),
        object_id: "dddddddd-0000-4000-8000-000000000001".into(),
        resource_id: None,
        tenant: TENANT.into(),
        kind: IdentityKind::App,
        assigned_to_vm: false,
    });
    let registries: Vec<Registry> = (0..REGISTRIES)
        .map(|r| Registry {
            host: registry_host(r),
            sku: registry_sku(r),
            authentication_as_arm: true,
            ops_per_minute: None,
            tenant: None,
            upstream: None,
        })
        .collect();
    let mut role_assignments = Vec::new();
    for id in &identities {
        for r in &registries {
            role_assignments.push(RoleAssignment {
                identity: id.name.clone(),
                registry: r.host.clone(),
                repository: "*".into(),
                actions: vec!["pull".into()],
            });
        }
    }
    let federated_credentials = workload
        .service_accounts
        .iter()
        .filter(|(_, _, wi)| *wi)
        .map(|(ns, name, _)| FederatedCredential {
            identity: "app-wi".into(),
            issuer: issuer.into(),
            subject: format!("system:serviceaccount:{ns}:{name}"),
            audiences: vec![SA_AUDIENCE.into()],
        })
        .collect();
    let lat = |(fixed_ms, jitter_ms): (u64, u64)| Latency {
        fixed_ms,
        jitter_ms,
    };
    let mut config = Config {
        tenants: vec![Tenant {
            id: TENANT.into(),
            domains: vec![],
        }],
        identities,
        federated_credentials,
        registries,
        role_assignments,
        oidc_issuers: vec![OidcIssuer {
            issuer: issuer.into(),
            jwks,
        }],
        ..Config::default()
    };
    config
        .latencies
        .insert(azure_standin::Hop::Imds, lat(IMDS_MS));
    config
        .latencies
        .insert(azure_standin::Hop::EntraToken, lat(ENTRA_MS));
    config
        .latencies
        .insert(azure_standin::Hop::AcrExchange, lat(EXCHANGE_MS));
    config
        .latencies
        .insert(azure_standin::Hop::AcrToken, lat(TOKEN_MS));
    if let Some(secs) = acr_access_secs {
        config.lifetimes.acr_access_secs = secs;
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_shape_and_minimum() {
        let w = Workload::generate(1000);
        assert_eq!(w.bindings.len(), 1000);
        let names: BTreeSet<_> = w.bindings.iter().map(|b| (&b.namespace, &b.name)).collect();
        assert_eq!(names.len(), 1000, "binding names are unique");
        let m = w.minimum();
        assert_eq!(m.imds, 10);
        assert_eq!(m.entra_token, 10);
        assert!(m.acr_exchange <= 11 * 5 * 10);
        assert!(m.acr_token > m.acr_exchange && m.acr_token < 1000);
        assert!(w.workload_identity_bindings() > 0);
    }
}
