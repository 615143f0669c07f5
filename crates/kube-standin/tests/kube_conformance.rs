//! kube-rs against the stand-in: the requests a kube-runtime controller makes, with the answers
//! a real API server gives.

mod common;

use std::time::Duration;

use common::{client_for, install_crds, namespace, start, start_with, v1beta1, v1beta2, T};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use kube_standin::StandIn;
use serde_json::json;

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn core_crud_conflicts_and_noops() {
    let (h, c) = start().await;
    namespace(&h, "crud");
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "crud");
    let mut s = Secret::default();
    s.metadata.name = Some("s1".into());
    s.string_data = Some([("k".to_string(), "v".to_string())].into());
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert_eq!(created.data.as_ref().unwrap()["k"].0, b"v");
    assert!(created.string_data.is_none());
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    // 404 with proper details; 409 AlreadyExists.
    assert_eq!(
        api_err(secrets.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
    assert_eq!(
        api_err(
            secrets
                .create(&PostParams::default(), &s)
                .await
                .unwrap_err()
        )
        .0,
        409
    );

    // A no-op replace keeps the RV; a real change bumps it; the stale RV then conflicts.
    let same = secrets
        .replace("s1", &PostParams::default(), &created)
        .await
        .unwrap();
    assert_eq!(same.resource_version(), created.resource_version());
    let mut changed = created.clone();
    changed
        .data
        .as_mut()
        .unwrap()
        .insert("x".into(), k8s_openapi::ByteString(b"y".to_vec()));
    let updated = secrets
        .replace("s1", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(updated.resource_version(), created.resource_version());
    let (code, reason) = api_err(
        secrets
            .replace("s1", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // A write into a missing namespace is 404; generateName works; dryRun does not persist.
    let missing: Api<Secret> = Api::namespaced(c.clone(), "missing");
    assert_eq!(
        api_err(
            missing
                .create(&PostParams::default(), &s)
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    let mut g = Secret::default();
    g.metadata.generate_name = Some("gen-".into());
    let gen = secrets.create(&PostParams::default(), &g).await.unwrap();
    assert!(gen.name_any().starts_with("gen-") && gen.name_any().len() == 9);
    let mut d = Secret::default();
    d.metadata.name = Some("dry".into());
    secrets
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &d,
        )
        .await
        .unwrap();
    assert!(secrets.get_opt("dry").await.unwrap().is_none());

    // Delete, then it is gone.
    secrets
        .delete("s1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(secrets.get_opt("s1").await.unwrap().is_none());
    h.shutdown();
}

#[tokio::test]
async fn crds_status_subresource_generation_and_pruning() {
    let (h, c) = start().await;
    namespace(&h, "crs");
    install_crds(&h).await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd = crds
        .get("acrpullbindings.acrpull.microsoft.com")
        .await
        .unwrap();
    let conds = crd.status.unwrap().conditions.unwrap();
    assert!(conds
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True"));

    let api: Api<v1beta2::AcrPullBinding> = Api::namespaced(c.clone(), "crs");
    let mut b = v1beta2::AcrPullBinding::new(
        "b1",
        v1beta2::BindingSpec {
            server: "r.azurecr.io".into(),
            scope: "repository:a:pull".into(),
            service_account_name: "sa".into(),
        },
    );
    b.status = Some(v1beta2::BindingStatus {
        phase: Some("Dropped".into()),
        observed_generation: None,
    });
    let created = api.create(&PostParams::default(), &b).await.unwrap();
    assert!(created.status.is_none(), "create drops status");
    assert_eq!(created.metadata.generation, Some(1));

    // Status writes through every patch type; none bumps generation.
    let pp = PatchParams::default();
    let s1 = api
        .patch_status(
            "b1",
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Pending", "bogus": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(
        s1.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    let raw = h
        .get(
            "acrpull.microsoft.com/v1beta2",
            "AcrPullBinding",
            "crs",
            "b1",
        )
        .unwrap();
    assert!(
        raw["status"].get("bogus").is_none(),
        "unknown status fields are pruned"
    );
    assert_eq!(s1.metadata.generation, Some(1));
    let s2 = api
        .patch_status(
            "b1",
            &pp,
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/status/phase", "value": "Ready"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(s2.status.unwrap().phase.as_deref(), Some("Ready"));
    let ssa = PatchParams::apply("standin-test").force();
    let s3 = api
        .patch_status("b1", &ssa, &Patch::Apply(json!({"apiVersion": "acrpull.microsoft.com/v1beta2", "kind": "AcrPullBinding", "status": {"phase": "Applied", "observedGeneration": 1}})))
        .await
        .unwrap();
    assert_eq!(
        s3.status.as_ref().unwrap().phase.as_deref(),
        Some("Applied")
    );
    let mut with_status = s3.clone();
    with_status.status.as_mut().unwrap().phase = Some("Replaced".into());
    let s4 = api
        .replace_status("b1", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(
        s4.status.as_ref().unwrap().phase.as_deref(),
        Some("Replaced")
    );
    assert_eq!(s4.metadata.generation, Some(1));

    // A main-resource write keeps the stored status and bumps generation on spec change.
    let mut spec_change = s4.clone();
    spec_change.spec.scope = "repository:b:pull".into();
    spec_change.status = None;
    let s5 = api
        .replace("b1", &PostParams::default(), &spec_change)
        .await
        .unwrap();
    assert_eq!(s5.metadata.generation, Some(2));
    assert_eq!(s5.status.unwrap().phase.as_deref(), Some("Replaced"));
    // A metadata-only change does not bump generation.
    let s6 = api
        .patch(
            "b1",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(s6.metadata.generation, Some(2));

    // A PUT without resourceVersion is 422 for custom resources.
    let mut no_rv = s6.clone();
    no_rv.metadata.resource_version = None;
    assert_eq!(
        api_err(
            api.replace("b1", &PostParams::default(), &no_rv)
                .await
                .unwrap_err()
        )
        .0,
        422
    );

    // The other group works side by side.
    let legacy: Api<v1beta1::AcrPullBinding> = Api::namespaced(c.clone(), "crs");
    legacy
        .create(
            &PostParams::default(),
            &v1beta1::AcrPullBinding::new(
                "b1",
                v1beta1::LegacySpec {
                    acr_server: "x".into(),
                    managed_identity_client_id: "y".into(),
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        legacy
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    h.shutdown();
}

#[tokio::test]
async fn patch_types_on_the_main_resource() {
    let (h, c) = start().await;
    namespace(&h, "patch");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "patch");
    let pp = PatchParams::default();
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c".into());
    cm.data = Some([("a".to_string(), "1".to_string())].into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let m = cms
        .patch(
            "c",
            &pp,
            &Patch::Merge(json!({"data": {"a": null, "b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(m.data.unwrap(), [("b".to_string(), "2".to_string())].into());
    let s = cms
        .patch("c", &pp, &Patch::Strategic(json!({"data": {"c": "3"}})))
        .await
        .unwrap();
    assert_eq!(s.data.unwrap().len(), 2);
    // JSON patch with a failing `test` is 422.
    let bad: json_patch_ops::Ops =
        serde_json::from_value(json!([{"op": "test", "path": "/data/b", "value": "nope"}]))
            .unwrap();
    assert_eq!(
        api_err(
            cms.patch("c", &pp, &Patch::Json::<()>(bad))
                .await
                .unwrap_err()
        )
        .0,
        422
    );
    // A patch carrying a stale resourceVersion is a precondition.
    let stale = cms
        .patch(
            "c",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"d": "4"}})),
        )
        .await;
    assert_eq!(api_err(stale.unwrap_err()).0, 409);
    // Server-side apply: creates, merges, removes what the manager stops applying, conflicts.
    let ssa = PatchParams::apply("mgr-a");
    let doc = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": data});
    let a1 = cms
        .patch(
            "applied",
            &ssa,
            &Patch::Apply(doc(json!({"x": "1", "y": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(a1.data.as_ref().unwrap().len(), 2);
    assert!(a1
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .any(|m| m.manager.as_deref() == Some("mgr-a") && m.operation.as_deref() == Some("Apply")));
    let a2 = cms
        .patch("applied", &ssa, &Patch::Apply(doc(json!({"x": "1"}))))
        .await
        .unwrap();
    assert_eq!(
        a2.data.unwrap(),
        [("x".to_string(), "1".to_string())].into()
    );
    let conflict = cms
        .patch(
            "applied",
            &PatchParams::apply("mgr-b"),
            &Patch::Apply(doc(json!({"x": "other"}))),
        )
        .await;
    assert_eq!(api_err(conflict.unwrap_err()).0, 409);
    let forced = cms
        .patch(
            "applied",
            &PatchParams::apply("mgr-b").force(),
            &Patch::Apply(doc(json!({"x": "other"}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["x"], "other");
    // Apply without a field manager is 422.
    let raw = c
        .request_text(
            http::Request::patch(format!("{}/api/v1/namespaces/patch/configmaps/applied", ""))
                .header("content-type", "application/apply-patch+yaml")
                .body(serde_json::to_vec(&doc(json!({}))).unwrap())
                .unwrap(),
        )
        .await;
    assert_eq!(api_err(raw.unwrap_err()).0, 422);
    h.shutdown();
}

mod json_patch_ops {
    pub type Ops = json_patch::Patch;
}

#[tokio::test]
async fn finalizers_and_deletion() {
    let (h, c) = start().await;
    namespace(&h, "fin");
    install_crds(&h).await;
    let api: Api<v1beta2::AcrPullBinding> = Api::namespaced(c.clone(), "fin");
    let mut b = v1beta2::AcrPullBinding::new(
        "b",
        v1beta2::BindingSpec {
            server: "s".into(),
            scope: "x".into(),
            service_account_name: "sa".into(),
        },
    );
    b.metadata.finalizers = Some(vec!["acrpull.microsoft.com/finalizer".into()]);
    api.create(&PostParams::default(), &b).await.unwrap();
    let first = api.delete("b", &DeleteParams::default()).await.unwrap();
    let pending = first
        .left()
        .expect("object is kept while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let again = api
        .delete("b", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        again.resource_version(),
        pending.resource_version(),
        "second delete is a no-op"
    );
    let add = api
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["acrpull.microsoft.com/finalizer", "new"]}}),
            ),
        )
        .await;
    assert_eq!(api_err(add.unwrap_err()).0, 422);
    // Precondition mismatch is 409.
    let pre = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let mut fresh = v1beta2::AcrPullBinding::new("c", b.spec.clone());
    fresh.metadata.finalizers = None;
    api.create(&PostParams::default(), &fresh).await.unwrap();
    assert_eq!(api_err(api.delete("c", &pre).await.unwrap_err()).0, 409);
    assert!(api
        .delete("c", &DeleteParams::default())
        .await
        .unwrap()
        .is_right());
    // Removing the last finalizer deletes it; a watcher sees DELETED.
    let wp = WatchParams::default().fields("metadata.name=b");
    let mut stream = api
        .watch(&wp, &pending.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    api.patch("b", &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "acrpull.microsoft.com/finalizer"},
        {"op": "remove", "path": "/metadata/finalizers/0"}]))
    .unwrap()))
    .await
    .unwrap();
    let ev = tokio::time::timeout(T, async {
        loop {
            match stream.try_next().await.unwrap().unwrap() {
                WatchEvent::Deleted(o) => return o,
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ev.name_any(), "b");
    assert!(api.get_opt("b").await.unwrap().is_none());
    h.shutdown();
}

#[tokio::test]
async fn garbage_collection_is_asynchronous() {
    let (h, c) = start_with(StandIn::builder().gc_delay(Duration::from_millis(200))).await;
    namespace(&h, "gc");
    install_crds(&h).await;
    let api: Api<v1beta2::AcrPullBinding> = Api::namespaced(c.clone(), "gc");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "gc");
    let spec = v1beta2::BindingSpec {
        server: "s".into(),
        scope: "x".into(),
        service_account_name: "sa".into(),
    };
    let mut owners = Vec::new();
    for n in ["bg", "orphan", "fg"] {
        owners.push(
            api.create(
                &PostParams::default(),
                &v1beta2::AcrPullBinding::new(n, spec.clone()),
            )
            .await
            .unwrap(),
        );
    }
    for o in &owners {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("dep-{}", o.name_any()));
        let mut r: OwnerReference = o.controller_owner_ref(&()).unwrap();
        r.block_owner_deletion = Some(true);
        cm.metadata.owner_references = Some(vec![r]);
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    api.delete("bg", &DeleteParams::background()).await.unwrap();
    assert!(
        cms.get_opt("dep-bg").await.unwrap().is_some(),
        "GC is not inline"
    );
    h.wait_for("v1", "ConfigMap", "gc", "dep-bg", |o| o.is_none(), T)
        .await
        .unwrap();

    api.delete("orphan", &DeleteParams::orphan()).await.unwrap();
    h.wait_for(
        "acrpull.microsoft.com/v1beta2",
        "AcrPullBinding",
        "gc",
        "orphan",
        |o| o.is_none(),
        T,
    )
    .await
    .unwrap();
    let orphaned = cms.get("dep-orphan").await.unwrap();
    assert!(orphaned
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());

    api.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let owner = api.get("fg").await.unwrap();
    assert!(owner
        .finalizers()
        .contains(&"foregroundDeletion".to_string()));
    h.wait_for(
        "acrpull.microsoft.com/v1beta2",
        "AcrPullBinding",
        "gc",
        "fg",
        |o| o.is_none(),
        T,
    )
    .await
    .unwrap();
    assert!(cms.get_opt("dep-fg").await.unwrap().is_none());

    // Deleting a namespace deletes its contents, then the namespace.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    nss.delete("gc", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        nss.get("gc")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Terminating")
    );
    h.wait_for("v1", "Namespace", "", "gc", |o| o.is_none(), T)
        .await
        .unwrap();
    assert!(h.list("v1", "ConfigMap", Some("gc")).is_empty());
    h.shutdown();
}

#[tokio::test]
async fn token_request_is_signed_and_recorded() {
    let (h, c) = start().await;
    namespace(&h, "tok");
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "tok");
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("wi".into());
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["api://AzureADTokenExchange".into()],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let out = sas
        .create_token_request("wi", &PostParams::default(), &tr)
        .await
        .unwrap();
    let status = out.status.unwrap();
    let parts: Vec<&str> = status.token.split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:tok:wi");
    assert_eq!(claims["aud"][0], "api://AzureADTokenExchange");
    assert_eq!(claims["iss"], h.url());
    assert_eq!(claims["kubernetes.io"]["namespace"], "tok");
    let jwk = &h.jwks()["keys"][0];
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("ES256"), jwk["kid"].as_str())
    );
    let mut pk = vec![4u8];
    pk.extend(b64.decode(jwk["x"].as_str().unwrap()).unwrap());
    pk.extend(b64.decode(jwk["y"].as_str().unwrap()).unwrap());
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &pk)
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).unwrap(),
        )
        .expect("signature verifies with the served JWKS");
    let issued = h.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        (
            issued[0].namespace.as_str(),
            issued[0].service_account.as_str()
        ),
        ("tok", "wi")
    );
    assert_eq!(issued[0].expires_at - issued[0].issued_at, 3600);
    // Missing SA: 404; too short: 422.
    assert_eq!(
        api_err(
            sas.create_token_request("nope", &PostParams::default(), &tr)
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    let short = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(60),
            ..tr.spec.clone()
        },
        ..Default::default()
    };
    assert_eq!(
        api_err(
            sas.create_token_request("wi", &PostParams::default(), &short)
                .await
                .unwrap_err()
        )
        .0,
        422
    );
    // The OIDC discovery documents are served like a real API server's.
    let oidc: serde_json::Value = c
        .request(
            http::Request::get("/.well-known/openid-configuration")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(oidc["issuer"], h.url());
    let jwks: serde_json::Value = c
        .request(http::Request::get("/openid/v1/jwks").body(vec![]).unwrap())
        .await
        .unwrap();
    assert_eq!(jwks, h.jwks());
    h.shutdown();
}

#[tokio::test]
async fn lease_optimistic_concurrency() {
    let (h, c) = start().await;
    namespace(&h, "le");
    let leases: Api<Lease> = Api::namespaced(c.clone(), "le");
    let mut l = Lease::default();
    l.metadata.name = Some("leader".into());
    l.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
        holder_identity: Some("a".into()),
        lease_duration_seconds: Some(15),
        ..Default::default()
    });
    let created = leases.create(&PostParams::default(), &l).await.unwrap();
    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("leader", &PostParams::default(), &mine)
        .await
        .unwrap();
    mine.spec.as_mut().unwrap().holder_identity = Some("c".into());
    assert_eq!(
        api_err(
            leases
                .replace("leader", &PostParams::default(), &mine)
                .await
                .unwrap_err()
        )
        .0,
        409
    );
    // Core types accept an unconditional PUT.
    mine.metadata.resource_version = None;
    leases
        .replace("leader", &PostParams::default(), &mine)
        .await
        .unwrap();
    h.shutdown();
}

#[tokio::test]
async fn events_recorder_and_field_selectors() {
    use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
    let (h, c) = start().await;
    namespace(&h, "ev");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "ev");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("target".into());
    let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rec = Recorder::new(
        c.clone(),
        Reporter {
            controller: "standin-test".into(),
            instance: None,
        },
    );
    let ev = KEvent {
        type_: EventType::Normal,
        reason: "Tested".into(),
        note: Some("hello".into()),
        action: "Test".into(),
        secondary: None,
    };
    rec.publish(&ev, &cm.object_ref(&())).await.unwrap();
    rec.publish(&ev, &cm.object_ref(&())).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), "ev");
    let found = events
        .list(&ListParams::default().fields("regarding.name=target,reason=Tested"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(
        found.items[0].series.as_ref().map(|s| s.count),
        Some(2),
        "the recorder patched the series"
    );
    assert!(events
        .list(&ListParams::default().fields("regarding.name=other"))
        .await
        .unwrap()
        .items
        .is_empty());
    // Both API versions serve the same stored Events, as in a real cluster.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "ev");
    let seen = core
        .list(&ListParams::default().fields("involvedObject.name=target"))
        .await
        .unwrap();
    assert_eq!(seen.items.len(), 1);
    assert_eq!(seen.items[0].message.as_deref(), Some("hello"));
    // Unsupported field labels are rejected as by a real server.
    assert_eq!(
        api_err(
            events
                .list(&ListParams::default().fields("note=hello"))
                .await
                .unwrap_err()
        )
        .0,
        400
    );
    h.shutdown();
}

#[tokio::test]
async fn selectors_pagination_and_resource_versions() {
    let (h, c) = start().await;
    namespace(&h, "sel");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "sel");
    for i in 0..7 {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("cm{i}"));
        cm.metadata.labels = Some(
            [(
                "parity".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            )]
            .into(),
        );
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let even = cms
        .list(&ListParams::default().labels("parity=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    assert_eq!(
        cms.list(&ListParams::default().labels("parity in (odd),parity!=even"))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    assert_eq!(
        cms.list(&ListParams::default().fields("metadata.name=cm3"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        cms.list(&ListParams::default().fields("metadata.name!=cm3"))
            .await
            .unwrap()
            .items
            .len(),
        6
    );
    // Pagination never truncates silently.
    let p1 = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(p1.items.len(), 3);
    let token = p1.metadata.continue_.clone().unwrap();
    let p2 = cms
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(p2.items.len(), 4);
    assert!(p2.metadata.continue_.is_none());
    // Continue tokens expire with 410 once their revision is compacted away.
    cms.patch(
        "cm0",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    h.compact();
    assert_eq!(
        api_err(
            cms.list(&ListParams::default().limit(3).continue_token(&token))
                .await
                .unwrap_err()
        )
        .0,
        410
    );
    // Too large resourceVersion: 504 with the ResourceVersionTooLarge cause (kube's default
    // retry policy retries 504, so look with a client without it).
    let mut cfg = kube::Config::new(h.url().parse().unwrap());
    cfg.auth_info.token = Some(h.admin_token().to_string().into());
    cfg.default_retry = false;
    let no_retry: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "sel");
    let err = no_retry
        .list(
            &ListParams::default()
                .at("999999")
                .matching(kube::api::VersionMatch::NotOlderThan),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code, 504);
    assert_eq!(
        status.details.unwrap().causes[0].reason,
        "ResourceVersionTooLarge"
    );
    h.shutdown();
}

#[tokio::test]
async fn watch_selector_transitions_and_bookmarks() {
    let (h, c) = start_with(StandIn::builder().bookmark_interval(Duration::from_millis(100))).await;
    namespace(&h, "wt");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "wt");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("x".into());
    cm.metadata.labels = Some([("app".to_string(), "no".to_string())].into());
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let wp = WatchParams::default().labels("app=yes");
    let mut s = cms
        .watch(&wp, &created.resource_version().unwrap())
        .await
        .unwrap()
        .boxed();
    let pp = PatchParams::default();
    cms.patch(
        "x",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"app": "yes"}}})),
    )
    .await
    .unwrap();
    cms.patch("x", &pp, &Patch::Merge(json!({"data": {"k": "v"}})))
        .await
        .unwrap();
    cms.patch(
        "x",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"app": "no"}}})),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut bookmark = false;
    tokio::time::timeout(T, async {
        while seen.len() < 3 || !bookmark {
            match s.try_next().await.unwrap().unwrap() {
                WatchEvent::Added(_) => seen.push("ADDED"),
                WatchEvent::Modified(_) => seen.push("MODIFIED"),
                WatchEvent::Deleted(_) => seen.push("DELETED"),
                WatchEvent::Bookmark(_) => bookmark = true,
                WatchEvent::Error(e) => panic!("{e:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, vec!["ADDED", "MODIFIED", "DELETED"]);
    h.shutdown();
}

async fn watcher_sees(
    stream: &mut (impl futures::Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin),
    name: &str,
) -> Vec<String> {
    let mut kinds = Vec::new();
    tokio::time::timeout(T, async {
        loop {
            match stream.try_next().await {
                Ok(Some(ev)) => {
                    let (k, o) = match &ev {
                        Event::Apply(o) => ("apply", Some(o)),
                        Event::Delete(o) => ("delete", Some(o)),
                        Event::Init => ("init", None),
                        Event::InitApply(o) => ("initapply", Some(o)),
                        Event::InitDone => ("initdone", None),
                    };
                    kinds.push(k.to_string());
                    if o.is_some_and(|o| o.name_any() == name) && (k == "apply" || k == "initapply")
                    {
                        return;
                    }
                }
                Ok(None) => panic!("watcher ended"),
                Err(_) => continue,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("watcher did not see {name}; saw {kinds:?}"));
    kinds
}

#[tokio::test]
async fn watcher_list_watch_and_streaming_lists_relist_on_410() {
    let (h, c) = start().await;
    namespace(&h, "rw");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "rw");
    let mk = |n: &str| {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(n.into());
        cm
    };
    cms.create(&PostParams::default(), &mk("a")).await.unwrap();
    for (i, cfg) in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut w = watcher::watcher(cms.clone(), cfg).boxed();
        let first = watcher_sees(&mut w, "a").await;
        assert!(first.contains(&"init".to_string()));
        let name = format!("live{i}");
        cms.create(&PostParams::default(), &mk(&name))
            .await
            .unwrap();
        watcher_sees(&mut w, &name).await;
        // Compaction plus a dropped connection: the watch resumes from a compacted RV,
        // gets 410 Expired and relists.
        h.compact();
        h.faults().add(
            kube_standin::Fault::new(kube_standin::Action::Error {
                code: 410,
                message: None,
                retry_after: None,
            })
            .verb("watch")
            .namespace("rw")
            .next(1),
        );
        h.down_for(Duration::from_millis(100));
        let after = format!("after{i}");
        h.wait_until(|h| !h.is_down(), T).await.unwrap();
        cms.create(&PostParams::default(), &mk(&after))
            .await
            .unwrap();
        let kinds = watcher_sees(&mut w, &after).await;
        assert!(
            kinds.contains(&"init".to_string()),
            "relisted after 410: {kinds:?}"
        );
        h.faults().clear();
    }
    h.shutdown();
}

#[tokio::test]
async fn discovery_works_for_kube() {
    let (h, c) = start().await;
    install_crds(&h).await;
    let d = kube::Discovery::new(c.clone()).run().await.unwrap();
    let (ar, caps) = d
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "acrpull.microsoft.com",
            "v1beta2",
            "AcrPullBinding",
        ))
        .unwrap();
    assert_eq!(ar.plural, "acrpullbindings");
    assert!(caps
        .subresources
        .iter()
        .any(|(s, _)| s.plural == "acrpullbindings/status" || s.plural == "status"));
    assert!(d.has_group("coordination.k8s.io"));
    let v = c.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let _ = client_for(&h);
    h.shutdown();
}

#[tokio::test]
async fn watch_timeout_ends_cleanly_and_initial_events_need_bookmarks() {
    let (h, c) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(c.clone());
    let t = std::time::Instant::now();
    let mut s = cms
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    let ended = tokio::time::timeout(T, async {
        while let Some(ev) = s.next().await {
            ev.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok() && t.elapsed() >= Duration::from_millis(900));
    let status = c
        .request_status::<serde_json::Value>(
            http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
                .body(vec![])
                .unwrap(),
        )
        .await;
    assert_eq!(api_err(status.unwrap_err()).0, 422);
    h.shutdown();
}

#[tokio::test]
async fn new_namespaces_get_defaults_and_deleted_ones_are_emptied() {
    let (h, c) = start().await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("fresh".into());
    nss.create(&PostParams::default(), &ns).await.unwrap();
    // Asynchronously, as the ServiceAccount controller and the root-CA publisher do it.
    let sa = h
        .wait_for(
            "v1",
            "ServiceAccount",
            "fresh",
            "default",
            |o| o.is_some(),
            T,
        )
        .await
        .unwrap()
        .unwrap();
    let cm = h
        .wait_for(
            "v1",
            "ConfigMap",
            "fresh",
            "kube-root-ca.crt",
            |o| o.is_some(),
            T,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cm["data"]["ca.crt"], h.ca_pem());
    assert!(h.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    // The namespaces that exist at start have them already.
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            h.get("v1", "ServiceAccount", ns, "default").is_some(),
            "{ns}"
        );
        assert!(
            h.get("v1", "ConfigMap", ns, "kube-root-ca.crt").is_some(),
            "{ns}"
        );
    }
    // Deleted or changed, they come back.
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "fresh");
    let old_uid = sa["metadata"]["uid"].clone();
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    h.wait_for(
        "v1",
        "ServiceAccount",
        "fresh",
        "default",
        |o| o.is_some_and(|o| o["metadata"]["uid"] != old_uid),
        T,
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "fresh");
    cms.patch(
        "kube-root-ca.crt",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": "tampered"}})),
    )
    .await
    .unwrap();
    h.wait_for(
        "v1",
        "ConfigMap",
        "fresh",
        "kube-root-ca.crt",
        |o| o.is_some_and(|o| o["data"]["ca.crt"] == h.ca_pem()),
        T,
    )
    .await
    .unwrap();
    // Deleting the namespace deletes its contents (finalizers honoured), then the namespace;
    // nothing is re-created in a terminating namespace.
    let mut held = ConfigMap::default();
    held.metadata.name = Some("held".into());
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    nss.delete("fresh", &DeleteParams::default()).await.unwrap();
    h.wait_for(
        "v1",
        "ServiceAccount",
        "fresh",
        "default",
        |o| o.is_none(),
        T,
    )
    .await
    .unwrap();
    h.wait_for(
        "v1",
        "ConfigMap",
        "fresh",
        "held",
        |o| o.is_some_and(|o| o["metadata"]["deletionTimestamp"].is_string()),
        T,
    )
    .await
    .unwrap();
    let terminating = h.get("v1", "Namespace", "", "fresh").unwrap();
    assert_eq!(terminating["status"]["phase"], "Terminating");
    assert!(h.get("v1", "ServiceAccount", "fresh", "default").is_none());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    h.wait_for("v1", "Namespace", "", "fresh", |o| o.is_none(), T)
        .await
        .unwrap();
    assert!(h.list("v1", "ConfigMap", Some("fresh")).is_empty());
    h.shutdown();
}

/// The lines of a raw watch, until the server ends it.
async fn watch_lines(h: &kube_standin::Handle, query: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=true&{query}",
        h.url()
    );
    let mut resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(h.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = Vec::new();
    while let Some(chunk) = tokio::time::timeout(T, resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        buf.extend_from_slice(&chunk);
    }
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[tokio::test]
async fn watch_cache_bookmarks_before_the_timeout_and_keeps_nothing_from_before_start() {
    // Bookmarks every 10 s (the default) would never fire in a 1 s watch; the pre-timeout
    // bookmark does.
    let (h, _) = start().await;
    let rv = h.resource_version();
    let lines = watch_lines(
        &h,
        &format!("resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"),
    )
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "BOOKMARK");
    assert_eq!(
        lines[0]["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    // Not without allowWatchBookmarks.
    let lines = watch_lines(&h, &format!("resourceVersion={rv}&timeoutSeconds=1")).await;
    assert!(lines.is_empty(), "{lines:?}");
    // A fresh server keeps nothing from before its start: RV 1 is too old for a watch and
    // for an exact list.
    let lines = watch_lines(&h, "resourceVersion=1&allowWatchBookmarks=true").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "ERROR");
    assert_eq!(lines[0]["object"]["code"], 410);
    assert_eq!(lines[0]["object"]["reason"], "Expired");
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?resourceVersion=1&resourceVersionMatch=Exact",
            h.url()
        ))
        .bearer_auth(h.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 410);
    h.shutdown();
}

/// A protobuf length-delimited field (`tag`, wire type 2) of less than 128 bytes.
fn pb_field(tag: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut out = vec![(tag << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// client-go's protobuf clients send a DELETE's `DeleteOptions` in protobuf (Helm does, when
/// `helm uninstall` purges its release record): `k8s\0`, a `runtime.Unknown` envelope of
/// type `v1`/`DeleteOptions`, then the message. Built here byte by byte from the field numbers
/// of `meta/v1/generated.proto`, not with the stand-in's own encoder.
fn delete_options_pb(uid: &str, propagation: &str, dry_run: bool) -> Vec<u8> {
    let mut options = pb_field(2, &pb_field(1, uid.as_bytes())); // preconditions.uid
    options.extend(pb_field(4, propagation.as_bytes())); // propagationPolicy
    if dry_run {
        options.extend(pb_field(5, b"All")); // dryRun
    }
    let mut type_meta = pb_field(1, b"v1");
    type_meta.extend(pb_field(2, b"DeleteOptions"));
    let mut envelope = pb_field(1, &type_meta);
    envelope.extend(pb_field(2, &options));
    envelope.extend(pb_field(4, b"application/vnd.kubernetes.protobuf"));
    let mut body = b"k8s\0".to_vec();
    body.extend(envelope);
    body
}

#[tokio::test]
async fn delete_options_in_protobuf_are_decoded_and_honoured() {
    let (h, _) = start().await;
    namespace(&h, "pbdel");
    let secret = h
        .apply(json!({"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "release", "namespace": "pbdel"}}))
        .unwrap();
    let uid = secret["metadata"]["uid"].as_str().unwrap().to_string();
    let delete = |body: Vec<u8>| {
        let url = format!("{}/api/v1/namespaces/pbdel/secrets/release", h.url());
        let token = h.admin_token();
        async move {
            let resp = reqwest::Client::new()
                .delete(url)
                .bearer_auth(token)
                .header("content-type", "application/vnd.kubernetes.protobuf")
                .body(body)
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            (code, resp.text().await.unwrap())
        }
    };
    // The precondition is read from the body: a wrong uid is a 409.
    let (code, body) = delete(delete_options_pb("wrong-uid", "Background", false)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("Precondition failed"), "{body}");
    // dryRun is read too: nothing is deleted.
    let (code, body) = delete(delete_options_pb(&uid, "Background", true)).await;
    assert_eq!(code, 200, "{body}");
    assert!(h.get("v1", "Secret", "pbdel", "release").is_some());
    // So is an unknown propagation policy: 422, as for the JSON body.
    let (code, body) = delete(delete_options_pb(&uid, "Sideways", false)).await;
    assert_eq!(code, 422, "{body}");
    // The real delete.
    let (code, body) = delete(delete_options_pb(&uid, "Background", false)).await;
    assert_eq!(code, 200, "{body}");
    assert!(h.get("v1", "Secret", "pbdel", "release").is_none());
    h.shutdown();
}
