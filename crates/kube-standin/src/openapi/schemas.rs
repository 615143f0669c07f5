//! The schemas the OpenAPI documents carry, keyed by their real names: the built-in kinds
//! (from `builtin.json`, generated from k8s-openapi's 1.33 schemas by
//! `tests/openapi_builtin.rs`) and one schema per custom resource kind and version, built from
//! its CRD's `openAPIV3Schema` as the apiextensions server builds it (name
//! `<reversed group>.<version>.<Kind>`, `metadata` a reference to ObjectMeta,
//! `x-kubernetes-group-version-kind`), plus the `<Kind>List`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::resources::{Registry, ResourceType};

static BUILTIN: OnceLock<Map<String, Value>> = OnceLock::new();

/// The built-in schemas by name.
pub fn builtin() -> &'static Map<String, Value> {
    BUILTIN.get_or_init(|| serde_json::from_str(include_str!("builtin.json")).unwrap_or_default())
}

/// The `$ref` prefix of OpenAPI v3 documents.
pub const V3_REF: &str = "#/components/schemas/";

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DOC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_METADATA_DOC: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#lists-and-simple-lists";

/// `acrpull.microsoft.com` → `com.microsoft.acrpull`.
fn reversed(group: &str) -> String {
    group.split('.').rev().collect::<Vec<_>>().join(".")
}

/// The schema name of a custom resource kind in a version.
pub fn crd_schema_name(rt: &ResourceType, version: &str) -> String {
    format!("{}.{version}.{}", reversed(&rt.group), rt.kind)
}

fn gvk(rt: &ResourceType, version: &str, kind: &str) -> Value {
    json!([{"group": rt.group, "version": version, "kind": kind}])
}

fn reference(name: &str, description: &str) -> Value {
    json!({"allOf": [{"$ref": format!("{V3_REF}{name}")}], "description": description})
}

fn crd_schemas(rt: &ResourceType, version: &str, out: &mut BTreeMap<String, Value>) {
    let Some(schema) = rt.schemas.get(version) else {
        return;
    };
    let mut s = schema.clone();
    if !s.is_object() {
        s = json!({"type": "object"});
    }
    if !s["properties"].is_object() {
        s["properties"] = json!({});
    }
    s["properties"]["apiVersion"] = json!({"type": "string", "description": API_VERSION_DOC});
    s["properties"]["kind"] = json!({"type": "string", "description": KIND_DOC});
    s["properties"]["metadata"] = reference(OBJECT_META, METADATA_DOC);
    s["x-kubernetes-group-version-kind"] = gvk(rt, version, &rt.kind);
    let name = crd_schema_name(rt, version);
    let list_kind = format!("{}List", rt.kind);
    let list = json!({
        "description": format!("{list_kind} is a list of {}", rt.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION_DOC},
            "items": {
                "type": "array",
                "description": format!("List of {}. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md", rt.plural),
                "items": {"$ref": format!("{V3_REF}{name}")},
            },
            "kind": {"type": "string", "description": KIND_DOC},
            "metadata": reference(LIST_META, LIST_METADATA_DOC),
        },
        "x-kubernetes-group-version-kind": gvk(rt, version, &list_kind),
    });
    out.insert(
        format!("{}.{version}.{list_kind}", reversed(&rt.group)),
        list,
    );
    out.insert(name, s);
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(name) = x.as_str().and_then(|r| r.strip_prefix(V3_REF)) {
                        out.push(name.to_string());
                    }
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Add every built-in schema the given ones reference, transitively.
fn close_over_refs(out: &mut BTreeMap<String, Value>) {
    let mut pending: Vec<String> = Vec::new();
    for v in out.values() {
        collect_refs(v, &mut pending);
    }
    while let Some(name) = pending.pop() {
        if out.contains_key(&name) {
            continue;
        }
        if let Some(s) = builtin().get(&name) {
            collect_refs(s, &mut pending);
            out.insert(name, s.clone());
        }
    }
}

fn has_gvk(schema: &Value, group: &str, version: &str, kind: &str) -> bool {
    schema["x-kubernetes-group-version-kind"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| g["group"] == group && g["version"] == version && g["kind"] == kind)
}

/// The schemas of every kind served at `group/version`, with everything they reference.
pub fn for_group_version(reg: &Registry, group: &str, version: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for t in reg.in_group_version(group, version) {
        if t.custom {
            crd_schemas(&t, version, &mut out);
            continue;
        }
        if let Some((name, s)) = builtin()
            .iter()
            .find(|(_, s)| has_gvk(s, group, version, &t.kind))
        {
            out.insert(name.clone(), s.clone());
        }
    }
    close_over_refs(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schemas_are_embedded() {
        let reg = Registry::new();
        let core = for_group_version(&reg, "", "v1");
        assert!(core.contains_key("io.k8s.api.core.v1.ServiceAccount"));
        assert!(core.contains_key(OBJECT_META));
        assert!(core.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry"));
        assert!(!core.contains_key("io.k8s.api.coordination.v1.Lease"));
        let rbac = for_group_version(&reg, "rbac.authorization.k8s.io", "v1");
        assert!(rbac.contains_key("io.k8s.api.rbac.v1.PolicyRule"));
        assert_eq!(reversed("acrpull.microsoft.com"), "com.microsoft.acrpull");
    }
}
