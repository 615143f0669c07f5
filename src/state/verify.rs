//! Checking a freshly minted credential the way a pull client would: the registry's token
//! endpoint grants an access set, and every scope the binding asked for must be inside it.
//! An identity without pull rights on a repository is caught here, before any Pod fails to
//! pull.

use super::jwt::GrantedAccess;
use super::scope::{self, ResourceScope};

/// The requested `type:name:action` triples the registry did not grant, in request order.
/// `requested` is a canonical scope string (see [`scope::canonical`]); an unparsable request
/// yields nothing to check (validation rejected it long before).
pub fn missing_access(requested: &str, granted: &[GrantedAccess]) -> Vec<String> {
    let Ok(wanted) = scope::parse(requested) else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    for ResourceScope {
        kind,
        name,
        actions,
    } in wanted
    {
        // `repository(plugin)` style classes are ignored by registries: compare the base type.
        let base = kind.split('(').next().unwrap_or(&kind).to_string();
        for action in actions {
            let ok = granted.iter().any(|g| {
                g.resource_type == base
                    && g.name == name
                    && g.actions.iter().any(|a| *a == action || a == "*")
            });
            if !ok {
                missing.push(format!("{base}:{name}:{action}"));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(t: &str, n: &str, a: &[&str]) -> GrantedAccess {
        GrantedAccess {
            resource_type: t.into(),
            name: n.into(),
            actions: a.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn table() {
        let granted = [
            g("repository", "app", &["pull"]),
            g("repository", "base", &["pull", "push"]),
            g("registry", "catalog", &["*"]),
        ];
        let cases: &[(&str, &[&str])] = &[
            ("repository:app:pull", &[]),
            ("repository:app:pull repository:base:pull,push", &[]),
            ("repository:app:pull,push", &["repository:app:push"]),
            ("repository:other:pull", &["repository:other:pull"]),
            (
                "repository:app:pull repository:other:pull",
                &["repository:other:pull"],
            ),
            ("registry:catalog:*", &[]),
            ("repository(plugin):app:pull", &[]),
            ("not a scope", &[]),
        ];
        for (requested, want) in cases {
            assert_eq!(missing_access(requested, &granted), *want, "{requested}");
        }
        assert_eq!(
            missing_access("repository:app:pull", &[]),
            ["repository:app:pull"],
            "nothing granted"
        );
    }
}
