//! Two open asks of upstream msi-acrpull's users, through the real binary and the Azure
//! stand-in:
//!
//! - **Per-binding ACR audience** (upstream PR #109): a registry with authentication-as-ARM
//!   disabled refuses Resource Manager tokens; a binding annotated
//!   `acr.microsoft.com/identity-audience: container-registry` gets an ACR-audience token and
//!   works, next to bindings of an ARM-enabled registry on the controller's default. The
//!   annotation is an input (a Secret minted without it is re-minted once it is set) and
//!   leaves the v1beta2 schema untouched.
//! - **Which identity an exchange uses** (upstream issue #110): the log names the client id,
//!   or resource id, or client id + tenant id + ServiceAccount, and the audience — at info for
//!   an identity's first request and a binding's first token, never a token.

mod common;

use azure_standin::{Config, Registry, RoleAssignment, Sku};
use common::*;
use serde_json::{json, Value};

/// A registry that accepts only ACR-audience tokens.
const STRICT: &str = "strict.azurecr.io";
const ACR_AUDIENCE: &str = "container-registry";

fn with_strict_registry(config: &mut Config) {
    config.registries.push(Registry {
        host: STRICT.into(),
        sku: Sku::Premium,
        authentication_as_arm: false,
        ops_per_minute: None,
        tenant: None,
        upstream: None,
    });
    config.role_assignments.push(RoleAssignment {
        identity: "mi-pull".into(),
        registry: STRICT.into(),
        repository: "app".into(),
        actions: vec!["pull".into()],
    });
}

fn binding(name: &str, server: &str, audience: Option<&str>) -> Value {
    let mut b = v2_managed("team-a", name, "puller", "repository:app:pull");
    b["spec"]["acr"]["server"] = json!(server);
    if let Some(a) = audience {
        b["metadata"]["annotations"] = json!({ "acr.microsoft.com/identity-audience": a });
    }
    b
}

async fn status_error(env: &Env, name: &str) -> String {
    let b = env.wait_ready(V2, "team-a", name, "False").await;
    b["status"]["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_chooses_the_acr_audience_for_a_registry_without_arm_authentication() {
    let env = Env::start_with(Options {
        azure: Some(with_strict_registry),
        ..Default::default()
    })
    .await;
    env.create(sa("team-a", "puller", json!({})));
    // The controller's default audience (Resource Manager): refused by the strict registry,
    // fine for the ARM-enabled one.
    env.create(binding("default-audience", STRICT, None));
    env.create(binding("arm-registry", REGISTRY, None));
    let error = status_error(&env, "default-audience").await;
    assert!(
        error.contains("audience") || error.contains("UNAUTHORIZED") || error.contains("401"),
        "{error}"
    );
    env.wait_ready(V2, "team-a", "arm-registry", "True").await;

    // The annotation on the same binding: an input change, so a new token, for the ACR audience.
    let mut b = env
        .kube
        .get(V2, "AcrPullBinding", "team-a", "default-audience")
        .unwrap();
    b["metadata"]["annotations"] = json!({ "acr.microsoft.com/identity-audience": ACR_AUDIENCE });
    env.create(b);
    env.wait_ready(V2, "team-a", "default-audience", "True")
        .await;
    let secret = env.secret("team-a", "acr-pull-default-audience").unwrap();
    let auths = docker_config(&secret);
    assert!(auths["auths"][STRICT]["password"].is_string(), "{auths}");
    // And a new binding annotated from the start.
    env.create(binding("acr-audience", STRICT, Some(ACR_AUDIENCE)));
    env.wait_ready(V2, "team-a", "acr-audience", "True").await;

    // The strict registry accepted exchanges only after the annotation.
    let exchanges: Vec<_> = env
        .azure
        .requests()
        .into_iter()
        .filter(|r| r.host.starts_with(STRICT) && r.path == "/oauth2/exchange")
        .collect();
    assert!(exchanges.iter().any(|r| r.status == 401), "{exchanges:#?}");
    assert!(exchanges.iter().any(|r| r.status == 200), "{exchanges:#?}");

    // The annotation is in token.inputs-all only; token.inputs stays the old controller's hash,
    // which it would compute for this spec.
    let annotations = &secret["metadata"]["annotations"];
    let old_hash = acrpull::state::inputs::v1beta2_legacy(&acrpull::state::inputs::V1beta2Inputs {
        service_account_name: "puller",
        managed: Some((MI_CLIENT, "")),
        environment: "PublicCloud",
        server: STRICT,
        scope: "repository:app:pull",
        ..Default::default()
    });
    assert_eq!(
        annotations["acr.microsoft.com/token.inputs"],
        old_hash.as_str()
    );
    assert_ne!(
        annotations["acr.microsoft.com/token.inputs-all"],
        old_hash.as_str()
    );

    // An unknown value fails that binding with the annotation's name in the message.
    env.create(binding("typo", STRICT, Some("acr")));
    let error = status_error(&env, "typo").await;
    assert!(
        error.contains("acr.microsoft.com/identity-audience")
            && error.contains("container-registry"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_names_the_identity_of_each_exchange_and_no_token() {
    let env = Env::start().await;
    env.create(sa("team-a", "puller", json!({})));
    env.create(federated_sa("team-a"));
    env.create(v2_managed(
        "team-a",
        "by-client-id",
        "puller",
        "repository:app:pull",
    ));
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "by-resource-id", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:base:pull", "environment": "PublicCloud"},
                 "auth": {"managedIdentity": {"resourceID": MI_RESOURCE}},
                 "serviceAccountName": "puller"}}));
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "workload", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"workloadIdentity": {"serviceAccountRef": "federated"}},
                 "serviceAccountName": "puller"}}));
    // A binding whose identity Azure does not know: the failure names it too.
    env.create(json!({"apiVersion": V2, "kind": "AcrPullBinding",
        "metadata": {"name": "unknown", "namespace": "team-a"},
        "spec": {"acr": {"server": REGISTRY, "scope": "repository:app:pull", "environment": "PublicCloud"},
                 "auth": {"managedIdentity": {"clientID": "aaaaaaaa-0000-4000-8000-0000000000ff"}},
                 "serviceAccountName": "puller"}}));
    for name in ["by-client-id", "by-resource-id", "workload"] {
        env.wait_ready(V2, "team-a", name, "True").await;
    }
    env.wait_ready(V2, "team-a", "unknown", "False").await;

    let logs = env.logs();
    let lines = |needles: &[&str]| -> Vec<&str> {
        logs.lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .collect()
    };
    // Per identity, once at info: the first request this process makes for it.
    let client = format!("client_id=\"{MI_CLIENT}\"");
    let resource = format!("resource_id=\"{MI_RESOURCE}\"");
    let wi_client = format!("client_id=\"{WI_CLIENT}\"");
    let tenant = format!("tenant_id=\"{TENANT}\"");
    for needles in [
        vec![
            "INFO",
            "requesting a managed identity token",
            client.as_str(),
        ],
        vec![
            "INFO",
            "requesting a managed identity token",
            resource.as_str(),
        ],
        vec![
            "INFO",
            "requesting a workload identity token",
            wi_client.as_str(),
            tenant.as_str(),
            "service_account=team-a/federated",
        ],
    ] {
        assert_eq!(lines(&needles).len(), 1, "{needles:?}\n{logs}");
    }
    // Per binding, at info for its first token: the identity and the audience.
    for (name, id) in [
        ("by-client-id", client.as_str()),
        ("by-resource-id", resource.as_str()),
        ("workload", wi_client.as_str()),
    ] {
        let name_field = format!("name={name} ");
        let found = lines(&[
            "INFO",
            "exchanging a token for the binding's identity",
            &name_field,
            id,
        ]);
        assert_eq!(found.len(), 1, "{name}\n{logs}");
        assert!(
            found[0].contains("audience=\"resource-manager\""),
            "{}",
            found[0]
        );
    }
    // The failure says which identity Azure refused.
    assert!(
        !lines(&[
            "WARN",
            "name=unknown ",
            "client_id=\"aaaaaaaa-0000-4000-8000-0000000000ff\""
        ])
        .is_empty(),
        "{logs}"
    );
    // No token of any hop in the log (each is a JWT: three base64url parts).
    assert!(!has_jwt(&logs), "a token reached the log:\n{logs}");
    let secret = env.secret("team-a", "acr-pull-by-client-id").unwrap();
    let password = docker_config(&secret)["auths"][REGISTRY]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!logs.contains(&password));
}

/// Whether `text` holds something shaped like a JWT (`eyJ…` with two more dot-separated
/// base64url parts).
fn has_jwt(text: &str) -> bool {
    let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices("eyJ").any(|(i, _)| {
        let rest = &text[i..];
        let token: String = rest
            .chars()
            .take_while(|c| base64url(*c) || *c == '.')
            .collect();
        token.split('.').filter(|p| !p.is_empty()).count() >= 3
    })
}
