//! The review APIs, create-only and never stored, as a real server serves them:
//! - `authentication.k8s.io/v1` `TokenReview` (is this token valid, for whom) and
//!   `SelfSubjectReview` (`kubectl auth whoami`);
//! - `authorization.k8s.io/v1` `SubjectAccessReview`, `LocalSubjectAccessReview`,
//!   `SelfSubjectAccessReview` (`kubectl auth can-i`) and `SelfSubjectRulesReview`
//!   (`kubectl auth can-i --list`).
//!
//! Creating one needs its own RBAC grant (`system:auth-delegator` for token and subject
//! access reviews, `system:basic-user` for the self reviews), checked by the pipeline before
//! it gets here.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::authn::{self, UserInfo};
use crate::cluster::Cluster;
use crate::error::{ApiError, ApiResult};

use super::{authorize, rbac, Attributes, Decision, ResourceAttributes, PRIVILEGED_GROUP};

fn invalid(kind: &str, group: &str, field: &str, why: &str) -> ApiError {
    ApiError::invalid(kind, group, "", field, why)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn spec_user(spec: &Value) -> UserInfo {
    let mut extra = BTreeMap::new();
    for (k, v) in spec["extra"].as_object().into_iter().flatten() {
        extra.insert(k.clone(), strings(v));
    }
    UserInfo {
        username: spec["user"].as_str().unwrap_or_default().to_string(),
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups: strings(&spec["groups"]),
        extra,
    }
}

fn attributes(user: UserInfo, spec: &Value, kind: &str) -> ApiResult<Attributes> {
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match (ra.is_object(), nra.is_object()) {
        (true, false) => Ok(Attributes {
            user,
            verb: s(&ra["verb"]),
            resource: Some(ResourceAttributes {
                group: s(&ra["group"]),
                version: s(&ra["version"]),
                resource: s(&ra["resource"]),
                subresource: s(&ra["subresource"]),
                namespace: s(&ra["namespace"]),
                name: s(&ra["name"]),
            }),
            path: String::new(),
        }),
        (false, true) => Ok(Attributes {
            user,
            verb: s(&nra["verb"]),
            resource: None,
            path: s(&nra["path"]),
        }),
        (true, true) => Err(invalid(
            kind,
            "authorization.k8s.io",
            "spec.nonResourceAttributes",
            "Invalid value: \"null\": cannot be specified in combination with resourceAttributes",
        )),
        (false, false) => Err(invalid(
            kind,
            "authorization.k8s.io",
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn access_status(cluster: &Cluster, attrs: &Attributes) -> Value {
    match authorize(&cluster.store, attrs) {
        Decision::Allow(reason) if reason.is_empty() => json!({"allowed": true}),
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    }
}

fn answer(kind: &str, group: &str, body: &Value, status: Value) -> Value {
    let mut meta = body["metadata"].clone();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["creationTimestamp"] = Value::Null;
    json!({
        "kind": kind,
        "apiVersion": format!("{group}/v1"),
        "metadata": meta,
        "spec": body["spec"],
        "status": status,
    })
}

/// Serve the create of a review resource (`plural` in `group`) by `user`.
pub fn create(
    cluster: &Cluster,
    group: &str,
    plural: &str,
    namespace: &str,
    user: &UserInfo,
    body: &Value,
) -> ApiResult<Value> {
    let spec = &body["spec"];
    match (group, plural) {
        ("authentication.k8s.io", "tokenreviews") => {
            let token = spec["token"].as_str().unwrap_or_default();
            let requested = strings(&spec["audiences"]);
            let audiences = if requested.is_empty() {
                authn::api_audiences(cluster)
            } else {
                requested
            };
            let status = match authn::authenticate_token(cluster, token, &audiences) {
                Ok((u, auds)) => {
                    json!({"authenticated": true, "user": u.to_json(), "audiences": auds})
                }
                Err(e) => json!({"user": {}, "error": format!("[{e}]")}),
            };
            Ok(answer("TokenReview", group, body, status))
        }
        ("authentication.k8s.io", "selfsubjectreviews") => Ok(answer(
            "SelfSubjectReview",
            group,
            body,
            json!({"userInfo": user.to_json()}),
        )),
        ("authorization.k8s.io", "subjectaccessreviews") => {
            let subject = spec_user(spec);
            if subject.username.is_empty() && subject.groups.is_empty() {
                return Err(invalid(
                    "SubjectAccessReview",
                    group,
                    "spec.user",
                    "Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            let attrs = attributes(subject, spec, "SubjectAccessReview")?;
            Ok(answer(
                "SubjectAccessReview",
                group,
                body,
                access_status(cluster, &attrs),
            ))
        }
        ("authorization.k8s.io", "localsubjectaccessreviews") => {
            let subject = spec_user(spec);
            let attrs = attributes(subject, spec, "LocalSubjectAccessReview")?;
            let ns = attrs
                .resource
                .as_ref()
                .map(|r| r.namespace.as_str())
                .unwrap_or_default();
            if ns != namespace {
                return Err(ApiError::bad_request(format!(
                    "spec.resourceAttributes.namespace must match namespace: {namespace}"
                )));
            }
            let mut out = answer(
                "LocalSubjectAccessReview",
                group,
                body,
                access_status(cluster, &attrs),
            );
            out["metadata"]["namespace"] = json!(namespace);
            Ok(out)
        }
        ("authorization.k8s.io", "selfsubjectaccessreviews") => {
            let attrs = attributes(user.clone(), spec, "SelfSubjectAccessReview")?;
            Ok(answer(
                "SelfSubjectAccessReview",
                group,
                body,
                access_status(cluster, &attrs),
            ))
        }
        ("authorization.k8s.io", "selfsubjectrulesreviews") => {
            let ns = spec["namespace"].as_str().unwrap_or_default();
            Ok(answer(
                "SelfSubjectRulesReview",
                group,
                body,
                rules_review(cluster, user, ns),
            ))
        }
        _ => Err(ApiError::no_route()),
    }
}

fn rules_review(cluster: &Cluster, user: &UserInfo, ns: &str) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    let mut push = |r: &Value| {
        if r["nonResourceURLs"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            non_resource_rules
                .push(json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}));
        } else {
            let mut rr = json!({"verbs": r["verbs"]});
            for k in ["apiGroups", "resources", "resourceNames"] {
                if r[k].is_array() {
                    rr[k] = r[k].clone();
                }
            }
            resource_rules.push(rr);
        }
    };
    if user.in_group(PRIVILEGED_GROUP) {
        push(&json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        push(&json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    let (rules, errors) = rbac::rules_for(&cluster.store, user, ns);
    for (r, _) in &rules {
        push(r);
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": !errors.is_empty(),
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    status
}
