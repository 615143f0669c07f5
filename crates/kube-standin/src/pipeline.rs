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
//!    ([`crate::validate`]) and **validating admission** run on the prepared object before it
//!    is committed; reads answer from storage and watches stream from the **watch cache**
//!    ([`crate::watch`]).
//!
//! Every request is logged ([`crate::log`]) with its attributes, its user and its status.

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
        warnings: Vec::new(),
    };
    let reply = match rest::serve(&cluster, &info, &mut call).await {
        Ok(r) => r,
        Err(e) => e.into(),
    };
    let h = Headers {
        warnings: call.warnings,
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
                &Headers::default(),
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
