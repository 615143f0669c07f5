//! `/openapi/v2`: a Swagger 2.0 document with the definitions of the custom resources (and the
//! meta types they reference), in JSON or in the protobuf encoding kubectl asks for
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, gnostic's
//! `openapi.v2.Document`).
//!
//! Built-in kinds are left out on purpose: kubectl computes strategic merge patches from the v2
//! definitions it finds, and the built-in schemas here lack the `x-kubernetes-patch-*`
//! extensions; without a definition it uses its compiled-in types, as it should.

use serde_json::{json, Map, Value};

use crate::proto::wire::Writer;
use crate::resources::Registry;

use super::schemas::{self, V3_REF};

/// The media type of the protobuf encoding as answered (kubectl asks for the older
/// `...spec.v2@v1.0+protobuf`, which Go's MIME parser cannot read back; the real server answers
/// with this one).
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an `Accept` header asks for the protobuf encoding.
pub fn wants_protobuf(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first
            .trim()
            .starts_with("application/com.github.proto-openapi.spec.v2")
    })
}

/// Rewrite a v3 schema into v2: `#/definitions/` references, a single-reference `allOf`
/// collapsed, keywords Swagger 2.0 lacks dropped.
fn to_v2(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(all)) = m.get("allOf") {
                if all.len() == 1 && all[0].get("$ref").is_some() {
                    let mut out = match to_v2(&all[0]) {
                        Value::Object(r) => r,
                        _ => Map::new(),
                    };
                    if let Some(d) = m.get("description") {
                        out.insert("description".into(), d.clone());
                    }
                    return Value::Object(out);
                }
            }
            let mut out = Map::new();
            for (k, x) in m {
                match k.as_str() {
                    "nullable" | "anyOf" | "oneOf" | "not" => {}
                    "$ref" => {
                        let r = x.as_str().unwrap_or_default();
                        let name = r.strip_prefix(V3_REF).unwrap_or(r);
                        out.insert(k.clone(), json!(format!("#/definitions/{name}")));
                    }
                    _ => {
                        out.insert(k.clone(), to_v2(x));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v2).collect()),
        other => other.clone(),
    }
}

/// The v2 document.
pub fn document(reg: &Registry) -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    for t in reg.all().iter().filter(|t| t.custom) {
        for version in &t.versions {
            for (name, s) in schemas::for_group_version(reg, &t.group, version) {
                definitions.insert(name, to_v2(&s));
            }
            let prefix = format!("/apis/{}/{version}", t.group);
            let path = if t.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
            } else {
                format!("{prefix}/{}/{{name}}", t.plural)
            };
            let name = schemas::crd_schema_name(t, version);
            paths.insert(
                path,
                json!({"get": {
                    "operationId": format!("read{}", t.kind),
                    "produces": ["application/json", "application/yaml"],
                    "responses": {"200": {"description": "OK", "schema": {"$ref": format!("#/definitions/{name}")}}},
                    "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": {"group": t.group, "version": version, "kind": t.kind},
                }}),
            );
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "definitions": definitions,
    })
}

/// A value as gnostic's `Any` (its YAML form; JSON is YAML).
fn any(v: &Value) -> Writer {
    let mut w = Writer::new();
    w.string(2, &v.to_string());
    w
}

fn named_any(name: &str, v: &Value) -> Writer {
    let mut w = Writer::new();
    w.string(1, name).message(2, &any(v));
    w
}

/// gnostic `Schema`.
fn schema(v: &Value) -> Writer {
    let mut w = Writer::new();
    let Some(m) = v.as_object() else {
        return w;
    };
    let str_field = |w: &mut Writer, num: u32, k: &str| {
        if let Some(s) = m.get(k).and_then(Value::as_str) {
            w.string(num, s);
        }
    };
    str_field(&mut w, 1, "$ref");
    str_field(&mut w, 2, "format");
    str_field(&mut w, 3, "title");
    str_field(&mut w, 4, "description");
    if let Some(d) = m.get("default") {
        w.message(5, &any(d));
    }
    for (num, k) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
        if let Some(x) = m.get(k).and_then(Value::as_f64) {
            w.double(num, x);
        }
    }
    for (num, k) in [
        (8, "exclusiveMaximum"),
        (10, "exclusiveMinimum"),
        (16, "uniqueItems"),
        (27, "readOnly"),
    ] {
        if let Some(b) = m.get(k).and_then(Value::as_bool) {
            w.bool(num, b);
        }
    }
    for (num, k) in [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ] {
        if let Some(i) = m.get(k).and_then(Value::as_i64) {
            w.uint(num, i as u64);
        }
    }
    str_field(&mut w, 13, "pattern");
    for r in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = r.as_str() {
            w.string(19, s);
        }
    }
    for e in m
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(20, &any(e));
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Writer::new();
            a.bool(2, *b);
            w.message(21, &a);
        }
        Some(s @ Value::Object(_)) => {
            let mut a = Writer::new();
            a.message(1, &schema(s));
            w.message(21, &a);
        }
        _ => {}
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut t = Writer::new();
        for x in types {
            t.string(1, x);
        }
        w.message(22, &t);
    }
    let items: Vec<&Value> = match m.get("items") {
        Some(a @ Value::Array(_)) => a.as_array().into_iter().flatten().collect(),
        Some(s @ Value::Object(_)) => vec![s],
        _ => Vec::new(),
    };
    if !items.is_empty() {
        let mut it = Writer::new();
        for s in items {
            it.message(1, &schema(s));
        }
        w.message(23, &it);
    }
    for s in m
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        w.message(24, &schema(s));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        let mut p = Writer::new();
        for (name, s) in props {
            let mut named = Writer::new();
            named.string(1, name).message(2, &schema(s));
            p.message(1, &named);
        }
        w.message(25, &p);
    }
    str_field(&mut w, 26, "discriminator");
    if let Some(e) = m.get("example") {
        w.message(30, &any(e));
    }
    for (k, x) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        w.message(31, &named_any(k, x));
    }
    w
}

fn operation(op: &Value) -> Writer {
    let mut w = Writer::new();
    if let Some(id) = op["operationId"].as_str() {
        w.string(5, id);
    }
    for p in op["produces"].as_array().into_iter().flatten() {
        w.string(6, p.as_str().unwrap_or_default());
    }
    let mut responses = Writer::new();
    for (code, r) in op["responses"].as_object().into_iter().flatten() {
        let mut resp = Writer::new();
        resp.string(1, r["description"].as_str().unwrap_or_default());
        if r["schema"].is_object() {
            let mut item = Writer::new();
            item.message(1, &schema(&r["schema"]));
            resp.message(2, &item);
        }
        let mut value = Writer::new();
        value.message(1, &resp);
        let mut named = Writer::new();
        named.string(1, code).message(2, &value);
        responses.message(1, &named);
    }
    w.message(9, &responses);
    for (k, x) in op
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("x-"))
    {
        w.message(13, &named_any(k, x));
    }
    w
}

/// The document as gnostic `openapi.v2.Document` protobuf.
pub fn encode(doc: &Value) -> Vec<u8> {
    let mut w = Writer::new();
    w.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Writer::new();
    info.string(1, doc["info"]["title"].as_str().unwrap_or_default())
        .string(2, doc["info"]["version"].as_str().unwrap_or_default());
    w.message(2, &info);
    let mut paths = Writer::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut pi = Writer::new();
        for (num, verb) in [
            (2, "get"),
            (3, "put"),
            (4, "post"),
            (5, "delete"),
            (8, "patch"),
        ] {
            if item[verb].is_object() {
                pi.message(num, &operation(&item[verb]));
            }
        }
        let mut named = Writer::new();
        named.string(1, path).message(2, &pi);
        paths.message(2, &named);
    }
    w.message(8, &paths);
    let mut defs = Writer::new();
    for (name, s) in doc["definitions"].as_object().into_iter().flatten() {
        let mut named = Writer::new();
        named.string(1, name).message(2, &schema(s));
        defs.message(1, &named);
    }
    w.message(9, &defs);
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{Field, Reader};

    #[test]
    fn refs_and_keywords_become_v2() {
        let v3 = json!({"properties": {"metadata": {"allOf": [{"$ref": "#/components/schemas/M"}], "description": "d"},
            "x": {"type": "string", "nullable": true}}});
        assert_eq!(
            to_v2(&v3),
            json!({"properties": {"metadata": {"$ref": "#/definitions/M", "description": "d"}, "x": {"type": "string"}}})
        );
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        ));
        assert!(!wants_protobuf("application/json"));
    }

    #[test]
    fn protobuf_carries_definitions_and_extensions() {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {},
            "definitions": {"a.v1.K": {"type": "object", "required": ["spec"],
                "properties": {"spec": {"type": "string", "enum": ["x"]}},
                "x-kubernetes-group-version-kind": [{"group": "a", "version": "v1", "kind": "K"}]}}});
        let bytes = encode(&doc);
        let mut r = Reader::new(&bytes);
        let mut fields = Vec::new();
        while let Some((n, f)) = r.next_field().unwrap() {
            fields.push((n, f));
        }
        assert_eq!(fields[0], (1, Field::Bytes(b"2.0")));
        let defs = fields.iter().find(|(n, _)| *n == 9).unwrap();
        let Field::Bytes(defs) = defs.1 else { panic!() };
        let text = String::from_utf8_lossy(defs);
        assert!(text.contains("a.v1.K"));
        assert!(text.contains("x-kubernetes-group-version-kind"));
        assert!(text.contains(r#"[{"group":"a","kind":"K","version":"v1"}]"#));
    }
}
