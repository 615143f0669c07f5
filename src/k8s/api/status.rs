//! Status shared by both API versions: the old controller's three fields (same JSON names)
//! plus the phase, conditions and scheduling facts acrpull adds.
//!
//! The binding store holds every binding's status (10,000 at 10,000 bindings), so the words
//! a status nearly always repeats — a condition's type, status and reason, the phase — are
//! kept as [`Word`]s: a known word costs no allocation. The JSON, and the CRD's schema, are
//! those of the Kubernetes types.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::state::reason::Reason;
use crate::state::record::Phase;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcrPullBindingStatus {
    /// When the ACR token in the pull secret was last refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_refresh_time: Option<Time>,
    /// When the ACR token in the pull secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expiration_time: Option<Time>,
    /// The last error, as a message a user can act on; empty when healthy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Pending, Exchanging, Ready, Refreshing or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Pending", "Exchanging", "Ready", "Refreshing", "Failed"]))]
    pub phase: Option<Word>,
    /// Standard conditions; `Ready` is always present once the controller has seen the binding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<StatusCondition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the controller plans to refresh the token next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,
    /// Failed attempts since the last success; drives the per-binding backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A Kubernetes `Condition` (same JSON, same schema) whose type, status, reason and message
/// are [`Word`]s.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    pub last_transition_time: Time,
    #[serde(default, deserialize_with = "absent_is_empty")]
    pub message: Word,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, deserialize_with = "absent_is_empty")]
    pub reason: Word,
    #[serde(default, deserialize_with = "absent_is_empty")]
    pub status: Word,
    #[serde(rename = "type", default, deserialize_with = "absent_is_empty")]
    pub type_: Word,
}

/// As the Kubernetes `Condition` reads them: a missing or `null` string is empty.
fn absent_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Word, D::Error> {
    Option::<Word>::deserialize(d).map(Option::unwrap_or_default)
}

/// `$ours` has `$theirs`'s schema: the same JSON, kept differently.
macro_rules! schema_of {
    ($ours:ty => $theirs:ty) => {
        impl JsonSchema for $ours {
            fn schema_name() -> Cow<'static, str> {
                <$theirs>::schema_name()
            }

            fn schema_id() -> Cow<'static, str> {
                <$theirs>::schema_id()
            }

            fn inline_schema() -> bool {
                <$theirs>::inline_schema()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <$theirs>::json_schema(generator)
            }
        }
    };
}

schema_of!(StatusCondition => Condition);
schema_of!(Word => String);

/// Condition types, statuses and messages a status repeats, besides reasons and phases.
const WORDS: [&str; 7] = [
    "True",
    "False",
    "Unknown",
    super::super::status::READY,
    super::super::status::CREDENTIAL_VERIFIED,
    super::super::status::PERMITTED,
    super::super::status::VERIFIED_MESSAGE,
];

/// A string of a status: a word acrpull writes (a reason, a phase, a condition type or status,
/// a fixed message) as a reference to it, anything else as its own copy. Compares, prints and
/// serialises as the string.
#[derive(Clone)]
pub enum Word {
    Known(&'static str),
    Other(Box<str>),
}

impl Word {
    pub fn as_str(&self) -> &str {
        match self {
            Word::Known(s) => s,
            Word::Other(s) => s,
        }
    }
}

impl From<&str> for Word {
    fn from(s: &str) -> Self {
        let known = WORDS
            .into_iter()
            .find(|w| *w == s)
            .or_else(|| Reason::parse(s).map(Reason::as_str))
            .or_else(|| Phase::parse(s).map(Phase::as_str))
            .filter(|w| *w == s);
        match known {
            Some(w) => Word::Known(w),
            None => Word::Other(s.into()),
        }
    }
}

impl From<String> for Word {
    fn from(s: String) -> Self {
        Word::from(s.as_str())
    }
}

impl Default for Word {
    fn default() -> Self {
        Word::Known("")
    }
}

impl Deref for Word {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Word {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Word {}

impl PartialEq<str> for Word {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Word {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Word {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Word;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Word, E> {
                Ok(Word::from(s))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_status_reads_and_writes_the_kubernetes_json_and_keeps_known_words_unallocated() {
        let doc = json!({
            "phase": "Ready",
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "TokenIssued",
                "message": "token valid until 2026-12-08T06:00:00Z",
                "observedGeneration": 3, "lastTransitionTime": "2026-12-08T03:00:00Z"
            }, {
                "type": "Custom", "status": "Maybe", "reason": "tokenissued",
                "message": super::super::super::status::VERIFIED_MESSAGE,
                "lastTransitionTime": "2026-12-08T03:00:00Z"
            }],
            "observedGeneration": 3
        });
        let status: AcrPullBindingStatus = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            doc,
            "the same JSON back"
        );
        // Read as the Kubernetes type, it is the same condition.
        let k8s: Condition = serde_json::from_value(doc["conditions"][0].clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&status.conditions[0]).unwrap(),
            serde_json::to_value(&k8s).unwrap()
        );
        let known = |w: &Word| matches!(w, Word::Known(_));
        let ready = &status.conditions[0];
        assert!(known(&ready.type_) && known(&ready.status) && known(&ready.reason));
        assert!(known(status.phase.as_ref().unwrap()));
        assert!(
            !known(&ready.message),
            "a message of its own is its own copy"
        );
        let other = &status.conditions[1];
        assert!(!known(&other.type_) && !known(&other.status));
        assert!(
            !known(&other.reason),
            "a reason is known only as written: {:?}",
            other.reason
        );
        assert!(known(&other.message), "the fixed verification message");
        assert_eq!(other.reason, "tokenissued");
        assert_eq!(ready.reason, Word::from("TokenIssued".to_string()));
    }

    #[test]
    fn a_condition_missing_its_strings_reads_as_the_kubernetes_one_does() {
        let doc = json!({"type": "Ready", "status": null,
                         "lastTransitionTime": "2026-12-08T03:00:00Z"});
        let ours: StatusCondition = serde_json::from_value(doc.clone()).unwrap();
        let theirs: Condition = serde_json::from_value(doc).unwrap();
        assert_eq!(
            serde_json::to_value(&ours).unwrap(),
            serde_json::to_value(&theirs).unwrap()
        );
        assert_eq!((&*ours.status, &*ours.message, &*ours.reason), ("", "", ""));
        // Without a transition time, neither reads.
        let bad = json!({"type": "Ready", "status": "True"});
        assert!(serde_json::from_value::<StatusCondition>(bad.clone()).is_err());
        assert!(serde_json::from_value::<Condition>(bad).is_err());
    }

    #[test]
    fn a_condition_has_the_kubernetes_schema() {
        let mut generator = schemars::SchemaGenerator::default();
        let ours = StatusCondition::json_schema(&mut generator);
        let theirs = Condition::json_schema(&mut generator);
        assert_eq!(ours, theirs);
        assert_eq!(StatusCondition::schema_name(), Condition::schema_name());
    }
}
