//! Which of the status fields acrpull writes the installed CRD keeps.
//!
//! The API server prunes every field a structural schema does not declare. The old
//! controller's CRDs declare only `lastTokenRefreshTime`, `tokenExpirationTime` and `error`, so
//! with them installed `phase`, `conditions`, `observedGeneration`, `nextRefreshTime` and
//! `consecutiveFailures` vanish from every status write. A controller that compared its record
//! with the status read back would then see a difference on every pass and write again. The
//! decision core compares only the fields in [`StatusFields`] (see
//! [`Record::matches`](super::record::Record::matches)) and the shell writes only those.
//!
//! [`kept_by`] reads a CRD manifest (as JSON) without I/O; the k8s layer fetches the CRDs.

use serde_json::Value;

/// Every status field acrpull writes, in the order it documents them.
pub const STATUS_FIELDS: [&str; 8] = [
    "lastTokenRefreshTime",
    "tokenExpirationTime",
    "error",
    "phase",
    "conditions",
    "observedGeneration",
    "nextRefreshTime",
    "consecutiveFailures",
];

/// The fields of a `metav1.Condition` acrpull sets; a `conditions` schema whose items drop one
/// of them does not keep conditions.
const CONDITION_FIELDS: [&str; 6] = [
    "type",
    "status",
    "reason",
    "message",
    "lastTransitionTime",
    "observedGeneration",
];

/// A set of [`STATUS_FIELDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusFields(u16);

impl Default for StatusFields {
    /// Every field: what acrpull's own CRDs keep.
    fn default() -> Self {
        Self::ALL
    }
}

impl StatusFields {
    pub const ALL: StatusFields = StatusFields((1 << STATUS_FIELDS.len()) - 1);
    pub const NONE: StatusFields = StatusFields(0);

    fn bit(field: &str) -> u16 {
        STATUS_FIELDS
            .iter()
            .position(|f| *f == field)
            .map_or(0, |i| 1 << i)
    }

    /// The set holding exactly `fields` (names outside [`STATUS_FIELDS`] are ignored).
    pub fn of(fields: &[&str]) -> Self {
        Self(fields.iter().fold(0, |acc, f| acc | Self::bit(f)))
    }

    pub fn keeps(self, field: &str) -> bool {
        let bit = Self::bit(field);
        bit != 0 && self.0 & bit == bit
    }

    pub fn is_all(self) -> bool {
        self == Self::ALL
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The fields in the set, in [`STATUS_FIELDS`] order.
    pub fn names(self) -> Vec<&'static str> {
        STATUS_FIELDS
            .iter()
            .copied()
            .filter(|f| self.keeps(f))
            .collect()
    }

    /// The fields not in the set, in [`STATUS_FIELDS`] order.
    pub fn missing(self) -> Vec<&'static str> {
        STATUS_FIELDS
            .iter()
            .copied()
            .filter(|f| !self.keeps(f))
            .collect()
    }

    /// As a raw number (for an atomic).
    pub fn bits(self) -> u16 {
        self.0
    }

    pub fn from_bits(bits: u16) -> Self {
        Self(bits & Self::ALL.0)
    }
}

/// What an installed CRD does with acrpull's status, for one served version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusSchema {
    /// The version's status is written through the status subresource and keeps these fields.
    Subresource(StatusFields),
    /// The CRD does not have the status subresource for this version: status cannot be written
    /// (a `/status` request would be 404).
    NoSubresource,
    /// The CRD does not serve this version.
    NotServed,
}

impl StatusSchema {
    /// The fields status writes keep (none when status cannot be written).
    pub fn kept(&self) -> StatusFields {
        match self {
            StatusSchema::Subresource(fields) => *fields,
            StatusSchema::NoSubresource | StatusSchema::NotServed => StatusFields::NONE,
        }
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

/// Whether an object schema keeps the property `name`: declared, or unknown fields preserved.
fn property<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(p) = schema["properties"].get(name) {
        return Some(p);
    }
    preserves_unknown(schema).then_some(&Value::Null)
}

/// Whether a `conditions` schema keeps every field of a condition acrpull writes.
fn keeps_conditions(conditions: &Value) -> bool {
    if conditions.is_null() || preserves_unknown(conditions) {
        // Kept whole (under a preserve-unknown-fields parent, or itself).
        return true;
    }
    let items = &conditions["items"];
    preserves_unknown(items)
        || CONDITION_FIELDS
            .iter()
            .all(|f| property(items, f).is_some())
}

/// What `crd` (an `apiextensions.k8s.io/v1` CustomResourceDefinition as JSON) keeps of the
/// status of `version`. A version without a schema keeps nothing (a structural schema is
/// required in `apiextensions.k8s.io/v1`, so that is a CRD the API server would refuse anyway).
pub fn kept_by(crd: &Value, version: &str) -> StatusSchema {
    let Some(v) = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == version && v["served"] != Value::Bool(false))
    else {
        return StatusSchema::NotServed;
    };
    if v["subresources"].get("status").is_none() {
        return StatusSchema::NoSubresource;
    }
    let root = &v["schema"]["openAPIV3Schema"];
    let Some(status) = property(root, "status") else {
        return StatusSchema::Subresource(StatusFields::NONE);
    };
    if status.is_null() || preserves_unknown(status) {
        return StatusSchema::Subresource(StatusFields::ALL);
    }
    let kept: Vec<&str> = STATUS_FIELDS
        .iter()
        .copied()
        .filter(|f| match property(status, f) {
            None => false,
            Some(schema) if *f == "conditions" => keeps_conditions(schema),
            Some(_) => true,
        })
        .collect();
    StatusSchema::Subresource(StatusFields::of(&kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_saphyr::from_str(text).unwrap()
    }

    const UPSTREAM_V1BETA2: &str = include_str!(
        "../../tests/fixtures/upstream/helm/templates/acrpull.microsoft.com_acrpullbindings.yaml"
    );
    const UPSTREAM_V1BETA1: &str = include_str!(
        "../../tests/fixtures/upstream/helm/templates/msi-acrpull.microsoft.com_acrpullbindings.yaml"
    );

    #[test]
    fn acrpulls_own_crds_keep_every_field() {
        // The committed CRDs (tests/api_compat.rs checks they are the types' CRDs).
        for text in [
            include_str!("../../deploy/crds/acrpullbindings.acrpull.microsoft.com.yaml"),
            include_str!("../../deploy/crds/acrpullbindings.msi-acrpull.microsoft.com.yaml"),
        ] {
            let crd = yaml(text);
            let version = crd["spec"]["versions"][0]["name"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(
                kept_by(&crd, &version),
                StatusSchema::Subresource(StatusFields::ALL),
                "{}",
                crd["metadata"]["name"]
            );
        }
    }

    #[test]
    fn the_old_controllers_crds_keep_only_its_three_fields() {
        for (text, version) in [(UPSTREAM_V1BETA2, "v1beta2"), (UPSTREAM_V1BETA1, "v1beta1")] {
            let schema = kept_by(&yaml(text), version);
            let kept = schema.kept();
            assert_eq!(
                kept.names(),
                ["lastTokenRefreshTime", "tokenExpirationTime", "error"],
                "{version}"
            );
            assert_eq!(
                kept.missing(),
                [
                    "phase",
                    "conditions",
                    "observedGeneration",
                    "nextRefreshTime",
                    "consecutiveFailures"
                ]
            );
            assert!(!kept.is_all());
        }
    }

    #[test]
    fn schema_shapes() {
        let crd = |versions: Value| serde_json::json!({"spec": {"versions": versions}});
        let status = |s: Value| {
            crd(
                serde_json::json!([{"name": "v1", "served": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"status": s}}}}]),
            )
        };
        // Preserved unknown fields keep everything.
        assert_eq!(
            kept_by(
                &status(
                    serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
                ),
                "v1"
            ),
            StatusSchema::Subresource(StatusFields::ALL)
        );
        // An object without properties keeps nothing.
        assert_eq!(
            kept_by(&status(serde_json::json!({"type": "object"})), "v1").kept(),
            StatusFields::NONE
        );
        // Conditions whose items drop observedGeneration do not count as kept.
        let partial = status(serde_json::json!({"type": "object", "properties": {
            "phase": {"type": "string"},
            "conditions": {"type": "array", "items": {"type": "object", "properties": {
                "type": {}, "status": {}, "reason": {}, "message": {}, "lastTransitionTime": {}}}}}}));
        assert_eq!(kept_by(&partial, "v1").kept().names(), ["phase"]);
        // No status subresource, other or unserved versions.
        let no_sub = crd(serde_json::json!([{"name": "v1", "served": true,
            "schema": {"openAPIV3Schema": {"type": "object"}}}]));
        assert_eq!(kept_by(&no_sub, "v1"), StatusSchema::NoSubresource);
        assert_eq!(kept_by(&no_sub, "v2"), StatusSchema::NotServed);
        let unserved = crd(serde_json::json!([{"name": "v1", "served": false,
            "subresources": {"status": {}}}]));
        assert_eq!(kept_by(&unserved, "v1"), StatusSchema::NotServed);
        assert!(StatusSchema::NoSubresource.kept().is_empty());
    }

    #[test]
    fn sets() {
        let s = StatusFields::of(&["error", "phase", "nonsense"]);
        assert!(s.keeps("error") && s.keeps("phase") && !s.keeps("conditions"));
        assert!(!s.keeps("nonsense"));
        assert_eq!(StatusFields::from_bits(s.bits()), s);
        assert_eq!(StatusFields::default(), StatusFields::ALL);
        assert_eq!(StatusFields::ALL.names(), STATUS_FIELDS);
    }
}
