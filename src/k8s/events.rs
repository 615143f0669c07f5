//! Event aggregation: a failing binding must not flood the namespace with events. A failure
//! event is published when the message changes, and otherwise only on the 1st, 2nd, 4th, 8th …
//! consecutive failure. Each published failure is its own Event (no series patching, so no
//! cache of sent Events in the controller; see `k8s::controller::publish_event`).

/// Whether the `failures`-th consecutive failure with `new_error` deserves an event, given the
/// error already in status.
pub fn should_emit_failure(failures: u32, previous_error: &str, new_error: &str) -> bool {
    previous_error != new_error || failures.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_thinned_out() {
        let emitted: Vec<u32> = (1..=100)
            .filter(|n| should_emit_failure(*n, "same", "same"))
            .collect();
        assert_eq!(emitted, [1, 2, 4, 8, 16, 32, 64]);
        assert!(should_emit_failure(7, "old", "new"));
        assert!(!should_emit_failure(0, "same", "same"));
    }
}
