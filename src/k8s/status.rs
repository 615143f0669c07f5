//! The status subresource, rendered from the binding's [`Record`] through the typed
//! [`AcrPullBindingStatus`] and written as a JSON merge patch in which every status field the
//! record leaves empty is an explicit `null` (a merge patch only removes what it names).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::api::status::{StatusCondition, Word};
use super::api::AcrPullBindingStatus;
use super::binding::BindingResource;
use super::error::ReconcileError;
use super::writer::Writer;
use crate::state::reason::Reason;
use crate::state::record::Record;
use crate::state::status_schema::{StatusFields, STATUS_FIELDS};

/// The condition `kubectl wait --for=condition=Ready` waits for: the pull secret works.
pub const READY: &str = "Ready";
/// The condition saying whether the registry granted every requested scope.
pub const CREDENTIAL_VERIFIED: &str = "CredentialVerified";
/// The condition saying whether an `AcrPullPolicy` permits the binding (tenancy modes audit
/// and enforce only).
pub const PERMITTED: &str = "Permitted";
/// The `CredentialVerified` condition's message when the registry granted every scope.
pub const VERIFIED_MESSAGE: &str =
    "the registry granted every requested scope to the current credential";

/// Every field of [`AcrPullBindingStatus`] as serialised (checked by a test): the ones the
/// record leaves empty are sent as `null` so the stored status loses them.
const FIELDS: [&str; 8] = STATUS_FIELDS;

/// The condition of `type_` saying `status`: its transition time is kept while the status does
/// not change.
fn condition(
    previous: Option<&AcrPullBindingStatus>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: &str,
    generation: i64,
    now: Timestamp,
) -> StatusCondition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    StatusCondition {
        type_: Word::from(type_),
        status: Word::from(status),
        reason: Word::Known(reason.as_str()),
        message: Word::from(message),
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

/// The status that says `record`.
pub fn render(
    record: &Record,
    previous: Option<&AcrPullBindingStatus>,
    now: Timestamp,
) -> AcrPullBindingStatus {
    let generation = record.observed_generation;
    let mut conditions = vec![condition(
        previous,
        READY,
        record.ready,
        record.reason,
        &record.message,
        generation,
        now,
    )];
    if let Some(verified) = record.verified {
        let (reason, message) = if verified {
            (Reason::Verified, VERIFIED_MESSAGE)
        } else {
            (record.reason, record.message.as_str())
        };
        conditions.push(condition(
            previous,
            CREDENTIAL_VERIFIED,
            verified,
            reason,
            message,
            generation,
            now,
        ));
    }
    if let Some((permitted, message)) = &record.permitted {
        let reason = if *permitted {
            Reason::Permitted
        } else {
            Reason::NotPermitted
        };
        conditions.push(condition(
            previous, PERMITTED, *permitted, reason, message, generation, now,
        ));
    }
    AcrPullBindingStatus {
        last_token_refresh_time: record.last_refresh.map(Time),
        token_expiration_time: record.expiry.map(Time),
        error: record.error.clone(),
        phase: Some(Word::Known(record.phase.as_str())),
        conditions,
        observed_generation: Some(generation),
        next_refresh_time: record.next_refresh.map(Time),
        consecutive_failures: record.consecutive_failures,
    }
}

/// The merge patch that makes the stored status exactly `status`, in the fields the installed
/// CRD keeps (`kept`); the others would be pruned by the API server, so they are not sent.
pub fn patch(status: &AcrPullBindingStatus, kept: StatusFields) -> serde_json::Value {
    let mut fields = match serde_json::to_value(status) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    for f in FIELDS {
        fields.entry(f).or_insert(serde_json::Value::Null);
    }
    fields.retain(|f, _| kept.keeps(f));
    serde_json::json!({ "status": fields })
}

/// Write `record` as the binding's status, as far as the CRD keeps it (`kept`); returns the
/// binding as written, or `None` when nothing was written (the CRD has no status subresource).
pub async fn write<K: BindingResource>(
    writer: &Writer,
    kept: StatusFields,
    binding: &K,
    record: &Record,
    now: Timestamp,
) -> Result<Option<K>, ReconcileError> {
    if kept.is_empty() {
        return Ok(None);
    }
    let status = render(record, binding.status(), now);
    let meta = binding.meta();
    let mut written: K = writer
        .patch_status::<K>(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            &patch(&status, kept),
        )
        .await?;
    written.meta_mut().managed_fields = None;
    Ok(Some(written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::record::Phase;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn record() -> Record {
        Record {
            phase: Phase::Refreshing,
            reason: Reason::Throttled,
            ready: true,
            message: "valid until later".into(),
            error: "ACR throttled".into(),
            last_refresh: Some(ts("2026-01-01T00:00:00Z")),
            expiry: Some(ts("2026-01-01T01:00:00Z")),
            next_refresh: Some(ts("2026-01-01T00:31:00Z")),
            consecutive_failures: 2,
            observed_generation: 3,
            verified: Some(true),
            permitted: None,
        }
    }

    #[test]
    fn the_patch_names_every_field_and_clears_what_the_record_leaves_empty() {
        let now = ts("2026-01-01T00:30:00Z");
        let full = render(&record(), None, now);
        let keys: Vec<String> = match serde_json::to_value(&full).unwrap() {
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            _ => unreachable!(),
        };
        let mut want: Vec<&str> = FIELDS.to_vec();
        want.sort_unstable();
        let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, want, "FIELDS lists every status field");

        let healthy = Record {
            phase: Phase::Ready,
            reason: Reason::TokenIssued,
            error: String::new(),
            next_refresh: None,
            consecutive_failures: 0,
            ..record()
        };
        let p = patch(&render(&healthy, Some(&full), now), StatusFields::ALL);
        assert_eq!(p["status"]["error"], serde_json::Value::Null);
        assert_eq!(p["status"]["consecutiveFailures"], serde_json::Value::Null);
        assert_eq!(p["status"]["nextRefreshTime"], serde_json::Value::Null);
        assert_eq!(p["status"]["phase"], "Ready");
        assert_eq!(p["status"]["conditions"][0]["reason"], "TokenIssued");
        assert_eq!(p["status"]["tokenExpirationTime"], "2026-01-01T01:00:00Z");

        // With the old controller's CRD, only its three fields are sent.
        let old = StatusFields::of(&["lastTokenRefreshTime", "tokenExpirationTime", "error"]);
        let p = patch(&render(&healthy, Some(&full), now), old);
        let sent: Vec<&String> = p["status"].as_object().unwrap().keys().collect();
        assert_eq!(
            sent,
            ["error", "lastTokenRefreshTime", "tokenExpirationTime"]
        );
    }

    #[test]
    fn transition_times_move_only_when_a_condition_changes() {
        let t0 = ts("2026-01-01T00:00:00Z");
        let first = render(&record(), None, t0);
        let later = render(&record(), Some(&first), ts("2026-01-01T00:10:00Z"));
        assert_eq!(later.conditions[0].last_transition_time, Time(t0));
        let failed = Record {
            phase: Phase::Failed,
            ready: false,
            ..record()
        };
        let t1 = ts("2026-01-01T00:20:00Z");
        let after = render(&failed, Some(&later), t1);
        assert_eq!(after.conditions[0].last_transition_time, Time(t1));
        assert_eq!(after.conditions[0].status, "False");
        assert_eq!(after.conditions[1].reason, "Verified");
    }
}
