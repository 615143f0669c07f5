//! Who is making a request: `request.userInfo` for admission policies.
//!
//! The stand-in does not authenticate yet: every request is the cluster admin
//! (`system:admin`, groups `system:masters` and `system:authenticated`), except that it
//! honours the impersonation headers a real API server honours for a requester allowed to
//! impersonate (the admin is): `Impersonate-User`, `Impersonate-Group` (repeatable),
//! `Impersonate-Uid`. That is what `kubectl --as=... --as-group=...` and kube-rs'
//! `AuthInfo::impersonate` send, so tests act as the controller's ServiceAccount with either.
//! [`user_of`] is the one place to swap for real authentication.

use hyper::HeaderMap;
use serde_json::{json, Value};

/// `request.userInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// `system:admin`, `system:serviceaccount:NS:NAME`, ...
    pub username: String,
    /// UID (empty unless impersonated with one).
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The cluster admin.
    pub fn admin() -> Self {
        UserInfo {
            username: "system:admin".to_string(),
            uid: String::new(),
            groups: vec![
                "system:masters".to_string(),
                "system:authenticated".to_string(),
            ],
        }
    }

    /// The JSON `authentication.k8s.io/v1` `UserInfo`, as CEL sees it (empty fields omitted).
    pub fn to_json(&self) -> Value {
        let mut v = json!({});
        if !self.username.is_empty() {
            v["username"] = json!(self.username);
        }
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.groups.is_empty() {
            v["groups"] = json!(self.groups);
        }
        v
    }
}

/// The requester of an HTTP request.
pub fn user_of(headers: &HeaderMap) -> UserInfo {
    let Some(user) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
    else {
        return UserInfo::admin();
    };
    let mut groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    // As the impersonation filter does: a ServiceAccount without explicit groups gets the
    // ServiceAccount groups, and everyone but anonymous is authenticated.
    if groups.is_empty() {
        if let Some(ns) = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
            .map(|(ns, _)| ns)
        {
            groups.push("system:serviceaccounts".to_string());
            groups.push(format!("system:serviceaccounts:{ns}"));
        }
    }
    if user != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".to_string());
    }
    UserInfo {
        username: user.to_string(),
        uid: headers
            .get("impersonate-uid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_unless_impersonating() {
        assert_eq!(user_of(&HeaderMap::new()), UserInfo::admin());
        let mut h = HeaderMap::new();
        h.insert(
            "impersonate-user",
            "system:serviceaccount:acrpull-system:acrpull"
                .parse()
                .unwrap(),
        );
        let u = user_of(&h);
        assert_eq!(u.username, "system:serviceaccount:acrpull-system:acrpull");
        assert_eq!(
            u.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:acrpull-system",
                "system:authenticated"
            ]
        );
        h.append("impersonate-group", "team".parse().unwrap());
        assert_eq!(user_of(&h).groups, vec!["team", "system:authenticated"]);
    }
}
