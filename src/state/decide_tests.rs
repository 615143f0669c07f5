//! Table tests of the decision core: one literal scenario per SPEC §4 rule and §10 input.

use super::*;
use crate::state::binding::{
    EnvDefaults, IdentitySpec, TokenAudience, V1beta1Spec, V1beta2Spec, WorkloadSpec,
};
use crate::state::inputs;
use crate::state::refresh::MIN_REFRESH_INTERVAL;
use crate::state::status_schema::StatusFields;
use crate::state::tenancy::{AllowedActions, AllowedClouds, Mode, TenancyPolicy};

const CID: &str = "1b461305-28be-5271-beda-bd9fd2e24251";
const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const RID: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn now() -> Timestamp {
    ts("2026-01-01T12:00:00Z")
}

fn v2_managed() -> V1beta2Spec {
    V1beta2Spec {
        server: "example.azurecr.io".into(),
        scope: "repository:app:pull".into(),
        environment: "PublicCloud".into(),
        managed: Some((CID.into(), String::new())),
        service_account_name: "puller".into(),
        ..Default::default()
    }
}

fn v2_workload(ids: bool) -> V1beta2Spec {
    V1beta2Spec {
        managed: None,
        workload: Some(WorkloadSpec {
            service_account_ref: "fed".into(),
            client_id: if ids { CID.into() } else { String::new() },
            tenant_id: if ids { TID.into() } else { String::new() },
        }),
        ..v2_managed()
    }
}

fn v1(client: &str, resource: &str) -> V1beta1Spec {
    V1beta1Spec {
        acr_server: "example.azurecr.io".into(),
        scope: "repository:app:pull".into(),
        client_id: client.into(),
        resource_id: resource.into(),
        service_account_name: String::new(),
        identity_audience: None,
    }
}

fn binding(spec: Spec) -> BindingView {
    BindingView {
        version: match spec {
            Spec::V1beta1(_) => Version::V1beta1,
            Spec::V1beta2(_) => Version::V1beta2,
        },
        namespace: "ns".into(),
        name: "app".into(),
        uid: "uid-1".into(),
        generation: 1,
        deleting: false,
        has_finalizer: true,
        spec,
        status: StatusView::default(),
    }
}

fn sa(name: &str, secrets: &[&str]) -> ServiceAccountView {
    ServiceAccountView {
        name: name.into(),
        pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn observed(spec: Spec) -> Observed {
    let target = match &spec {
        Spec::V1beta1(_) => "default",
        Spec::V1beta2(s) => {
            if s.service_account_name.is_empty() {
                "x"
            } else {
                "puller"
            }
        }
    };
    Observed {
        binding: binding(spec),
        matches_selector: true,
        secrets: vec![],
        target_service_account: Some(sa(target, &[])),
        workload_service_account: None,
        referencing_service_accounts: vec![],
        last_failure: None,
        siblings: vec![],
        tenancy: None,
    }
}

fn policy() -> Policy {
    Policy::default()
}

fn hash_of(o: &Observed) -> String {
    validate(&o.binding.name, &o.binding.spec, &policy())
        .unwrap()
        .inputs_hash
}

/// A well-formed secret minted at `refresh` expiring at `expiry` for the binding's inputs.
fn secret_for(o: &Observed, name: &str, refresh: &str, expiry: &str) -> SecretView {
    SecretView {
        name: name.into(),
        expiry: Some(ts(expiry)),
        refresh: Some(ts(refresh)),
        issued: None,
        inputs: Some(hash_of(o)),
        inputs_all: None,
        verified: Some(true),
        planned: None,
    }
}

/// The binding fully converged: secret fresh, attached, status written.
fn ready(mut o: Observed) -> Observed {
    let name = match o.binding.version {
        Version::V1beta1 => "app-msi-acrpull-secret",
        Version::V1beta2 => "acr-pull-app",
    };
    o.secrets = vec![secret_for(
        &o,
        name,
        "2026-01-01T11:50:00Z",
        "2026-01-01T15:00:00Z",
    )];
    let target = o.target_service_account.as_mut().unwrap();
    target.pull_secrets.push(name.into());
    o.referencing_service_accounts = vec![target.clone()];
    let Plan::WriteStatus(desired) = decide(&o, now(), &policy()).plan else {
        panic!("expected a status write for {o:?}")
    };
    o.binding.status = desired.as_status();
    o
}

fn mint_identity(d: &Decision) -> (&IdentitySpec, MintReason) {
    match &d.plan {
        Plan::Mint {
            request, reason, ..
        } => (&request.identity, *reason),
        other => panic!("expected Mint, got {other:?}"),
    }
}

fn failed_with(d: &Decision, reason: &str, message: &str) {
    assert_eq!(d.record.phase, Phase::Failed, "{d:?}");
    match &d.plan {
        Plan::Fail(status) => {
            assert_eq!(status.reason.as_str(), reason, "{d:?}");
            assert!(
                status.error.contains(message),
                "{:?} !~ {message}",
                status.error
            );
            assert!(!status.ready);
        }
        other => panic!("expected Fail, got {other:?}"),
    }
}

#[test]
fn new_binding_gets_a_finalizer_first() {
    for spec in [Spec::V1beta1(v1(CID, "")), Spec::V1beta2(v2_managed())] {
        let mut o = observed(spec);
        o.binding.has_finalizer = false;
        let d = decide(&o, now(), &policy());
        assert_eq!(d.plan, Plan::AddFinalizer);
        assert_eq!(
            (d.record.phase, d.record.reason),
            (Phase::Pending, Reason::NewBinding)
        );
        assert_eq!(d.requeue, Some(add(now(), policy().after_write)));
    }
}

#[test]
fn label_selector_mismatch_is_ignored_entirely() {
    let mut o = observed(Spec::V1beta2(v2_managed()));
    o.matches_selector = false;
    o.binding.has_finalizer = false;
    assert_eq!(decide(&o, now(), &policy()).plan, Plan::Ignore);
}

#[test]
fn minting_for_a_missing_secret_each_identity_kind() {
    // v1beta1 client id, v1beta1 resource id (path-cleaned), v1beta2 client id, resource id.
    let cases: Vec<(Spec, IdentitySpec)> = vec![
        (
            Spec::V1beta1(v1(CID, "")),
            IdentitySpec::ManagedClientId(CID.into()),
        ),
        (
            Spec::V1beta1(v1("", &format!("{RID}/"))),
            IdentitySpec::ManagedResourceId(RID.into()),
        ),
        (
            Spec::V1beta1(v1("", &RID.replace("/resourceGroups", "//resourceGroups"))),
            IdentitySpec::ManagedResourceId(RID.into()),
        ),
        (
            Spec::V1beta2(v2_managed()),
            IdentitySpec::ManagedClientId(CID.into()),
        ),
        (
            Spec::V1beta2(V1beta2Spec {
                managed: Some((String::new(), RID.into())),
                ..v2_managed()
            }),
            IdentitySpec::ManagedResourceId(RID.into()),
        ),
        (
            Spec::V1beta2(v2_workload(true)),
            IdentitySpec::Workload {
                tenant_id: TID.into(),
                client_id: CID.into(),
                service_account: "fed".into(),
            },
        ),
    ];
    for (spec, want) in cases {
        let o = observed(spec);
        let d = decide(&o, now(), &policy());
        assert_eq!(d.record.phase, Phase::Exchanging);
        let (identity, reason) = mint_identity(&d);
        assert_eq!(identity, &want);
        assert_eq!(reason, MintReason::Missing);
    }
}

#[test]
fn v1beta1_defaults_come_from_the_environment() {
    let mut p = policy();
    p.env = EnvDefaults {
        acr_server: "env.azurecr.io".into(),
        client_id: CID.into(),
        resource_id: String::new(),
        arm_resource: Some("https://management.usgovcloudapi.net/".into()),
    };
    let o = observed(Spec::V1beta1(V1beta1Spec::default()));
    let d = decide(&o, now(), &p);
    let Plan::Mint { request, .. } = &d.plan else {
        panic!("{d:?}")
    };
    assert_eq!(request.registry.host, "env.azurecr.io");
    assert_eq!(request.identity, IdentitySpec::ManagedClientId(CID.into()));
    assert_eq!(request.target_service_account, "default");
    assert_eq!(
        request.scope, None,
        "empty v1beta1 scope is an unscoped token"
    );
    assert_eq!(
        request.arm_resource_override.as_deref(),
        Some("https://management.usgovcloudapi.net/")
    );
    assert_eq!(request.secret_name, "app-msi-acrpull-secret");
    assert_eq!(
        request.inputs_hash,
        inputs::v1beta1(CID, "", "env.azurecr.io", "")
    );
}

#[test]
fn workload_identity_uses_service_account_ref_and_its_annotations() {
    let mut o = observed(Spec::V1beta2(v2_workload(false)));
    // The referenced SA is missing: fail naming it, no mint.
    failed_with(
        &decide(&o, now(), &policy()),
        "ServiceAccountNotFound",
        "\"fed\" not found",
    );
    // Present but not annotated.
    o.workload_service_account = Some(sa("fed", &[]));
    failed_with(
        &decide(&o, now(), &policy()),
        "InvalidSpec",
        "missing the azure.workload.identity/client-id annotation",
    );
    o.workload_service_account
        .as_mut()
        .unwrap()
        .client_id_annotation = Some(CID.into());
    failed_with(
        &decide(&o, now(), &policy()),
        "InvalidSpec",
        "missing the azure.workload.identity/tenant-id annotation",
    );
    o.workload_service_account
        .as_mut()
        .unwrap()
        .tenant_id_annotation = Some("bad tenant!".into());
    failed_with(&decide(&o, now(), &policy()), "InvalidSpec", "tenant id");
    o.workload_service_account
        .as_mut()
        .unwrap()
        .tenant_id_annotation = Some(TID.into());
    let d = decide(&o, now(), &policy());
    let (identity, _) = mint_identity(&d);
    // The token is minted for serviceAccountRef, not the target ("puller"): SPEC §11.
    assert_eq!(
        identity,
        &IdentitySpec::Workload {
            tenant_id: TID.into(),
            client_id: CID.into(),
            service_account: "fed".into()
        }
    );
}

#[test]
fn missing_target_service_account_fails_and_waits_for_it() {
    let mut o = observed(Spec::V1beta2(v2_managed()));
    o.target_service_account = None;
    let d = decide(&o, now(), &policy());
    failed_with(
        &d,
        "ServiceAccountNotFound",
        "service account \"puller\" not found",
    );
    let Plan::Fail(status) = d.plan else {
        unreachable!()
    };
    assert_eq!(
        status.next_refresh, None,
        "re-checked when the ServiceAccount appears (watch), nothing planned"
    );
    // Recorded once: the next pass waits instead of rewriting status (no hot loop).
    o.binding.status = StatusView {
        phase: Some(status.phase),
        error: status.error.clone(),
        last_refresh: None,
        expiry: None,
        next_refresh: status.next_refresh,
        consecutive_failures: status.consecutive_failures,
        observed_generation: Some(1),
        ready: Some((false, Some(status.reason), status.message.clone())),
        verified: status.verified,
        permitted: None,
        kept: StatusFields::ALL,
    };
    let later = add(now(), std::time::Duration::from_secs(5));
    let d = decide(&o, later, &policy());
    assert_eq!(d.plan, Plan::Wait, "{d:?}");
    assert_eq!(d.requeue, Some(add(later, policy().recheck_interval)));
}

#[test]
fn disallowed_registry_fails_before_any_token_call() {
    for server in [
        "evil-azurecr.io",
        "azurecr.io.evil.com",
        "10.0.0.1",
        "x.example.com",
    ] {
        let o = observed(Spec::V1beta2(V1beta2Spec {
            server: server.into(),
            ..v2_managed()
        }));
        let d = decide(&o, now(), &policy());
        assert!(!matches!(d.plan, Plan::Mint { .. }), "{server}: {d:?}");
        assert_eq!(d.record.phase, Phase::Failed);
    }
    let o = observed(Spec::V1beta2(V1beta2Spec {
        server: "evil.example.com".into(),
        ..v2_managed()
    }));
    failed_with(
        &decide(&o, now(), &policy()),
        "RegistryNotAllowed",
        "not under an allowed",
    );
}

#[test]
fn bad_input_of_spec_10_fails_with_actionable_messages() {
    let long_sa = "a".repeat(254);
    let cases: Vec<(V1beta2Spec, &str)> = vec![
        (
            V1beta2Spec {
                server: String::new(),
                ..v2_managed()
            },
            "server is empty",
        ),
        (
            V1beta2Spec {
                server: "https://x.azurecr.io".into(),
                ..v2_managed()
            },
            "scheme",
        ),
        (
            V1beta2Spec {
                server: "x.azurecr.io/path".into(),
                ..v2_managed()
            },
            "path",
        ),
        (
            V1beta2Spec {
                server: "u@x.azurecr.io".into(),
                ..v2_managed()
            },
            "user information",
        ),
        (
            V1beta2Spec {
                server: "x.azurecr.io:443".into(),
                ..v2_managed()
            },
            "port",
        ),
        (
            V1beta2Spec {
                scope: String::new(),
                ..v2_managed()
            },
            "scope is empty",
        ),
        (
            V1beta2Spec {
                scope: "repository:*:pull".into(),
                ..v2_managed()
            },
            "wildcard",
        ),
        (
            V1beta2Spec {
                scope: "pull".into(),
                ..v2_managed()
            },
            "type:name:actions",
        ),
        (
            V1beta2Spec {
                managed: None,
                ..v2_managed()
            },
            "set one of",
        ),
        (
            V1beta2Spec {
                workload: v2_workload(true).workload,
                ..v2_managed()
            },
            "not both",
        ),
        (
            V1beta2Spec {
                managed: Some((CID.into(), RID.into())),
                ..v2_managed()
            },
            "clientID or resourceID, not both",
        ),
        (
            V1beta2Spec {
                managed: Some((String::new(), String::new())),
                ..v2_managed()
            },
            "set clientID or resourceID",
        ),
        (
            V1beta2Spec {
                managed: Some(("not-a-guid".into(), String::new())),
                ..v2_managed()
            },
            "not a GUID",
        ),
        (
            V1beta2Spec {
                managed: Some((String::new(), "/bad".into())),
                ..v2_managed()
            },
            "must look like /subscriptions",
        ),
        (
            V1beta2Spec {
                workload: Some(WorkloadSpec {
                    service_account_ref: "fed".into(),
                    client_id: CID.into(),
                    tenant_id: String::new(),
                }),
                ..v2_workload(false)
            },
            "set together",
        ),
        (
            V1beta2Spec {
                workload: Some(WorkloadSpec::default()),
                ..v2_workload(false)
            },
            "serviceAccountRef is required",
        ),
        (
            V1beta2Spec {
                environment: "AirgappedCloud".into(),
                ..v2_managed()
            },
            "needs spec.acr.cloudConfig",
        ),
        (
            V1beta2Spec {
                environment: "ArigappedCloud".into(),
                ..v2_managed()
            },
            "unknown environment",
        ),
        (
            V1beta2Spec {
                cloud_config: Some(("https://login.x".into(), "https://mgmt.x".into())),
                ..v2_managed()
            },
            "only allowed with environment AirgappedCloud",
        ),
        (
            V1beta2Spec {
                environment: "AirgappedCloud".into(),
                cloud_config: Some(("http://login.x".into(), "https://mgmt.x".into())),
                ..v2_managed()
            },
            "must be an https:// URL",
        ),
        (
            V1beta2Spec {
                environment: "AirgappedCloud".into(),
                cloud_config: Some((String::new(), "https://mgmt.x".into())),
                ..v2_managed()
            },
            "needs both",
        ),
        (
            V1beta2Spec {
                service_account_name: String::new(),
                ..v2_managed()
            },
            "serviceAccountName is required",
        ),
        (
            V1beta2Spec {
                service_account_name: long_sa,
                ..v2_managed()
            },
            "not a valid ServiceAccount name",
        ),
        (
            V1beta2Spec {
                service_account_name: "Bad_Name".into(),
                ..v2_managed()
            },
            "not a valid ServiceAccount name",
        ),
    ];
    for (spec, message) in cases {
        let mut o = observed(Spec::V1beta2(spec.clone()));
        o.target_service_account = Some(sa(&spec.service_account_name, &[]));
        let d = decide(&o, now(), &policy());
        failed_with(&d, "InvalidSpec", message);
        let Plan::Fail(record) = d.plan else {
            unreachable!()
        };
        assert_eq!(
            record.next_refresh, None,
            "spec errors wait for a spec change: {message}"
        );
        assert_eq!(d.requeue, Some(add(now(), policy().recheck_interval)));
    }
    // v1beta1 without any identity.
    let o = observed(Spec::V1beta1(v1("", "")));
    failed_with(
        &decide(&o, now(), &policy()),
        "InvalidSpec",
        "no managed identity",
    );
}

#[test]
fn air_gapped_bindings_with_cloud_config_are_served() {
    let o = observed(Spec::V1beta2(V1beta2Spec {
        environment: "AirgappedCloud".into(),
        cloud_config: Some((
            "https://login.airgap.example/".into(),
            "https://mgmt.airgap.example/".into(),
        )),
        ..v2_managed()
    }));
    // Not on the operator's lists (the default): refused before anything is requested,
    // naming the flag to set.
    failed_with(
        &decide(&o, now(), &policy()),
        "AuthorityNotAllowed",
        "--allowed-entra-authority-hosts",
    );
    let only_authority = Policy {
        allowed_clouds: AllowedClouds::new(["login.airgap.example"], Vec::<String>::new()),
        ..policy()
    };
    failed_with(
        &decide(&o, now(), &only_authority),
        "AuthorityNotAllowed",
        "--allowed-resource-manager-audiences",
    );
    let allowed = Policy {
        allowed_clouds: AllowedClouds::new(
            ["https://LOGIN.airgap.example"],
            ["https://mgmt.airgap.example"],
        ),
        ..policy()
    };
    let d = decide(&o, now(), &allowed);
    let Plan::Mint { request, .. } = &d.plan else {
        panic!("{d:?}")
    };
    assert_eq!(
        request.cloud,
        crate::state::binding::CloudSpec::Airgapped {
            entra_authority_host: "https://login.airgap.example/".into(),
            resource_manager_audience: "https://mgmt.airgap.example/".into()
        }
    );
}

#[test]
fn attaching_honours_the_ordering() {
    let mut o = observed(Spec::V1beta2(v2_managed()));
    o.secrets = vec![secret_for(
        &o,
        "acr-pull-app",
        "2026-01-01T11:50:00Z",
        "2026-01-01T15:00:00Z",
    )];
    o.target_service_account = Some(sa(
        "puller",
        &["zz-msi-acrpull-secret", "mine", "acr-pull-zed", "another"],
    ));
    let d = decide(&o, now(), &policy());
    assert_eq!(
        d.plan,
        Plan::Attach {
            service_account: "puller".into(),
            pull_secrets: [
                "another",
                "mine",
                "acr-pull-app",
                "acr-pull-zed",
                "zz-msi-acrpull-secret"
            ]
            .map(String::from)
            .to_vec(),
        }
    );
}

#[test]
fn one_attach_names_every_sibling_on_its_way_to_a_pull_secret() {
    let mut o = observed(Spec::V1beta2(v2_managed()));
    o.secrets = vec![secret_for(
        &o,
        "acr-pull-app",
        "2026-01-01T11:50:00Z",
        "2026-01-01T15:00:00Z",
    )];
    o.target_service_account = Some(sa("puller", &["other"]));
    let sibling = |name: &str, sa: &str, failed: bool| Sibling {
        name: name.into(),
        spec: Spec::V1beta2(V1beta2Spec {
            service_account_name: sa.into(),
            ..v2_managed()
        }),
        failed,
    };
    let mut invalid = sibling("bad", "puller", false);
    if let Spec::V1beta2(s) = &mut invalid.spec {
        s.server = "evil.example.com".into();
    }
    o.siblings = vec![
        sibling("web", "puller", false),
        // Elsewhere, failing or invalid: never named (no reference to a secret that may
        // never exist).
        sibling("tools", "builder", false),
        sibling("broken", "puller", true),
        invalid,
    ];
    let d = decide(&o, now(), &policy());
    assert_eq!(
        d.plan,
        Plan::Attach {
            service_account: "puller".into(),
            pull_secrets: ["other", "acr-pull-app", "acr-pull-web"]
                .map(String::from)
                .to_vec(),
        }
    );
    // The sibling's own pass then finds itself attached: no second patch.
    let mut web = observed(Spec::V1beta2(v2_managed()));
    web.binding.name = "web".into();
    web.secrets = vec![secret_for(
        &web,
        "acr-pull-web",
        "2026-01-01T11:50:00Z",
        "2026-01-01T15:00:00Z",
    )];
    web.target_service_account = Some(sa("puller", &["other", "acr-pull-app", "acr-pull-web"]));
    let d = decide(&web, now(), &policy());
    assert!(matches!(d.plan, Plan::WriteStatus(_)), "{d:?}");
}

/// A pass gathers siblings only where [`may_attach`] says rule 8 can read them: everywhere
/// else the decision is the same with or without them.
#[test]
fn siblings_matter_only_where_rule_8_can_attach() {
    let web = Sibling {
        name: "web".into(),
        spec: Spec::V1beta2(v2_managed()),
        failed: false,
    };
    let with_secret = |mut o: Observed| {
        let name = expected_secret_name(o.binding.version, &o.binding.name);
        o.secrets = vec![secret_for(
            &o,
            &name,
            "2026-01-01T11:50:00Z",
            "2026-01-01T15:00:00Z",
        )];
        o
    };
    let v2 = || observed(Spec::V1beta2(v2_managed()));
    let mut new = v2();
    new.binding.has_finalizer = false;
    let mut no_sa = with_secret(v2());
    no_sa.target_service_account = None;
    let mut deleting = with_secret(v2());
    deleting.binding.deleting = true;
    let mut foreign_only = v2();
    foreign_only.secrets = vec![secret_for(
        &foreign_only,
        "old-name",
        "2026-01-01T11:50:00Z",
        "2026-01-01T15:00:00Z",
    )];
    let cases: Vec<(&str, Observed, bool)> = vec![
        ("new binding", new, false),
        ("no pull secret yet", v2(), false),
        ("only a secret of another name", foreign_only, false),
        ("pull secret, not attached", with_secret(v2()), true),
        ("target ServiceAccount missing", no_sa, false),
        ("being deleted", deleting, false),
        ("ready", ready(v2()), false),
        (
            "v1beta1 ready",
            ready(observed(Spec::V1beta1(v1(CID, "")))),
            false,
        ),
    ];
    for (what, mut o, want) in cases {
        assert_eq!(may_attach(&o), want, "{what}");
        let without = decide(&o, now(), &policy());
        o.siblings = vec![web.clone()];
        let with = decide(&o, now(), &policy());
        if want {
            assert_ne!(with.plan, without.plan, "{what}: the sibling rides along");
        } else {
            assert_eq!(with, without, "{what}");
        }
    }
}

#[test]
fn a_sibling_the_tenancy_policies_refuse_is_never_attached() {
    let sibling = |name: &str, client_id: &str| Sibling {
        name: name.into(),
        spec: Spec::V1beta2(V1beta2Spec {
            managed: Some((client_id.into(), String::new())),
            ..v2_managed()
        }),
        failed: false,
    };
    let other_id = "2b461305-28be-5271-beda-bd9fd2e24252";
    let base = || {
        let mut o = with_policies(observed(Spec::V1beta2(v2_managed())), vec![ns_policy()]);
        o.secrets = vec![secret_for(
            &o,
            "acr-pull-app",
            "2026-01-01T11:50:00Z",
            "2026-01-01T15:00:00Z",
        )];
        o.target_service_account = Some(sa("puller", &[]));
        o.siblings = vec![sibling("web", CID), sibling("rogue", other_id)];
        o
    };
    let attached = |d: Decision| match d.plan {
        Plan::Attach { pull_secrets, .. } => pull_secrets,
        other => panic!("{other:?}"),
    };
    // Enforce: the permitted sibling rides along; the refused one (its own pass revokes it)
    // is not named, or the two passes would undo each other.
    assert_eq!(
        attached(decide(&base(), now(), &enforce())),
        ["acr-pull-app", "acr-pull-web"].map(String::from).to_vec()
    );
    // Audit serves both.
    assert_eq!(
        attached(decide(&base(), now(), &audit())),
        ["acr-pull-app", "acr-pull-rogue", "acr-pull-web"]
            .map(String::from)
            .to_vec()
    );
    // Off: tenancy is not consulted.
    let mut off = base();
    off.tenancy = None;
    assert_eq!(
        attached(decide(&off, now(), &policy())).len(),
        3,
        "every valid sibling is attached with tenancy off"
    );
}

#[test]
fn status_is_updated_from_the_secret_then_nothing_until_the_boundary() {
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    let d = decide(&o, now(), &policy());
    assert_eq!(d.plan, Plan::Wait, "{d:?}");
    let until = d.requeue.unwrap();
    assert_eq!(d.record.phase, Phase::Ready);
    // Boundary for refresh 11:50, expiry 15:00, fraction 0.5 is 13:25, pulled earlier by jitter
    // of at most 10 % of the 95-minute window.
    assert!(
        until <= ts("2026-01-01T13:25:00Z") && until >= ts("2026-01-01T13:15:30Z"),
        "{until}"
    );
    assert_eq!(o.binding.status.next_refresh, Some(until));
    // Out-of-date status (e.g. an old controller's, or a stale generation) is rewritten.
    let mut stale = o.clone();
    stale.binding.generation = 2;
    assert!(matches!(
        decide(&stale, now(), &policy()).plan,
        Plan::WriteStatus(_)
    ));
    let mut old_error = o.clone();
    old_error.binding.status.error = "previous failure".into();
    let Plan::WriteStatus(s) = decide(&old_error, now(), &policy()).plan else {
        panic!()
    };
    assert!(s.error.is_empty() && s.ready && s.reason == Reason::TokenIssued);
}

#[test]
fn expiring_secret_is_re_minted_and_v1beta1_uses_its_own_boundary() {
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    let at = o.binding.status.next_refresh.unwrap();
    let d = decide(&o, at, &policy());
    assert_eq!(d.record.phase, Phase::Refreshing);
    let Plan::Mint {
        reason,
        current_expiry,
        ..
    } = d.plan
    else {
        panic!()
    };
    assert_eq!(reason, MintReason::Due);
    assert_eq!(current_expiry, Some(ts("2026-01-01T15:00:00Z")));

    let o = ready(observed(Spec::V1beta1(v1(CID, ""))));
    // v1beta1 refreshes 30 minutes before expiry (15:00), jitter at most 10 % earlier.
    assert!(matches!(
        decide(&o, ts("2026-01-01T14:10:00Z"), &policy()).plan,
        Plan::Wait
    ));
    assert!(matches!(
        decide(&o, ts("2026-01-01T14:30:00Z"), &policy()).plan,
        Plan::Mint { .. }
    ));
}

#[test]
fn unreadable_or_foreign_secret_is_re_minted() {
    let base = ready(observed(Spec::V1beta2(v2_managed())));
    let mut garbage = base.clone();
    garbage.secrets[0].expiry = None; // annotation missing or unparsable
    let (_, reason) = mint_identity(&decide(&garbage, now(), &policy()));
    assert_eq!(reason, MintReason::Unreadable);
    let mut no_refresh = base.clone();
    no_refresh.secrets[0].refresh = None;
    let d = decide(&no_refresh, now(), &policy());
    assert_eq!(mint_identity(&d).1, MintReason::Unreadable);
    // Nothing valid is left: not a refresh of a working credential.
    assert_eq!(d.record.phase, Phase::Exchanging);
    assert_eq!(d.record.reason, Reason::TokenExpired);
}

#[test]
fn input_changes_re_mint() {
    let base = ready(observed(Spec::V1beta2(v2_managed())));
    let Spec::V1beta2(spec) = &base.binding.spec else {
        unreachable!()
    };
    let changes: Vec<V1beta2Spec> = vec![
        V1beta2Spec {
            server: "other.azurecr.io".into(),
            ..spec.clone()
        },
        V1beta2Spec {
            scope: "repository:other:pull".into(),
            ..spec.clone()
        },
        V1beta2Spec {
            managed: Some(("2b461305-28be-5271-beda-bd9fd2e24251".into(), String::new())),
            ..spec.clone()
        },
        V1beta2Spec {
            managed: Some((String::new(), RID.into())),
            ..spec.clone()
        },
        V1beta2Spec {
            environment: "ChinaCloud".into(),
            server: "x.azurecr.cn".into(),
            ..spec.clone()
        },
        v2_workload(true),
    ];
    for changed in changes {
        let mut o = base.clone();
        o.binding.spec = Spec::V1beta2(changed.clone());
        o.binding.generation = 2;
        let d = decide(&o, now(), &policy());
        let (_, reason) = mint_identity(&d);
        assert_eq!(reason, MintReason::InputsChanged, "{changed:?}");
        assert_eq!(d.record.phase, Phase::Refreshing);
    }
    // v1beta1: client id change.
    let base = ready(observed(Spec::V1beta1(v1(CID, ""))));
    let mut o = base.clone();
    o.binding.spec = Spec::V1beta1(v1("2b461305-28be-5271-beda-bd9fd2e24251", ""));
    assert_eq!(
        mint_identity(&decide(&o, now(), &policy())).1,
        MintReason::InputsChanged
    );
}

#[test]
fn user_changes_the_target_service_account() {
    // Converged on "puller", then serviceAccountName changes to "other".
    let base = ready(observed(Spec::V1beta2(v2_managed())));
    let mut o = base.clone();
    let Spec::V1beta2(spec) = &mut o.binding.spec else {
        unreachable!()
    };
    spec.service_account_name = "other".into();
    o.binding.generation = 2;
    o.target_service_account = Some(sa("other", &["mine"]));
    // Rule 5 first: the old SA still references the secret.
    let d = decide(&o, now(), &policy());
    assert_eq!(
        d.plan,
        Plan::DetachExtraneous {
            service_account: "puller".into(),
            pull_secrets: vec![]
        }
    );
    // After the detach, the inputs hash (includes the SA name) forces a re-mint.
    o.referencing_service_accounts.clear();
    assert_eq!(
        mint_identity(&decide(&o, now(), &policy())).1,
        MintReason::InputsChanged
    );
    // Mid-cleanup change: the target changes again while "puller" still references it —
    // still detached from every non-target SA first.
    let mut o2 = o.clone();
    o2.referencing_service_accounts = vec![
        sa("puller", &["acr-pull-app", "keep"]),
        sa("other", &["acr-pull-app"]),
    ];
    assert_eq!(
        decide(&o2, now(), &policy()).plan,
        Plan::DetachExtraneous {
            service_account: "puller".into(),
            pull_secrets: vec!["keep".into()]
        }
    );
}

#[test]
fn extraneous_secret_is_detached_and_deleted() {
    let mut o = ready(observed(Spec::V1beta2(v2_managed())));
    let old = secret_for(
        &o,
        "app-msi-acrpull-secret",
        "2026-01-01T11:50:00Z",
        "2026-01-01T15:00:00Z",
    );
    o.secrets.push(old);
    o.target_service_account
        .as_mut()
        .unwrap()
        .pull_secrets
        .push("app-msi-acrpull-secret".into());
    let d = decide(&o, now(), &policy());
    assert_eq!(
        d.plan,
        Plan::RemoveExtraneousSecret(ExtraneousStep::Detach {
            service_account: "puller".into(),
            pull_secrets: vec!["acr-pull-app".into()],
        })
    );
    // Detached everywhere: deleted.
    o.target_service_account.as_mut().unwrap().pull_secrets = vec!["acr-pull-app".into()];
    o.referencing_service_accounts = vec![o.target_service_account.clone().unwrap()];
    assert_eq!(
        decide(&o, now(), &policy()).plan,
        Plan::RemoveExtraneousSecret(ExtraneousStep::Delete("app-msi-acrpull-secret".into()))
    );
}

#[test]
fn deletion_unwinds_in_order() {
    let mut o = ready(observed(Spec::V1beta2(v2_managed())));
    o.binding.deleting = true;
    o.target_service_account.as_mut().unwrap().pull_secrets =
        vec!["mine".into(), "acr-pull-app".into()];
    o.referencing_service_accounts = vec![o.target_service_account.clone().unwrap()];
    assert_eq!(
        decide(&o, now(), &policy()).plan,
        Plan::Cleanup(CleanupStep::Detach {
            service_account: "puller".into(),
            pull_secrets: vec!["mine".into()]
        })
    );
    o.target_service_account.as_mut().unwrap().pull_secrets = vec!["mine".into()];
    o.referencing_service_accounts.clear();
    assert_eq!(
        decide(&o, now(), &policy()).plan,
        Plan::Cleanup(CleanupStep::DeleteSecret("acr-pull-app".into()))
    );
    o.secrets.clear();
    assert_eq!(
        decide(&o, now(), &policy()).plan,
        Plan::Cleanup(CleanupStep::RemoveFinalizer)
    );
    // Missing ServiceAccount is fine.
    o.target_service_account = None;
    assert_eq!(
        decide(&o, now(), &policy()).plan,
        Plan::Cleanup(CleanupStep::RemoveFinalizer)
    );
    // Deletion of an invalid binding also unwinds (validation is not consulted).
    o.binding.spec = Spec::V1beta2(V1beta2Spec::default());
    assert_eq!(
        decide(&o, now(), &policy()).plan,
        Plan::Cleanup(CleanupStep::RemoveFinalizer)
    );
    // Without our finalizer, a deleting binding is left alone.
    o.binding.has_finalizer = false;
    assert_eq!(decide(&o, now(), &policy()).plan, Plan::Ignore);
}

/// The Mint plan's request for `o` at `at`.
fn request_at(o: &Observed, at: Timestamp) -> Resolved {
    match decide(o, at, &policy()).plan {
        Plan::Mint { request, .. } => *request,
        other => panic!("expected Mint, got {other:?}"),
    }
}

fn failure(reason: Reason, retry_after: Option<u64>) -> MintFailure {
    MintFailure {
        reason,
        message: format!("{reason} from Azure"),
        retry_after: retry_after.map(std::time::Duration::from_secs),
    }
}

/// `o` as it looks after the failure was remembered and its record written to status.
fn after(o: &Observed, record: &Record, f: Failure) -> Observed {
    let mut o = o.clone();
    o.binding.status = record.as_status();
    o.last_failure = Some(f);
    o
}

#[test]
fn a_failed_refresh_keeps_the_working_secret_and_stays_ready_until_it_expires() {
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    let due = o.binding.status.next_refresh.unwrap();
    let d = decide(&o, due, &policy());
    assert_eq!(
        (d.record.phase, d.record.reason),
        (Phase::Refreshing, Reason::RefreshDue),
        "the refresh carries its own reason, not the status's"
    );
    let request = request_at(&o, due);
    // The mint at `due` failed (Azure throttled, asking for 6 h).
    let (record, f) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::Throttled, Some(6 * 3600)),
        due,
        &policy(),
    );
    // The credential still works: Refreshing, Ready, the error beside it — never Failed.
    assert_eq!(record.phase, Phase::Refreshing);
    assert!(record.ready);
    assert_eq!(record.reason, Reason::Throttled);
    assert_eq!(record.error, "Throttled from Azure");
    assert!(
        record.message.contains("valid until 2026-01-01T15:00:00Z"),
        "{}",
        record.message
    );
    assert_eq!(record.consecutive_failures, 1);
    // The facts of the working credential stay in status.
    assert_eq!(record.expiry, Some(ts("2026-01-01T15:00:00Z")));
    // Retry-After of 6 h would let the token lapse: the retry is before expiry instead, and
    // it is what status shows as the next planned action.
    assert!(f.retry_at < ts("2026-01-01T15:00:00Z") && f.retry_at > due);
    assert_eq!(record.next_refresh, Some(f.retry_at));
    // While backing off, the decision waits (no Mint, never a delete of the secret).
    let failing = after(&o, &record, f.clone());
    let half_second = add(due, std::time::Duration::from_millis(500));
    let d = decide(&failing, half_second, &policy());
    assert_eq!(d.plan, Plan::Wait, "{d:?}");
    assert_eq!(
        d.record, record,
        "the record in memory is the status written"
    );
    assert_eq!(d.requeue, Some(f.retry_at));
    // Once the backoff has passed, it mints again, still showing the failure.
    let d = decide(&failing, f.retry_at, &policy());
    assert!(matches!(d.plan, Plan::Mint { .. }));
    assert_eq!(d.record.phase, Phase::Refreshing);
    // Refresh failures are named as such; a first mint's as a failure to issue.
    assert_eq!(MintReason::Due.failure_event(), Reason::TokenRefreshFailed);
    assert_eq!(
        MintReason::Missing.failure_event(),
        Reason::TokenIssueFailed
    );
}

#[test]
fn a_failing_refresh_becomes_failed_when_the_token_expires() {
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    let late = ts("2026-01-01T14:59:50Z");
    let request = request_at(&o, late);
    let (record, f) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::AzureUnavailable, None),
        late,
        &policy(),
    );
    assert_eq!(record.phase, Phase::Refreshing);
    assert!(f.retry_at < ts("2026-01-01T15:00:00Z"), "{}", f.retry_at);
    let failing = after(&o, &record, f.clone());
    // Still backing off, but the token expired meanwhile: status follows at once.
    let expired = ts("2026-01-01T15:00:00Z");
    let mut f_later = f;
    f_later.retry_at = ts("2026-01-01T15:00:30Z");
    let mut failing = failing;
    failing.last_failure = Some(f_later);
    let d = decide(&failing, expired, &policy());
    let Plan::WriteStatus(now_failed) = &d.plan else {
        panic!("{d:?}")
    };
    assert_eq!(now_failed.phase, Phase::Failed);
    assert!(!now_failed.ready);
    assert_eq!(now_failed.reason, Reason::AzureUnavailable);
}

#[test]
fn a_first_mint_failure_is_failed_and_says_nothing_was_issued() {
    let o = observed(Spec::V1beta2(v2_managed()));
    let d = decide(&o, now(), &policy());
    assert_eq!(
        (d.record.phase, d.record.reason),
        (Phase::Exchanging, Reason::NoPullSecret)
    );
    let request = request_at(&o, now());
    let (record, f) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::Throttled, None),
        now(),
        &policy(),
    );
    assert_eq!(record.phase, Phase::Failed);
    assert!(!record.ready);
    assert_eq!(record.message, "Throttled from Azure");
    assert_eq!(record.last_refresh, None);
    assert_eq!(f.failures, 1);
    // Retrying keeps the failed record (no Failed → Exchanging → Failed flapping).
    let failing = after(&o, &record, f.clone());
    assert_eq!(decide(&failing, f.retry_at, &policy()).record, record);
}

#[test]
fn a_rejected_credential_is_failed_even_with_a_valid_token() {
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    let due = o.binding.status.next_refresh.unwrap();
    let request = request_at(&o, due);
    let (record, _) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::ScopeNotGranted, None),
        due,
        &policy(),
    );
    assert_eq!(record.phase, Phase::Failed);
    assert_eq!(record.verified, Some(false));
    assert!(!record.ready);
}

#[test]
fn retries_are_in_the_future_and_whole_seconds() {
    // A mint that took long (its pass started long before): the retry is computed from when
    // the failure happened, so neither it nor nextRefreshTime is ever in the past.
    let o = observed(Spec::V1beta2(v2_managed()));
    let request = request_at(&o, now());
    let failed_at = ts("2026-01-01T12:00:59.7Z");
    let (record, f) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::Throttled, None),
        failed_at,
        &policy(),
    );
    assert!(f.retry_at > failed_at, "{}", f.retry_at);
    assert_eq!(f.retry_at.subsec_nanosecond(), 0);
    assert_eq!(record.next_refresh, Some(f.retry_at));
}

#[test]
fn backoff_grows_per_binding() {
    let o = observed(Spec::V1beta2(v2_managed()));
    let request = request_at(&o, now());
    let mut last = Timestamp::MIN;
    let mut o2 = o.clone();
    for failures in 0..6u32 {
        o2.binding.status.consecutive_failures = failures;
        let (record, f) = after_mint_failure(
            &o2,
            &request,
            &failure(Reason::AzureUnavailable, None),
            now(),
            &policy(),
        );
        assert_eq!(record.consecutive_failures, failures + 1);
        assert!(f.retry_at > last, "backoff grows");
        last = f.retry_at;
    }
    assert!(
        last <= add(
            now(),
            policy().backoff_cap + std::time::Duration::from_secs(1)
        )
    );
}

#[test]
fn a_binding_recovering_from_a_failure_says_why_it_is_ready() {
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    let due = o.binding.status.next_refresh.unwrap();
    let request = request_at(&o, due);
    let (record, f) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::Throttled, None),
        due,
        &policy(),
    );
    let mut recovered = after(&o, &record, f);
    // The retry succeeded: the shell forgets the failure and the secret holds a new token.
    recovered.last_failure = None;
    recovered.secrets[0].refresh = Some(add(due, std::time::Duration::from_secs(3)));
    recovered.secrets[0].expiry = Some(ts("2026-01-01T18:00:00Z"));
    let d = decide(
        &recovered,
        add(due, std::time::Duration::from_secs(4)),
        &policy(),
    );
    let Plan::WriteStatus(s) = &d.plan else {
        panic!("{d:?}")
    };
    assert_eq!((s.phase, s.reason), (Phase::Ready, Reason::TokenIssued));
    assert!(s.error.is_empty() && s.consecutive_failures == 0);
}

#[test]
fn last_refresh_is_when_the_token_was_written_and_the_boundary_follows_its_issue() {
    // A token from the pipeline's cache, issued 20 minutes before it was written.
    let mut o = ready(observed(Spec::V1beta2(v2_managed())));
    o.secrets[0].issued = Some(ts("2026-01-01T11:30:00Z"));
    o.secrets[0].refresh = Some(ts("2026-01-01T11:50:00Z"));
    o.secrets[0].expiry = Some(ts("2026-01-01T12:30:00Z"));
    let d = decide(&o, ts("2026-01-01T11:50:10Z"), &policy());
    let Plan::WriteStatus(s) = &d.plan else {
        panic!("{d:?}")
    };
    // Status never claims a refresh older than the Secret it describes.
    assert_eq!(s.last_refresh, Some(ts("2026-01-01T11:50:00Z")));
    // The refresh is at the token's own half-life (12:00, minus jitter), not 75 % of it.
    let next = s.next_refresh.unwrap();
    assert!(
        next <= ts("2026-01-01T12:00:00Z") && next > ts("2026-01-01T11:56:00Z"),
        "{next}"
    );
}

#[test]
fn same_failure_twice_is_not_rewritten() {
    let mut o = observed(Spec::V1beta2(V1beta2Spec {
        server: "evil.com".into(),
        ..v2_managed()
    }));
    let Plan::Fail(status) = decide(&o, now(), &policy()).plan else {
        panic!()
    };
    o.binding.status = StatusView {
        phase: Some(status.phase),
        error: status.error.clone(),
        last_refresh: None,
        expiry: None,
        next_refresh: status.next_refresh,
        consecutive_failures: status.consecutive_failures,
        observed_generation: Some(1),
        ready: Some((false, Some(status.reason), status.message.clone())),
        verified: status.verified,
        permitted: None,
        kept: StatusFields::ALL,
    };
    let d = decide(&o, now(), &policy());
    assert!(matches!(d.plan, Plan::Wait), "no status write loop: {d:?}");
}

#[test]
fn phase_names_round_trip() {
    for p in Phase::ALL {
        assert_eq!(Phase::parse(p.as_str()), Some(p));
    }
    assert_eq!(Phase::parse("Bogus"), None);
}

#[test]
fn clean_path_matches_go() {
    use crate::state::binding::clean_path;
    for (input, want) in [
        ("", "."),
        ("/", "/"),
        ("/a//b/", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("a/../..", ".."),
        ("/../a", "/a"),
        ("abc", "abc"),
    ] {
        assert_eq!(clean_path(input), want, "{input:?}");
    }
}

#[test]
fn verification_outcome_reaches_status_and_scope_gaps_fail() {
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    assert_eq!(o.binding.status.verified, Some(true));
    // A secret minted without verification (flag off, or the old controller's) has no
    // CredentialVerified condition; changing that is a status write.
    let mut unverified = o.clone();
    unverified.secrets[0].verified = None;
    let Plan::WriteStatus(s) = decide(&unverified, now(), &policy()).plan else {
        panic!()
    };
    assert_eq!(s.verified, None);
    // The registry did not grant the scope: Failed with verified=false, secret untouched.
    let request = request_at(&o, o.binding.status.next_refresh.unwrap());
    let (status, _) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::ScopeNotGranted, None),
        now(),
        &policy(),
    );
    assert_eq!(status.verified, Some(false));
    assert!(!status.ready);
    let (status, _) = after_mint_failure(
        &o,
        &request,
        &failure(Reason::Throttled, None),
        now(),
        &policy(),
    );
    assert_eq!(
        status.verified,
        Some(true),
        "a transient failure keeps the last outcome"
    );
}

#[test]
fn a_token_is_never_refreshed_right_after_minting() {
    // Azure handed out a token that is already past its boundary (clock skew, tiny
    // lifetime): no mint loop — the next refresh waits at least MIN_REFRESH_INTERVAL.
    let mut o = ready(observed(Spec::V1beta2(v2_managed())));
    o.secrets[0].refresh = Some(now());
    o.secrets[0].expiry = Some(now());
    assert!(
        !matches!(decide(&o, now(), &policy()).plan, Plan::Mint { .. }),
        "minted just now"
    );
    let later = add(now(), MIN_REFRESH_INTERVAL);
    assert!(matches!(
        decide(&o, later, &policy()).plan,
        Plan::Mint { .. }
    ));
    // v1beta1 with a 2-minute token: due after about a minute, not at once.
    let mut o = ready(observed(Spec::V1beta1(v1(CID, ""))));
    o.secrets[0].refresh = Some(now());
    o.secrets[0].expiry = Some(add(now(), std::time::Duration::from_secs(120)));
    assert!(!matches!(
        decide(
            &o,
            add(now(), std::time::Duration::from_secs(30)),
            &policy()
        )
        .plan,
        Plan::Mint { .. }
    ));
    assert!(matches!(
        decide(
            &o,
            add(now(), std::time::Duration::from_secs(61)),
            &policy()
        )
        .plan,
        Plan::Mint { .. }
    ));
}

#[test]
fn v1beta1_names_too_long_for_their_secret_fail_before_any_token_call() {
    let mut o = observed(Spec::V1beta1(v1(CID, "")));
    o.binding.name = "n".repeat(235);
    failed_with(
        &decide(&o, now(), &policy()),
        "InvalidSpec",
        "at most 234 characters",
    );
    o.binding.name = "n".repeat(234);
    let d = decide(&o, now(), &policy());
    let Plan::Mint { request, .. } = &d.plan else {
        panic!("{d:?}")
    };
    assert_eq!(request.secret_name.len(), 253);
}

#[test]
fn status_times_are_whole_seconds_so_a_read_back_status_matches() {
    // A status written and read back (RFC 3339, seconds) must not be rewritten: the
    // planned next refresh is already truncated to the second.
    let o = ready(observed(Spec::V1beta2(v2_managed())));
    let next = o.binding.status.next_refresh.unwrap();
    assert_eq!(next.subsec_nanosecond(), 0, "{next}");
    let round_tripped: Timestamp = crate::k8s::binding::rfc3339(next).parse().unwrap();
    assert_eq!(round_tripped, next);
    assert_eq!(decide(&o, now(), &policy()).plan, Plan::Wait);
}

// ---- SPEC §12: allow-lists and tenancy policies ----

fn enforce() -> Policy {
    Policy {
        tenancy_mode: Mode::Enforce,
        ..policy()
    }
}

fn audit() -> Policy {
    Policy {
        tenancy_mode: Mode::Audit,
        ..policy()
    }
}

/// `ns` may use identity CID on example.azurecr.io with pull.
fn ns_policy() -> TenancyPolicy {
    TenancyPolicy {
        name: "team-ns".into(),
        namespace_names: vec!["ns".into()],
        managed_client_ids: vec![CID.into()],
        workload_identities: vec![(CID.into(), TID.into())],
        registries: vec!["example.azurecr.io".into()],
        actions: vec!["pull".into()],
        ..Default::default()
    }
}

fn with_policies(mut o: Observed, policies: Vec<TenancyPolicy>) -> Observed {
    o.tenancy = Some(TenancyView {
        policies: std::sync::Arc::new(policies),
        namespace_labels: Some(Default::default()),
    });
    o
}

#[test]
fn push_delete_and_wildcard_actions_are_refused_in_every_mode_unless_allowed() {
    for mode in [Mode::Off, Mode::Audit, Mode::Enforce] {
        for scope in [
            "repository:app:pull,push",
            "repository:app:delete",
            "repository:app:*",
            "repository:app:pull repository:other:metadata_write",
            "registry:catalog:*",
        ] {
            let spec = V1beta2Spec {
                scope: scope.into(),
                ..v2_managed()
            };
            let o = with_policies(observed(Spec::V1beta2(spec)), vec![ns_policy()]);
            let p = Policy {
                tenancy_mode: mode,
                ..policy()
            };
            failed_with(
                &decide(&o, now(), &p),
                "ActionNotAllowed",
                "--allowed-scope-actions",
            );
        }
    }
    // v1beta1 too; metadata_read is a pull client's read.
    let o = observed(Spec::V1beta1(V1beta1Spec {
        scope: "repository:app:push".into(),
        ..v1(CID, "")
    }));
    failed_with(
        &decide(&o, now(), &policy()),
        "ActionNotAllowed",
        "\"push\"",
    );
    let o = observed(Spec::V1beta2(V1beta2Spec {
        scope: "repository:app:pull,metadata_read".into(),
        ..v2_managed()
    }));
    assert!(matches!(
        decide(&o, now(), &policy()).plan,
        Plan::Mint { .. }
    ));
    // The operator may allow more.
    let o = observed(Spec::V1beta2(V1beta2Spec {
        scope: "repository:app:pull,push".into(),
        ..v2_managed()
    }));
    let p = Policy {
        allowed_actions: AllowedActions::new(["pull", "push"]),
        ..policy()
    };
    assert!(matches!(decide(&o, now(), &p).plan, Plan::Mint { .. }));
}

#[test]
fn a_binding_outside_every_policy_is_refused_in_enforce_flagged_in_audit_and_unchanged_in_off() {
    let other_identity = V1beta2Spec {
        managed: Some(("99999999-9999-9999-9999-999999999999".into(), String::new())),
        ..v2_managed()
    };
    let other_registry = V1beta2Spec {
        server: "otherteam.azurecr.io".into(),
        ..v2_managed()
    };
    for (what, spec, needle) in [
        (
            "identity",
            other_identity,
            "managed identity client id 9999",
        ),
        (
            "registry",
            other_registry,
            "registry otherteam.azurecr.io is not listed",
        ),
    ] {
        let o = with_policies(observed(Spec::V1beta2(spec)), vec![ns_policy()]);
        // off: policies are not even looked at.
        assert!(
            matches!(decide(&o, now(), &policy()).plan, Plan::Mint { .. }),
            "{what}"
        );
        assert_eq!(decide(&o, now(), &policy()).record.permitted, None);
        // enforce: refused before any Azure call, the policy named.
        let d = decide(&o, now(), &enforce());
        failed_with(&d, "NotPermitted", "AcrPullPolicy team-ns");
        failed_with(&d, "NotPermitted", needle);
        assert_eq!(d.record.permitted.as_ref().map(|p| p.0), Some(false));
        // audit: served, flagged.
        let d = decide(&o, now(), &audit());
        assert!(matches!(d.plan, Plan::Mint { .. }), "{what}: {d:?}");
        let (ok, message) = d.record.permitted.clone().expect("flagged");
        assert!(
            !ok && message.contains("audit") && message.contains(needle),
            "{message}"
        );
    }
    // Permitted: the condition names the policy.
    let o = with_policies(observed(Spec::V1beta2(v2_managed())), vec![ns_policy()]);
    let d = decide(&o, now(), &enforce());
    assert!(matches!(d.plan, Plan::Mint { .. }), "{d:?}");
    assert_eq!(
        d.record.permitted,
        Some((true, "permitted by AcrPullPolicy team-ns".into()))
    );
    // No policy at all: refused in enforce.
    let o = with_policies(observed(Spec::V1beta2(v2_managed())), vec![]);
    failed_with(
        &decide(&o, now(), &enforce()),
        "NotPermitted",
        "no AcrPullPolicy covers namespace ns",
    );
}

#[test]
fn workload_identity_pairs_and_unscoped_v1beta1_credentials() {
    // The pair from the ServiceAccount annotations is what is checked.
    let mut o = with_policies(
        observed(Spec::V1beta2(v2_workload(false))),
        vec![ns_policy()],
    );
    o.workload_service_account = Some(ServiceAccountView {
        name: "fed".into(),
        client_id_annotation: Some(CID.into()),
        tenant_id_annotation: Some("contoso.onmicrosoft.com".into()),
        ..Default::default()
    });
    failed_with(
        &decide(&o, now(), &enforce()),
        "NotPermitted",
        "in tenant contoso.onmicrosoft.com",
    );
    o.workload_service_account
        .as_mut()
        .unwrap()
        .tenant_id_annotation = Some(TID.into());
    assert!(matches!(
        decide(&o, now(), &enforce()).plan,
        Plan::Mint { .. }
    ));
    // Unscoped: fine in off, flagged in audit, refused in enforce unless the policy allows it.
    let unscoped = V1beta1Spec {
        scope: String::new(),
        ..v1(CID, "")
    };
    let o = with_policies(observed(Spec::V1beta1(unscoped)), vec![ns_policy()]);
    assert!(matches!(
        decide(&o, now(), &policy()).plan,
        Plan::Mint { .. }
    ));
    let d = decide(&o, now(), &audit());
    assert!(matches!(d.plan, Plan::Mint { .. }));
    assert!(d.record.permitted.unwrap().1.contains("unscoped"));
    failed_with(&decide(&o, now(), &enforce()), "NotPermitted", "unscoped");
    let lenient = TenancyPolicy {
        allow_unscoped: true,
        ..ns_policy()
    };
    let o = with_policies(o, vec![lenient]);
    assert!(matches!(
        decide(&o, now(), &enforce()).plan,
        Plan::Mint { .. }
    ));
}

#[test]
fn losing_permission_revokes_the_credential_step_by_step_then_fails() {
    let granted = with_policies(
        ready(observed(Spec::V1beta2(v2_managed()))),
        vec![ns_policy()],
    );
    // Ready and permitted: the condition is written once, then nothing to do.
    let d = decide(&granted, now(), &enforce());
    let Plan::WriteStatus(r) = &d.plan else {
        panic!("{d:?}")
    };
    assert_eq!(
        r.permitted,
        Some((true, "permitted by AcrPullPolicy team-ns".into()))
    );
    // The policy is edited: the registry is no longer listed.
    let narrowed = TenancyPolicy {
        registries: vec!["elsewhere.azurecr.io".into()],
        ..ns_policy()
    };
    let mut o = with_policies(granted.clone(), vec![narrowed.clone()]);
    let d = decide(&o, now(), &enforce());
    assert_eq!(
        d.plan,
        Plan::Revoke(ExtraneousStep::Detach {
            service_account: "puller".into(),
            pull_secrets: vec![],
        }),
        "{d:?}"
    );
    assert_eq!(
        (d.record.phase, d.record.reason),
        (Phase::Failed, Reason::NotPermitted)
    );
    // Detached: the secret is deleted next.
    o.target_service_account
        .as_mut()
        .unwrap()
        .pull_secrets
        .clear();
    o.referencing_service_accounts.clear();
    let d = decide(&o, now(), &enforce());
    assert_eq!(
        d.plan,
        Plan::Revoke(ExtraneousStep::Delete("acr-pull-app".into()))
    );
    // Gone: the failure is recorded, without the revoked credential's times.
    o.secrets.clear();
    let d = decide(&o, now(), &enforce());
    failed_with(
        &d,
        "NotPermitted",
        "registry example.azurecr.io is not listed",
    );
    assert_eq!((d.record.expiry, d.record.last_refresh), (None, None));
    // Audit mode never revokes: the binding stays served and is flagged.
    let o = with_policies(granted.clone(), vec![narrowed]);
    let d = decide(&o, now(), &audit());
    let Plan::WriteStatus(r) = &d.plan else {
        panic!("{d:?}")
    };
    assert!(
        r.ready && r.permitted.as_ref().is_some_and(|p| !p.0),
        "{r:?}"
    );
    // The policy restored: minted again.
    let mut o = with_policies(o, vec![ns_policy()]);
    o.secrets.clear();
    o.target_service_account
        .as_mut()
        .unwrap()
        .pull_secrets
        .clear();
    assert!(matches!(
        decide(&o, now(), &enforce()).plan,
        Plan::Mint { .. }
    ));
}

#[test]
fn no_decision_and_no_revocation_while_the_namespace_is_unknown() {
    let mut o = with_policies(ready(observed(Spec::V1beta2(v2_managed()))), vec![]);
    o.tenancy.as_mut().unwrap().namespace_labels = None;
    let d = decide(&o, now(), &enforce());
    assert_eq!(d.plan, Plan::Wait, "{d:?}");
    // Policies not gathered at all: the same.
    o.tenancy = None;
    assert_eq!(decide(&o, now(), &enforce()).plan, Plan::Wait);
    // A scope action the operator does not allow also revokes (a definite decision, not a
    // cache gap), as does an air-gapped authority not listed.
    let mut o = ready(observed(Spec::V1beta2(v2_managed())));
    o.binding.spec = Spec::V1beta2(V1beta2Spec {
        scope: "repository:app:push".into(),
        ..v2_managed()
    });
    assert!(matches!(decide(&o, now(), &policy()).plan, Plan::Revoke(_)));
}

#[test]
fn a_tenant_id_cannot_be_a_path_segment_trick() {
    for tenant in ["..", ".", "a..b", ".contoso.com", "contoso.com."] {
        let spec = V1beta2Spec {
            workload: Some(WorkloadSpec {
                service_account_ref: "fed".into(),
                client_id: CID.into(),
                tenant_id: tenant.into(),
            }),
            managed: None,
            ..v2_managed()
        };
        let o = observed(Spec::V1beta2(spec));
        failed_with(&decide(&o, now(), &policy()), "InvalidSpec", "tenant id");
    }
}

/// The status as an API server with the old controller's CRD stores it: only
/// `lastTokenRefreshTime`, `tokenExpirationTime` and `error` survive a write of `record`.
fn pruned_to_old_crd(record: &Record) -> StatusView {
    StatusView {
        error: record.error.clone(),
        last_refresh: record.last_refresh,
        expiry: record.expiry,
        kept: StatusFields::of(&["lastTokenRefreshTime", "tokenExpirationTime", "error"]),
        ..StatusView::default()
    }
}

#[test]
fn with_the_old_crd_a_status_it_keeps_is_not_rewritten() {
    for spec in [Spec::V1beta2(v2_managed()), Spec::V1beta1(v1(CID, ""))] {
        let mut o = ready(observed(spec));
        let Plan::Wait = decide(&o, now(), &policy()).plan else {
            panic!("converged binding must wait");
        };
        // What the first status write left once pruned: the desired record is written once...
        let written = decide(&o, now(), &policy()).record;
        o.binding.status = StatusView {
            kept: StatusFields::of(&["lastTokenRefreshTime", "tokenExpirationTime", "error"]),
            ..StatusView::default()
        };
        assert!(
            matches!(decide(&o, now(), &policy()).plan, Plan::WriteStatus(_)),
            "the old fields are missing: written once"
        );
        // ...and then never again, although phase and conditions can never be read back.
        o.binding.status = pruned_to_old_crd(&written);
        let d = decide(&o, now(), &policy());
        assert_eq!(d.plan, Plan::Wait, "{d:?}");
        assert_eq!(d.record.phase, Phase::Ready);
        // A changed field the old CRD keeps is still written.
        o.binding.status.error = "old error".into();
        assert!(matches!(
            decide(&o, now(), &policy()).plan,
            Plan::WriteStatus(_)
        ));
    }
}

#[test]
fn with_the_old_crd_a_spec_failure_is_written_once() {
    let mut o = observed(Spec::V1beta2(V1beta2Spec {
        server: "registry.example.com".into(),
        ..v2_managed()
    }));
    o.binding.status.kept =
        StatusFields::of(&["lastTokenRefreshTime", "tokenExpirationTime", "error"]);
    let Plan::Fail(record) = decide(&o, now(), &policy()).plan else {
        panic!("a disallowed registry fails")
    };
    o.binding.status = pruned_to_old_crd(&record);
    let d = decide(&o, now(), &policy());
    assert_eq!(d.plan, Plan::Wait, "no status write loop: {d:?}");
    assert_eq!(d.record.phase, Phase::Failed);
}

#[test]
fn without_a_status_subresource_nothing_is_written() {
    let mut o = ready(observed(Spec::V1beta2(v2_managed())));
    o.binding.status = StatusView {
        kept: StatusFields::NONE,
        ..StatusView::default()
    };
    assert_eq!(decide(&o, now(), &policy()).plan, Plan::Wait);
}

/// A Secret as the old controller wrote it: its hash in `token.inputs`, no `token.inputs-all`.
fn old_controller_secret(o: &Observed) -> SecretView {
    let stat = validate(&o.binding.name, &o.binding.spec, &policy()).unwrap();
    SecretView {
        inputs: Some(stat.legacy_inputs_hash.clone()),
        inputs_all: None,
        verified: None,
        ..secret_for(
            o,
            &secret_name(o),
            "2026-01-01T11:50:00Z",
            "2026-01-01T15:00:00Z",
        )
    }
}

fn secret_name(o: &Observed) -> String {
    crate::state::names::expected_secret_name(o.binding.version, &o.binding.name)
}

/// A Secret as acrpull writes it: both hashes.
fn acrpull_secret(o: &Observed) -> SecretView {
    let stat = validate(&o.binding.name, &o.binding.spec, &policy()).unwrap();
    SecretView {
        inputs: Some(stat.legacy_inputs_hash.clone()),
        inputs_all: Some(stat.inputs_hash.clone()),
        ..secret_for(
            o,
            &secret_name(o),
            "2026-01-01T11:50:00Z",
            "2026-01-01T15:00:00Z",
        )
    }
}

fn with_secret(mut o: Observed, secret: SecretView) -> Observed {
    let name = secret_name(&o);
    o.secrets = vec![secret];
    let target = o.target_service_account.as_mut().unwrap();
    target.pull_secrets = vec![name];
    o.referencing_service_accounts = vec![target.clone()];
    o.workload_service_account = Some(ServiceAccountView {
        name: "fed".into(),
        client_id_annotation: Some(CID.into()),
        tenant_id_annotation: Some(TID.into()),
        ..Default::default()
    });
    o
}

fn minted(d: &Decision) -> Option<MintReason> {
    match &d.plan {
        Plan::Mint { reason, .. } => Some(*reason),
        _ => None,
    }
}

#[test]
fn the_old_controllers_secret_of_a_workload_identity_binding_with_ids_is_kept() {
    // Its hash ignored clientID/tenantID; the full hash does not: still current.
    let o = observed(Spec::V1beta2(v2_workload(true)));
    let stat = validate(&o.binding.name, &o.binding.spec, &policy()).unwrap();
    assert_ne!(stat.inputs_hash, stat.legacy_inputs_hash);
    let o = with_secret(o.clone(), old_controller_secret(&o));
    let d = decide(&o, now(), &policy());
    assert_eq!(minted(&d), None, "{d:?}");
    assert!(matches!(d.plan, Plan::WriteStatus(_)), "{d:?}");
}

#[test]
fn a_secret_acrpull_wrote_is_current_until_an_input_changes() {
    for spec in [
        Spec::V1beta2(v2_workload(true)),
        Spec::V1beta2(v2_managed()),
        Spec::V1beta1(v1(CID, "")),
    ] {
        let o = observed(spec.clone());
        let secret = acrpull_secret(&o);
        let o = with_secret(o, secret.clone());
        assert_eq!(minted(&decide(&o, now(), &policy())), None, "{spec:?}");
        // A hand edit of either annotation re-mints.
        for tampered in [
            SecretView {
                inputs: Some("tampered".into()),
                ..secret.clone()
            },
            SecretView {
                inputs_all: Some("tampered".into()),
                ..secret.clone()
            },
        ] {
            let mut o = o.clone();
            o.secrets = vec![tampered];
            assert_eq!(
                minted(&decide(&o, now(), &policy())),
                Some(MintReason::InputsChanged),
                "{spec:?}"
            );
        }
    }
    // A changed clientID (which the old controller's hash ignores) re-mints a Secret acrpull
    // wrote: its token.inputs-all says which ids it was minted for.
    let o = observed(Spec::V1beta2(v2_workload(true)));
    let secret = acrpull_secret(&o);
    let mut changed = v2_workload(true);
    changed.workload.as_mut().unwrap().client_id = "aaaaaaaa-0000-4000-8000-000000000009".into();
    let o = with_secret(observed(Spec::V1beta2(changed)), secret);
    assert_eq!(
        minted(&decide(&o, now(), &policy())),
        Some(MintReason::InputsChanged)
    );
}

#[test]
fn the_identity_audience_annotation_selects_the_audience_and_re_mints_once() {
    for value in ["container-registry", " resource-manager "] {
        let mut spec = v2_managed();
        spec.identity_audience = Some(value.into());
        let o = observed(Spec::V1beta2(spec));
        let stat = validate(&o.binding.name, &o.binding.spec, &policy()).unwrap();
        let want = if value.contains("container") {
            TokenAudience::ContainerRegistry
        } else {
            TokenAudience::ResourceManager
        };
        assert_eq!(stat.audience, Some(want));
        // Set, it is an input: the old controller's Secret is not current any more (the token
        // was requested for the other audience), acrpull's own is.
        let plain = observed(Spec::V1beta2(v2_managed()));
        let o2 = with_secret(o.clone(), old_controller_secret(&plain));
        assert_eq!(
            minted(&decide(&o2, now(), &policy())),
            Some(MintReason::InputsChanged)
        );
        let o3 = with_secret(o.clone(), acrpull_secret(&o));
        assert_eq!(minted(&decide(&o3, now(), &policy())), None);
        // The request carries it.
        let o4 = observed(o.binding.spec.clone());
        let Plan::Mint { request, .. } = decide(&o4, now(), &policy()).plan else {
            panic!("a first mint")
        };
        assert_eq!(request.audience, Some(want));
    }
    // Absent: the controller's default, and the old hashes stand.
    let o = observed(Spec::V1beta1(v1(CID, "")));
    let stat = validate(&o.binding.name, &o.binding.spec, &policy()).unwrap();
    assert_eq!(stat.audience, None);
    assert_eq!(stat.inputs_hash, stat.legacy_inputs_hash);
    // v1beta1 bindings may carry it too.
    let mut spec = v1(CID, "");
    spec.identity_audience = Some("container-registry".into());
    let stat = validate("app", &Spec::V1beta1(spec), &policy()).unwrap();
    assert_eq!(stat.audience, Some(TokenAudience::ContainerRegistry));
    assert_ne!(stat.inputs_hash, stat.legacy_inputs_hash);
}

#[test]
fn an_unknown_identity_audience_fails_the_binding_before_any_token_call() {
    let mut spec = v2_managed();
    spec.identity_audience = Some("arm".into());
    let d = decide(&observed(Spec::V1beta2(spec)), now(), &policy());
    failed_with(
        &d,
        "InvalidSpec",
        "annotation acr.microsoft.com/identity-audience: \"arm\" is not resource-manager or container-registry",
    );
}
