//! Both CRD versions seen through one trait, so the controller is written once.

use std::collections::BTreeMap;

use jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::api::{v1beta1, v1beta2, AcrPullBindingStatus, FINALIZER};
use crate::state::binding::{Spec, V1beta1Spec, V1beta2Spec, Version, WorkloadSpec};
use crate::state::decide::{BindingView, Phase, StatusView};
use crate::state::reason::Reason;
use crate::state::status_schema::StatusFields;

/// What the controller needs from either `AcrPullBinding` version.
pub trait BindingResource:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
    + Send
    + Sync
    + 'static
{
    const VERSION: Version;
    fn spec_view(&self) -> Spec;
    fn status(&self) -> Option<&AcrPullBindingStatus>;
    /// ServiceAccounts whose changes matter to this binding: the target and, for workload
    /// identity, the `serviceAccountRef`.
    fn service_accounts(&self) -> Vec<String>;
}

impl BindingResource for v1beta1::AcrPullBinding {
    const VERSION: Version = Version::V1beta1;

    fn spec_view(&self) -> Spec {
        let s = &self.spec;
        Spec::V1beta1(V1beta1Spec {
            acr_server: s.acr_server.clone(),
            scope: s.scope.clone(),
            client_id: s.managed_identity_client_id.clone(),
            resource_id: s.managed_identity_resource_id.clone(),
            service_account_name: s.service_account_name.clone(),
            identity_audience: identity_audience(self),
        })
    }

    fn status(&self) -> Option<&AcrPullBindingStatus> {
        self.status.as_ref()
    }

    fn service_accounts(&self) -> Vec<String> {
        vec![if self.spec.service_account_name.is_empty() {
            crate::state::names::DEFAULT_SERVICE_ACCOUNT.to_string()
        } else {
            self.spec.service_account_name.clone()
        }]
    }
}

impl BindingResource for v1beta2::AcrPullBinding {
    const VERSION: Version = Version::V1beta2;

    fn spec_view(&self) -> Spec {
        let s = &self.spec;
        Spec::V1beta2(V1beta2Spec {
            server: s.acr.server.clone(),
            scope: s.acr.scope.clone(),
            environment: s.acr.environment.clone(),
            cloud_config: s.acr.cloud_config.as_ref().map(|c| {
                (
                    c.entra_authority_host.clone(),
                    c.resource_manager_audience.clone(),
                )
            }),
            managed: s
                .auth
                .managed_identity
                .as_ref()
                .map(|m| (m.client_id.clone(), m.resource_id.clone())),
            workload: s.auth.workload_identity.as_ref().map(|w| WorkloadSpec {
                service_account_ref: w.service_account_ref.clone(),
                client_id: w.client_id.clone(),
                tenant_id: w.tenant_id.clone(),
            }),
            service_account_name: s.service_account_name.clone(),
            identity_audience: identity_audience(self),
        })
    }

    fn status(&self) -> Option<&AcrPullBindingStatus> {
        self.status.as_ref()
    }

    fn service_accounts(&self) -> Vec<String> {
        let mut v = vec![self.spec.service_account_name.clone()];
        if let Some(w) = &self.spec.auth.workload_identity {
            if !w.service_account_ref.is_empty() && !v.contains(&w.service_account_ref) {
                v.push(w.service_account_ref.clone());
            }
        }
        v
    }
}

/// The binding's `acr.microsoft.com/identity-audience` annotation, as written.
fn identity_audience<K: kube::Resource>(b: &K) -> Option<String> {
    b.meta()
        .annotations
        .as_ref()?
        .get(crate::state::names::IDENTITY_AUDIENCE_ANNOTATION)
        .cloned()
}

/// The decision core's view of a binding object.
pub fn view<K: BindingResource>(b: &K) -> BindingView {
    let meta = b.meta();
    BindingView {
        version: K::VERSION,
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
        uid: meta.uid.clone().unwrap_or_default(),
        generation: meta.generation.unwrap_or(0),
        deleting: meta.deletion_timestamp.is_some(),
        has_finalizer: b.finalizers().iter().any(|f| f == FINALIZER),
        spec: b.spec_view(),
        status: b.status().map(status_view).unwrap_or_default(),
    }
}

fn status_view(s: &AcrPullBindingStatus) -> StatusView {
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == super::status::READY)
        .map(|c| {
            (
                c.status == "True",
                Reason::parse(&c.reason),
                c.message.to_string(),
            )
        });
    StatusView {
        phase: s.phase.as_deref().and_then(Phase::parse),
        error: s.error.clone(),
        last_refresh: s.last_token_refresh_time.as_ref().map(|t| t.0),
        expiry: s.token_expiration_time.as_ref().map(|t| t.0),
        next_refresh: s.next_refresh_time.as_ref().map(|t| t.0),
        consecutive_failures: s.consecutive_failures,
        observed_generation: s.observed_generation,
        ready,
        verified: s
            .conditions
            .iter()
            .find(|c| c.type_ == super::status::CREDENTIAL_VERIFIED)
            .map(|c| c.status == "True"),
        permitted: s
            .conditions
            .iter()
            .find(|c| c.type_ == super::status::PERMITTED)
            .map(|c| (c.status == "True", c.message.to_string())),
        // What the installed CRD keeps is not in the object; the pass sets it.
        kept: StatusFields::ALL,
    }
}

/// RFC 3339 to the second, as the old controller wrote annotations and status.
pub fn rfc3339(t: Timestamp) -> String {
    t.round(jiff::Unit::Second)
        .unwrap_or(t)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parse an annotation timestamp; `None` for anything unreadable. jiff also reads RFC 9557
/// extended years (`+010000-01-01T00:00:00Z`); RFC 3339 has four-digit years only and
/// [`rfc3339`] cannot write others back, so they are unreadable here too (found by fuzzing).
pub fn parse_time(annotations: &BTreeMap<String, String>, key: &str) -> Option<Timestamp> {
    let value = annotations.get(key)?.trim();
    if value.starts_with(['+', '-']) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_times_are_rfc3339_and_round_trip() {
        let key = "acr.microsoft.com/token.expiry";
        let cases = [
            ("2026-11-28T06:00:00Z", Some("2026-11-28T06:00:00Z")),
            (" 2026-11-28T06:00:00Z ", Some("2026-11-28T06:00:00Z")),
            ("2026-11-28T07:00:00+01:00", Some("2026-11-28T06:00:00Z")),
            ("0000-01-01T00:00:00Z", Some("0000-01-01T00:00:00Z")),
            ("9999-12-30T00:00:00Z", Some("9999-12-30T00:00:00Z")),
            // Found by fuzzing: extended years parse in jiff but cannot be written back.
            ("+010000-01-01T00:00:00Z", None),
            ("-004026-01-01T00:00:00Z", None),
            ("not-a-date", None),
            ("", None),
        ];
        for (value, want) in cases {
            let map = BTreeMap::from([(key.to_string(), value.to_string())]);
            let got = parse_time(&map, key).map(rfc3339);
            assert_eq!(got.as_deref(), want, "{value:?}");
        }
    }
}
