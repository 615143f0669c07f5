//! `POST .../serviceaccounts/NAME/token` (TokenRequest), in the real token REST storage's
//! order: the ServiceAccount is looked up (404 first), the TokenRequest is defaulted and
//! validated ([`crate::token::request_object`], 422), then admission runs — mutating, then
//! validating with the defaulted TokenRequest as `object` (a CREATE of an
//! `authentication.k8s.io/v1` `TokenRequest` on the `token` subresource) — and only then is a
//! token signed. Nothing is stored.

use std::sync::Arc;

use serde_json::Value;

use crate::admission::{self, Attributes, GroupVersionKind, Operation};
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::reply::Reply;
use crate::resources::ResourceType;
use crate::store::Store;

use super::{dry_run, options, parse_body, Call};

/// Issue a token for `sa` (the stored ServiceAccount of type `rt`) as `call` asks.
pub fn create(
    cluster: &Arc<Cluster>,
    rt: &ResourceType,
    version: &str,
    sa: &Value,
    call: &mut Call,
) -> ApiResult<Reply> {
    let body = parse_body(call)?;
    let issuer = cluster.issuer();
    let request = crate::token::request_object(&issuer, sa, &body)?;
    let ns = sa["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = sa["metadata"]["name"].as_str().unwrap_or_default();
    let options = admission::options(Operation::Create, &options(call));
    let attrs = Attributes {
        operation: Operation::Create,
        resource: rt,
        version,
        kind: GroupVersionKind {
            group: "authentication.k8s.io".into(),
            version: "v1".into(),
            kind: "TokenRequest".into(),
        },
        subresource: "token",
        namespace: ns,
        name,
        object: Some(&request),
        old_object: None,
        user: &call.user,
        dry_run: dry_run(call),
        options: &options,
    };
    let store: &Store = &cluster.store;
    admission::mutate(store, &attrs)?;
    let out = admission::validating::admit(&cluster.policies, store, &attrs);
    call.notes.admitted(&out);
    if let Some(denied) = out.deny {
        return Err(denied);
    }
    let now = jiff::Timestamp::now().as_second();
    let tr = cluster
        .signer
        .issue(&issuer, sa, &request, call.token_expiry, now)?;
    Ok(Reply::json(201, tr))
}
