//! JSON to CEL values and back.
//!
//! Two conversions, as in the API server:
//! - [`from_json`], untyped, for admission policies (`object`, `oldObject`, `params`, ...):
//!   the API server hands CEL the unstructured object, so integers are `int`, other
//!   numbers `double`, timestamps plain strings, and field names are not escaped.
//! - [`from_json_typed`], for CRD validation rules, driven by the structural schema: an
//!   `integer` is an `int` and a `number` a `double` whatever the JSON looks like;
//!   `format: date-time`/`date` strings are timestamps, `duration` durations, `byte` bytes;
//!   `x-kubernetes-int-or-string` is an int or a string; property names that are not CEL
//!   identifiers are escaped (`x-y` → `x__dash__y`, `namespace` → `__namespace__`);
//!   an embedded resource's (and the root's) `metadata` carries only `name` and
//!   `generateName`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use cel::objects::{Key, Map};
use cel::Value;
use serde_json::Value as Json;

/// Untyped conversion.
pub fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(from_json).collect())),
        Json::Object(m) => map(m
            .iter()
            .map(|(k, v)| (Key::String(Arc::new(k.clone())), from_json(v)))),
    }
}

fn map(entries: impl Iterator<Item = (Key, Value)>) -> Value {
    Value::Map(Map {
        map: Arc::new(entries.collect::<HashMap<_, _>>()),
    })
}

const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// Kubernetes' escaping of a property name into a CEL field name; `None` when it cannot be
/// escaped (the property is then invisible to CEL, as in the API server).
pub fn escape(ident: &str) -> Option<String> {
    let first = ident.chars().next()?;
    if first.is_ascii_digit() {
        return None;
    }
    if RESERVED.contains(&ident) {
        return Some(format!("__{ident}__"));
    }
    let mut out = String::with_capacity(ident.len());
    let mut chars = ident.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push_str("__underscores__");
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// Schema-typed conversion (CRD validation rules). `root` marks the root of a resource (the
/// object itself, or an embedded resource).
pub fn from_json_typed(v: &Json, schema: &Json, root: bool) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        return match v {
            Json::Number(n) => n.as_i64().map(Value::Int).unwrap_or_else(|| from_json(v)),
            _ => from_json(v),
        };
    }
    let is_resource = root || schema["x-kubernetes-embedded-resource"] == true;
    match (schema["type"].as_str(), v) {
        (Some("integer"), Json::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Value::Int(f as i64),
                Some(f) => Value::Float(f),
                None => from_json(v),
            },
        },
        (Some("number"), Json::Number(n)) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        (Some("string"), Json::String(s)) => string(s, schema["format"].as_str()),
        (Some("array"), Json::Array(items)) => {
            let is = &schema["items"];
            Value::List(Arc::new(
                items
                    .iter()
                    .map(|i| {
                        if is.is_object() {
                            from_json_typed(i, is, false)
                        } else {
                            from_json(i)
                        }
                    })
                    .collect(),
            ))
        }
        (_, Json::Object(m)) if schema["properties"].is_object() || is_resource => {
            let props = &schema["properties"];
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            let mut out = Vec::new();
            for (k, val) in m {
                if is_resource && k == "metadata" {
                    let mut md = serde_json::Map::new();
                    for f in ["name", "generateName"] {
                        if let Some(x) = val.get(f) {
                            md.insert(f.to_string(), x.clone());
                        }
                    }
                    out.push((
                        Key::String(Arc::new(k.clone())),
                        from_json(&Json::Object(md)),
                    ));
                    continue;
                }
                if is_resource && (k == "apiVersion" || k == "kind") {
                    out.push((Key::String(Arc::new(k.clone())), from_json(val)));
                    continue;
                }
                let Some(name) = escape(k) else { continue };
                match props.get(k) {
                    Some(ps) => {
                        out.push((Key::String(Arc::new(name)), from_json_typed(val, ps, false)))
                    }
                    None if preserve => out.push((Key::String(Arc::new(name)), from_json(val))),
                    None => {}
                }
            }
            map(out.into_iter())
        }
        (_, Json::Object(m)) if schema["additionalProperties"].is_object() => {
            let ap = &schema["additionalProperties"];
            map(m.iter().map(|(k, val)| {
                (
                    Key::String(Arc::new(k.clone())),
                    from_json_typed(val, ap, false),
                )
            }))
        }
        _ => from_json(v),
    }
}

fn string(s: &str, format: Option<&str>) -> Value {
    match format {
        Some("date-time") => match s.parse::<jiff::Timestamp>() {
            Ok(t) => timestamp(t),
            Err(_) => Value::String(Arc::new(s.to_string())),
        },
        Some("date") => match format!("{s}T00:00:00Z").parse::<jiff::Timestamp>() {
            Ok(t) => timestamp(t),
            Err(_) => Value::String(Arc::new(s.to_string())),
        },
        Some("duration") => match parse_go_duration(s) {
            Some(d) => Value::Duration(d),
            None => Value::String(Arc::new(s.to_string())),
        },
        Some("byte") => match base64::engine::general_purpose::STANDARD.decode(s) {
            Ok(b) => Value::Bytes(Arc::new(b)),
            Err(_) => Value::String(Arc::new(s.to_string())),
        },
        _ => Value::String(Arc::new(s.to_string())),
    }
}

fn timestamp(t: jiff::Timestamp) -> Value {
    let secs = t.as_second();
    let nanos = t.subsec_nanosecond().max(0) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(dt) => Value::Timestamp(dt.fixed_offset()),
        None => Value::Null,
    }
}

/// Parse a Go `time.ParseDuration` string (`1h30m`, `-1.5s`, `300ms`).
pub fn parse_go_duration(s: &str) -> Option<chrono::Duration> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(chrono::Duration::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_nanos += n * unit;
    }
    let nanos = if neg { -total_nanos } else { total_nanos };
    Some(chrono::Duration::nanoseconds(nanos as i64))
}

/// A CEL value as the string a message would print (strings unquoted).
pub fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escaping_follows_kubernetes() {
        assert_eq!(escape("foo").as_deref(), Some("foo"));
        assert_eq!(escape("x-y").as_deref(), Some("x__dash__y"));
        assert_eq!(escape("a.b/c").as_deref(), Some("a__dot__b__slash__c"));
        assert_eq!(escape("a__b").as_deref(), Some("a__underscores__b"));
        assert_eq!(escape("namespace").as_deref(), Some("__namespace__"));
        assert_eq!(escape("1a"), None);
        assert_eq!(escape("a b"), None);
    }

    #[test]
    fn typed_numbers_and_formats() {
        let schema = json!({"type": "object", "properties": {
            "i": {"type": "integer"}, "n": {"type": "number"},
            "t": {"type": "string", "format": "date-time"},
            "d": {"type": "string", "format": "duration"},
            "ios": {"x-kubernetes-int-or-string": true}}});
        let v = from_json_typed(
            &json!({"i": 3.0, "n": 2, "t": "2024-01-02T03:04:05Z", "d": "1m30s", "ios": "50%", "unknown": 1}),
            &schema,
            false,
        );
        let Value::Map(m) = v else { panic!("map") };
        let get = |k: &str| m.map.get(&Key::String(Arc::new(k.to_string()))).cloned();
        assert_eq!(get("i"), Some(Value::Int(3)));
        assert_eq!(get("n"), Some(Value::Float(2.0)));
        assert!(matches!(get("t"), Some(Value::Timestamp(_))));
        assert_eq!(
            get("d"),
            Some(Value::Duration(chrono::Duration::seconds(90)))
        );
        assert_eq!(get("ios"), Some(Value::String(Arc::new("50%".into()))));
        assert_eq!(get("unknown"), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h"), Some(chrono::Duration::hours(1)));
        assert_eq!(
            parse_go_duration("-1.5s"),
            Some(chrono::Duration::milliseconds(-1500))
        );
        assert_eq!(
            parse_go_duration("300ms"),
            Some(chrono::Duration::milliseconds(300))
        );
        assert_eq!(parse_go_duration("1x"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
