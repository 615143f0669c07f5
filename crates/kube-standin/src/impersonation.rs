//! Impersonation (`Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid`,
//! `Impersonate-Extra-*` headers), between authentication and authorization as in the real
//! server: the authenticated user must be allowed to `impersonate` each requested `users`
//! (or the ServiceAccount, as `serviceaccounts` in its namespace), `groups`, `uids` and
//! `userextras/<key>`; the request then runs as the impersonated user. A ServiceAccount
//! impersonated without groups gets the ServiceAccount groups; every impersonated user but
//! `system:anonymous` gets `system:authenticated`. This is what
//! `kubectl auth can-i --as=system:serviceaccount:NS:NAME` relies on.

use std::collections::BTreeMap;

use crate::authn::{self, UserInfo};
use crate::authz::{self, Attributes, Decision, ResourceAttributes};
use crate::error::{ApiError, ApiResult};
use crate::store::Store;

fn values(headers: &hyper::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

fn check(store: &Store, actor: &UserInfo, resource: ResourceAttributes) -> ApiResult<()> {
    let attrs = Attributes {
        user: actor.clone(),
        verb: "impersonate".into(),
        resource: Some(resource),
        path: String::new(),
    };
    match authz::authorize(store, &attrs) {
        Decision::Allow(_) => Ok(()),
        Decision::Deny(reason) => Err(authz::forbidden(&attrs, &reason)),
    }
}

fn core(resource: &str, name: &str) -> ResourceAttributes {
    ResourceAttributes {
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn authentication(resource: &str, name: &str) -> ResourceAttributes {
    ResourceAttributes {
        group: "authentication.k8s.io".into(),
        resource: resource.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// The user the request runs as: `actor`, or whom it impersonates if it may.
pub fn impersonate(
    store: &Store,
    actor: UserInfo,
    headers: &hyper::HeaderMap,
) -> ApiResult<UserInfo> {
    let user = values(headers, "impersonate-user").into_iter().next();
    let groups = values(headers, "impersonate-group");
    let uid = values(headers, "impersonate-uid").into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, v) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            if let Ok(v) = v.to_str() {
                let key = percent_decode(key);
                extra.entry(key).or_default().push(v.to_string());
            }
        }
    }
    let Some(username) = user else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(ApiError::internal(
                "requested impersonation of groups, uid or extra without impersonating a user",
            ));
        }
        return Ok(actor);
    };
    match authn::service_account_name(&username) {
        Some((ns, name)) => check(
            store,
            &actor,
            ResourceAttributes {
                namespace: ns.into(),
                ..core("serviceaccounts", name)
            },
        )?,
        None => check(store, &actor, core("users", &username))?,
    }
    for g in &groups {
        check(store, &actor, core("groups", g))?;
    }
    if let Some(u) = &uid {
        check(store, &actor, authentication("uids", u))?;
    }
    for (k, vs) in &extra {
        for v in vs {
            check(store, &actor, authentication(&format!("userextras/{k}"), v))?;
        }
    }
    let mut out = UserInfo {
        username: username.clone(),
        uid: uid.unwrap_or_default(),
        groups,
        extra,
    };
    if out.groups.is_empty() {
        if let Some((ns, _)) = authn::service_account_name(&username) {
            out.groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ];
        }
    }
    if username == "system:anonymous" {
        if !out.in_group("system:unauthenticated") {
            out.groups.push("system:unauthenticated".into());
        }
    } else if !out.in_group(authn::AUTHENTICATED) {
        out.groups.push(authn::AUTHENTICATED.into());
    }
    Ok(out)
}

/// Extra keys are percent-encoded in header names.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
