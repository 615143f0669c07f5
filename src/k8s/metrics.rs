//! Controller metrics: reconcile duration and errors (labels bounded: a static error reason,
//! never a binding name).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconciles: Counter,
    pub verifications: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            reconcile_errors: Family::default(),
            reconciles: Counter::default(),
            verifications: Family::default(),
        }
    }
}

impl ControllerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "acrpull_reconcile_duration",
            "Time one reconcile pass took",
            Unit::Seconds,
            self.reconcile_duration.clone(),
        );
        registry.register(
            "acrpull_reconcile_errors",
            "Reconcile passes that ended in an error, by static reason",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "acrpull_credential_verifications",
            "Checks of new credentials at the registry token endpoint, by outcome",
            self.verifications.clone(),
        );
        registry.register(
            "acrpull_reconciles",
            "Reconcile passes",
            self.reconciles.clone(),
        );
    }

    /// One post-mint credential check: verified, scope_not_granted, rejected, unavailable
    /// or skipped.
    pub fn verification(&self, outcome: &'static str) {
        self.verifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn observe_reconcile(&self, took: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { reason })
                .inc();
        }
    }
}
