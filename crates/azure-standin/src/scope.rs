//! Registry token scopes (distribution `scope.md`): parsing `type[(class)]:name:actions`,
//! where the name may hold one `:` (a host port), and intersecting requested scopes with what
//! role assignments or a presented access token allow.

use serde::{Deserialize, Serialize};

use crate::config::RoleAssignment;

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceScope {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// A scope string that does not follow the grammar.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid scope {0:?}")]
pub struct ScopeError(pub String);

/// Parses one resource scope.
pub fn parse(scope: &str) -> Result<ResourceScope, ScopeError> {
    let bad = || ScopeError(scope.to_owned());
    let (kind, rest) = scope.split_once(':').ok_or_else(bad)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
    // The resource class, `repository(plugin)`, is deprecated and ignored.
    let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
    let valid_action = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_lowercase() || c == '*' || c == '_')
    };
    if kind.is_empty() || name.is_empty() || name.contains(char::is_whitespace) {
        return Err(bad());
    }
    let actions: Vec<String> = actions.split(',').map(str::to_owned).collect();
    if !actions.iter().all(|a| valid_action(a)) {
        return Err(bad());
    }
    Ok(ResourceScope {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions,
    })
}

/// Parses scope values (each may be a space-separated list), merging repeats of a resource.
pub fn parse_all<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<ResourceScope>, ScopeError> {
    let mut out: Vec<ResourceScope> = Vec::new();
    for value in values {
        for s in value.split_whitespace() {
            let scope = parse(s)?;
            match out
                .iter_mut()
                .find(|o| o.kind == scope.kind && o.name == scope.name)
            {
                Some(existing) => {
                    for a in scope.actions {
                        if !existing.actions.contains(&a) {
                            existing.actions.push(a);
                        }
                    }
                }
                None => out.push(scope),
            }
        }
    }
    Ok(out)
}

/// Actions role assignments allow on a resource. Repository assignments cover `repository`
/// and `artifact-repository` resources; `registry:catalog` needs `*` actions on `*`.
pub fn allowed_by_roles<'a>(
    roles: impl IntoIterator<Item = &'a RoleAssignment>,
    kind: &str,
    name: &str,
) -> Vec<String> {
    let mut allowed = Vec::new();
    for role in roles {
        let applies = match kind {
            "repository" | "artifact-repository" => {
                role.repository == "*" || role.repository == name
            }
            "registry" => role.repository == "*" && role.actions.iter().any(|a| a == "*"),
            _ => false,
        };
        if applies {
            allowed.extend(role.actions.iter().cloned());
        }
    }
    allowed
}

/// Actions an access token's `access` claim allows on a resource.
pub fn allowed_by_access(access: &[ResourceScope], kind: &str, name: &str) -> Vec<String> {
    access
        .iter()
        .filter(|a| a.kind == kind && a.name == name)
        .flat_map(|a| a.actions.iter().cloned())
        .collect()
}

/// Requested ∩ allowed, per resource; resources left with no action are dropped.
/// An allowed `*` grants any requested action; a requested `*` needs an allowed `*`.
pub fn intersect(
    requested: &[ResourceScope],
    allowed: impl Fn(&str, &str) -> Vec<String>,
) -> Vec<ResourceScope> {
    requested
        .iter()
        .filter_map(|r| {
            let allowed = allowed(&r.kind, &r.name);
            let actions: Vec<String> = r
                .actions
                .iter()
                .filter(|a| allowed.iter().any(|g| g == "*" || g == *a))
                .cloned()
                .collect();
            (!actions.is_empty()).then(|| ResourceScope {
                kind: r.kind.clone(),
                name: r.name.clone(),
                actions,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(repo: &str, actions: &[&str]) -> RoleAssignment {
        RoleAssignment {
            identity: "i".into(),
            registry: "r".into(),
            repository: repo.into(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parses_names_with_ports_and_classes() {
        let s = parse("repository(plugin):localhost:5000/app:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "localhost:5000/app");
        assert_eq!(s.actions, vec!["pull", "push"]);
        assert_eq!(parse("registry:catalog:*").unwrap().actions, vec!["*"]);
        assert!(parse("repository:app").is_err());
        assert!(parse("repository::pull").is_err());
        assert!(parse("repository:app:PULL").is_err());
    }

    #[test]
    fn merges_space_separated_and_repeated_values() {
        let scopes = parse_all([
            "repository:a:pull repository:b:pull,push",
            "repository:a:push",
        ])
        .unwrap();
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].actions, vec!["pull", "push"]);
    }

    #[test]
    fn intersection_with_roles() {
        let roles = [role("a", &["pull"]), role("b", &["*"])];
        let requested = parse_all([
            "repository:a:pull,push repository:b:push repository:c:pull registry:catalog:*",
        ])
        .unwrap();
        let granted = intersect(&requested, |k, n| allowed_by_roles(&roles, k, n));
        assert_eq!(
            granted,
            vec![
                ResourceScope {
                    kind: "repository".into(),
                    name: "a".into(),
                    actions: vec!["pull".into()]
                },
                ResourceScope {
                    kind: "repository".into(),
                    name: "b".into(),
                    actions: vec!["push".into()]
                },
            ]
        );
        let admin = [role("*", &["*"])];
        let granted = intersect(&requested, |k, n| allowed_by_roles(&admin, k, n));
        assert_eq!(granted.len(), 4);
    }

    #[test]
    fn intersection_with_access_claim() {
        let access = parse_all(["repository:a:pull"]).unwrap();
        let requested = parse_all(["repository:a:pull,push repository:b:pull"]).unwrap();
        let granted = intersect(&requested, |k, n| allowed_by_access(&access, k, n));
        assert_eq!(granted, access);
    }
}
