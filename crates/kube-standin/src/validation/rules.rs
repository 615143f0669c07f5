//! `x-kubernetes-validations`: CEL rules at any level of a CRD schema, compiled when the CRD
//! is written and evaluated on every write of an object.
//!
//! Per rule: `rule` (with `self`, and `oldSelf` for transition rules), `message`,
//! `messageExpression`, `reason` (`FieldValueInvalid`, `FieldValueForbidden`,
//! `FieldValueRequired`, `FieldValueDuplicate`), `fieldPath` and `optionalOldSelf`. A
//! transition rule runs only when the node has a correlated old value, unless
//! `optionalOldSelf` makes `oldSelf` an optional (`optional.none()` on create). Failures of
//! rules without `oldSelf` on unchanged values are ratcheted into warnings.

use serde_json::Value;

use crate::cel::{self, value::from_json_typed, Activation, Expression};

use super::{ratchet, Cause, Seg};

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    rule: Expression,
    text: String,
    message: Option<String>,
    message_expression: Option<Expression>,
    reason: Option<String>,
    field_path: Vec<Seg>,
    optional_old_self: bool,
}

/// The rules of one schema node, with the node's path.
#[derive(Debug, Clone)]
pub struct NodeRules {
    /// Schema path of the node (`spec`, `spec.acr`, `spec.items[*]`, ...); `*` for list items
    /// and map values.
    pattern: Vec<Seg>,
    rules: Vec<Rule>,
}

/// All rules of a schema.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    nodes: Vec<NodeRules>,
}

const WILDCARD: &str = "*";

/// A compile issue: the CRD field (`...x-kubernetes-validations[0].rule`) and the error body.
pub type Issue = (String, String);

fn go_rule(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    let reason = match r["reason"].as_str() {
        Some(x) => format!("(*apiextensions.FieldValueErrorReason)({x:?})"),
        None => "(*apiextensions.FieldValueErrorReason)(nil)".to_string(),
    };
    let oos = match r["optionalOldSelf"].as_bool() {
        Some(b) => format!("(*bool)({b})"),
        None => "(*bool)(nil)".to_string(),
    };
    format!(
        "apiextensions.ValidationRule{{Rule:{:?}, Message:{:?}, MessageExpression:{:?}, Reason:{reason}, FieldPath:{:?}, OptionalOldSelf:{oos}}}",
        s("rule"),
        s("message"),
        s("messageExpression"),
        s("fieldPath")
    )
}

/// Parse a rule's `fieldPath` (`.spec.x`, `['a.b']`) against the node's schema.
fn field_path(fp: &str, mut schema: &Value) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    let mut rest = fp;
    while !rest.is_empty() {
        let (name, next) = if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            (r[..end].to_string(), &r[end..])
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").ok_or("unexpected end of JSON path")?;
            (r[..end].replace("\\'", "'"), &r[end + 2..])
        } else {
            return Err(format!("expected [ or . but got: {rest}"));
        };
        if name.is_empty() {
            return Err("unexpected end of JSON path".to_string());
        }
        if let Some(p) = schema["properties"].get(&name) {
            out.push(Seg::Field(name));
            schema = p;
        } else if schema["additionalProperties"].is_object() && !schema["properties"].is_object() {
            out.push(Seg::Key(name));
            schema = &schema["additionalProperties"];
        } else {
            return Err("does not refer to a valid field".to_string());
        }
        rest = next;
    }
    Ok(out)
}

impl Rules {
    /// Compile every rule of `schema`; `base` is the CRD path of the schema
    /// (`spec.versions[0].schema.openAPIV3Schema`).
    pub fn compile(schema: &Value, base: &str) -> Result<Rules, Vec<Issue>> {
        let mut rules = Rules::default();
        let mut issues = Vec::new();
        walk(schema, base, &mut Vec::new(), true, &mut rules, &mut issues);
        if issues.is_empty() {
            Ok(rules)
        } else {
            Err(issues)
        }
    }

    /// Whether there are rules at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Evaluate every rule against `new` (and `old`, on an update). Returns errors and the
    /// ratcheted failures (as warnings).
    pub fn validate(
        &self,
        schema: &Value,
        new: &Value,
        old: Option<&Value>,
    ) -> (Vec<Cause>, Vec<String>) {
        let mut errs = Vec::new();
        let mut warnings = Vec::new();
        for node in &self.nodes {
            let mut found = Vec::new();
            instances(schema, new, &node.pattern, &mut Vec::new(), &mut found);
            for (path, value, node_schema) in found {
                if value.is_null() {
                    continue;
                }
                let old_value = ratchet::old_at(schema, new, old, &path);
                let root = path.is_empty() || node_schema["x-kubernetes-embedded-resource"] == true;
                self.eval_node(
                    node,
                    schema,
                    node_schema,
                    &path,
                    value,
                    old_value,
                    root,
                    new,
                    old,
                    &mut errs,
                    &mut warnings,
                );
            }
        }
        (errs, warnings)
    }

    #[allow(clippy::too_many_arguments)]
    fn eval_node(
        &self,
        node: &NodeRules,
        schema: &Value,
        node_schema: &Value,
        path: &[Seg],
        value: &Value,
        old_value: Option<&Value>,
        root: bool,
        new_root: &Value,
        old_root: Option<&Value>,
        errs: &mut Vec<Cause>,
        warnings: &mut Vec<String>,
    ) {
        let ty = node_schema["type"].as_str().unwrap_or_default().to_string();
        let self_v = from_json_typed(value, node_schema, root);
        let old_v = old_value.map(|o| from_json_typed(o, node_schema, root));
        let field = super::render(path);
        for rule in &node.rules {
            let uses_old = rule.rule.uses("oldSelf");
            let mut act = Activation::default().with("self", self_v.clone());
            match (&old_v, uses_old, rule.optional_old_self) {
                (None, true, false) => continue,
                (None, _, true) => act.set("oldSelf", optional(None)),
                (Some(o), _, true) => act.set("oldSelf", optional(Some(o.clone()))),
                (Some(o), _, false) => act.set("oldSelf", o.clone()),
                (None, false, false) => {}
            }
            let shown = rule
                .message
                .clone()
                .unwrap_or_else(|| rule.text.trim().to_string());
            let result = match rule.rule.eval(&act) {
                Ok(r) => r,
                Err(e) => {
                    let detail = if e.0.starts_with("no such overload") {
                        format!("'{}': call arguments did not match a supported operator, function or macro signature for rule: {shown}", e.0)
                    } else {
                        format!("{} evaluating rule: {shown}", e.0)
                    };
                    errs.push(Cause::rule(
                        "FieldValueInvalid",
                        &field,
                        format!("Invalid value: {ty:?}: {detail}"),
                        path.to_vec(),
                        false,
                    ));
                    continue;
                }
            };
            if cel::is_true(&result) {
                continue;
            }
            let mut detail = match &rule.message {
                Some(m) => m.trim().to_string(),
                None => format!("failed rule: {}", rule.text.trim()),
            };
            if let Some(me) = &rule.message_expression {
                if let Ok(::cel::Value::String(s)) = me.eval(&act) {
                    let t = s.trim();
                    if !t.is_empty() && !t.contains('\n') && t.len() <= 5120 {
                        detail = t.to_string();
                    }
                }
            }
            let mut at = path.to_vec();
            at.extend(rule.field_path.iter().cloned());
            let at_field = super::render(&at);
            let (reason, body) = match rule.reason.as_deref() {
                Some("FieldValueForbidden") => {
                    ("FieldValueForbidden", format!("Forbidden: {detail}"))
                }
                Some("FieldValueRequired") => {
                    ("FieldValueRequired", format!("Required value: {detail}"))
                }
                Some("FieldValueDuplicate") => {
                    ("FieldValueDuplicate", format!("Duplicate value: {ty:?}"))
                }
                _ => (
                    "FieldValueInvalid",
                    format!("Invalid value: {ty:?}: {detail}"),
                ),
            };
            let cause = Cause::rule(reason, &at_field, body, path.to_vec(), !uses_old);
            if cause.ratchetable && ratchet::unchanged(schema, new_root, old_root, path) {
                warnings.push(cause.message());
            } else {
                errs.push(cause);
            }
        }
    }
}

fn optional(v: Option<::cel::Value>) -> ::cel::Value {
    use ::cel::objects::OptionalValue;
    let o = match v {
        Some(v) => OptionalValue::of(v),
        None => OptionalValue::none(),
    };
    ::cel::Value::Opaque(std::sync::Arc::new(o))
}

/// Every value in `v` at the schema pattern `pattern` (`*` matches list items and map values).
fn instances<'a>(
    schema: &'a Value,
    v: &'a Value,
    pattern: &[Seg],
    at: &mut Vec<Seg>,
    out: &mut Vec<(Vec<Seg>, &'a Value, &'a Value)>,
) {
    let Some((first, rest)) = pattern.split_first() else {
        out.push((at.clone(), v, schema));
        return;
    };
    match first {
        Seg::Field(k) => {
            if let (Some(cv), Some(cs)) = (v.get(k), schema["properties"].get(k)) {
                at.push(Seg::Field(k.clone()));
                instances(cs, cv, rest, at, out);
                at.pop();
            }
        }
        Seg::Key(_) => {
            if let Some(m) = v.as_object() {
                for (k, cv) in m {
                    if schema["properties"].get(k).is_some() {
                        continue;
                    }
                    at.push(Seg::Key(k.clone()));
                    instances(&schema["additionalProperties"], cv, rest, at, out);
                    at.pop();
                }
            }
        }
        Seg::Index(_) => {
            if let Some(items) = v.as_array() {
                for (i, cv) in items.iter().enumerate() {
                    at.push(Seg::Index(i));
                    instances(&schema["items"], cv, rest, at, out);
                    at.pop();
                }
            }
        }
    }
}

fn walk(
    schema: &Value,
    crd_path: &str,
    pattern: &mut Vec<Seg>,
    correlatable: bool,
    rules: &mut Rules,
    issues: &mut Vec<Issue>,
) {
    if let Some(list) = schema["x-kubernetes-validations"].as_array() {
        let mut compiled = Vec::new();
        for (i, r) in list.iter().enumerate() {
            let at = format!("{crd_path}.x-kubernetes-validations[{i}]");
            let text = r["rule"].as_str().unwrap_or_default();
            if text.trim().is_empty() {
                issues.push((format!("{at}.rule"), "Required value".to_string()));
                continue;
            }
            let expr = match cel::compile(text, &["self", "oldSelf"]) {
                Ok(e) => e,
                Err(e) => {
                    issues.push((
                        format!("{at}.rule"),
                        format!("Invalid value: {}: compilation failed: {e}", go_rule(r)),
                    ));
                    continue;
                }
            };
            if expr.uses("oldSelf") && !correlatable {
                issues.push((
                    format!("{at}.rule"),
                    format!(
                        "Invalid value: {}: oldSelf cannot be used on the uncorrelatable portion of the schema within {}",
                        go_rule(r),
                        super::render(pattern)
                    ),
                ));
            }
            let message_expression = match r["messageExpression"]
                .as_str()
                .filter(|m| !m.trim().is_empty())
            {
                None => None,
                Some(me) => {
                    match cel::compile(me, &["self", "oldSelf"]) {
                        Ok(e) => Some(e),
                        Err(e) => {
                            issues.push((
                            format!("{at}.messageExpression"),
                            format!("Invalid value: {me:?}: messageExpression compilation failed: {e}"),
                        ));
                            None
                        }
                    }
                }
            };
            let reason = r["reason"].as_str().map(str::to_string);
            if let Some(rs) = &reason {
                const OK: [&str; 4] = [
                    "FieldValueDuplicate",
                    "FieldValueForbidden",
                    "FieldValueInvalid",
                    "FieldValueRequired",
                ];
                if !OK.contains(&rs.as_str()) {
                    issues.push((
                        format!("{at}.reason"),
                        format!("Unsupported value: {rs:?}: supported values: \"FieldValueDuplicate\", \"FieldValueForbidden\", \"FieldValueInvalid\", \"FieldValueRequired\""),
                    ));
                }
            }
            let fp = match r["fieldPath"].as_str().filter(|f| !f.is_empty()) {
                None => Vec::new(),
                Some(f) => match field_path(f, schema) {
                    Ok(p) => p,
                    Err(e) => {
                        issues.push((
                            format!("{at}.fieldPath"),
                            format!("Invalid value: {f:?}: fieldPath must be a valid path: {e}"),
                        ));
                        Vec::new()
                    }
                },
            };
            let message = r["message"]
                .as_str()
                .filter(|m| !m.trim().is_empty())
                .map(str::to_string);
            if let Some(m) = &message {
                if m.contains('\n') {
                    issues.push((
                        format!("{at}.message"),
                        format!("Invalid value: {m:?}: message must not contain line breaks"),
                    ));
                }
            }
            compiled.push(Rule {
                rule: expr,
                text: text.to_string(),
                message,
                message_expression,
                reason,
                field_path: fp,
                optional_old_self: r["optionalOldSelf"] == true,
            });
        }
        if !compiled.is_empty() {
            rules.nodes.push(NodeRules {
                pattern: pattern.clone(),
                rules: compiled,
            });
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            pattern.push(Seg::Field(k.clone()));
            walk(
                s,
                &format!("{crd_path}.properties[{k}]"),
                pattern,
                correlatable,
                rules,
                issues,
            );
            pattern.pop();
        }
    }
    if schema["additionalProperties"].is_object() {
        pattern.push(Seg::Key(WILDCARD.to_string()));
        walk(
            &schema["additionalProperties"],
            &format!("{crd_path}.additionalProperties"),
            pattern,
            correlatable,
            rules,
            issues,
        );
        pattern.pop();
    }
    if schema["items"].is_object() {
        let keyed = schema["x-kubernetes-list-type"] == "map";
        pattern.push(Seg::Index(0));
        walk(
            &schema["items"],
            &format!("{crd_path}.items"),
            pattern,
            correlatable && keyed,
            rules,
            issues,
        );
        pattern.pop();
    }
}
