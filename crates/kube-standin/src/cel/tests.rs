use serde_json::json;

use super::value::{from_json, from_json_typed};
use super::*;

fn eval(src: &str) -> Result<Value, String> {
    let e = compile(src, &["self", "oldSelf"]).map_err(|e| format!("compile: {e}"))?;
    let obj = json!({"a": {"b": 1, "s": "x"}, "l": [3, 1, 2], "names": ["acr-pull-x", "y"], "n": null,
                     "u": "https://example.azurecr.io:443/v2?x=1"});
    let act = Activation::default().with("self", from_json(&obj));
    e.eval(&act).map_err(|e| e.0)
}

fn yes(src: &str) {
    assert_eq!(eval(src), Ok(Value::Bool(true)), "{src}");
}

#[test]
fn supported_functions_evaluate() {
    for src in [
        "has(self.a) && !has(self.zz)",
        "self.a.b == 1 && self.a.s == 'x'",
        "[has(self.a), has(self.zz)].exists_one(x, x)",
        "self.l.map(x, x * 2) == [6, 2, 4]",
        "self.l.filter(x, x > 1) == [3, 2]",
        "self.l.all(x, x > 0) && self.l.exists(x, x == 2)",
        "size(self.l) == 3 && self.l.size() == 3 && size('ab') == 2",
        "'abc'.startsWith('a') && 'abc'.endsWith('c') && 'abc'.contains('b')",
        "'abc'.matches('^a') && matches('abc', 'c$')",
        "'ABC'.lowerAscii() == 'abc' && 'abc'.upperAscii() == 'ABC'",
        "'a,b'.split(',') == ['a', 'b'] && ['a', 'b'].join('-') == 'a-b' && ['a'].join() == 'a'",
        "'  a '.trim() == 'a' && 'abc'.indexOf('c') == 2 && 'abca'.lastIndexOf('a') == 3",
        "'abc'.charAt(1) == 'b' && 'abc'.substring(1) == 'bc' && 'abc'.replace('b', 'x') == 'axc'",
        "'%s-%d'.format(['a', 1]) == 'a-1' && strings.quote('a') == '\"a\"'",
        "self.?a.?b.orValue(0) == 1 && self.?zz.orValue(5) == 5 && !self.?zz.hasValue()",
        "optional.of(1).value() == 1 && optional.none().or(optional.of(2)).value() == 2",
        "optional.ofNonZeroValue('').hasValue() == false",
        "self.?a.optMap(a, a.b).value() == 1",
        "[1, ?optional.none()] == [1] && {?'k': optional.none()} == {}",
        "self.n == null && type(self.a) == map && type(self.l) == list",
        "int('5') == 5 && uint(1) == 1u && double(1) == 1.0 && string(1) == '1' && bytes('a') == b'a'",
        "dyn(1) == 1 && bool('true')",
        "timestamp('2020-01-02T00:00:00Z').getFullYear() == 2020 && duration('90s').getMinutes() == 1",
        "timestamp('2020-01-02T00:00:00Z') + duration('24h') > timestamp('2020-01-02T00:00:00Z')",
        "self.l.isSorted() == false && [1, 2].isSorted() && ['a', 'b'].isSorted()",
        "self.l.sum() == 6 && [].sum() == 0 && [1.5, 1.5].sum() == 3.0",
        "self.l.min() == 1 && self.l.max() == 3",
        "self.l.indexOf(1) == 1 && [1, 2, 1].lastIndexOf(1) == 2 && self.l.indexOf(9) == -1",
        "'abc123def456'.find('[0-9]+') == '123' && 'a1b2'.findAll('[0-9]') == ['1', '2'] && 'a1b2'.findAll('[0-9]', 1) == ['1']",
        "isURL(self.u) && !isURL('not a url') && url(self.u).getHostname() == 'example.azurecr.io'",
        "url(self.u).getPort() == '443' && url(self.u).getScheme() == 'https' && url(self.u).getHost() == 'example.azurecr.io:443'",
        "url(self.u).getEscapedPath() == '/v2' && url(self.u).getQuery() == {'x': ['1']}",
        "sets.contains([1, 2, 3], [1, 2]) && sets.equivalent([1, 2], [2, 1]) && sets.intersects([1], [1, 5])",
        "self.names.filter(n, !(n in ['y'])).all(n, n.startsWith('acr-pull-'))",
        "1 == 1.0 && 'x' in ['x']",
    ] {
        yes(src);
    }
}

#[test]
fn unsupported_and_undeclared_are_compile_errors() {
    for (src, want) in [
        ("foo(1)", "undeclared reference to 'foo'"),
        ("self.l.reverse()", "undeclared reference to 'reverse'"),
        ("self.l.sort()", "undeclared reference to 'sort'"),
        (
            "math.greatest(1, 2)",
            "undeclared reference to 'math.greatest'",
        ),
        ("quantity('1Gi')", "undeclared reference to 'quantity'"),
        (
            "authorizer.group('').resource('pods').check('get').allowed()",
            "authorizer",
        ),
        ("undeclared == 1", "undeclared reference to 'undeclared'"),
        ("self.l.map(x, y)", "undeclared reference to 'y'"),
        ("1 +", "Syntax error"),
    ] {
        let err = compile(src, &["self"]).expect_err(src).0;
        assert!(err.contains(want), "{src}: {err}");
        assert!(err.starts_with("ERROR: <input>:"), "{src}: {err}");
    }
    let err = compile("self.a == x", &["self"]).unwrap_err().0;
    assert_eq!(
        err,
        "ERROR: <input>:1:11: undeclared reference to 'x' (in container '')\n | self.a == x\n | ..........^"
    );
}

#[test]
fn runtime_errors_read_like_cel_go() {
    assert_eq!(eval("self.zz == 1"), Err("no such key: zz".into()));
    assert_eq!(eval("self.l[7] == 1"), Err("index out of bounds: 7".into()));
    assert_eq!(eval("1 / 0 == 1"), Err("division by zero".into()));
    assert_eq!(eval("'a'.startsWith(1)"), Err("no such overload".into()));
    assert_eq!(
        eval("[].min() == 1"),
        Err("min called on empty list".into())
    );
    assert!(eval("url('nope') == url('nope')").unwrap_err().starts_with(
        "URL parse error during conversion from string: parse \"nope\": invalid URI for request"
    ));
}

#[test]
fn typed_values_follow_the_schema() {
    let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "count": {"type": "integer"}, "when": {"type": "string", "format": "date-time"},
        "x-y": {"type": "string"}, "namespace": {"type": "string"}}}}});
    let obj = json!({"apiVersion": "g/v1", "kind": "K", "metadata": {"name": "n", "labels": {"a": "b"}},
                     "spec": {"count": 2.0, "when": "2024-05-01T00:00:00Z", "x-y": "z", "namespace": "ns"}});
    let v = from_json_typed(&obj, &schema, true);
    let e = compile(
        "self.spec.count == 2 && type(self.spec.count) == int && self.spec.when < timestamp('2025-01-01T00:00:00Z') \
         && self.spec.x__dash__y == 'z' && self.spec.__namespace__ == 'ns' && self.metadata.name == 'n' \
         && !has(self.metadata.labels) && self.kind == 'K'",
        &["self"],
    )
    .unwrap();
    assert_eq!(
        e.eval(&Activation::default().with("self", v)),
        Ok(Value::Bool(true))
    );
}

#[test]
fn references_are_recorded() {
    let e = compile(
        "variables.a + variables.?b.orValue('') == oldSelf",
        &["variables", "oldSelf"],
    )
    .unwrap();
    assert!(e.uses("oldSelf") && e.uses("variables"));
    assert_eq!(e.fields_of("variables").collect::<Vec<_>>(), vec!["a", "b"]);
    let e = compile("[1].all(oldSelf, oldSelf > 0)", &["oldSelf"]).unwrap();
    assert!(!e.uses("oldSelf"), "a comprehension variable shadows");
}

/// An activation converts a variable once and reuses it, but a variable bound again is
/// what the next expression reads (the policy plugin rebinds `variables` after each one).
#[test]
fn a_rebound_variable_is_read_afresh_by_the_next_expression() {
    let vars = ["object", "variables"];
    let name = compile("object.metadata.name", &vars).unwrap();
    let count = compile("size(variables)", &vars).unwrap();
    let both = compile("object.metadata.name + string(size(variables))", &vars).unwrap();
    let mut act = Activation::default()
        .with("object", from_json(&json!({"metadata": {"name": "a"}})))
        .with("variables", from_json(&json!({})));
    assert_eq!(
        name.eval(&act).unwrap(),
        Value::String(Arc::new("a".into()))
    );
    assert_eq!(count.eval(&act).unwrap(), Value::Int(0));
    act.set("variables", from_json(&json!({"x": 1, "y": 2})));
    assert_eq!(count.eval(&act).unwrap(), Value::Int(2));
    act.set("object", from_json(&json!({"metadata": {"name": "b"}})));
    assert_eq!(
        both.eval(&act).unwrap(),
        Value::String(Arc::new("b2".into()))
    );
    assert_eq!(
        name.eval(&act).unwrap(),
        Value::String(Arc::new("b".into()))
    );
}

/// What an expression reads of a variable decides what is converted for it: its fields, or
/// the whole of it when it is read other than through a field.
#[test]
fn whole_reads_are_told_from_field_reads() {
    let vars = ["variables", "object"];
    let c = |src: &str| compile(src, &vars).unwrap();
    let fields = |e: &Expression| {
        e.fields_of("variables")
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let e = c("variables.a + variables.?b.orValue('') + object.metadata.name");
    assert!(e.uses("variables") && !e.reads_whole("variables"));
    assert_eq!(fields(&e), vec!["a", "b"]);
    assert!(!e.reads_whole("object"));
    for whole in [
        "size(variables) > 0",
        "variables.all(k, k != '')",
        "variables.a == '' || variables == {}",
        "has(variables.a) && [variables][0].a == ''",
    ] {
        assert!(c(whole).reads_whole("variables"), "{whole}");
    }
    // A comprehension's own `variables` is not the top-level one.
    let shadowed = c("[1].all(variables, variables > 0)");
    assert!(!shadowed.uses("variables") && !shadowed.reads_whole("variables"));
}
