//! The CEL environment of the stand-in: what Kubernetes 1.33's API server offers to CRD
//! `x-kubernetes-validations` and to ValidatingAdmissionPolicies, built on the `cel` crate
//! (cel-rust).
//!
//! cel-rust has a parser and an interpreter but no type checker, so [`compile`] adds the
//! checks a compile must make here: every identifier is a declared variable (or a
//! comprehension variable in scope), and every function is one this environment supports
//! (see [`library::GLOBAL_FUNCTIONS`], [`library::MEMBER_FUNCTIONS`]). An expression that
//! fails them is rejected when the CRD or policy is written, never at object time. What the
//! missing type checker still lets through (a call with argument types no overload accepts,
//! a rule that does not return a bool) is an evaluation error at object time.
//!
//! Values come in from JSON through [`value`]: with a schema (CRD rules: `integer` is `int`,
//! `date-time` a timestamp, properties escaped as Kubernetes does) or without (admission
//! policies: plain JSON types, as the API server converts unstructured objects).

pub mod library;
pub mod url;
pub mod value;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, ExecutionError, Program, Value};

/// A compile error, formatted as cel-go formats its issues
/// (`ERROR: <input>:1:5: undeclared reference to 'x' (in container '')`, then the source
/// line and a caret).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// An evaluation error, with the message the API server would show.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expression {
    program: Arc<Program>,
    source: String,
    idents: BTreeSet<String>,
    selected: BTreeMap<String, BTreeSet<String>>,
    /// Variables read other than through a field (`size(variables)`, `variables.all(…)`).
    whole: BTreeSet<String>,
}

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(library::env()));

/// Compile `source` for an environment with the variables `vars`.
pub fn compile(source: &str, vars: &[&str]) -> Result<Expression, CompileError> {
    let program = ENV.compile(source).map_err(|e| {
        CompileError(
            e.to_string()
                .replace("\n| ", "\n | ")
                .replace("\n|", "\n |"),
        )
    })?;
    let mut check = Check {
        declared: vars,
        scope: Vec::new(),
        issues: Vec::new(),
        idents: BTreeSet::new(),
        selected: BTreeMap::new(),
        whole: BTreeSet::new(),
        selecting: false,
    };
    check.expr(program.expression());
    if !check.issues.is_empty() {
        // As cel-go: every issue, in source order.
        let offset = |id: u64| program.source_info().offset_for(id).map(|(s, _)| s);
        check.issues.sort_by_key(|(id, _)| offset(*id));
        check.issues.dedup_by_key(|(id, _)| *id);
        let all: Vec<String> = check
            .issues
            .iter()
            .map(|(id, msg)| issue(source, &program, *id, msg))
            .collect();
        return Err(CompileError(all.join("\n")));
    }
    Ok(Expression {
        program: Arc::new(program),
        source: source.to_string(),
        idents: check.idents,
        selected: check.selected,
        whole: check.whole,
    })
}

/// cel-go's rendering of an issue at an expression node.
fn issue(source: &str, program: &Program, id: u64, msg: &str) -> String {
    let start = program
        .source_info()
        .offset_for(id)
        .map(|(s, _)| s as usize)
        .unwrap_or(0)
        .min(source.len());
    let before = &source[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = source[line_start..start].chars().count();
    let line = source[line_start..].lines().next().unwrap_or_default();
    format!(
        "ERROR: <input>:{line_no}:{}: {msg}\n | {line}\n | {}^",
        col + 1,
        ".".repeat(col)
    )
}

const AUTHORIZER: &str = "undeclared reference to 'authorizer' (in container ''): the authorizer \
                          library is not supported by kube-standin";

struct Check<'a> {
    declared: &'a [&'a str],
    scope: Vec<String>,
    issues: Vec<(u64, String)>,
    idents: BTreeSet<String>,
    selected: BTreeMap<String, BTreeSet<String>>,
    whole: BTreeSet<String>,
    /// The expression about to be visited is the variable a field is selected from.
    selecting: bool,
}

impl Check<'_> {
    fn known_var(&self, name: &str) -> bool {
        self.scope.iter().any(|s| s == name) || self.declared.contains(&name)
    }

    fn expr(&mut self, e: &IdedExpr) {
        let selecting = std::mem::take(&mut self.selecting);
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                if name == "authorizer" || name == "authorizer.requestResource" {
                    self.issues.push((e.id, AUTHORIZER.to_string()));
                } else if library::TYPE_NAMES.contains(&name.as_str()) && !self.known_var(name) {
                } else if !self.known_var(name) {
                    self.issues.push((
                        e.id,
                        format!("undeclared reference to '{name}' (in container '')"),
                    ));
                } else if !self.scope.iter().any(|s| s == name) {
                    self.idents.insert(name.clone());
                    if !selecting {
                        self.whole.insert(name.clone());
                    }
                }
            }
            Expr::Select(s) => {
                if let Expr::Ident(root) = &s.operand.expr {
                    if !self.scope.iter().any(|v| v == root) {
                        self.selected
                            .entry(root.clone())
                            .or_default()
                            .insert(s.field.clone());
                    }
                    self.selecting = true;
                }
                self.expr(&s.operand)
            }
            Expr::Call(c) => self.call(e.id, c),
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range);
                self.expr(&c.accu_init);
                let pushed = 2 + usize::from(c.iter_var2.is_some());
                self.scope.push(c.iter_var.clone());
                self.scope.push(c.accu_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    self.scope.push(v2.clone());
                }
                self.expr(&c.loop_cond);
                self.expr(&c.loop_step);
                self.expr(&c.result);
                for _ in 0..pushed {
                    self.scope.pop();
                }
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.expr(x)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.expr(&me.key);
                            self.expr(&me.value);
                        }
                        EntryExpr::StructField(f) => self.expr(&f.value),
                    }
                }
            }
            Expr::Struct(s) => self.issues.push((
                e.id,
                format!(
                    "undeclared reference to '{}' (in container '')",
                    s.type_name
                ),
            )),
        }
    }

    fn call(&mut self, id: u64, c: &cel::common::ast::CallExpr) {
        let name = c.func_name.as_str();
        match &c.target {
            None => {
                if !library::is_operator(name) && !library::GLOBAL_FUNCTIONS.contains(&name) {
                    self.issues.push((
                        id,
                        format!("undeclared reference to '{name}' (in container '')"),
                    ));
                }
                if name == "_?._" {
                    if let (
                        Some(IdedExpr {
                            expr: Expr::Ident(root),
                            ..
                        }),
                        Some(field),
                    ) = (c.args.first(), c.args.get(1))
                    {
                        if let Expr::Literal(cel::common::ast::LiteralValue::String(f)) =
                            &field.expr
                        {
                            self.selected
                                .entry(root.clone())
                                .or_default()
                                .insert(f.inner().to_string());
                        }
                    }
                }
            }
            Some(target) => {
                // `optional.of(x)`, `sets.contains(a, b)`: a namespaced global function is
                // parsed as a member call on an undeclared identifier.
                if let Expr::Ident(ns) = &target.expr {
                    if ns == "authorizer" && !self.known_var(ns) {
                        self.issues.push((id, AUTHORIZER.to_string()));
                        return;
                    }
                    if !self.known_var(ns) {
                        let qualified = format!("{ns}.{name}");
                        if !library::GLOBAL_FUNCTIONS.contains(&qualified.as_str()) {
                            self.issues.push((
                                id,
                                format!("undeclared reference to '{qualified}' (in container '')"),
                            ));
                        }
                        c.args.iter().for_each(|a| self.expr(a));
                        return;
                    }
                }
                if !library::MEMBER_FUNCTIONS.contains(&name) {
                    self.issues.push((
                        id,
                        format!("undeclared reference to '{name}' (in container '')"),
                    ));
                }
                self.expr(target);
            }
        }
        for (i, a) in c.args.iter().enumerate() {
            // `x.?f`: a field of `x`, as `x.f` is.
            self.selecting =
                i == 0 && name == "_?._" && c.target.is_none() && matches!(a.expr, Expr::Ident(_));
            self.expr(a);
        }
    }
}

impl Expression {
    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression reads the variable `name` (outside comprehensions that
    /// shadow it).
    pub fn uses(&self, name: &str) -> bool {
        self.idents.contains(name)
    }

    /// Whether the expression reads the variable `name` other than through its fields.
    pub fn reads_whole(&self, name: &str) -> bool {
        self.whole.contains(name)
    }

    /// The fields selected directly on the variable `name` (`variables.x` → `x`).
    pub fn fields_of(&self, name: &str) -> impl Iterator<Item = &str> {
        self.selected
            .get(name)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Evaluate with the given variables.
    pub fn eval(&self, vars: &Activation) -> Result<Value, EvalError> {
        let mut held = vars.context.borrow_mut();
        let (ctx, present) =
            held.get_or_insert_with(|| (Context::with_env(ENV.clone()), BTreeSet::new()));
        // Handing a variable over converts it whole (an `object` is the entire Secret or
        // binding): only the variables the expression reads, each once per activation
        // rather than once per expression. Converting every variable for every expression
        // made admission most of the stand-in's CPU.
        for (k, v) in &vars.vars {
            if self.uses(k) && !present.contains(k) {
                ctx.add_variable_from_value(k.clone(), v.clone());
                present.insert(k.clone());
            }
        }
        self.program
            .execute(ctx)
            .map_err(|e| EvalError(message(&e)))
    }
}

/// Variable bindings for an evaluation, and the evaluation context made of them so far.
#[derive(Default)]
pub struct Activation {
    vars: Vec<(String, Value)>,
    /// The context expressions evaluate in, with the names of the variables converted
    /// into it (each converted when an expression first reads it).
    context: std::cell::RefCell<Option<(Context<'static, 'static>, BTreeSet<String>)>>,
}

impl Clone for Activation {
    fn clone(&self) -> Self {
        Self {
            vars: self.vars.clone(),
            context: Default::default(),
        }
    }
}

impl std::fmt::Debug for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activation")
            .field("vars", &self.vars)
            .finish()
    }
}

impl Activation {
    /// Bind `name` (replacing an earlier binding).
    pub fn set(&mut self, name: &str, v: Value) {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_string(), v));
        // Converted again when next read.
        if let Some((_, present)) = self.context.get_mut() {
            present.remove(name);
        }
    }

    /// Builder form of [`Activation::set`].
    pub fn with(mut self, name: &str, v: Value) -> Self {
        self.set(name, v);
        self
    }
}

/// The text cel-go would give for an evaluation error (the API server wraps it).
pub fn message(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::UndeclaredReference(n) => {
            format!("undeclared reference to '{n}' (in container '')")
        }
        ExecutionError::NoSuchOverload(_)
        | ExecutionError::UnsupportedBinaryOperator(..)
        | ExecutionError::ValuesNotComparable(..)
        | ExecutionError::UnexpectedType { .. }
        | ExecutionError::UnsupportedTargetType { .. }
        | ExecutionError::NotSupportedAsMethod { .. } => "no such overload".to_string(),
        ExecutionError::IndexOutOfBounds(i) => {
            format!("index out of bounds: {}", value::display(i))
        }
        ExecutionError::DivisionByZero(_) => "division by zero".to_string(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".to_string(),
        ExecutionError::Overflow(..) => "integer overflow".to_string(),
        ExecutionError::FunctionError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Whether a result is the boolean `true`.
pub fn is_true(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

#[cfg(test)]
mod tests;
