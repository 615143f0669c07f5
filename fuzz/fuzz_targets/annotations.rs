//! Fuzzes the pull Secret's annotation parsing (`acrpull::k8s::binding::parse_time`) on an
//! annotation map built from the input (`key=value` lines). Invariant: whatever parses,
//! re-formats (`rfc3339`) to a string that parses again to the same second (this found that
//! RFC 9557 extended years parsed but could not be written back; `parse_time` now refuses them).
#![no_main]

use std::collections::BTreeMap;

use acrpull::k8s::binding::{parse_time, rfc3339};
use acrpull::state::names::{EXPIRY_ANNOTATION, INPUTS_ANNOTATION, REFRESH_ANNOTATION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let keys = [EXPIRY_ANNOTATION, REFRESH_ANNOTATION, INPUTS_ANNOTATION];
    let mut annotations = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        match line.split_once('=') {
            Some((k, v)) => annotations.insert(k.to_string(), v.to_string()),
            // A bare line is the value of one of the real keys.
            None => annotations.insert(keys[i % keys.len()].to_string(), line.to_string()),
        };
    }
    for key in keys.iter().copied().chain(annotations.keys().map(String::as_str)) {
        if let Some(t) = parse_time(&annotations, key) {
            let formatted = rfc3339(t);
            let mut again = BTreeMap::new();
            again.insert(key.to_string(), formatted.clone());
            let t2 = parse_time(&again, key)
                .unwrap_or_else(|| panic!("rfc3339 output {formatted:?} does not parse"));
            assert!((t2.as_second() - t.as_second()).abs() <= 1, "{t} vs {t2}");
        }
    }
});
