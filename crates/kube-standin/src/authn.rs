//! The authentication stage: who sends a request, from its bearer token.
//!
//! - The admin kubeconfig's token ([`ADMIN_TOKEN`]) is `system:admin` in `system:masters`
//!   (cluster-admin, like a cluster's admin client certificate).
//! - ServiceAccount tokens the stand-in signed (TokenRequest, or
//!   `Handle::service_account_token`) are checked like the real server's service-account
//!   authenticator does: ES256 signature against the server's key, `iss` = the issuer, an
//!   audience among the API audiences (the issuer, as `--api-audiences` defaults to
//!   `--service-account-issuer`), `exp`/`nbf` with the real one-minute leeway, and the
//!   ServiceAccount still exists, is not being deleted and has the token's uid. The user is
//!   `system:serviceaccount:NS:NAME` with groups `system:serviceaccounts`,
//!   `system:serviceaccounts:NS` and `system:authenticated`.
//! - No token: `system:anonymous` in `system:unauthenticated` (RBAC then allows only the
//!   public info paths).
//! - Any other bearer token: 401 `Unauthorized`, as a real server answers it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::error::{ApiError, ApiResult};

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
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            ..Default::default()
        }
    }

    /// The `authentication.k8s.io/v1` `UserInfo` JSON (`request.userInfo` in admission).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.username, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// The placeholder token of the admin kubeconfig (`Handle::write_kubeconfig`).
pub const ADMIN_TOKEN: &str = "kube-standin-token";

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

/// Seconds of clock skew allowed on `exp` and `nbf` (go-jose's default, which the real
/// service-account authenticator uses).
const LEEWAY_SECS: i64 = 60;

impl UserInfo {
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
}

/// `system:serviceaccount:NS:NAME` → (NS, NAME).
pub fn service_account_name(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The bearer token of an `Authorization` header, if it carries one.
pub fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The API audiences: tokens must carry one of them.
pub fn api_audiences(cluster: &Cluster) -> Vec<String> {
    vec![cluster.issuer()]
}

/// Authenticate a request from its headers: the user, `system:anonymous` without a token,
/// or 401.
pub fn authenticate(cluster: &Cluster, headers: &hyper::HeaderMap) -> ApiResult<UserInfo> {
    let Some(token) = bearer(headers) else {
        return Ok(UserInfo::anonymous());
    };
    match authenticate_token(cluster, token, &api_audiences(cluster)) {
        Ok((user, _)) => Ok(user),
        Err(reason) => {
            tracing::debug!(reason, "Unable to authenticate the request");
            Err(ApiError::unauthorized())
        }
    }
}

/// Authenticate a bearer token for one of `audiences`: the user and the audiences it is
/// valid for, or why not (the TokenReview `status.error`; never contains the token).
pub fn authenticate_token(
    cluster: &Cluster,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), String> {
    if token == ADMIN_TOKEN {
        return Ok((UserInfo::admin(), audiences.to_vec()));
    }
    let claims = cluster
        .signer
        .verify(token)
        .map_err(|e| format!("invalid bearer token, {e}"))?;
    let now = jiff::Timestamp::now().as_second();
    service_account_user(cluster, &claims, audiences, now)
}

fn service_account_user(
    cluster: &Cluster,
    claims: &Value,
    audiences: &[String],
    now: i64,
) -> Result<(UserInfo, Vec<String>), String> {
    if claims["iss"].as_str() != Some(cluster.issuer().as_str()) {
        return Err("invalid bearer token, token issuer is not trusted".into());
    }
    let token_auds: Vec<&str> = match &claims["aud"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let matched: Vec<String> = audiences
        .iter()
        .filter(|a| token_auds.contains(&a.as_str()))
        .cloned()
        .collect();
    if matched.is_empty() {
        return Err("invalid bearer token, token audiences is invalid".into());
    }
    match claims["exp"].as_i64() {
        Some(exp) if now <= exp + LEEWAY_SECS => {}
        Some(_) => return Err("invalid bearer token, service account token has expired".into()),
        None => return Err("invalid bearer token, service account token is missing exp".into()),
    }
    if claims["nbf"]
        .as_i64()
        .is_some_and(|nbf| now + LEEWAY_SECS < nbf)
    {
        return Err("invalid bearer token, service account token is not valid yet".into());
    }
    let k8s = &claims["kubernetes.io"];
    let ns = k8s["namespace"].as_str().unwrap_or_default();
    let name = k8s["serviceaccount"]["name"].as_str().unwrap_or_default();
    let uid = k8s["serviceaccount"]["uid"].as_str().unwrap_or_default();
    if claims["sub"].as_str() != Some(format!("system:serviceaccount:{ns}:{name}").as_str()) {
        return Err("invalid bearer token, sub does not match the service account".into());
    }
    let store = &cluster.store;
    let sa = store
        .type_by_path("", "v1", "serviceaccounts")
        .and_then(|rt| store.get(&rt, ns, name).ok());
    let Some(sa) = sa else {
        return Err(format!(
            "invalid bearer token, serviceaccounts \"{name}\" not found"
        ));
    };
    if sa["metadata"]["uid"].as_str() != Some(uid) {
        return Err(format!(
            "invalid bearer token, service account UID ({uid}) does not match the stored one"
        ));
    }
    if !sa["metadata"]["deletionTimestamp"].is_null() {
        return Err(format!(
            "invalid bearer token, service account {ns}/{name} has been deleted"
        ));
    }
    for (kind, plural) in [("secret", "secrets"), ("pod", "pods")] {
        let bound = &k8s[kind];
        if !bound.is_object() {
            continue;
        }
        let bname = bound["name"].as_str().unwrap_or_default();
        let live = store
            .type_by_path("", "v1", plural)
            .and_then(|rt| store.get(&rt, ns, bname).ok());
        let ok = live.is_some_and(|o| o["metadata"]["uid"] == bound["uid"]);
        if !ok {
            return Err(format!(
                "invalid bearer token, {kind} {ns}/{bname} the token is bound to no longer exists"
            ));
        }
    }
    let mut user = UserInfo::service_account(ns, name, uid);
    if let Some(jti) = claims["jti"].as_str() {
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    Ok((user, matched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_names() {
        assert_eq!(
            service_account_name("system:serviceaccount:ns1:sa1"),
            Some(("ns1", "sa1"))
        );
        assert_eq!(service_account_name("system:serviceaccount:ns1"), None);
        assert_eq!(service_account_name("system:admin"), None);
    }

    #[test]
    fn bearer_tokens() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "bearer   xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
