//! The stages between preparing a write and storing it, in the real server's order: schema
//! validation ([`crate::validate::object`]), then validating admission
//! ([`crate::admission::validating::admit`]). Every write an API client makes runs them
//! through [`run`], on the prepared object (patches applied, defaulted, pruned) and the old
//! one, each time the store prepares the write (again after a concurrent change); a dry run
//! and a no-op update run them too.
//!
//! Writes from outside the request path — the typed handle, the control API, the stand-in's
//! own controllers (GC, namespace, RBAC aggregation) — do not: that is how a test seeds an
//! object stored "before the rule existed".

use std::collections::BTreeMap;

use serde_json::Value;

use crate::admission::{self, Attributes, GroupVersionKind, Operation};
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::store::{Plan, Written};
use crate::user::UserInfo;
use crate::validate;
use crate::watch::present;

/// What validation and admission noted about a request besides their verdict.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Notes {
    /// `Warning` headers (admission policies' `Warn`, ratcheted CRD rule failures).
    pub warnings: Vec<String>,
    /// Audit annotations (admission policies' `Audit` and `auditAnnotations`).
    pub audit_annotations: BTreeMap<String, String>,
    /// The ValidatingAdmissionPolicy that denied the request, if one did.
    pub denied_by: Option<String>,
}

impl Notes {
    /// Record what validating admission noted.
    pub fn add(&mut self, warnings: Vec<String>, audit: BTreeMap<String, String>) {
        self.warnings.extend(warnings);
        self.audit_annotations.extend(audit);
    }

    /// Record everything validating admission said about a request, its denial included.
    pub fn admitted(&mut self, out: &admission::policy::Outcome) {
        self.add(out.warnings.clone(), out.audit.clone());
        if out.denied_by.is_some() {
            self.denied_by = out.denied_by.clone();
        }
    }
}

/// Who writes, in which version, with which options.
pub struct WriteContext<'a> {
    /// The cluster (store, validators, policies).
    pub cluster: &'a Cluster,
    /// The user (after impersonation).
    pub user: &'a UserInfo,
    /// The request's version.
    pub version: &'a str,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// The request's options (`fieldManager`, `dryRun`, or a DELETE's `DeleteOptions`),
    /// without `kind`: [`admission::options`] sets it per operation.
    pub options: &'a Value,
}

/// Prepare a write with `prepare`, run the stages on it and commit it ([`Store::write`]);
/// the notes of the attempt that decided (the last one) go to `notes`.
///
/// [`Store::write`]: crate::store::Store::write
pub fn write(
    ctx: &WriteContext<'_>,
    notes: &mut Notes,
    prepare: impl FnMut() -> ApiResult<Plan>,
) -> ApiResult<Written> {
    let mut attempt = Notes::default();
    let out = ctx.cluster.store.write(ctx.dry_run, prepare, |plan| {
        attempt = Notes::default();
        run(ctx, plan, &mut attempt)
    });
    notes.add(attempt.warnings, attempt.audit_annotations);
    if attempt.denied_by.is_some() {
        notes.denied_by = attempt.denied_by;
    }
    out
}

/// Run validation and validating admission on a prepared write.
pub fn run(ctx: &WriteContext<'_>, plan: &Plan, notes: &mut Notes) -> ApiResult<()> {
    let rt = plan.resource_type();
    // Objects as the client sees them: in the request's version (the storage version for a
    // version the type does not serve, as for events.k8s.io Events stored as core Events).
    let version = if rt.serves(ctx.version) {
        ctx.version
    } else {
        rt.storage_version()
    };
    let object = (!plan.is_delete()).then(|| present(rt, version, plan.object().clone()));
    let old = plan.old_object().map(|o| present(rt, version, o.clone()));
    let subresource = plan.subresource();
    if let Some(obj) = &object {
        validate::object(
            &ctx.cluster.validators,
            rt,
            version,
            subresource,
            obj,
            old.as_ref(),
            &mut notes.warnings,
        )?;
    }
    let operation = if plan.is_create() {
        Operation::Create
    } else if plan.is_delete() {
        Operation::Delete
    } else {
        Operation::Update
    };
    let options = admission::options(operation, ctx.options);
    let attrs = Attributes {
        operation,
        resource: rt,
        version,
        kind: GroupVersionKind {
            group: rt.group.clone(),
            version: version.to_string(),
            kind: rt.kind.clone(),
        },
        subresource,
        namespace: plan.namespace(),
        name: plan.name(),
        object: object.as_ref(),
        old_object: old.as_ref(),
        user: ctx.user,
        dry_run: ctx.dry_run,
        options: &options,
    };
    let out = admission::validating::admit(&ctx.cluster.policies, &*ctx.cluster.store, &attrs);
    notes.admitted(&out);
    match out.deny {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::cluster::Settings;
    use crate::patch::PatchType;
    use crate::store::{Store, WriteOpts};

    fn cluster() -> Cluster {
        let settings = Settings {
            bookmark_interval: Duration::from_secs(10),
            gc_delay: Duration::from_millis(100),
            issuer: None,
        };
        Cluster::new(
            Arc::new(Store::new(100)),
            crate::token::Signer::generate().unwrap(),
            crate::tls::Tls::generate().unwrap(),
            0,
            String::new(),
            &settings,
        )
    }

    /// A write prepared again after a concurrent change runs the stages again; only the last
    /// attempt's warnings reach the response (not one per attempt).
    #[test]
    fn a_retried_write_keeps_the_last_attempts_notes() {
        let c = cluster();
        let store = &c.store;
        let reg = store.registry();
        let rt = |g: &str, p: &str| reg.by_key(g, p).unwrap();
        let opts = WriteOpts::default();
        let g = "admissionregistration.k8s.io";
        store
            .create(&rt(g, "validatingadmissionpolicies"), "", json!({"metadata": {"name": "warn"},
                "spec": {"matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                         "operations": ["UPDATE"], "resources": ["configmaps"]}]},
                         "validations": [{"expression": "false", "message": "noted"}]}}), &opts)
            .unwrap();
        store
            .create(&rt(g, "validatingadmissionpolicybindings"), "",
                json!({"metadata": {"name": "warn"}, "spec": {"policyName": "warn", "validationActions": ["Warn"]}}), &opts)
            .unwrap();
        let cms = rt("", "configmaps");
        store
            .create(&cms, "default", json!({"metadata": {"name": "a"}}), &opts)
            .unwrap();
        let user = UserInfo::admin();
        let options = json!({});
        let ctx = WriteContext {
            cluster: &c,
            user: &user,
            version: "v1",
            dry_run: false,
            options: &options,
        };
        let mut notes = Notes::default();
        let mut attempts = 0;
        let mine = json!({"data": {"mine": "x"}});
        let out = write(&ctx, &mut notes, || {
            attempts += 1;
            let plan =
                store.prepare_patch(&cms, "default", "a", PatchType::Merge, &mine, None, &opts);
            if attempts == 1 {
                // Another writer commits after this attempt was prepared: it goes stale.
                let theirs = json!({"data": {"theirs": "y"}});
                store.patch(&cms, "default", "a", PatchType::Merge, &theirs, None, &opts)?;
            }
            plan
        })
        .unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(out.object["data"], json!({"mine": "x", "theirs": "y"}));
        assert_eq!(
            notes.warnings,
            vec![
                "Validation failed for ValidatingAdmissionPolicy 'warn' with binding 'warn': noted"
            ]
        );
    }
}
