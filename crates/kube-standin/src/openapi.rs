//! The OpenAPI v3 surface kubectl needs to turn on server-side field validation: an index at
//! `/openapi/v3` and, per group-version, a document whose paths carry a `patch` operation with
//! `x-kubernetes-group-version-kind` and a `fieldValidation` query parameter. `/openapi/v2` is
//! answered 404 by the router (kubectl tolerates that once v3 is good).

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
    for t in reg.in_group_version(group, version) {
        format!("{t:?}").hash(&mut h);
    }
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
    let mut paths = Map::new();
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for t in types {
        let gvk = json!({"group": t.group, "version": version, "kind": t.kind});
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation")],
                "responses": {"200": {"description": "OK"}},
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
        "components": {"schemas": {}},
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
    }
}
