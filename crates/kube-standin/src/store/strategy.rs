//! Per-type write rules, as the real API server's registry strategies hold them: what a create
//! fills in, which fields are immutable, what bumps `generation`, how Secrets are decoded and
//! custom resources pruned and defaulted. Pure functions over `serde_json::Value`; the write
//! path in `write.rs` calls them while preparing a write.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::crd;
use crate::error::{ApiError, ApiResult};
use crate::resources::ResourceType;

use super::WriteOpts;

/// RFC 3339 now, second precision, UTC.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A string field of `metadata` (empty when absent).
pub fn meta(obj: &Value, field: &str) -> String {
    obj["metadata"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `metadata` as a map, created if absent or not an object.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj["metadata"].as_object_mut() {
        Some(m) => m,
        None => unreachable_meta(),
    }
}

#[allow(clippy::panic)]
fn unreachable_meta() -> ! {
    panic!("metadata was just set to an object")
}

/// Whether `name` is valid for the type: a path segment for RBAC types (`system:...` names),
/// a lowercase RFC 1123 subdomain otherwise.
pub fn valid_name_for(rt: &ResourceType, name: &str) -> bool {
    if rt.group == "rbac.authorization.k8s.io" {
        return !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%']);
    }
    valid_name(name)
}

/// A lowercase RFC 1123 subdomain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The five characters `generateName` appends.
pub fn random_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
        .collect()
}

/// Content that is neither metadata nor status (what bumps `generation`).
pub fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// Equality ignoring bookkeeping that does not make a write a real change.
pub fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// The decoded body is an object of this type; stamps the storage apiVersion and kind.
pub fn check_body(rt: &ResourceType, body: &mut Value, version: &str) -> ApiResult<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    if let Some(k) = body["kind"].as_str() {
        if k != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    if let Some(av) = body["apiVersion"].as_str() {
        let (g, _) = crate::resources::split_api_version(av);
        if g != rt.group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version(version)
            )));
        }
    }
    body["apiVersion"] = json!(rt.api_version(rt.storage_version()));
    body["kind"] = json!(rt.kind);
    if !body["metadata"].is_object() && !body["metadata"].is_null() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Decoding-time normalisation applied on every write: structural pruning and defaults of
/// custom resources (strict field validation rejects what pruning would drop), Secret
/// `stringData` and base64 checks.
pub fn normalize(rt: &ResourceType, obj: &mut Value, opts: &WriteOpts) -> ApiResult<()> {
    if rt.custom {
        if let Some(schema) = rt.schemas.get(rt.storage_version()) {
            let pruned = crd::normalize(obj, schema);
            if opts.strict && !pruned.is_empty() {
                let list: Vec<String> = pruned
                    .iter()
                    .map(|p| format!("unknown field \"{p}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
        }
    }
    if rt.is("", "secrets") {
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            if !obj["data"].is_object() {
                obj["data"] = json!({});
            }
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                obj["data"][k] =
                    json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()));
            }
        }
        if obj["type"].as_str().is_none_or(str::is_empty) {
            obj["type"] = json!("Opaque");
        }
        if let Some(d) = obj["data"].as_object() {
            for (k, v) in d {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at data[{k:?}]"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// What a create of this type fills in (Namespace spec/status/label).
pub fn prepare_for_create(rt: &ResourceType, obj: &mut Value, name: &str) {
    if rt.is("", "namespaces") {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
        meta_mut(obj)
            .entry("labels")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|l| l.insert("kubernetes.io/metadata.name".into(), json!(name)));
    }
}

/// Finalizers cannot be added once an object is being deleted.
pub fn check_finalizers(
    rt: &ResourceType,
    name: &str,
    current: &Value,
    new: &Value,
) -> ApiResult<()> {
    if current["metadata"]["deletionTimestamp"].is_null() {
        return Ok(());
    }
    let old: Vec<&Value> = current["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let added: Vec<String> = new["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| !old.contains(f))
        .map(|f| format!("{f}"))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        &rt.kind,
        &rt.group,
        name,
        "metadata.finalizers",
        &format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}", added.join(", ")),
    ))
}

/// An `immutable: true` Secret or ConfigMap keeps its data.
pub fn check_immutable(
    rt: &ResourceType,
    name: &str,
    current: &Value,
    new: &Value,
) -> ApiResult<()> {
    let secret = rt.is("", "secrets");
    let config_map = rt.is("", "configmaps");
    if !(secret || config_map) || current["immutable"] != true {
        return Ok(());
    }
    let changed = new["data"] != current["data"]
        || new["immutable"] != current["immutable"]
        || (secret && new["type"] != current["type"])
        || (config_map && new["binaryData"] != current["binaryData"]);
    if !changed {
        return Ok(());
    }
    Err(ApiError::invalid(
        &rt.kind,
        &rt.group,
        name,
        "data",
        "Forbidden: field is immutable when `immutable` is set",
    ))
}
