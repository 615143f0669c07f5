//! What the sandbox sets up: `deploy/`'s CRDs, RBAC and admission policies (so acrpull runs as
//! in a cluster: as its own ServiceAccount, confined by both), namespace `demo` with its
//! ServiceAccounts, the Azure side (tenant, identities, federated credential, registries, role
//! assignments) and the example bindings from `examples/`.
//!
//! The identities use fixed, obviously fake GUIDs because the example YAML files name them:
//! a binding in `examples/` must find its identity in the stand-in.

use azure_standin::{
    Config, FederatedCredential, Identity, IdentityKind, Lifetimes, OidcIssuer, Registry,
    RoleAssignment, Tenant,
};
use serde_json::{json, Value};

pub const TENANT: &str = "33333333-3333-4333-8333-333333333333";
pub const MI_NAME: &str = "mi-demo";
pub const MI_CLIENT: &str = "11111111-1111-4111-8111-111111111111";
pub const MI_OBJECT: &str = "11111111-1111-4111-8111-aaaaaaaaaaaa";
pub const MI_RESOURCE: &str = "/subscriptions/44444444-4444-4444-8444-444444444444/resourceGroups/sandbox-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-demo";
pub const WI_NAME: &str = "app-wi";
pub const WI_CLIENT: &str = "22222222-2222-4222-8222-222222222222";
pub const WI_OBJECT: &str = "22222222-2222-4222-8222-bbbbbbbbbbbb";
pub const NAMESPACE: &str = "demo";
pub const TARGET_SA: &str = "puller";
pub const WI_SA: &str = "wi-puller";
pub const DEMO_REGISTRY: &str = "demo.azurecr.io";
pub const SECOND_REGISTRY: &str = "second.azurecr.io";
/// The audience acrpull requests for workload-identity ServiceAccount tokens.
pub const SA_AUDIENCE: &str = "api://AzureCRTokenExchange";
pub const ENTRA_HOST: &str = "login.microsoftonline.com";

pub const V1: &str = "msi-acrpull.microsoft.com/v1beta1";
pub const V2: &str = "acrpull.microsoft.com/v1beta2";

/// The CRDs the controller serves, as committed under `deploy/crds/`.
pub const CRDS: [&str; 2] = [
    include_str!("../../../deploy/crds/acrpullbindings.acrpull.microsoft.com.yaml"),
    include_str!("../../../deploy/crds/acrpullbindings.msi-acrpull.microsoft.com.yaml"),
];
/// The controller's ServiceAccount and RBAC, and its admission policies (fail-closed), as
/// `kubectl apply -k deploy/` installs them.
pub const RBAC: &str = include_str!("../../../deploy/rbac.yaml");
pub const ADMISSION: &str = include_str!("../../../deploy/admission.yaml");
/// Where `deploy/` puts the controller, and the user it runs as.
pub const CONTROLLER_NAMESPACE: &str = "acrpull-system";
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "acrpull";
pub const CONTROLLER_USER: &str = "system:serviceaccount:acrpull-system:acrpull";

/// The controller's requests (by its user agent, `acrpull/...`) that the API server refused:
/// 401, 403 (RBAC or an admission policy) or any admission denial. In a sandbox that works
/// there are none; one means `deploy/` and the controller disagree.
pub fn controller_refusals(requests: &[kube_standin::RequestRecord]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.user_agent.starts_with("acrpull/") && r.refused())
        .map(|r| {
            let by = if r.denied_by_policy.is_empty() {
                String::new()
            } else {
                format!(" (ValidatingAdmissionPolicy {})", r.denied_by_policy)
            };
            format!("{} {} {} as {:?}{by}", r.status, r.verb, r.path, r.user)
        })
        .collect()
}

/// The state an example binding must reach for `--exit-when-ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Condition Ready=True (phase Ready, or Refreshing while a fresh token is fetched).
    Ready,
    /// Phase Failed.
    Failed,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Ready => "Ready",
            Expect::Failed => "Failed",
        }
    }
}

/// One file of `examples/`, embedded so the binary runs from any directory.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub file: &'static str,
    pub text: &'static str,
    pub api_version: &'static str,
    pub name: &'static str,
    pub expect: Expect,
}

pub const EXAMPLES: [Example; 4] = [
    Example {
        file: "examples/10-managed-identity.yaml",
        text: include_str!("../../../examples/10-managed-identity.yaml"),
        api_version: V2,
        name: "app-mi",
        expect: Expect::Ready,
    },
    Example {
        file: "examples/20-workload-identity.yaml",
        text: include_str!("../../../examples/20-workload-identity.yaml"),
        api_version: V2,
        name: "app-wi",
        expect: Expect::Ready,
    },
    Example {
        file: "examples/30-v1beta1-resource-id.yaml",
        text: include_str!("../../../examples/30-v1beta1-resource-id.yaml"),
        api_version: V1,
        name: "second-legacy",
        expect: Expect::Ready,
    },
    Example {
        file: "examples/90-invalid-registry.yaml",
        text: include_str!("../../../examples/90-invalid-registry.yaml"),
        api_version: V2,
        name: "lookalike",
        expect: Expect::Failed,
    },
];

fn identity(name: &str, client: &str, object: &str, kind: IdentityKind) -> Identity {
    Identity {
        name: name.into(),
        client_id: client.into(),
        object_id: object.into(),
        resource_id: None,
        tenant: TENANT.into(),
        kind,
        assigned_to_vm: kind == IdentityKind::Managed,
    }
}

/// Built through serde so optional fields the stand-in adds later keep their defaults.
fn registry(host: &str) -> Result<Registry, serde_json::Error> {
    serde_json::from_value(json!({"host": host, "sku": "premium"}))
}

fn role(identity: &str, registry: &str, repository: &str, actions: &[&str]) -> RoleAssignment {
    RoleAssignment {
        identity: identity.into(),
        registry: registry.into(),
        repository: repository.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

/// The Azure side. `issuer`/`jwks` are the kube stand-in's, so Entra accepts its
/// ServiceAccount tokens for the federated credential without OIDC discovery.
/// `token_lifetime_secs` applies to ACR access and refresh tokens.
pub fn azure_config(
    issuer: &str,
    jwks: Value,
    token_lifetime_secs: u64,
) -> Result<Config, serde_json::Error> {
    let mut mi = identity(MI_NAME, MI_CLIENT, MI_OBJECT, IdentityKind::Managed);
    mi.resource_id = Some(MI_RESOURCE.into());
    Ok(Config {
        tenants: vec![Tenant {
            id: TENANT.into(),
            domains: vec![],
        }],
        identities: vec![
            mi,
            identity(WI_NAME, WI_CLIENT, WI_OBJECT, IdentityKind::App),
        ],
        federated_credentials: vec![FederatedCredential {
            identity: WI_NAME.into(),
            issuer: issuer.into(),
            subject: format!("system:serviceaccount:{NAMESPACE}:{WI_SA}"),
            audiences: vec![SA_AUDIENCE.into()],
        }],
        registries: vec![registry(DEMO_REGISTRY)?, registry(SECOND_REGISTRY)?],
        role_assignments: vec![
            role(MI_NAME, DEMO_REGISTRY, "app", &["pull"]),
            role(MI_NAME, DEMO_REGISTRY, "base", &["pull"]),
            role(MI_NAME, SECOND_REGISTRY, "app", &["pull"]),
            role(WI_NAME, DEMO_REGISTRY, "app", &["pull"]),
        ],
        oidc_issuers: vec![OidcIssuer {
            issuer: issuer.into(),
            jwks,
        }],
        lifetimes: Lifetimes {
            acr_access_secs: token_lifetime_secs,
            acr_refresh_secs: token_lifetime_secs,
            ..Lifetimes::default()
        },
        ..Config::default()
    })
}

/// Namespace `demo`, the target ServiceAccount and the federated one.
pub fn kube_objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": TARGET_SA, "namespace": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": WI_SA, "namespace": NAMESPACE,
                            "annotations": {
                                "azure.workload.identity/client-id": WI_CLIENT,
                                "azure.workload.identity/tenant-id": TENANT}}}),
    ]
}

/// The `setup` part of the state file: what exists, who may pull what, and which examples were
/// applied with the state each is expected to reach.
pub fn describe(config: &Config, examples_applied: bool) -> Value {
    let objects = kube_objects();
    let namespaces: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .map(|o| &o["metadata"]["name"])
        .collect();
    let service_accounts: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ServiceAccount")
        .map(|o| {
            json!({"namespace": o["metadata"]["namespace"], "name": o["metadata"]["name"],
                   "annotations": o["metadata"].get("annotations").cloned().unwrap_or(json!({}))})
        })
        .collect();
    let identities: Vec<Value> = config
        .identities
        .iter()
        .map(|i| {
            let grants: Vec<Value> = config
                .role_assignments
                .iter()
                .filter(|r| r.identity == i.name)
                .map(|r| json!({"registry": r.registry, "repository": r.repository, "actions": r.actions}))
                .collect();
            let federated: Vec<Value> = config
                .federated_credentials
                .iter()
                .filter(|f| f.identity == i.name)
                .map(|f| json!({"issuer": f.issuer, "subject": f.subject, "audiences": f.audiences}))
                .collect();
            json!({
                "name": i.name,
                "kind": match i.kind { IdentityKind::Managed => "managed", IdentityKind::App => "app" },
                "client_id": i.client_id,
                "object_id": i.object_id,
                "resource_id": i.resource_id,
                "tenant": i.tenant,
                "grants": grants,
                "federated_credentials": federated,
            })
        })
        .collect();
    let examples: Vec<Value> = if examples_applied {
        EXAMPLES
            .iter()
            .map(|e| {
                json!({"file": e.file, "apiVersion": e.api_version, "namespace": NAMESPACE,
                       "name": e.name, "expect": e.expect.as_str()})
            })
            .collect()
    } else {
        vec![]
    };
    json!({
        "namespaces": namespaces,
        "service_accounts": service_accounts,
        "tenants": config.tenants.iter().map(|t| &t.id).collect::<Vec<_>>(),
        "identities": identities,
        "registries": config.registries.iter().map(|r| &r.host).collect::<Vec<_>>(),
        "token_lifetime_secs": config.lifetimes.acr_refresh_secs,
        "examples": examples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example files must name the identities, registries and ServiceAccounts configured
    /// here, and the names in [`EXAMPLES`] must be the ones in the files.
    #[test]
    fn examples_match_the_configured_world() {
        let config = azure_config("https://issuer.example", json!({"keys": []}), 120).unwrap();
        config.validate().unwrap();
        for e in EXAMPLES {
            let docs = kube_standin::handle::parse_documents(e.text).unwrap();
            assert_eq!(docs.len(), 1, "{}", e.file);
            let b = &docs[0];
            assert_eq!(b["apiVersion"], e.api_version, "{}", e.file);
            assert_eq!(b["metadata"]["name"], e.name, "{}", e.file);
            assert_eq!(b["metadata"]["namespace"], NAMESPACE, "{}", e.file);
            assert_eq!(b["spec"]["serviceAccountName"], TARGET_SA, "{}", e.file);
            assert!(e.text.starts_with("# "), "{} explains itself", e.file);
            let server = b["spec"]["acr"]["server"]
                .as_str()
                .or(b["spec"]["acrServer"].as_str())
                .unwrap();
            let client = b["spec"]["auth"]["managedIdentity"]["clientID"].as_str();
            let resource = b["spec"]["managedIdentityResourceID"].as_str();
            let wi = b["spec"]["auth"]["workloadIdentity"]["serviceAccountRef"].as_str();
            match e.expect {
                Expect::Ready => {
                    assert!(config.registry(server).is_some(), "{}", e.file);
                    let identity = client
                        .and_then(|c| config.identity_by_client_id(c))
                        .or_else(|| resource.and_then(|r| config.identity_by_resource_id(r)))
                        .map(|i| i.name.as_str())
                        .or(wi.map(|_| WI_NAME))
                        .unwrap_or_else(|| panic!("{} names no configured identity", e.file));
                    assert!(
                        config
                            .grants(identity, server)
                            .any(|r| r.repository == "app"),
                        "{}: {identity} may not pull app from {server}",
                        e.file
                    );
                }
                Expect::Failed => {
                    assert!(config.registry(server).is_none(), "{}", e.file);
                    assert!(server.starts_with(DEMO_REGISTRY), "a look-alike host");
                }
            }
            if let Some(sa) = wi {
                assert_eq!(sa, WI_SA);
            }
        }
    }

    #[test]
    fn refusals_are_the_controllers_401s_403s_and_denials() {
        let rec = |ua: &str, status: u16, policy: &str| kube_standin::RequestRecord {
            user_agent: ua.into(),
            status,
            denied_by_policy: policy.into(),
            verb: "patch".into(),
            path: "/p".into(),
            ..Default::default()
        };
        let log = [
            rec("acrpull/0.1.0 (x)", 200, ""),
            rec("acrpull/0.1.0 (x)", 403, ""),
            rec("acrpull/0.1.0 (x)", 422, "acrpull-secret-writes"),
            rec("acrpull/0.1.0 (x)", 409, ""),
            rec("kubectl/v1.33", 403, "acrpull-secret-writes"),
        ];
        assert_eq!(controller_refusals(&log).len(), 2);
    }

    #[test]
    fn describe_lists_identities_and_grants() {
        let d = describe(
            &azure_config("https://i", json!({"keys": []}), 120).unwrap(),
            true,
        );
        assert_eq!(d["namespaces"], json!(["demo"]));
        let mi = &d["identities"][0];
        assert_eq!(mi["client_id"], MI_CLIENT);
        assert_eq!(mi["resource_id"], MI_RESOURCE);
        assert_eq!(mi["grants"].as_array().unwrap().len(), 3);
        assert_eq!(
            d["service_accounts"][1]["annotations"]["azure.workload.identity/client-id"],
            WI_CLIENT
        );
        assert_eq!(d["examples"].as_array().unwrap().len(), 4);
    }
}
