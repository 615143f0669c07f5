//! OpenAPI value validation of custom resources, as kube-openapi's validator does it for the
//! API server: `type` (and `nullable`), `enum`, `required`, `minLength`/`maxLength`,
//! `pattern`, `minItems`/`maxItems`, `minProperties`/`maxProperties`, `minimum`/`maximum`
//! (and exclusive), `multipleOf`, `format` (`date-time`, `date`, `byte`, `uuid`, `ipv4`,
//! `ipv6`, `cidr`), and the `x-kubernetes-list-type` `set`/`map` uniqueness.
//!
//! Paths are kube-openapi's: `spec.items[0].name` for list items, `spec.labels.key` for map
//! entries; messages are its messages (`spec.acr.scope in body should be at least 1 chars
//! long`), turned into field errors the way the API server converts them.

use serde_json::Value;

use super::{go_value, Cause, Seg};

/// Compiled `pattern` regexes, keyed by the pattern.
pub type Patterns = std::collections::HashMap<String, regex::Regex>;

/// Collect every pattern of the schema (a bad one is a CRD compile error).
pub fn patterns(schema: &Value, path: &str, out: &mut Patterns, errs: &mut Vec<(String, String)>) {
    if let Some(p) = schema["pattern"].as_str() {
        match regex::Regex::new(p) {
            Ok(re) => {
                out.insert(p.to_string(), re);
            }
            Err(e) => errs.push((
                format!("{path}.pattern"),
                format!("Invalid value: {p:?}: {e}"),
            )),
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            patterns(s, &format!("{path}.properties[{k}]"), out, errs);
        }
    }
    if schema["items"].is_object() {
        patterns(&schema["items"], &format!("{path}.items"), out, errs);
    }
    if schema["additionalProperties"].is_object() {
        patterns(
            &schema["additionalProperties"],
            &format!("{path}.additionalProperties"),
            out,
            errs,
        );
    }
}

struct Ctx<'a> {
    patterns: &'a Patterns,
    out: Vec<Cause>,
}

/// Validate `v` against `schema`; `root` skips `apiVersion`, `kind` and `metadata` at the top.
pub fn validate(
    schema: &Value,
    v: &Value,
    root_path: &str,
    node: Vec<Seg>,
    patterns: &Patterns,
) -> Vec<Cause> {
    let mut ctx = Ctx {
        patterns,
        out: Vec::new(),
    };
    ctx.value(schema, v, root_path, &node, root_path.is_empty());
    ctx.out
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn num(n: &Value) -> String {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Some(f) => format!("{f}"),
        None => n.to_string(),
    }
}

fn cause(reason: &'static str, path: &str, body: String, node: &[Seg]) -> Cause {
    Cause::schema(reason, path, body, node.to_vec())
}

impl Ctx<'_> {
    fn value(&mut self, s: &Value, v: &Value, path: &str, node: &[Seg], root: bool) {
        let name = path;
        let ty = s["type"].as_str().unwrap_or("");
        let data_ty = json_type(v);
        if v.is_null() {
            if !ty.is_empty() && s["nullable"] != true {
                self.type_error(path, ty, "null", node);
            }
            return;
        }
        let int_or_string = s["x-kubernetes-int-or-string"] == true;
        let type_ok = ty.is_empty()
            || ty == data_ty
            || (ty == "integer"
                && data_ty == "number"
                && v.as_f64().is_some_and(|f| f.fract() == 0.0))
            || (ty == "number" && data_ty == "integer");
        if !type_ok && !int_or_string {
            self.type_error(path, ty, data_ty, node);
        }
        if let Some(allowed) = s["enum"].as_array() {
            if !allowed.contains(v) {
                let values: Vec<String> = allowed
                    .iter()
                    .map(|a| {
                        format!(
                            "{:?}",
                            a.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| a.to_string())
                        )
                    })
                    .collect();
                self.out.push(cause(
                    "FieldValueNotSupported",
                    path,
                    format!(
                        "Unsupported value: {}: supported values: {}",
                        go_value(v),
                        values.join(", ")
                    ),
                    node,
                ));
            }
        }
        match v {
            Value::String(st) if type_ok || int_or_string => self.string(s, st, name, node),
            Value::Number(_) if type_ok || int_or_string => self.number(s, v, name, node),
            Value::Array(items) if type_ok => {
                let n = items.len() as u64;
                if let Some(max) = s["maxItems"].as_u64().filter(|m| n > *m) {
                    self.out.push(cause(
                        "FieldValueTooMany",
                        path,
                        format!("Too many: {n}: must have at most {max} items"),
                        node,
                    ));
                }
                if let Some(min) = s["minItems"].as_u64().filter(|m| n < *m) {
                    self.out.push(cause(
                        "FieldValueInvalid",
                        path,
                        format!(
                            "Invalid value: {n}: {name} in body should have at least {min} items"
                        ),
                        node,
                    ));
                }
                if s["items"].is_object() {
                    for (i, item) in items.iter().enumerate() {
                        let mut child = node.to_vec();
                        child.push(Seg::Index(i));
                        self.value(&s["items"], item, &format!("{path}[{i}]"), &child, false);
                    }
                }
            }
            Value::Object(m) if type_ok => {
                let n = m.len() as u64;
                if let Some(min) = s["minProperties"].as_u64().filter(|x| n < *x) {
                    self.out.push(cause(
                        "FieldValueInvalid",
                        path,
                        format!("Invalid value: {n}: {name} in body should have at least {min} properties"),
                        node,
                    ));
                }
                if let Some(max) = s["maxProperties"].as_u64().filter(|x| n > *x) {
                    self.out.push(cause(
                        "FieldValueTooMany",
                        path,
                        format!("Too many: {n}: must have at most {max} items"),
                        node,
                    ));
                }
                for (k, cv) in m {
                    if root && (k == "apiVersion" || k == "kind" || k == "metadata") {
                        continue;
                    }
                    let (cs, seg) = match s["properties"].get(k) {
                        Some(cs) => (cs, Seg::Field(k.clone())),
                        None if s["additionalProperties"].is_object() => {
                            (&s["additionalProperties"], Seg::Key(k.clone()))
                        }
                        None => continue,
                    };
                    let mut child = node.to_vec();
                    child.push(seg);
                    let cp = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.value(cs, cv, &cp, &child, false);
                }
                for r in s["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !m.contains_key(r) {
                        let cp = if path.is_empty() {
                            r.to_string()
                        } else {
                            format!("{path}.{r}")
                        };
                        self.out.push(cause(
                            "FieldValueRequired",
                            &cp,
                            "Required value".to_string(),
                            node,
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn type_error(&mut self, path: &str, want: &str, got: &str, node: &[Seg]) {
        self.out.push(cause(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: {got:?}: {path} in body must be of type {want}: {got:?}"),
            node,
        ));
    }

    fn string(&mut self, s: &Value, st: &str, name: &str, node: &[Seg]) {
        let len = st.chars().count() as u64;
        if let Some(max) = s["maxLength"].as_u64().filter(|m| len > *m) {
            self.out.push(cause(
                "FieldValueTooLong",
                name,
                format!("Too long: may not be more than {max} bytes"),
                node,
            ));
        }
        if let Some(min) = s["minLength"].as_u64().filter(|m| len < *m) {
            self.out.push(cause(
                "FieldValueInvalid",
                name,
                format!(
                    "Invalid value: {st:?}: {name} in body should be at least {min} chars long"
                ),
                node,
            ));
        }
        if let Some(p) = s["pattern"].as_str() {
            if let Some(re) = self.patterns.get(p) {
                if !re.is_match(st) {
                    self.out.push(cause(
                        "FieldValueInvalid",
                        name,
                        format!("Invalid value: {st:?}: {name} in body should match '{p}'"),
                        node,
                    ));
                }
            }
        }
        if let Some(f) = s["format"].as_str() {
            if !format_ok(f, st) {
                self.out.push(cause(
                    "FieldValueTypeInvalid",
                    name,
                    format!("Invalid value: {st:?}: {name} in body must be of type {f}: {st:?}"),
                    node,
                ));
            }
        }
    }

    fn number(&mut self, s: &Value, v: &Value, name: &str, node: &[Seg]) {
        let Some(x) = v.as_f64() else { return };
        let shown = num(v);
        let mut bound = |key: &str,
                         excl_key: &str,
                         violated: fn(f64, f64, bool) -> bool,
                         incl: &str,
                         excl: &str| {
            if let Some(b) = s[key].as_f64() {
                let exclusive = s[excl_key] == true;
                if violated(x, b, exclusive) {
                    let what = if exclusive { excl } else { incl };
                    self.out.push(cause(
                        "FieldValueInvalid",
                        name,
                        format!(
                            "Invalid value: {shown}: {name} in body should be {what} {}",
                            num(&s[key])
                        ),
                        node,
                    ));
                }
            }
        };
        bound(
            "maximum",
            "exclusiveMaximum",
            |x, b, e| if e { x >= b } else { x > b },
            "less than or equal to",
            "less than",
        );
        bound(
            "minimum",
            "exclusiveMinimum",
            |x, b, e| if e { x <= b } else { x < b },
            "greater than or equal to",
            "greater than",
        );
        if let Some(m) = s["multipleOf"].as_f64().filter(|m| *m > 0.0) {
            let q = x / m;
            if (q - q.round()).abs() > 1e-9 {
                self.out.push(cause(
                    "FieldValueInvalid",
                    name,
                    format!(
                        "Invalid value: {shown}: {name} in body should be a multiple of {}",
                        num(&s["multipleOf"])
                    ),
                    node,
                ));
            }
        }
    }
}

fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10,
        "byte" => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "uuid" | "uuid3" | "uuid4" | "uuid5" => uuid::Uuid::parse_str(s).is_ok() && s.len() == 36,
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let bits: Option<u8> = bits.parse().ok();
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => bits.is_some_and(|b| b <= 32),
                Ok(std::net::IpAddr::V6(_)) => bits.is_some_and(|b| b <= 128),
                Err(_) => false,
            }
        }),
        _ => true,
    }
}

/// `x-kubernetes-list-type: set | map` uniqueness (`Duplicate value`), with CEL-style paths.
pub fn list_types(schema: &Value, v: &Value, path: &str, out: &mut Vec<Cause>) {
    match v {
        Value::Array(items) => {
            let lt = schema["x-kubernetes-list-type"].as_str();
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut seen: Vec<Value> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ident = match lt {
                    Some("set") => Some(item.clone()),
                    Some("map") => Some(Value::Object(
                        keys.iter()
                            .filter_map(|k| item.get(*k).map(|x| (k.to_string(), x.clone())))
                            .collect(),
                    )),
                    _ => None,
                };
                if let Some(id) = ident {
                    if seen.contains(&id) {
                        out.push(Cause::schema(
                            "FieldValueDuplicate",
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: {}", go_value(&id)),
                            Vec::new(),
                        ));
                    }
                    seen.push(id);
                }
                if schema["items"].is_object() {
                    list_types(&schema["items"], item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            for (k, cv) in m {
                let (cs, cp) = match schema["properties"].get(k) {
                    Some(cs) => (
                        cs,
                        if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        },
                    ),
                    None if schema["additionalProperties"].is_object() => {
                        (&schema["additionalProperties"], format!("{path}[{k}]"))
                    }
                    None => continue,
                };
                list_types(cs, cv, &cp, out);
            }
        }
        _ => {}
    }
}
