//! The functions of the environment: the CEL standard library and the extensions of
//! Kubernetes 1.33's base environment that the stand-in implements.
//!
//! From cel-rust: the standard library (`size`, `contains`, `startsWith`, `endsWith`,
//! `matches`, conversions, `timestamp`/`duration` and their getters, `dyn`, `type`), the
//! macros (`has`, `all`, `exists`, `exists_one`, `map`, `filter`), optional values
//! (`.?`, `[?`, `optional.of/none/ofNonZeroValue`, `hasValue`, `value`, `or`, `orValue`,
//! `optMap`, `optFlatMap`) and the strings extension at Kubernetes' version 2 (`charAt`,
//! `indexOf`, `lastIndexOf`, `lowerAscii`, `upperAscii`, `replace`, `split`, `substring`,
//! `trim`, `join`, `format`, `strings.quote`).
//!
//! Written here, after the Kubernetes libraries: lists (`isSorted`, `sum`, `min`, `max`,
//! `indexOf`, `lastIndexOf` on lists), regex (`find`, `findAll`), URLs (`url`, `isURL`,
//! `getScheme`, `getHost`, `getHostname`, `getPort`, `getEscapedPath`, `getQuery`) and sets
//! (`sets.contains`, `sets.equivalent`, `sets.intersects`).
//!
//! Not supported (a compile error when a CRD or policy uses them): `authorizer`, quantity,
//! IP/CIDR, `format.*` named formats, semver, two-variable comprehensions
//! (`all(k, v, ...)`, `transformList`, ...), cel-rust's extras Kubernetes lacks (`reverse`,
//! `sort`, `slice`, `flatten`, `math.*`, `base64.*`).

use std::sync::Arc;

use cel::common::types::{DYN_TYPE, INT_TYPE, LIST_TYPE, STRING_TYPE};
use cel::common::value::{CowVal, Val};
use cel::objects::{Key, Map};
use cel::{extensions, Env, ExecutionError, Value};

use super::url::{parse_request_uri, GoUrl};

/// Global functions an expression may call (namespaced ones with their namespace).
pub const GLOBAL_FUNCTIONS: &[&str] = &[
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "dyn",
    "type",
    "timestamp",
    "duration",
    "matches",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "strings.quote",
    "url",
    "isURL",
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
];

/// Member functions an expression may call.
pub const MEMBER_FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    // timestamps and durations
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    // optional values
    "value",
    "hasValue",
    "or",
    "orValue",
    // strings extension, version 2
    "charAt",
    "indexOf",
    "lastIndexOf",
    "lowerAscii",
    "upperAscii",
    "replace",
    "split",
    "substring",
    "trim",
    "join",
    "format",
    // Kubernetes lists
    "isSorted",
    "sum",
    "min",
    "max",
    // Kubernetes regex
    "find",
    "findAll",
    // Kubernetes URLs
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
];

/// Type names that may appear as identifiers (`type(x) == map`).
pub const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// Operators and the interpreter's internal functions.
pub fn is_operator(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('@') || name == "!_" || name == "-_"
}

/// The environment.
pub fn env() -> Env {
    let mut env = Env::stdlib();
    let add = |r: Result<(), cel::DeclarationError>| {
        if let Err(e) = r {
            tracing::error!(error = %e, "Declaring a CEL function failed");
        }
    };
    add(env.add_extension(extensions::strings));
    add(env.add_member_overload(
        "isSorted",
        "k8s_list_is_sorted",
        LIST_TYPE,
        vec![],
        is_sorted,
    ));
    add(env.add_member_overload("sum", "k8s_list_sum", LIST_TYPE, vec![], sum));
    add(env.add_member_overload("min", "k8s_list_min", LIST_TYPE, vec![], min));
    add(env.add_member_overload("max", "k8s_list_max", LIST_TYPE, vec![], max));
    add(env.add_member_overload(
        "indexOf",
        "k8s_list_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        list_index_of,
    ));
    add(env.add_member_overload(
        "lastIndexOf",
        "k8s_list_last_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        list_last_index_of,
    ));
    add(env.add_member_overload(
        "find",
        "k8s_string_find",
        STRING_TYPE,
        vec![STRING_TYPE],
        find,
    ));
    add(env.add_member_overload(
        "findAll",
        "k8s_string_find_all",
        STRING_TYPE,
        vec![STRING_TYPE],
        find_all,
    ));
    add(env.add_member_overload(
        "findAll",
        "k8s_string_find_all_n",
        STRING_TYPE,
        vec![STRING_TYPE, INT_TYPE],
        find_all,
    ));
    add(env.add_overload("url", "k8s_string_to_url", vec![STRING_TYPE], url));
    add(env.add_overload("isURL", "k8s_is_url", vec![STRING_TYPE], is_url));
    for (name, f) in [
        ("getScheme", get_scheme as cel::common::functions::Function),
        ("getHost", get_host),
        ("getHostname", get_hostname),
        ("getPort", get_port),
        ("getEscapedPath", get_escaped_path),
        ("getQuery", get_query),
    ] {
        add(env.add_member_overload(name, &format!("k8s_url_{name}"), DYN_TYPE, vec![], f));
    }
    add(env.add_overload(
        "sets.contains",
        "k8s_sets_contains",
        vec![LIST_TYPE, LIST_TYPE],
        sets_contains,
    ));
    add(env.add_overload(
        "sets.equivalent",
        "k8s_sets_equivalent",
        vec![LIST_TYPE, LIST_TYPE],
        sets_equivalent,
    ));
    add(env.add_overload(
        "sets.intersects",
        "k8s_sets_intersects",
        vec![LIST_TYPE, LIST_TYPE],
        sets_intersects,
    ));
    env
}

type Imp = fn(&[Value]) -> Result<Value, ExecutionError>;

fn call<'b, 'v>(imp: Imp, args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let vals = args
        .iter()
        .map(|a| Value::try_from(&**a))
        .collect::<Result<Vec<_>, _>>()?;
    let out = imp(&vals)?;
    let boxed: Box<dyn Val> = out.try_into()?;
    Ok(CowVal::Owned(boxed))
}

macro_rules! overloads {
    ($($name:ident => $imp:path),* $(,)?) => {$(
        fn $name<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
            call($imp, args)
        }
    )*};
}

overloads! {
    is_sorted => imp::is_sorted,
    sum => imp::sum,
    min => imp::min,
    max => imp::max,
    list_index_of => imp::index_of,
    list_last_index_of => imp::last_index_of,
    find => imp::find,
    find_all => imp::find_all,
    url => imp::url,
    is_url => imp::is_url,
    get_scheme => imp::get_scheme,
    get_host => imp::get_host,
    get_hostname => imp::get_hostname,
    get_port => imp::get_port,
    get_escaped_path => imp::get_escaped_path,
    get_query => imp::get_query,
    sets_contains => imp::sets_contains,
    sets_equivalent => imp::sets_equivalent,
    sets_intersects => imp::sets_intersects,
}

/// CEL equality with cross-type numeric comparison (`1 == 1.0`, `1 == 1u`).
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| equal(p, q))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.map.len() == y.map.len()
                && x.map
                    .iter()
                    .all(|(k, v)| y.map.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => match (number(a), number(b)) {
            (Some(p), Some(q)) => p == q,
            _ => a == b,
        },
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, ExecutionError> {
    use std::cmp::Ordering;
    let no = || ExecutionError::no_such_overload("_<_", vec![type_name(a), type_name(b)]);
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        (Value::Bytes(x), Value::Bytes(y)) => Ok(x.cmp(y)),
        (Value::Timestamp(x), Value::Timestamp(y)) => Ok(x.cmp(y)),
        (Value::Duration(x), Value::Duration(y)) => Ok(x.cmp(y)),
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::UInt(x), Value::UInt(y)) => Ok(x.cmp(y)),
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).ok_or_else(no).or(Ok(Ordering::Equal)),
            _ => Err(no()),
        },
    }
}

fn type_name(v: &Value) -> String {
    v.type_of().to_string()
}

mod imp {
    use super::*;

    fn list<'a>(args: &'a [Value], f: &str) -> Result<&'a Arc<Vec<Value>>, ExecutionError> {
        match args.first() {
            Some(Value::List(l)) => Ok(l),
            other => Err(ExecutionError::no_such_member_overload(
                f,
                vec![other.map(type_name).unwrap_or_default()],
            )),
        }
    }

    fn string<'a>(args: &'a [Value], i: usize, f: &str) -> Result<&'a str, ExecutionError> {
        match args.get(i) {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(ExecutionError::no_such_overload(
                f,
                args.iter().map(type_name).collect(),
            )),
        }
    }

    pub fn is_sorted(args: &[Value]) -> Result<Value, ExecutionError> {
        let l = list(args, "isSorted")?;
        for w in l.windows(2) {
            if compare(&w[0], &w[1])? == std::cmp::Ordering::Greater {
                return Ok(Value::Bool(false));
            }
        }
        Ok(Value::Bool(true))
    }

    pub fn sum(args: &[Value]) -> Result<Value, ExecutionError> {
        let l = list(args, "sum")?;
        let mut acc = match l.first() {
            None => return Ok(Value::Int(0)),
            Some(v) => v.clone(),
        };
        for v in l.iter().skip(1) {
            acc = match (&acc, v) {
                (Value::Int(a), Value::Int(b)) => Value::Int(
                    a.checked_add(*b)
                        .ok_or_else(|| ExecutionError::function_error("sum", "integer overflow"))?,
                ),
                (Value::UInt(a), Value::UInt(b)) => {
                    Value::UInt(a.checked_add(*b).ok_or_else(|| {
                        ExecutionError::function_error("sum", "unsigned integer overflow")
                    })?)
                }
                (Value::Float(a), Value::Float(b)) => Value::Float(a + b),
                (Value::Duration(a), Value::Duration(b)) => Value::Duration(*a + *b),
                _ => {
                    return Err(ExecutionError::no_such_overload(
                        "sum",
                        vec![type_name(&acc), type_name(v)],
                    ))
                }
            };
        }
        Ok(acc)
    }

    fn extreme(args: &[Value], f: &str, want: std::cmp::Ordering) -> Result<Value, ExecutionError> {
        let l = list(args, f)?;
        let mut best = l.first().ok_or_else(|| {
            ExecutionError::function_error(f, format!("{f} called on empty list"))
        })?;
        for v in l.iter().skip(1) {
            if compare(v, best)? == want {
                best = v;
            }
        }
        Ok(best.clone())
    }

    pub fn min(args: &[Value]) -> Result<Value, ExecutionError> {
        extreme(args, "min", std::cmp::Ordering::Less)
    }

    pub fn max(args: &[Value]) -> Result<Value, ExecutionError> {
        extreme(args, "max", std::cmp::Ordering::Greater)
    }

    pub fn index_of(args: &[Value]) -> Result<Value, ExecutionError> {
        let l = list(args, "indexOf")?;
        let x = args.get(1).unwrap_or(&Value::Null);
        Ok(Value::Int(
            l.iter().position(|v| equal(v, x)).map_or(-1, |i| i as i64),
        ))
    }

    pub fn last_index_of(args: &[Value]) -> Result<Value, ExecutionError> {
        let l = list(args, "lastIndexOf")?;
        let x = args.get(1).unwrap_or(&Value::Null);
        Ok(Value::Int(
            l.iter().rposition(|v| equal(v, x)).map_or(-1, |i| i as i64),
        ))
    }

    fn regex(args: &[Value], f: &str) -> Result<(String, regex::Regex), ExecutionError> {
        let s = string(args, 0, f)?.to_string();
        let re = regex::Regex::new(string(args, 1, f)?)
            .map_err(|e| ExecutionError::function_error(f, format!("error parsing regexp: {e}")))?;
        Ok((s, re))
    }

    pub fn find(args: &[Value]) -> Result<Value, ExecutionError> {
        let (s, re) = regex(args, "find")?;
        let m = re
            .find(&s)
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        Ok(Value::String(Arc::new(m)))
    }

    pub fn find_all(args: &[Value]) -> Result<Value, ExecutionError> {
        let (s, re) = regex(args, "findAll")?;
        let limit = match args.get(2) {
            Some(Value::Int(n)) if *n >= 0 => *n as usize,
            _ => usize::MAX,
        };
        let all = re
            .find_iter(&s)
            .take(limit)
            .map(|m| Value::String(Arc::new(m.as_str().to_string())))
            .collect();
        Ok(Value::List(Arc::new(all)))
    }

    pub fn url(args: &[Value]) -> Result<Value, ExecutionError> {
        let s = string(args, 0, "url")?;
        let u = parse_request_uri(s).map_err(|e| {
            ExecutionError::function_error(
                "url",
                format!("URL parse error during conversion from string: {e}"),
            )
        })?;
        Ok(Value::Opaque(Arc::new(u)))
    }

    pub fn is_url(args: &[Value]) -> Result<Value, ExecutionError> {
        Ok(Value::Bool(
            parse_request_uri(string(args, 0, "isURL")?).is_ok(),
        ))
    }

    fn the_url<'a>(args: &'a [Value], f: &str) -> Result<&'a GoUrl, ExecutionError> {
        match args.first() {
            Some(Value::Opaque(o)) => o.downcast_ref::<GoUrl>().ok_or_else(|| {
                ExecutionError::no_such_member_overload(f, vec![o.runtime_type_name().to_string()])
            }),
            other => Err(ExecutionError::no_such_member_overload(
                f,
                vec![other.map(type_name).unwrap_or_default()],
            )),
        }
    }

    fn text(s: &str) -> Value {
        Value::String(Arc::new(s.to_string()))
    }

    pub fn get_scheme(args: &[Value]) -> Result<Value, ExecutionError> {
        Ok(text(&the_url(args, "getScheme")?.scheme))
    }

    pub fn get_host(args: &[Value]) -> Result<Value, ExecutionError> {
        Ok(text(&the_url(args, "getHost")?.host))
    }

    pub fn get_hostname(args: &[Value]) -> Result<Value, ExecutionError> {
        Ok(text(the_url(args, "getHostname")?.hostname()))
    }

    pub fn get_port(args: &[Value]) -> Result<Value, ExecutionError> {
        Ok(text(the_url(args, "getPort")?.port()))
    }

    pub fn get_escaped_path(args: &[Value]) -> Result<Value, ExecutionError> {
        Ok(text(&the_url(args, "getEscapedPath")?.path))
    }

    pub fn get_query(args: &[Value]) -> Result<Value, ExecutionError> {
        let q = the_url(args, "getQuery")?.query();
        Ok(Value::Map(Map {
            map: Arc::new(
                q.into_iter()
                    .map(|(k, vs)| {
                        (
                            Key::String(Arc::new(k)),
                            Value::List(Arc::new(vs.iter().map(|v| text(v)).collect())),
                        )
                    })
                    .collect(),
            ),
        }))
    }

    fn two_lists<'a>(
        args: &'a [Value],
        f: &str,
    ) -> Result<(&'a [Value], &'a [Value]), ExecutionError> {
        match (args.first(), args.get(1)) {
            (Some(Value::List(a)), Some(Value::List(b))) => Ok((a, b)),
            _ => Err(ExecutionError::no_such_overload(
                f,
                args.iter().map(type_name).collect(),
            )),
        }
    }

    pub fn sets_contains(args: &[Value]) -> Result<Value, ExecutionError> {
        let (a, b) = two_lists(args, "sets.contains")?;
        Ok(Value::Bool(b.iter().all(|x| a.iter().any(|y| equal(x, y)))))
    }

    pub fn sets_equivalent(args: &[Value]) -> Result<Value, ExecutionError> {
        let (a, b) = two_lists(args, "sets.equivalent")?;
        Ok(Value::Bool(
            b.iter().all(|x| a.iter().any(|y| equal(x, y)))
                && a.iter().all(|x| b.iter().any(|y| equal(x, y))),
        ))
    }

    pub fn sets_intersects(args: &[Value]) -> Result<Value, ExecutionError> {
        let (a, b) = two_lists(args, "sets.intersects")?;
        Ok(Value::Bool(b.iter().any(|x| a.iter().any(|y| equal(x, y)))))
    }
}
