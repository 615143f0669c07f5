//! OpenAPI documents, as kubectl uses them:
//! - `/openapi/v3` (index) and one v3 document per group-version: paths whose `patch`
//!   operations carry `x-kubernetes-group-version-kind` and the `fieldValidation` parameter
//!   (so kubectl turns on server-side field validation), and `components.schemas` with the
//!   kinds' schemas ([`schemas`]) — what `kubectl explain` reads;
//! - `/openapi/v2` ([`v2`]), JSON or the protobuf kubectl asks for, with the custom resources'
//!   definitions.
//!
//! Patch operations do not list `application/strategic-merge-patch+json`: kubectl would then
//! compute strategic merge patches from these schemas, and the built-in ones (generated from
//! k8s-openapi) lack the `x-kubernetes-patch-*` extensions that make those patches right. It
//! falls back to its compiled-in types, which have them.

pub mod schemas;
pub mod v2;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};

use crate::resources::Registry;

fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn all_gvs(reg: &Registry) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), "v1".to_string())];
    for (g, vs) in reg.groups() {
        for v in vs {
            out.push((g.clone(), v));
        }
    }
    out
}

/// Hash of a group-version's document, so clients re-fetch when a CRD changes.
fn doc_hash(reg: &Registry, group: &str, version: &str) -> String {
    let mut h = DefaultHasher::new();
    document(reg, group, version)
        .unwrap_or_default()
        .to_string()
        .hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`.
pub fn index(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, v) in all_gvs(reg) {
        let k = gv_key(&g, &v);
        let url = format!("/openapi/v3/{k}?hash={}", doc_hash(reg, &g, &v));
        paths.insert(k, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<g>/<v>`.
pub fn document(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let types = reg.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let schemas = schemas::for_group_version(reg, group, version);
    let mut paths = Map::new();
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for t in types {
        let gvk = json!({"group": t.group, "version": version, "kind": t.kind});
        let schema_name = schemas
            .iter()
            .find(|(_, s)| s["x-kubernetes-group-version-kind"][0] == gvk)
            .map(|(n, _)| n.clone());
        let op = |action: &str| {
            let mut ok = json!({"description": "OK"});
            if let Some(n) = &schema_name {
                ok["content"] = json!({"application/json": {"schema": {"$ref": format!("{}{n}", schemas::V3_REF)}}});
            }
            json!({
                "operationId": format!("{action}{}", t.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation")],
                "responses": {"200": ok},
            })
        };
        let item = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{prefix}/{}/{{name}}", t.plural)
        };
        let coll = if t.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{prefix}/{}", t.plural)
        };
        if t.review {
            paths.insert(coll, json!({"post": op("post")}));
            continue;
        }
        paths.insert(
            item.clone(),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        paths.insert(coll, json!({"get": op("list"), "post": op("post")}));
        if t.status_subresource {
            paths.insert(
                format!("{item}/status"),
                json!({"get": op("get"), "put": op("put"), "patch": op("patch")}),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_doc() {
        let reg = Registry::new();
        let i = index(&reg);
        assert!(i["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
        let d = document(&reg, "coordination.k8s.io", "v1").unwrap();
        let p = &d["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"]
            ["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Lease");
        let lease = &d["components"]["schemas"]["io.k8s.api.coordination.v1.Lease"];
        assert_eq!(lease["x-kubernetes-group-version-kind"][0]["kind"], "Lease");
        assert!(
            d["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
                .is_object()
        );
        assert_eq!(
            p["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/io.k8s.api.coordination.v1.Lease"
        );
    }
}
