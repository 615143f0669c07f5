//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which kubectl's typed
//! commands send (`create namespace|serviceaccount|secret|configmap|role|rolebinding|...`,
//! `create token`, `auth can-i`, `auth whoami`). A body is the magic `k8s\0` followed by a
//! `runtime.Unknown` envelope (type meta + the object's bytes); the object is decoded with the
//! field tables in [`k8s`] into the same JSON the object would have been sent as.
//!
//! Tables cover the kinds listed in [`k8s::kind_schema`]; other kinds get 415 with a message
//! saying so (the real server decodes every built-in kind). Responses stay JSON: kubectl's
//! `Accept` lists `application/json` after protobuf. The field numbers come from the
//! Kubernetes `generated.proto` files (checked against the `k8s-pb` crate's generated code).
//!
//! [`wire`] also writes protobuf, for the OpenAPI v2 document kubectl fetches as protobuf.

pub mod k8s;
pub mod wire;

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use wire::{Field, Reader};

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {e}"))
}

/// Decode a protobuf request body into the object's JSON (with `apiVersion` and `kind`).
pub fn decode_object(body: &[u8]) -> ApiResult<Value> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s protobuf magic prefix"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut r = Reader::new(envelope);
    while let Some((num, f)) = r.next_field().map_err(bad)? {
        match (num, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, f)) = t.next_field().map_err(bad)? {
                    if let Field::Bytes(b) = f {
                        let s = String::from_utf8_lossy(b).into_owned();
                        match n {
                            1 => api_version = s,
                            2 => kind = s,
                            _ => {}
                        }
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            (3, Field::Bytes(enc)) if !enc.is_empty() => {
                return Err(bad("content encodings are not supported"))
            }
            _ => {}
        }
    }
    let (group, _) = crate::resources::split_api_version(&api_version);
    let schema = k8s::kind_schema(group, &kind).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the stand-in cannot decode protobuf bodies of {kind} ({api_version}); send application/json"
            ),
        )
    })?;
    let mut obj = k8s::decode(raw, schema).map_err(bad)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

/// Encode an object's JSON as a protobuf body (envelope included), for the kinds
/// [`decode_object`] reads; used by tests to build the bodies kubectl sends.
pub fn encode_object(obj: &Value) -> ApiResult<Vec<u8>> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, _) = crate::resources::split_api_version(api_version);
    let schema = k8s::kind_schema(group, kind)
        .ok_or_else(|| ApiError::bad_request(format!("no protobuf table for {kind}")))?;
    let raw = k8s::encode(obj, schema);
    let mut tm = wire::Writer::new();
    tm.string(1, api_version).string(2, kind);
    let mut env = wire::Writer::new();
    env.message(1, &tm)
        .bytes(2, &raw)
        .string(3, "")
        .string(4, MEDIA_TYPE);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(env.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip() {
        for obj in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"a": "b"}}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"},
                   "type": "Opaque", "data": {"k": "dmFsdWU="}, "stringData": {"p": "plain"}, "immutable": false}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": "n",
                   "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u", "controller": true}]},
                   "imagePullSecrets": [{"name": "one"}, {"name": "two"}], "automountServiceAccountToken": false}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n",
                   "creationTimestamp": "2025-01-02T03:04:05Z"}, "data": {"a": "1"}, "binaryData": {"b": "AAE="}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"},
                   "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "nonResourceURLs": []}],
                   "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"},
                       "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}]}}),
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
                   "spec": {"user": "u", "groups": ["g"], "extra": {"k": ["v1", "v2"]},
                            "resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": "n"}}}),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {},
                   "spec": {"audiences": ["a"], "expirationSeconds": 3600,
                            "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s", "uid": "u"}}}),
        ] {
            let bytes = encode_object(&obj).unwrap();
            let mut back = decode_object(&bytes).unwrap();
            let mut want = obj.clone();
            // Empty lists are not on the wire.
            if let Some(r) = want.pointer_mut("/rules/0") {
                r.as_object_mut().unwrap().remove("nonResourceURLs");
            }
            if want["metadata"] == json!({}) {
                back.as_object_mut()
                    .unwrap()
                    .entry("metadata")
                    .or_insert(json!({}));
            }
            assert_eq!(back, want);
        }
        assert_eq!(decode_object(b"{}").unwrap_err().code, 400);
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment"});
        assert!(encode_object(&deploy).is_err());
    }
}
