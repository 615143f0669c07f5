//! Fuzzes binding deserialisation (v1beta2 and v1beta1, from JSON as the API server would send
//! it) and `acrpull::state::binding::validate` + workload-identity resolution.
//! Invariants on acceptance: the pull Secret name is a valid object name (≤ 253), the registry is
//! under an allowed suffix, the inputs hash is non-empty base36; on rejection the message is
//! non-empty and bounded and the reason is a known condition reason.
#![no_main]

use acrpull::k8s::api::{v1beta1, v1beta2};
use acrpull::k8s::binding::BindingResource;
use acrpull::state::binding::{validate, Policy, ServiceAccountView, Spec};
use libfuzzer_sys::fuzz_target;

// Every reason validation and resolution can give, including the operator's allow-lists
// (scope actions, air-gapped authorities) and tenancy policies.
const REASONS: [&str; 6] = [
    "InvalidSpec",
    "RegistryNotAllowed",
    "ServiceAccountNotFound",
    "ActionNotAllowed",
    "AuthorityNotAllowed",
    "NotPermitted",
];

fn check(name: &str, spec: &Spec) {
    let policy = Policy::default();
    match validate(name, spec, &policy) {
        Ok(st) => {
            assert!(!st.secret_name.is_empty());
            // v1beta2 truncates (SPEC §2.2); v1beta1 appends its suffix to the name as the old
            // controller did, so only v1beta2 is bounded for every valid (≤ 253) name.
            if matches!(spec, Spec::V1beta2(_)) && name.len() <= 253 {
                assert!(st.secret_name.len() <= 253, "{}", st.secret_name);
            }
            assert!(policy.allowed_suffixes.allows(&st.registry.host));
            assert!(!st.inputs_hash.is_empty());
            assert!(st.inputs_hash.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
            assert!(!st.target_service_account.is_empty());
            // Workload identity: resolve with no SA, and with one annotated from the spec text.
            if st.workload_service_account().is_some() {
                assert!(st.resolve(None).is_err());
                let sa = ServiceAccountView {
                    name: "sa".into(),
                    pull_secrets: vec![],
                    client_id_annotation: Some(st.target_service_account.clone()),
                    tenant_id_annotation: Some(st.secret_name.clone()),
                };
                if let Err(e) = st.resolve(Some(&sa)) {
                    assert!(REASONS.contains(&e.reason.as_str()) && !e.message.is_empty());
                }
            }
        }
        Err(e) => {
            assert!(REASONS.contains(&e.reason.as_str()), "unknown reason {}", e.reason);
            assert!(!e.message.is_empty() && e.message.len() < 1200, "{}", e.message.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = serde_json::from_slice::<v1beta2::AcrPullBinding>(data) {
        let name = b.metadata.name.clone().unwrap_or_default();
        check(&name, &b.spec_view());
    }
    if let Ok(b) = serde_json::from_slice::<v1beta1::AcrPullBinding>(data) {
        let name = b.metadata.name.clone().unwrap_or_default();
        check(&name, &b.spec_view());
    }
    // Bare specs too (the shape the typed watch decodes into).
    if let Ok(spec) = serde_json::from_slice::<v1beta2::AcrPullBindingSpec>(data) {
        let b = v1beta2::AcrPullBinding::new("fuzz", spec);
        check("fuzz", &b.spec_view());
    }
    if let Ok(spec) = serde_json::from_slice::<v1beta1::AcrPullBindingSpec>(data) {
        let b = v1beta1::AcrPullBinding::new("fuzz", spec);
        check("fuzz", &b.spec_view());
    }
});
