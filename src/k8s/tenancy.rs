//! What a pass reads and tells of the operator's tenancy policies (`--tenancy-mode`).

use std::sync::Arc;

use kube::ResourceExt;

use super::binding::BindingResource;
use super::context::Context;
use super::events::{publish, Severity};
use crate::state::decide::{Decision, Observed, Plan, TenancyView};
use crate::state::reason::Reason;
use crate::state::tenancy::Mode;

/// The tenancy policies and the namespace's labels, when the mode reads them.
pub(super) fn tenancy_view(ctx: &Context, ns: &str) -> Option<TenancyView> {
    if ctx.policy.tenancy_mode == Mode::Off {
        return None;
    }
    let policies = ctx
        .caches
        .policies
        .in_namespace("")
        .iter()
        .map(|p| p.view())
        .collect();
    Some(TenancyView {
        policies: Arc::new(policies),
        namespace_labels: ctx
            .caches
            .namespaces
            .get("", ns)
            .map(|n| n.labels().clone()),
    })
}

/// Count (and, in audit mode, tell) what the operator's policy did to the binding this pass:
/// once per refusal, when its status first says so.
pub(super) async fn policy_signals<K: BindingResource>(
    ctx: &Context,
    b: &K,
    o: &Observed,
    d: &Decision,
) {
    let mode = ctx.policy.tenancy_mode.as_str();
    match &d.plan {
        Plan::Fail(r)
            if matches!(
                r.reason,
                Reason::NotPermitted | Reason::ActionNotAllowed | Reason::AuthorityNotAllowed
            ) && o
                .binding
                .status
                .ready
                .as_ref()
                .and_then(|(_, reason, _)| *reason)
                != Some(r.reason) =>
        {
            ctx.metrics.refusal(mode, r.reason.as_str());
        }
        Plan::WriteStatus(r) => {
            let flagged = |p: &Option<(bool, String)>| p.as_ref().is_some_and(|(ok, _)| !ok);
            if flagged(&r.permitted) && !flagged(&o.binding.status.permitted) {
                ctx.metrics.refusal(mode, Reason::NotPermitted.as_str());
                let message = r
                    .permitted
                    .as_ref()
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    namespace = %o.binding.namespace, name = %o.binding.name, error = %message,
                    "binding outside every AcrPullPolicy (audit mode: served)"
                );
                publish(
                    &ctx.writer,
                    &ctx.reporter,
                    b,
                    Severity::Warning,
                    Reason::NotPermitted,
                    "Audit",
                    message,
                )
                .await;
            }
        }
        _ => {}
    }
}
