//! Field tables of the Kubernetes messages the stand-in decodes from protobuf, and the
//! table-driven conversion between their wire form and their JSON form. Field numbers are
//! those of the Kubernetes `generated.proto` files (`k8s.io/api`, `k8s.io/apimachinery`).

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::wire::{Field, Reader, WireError, Writer};

/// How a field is encoded.
#[derive(Clone, Copy)]
pub enum Ty {
    /// `string`.
    Str,
    /// `bytes` (base64 in JSON).
    Bytes,
    /// `int64`/`int32` (a JSON number).
    Int,
    /// `bool`.
    Bool,
    /// An embedded message.
    Msg(&'static [F]),
    /// `map<string, string>`.
    MapStr,
    /// `map<string, bytes>` (base64 values in JSON).
    MapBytes,
    /// `map<string, ExtraValue>` (string lists in JSON).
    MapExtra,
    /// `meta.v1.Time` (`{seconds, nanos}`; RFC 3339 in JSON).
    Time,
    /// `meta.v1.FieldsV1` (raw JSON bytes; the JSON itself in JSON).
    FieldsV1,
}

/// One field: number, JSON name, type, repeated.
#[derive(Clone, Copy)]
pub struct F(pub u32, pub &'static str, pub Ty, pub bool);

use Ty::*;

const fn one(n: u32, name: &'static str, t: Ty) -> F {
    F(n, name, t, false)
}

const fn many(n: u32, name: &'static str, t: Ty) -> F {
    F(n, name, t, true)
}

static OWNER_REFERENCE: &[F] = &[
    one(1, "kind", Str),
    one(3, "name", Str),
    one(4, "uid", Str),
    one(5, "apiVersion", Str),
    one(6, "controller", Bool),
    one(7, "blockOwnerDeletion", Bool),
];

static MANAGED_FIELDS_ENTRY: &[F] = &[
    one(1, "manager", Str),
    one(2, "operation", Str),
    one(3, "apiVersion", Str),
    one(4, "time", Time),
    one(6, "fieldsType", Str),
    one(7, "fieldsV1", FieldsV1),
    one(8, "subresource", Str),
];

static OBJECT_META: &[F] = &[
    one(1, "name", Str),
    one(2, "generateName", Str),
    one(3, "namespace", Str),
    one(4, "selfLink", Str),
    one(5, "uid", Str),
    one(6, "resourceVersion", Str),
    one(7, "generation", Int),
    one(8, "creationTimestamp", Time),
    one(9, "deletionTimestamp", Time),
    one(10, "deletionGracePeriodSeconds", Int),
    one(11, "labels", MapStr),
    one(12, "annotations", MapStr),
    many(13, "ownerReferences", Msg(OWNER_REFERENCE)),
    many(14, "finalizers", Str),
    many(17, "managedFields", Msg(MANAGED_FIELDS_ENTRY)),
];

static NAMESPACE_CONDITION: &[F] = &[
    one(1, "type", Str),
    one(2, "status", Str),
    one(4, "lastTransitionTime", Time),
    one(5, "reason", Str),
    one(6, "message", Str),
];

static NAMESPACE: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(2, "spec", Msg(&[many(1, "finalizers", Str)])),
    one(
        3,
        "status",
        Msg(&[
            one(1, "phase", Str),
            many(2, "conditions", Msg(NAMESPACE_CONDITION)),
        ]),
    ),
];

static OBJECT_REFERENCE: &[F] = &[
    one(1, "kind", Str),
    one(2, "namespace", Str),
    one(3, "name", Str),
    one(4, "uid", Str),
    one(5, "apiVersion", Str),
    one(6, "resourceVersion", Str),
    one(7, "fieldPath", Str),
];

static SERVICE_ACCOUNT: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    many(2, "secrets", Msg(OBJECT_REFERENCE)),
    many(3, "imagePullSecrets", Msg(&[one(1, "name", Str)])),
    one(4, "automountServiceAccountToken", Bool),
];

static SECRET: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(2, "data", MapBytes),
    one(3, "type", Str),
    one(4, "stringData", MapStr),
    one(5, "immutable", Bool),
];

static CONFIG_MAP: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(2, "data", MapStr),
    one(3, "binaryData", MapBytes),
    one(4, "immutable", Bool),
];

static POLICY_RULE: &[F] = &[
    many(1, "verbs", Str),
    many(2, "apiGroups", Str),
    many(3, "resources", Str),
    many(4, "resourceNames", Str),
    many(5, "nonResourceURLs", Str),
];

static LABEL_SELECTOR_REQUIREMENT: &[F] = &[
    one(1, "key", Str),
    one(2, "operator", Str),
    many(3, "values", Str),
];

static LABEL_SELECTOR: &[F] = &[
    one(1, "matchLabels", MapStr),
    many(2, "matchExpressions", Msg(LABEL_SELECTOR_REQUIREMENT)),
];

static ROLE: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    many(2, "rules", Msg(POLICY_RULE)),
];

static CLUSTER_ROLE: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    many(2, "rules", Msg(POLICY_RULE)),
    one(
        3,
        "aggregationRule",
        Msg(&[many(1, "clusterRoleSelectors", Msg(LABEL_SELECTOR))]),
    ),
];

static SUBJECT: &[F] = &[
    one(1, "kind", Str),
    one(2, "apiGroup", Str),
    one(3, "name", Str),
    one(4, "namespace", Str),
];

static ROLE_BINDING: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    many(2, "subjects", Msg(SUBJECT)),
    one(
        3,
        "roleRef",
        Msg(&[
            one(1, "apiGroup", Str),
            one(2, "kind", Str),
            one(3, "name", Str),
        ]),
    ),
];

static SELECTOR_ATTRIBUTES: &[F] = &[
    one(1, "rawSelector", Str),
    many(2, "requirements", Msg(LABEL_SELECTOR_REQUIREMENT)),
];

static RESOURCE_ATTRIBUTES: &[F] = &[
    one(1, "namespace", Str),
    one(2, "verb", Str),
    one(3, "group", Str),
    one(4, "version", Str),
    one(5, "resource", Str),
    one(6, "subresource", Str),
    one(7, "name", Str),
    one(8, "fieldSelector", Msg(SELECTOR_ATTRIBUTES)),
    one(9, "labelSelector", Msg(SELECTOR_ATTRIBUTES)),
];

static NON_RESOURCE_ATTRIBUTES: &[F] = &[one(1, "path", Str), one(2, "verb", Str)];

static SUBJECT_ACCESS_REVIEW: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(
        2,
        "spec",
        Msg(&[
            one(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            one(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
            one(3, "user", Str),
            many(4, "groups", Str),
            one(5, "extra", MapExtra),
            one(6, "uid", Str),
        ]),
    ),
];

static SELF_SUBJECT_ACCESS_REVIEW: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(
        2,
        "spec",
        Msg(&[
            one(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
            one(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
];

static SELF_SUBJECT_RULES_REVIEW: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(2, "spec", Msg(&[one(1, "namespace", Str)])),
];

static SELF_SUBJECT_REVIEW: &[F] = &[one(1, "metadata", Msg(OBJECT_META))];

static TOKEN_REVIEW: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(
        2,
        "spec",
        Msg(&[one(1, "token", Str), many(2, "audiences", Str)]),
    ),
];

static TOKEN_REQUEST: &[F] = &[
    one(1, "metadata", Msg(OBJECT_META)),
    one(
        2,
        "spec",
        Msg(&[
            many(1, "audiences", Str),
            one(
                3,
                "boundObjectRef",
                Msg(&[
                    one(1, "kind", Str),
                    one(2, "apiVersion", Str),
                    one(3, "name", Str),
                    one(4, "uid", Str),
                ]),
            ),
            one(4, "expirationSeconds", Int),
        ]),
    ),
];

/// `meta.v1.DeleteOptions`: the body of a DELETE, which client-go's protobuf clients (Helm
/// purging its release record, for one) send in protobuf too.
static DELETE_OPTIONS: &[F] = &[
    one(1, "gracePeriodSeconds", Int),
    one(
        2,
        "preconditions",
        Msg(&[one(1, "uid", Str), one(2, "resourceVersion", Str)]),
    ),
    one(3, "orphanDependents", Bool),
    one(4, "propagationPolicy", Str),
    many(5, "dryRun", Str),
    one(6, "ignoreStoreReadErrorWithClusterBreakingPotential", Bool),
];

/// The table for a kind, if the stand-in decodes it.
pub fn kind_schema(group: &str, kind: &str) -> Option<&'static [F]> {
    Some(match (group, kind) {
        ("", "Namespace") => NAMESPACE,
        ("", "ServiceAccount") => SERVICE_ACCOUNT,
        ("", "Secret") => SECRET,
        ("", "ConfigMap") => CONFIG_MAP,
        ("rbac.authorization.k8s.io", "Role") => ROLE,
        ("rbac.authorization.k8s.io", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("authorization.k8s.io", "SubjectAccessReview" | "LocalSubjectAccessReview") => {
            SUBJECT_ACCESS_REVIEW
        }
        ("authorization.k8s.io", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io", "SelfSubjectRulesReview") => SELF_SUBJECT_RULES_REVIEW,
        ("authentication.k8s.io", "SelfSubjectReview") => SELF_SUBJECT_REVIEW,
        ("authentication.k8s.io", "TokenReview") => TOKEN_REVIEW,
        ("authentication.k8s.io", "TokenRequest") => TOKEN_REQUEST,
        // Registered in every group-version (client-go sends the resource's, e.g. `v1`).
        (_, "DeleteOptions") => DELETE_OPTIONS,
        _ => return None,
    })
}

fn b64(b: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(b))
}

fn text(b: &[u8]) -> Result<String, WireError> {
    String::from_utf8(b.to_vec()).map_err(|_| WireError("invalid UTF-8 in a string field"))
}

fn bytes_of(f: Field<'_>) -> Result<&[u8], WireError> {
    match f {
        Field::Bytes(b) => Ok(b),
        _ => Err(WireError("expected a length-delimited field")),
    }
}

fn map_entry(b: &[u8]) -> Result<(String, Option<Field<'_>>), WireError> {
    let mut r = Reader::new(b);
    let mut key = String::new();
    let mut value = None;
    while let Some((n, f)) = r.next_field()? {
        match n {
            1 => key = text(bytes_of(f)?)?,
            2 => value = Some(f),
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(b: &[u8]) -> Result<Value, WireError> {
    let mut r = Reader::new(b);
    let mut secs: i64 = 0;
    while let Some((n, f)) = r.next_field()? {
        if let (1, Field::Varint(v)) = (n, f) {
            secs = v as i64;
        }
    }
    let ts = jiff::Timestamp::from_second(secs).map_err(|_| WireError("time out of range"))?;
    Ok(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn scalar(t: Ty, f: Field<'_>) -> Result<Option<Value>, WireError> {
    Ok(Some(match (t, f) {
        (Str, f) => {
            let s = text(bytes_of(f)?)?;
            if s.is_empty() {
                return Ok(None);
            }
            json!(s)
        }
        (Bytes, f) => b64(bytes_of(f)?),
        (Int, Field::Varint(v)) => json!(v as i64),
        (Bool, Field::Varint(v)) => json!(v != 0),
        (Msg(schema), f) => decode(bytes_of(f)?, schema)?,
        (Time, f) => time(bytes_of(f)?)?,
        (FieldsV1, f) => {
            let m = decode(bytes_of(f)?, &[one(1, "raw", Bytes)])?;
            let raw = m["raw"]
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .unwrap_or_default();
            serde_json::from_slice(&raw).unwrap_or_else(|_| json!({}))
        }
        _ => return Err(WireError("field has the wrong wire type")),
    }))
}

/// Decode one message with its table into JSON; unknown fields are skipped.
pub fn decode(buf: &[u8], schema: &[F]) -> Result<Value, WireError> {
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while let Some((num, field)) = r.next_field()? {
        let Some(&F(_, name, t, repeated)) = schema.iter().find(|f| f.0 == num) else {
            continue;
        };
        match t {
            MapStr | MapBytes | MapExtra => {
                let (k, v) = map_entry(bytes_of(field)?)?;
                let v = match (t, v) {
                    (MapStr, Some(f)) => json!(text(bytes_of(f)?)?),
                    (MapStr, None) => json!(""),
                    (MapBytes, Some(f)) => b64(bytes_of(f)?),
                    (MapBytes, None) => json!(""),
                    (_, Some(f)) => {
                        let mut d = decode(bytes_of(f)?, &[many(1, "items", Str)])?;
                        d["items"].take()
                    }
                    (_, None) => json!([]),
                };
                let m = out.entry(name).or_insert_with(|| json!({}));
                m[k] = if v.is_null() { json!([]) } else { v };
            }
            _ if repeated => {
                let v = match (t, field) {
                    // Repeated strings may carry empty elements.
                    (Str, f) => Some(json!(text(bytes_of(f)?)?)),
                    (t, f) => scalar(t, f)?,
                };
                if let Some(v) = v {
                    if let Some(a) = out.entry(name).or_insert_with(|| json!([])).as_array_mut() {
                        a.push(v);
                    }
                }
            }
            _ => {
                if let Some(v) = scalar(t, field)? {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn encode_scalar(w: &mut Writer, num: u32, t: Ty, v: &Value) {
    match t {
        Str => {
            if let Some(s) = v.as_str() {
                w.string(num, s);
            }
        }
        Bytes => {
            let b = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .unwrap_or_default();
            w.bytes(num, &b);
        }
        Int => {
            if let Some(i) = v.as_i64() {
                w.uint(num, i as u64);
            }
        }
        Bool => {
            if let Some(b) = v.as_bool() {
                w.bool(num, b);
            }
        }
        Msg(schema) => {
            w.bytes(num, &encode(v, schema));
        }
        Time => {
            let secs = v
                .as_str()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second())
                .unwrap_or(0);
            let mut t = Writer::new();
            t.uint(1, secs as u64);
            w.message(num, &t);
        }
        FieldsV1 => {
            let mut t = Writer::new();
            t.bytes(1, v.to_string().as_bytes());
            w.message(num, &t);
        }
        MapStr | MapBytes | MapExtra => {
            for (k, val) in v.as_object().into_iter().flatten() {
                let mut e = Writer::new();
                e.string(1, k);
                match t {
                    MapStr => {
                        e.string(2, val.as_str().unwrap_or_default());
                    }
                    MapBytes => encode_scalar(&mut e, 2, Bytes, val),
                    _ => {
                        let mut items = Writer::new();
                        for s in val.as_array().into_iter().flatten() {
                            items.string(1, s.as_str().unwrap_or_default());
                        }
                        e.message(2, &items);
                    }
                }
                w.message(num, &e);
            }
        }
    }
}

/// Encode JSON with a table (the inverse of [`decode`]).
pub fn encode(v: &Value, schema: &[F]) -> Vec<u8> {
    let mut w = Writer::new();
    for &F(num, name, t, repeated) in schema {
        let Some(field) = v.get(name) else {
            continue;
        };
        if repeated {
            for item in field.as_array().into_iter().flatten() {
                encode_scalar(&mut w, num, t, item);
            }
        } else {
            encode_scalar(&mut w, num, t, field);
        }
    }
    w.into_bytes()
}
