//! The API stays wire-compatible with the old controller: objects it wrote deserialize and
//! serialize back unchanged, and the committed CRDs are exactly what the types generate.

use acrpull::k8s::api::{self, v1beta1, v1beta2};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap()
}

/// Deserialize into `T`, serialize back, and compare as JSON values.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(original: &Value) -> T {
    let typed: T = serde_json::from_value(original.clone()).expect("deserializes");
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, original, "round trip changed the object");
    typed
}

#[test]
fn old_v1beta1_objects_round_trip() {
    let original = fixture("old-v1beta1.yaml");
    // The old controller serialised empty optional strings; we keep them for v1beta1's
    // non-omitempty fields and drop only serviceAccountName when empty.
    let b: v1beta1::AcrPullBinding = round_trip(&original);
    assert_eq!(b.spec.acr_server, "example.azurecr.io");
    assert_eq!(
        b.spec.managed_identity_client_id,
        "1b461305-28be-5271-beda-bd9fd2e24251"
    );
    let status = b.status.expect("status kept");
    assert_eq!(
        status.token_expiration_time.unwrap().0.to_string(),
        "2024-05-01T13:00:05Z"
    );
    assert!(status.phase.is_none());
}

#[test]
fn old_v1beta2_objects_round_trip() {
    let original = fixture("old-v1beta2.yaml");
    let b: v1beta2::AcrPullBinding = round_trip(&original);
    let wi = b.spec.auth.workload_identity.as_ref().unwrap();
    assert_eq!(wi.service_account_ref, "federated");
    assert_eq!(wi.tenant_id, "72f988bf-86f1-41af-91ab-2d7cd011db47");
    assert!(b.spec.auth.managed_identity.is_none());
    assert!(b.status.unwrap().error.contains("missing"));

    let original = fixture("old-v1beta2-managed-airgapped.yaml");
    let b: v1beta2::AcrPullBinding = round_trip(&original);
    let cc = b.spec.acr.cloud_config.unwrap();
    assert_eq!(
        cc.resource_manager_audience,
        "https://management.airgap.example/"
    );
}

#[test]
fn missing_fields_still_deserialize_so_the_controller_can_fail_the_binding() {
    // An object that bypassed validation (no CRD validation, hand edit) must not break the
    // watch for every binding: it deserializes with defaults and is rejected by the core.
    let odd = serde_json::json!({
        "apiVersion": "acrpull.microsoft.com/v1beta2",
        "kind": "AcrPullBinding",
        "metadata": {"name": "odd", "namespace": "x"},
        "spec": {"acr": {}, "auth": {}}
    });
    let b: v1beta2::AcrPullBinding = serde_json::from_value(odd).unwrap();
    assert_eq!(b.spec.acr.environment, "PublicCloud");
    assert!(b.spec.acr.server.is_empty());
    let no_spec = serde_json::json!({
        "apiVersion": "msi-acrpull.microsoft.com/v1beta1",
        "kind": "AcrPullBinding",
        "metadata": {"name": "bare", "namespace": "x"},
        "spec": {}
    });
    let b: v1beta1::AcrPullBinding = serde_json::from_value(no_spec).unwrap();
    assert!(b.spec.acr_server.is_empty());
}

#[test]
fn new_status_fields_serialize_with_camel_case_names() {
    let status = api::AcrPullBindingStatus {
        phase: Some("Ready".into()),
        observed_generation: Some(3),
        consecutive_failures: 2,
        ..Default::default()
    };
    let v = serde_json::to_value(&status).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"phase": "Ready", "observedGeneration": 3, "consecutiveFailures": 2})
    );
}

#[test]
fn committed_crds_match_the_types() {
    let dir = format!("{}/deploy/crds", env!("CARGO_MANIFEST_DIR"));
    let files = api::crd_files().unwrap();
    // Both bindings and the tenancy policy.
    assert_eq!(files.len(), 3);
    for (name, generated) in files {
        let path = format!("{dir}/{name}");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} is stale: run `cargo run --bin crdgen -- --write deploy/crds` and commit"
        );
    }
}

#[test]
fn crd_carries_the_fixed_air_gapped_rule_and_api_shape() {
    let crds = api::crds();
    let json = serde_json::to_string(&crds).unwrap();
    assert!(json.contains("self.environment == 'AirgappedCloud'"));
    assert!(!json.contains("Arigapped"));
    let v1 = &crds[0];
    assert_eq!(v1.spec.group, "msi-acrpull.microsoft.com");
    assert_eq!(v1.spec.versions[0].name, "v1beta1");
    let v2 = &crds[1];
    assert_eq!(v2.spec.group, "acrpull.microsoft.com");
    assert_eq!(
        v2.spec.names.short_names.as_deref(),
        Some(&["apb".to_string(), "apbs".to_string()][..])
    );
    for crd in &crds {
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Server",
                "Scope",
                "Target",
                "Phase",
                "Last Refresh",
                "Expiration",
                "Error"
            ]
        );
    }
    // The only schema default is the environment.
    let v2json = serde_json::to_string(&crds[1]).unwrap();
    assert_eq!(v2json.matches("\"default\"").count(), 1);
    assert!(v2json.contains("\"default\":\"PublicCloud\""));
}

/// `kubectl get acrpull -A` lists both versions (a category shared by both CRDs); each version
/// has short names, none shared (kubectl resolves a short name to one resource); and the expiry
/// column is a string holding the RFC 3339 time: kubectl prints a `date` column as an age,
/// which shows a future expiry as `0s`.
#[test]
fn both_versions_are_found_together_and_the_expiry_reads_as_a_time() {
    let crds = api::crds();
    let mut short_names: Vec<String> = Vec::new();
    for crd in &crds {
        let names = &crd.spec.names;
        assert_eq!(
            names.categories.as_deref(),
            Some(&["acrpull".to_string()][..]),
            "{}",
            crd.spec.group
        );
        let own = names.short_names.clone().unwrap_or_default();
        assert!(!own.is_empty(), "{} has no short name", crd.spec.group);
        for n in own {
            assert!(
                !short_names.contains(&n),
                "short name {n} is on both versions"
            );
            assert_ne!(
                Some(n.as_str()),
                Some("acrpull"),
                "a short name would hide the category"
            );
            short_names.push(n);
        }
        for version in &crd.spec.versions {
            let expiry = version
                .additional_printer_columns
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.json_path == ".status.tokenExpirationTime")
                .expect("an expiry column");
            assert_eq!(expiry.type_, "string", "{}: {expiry:?}", crd.spec.group);
        }
    }
}
