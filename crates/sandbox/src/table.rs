//! The live progress table: every binding of both API versions, read straight from the kube
//! stand-in's store, rendered compactly. The sandbox reprints it only when its text changes.

use serde_json::Value;

use crate::setup::{Expect, EXAMPLES, NAMESPACE, V1, V2};

/// Longest error shown in the live table; the end of the run prints them whole
/// ([`full_errors`]).
const ERROR_WIDTH: usize = 70;

/// One binding as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub version: &'static str,
    pub phase: String,
    pub ready: bool,
    pub expiry: String,
    /// As shown: one line, cut at [`ERROR_WIDTH`].
    pub error: String,
    /// As the binding's status has it.
    pub full_error: String,
}

fn row(version: &'static str, b: &Value) -> Row {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let status = &b["status"];
    let ready = status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let phase = s(&status["phase"]);
    Row {
        namespace: s(&b["metadata"]["namespace"]),
        name: s(&b["metadata"]["name"]),
        version,
        phase: if phase.is_empty() { "-".into() } else { phase },
        ready,
        expiry: status["tokenExpirationTime"]
            .as_str()
            .map(short_time)
            .unwrap_or_else(|| "-".into()),
        error: truncate(status["error"].as_str().unwrap_or("")),
        full_error: status["error"].as_str().unwrap_or("").to_string(),
    }
}

/// `2025-01-02T03:04:05Z` → `03:04:05Z`: the date is today's in a sandbox.
fn short_time(ts: &str) -> String {
    match ts.split_once('T') {
        Some((_, time)) => time.to_string(),
        None => ts.to_string(),
    }
}

fn truncate(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= ERROR_WIDTH {
        return one_line;
    }
    let cut: String = one_line.chars().take(ERROR_WIDTH - 1).collect();
    format!("{cut}…")
}

/// Every binding in the store, v1beta2 first, then by namespace and name.
pub fn rows(kube: &kube_standin::Handle) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for (av, short) in [(V2, "v1beta2"), (V1, "v1beta1")] {
        let mut rows: Vec<Row> = kube
            .list(av, "AcrPullBinding", None)
            .iter()
            .map(|b| row(short, b))
            .collect();
        rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.extend(rows);
    }
    out
}

/// The table text (no trailing newline).
pub fn render(rows: &[Row]) -> String {
    let header = ["NAMESPACE", "NAME", "API", "PHASE", "EXPIRES", "ERROR"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.namespace.clone(),
                r.name.clone(),
                r.version.to_string(),
                r.phase.clone(),
                r.expiry.clone(),
                r.error.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: &[String; 6]| -> String {
        let mut s = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i == c.len() - 1 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(&header.map(String::from))];
    out.extend(cells.iter().map(line));
    if rows.is_empty() {
        out.push("(no bindings yet)".into());
    }
    out.join("\n")
}

/// The errors the table cut short, whole (`None` when nothing was cut).
pub fn full_errors(rows: &[Row]) -> Option<String> {
    let cut: Vec<String> = rows
        .iter()
        .filter(|r| r.full_error != r.error)
        .map(|r| {
            format!(
                "  {}/{} ({}): {}",
                r.namespace, r.name, r.version, r.full_error
            )
        })
        .collect();
    if cut.is_empty() {
        return None;
    }
    Some(format!("Errors in full:\n{}", cut.join("\n")))
}

/// Whether every example reached its expected state (valid ones Ready, the invalid one
/// Failed). Bindings the user added by hand do not count.
pub fn examples_settled(rows: &[Row]) -> bool {
    EXAMPLES.iter().all(|e| {
        let short = if e.api_version == V1 {
            "v1beta1"
        } else {
            "v1beta2"
        };
        rows.iter().any(|r| {
            r.namespace == NAMESPACE
                && r.name == e.name
                && r.version == short
                && match e.expect {
                    Expect::Ready => r.ready,
                    Expect::Failed => r.phase == "Failed",
                }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(name: &str, phase: &str, ready: bool, error: &str) -> Value {
        json!({"metadata": {"namespace": "demo", "name": name},
               "status": {"phase": phase, "error": error,
                          "tokenExpirationTime": "2030-01-02T03:04:05Z",
                          "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    #[test]
    fn renders_aligned_and_truncated() {
        let long = "x".repeat(200);
        let rows = vec![
            row("v1beta2", &binding("app-mi", "Ready", true, "")),
            row("v1beta2", &binding("lookalike", "Failed", false, &long)),
        ];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE  NAME       API      PHASE   EXPIRES    ERROR"));
        assert!(lines[1].contains("app-mi     v1beta2  Ready   03:04:05Z"));
        assert!(lines[2].ends_with('…'));
        assert!(lines[2].chars().count() < 140);
        assert_eq!(render(&[]).lines().nth(1), Some("(no bindings yet)"));
        // What the table cut, the end of the run shows whole; short errors are not repeated.
        let full = full_errors(&rows).unwrap();
        assert_eq!(
            full,
            format!("Errors in full:\n  demo/lookalike (v1beta2): {long}")
        );
        assert_eq!(full_errors(&rows[..1]), None);
        let short = vec![row("v1beta2", &binding("x", "Failed", false, "short"))];
        assert_eq!(full_errors(&short), None);
    }

    #[test]
    fn settled_needs_every_example_in_its_expected_state() {
        let mut rows = vec![
            row("v1beta2", &binding("app-mi", "Ready", true, "")),
            row("v1beta2", &binding("app-wi", "Refreshing", true, "")),
            row("v1beta1", &binding("second-legacy", "Ready", true, "")),
            row("v1beta2", &binding("lookalike", "Pending", false, "")),
        ];
        assert!(!examples_settled(&rows));
        rows[3] = row("v1beta2", &binding("lookalike", "Failed", false, "bad"));
        assert!(examples_settled(&rows));
        rows[2] = row("v1beta2", &binding("second-legacy", "Ready", true, ""));
        assert!(!examples_settled(&rows), "the version counts");
    }
}
