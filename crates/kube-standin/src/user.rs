//! Who a request is from: the user information authentication produces ([`crate::authn`],
//! then [`crate::impersonation`]) and authorization ([`crate::authz`]) and admission
//! ([`crate::admission`], `request.userInfo` in a policy) consume. Plain data, as the real
//! server's `user.Info`, so the stages that read it do not depend on the one that makes it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

/// The authenticated user, as `authentication.k8s.io/v1` `UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// `system:admin`, `system:serviceaccount:NS:NAME`, `system:anonymous`, ...
    pub username: String,
    /// The ServiceAccount's uid for ServiceAccount tokens.
    pub uid: String,
    /// Groups, `system:authenticated` included for every authenticated user.
    pub groups: Vec<String>,
    /// Extra attributes (ServiceAccount tokens carry the credential id and bound objects).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The admin kubeconfig's identity: `system:admin` in `system:masters`.
    pub fn admin() -> Self {
        UserInfo {
            username: "system:admin".into(),
            groups: vec!["system:masters".into(), AUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// The user of requests without credentials.
    pub fn anonymous() -> Self {
        UserInfo {
            username: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Default::default()
        }
    }

    /// A ServiceAccount's user (name and groups; the uid is the ServiceAccount's).
    pub fn service_account(ns: &str, name: &str, uid: &str) -> Self {
        UserInfo {
            username: format!("system:serviceaccount:{ns}:{name}"),
            uid: uid.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                AUTHENTICATED.into(),
            ],
            ..Default::default()
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The `authentication.k8s.io/v1` `UserInfo` JSON (`request.userInfo` in admission);
    /// empty fields are left out, as the API types' `omitempty` does.
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
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}
