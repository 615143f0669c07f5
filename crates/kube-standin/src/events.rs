//! `events.k8s.io/v1` Events as a view of core `v1` Events, as in a real cluster where both
//! API versions serve the same stored objects: what kube-runtime's `Recorder` publishes shows up
//! in `kubectl get events`, and the reverse.

use serde_json::{Map, Value};

/// (events.k8s.io/v1 field, core/v1 field).
const FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("related", "related"),
    ("note", "message"),
    ("reason", "reason"),
    ("type", "type"),
    ("action", "action"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn convert(obj: &Value, to_core: bool, api_version: &str) -> Value {
    let Some(src) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    if let Some(m) = src.get("metadata") {
        out.insert("metadata".into(), m.clone());
    }
    for (ev, core) in FIELDS {
        let (from, to) = if to_core { (ev, core) } else { (core, ev) };
        if let Some(v) = src.get(*from) {
            out.insert(to.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// events.k8s.io/v1 → core v1.
pub fn to_core(ev: &Value) -> Value {
    convert(ev, true, "v1")
}

/// core v1 → events.k8s.io/v1.
pub fn to_events_v1(core: &Value) -> Value {
    convert(core, false, "events.k8s.io/v1")
}

/// Rewrite an events.k8s.io field selector into the core field labels.
pub fn core_field_selector(sel: &str) -> Result<String, String> {
    sel.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let op_at = part.find(['=', '!']).unwrap_or(part.len());
            let (label, rest) = part.split_at(op_at);
            let label = label.trim();
            let mapped = if let Some(sub) = label.strip_prefix("regarding.") {
                format!("involvedObject.{sub}")
            } else {
                match label {
                    "reportingController" => "reportingComponent".to_string(),
                    "metadata.name" | "metadata.namespace" | "reason" | "type" => label.to_string(),
                    other => return Err(format!("field label not supported: {other}")),
                }
            };
            Ok(format!("{mapped}{rest}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"name": "x"}, "note": "n", "reason": "R", "series": {"count": 2}, "reportingController": "c"});
        let core = to_core(&ev);
        assert_eq!(core["involvedObject"]["name"], "x");
        assert_eq!(core["message"], "n");
        assert_eq!(core["reportingComponent"], "c");
        assert_eq!(to_events_v1(&core), ev);
        assert_eq!(
            core_field_selector("regarding.name=x,reason!=y").unwrap(),
            "involvedObject.name=x,reason!=y"
        );
        assert!(core_field_selector("note=x").is_err());
    }
}
