//! Server-side printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), as the real
//! server does it, so `kubectl get` shows the same columns against the stand-in:
//! - built-in types with the columns and cells of the real printers
//!   (`pkg/printers/internalversion`): Events (LAST SEEN, TYPE, REASON, OBJECT, MESSAGE, and
//!   the wide ones), Namespaces, Secrets, ServiceAccounts, ConfigMaps, Leases, Role and
//!   ClusterRole bindings, Deployments, Services, PodDisruptionBudgets, NetworkPolicies;
//! - custom resources with their CRD's `additionalPrinterColumns` (or AGE);
//! - everything else with the default convertor (NAME, CREATED AT).
//!
//! Ages are `duration.HumanDuration(now - t)`: `<invalid>` for times more than a second in
//! the future, `0s` within a second, then `45s`, `3m20s`, `2h5m`, `3d4h`, `2y10d`... The server
//! computes every cell, the wide ones (priority 1) included; kubectl shows those with `-o wide`.

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|p| {
        let p = p.replace(' ', "");
        p.contains("as=Table") && p.contains("g=meta.k8s.io")
    })
}

/// Evaluate the subset of JSONPath printer columns use: `.a.b`, `.a[0]`,
/// `.a[?(@.type=="Ready")].status`.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    rest = rest.trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inner = &after[..end];
            rest = after[end + 1..].trim_start_matches('.');
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, v) = filter.split_once("==")?;
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|e| e.get(k.trim()).and_then(Value::as_str) == Some(v))?;
            } else {
                cur = cur.get(inner.parse::<usize>().ok()?)?;
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?;
        rest = rest[end..].trim_start_matches('.');
    }
    Some(cur)
}

/// `duration.HumanDuration` of apimachinery, for a duration in milliseconds (negative: in
/// the future).
pub fn human_duration(millis: i64) -> String {
    // Go truncates toward zero: -1.9 s is -1 s, "almost now".
    let seconds = millis / 1000;
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The age of an RFC 3339 timestamp as the printers show it (`<unknown>` when absent).
pub fn age(ts: &Value, now: jiff::Timestamp) -> Value {
    match ts.as_str().filter(|s| !s.is_empty()) {
        None => json!("<unknown>"),
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => json!(human_duration(now.as_millisecond() - t.as_millisecond())),
            Err(_) => json!("<invalid>"),
        },
    }
}

fn col(name: &str, ty: &str, priority: u8, description: &str) -> Value {
    let mut c = json!({"name": name, "type": ty, "format": "", "description": description, "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.";

fn name_col() -> Value {
    col("Name", "string", 0, NAME_DOC)
}

fn age_col() -> Value {
    col("Age", "string", 0, CREATED_DOC)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn count(v: &Value) -> i64 {
    v.as_object().map(|m| m.len() as i64).unwrap_or(0)
        + v.as_array().map(|a| a.len() as i64).unwrap_or(0)
}

/// `labels.FormatLabels`: `k=v,k2=v2` sorted, or `<none>`.
fn format_labels(m: &Value) -> String {
    let mut pairs: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    if pairs.is_empty() {
        return "<none>".into();
    }
    pairs.sort();
    pairs.join(",")
}

/// `metav1.LabelSelectorAsSelector(..).String()`; `<none>` for an empty selector when
/// `none_if_empty` (`FormatLabelSelector`).
fn format_selector(sel: &Value, none_if_empty: bool) -> String {
    let mut reqs: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = s(&e["key"]);
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort();
        reqs.push(match s(&e["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<invalid>".into(),
        });
    }
    reqs.sort();
    if reqs.is_empty() && none_if_empty {
        return "<none>".into();
    }
    reqs.join(",")
}

fn int_or_string(v: &Value) -> String {
    match v {
        Value::Null => "N/A".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

fn containers(spec: &Value) -> (String, String) {
    let cs = spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

fn subjects(v: &Value) -> (String, String, String) {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for sub in v.as_array().into_iter().flatten() {
        match s(&sub["kind"]) {
            "User" => users.push(s(&sub["name"]).to_string()),
            "Group" => groups.push(s(&sub["name"]).to_string()),
            "ServiceAccount" => sas.push(format!("{}/{}", s(&sub["namespace"]), s(&sub["name"]))),
            _ => {}
        }
    }
    (users.join(", "), groups.join(", "), sas.join(", "))
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
}

fn event_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut first = age(&o["firstTimestamp"], now);
    if s(&o["firstTimestamp"]).is_empty() {
        first = age(&o["eventTime"], now);
    }
    let mut last = age(&o["lastTimestamp"], now);
    if s(&o["lastTimestamp"]).is_empty() {
        last = first.clone();
    }
    let mut n = o["count"].as_i64().unwrap_or(0);
    if o["series"].is_object() {
        last = age(&o["series"]["lastObservedTime"], now);
        n = o["series"]["count"].as_i64().unwrap_or(0);
    } else if n == 0 {
        n = 1;
    }
    let io = &o["involvedObject"];
    let kind = s(&io["kind"]).to_lowercase();
    let target = if s(&io["name"]).is_empty() {
        kind
    } else {
        format!("{kind}/{}", s(&io["name"]))
    };
    let component = first_non_empty(s(&o["source"]["component"]), s(&o["reportingComponent"]));
    let instance = first_non_empty(s(&o["source"]["host"]), s(&o["reportingInstance"]));
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        last,
        json!(s(&o["type"])),
        json!(s(&o["reason"])),
        json!(target),
        json!(s(&io["fieldPath"])),
        json!(source),
        json!(s(&o["message"]).trim()),
        first,
        json!(n),
        o["metadata"]["name"].clone(),
    ]
}

fn service_row(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let spec = &o["spec"];
    let ty = first_non_empty(s(&spec["type"]), "ClusterIP");
    let cluster_ip = first_non_empty(s(&spec["clusterIP"]), "<none>");
    let external: Vec<String> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let external_ip = match ty {
        "ExternalName" => s(&spec["externalName"]).to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| first_non_empty(s(&i["ip"]), s(&i["hostname"])).to_string())
                .collect();
            ips.extend(external.iter().cloned());
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ if !external.is_empty() => external.join(","),
        _ => "<none>".into(),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = first_non_empty(s(&p["protocol"]), "TCP");
            match p["nodePort"].as_i64().filter(|n| *n > 0) {
                Some(np) if ty == "NodePort" || ty == "LoadBalancer" => {
                    format!("{}:{np}/{proto}", p["port"])
                }
                _ => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    };
    vec![
        json!(ty),
        json!(cluster_ip),
        json!(external_ip),
        json!(ports),
        age(&o["metadata"]["creationTimestamp"], now),
        json!(format_labels(&spec["selector"])),
    ]
}

/// Column definitions and the cells after the name for a built-in type with a printer.
type Printer = (Vec<Value>, fn(&Value, jiff::Timestamp) -> Vec<Value>);

fn printer(rt: &ResourceType) -> Option<Printer> {
    Some(match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "events") | ("events.k8s.io", "events") => (
            vec![
                col("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
                col("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
                col("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
                col("Object", "string", 0, "The object that this event is about."),
                col("Subobject", "string", 1, "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]."),
                col("Source", "string", 1, "The component reporting this event. Should be a short machine understandable string."),
                col("Message", "string", 0, "A human-readable description of the status of this operation."),
                col("First Seen", "string", 1, "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
                col("Count", "string", 1, "The number of times this event has occurred."),
                col("Name", "string", 1, NAME_DOC),
            ],
            |o, now| event_row(o, now),
        ),
        ("", "namespaces") => (
            vec![name_col(), col("Status", "string", 0, "The status of the namespace"), age_col()],
            |o, now| vec![o["metadata"]["name"].clone(), json!(s(&o["status"]["phase"])), age(&o["metadata"]["creationTimestamp"], now)],
        ),
        ("", "secrets") => (
            vec![name_col(), col("Type", "string", 0, "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types"), col("Data", "string", 0, "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4"), age_col()],
            |o, now| vec![o["metadata"]["name"].clone(), json!(s(&o["type"])), json!(count(&o["data"])), age(&o["metadata"]["creationTimestamp"], now)],
        ),
        ("", "serviceaccounts") => (
            vec![name_col(), col("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), age_col()],
            |o, now| vec![o["metadata"]["name"].clone(), json!(count(&o["secrets"])), age(&o["metadata"]["creationTimestamp"], now)],
        ),
        ("", "configmaps") => (
            vec![name_col(), col("Data", "string", 0, "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'."), age_col()],
            |o, now| vec![o["metadata"]["name"].clone(), json!(count(&o["data"]) + count(&o["binaryData"])), age(&o["metadata"]["creationTimestamp"], now)],
        ),
        ("", "services") => (
            vec![
                name_col(),
                col("Type", "string", 0, "type determines how the Service is exposed."),
                col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
                col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
                col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
                age_col(),
                col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
            ],
            |o, now| {
                let mut cells = vec![o["metadata"]["name"].clone()];
                cells.extend(service_row(o, now));
                cells
            },
        ),
        ("coordination.k8s.io", "leases") => (
            vec![name_col(), col("Holder", "string", 0, "holderIdentity contains the identity of the holder of a current lease."), age_col()],
            |o, now| vec![o["metadata"]["name"].clone(), json!(s(&o["spec"]["holderIdentity"])), age(&o["metadata"]["creationTimestamp"], now)],
        ),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => (
            vec![
                name_col(),
                col("Role", "string", 0, "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace."),
                age_col(),
                col("Users", "string", 1, "Users in the roleBinding"),
                col("Groups", "string", 1, "Groups in the roleBinding"),
                col("ServiceAccounts", "string", 1, "ServiceAccounts in the roleBinding"),
            ],
            |o, now| {
                let (u, g, sa) = subjects(&o["subjects"]);
                vec![
                    o["metadata"]["name"].clone(),
                    json!(format!("{}/{}", s(&o["roleRef"]["kind"]), s(&o["roleRef"]["name"]))),
                    age(&o["metadata"]["creationTimestamp"], now),
                    json!(u),
                    json!(g),
                    json!(sa),
                ]
            },
        ),
        ("apps", "deployments") => (
            vec![
                name_col(),
                col("Ready", "string", 0, "Number of the pod with ready state"),
                col("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
                col("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
                age_col(),
                col("Containers", "string", 1, "Names of each container in the template."),
                col("Images", "string", 1, "Images referenced by each container in the template."),
                col("Selector", "string", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
            ],
            |o, now| {
                let st = &o["status"];
                let desired = o["spec"]["replicas"].as_i64().unwrap_or(1);
                let (names, images) = containers(&o["spec"]["template"]["spec"]);
                vec![
                    o["metadata"]["name"].clone(),
                    json!(format!("{}/{desired}", st["readyReplicas"].as_i64().unwrap_or(0))),
                    json!(st["updatedReplicas"].as_i64().unwrap_or(0)),
                    json!(st["availableReplicas"].as_i64().unwrap_or(0)),
                    age(&o["metadata"]["creationTimestamp"], now),
                    json!(names),
                    json!(images),
                    json!(format_selector(&o["spec"]["selector"], false)),
                ]
            },
        ),
        ("policy", "poddisruptionbudgets") => (
            vec![
                name_col(),
                col("Min Available", "string", 0, "The minimum number of pods that must be available."),
                col("Max Unavailable", "string", 0, "The maximum number of pods that may be unavailable."),
                col("Allowed Disruptions", "integer", 0, "Calculated number of pods that may be disrupted at this time."),
                age_col(),
            ],
            |o, now| vec![
                o["metadata"]["name"].clone(),
                json!(int_or_string(&o["spec"]["minAvailable"])),
                json!(int_or_string(&o["spec"]["maxUnavailable"])),
                json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
                age(&o["metadata"]["creationTimestamp"], now),
            ],
        ),
        ("networking.k8s.io", "networkpolicies") => (
            vec![name_col(), col("Pod-Selector", "string", 0, "Selects the pods to which this NetworkPolicy object applies."), age_col()],
            |o, now| vec![o["metadata"]["name"].clone(), json!(format_selector(&o["spec"]["podSelector"], true)), age(&o["metadata"]["creationTimestamp"], now)],
        ),
        _ => return None,
    })
}

fn crd_cell(kind: &str, v: Option<&Value>, now: jiff::Timestamp) -> Value {
    match (kind, v) {
        (_, None) | (_, Some(Value::Null)) => Value::Null,
        ("date", Some(Value::String(t))) => match t.parse::<jiff::Timestamp>() {
            Ok(t) => json!(human_duration(now.as_millisecond() - t.as_millisecond())),
            Err(_) => json!("<invalid>"),
        },
        ("string", Some(Value::String(s))) => json!(s),
        ("string", Some(other)) => json!(other.to_string()),
        ("integer", Some(x)) => x.as_f64().map(|f| json!(f as i64)).unwrap_or(Value::Null),
        ("number", Some(x)) => x.as_f64().map(|f| json!(f)).unwrap_or(Value::Null),
        ("boolean", Some(Value::Bool(b))) => json!(b),
        _ => Value::Null,
    }
}

/// The Table for an object or a list, as of `now`. `include_object` is the request's
/// `includeObject` (`None`, `Metadata` — the default — or `Object`).
pub fn table(
    rt: &ResourceType,
    version: &str,
    list: &Value,
    include_object: &str,
    now: jiff::Timestamp,
) -> Option<Value> {
    if rt.review {
        return None;
    }
    let items: Vec<Value> = match list.get("items") {
        Some(Value::Array(a)) => a.clone(),
        _ => vec![list.clone()],
    };
    let (defs, rows): (Vec<Value>, Vec<Vec<Value>>) = if rt.custom {
        let cols: Vec<Value> = match rt.printer_columns.get(version).and_then(Value::as_array) {
            Some(c) if !c.is_empty() => c.clone(),
            _ => vec![
                json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": CREATED_DOC}),
            ],
        };
        let mut defs = vec![name_col()];
        for c in &cols {
            defs.push(json!({
                "name": c["name"],
                "type": c["type"],
                "format": c.get("format").cloned().unwrap_or(json!("")),
                "description": c.get("description").cloned().unwrap_or(json!("")),
                "priority": c.get("priority").cloned().unwrap_or(json!(0)),
            }));
        }
        let rows = items
            .iter()
            .map(|o| {
                let mut cells = vec![o["metadata"]["name"].clone()];
                for c in &cols {
                    let path = c["jsonPath"].as_str().unwrap_or_default();
                    cells.push(crd_cell(
                        c["type"].as_str().unwrap_or("string"),
                        json_path(o, path),
                        now,
                    ));
                }
                cells
            })
            .collect();
        (defs, rows)
    } else if let Some((defs, row)) = printer(rt) {
        (defs, items.iter().map(|o| row(o, now)).collect())
    } else {
        // The default table convertor: the name and the creation time, RFC 3339.
        let defs = vec![name_col(), col("Created At", "date", 0, CREATED_DOC)];
        let rows = items
            .iter()
            .map(|o| {
                vec![
                    o["metadata"]["name"].clone(),
                    o["metadata"]["creationTimestamp"].clone(),
                ]
            })
            .collect();
        (defs, rows)
    };
    let rows: Vec<Value> = items
        .iter()
        .zip(rows)
        .map(|(o, cells)| {
            let mut row = json!({"cells": cells});
            match include_object {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            }
            row
        })
        .collect();
    let mut meta = json!({});
    for k in ["resourceVersion", "continue", "remainingItemCount"] {
        if let Some(v) = list["metadata"].get(k) {
            meta[k] = v.clone();
        }
    }
    Some(
        json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn paths() {
        let o = json!({"spec": {"a": {"b": 1}}, "status": {"conditions": [{"type": "X", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&o, ".spec.a.b"), Some(&json!(1)));
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(
            json_path(&o, ".status.conditions[0].type"),
            Some(&json!("X"))
        );
        assert_eq!(json_path(&o, ".spec.missing"), None);
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn human_durations_match_apimachinery() {
        let s = 1000;
        for (millis, want) in [
            (-2500, "<invalid>"),
            (-1999, "0s"),
            (-500, "0s"),
            (0, "0s"),
            (119 * s, "119s"),
            (120 * s, "2m"),
            (200 * s, "3m20s"),
            (600 * s, "10m"),
            (179 * 60 * s, "179m"),
            (3 * 3600 * s, "3h"),
            ((7 * 3600 + 59 * 60) * s, "7h59m"),
            (47 * 3600 * s, "47h"),
            ((3 * 24 + 4) * 3600 * s, "3d4h"),
            (8 * 24 * 3600 * s, "8d"),
            ((2 * 365 + 10) * 24 * 3600 * s, "2y10d"),
            (9 * 365 * 24 * 3600 * s, "9y"),
        ] {
            assert_eq!(human_duration(millis), want, "{millis}");
        }
    }

    #[test]
    fn event_cells() {
        let reg = Registry::new();
        let rt = reg.by_path("", "v1", "events").unwrap();
        let now: jiff::Timestamp = "2025-01-01T00:10:00Z".parse().unwrap();
        let ev = json!({"metadata": {"name": "e1", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "involvedObject": {"kind": "AcrPullBinding", "name": "b1", "fieldPath": ""},
            "reason": "TokenIssued", "message": " done \n", "type": "Normal",
            "firstTimestamp": "2025-01-01T00:00:00Z", "lastTimestamp": "2025-01-01T00:09:00Z",
            "count": 3, "source": {"component": "acrpull"}});
        let t = table(
            &rt,
            "v1",
            &json!({"items": [ev], "metadata": {"resourceVersion": "5"}}),
            "Metadata",
            now,
        )
        .unwrap();
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "60s",
                "Normal",
                "TokenIssued",
                "acrpullbinding/b1",
                "",
                "acrpull",
                "done",
                "10m",
                3,
                "e1"
            ])
        );
        // A series, a future time, no lastTimestamp.
        let ev2 = json!({"metadata": {"name": "e2"}, "involvedObject": {"kind": "Pod"},
            "eventTime": "2025-01-01T00:20:00.000000Z", "series": {"count": 7, "lastObservedTime": "2025-01-01T00:09:59.000000Z"},
            "reportingComponent": "ctl", "reportingInstance": "node-1"});
        let t = table(&rt, "v1", &ev2, "None", now).unwrap();
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "1s",
                "",
                "",
                "pod",
                "",
                "ctl, node-1",
                "",
                "<invalid>",
                7,
                "e2"
            ])
        );
        assert!(t["rows"][0].get("object").is_none());
    }

    #[test]
    fn other_printers() {
        let reg = Registry::new();
        let now: jiff::Timestamp = "2025-01-01T01:00:00Z".parse().unwrap();
        let ct = "2025-01-01T00:00:00Z";
        let cells = |plural: &str, group: &str, o: Value| {
            let rt = reg.by_key(group, plural).unwrap();
            table(&rt, "v1", &o, "Metadata", now).unwrap()["rows"][0]["cells"].clone()
        };
        assert_eq!(
            cells(
                "secrets",
                "",
                json!({"metadata": {"name": "s", "creationTimestamp": ct}, "type": "Opaque", "data": {"a": "", "b": ""}})
            ),
            json!(["s", "Opaque", 2, "60m"])
        );
        assert_eq!(
            cells(
                "serviceaccounts",
                "",
                json!({"metadata": {"name": "default", "creationTimestamp": ct}})
            ),
            json!(["default", 0, "60m"])
        );
        assert_eq!(
            cells(
                "namespaces",
                "",
                json!({"metadata": {"name": "x", "creationTimestamp": ct}, "status": {"phase": "Active"}})
            ),
            json!(["x", "Active", "60m"])
        );
        assert_eq!(
            cells(
                "services",
                "",
                json!({"metadata": {"name": "m", "creationTimestamp": ct}, "spec": {"ports": [{"port": 8080}], "selector": {"b": "2", "a": "1"}}})
            ),
            json!([
                "m",
                "ClusterIP",
                "<none>",
                "<none>",
                "8080/TCP",
                "60m",
                "a=1,b=2"
            ])
        );
        assert_eq!(
            cells(
                "clusterrolebindings",
                "rbac.authorization.k8s.io",
                json!({"metadata": {"name": "b", "creationTimestamp": ct},
                "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}, {"kind": "Group", "name": "g"}]})
            ),
            json!(["b", "ClusterRole/view", "60m", "", "g", "ns/sa"])
        );
        // No printer: the default convertor.
        assert_eq!(
            cells(
                "clusterroles",
                "rbac.authorization.k8s.io",
                json!({"metadata": {"name": "view", "creationTimestamp": ct}})
            ),
            json!(["view", ct])
        );
        assert_eq!(
            cells(
                "poddisruptionbudgets",
                "policy",
                json!({"metadata": {"name": "p", "creationTimestamp": ct}, "spec": {"minAvailable": 1}})
            ),
            json!(["p", "1", "N/A", 0, "60m"])
        );
    }
}
