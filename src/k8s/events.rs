//! Events about bindings, written as `events.k8s.io/v1` Events through the [`Writer`].
//!
//! Written directly rather than through kube-runtime's `Recorder`: the recorder keeps every
//! Event it sent for 6 minutes to fold repeats into a series, which is ~20,000 objects in
//! memory while 10,000 bindings converge. acrpull thins repeats itself instead: a failure Event
//! is published when the message changes, and otherwise only on the 1st, 2nd, 4th, 8th …
//! consecutive failure ([`should_emit_failure`]). Events are best effort: a failure to record
//! one never fails the reconcile.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::runtime::events::Reporter;
use kube::Resource;

use super::writer::Writer;
use crate::state::reason::Reason;

/// Whether the `failures`-th consecutive failure with `new_error` deserves an event, given the
/// error already in status.
pub fn should_emit_failure(failures: u32, previous_error: &str, new_error: &str) -> bool {
    previous_error != new_error || failures.is_power_of_two()
}

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// Object names longer than this get a shortened Event name (see [`event_name`]).
const LONG_NAME: usize = 200;
/// Longest Event note (the API server's limit is 1 kB).
const MAX_NOTE: usize = 1000;

/// `<object name>.<timestamp in hex nanoseconds>` as kube-runtime and client-go name Events;
/// for names longer than [`LONG_NAME`], which would push the Event's name past 253
/// characters, `<first 200 characters>.<hash of the full name>.<timestamp>`.
fn event_name(object: &str, now: Timestamp) -> String {
    if object.len() <= LONG_NAME {
        return format!("{object}.{:x}", now.as_nanosecond());
    }
    let mut cut = LONG_NAME;
    while !object.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = crate::state::names::base36_sha224(object.as_bytes());
    format!(
        "{}.{}.{:x}",
        object[..cut].trim_end_matches(['.', '-']),
        &hash[..hash.len().min(10)],
        now.as_nanosecond()
    )
}

fn truncate_note(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let cut = note.floor_char_boundary(MAX_NOTE);
        note.truncate(cut);
    }
    note
}

/// The Event about `regarding`.
fn build(
    reporter: &Reporter,
    regarding: ObjectReference,
    severity: Severity,
    reason: Reason,
    action: &str,
    note: String,
    now: Timestamp,
) -> Event {
    let namespace = regarding.namespace.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(
                regarding.name.as_deref().unwrap_or_default(),
                now,
            )),
            namespace: Some(namespace),
            ..Default::default()
        },
        action: Some(action.into()),
        reason: Some(reason.as_str().into()),
        note: Some(truncate_note(note)),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match severity {
                Severity::Normal => "Normal",
                Severity::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    }
}

/// Publish an Event about `object`; failures are logged at debug level only.
pub async fn publish<K: Resource<DynamicType = ()>>(
    writer: &Writer,
    reporter: &Reporter,
    object: &K,
    severity: Severity,
    reason: Reason,
    action: &str,
    note: String,
) {
    let regarding = object.object_ref(&());
    let namespace = regarding.namespace.clone().unwrap_or_default();
    let event = build(
        reporter,
        regarding,
        severity,
        reason,
        action,
        note,
        Timestamp::now(),
    );
    if let Err(e) = writer
        .create::<Event>("record event", &namespace, &event)
        .await
    {
        tracing::debug!(error = %e, reason = reason.as_str(), "event not recorded");
    }
}

/// What one pass did that the user is told about, folded into as few Events as SPEC §8 allows:
/// a pass that creates the pull secret and attaches it says so in one `TokenIssued` Event
/// ("pull secret created and attached to service account …"), not a `TokenIssued` and a
/// `PullSecretAttached` — one Event per binding on creation instead of two. A refresh, or an
/// attach on its own (someone removed the secret from the ServiceAccount), keeps its own Event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Notes {
    /// `(TokenIssued | TokenRefreshed, secret name, expiry)`.
    minted: Option<(Reason, String, String)>,
    /// The ServiceAccount the pull secret was attached to.
    attached: Option<String>,
}

impl Notes {
    pub fn minted(&mut self, reason: Reason, secret: &str, expires: &str) {
        self.minted = Some((reason, secret.to_string(), expires.to_string()));
    }

    pub fn attached(&mut self, service_account: &str) {
        self.attached = Some(service_account.to_string());
    }

    /// The Events to publish: (reason, action, note).
    pub fn events(&self) -> Vec<(Reason, &'static str, String)> {
        let mut out = Vec::new();
        match (&self.minted, &self.attached) {
            (Some((Reason::TokenIssued, secret, expires)), Some(sa)) => out.push((
                Reason::TokenIssued,
                "Mint",
                format!(
                    "pull secret {secret} created and attached to service account {sa}; token expires {expires}"
                ),
            )),
            (minted, attached) => {
                if let Some((reason, secret, expires)) = minted {
                    let what = match reason {
                        Reason::TokenIssued => "created",
                        _ => "refreshed",
                    };
                    out.push((
                        *reason,
                        "Mint",
                        format!("pull secret {secret} {what}; token expires {expires}"),
                    ));
                }
                if let Some(sa) = attached {
                    out.push((
                        Reason::PullSecretAttached,
                        "Attach",
                        format!("pull secret attached to service account {sa}"),
                    ));
                }
            }
        }
        out
    }

    /// Publish them about `object` (best effort, like every Event).
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        writer: &Writer,
        reporter: &Reporter,
        object: &K,
    ) {
        for (reason, action, note) in self.events() {
            publish(
                writer,
                reporter,
                object,
                Severity::Normal,
                reason,
                action,
                note,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_mint_and_its_attach_are_one_event() {
        let mut n = Notes::default();
        n.minted(Reason::TokenIssued, "acr-pull-app", "2026-01-01T01:00:00Z");
        n.attached("puller");
        let events = n.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, Reason::TokenIssued);
        assert!(events[0]
            .2
            .contains("created and attached to service account puller"));
        assert!(events[0].2.contains("acr-pull-app"));
        // A refresh and an attach on its own keep their own Events.
        let mut n = Notes::default();
        n.minted(
            Reason::TokenRefreshed,
            "acr-pull-app",
            "2026-01-01T01:00:00Z",
        );
        n.attached("puller");
        let reasons: Vec<Reason> = n.events().into_iter().map(|e| e.0).collect();
        assert_eq!(
            reasons,
            [Reason::TokenRefreshed, Reason::PullSecretAttached]
        );
        let mut n = Notes::default();
        n.attached("puller");
        assert_eq!(n.events()[0].0, Reason::PullSecretAttached);
        assert!(Notes::default().events().is_empty());
    }

    #[test]
    fn repeats_are_thinned_out() {
        let emitted: Vec<u32> = (1..=100)
            .filter(|n| should_emit_failure(*n, "same", "same"))
            .collect();
        assert_eq!(emitted, [1, 2, 4, 8, 16, 32, 64]);
        assert!(should_emit_failure(7, "old", "new"));
        assert!(!should_emit_failure(0, "same", "same"));
    }

    #[test]
    fn event_names_are_valid_object_names() {
        let now: Timestamp = "2026-11-28T07:00:00Z".parse().unwrap();
        // `<name>.<nanoseconds since the epoch in hex>`, as kube-runtime names them.
        assert_eq!(event_name("app", now), "app.18ec2355242b6000");
        for len in [1, 199, 200, 201, 253] {
            let object = "a".repeat(len);
            let name = event_name(&object, now);
            assert!(name.len() <= 253, "{len}: {} characters", name.len());
            assert!(name.starts_with(&object[..len.min(LONG_NAME)]));
        }
        // Two long names that share their first 200 characters get different Event names.
        let a = format!("{}-one", "x".repeat(210));
        let b = format!("{}-two", "x".repeat(210));
        assert_ne!(event_name(&a, now), event_name(&b, now));
    }

    #[test]
    fn events_carry_the_reason_and_a_bounded_note() {
        let reporter = Reporter {
            controller: "acrpull".into(),
            instance: Some("replica-1".into()),
        };
        let regarding = ObjectReference {
            name: Some("app".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        };
        let now: Timestamp = "2026-11-28T07:00:00Z".parse().unwrap();
        let e = build(
            &reporter,
            regarding,
            Severity::Warning,
            Reason::TokenIssueFailed,
            "Mint",
            "é".repeat(800),
            now,
        );
        assert_eq!(e.reason.as_deref(), Some("TokenIssueFailed"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert!(e.note.unwrap().len() <= MAX_NOTE);
        assert_eq!(e.reporting_instance.as_deref(), Some("replica-1"));
    }
}
