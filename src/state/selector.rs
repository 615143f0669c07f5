//! Kubernetes label selectors (`--label-selector`): the full string syntax —
//! `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k` — joined by commas.
//! Parsed once at start-up (a bad selector stops the process with a clear message) and used to
//! filter bindings; the same string is handed to the API server for server-side filtering.

use std::collections::BTreeMap;

use crate::state::text::truncate;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {input:?}: {why}")]
pub struct SelectorError {
    input: String,
    why: String,
}

impl Selector {
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let err = |why: &str| SelectorError {
            input: if input.len() > 200 {
                format!("{}…", &input[..input.floor_char_boundary(200)])
            } else {
                input.to_string()
            },
            why: why.to_string(),
        };
        let mut reqs = Vec::new();
        for part in split_top_level(input).map_err(&err)? {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement"));
            }
            reqs.push(parse_requirement(part).map_err(|w| err(&w))?);
        }
        Ok(Selector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Split on commas outside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => {
                depth += 1;
                if depth > 1 {
                    return Err("nested parentheses");
                }
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'");
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('");
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement::DoesNotExist(key.into()));
    }
    for (op, ctor) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((k, v)) = part.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            check_key(k)?;
            check_value(v)?;
            return Ok(ctor(k.into(), v.into()));
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0];
        let rest = words[1].trim_start();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            ("notin", l)
        } else if let Some(l) = rest.strip_prefix("in") {
            ("in", l)
        } else {
            return Err(format!("unknown operator in {part:?}"));
        };
        check_key(key)?;
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("{op} needs a parenthesised list in {part:?}"))?;
        let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
        if inner.trim().is_empty() {
            return Err(format!("{op} needs at least one value in {part:?}"));
        }
        for v in &values {
            check_value(v)?;
        }
        return Ok(if op == "in" {
            Requirement::In(key.into(), values)
        } else {
            Requirement::NotIn(key.into(), values)
        });
    }
    check_key(part)?;
    Ok(Requirement::Exists(part.into()))
}

fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty()
            || p.len() > 253
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(format!(
                "invalid label key prefix in {:?}",
                truncate(key, 80)
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !name_chars(name) {
        return Err(format!("invalid label key {:?}", truncate(key, 80)));
    }
    Ok(())
}

fn check_value(v: &str) -> Result<(), String> {
    if v.len() > 63 || (!v.is_empty() && !name_chars(v)) {
        return Err(format!("invalid label value {:?}", truncate(v, 80)));
    }
    Ok(())
}

fn name_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parse_and_match() {
        let prod = labels(&[("env", "prod"), ("tier", "frontend")]);
        let dev = labels(&[("env", "dev")]);
        let none = labels(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            ("", [true, true, true]),
            ("env=prod", [true, false, false]),
            ("env==prod", [true, false, false]),
            ("env!=prod", [false, true, true]),
            ("env in (prod, dev)", [true, true, false]),
            ("env notin (prod)", [false, true, true]),
            ("tier", [true, false, false]),
            ("!tier", [false, true, true]),
            (
                "env!=prod,tier in (frontend,backend)",
                [false, false, false],
            ),
            ("env=prod,tier in (frontend,backend)", [true, false, false]),
            ("example.com/team", [false, false, false]),
            ("env in (prod),!missing", [true, false, false]),
        ];
        for (sel, want) in cases {
            let s = Selector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(
                [s.matches(&prod), s.matches(&dev), s.matches(&none)],
                *want,
                "{sel}"
            );
        }
    }

    #[test]
    fn malformed() {
        for sel in [
            "a in (b",
            "a in b)",
            "a in ((b))",
            "a,,b",
            "a in ()",
            "a foo (b)",
            "=b",
            "a=b c",
            "-a",
            "a/",
            "/a",
            "a=-b",
            "Exämple=1",
            "!",
        ] {
            let e = Selector::parse(sel).expect_err(sel);
            assert!(e.to_string().contains("invalid label selector"), "{e}");
        }
    }

    /// Found by fuzzing: the quoted key or value was not cut, so the message grew with the input.
    #[test]
    fn messages_quote_a_bounded_excerpt() {
        for sel in [
            format!("{}=x", "k".repeat(5000)),
            format!("{}/k=x", "p".repeat(5000)),
            format!("k={}", "v".repeat(5000)),
        ] {
            let e = Selector::parse(&sel).expect_err("too long").to_string();
            assert!(e.len() < 600, "{} bytes", e.len());
        }
    }
}
