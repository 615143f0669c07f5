//! The API request path, stage by stage, as the real API server runs it:
//!
//! 1. **authentication** ([`crate::authn`]): the bearer token (or none) becomes a user;
//!    impersonation headers are honoured for users allowed to impersonate
//!    ([`crate::impersonation`]);
//! 2. **fault injection** ([`crate::faults`]): the test's faults for this request (latency,
//!    errors, hangs, watch faults...) — the stand-in's own stage, where a network or a
//!    misbehaving server would act;
//! 3. **authorization** ([`crate::authz`]): RBAC decides, 403 otherwise;
//! 4. non-resource paths are answered ([`crate::nonresource`]); resource requests go to
//!    [`crate::rest`], where writes run **mutating admission** ([`crate::admission`]), are
//!    prepared against **storage** ([`crate::store`]), then **validation**
//!    ([`crate::validate`]: CRD schemas and CEL rules) and **validating admission**
//!    ([`crate::admission::validating`]: ValidatingAdmissionPolicies) run on the prepared
//!    object before it is committed; reads answer from storage and watches stream from the
//!    **watch cache** ([`crate::watch`]).
//!
//! Every request is logged ([`crate::log`]) with its attributes, its user, its status, and
//! the warnings and audit annotations validation and admission noted; the warnings are sent
//! back as `Warning` headers.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::authn;
use crate::authz::{self, Decision, ResourceAttributes};
use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::faults::{Action, RequestFacts};
use crate::impersonation;
use crate::log::RequestRecord;
use crate::objects;
use crate::reply::{into_response, Body, Headers, Reply, Reset};
use crate::request::{self, RequestInfo};
use crate::rest::stages::Notes;
use crate::rest::{self, Call};
use crate::watch::WatchFaults;

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn now_millis() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn respond(
    cluster: &Cluster,
    mut record: RequestRecord,
    reply: Reply,
    h: &Headers,
) -> Response<Body> {
    record.status = reply.code();
    cluster.log.push(record);
    into_response(reply, h)
}

/// Serve one API request.
pub async fn serve(cluster: Arc<Cluster>, req: Request<Incoming>) -> Result<Response<Body>, Reset> {
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    let query_str = req.uri().query().unwrap_or_default().to_string();
    let query = request::parse_query(&query_str);
    let accept = header(&req, "accept");
    let content_type = header(&req, "content-type");
    let user_agent = header(&req, "user-agent");
    let info = request::parse_path(&method, &path, &query);
    let mut record = RequestRecord {
        method: method.clone(),
        path: path.clone(),
        query: query_str.clone(),
        content_type: content_type.clone(),
        field_manager: query.get("fieldManager").cloned().unwrap_or_default(),
        user_agent: user_agent.clone(),
        timestamp: now_millis(),
        verb: info
            .as_ref()
            .map(|i| i.verb.clone())
            .unwrap_or_else(|| method.to_lowercase()),
        ..Default::default()
    };
    if let Some(i) = &info {
        record.group = i.group.clone();
        record.version = i.version.clone();
        record.resource = i.resource.clone();
        record.subresource = i.subresource.clone();
        record.namespace = i.namespace.clone().unwrap_or_default();
        record.name = i.name.clone().unwrap_or_default();
    }

    // 1. Authentication, then impersonation.
    let user = match authn::authenticate(&cluster, req.headers())
        .and_then(|u| impersonation::impersonate(&cluster.store, u, req.headers()))
    {
        Ok(u) => u,
        Err(e) => return Ok(respond(&cluster, record, e.into(), &Headers::default())),
    };
    record.user = user.username.clone();

    let Some(info) = info else {
        // 3. Authorization of a non-resource request, then its answer.
        let attrs = authz::Attributes {
            user,
            verb: method.to_lowercase(),
            resource: None,
            path: path.clone(),
        };
        if let Decision::Deny(reason) = authz::authorize(&cluster.store, &attrs) {
            let e = authz::forbidden(&attrs, &reason);
            return Ok(respond(&cluster, record, e.into(), &Headers::default()));
        }
        let reply = crate::nonresource::serve(&cluster, &method, &path, &accept);
        return Ok(respond(&cluster, record, reply, &Headers::default()));
    };

    // 2. Faults.
    let facts = RequestFacts {
        verb: info.verb.clone(),
        group: info.group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        user_agent: user_agent.clone(),
    };
    let fired = cluster.faults.evaluate(&facts);
    record.faults = fired.iter().map(|(id, _)| id.clone()).collect();
    let mut watch_faults = WatchFaults::default();
    let mut token_expiry = None;
    let mut ambiguous: Option<(u16, bool)> = None;
    let mut early: Option<(Reply, Option<u64>)> = None;
    for (_, action) in &fired {
        match action {
            Action::Latency { ms, jitter_ms } => {
                let j = if *jitter_ms > 0 {
                    rand::random_range(0..=*jitter_ms)
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(ms + j)).await;
            }
            Action::Hang => {
                record.status = 0;
                cluster.log.push(record);
                futures::future::pending::<()>().await;
                return Err(Reset);
            }
            Action::Reset => {
                record.status = 0;
                cluster.log.push(record);
                return Err(Reset);
            }
            Action::Error {
                code,
                message,
                retry_after,
            } => {
                if info.verb == "watch" && *code == 410 {
                    watch_faults.gone = true;
                } else if early.is_none() {
                    let e = ApiError::from_code(*code, message.clone(), *retry_after);
                    early = Some((e.into(), *retry_after));
                }
            }
            Action::Conflict => {
                if early.is_none() {
                    early = Some((
                        ApiError::conflict_stale(&info.group, &info.resource, &record.name).into(),
                        None,
                    ));
                }
            }
            Action::ConcurrentWriter => {
                objects::concurrent_write(&cluster.store, &info, &record.namespace, &record.name)
            }
            Action::LeaseTakeover { holder } => {
                objects::take_over_lease(&cluster.store, &record.namespace, &record.name, holder)
            }
            Action::Ambiguous { code, reset } => ambiguous = Some((*code, *reset)),
            Action::WatchCloseAfter { events, ms } => {
                watch_faults.close_after_events = *events;
                watch_faults.close_after = ms.map(Duration::from_millis);
            }
            Action::WatchStall => watch_faults.stall = true,
            Action::DropEvents { object_name, count } => {
                watch_faults.drop = Some((object_name.clone(), *count))
            }
            Action::DuplicateEvents { object_name, count } => {
                watch_faults.duplicate = Some((object_name.clone(), *count))
            }
            Action::TokenExpiry { seconds } => token_expiry = Some(*seconds),
        }
    }
    if let Some((reply, retry)) = early {
        let h = Headers {
            retry_after: retry,
            ..Default::default()
        };
        return Ok(respond(&cluster, record, reply, &h));
    }

    // 3. Authorization.
    let attrs = resource_attributes(&user, &info);
    if let Decision::Deny(reason) = authz::authorize(&cluster.store, &attrs) {
        let e = authz::forbidden(&attrs, &reason);
        return Ok(respond(&cluster, record, e.into(), &Headers::default()));
    }

    // 4. Admission, validation, storage, watch.
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Reset),
    };
    let mut call = Call {
        query,
        body,
        content_type,
        user_agent,
        accept,
        watch_faults,
        token_expiry,
        user,
        notes: Notes::default(),
    };
    let reply = match rest::serve(&cluster, &info, &mut call).await {
        Ok(r) => r,
        Err(e) => e.into(),
    };
    record.warnings = call.notes.warnings.clone();
    record.audit_annotations = call.notes.audit_annotations;
    record.denied_by_policy = call.notes.denied_by.unwrap_or_default();
    let h = Headers {
        warnings: call.notes.warnings,
        ..Default::default()
    };
    if let Some((code, reset)) = ambiguous {
        if reply.code() < 300 {
            record.status = if reset { 0 } else { code };
            cluster.log.push(record);
            if reset {
                return Err(Reset);
            }
            return Ok(into_response(
                ApiError::from_code(code, None, None).into(),
                &h,
            ));
        }
    }
    Ok(respond(&cluster, record, reply, &h))
}

/// The authorizer's view of a resource request.
pub fn resource_attributes(user: &authn::UserInfo, info: &RequestInfo) -> authz::Attributes {
    authz::Attributes {
        user: user.clone(),
        verb: info.verb.clone(),
        resource: Some(ResourceAttributes {
            group: info.group.clone(),
            version: info.version.clone(),
            resource: info.resource.clone(),
            subresource: info.subresource.clone(),
            namespace: info.namespace.clone().unwrap_or_default(),
            name: info.name.clone().unwrap_or_default(),
        }),
        path: String::new(),
    }
}

/// Server-side apply of `obj` by the admin, as `kubectl apply --server-side
/// --force-conflicts` would send it: through the resource handlers like a request on the wire
/// (mutating admission, defaulting, validation, validating admission, storage) and logged
/// with the user agent `kube-standin-handle`. Authorization is skipped: the admin is in
/// `system:masters`, which RBAC never refuses. Returns the stored object.
pub async fn admin_apply(
    cluster: &Arc<Cluster>,
    obj: &serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let rt = cluster
        .store
        .registry()
        .by_api_version(api_version, kind)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no served type for apiVersion {api_version:?}, kind {kind:?}"
            ))
        })?;
    let (_, version) = crate::resources::split_api_version(api_version);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let namespace = rt.namespaced.then(|| {
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    });
    let info = RequestInfo {
        verb: "patch".into(),
        group: rt.group.clone(),
        version: version.to_string(),
        resource: rt.plural.clone(),
        subresource: String::new(),
        namespace: namespace.clone(),
        name: Some(name.clone()),
    };
    let mut query = request::Query::new();
    query.insert("fieldManager".into(), "kubectl".into());
    query.insert("force".into(), "true".into());
    let user = authn::UserInfo::admin();
    let content_type = "application/apply-patch+yaml".to_string();
    let user_agent = "kube-standin-handle".to_string();
    let mut record = RequestRecord {
        method: "PATCH".into(),
        path: match &namespace {
            Some(ns) => format!(
                "{}/namespaces/{ns}/{}/{name}",
                group_prefix(&rt.group, version),
                rt.plural
            ),
            None => format!("{}/{}/{name}", group_prefix(&rt.group, version), rt.plural),
        },
        query: "fieldManager=kubectl&force=true".into(),
        verb: info.verb.clone(),
        group: info.group.clone(),
        version: info.version.clone(),
        resource: info.resource.clone(),
        namespace: namespace.clone().unwrap_or_default(),
        name: name.clone(),
        content_type: content_type.clone(),
        field_manager: "kubectl".into(),
        user_agent: user_agent.clone(),
        user: user.username.clone(),
        timestamp: now_millis(),
        ..Default::default()
    };
    let mut call = Call {
        query,
        body: bytes::Bytes::from(serde_json::to_vec(obj).unwrap_or_default()),
        content_type,
        user_agent,
        accept: "application/json".into(),
        watch_faults: WatchFaults::default(),
        token_expiry: None,
        user,
        notes: Notes::default(),
    };
    let out = rest::serve(cluster, &info, &mut call).await;
    record.warnings = call.notes.warnings;
    record.audit_annotations = call.notes.audit_annotations;
    record.denied_by_policy = call.notes.denied_by.unwrap_or_default();
    match out {
        Ok(Reply::Json(code, v)) if code < 300 => {
            record.status = code;
            cluster.log.push(record);
            Ok(v)
        }
        Ok(reply) => {
            record.status = reply.code();
            cluster.log.push(record);
            Err(ApiError::from_code(reply.code(), None, None))
        }
        Err(e) => {
            record.status = e.code;
            cluster.log.push(record);
            Err(e)
        }
    }
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
fn group_prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}
