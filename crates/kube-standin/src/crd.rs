//! CustomResourceDefinitions: turning a `apiextensions.k8s.io/v1` manifest into a served
//! [`ResourceType`], and the structural-schema behaviour of custom resources — pruning of
//! unknown fields (what a real cluster silently does to status fields the schema lacks),
//! dropping nulls for non-nullable fields, and schema defaults.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::resources::ResourceType;

fn invalid(name: &str, field: &str, why: &str) -> ApiError {
    ApiError::invalid(
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        name,
        field,
        why,
    )
}

/// Validate a CRD object and derive the type it serves.
pub fn resource_type(crd: &Value) -> ApiResult<ResourceType> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &crd["spec"];
    let group = spec["group"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(name, "spec.group", "Required value"))?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(name, "spec.names.plural", "Required value"))?;
    let kind = names["kind"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(name, "spec.names.kind", "Required value"))?;
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            name,
            "metadata.name",
            &format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(invalid(
                name,
                "spec.scope",
                "Unsupported value: must be Namespaced or Cluster",
            ))
        }
    };
    let versions = spec["versions"]
        .as_array()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            invalid(
                name,
                "spec.versions",
                "Required value: must have exactly one version marked as storage version",
            )
        })?;
    let storage: Vec<&Value> = versions.iter().filter(|v| v["storage"] == true).collect();
    if storage.len() != 1 {
        return Err(invalid(
            name,
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let mut served: Vec<String> = Vec::new();
    let mut schemas = BTreeMap::new();
    let mut printer_columns = BTreeMap::new();
    let mut status_subresource = false;
    let mut selectable = Vec::new();
    // Storage version first so it is the preferred one.
    let mut ordered: Vec<&Value> = storage.clone();
    ordered.extend(versions.iter().filter(|v| v["storage"] != true));
    for v in ordered {
        let vname = v["name"]
            .as_str()
            .ok_or_else(|| invalid(name, "spec.versions[].name", "Required value"))?;
        if v["served"] != true {
            continue;
        }
        served.push(vname.to_string());
        let schema = v["schema"]["openAPIV3Schema"].clone();
        if schema.is_null() {
            return Err(invalid(
                name,
                &format!("spec.versions[{vname}].schema.openAPIV3Schema"),
                "Required value: schemas are required",
            ));
        }
        schemas.insert(vname.to_string(), schema);
        if !v["additionalPrinterColumns"].is_null() {
            printer_columns.insert(vname.to_string(), v["additionalPrinterColumns"].clone());
        }
        if v["subresources"]["status"].is_object() {
            status_subresource = true;
        }
        for f in v["selectableFields"].as_array().into_iter().flatten() {
            if let Some(p) = f["jsonPath"].as_str() {
                selectable.push(p.to_string());
            }
        }
    }
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    Ok(ResourceType {
        group: group.to_string(),
        versions: served,
        kind: kind.to_string(),
        plural: plural.to_string(),
        singular: names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase()),
        short_names: strs(&names["shortNames"]),
        categories: strs(&names["categories"]),
        namespaced,
        status_subresource,
        token_subresource: false,
        custom: true,
        schemas,
        printer_columns,
        selectable_fields: selectable,
        review: false,
    })
}

/// The status a real API server gives an accepted CRD.
pub fn accepted_status(crd: &Value, now: &str) -> Value {
    let storage = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .and_then(|v| v["name"].as_str())
        .unwrap_or_default()
        .to_string();
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": [storage],
    })
}

/// Prune unknown fields, drop nulls the schema does not allow, apply defaults.
/// Returns the dotted paths of pruned unknown fields (for `fieldValidation=Strict`).
pub fn normalize(obj: &mut Value, schema: &Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Value::Object(m) = obj {
        let props = &schema["properties"];
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            if k == "apiVersion" || k == "kind" || k == "metadata" {
                continue;
            }
            match props.get(&k) {
                Some(s) => {
                    if let Some(v) = m.get_mut(&k) {
                        walk(v, s, &k, &mut pruned);
                    }
                    if m.get(&k)
                        .is_some_and(|v| v.is_null() && s["nullable"] != true)
                    {
                        m.remove(&k);
                    }
                }
                None if preserve => {}
                None => {
                    m.remove(&k);
                    pruned.push(k);
                }
            }
        }
        apply_defaults(m, props);
    }
    pruned
}

fn apply_defaults(m: &mut serde_json::Map<String, Value>, props: &Value) {
    if let Some(p) = props.as_object() {
        for (k, s) in p {
            if !m.contains_key(k) {
                if let Some(d) = s.get("default") {
                    m.insert(k.clone(), d.clone());
                }
            }
        }
    }
}

fn walk(v: &mut Value, s: &Value, path: &str, pruned: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let preserve = s["x-kubernetes-preserve-unknown-fields"] == true;
            let props = &s["properties"];
            let additional = &s["additionalProperties"];
            let embedded = s["x-kubernetes-embedded-resource"] == true;
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child = format!("{path}.{k}");
                let sub = props
                    .get(&k)
                    .or_else(|| additional.is_object().then_some(additional));
                match sub {
                    Some(cs) => {
                        if let Some(c) = m.get_mut(&k) {
                            walk(c, cs, &child, pruned);
                        }
                        if m.get(&k)
                            .is_some_and(|c| c.is_null() && cs["nullable"] != true)
                        {
                            m.remove(&k);
                        }
                    }
                    None if preserve || *additional == Value::Bool(true) => {}
                    None if embedded && (k == "apiVersion" || k == "kind" || k == "metadata") => {}
                    None => {
                        m.remove(&k);
                        pruned.push(child);
                    }
                }
            }
            apply_defaults(m, props);
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, is, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        serde_json::from_str(
            r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
            "metadata":{"name":"widgets.example.com"},
            "spec":{"group":"example.com","scope":"Namespaced",
              "names":{"plural":"widgets","singular":"widget","kind":"Widget","shortNames":["wg"]},
              "versions":[{"name":"v1","served":true,"storage":true,"subresources":{"status":{}},
                "schema":{"openAPIV3Schema":{"type":"object","properties":{
                  "spec":{"type":"object","properties":{"size":{"type":"integer"},"env":{"type":"string","default":"Public"},
                    "free":{"type":"object","x-kubernetes-preserve-unknown-fields":true},
                    "tags":{"type":"object","additionalProperties":{"type":"string"}}}},
                  "status":{"type":"object","properties":{"ready":{"type":"boolean"},
                    "conditions":{"type":"array","items":{"type":"object","properties":{"type":{"type":"string"}}}}}}}}}}]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn derives_type() {
        let t = resource_type(&crd()).unwrap();
        assert_eq!(t.kind, "Widget");
        assert!(t.status_subresource && t.namespaced && t.custom);
        assert_eq!(t.short_names, vec!["wg"]);
        let mut bad = crd();
        bad["metadata"]["name"] = json!("nope");
        assert_eq!(resource_type(&bad).unwrap_err().code, 422);
    }

    #[test]
    fn prunes_and_defaults() {
        let t = resource_type(&crd()).unwrap();
        let schema = &t.schemas["v1"];
        let mut o = json!({"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"a"},
            "spec":{"size":1,"bogus":2,"free":{"x":1},"tags":{"a":"b"}},
            "status":{"ready":true,"unknownStatusField":"x","conditions":[{"type":"A","extra":1}]},
            "top":1});
        let pruned = normalize(&mut o, schema);
        assert_eq!(
            o["spec"],
            json!({"size":1,"free":{"x":1},"tags":{"a":"b"},"env":"Public"})
        );
        assert_eq!(
            o["status"],
            json!({"ready":true,"conditions":[{"type":"A"}]})
        );
        assert!(o.get("top").is_none());
        assert!(pruned.contains(&"status.unknownStatusField".to_string()));
        assert!(pruned.contains(&"spec.bogus".to_string()));
    }
}
