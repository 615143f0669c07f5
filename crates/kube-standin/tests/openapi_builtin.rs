//! `src/openapi/builtin.json` — the OpenAPI schemas of the built-in kinds the stand-in serves
//! (what `kubectl explain serviceaccount` shows) — is generated from k8s-openapi's schemas
//! (Kubernetes 1.33), which carry the upstream descriptions. The stand-in itself does not
//! depend on k8s-openapi, so the file is committed; this test fails when it is stale.
//! Regenerate with `KUBE_STANDIN_UPDATE_OPENAPI=1 cargo test -p kube-standin --test openapi_builtin`.

use k8s_openapi::api;
use k8s_openapi::Resource;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

fn add<T: JsonSchema + Resource>(
    generator: &mut schemars::SchemaGenerator,
    kinds: &mut Vec<(String, Value)>,
) {
    generator.subschema_for::<T>();
    kinds.push((
        T::schema_name().into_owned(),
        json!([{"group": T::GROUP, "version": T::VERSION, "kind": T::KIND}]),
    ));
}

fn generate() -> Value {
    let mut generator = SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator();
    let mut kinds = Vec::new();
    let g = &mut generator;
    let k = &mut kinds;
    add::<api::core::v1::ServiceAccount>(g, k);
    add::<api::core::v1::Secret>(g, k);
    add::<api::core::v1::ConfigMap>(g, k);
    add::<api::core::v1::Namespace>(g, k);
    add::<api::core::v1::Event>(g, k);
    add::<api::core::v1::Service>(g, k);
    add::<api::events::v1::Event>(g, k);
    add::<api::coordination::v1::Lease>(g, k);
    add::<api::rbac::v1::Role>(g, k);
    add::<api::rbac::v1::RoleBinding>(g, k);
    add::<api::rbac::v1::ClusterRole>(g, k);
    add::<api::rbac::v1::ClusterRoleBinding>(g, k);
    add::<api::policy::v1::PodDisruptionBudget>(g, k);
    add::<api::networking::v1::NetworkPolicy>(g, k);
    add::<api::admissionregistration::v1::ValidatingAdmissionPolicy>(g, k);
    add::<api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>(g, k);
    add::<api::authentication::v1::TokenRequest>(g, k);
    add::<api::authentication::v1::TokenReview>(g, k);
    add::<api::authentication::v1::SelfSubjectReview>(g, k);
    add::<api::authorization::v1::SubjectAccessReview>(g, k);
    add::<api::authorization::v1::LocalSubjectAccessReview>(g, k);
    add::<api::authorization::v1::SelfSubjectAccessReview>(g, k);
    add::<api::authorization::v1::SelfSubjectRulesReview>(g, k);
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
    let mut defs: Map<String, Value> = generator.take_definitions(true);
    for (name, gvk) in kinds {
        if let Some(d) = defs.get_mut(&name) {
            d["x-kubernetes-group-version-kind"] = gvk;
        }
    }
    let sorted: std::collections::BTreeMap<String, Value> = defs.into_iter().collect();
    json!(sorted)
}

#[test]
fn builtin_schemas_are_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/openapi/builtin.json");
    let mut text = serde_json::to_string_pretty(&generate()).unwrap();
    text.push('\n');
    if std::env::var_os("KUBE_STANDIN_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is stale; regenerate with KUBE_STANDIN_UPDATE_OPENAPI=1 cargo test -p kube-standin --test openapi_builtin",
        path.display()
    );
    let v: Value = serde_json::from_str(&committed).unwrap();
    let sa = &v["io.k8s.api.core.v1.ServiceAccount"];
    assert_eq!(
        sa["x-kubernetes-group-version-kind"],
        json!([{"group": "", "version": "v1", "kind": "ServiceAccount"}])
    );
    assert!(v["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["name"].is_object());
}
