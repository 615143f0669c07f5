//! The stages between preparing a write and storing it, in the real server's order: schema
//! validation ([`crate::validate`]), then validating admission ([`crate::admission`]). Every
//! write path — API requests and the typed handle's writes — runs them through [`run`].

use crate::admission::{self, Attributes, GroupVersionKind, Operation};
use crate::authn::UserInfo;
use crate::error::ApiResult;
use crate::store::{Plan, Store};
use crate::validate;
use crate::watch::present;

/// Who writes, in which version, and where warnings go.
pub struct WriteContext<'a> {
    /// The user (after impersonation).
    pub user: &'a UserInfo,
    /// The request's version.
    pub version: &'a str,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Admission warnings collected for the response.
    pub warnings: &'a mut Vec<String>,
}

/// Run validation and validating admission on a prepared write.
pub fn run(store: &Store, ctx: &mut WriteContext<'_>, plan: &Plan) -> ApiResult<()> {
    let rt = plan.resource_type();
    let object = (!plan.is_delete()).then(|| present(rt, ctx.version, plan.object().clone()));
    let old = plan
        .old_object()
        .map(|o| present(rt, ctx.version, o.clone()));
    let subresource = plan.subresource();
    if let Some(obj) = &object {
        validate::object(rt, ctx.version, subresource, obj, old.as_ref())?;
    }
    let operation = if plan.is_create() {
        Operation::Create
    } else if plan.is_delete() {
        Operation::Delete
    } else {
        Operation::Update
    };
    let attrs = Attributes {
        operation,
        resource: rt,
        version: ctx.version,
        kind: GroupVersionKind {
            group: rt.group.clone(),
            version: ctx.version.to_string(),
            kind: rt.kind.clone(),
        },
        subresource,
        namespace: plan.namespace(),
        name: plan.name(),
        object: object.as_ref(),
        old_object: old.as_ref(),
        user: ctx.user,
        dry_run: ctx.dry_run,
    };
    let warnings = admission::validate(store, &attrs)?;
    ctx.warnings.extend(warnings);
    Ok(())
}
