//! Controller metrics: reconcile duration and errors (labels bounded: a static error reason,
//! never a binding name), and the controller-runtime series (`controller_runtime_*`) that
//! dashboards and alerts built for the old Go controller query.
//!
//! The compatibility series carry the old controller's names, types, labels and buckets, with
//! its controller names as the `controller` label (see [`controller_name`]). They count only
//! the passes a replica makes while it leads: a controller-runtime standby runs no reconciler
//! at all, while acrpull's standby passes return at once and would otherwise double every
//! fleet-wide rate. `workqueue_*` is not exported: kube-runtime's scheduler does not expose
//! its queue, and a made-up depth is worse than none (README "Metrics" says what to use).

use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::state::binding::Version;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

/// `controller_runtime_reconcile_time_seconds` buckets, as controller-runtime defines them.
const CONTROLLER_RUNTIME_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0,
];

/// controller-runtime's `result` label values.
const RESULTS: [&str; 4] = ["success", "error", "requeue", "requeue_after"];

/// The name the old controller registered each version's reconciler under (`Named(...)` in
/// msi-acrpull): the `controller` label of the compatibility series. Its third controller,
/// `legacy-token-cleanup`, has no counterpart: acrpull's v1beta1 reconciler does that job.
pub fn controller_name(version: Version) -> &'static str {
    match version {
        Version::V1beta1 => "acr-pull-binding",
        Version::V1beta2 => "acr-pull-binding-v1beta2",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: &'static str,
    result: &'static str,
}

fn controller_runtime_histogram() -> Histogram {
    Histogram::new(CONTROLLER_RUNTIME_BUCKETS)
}

/// The controller-runtime series.
#[derive(Clone, Debug)]
struct Compat {
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabel, Counter>,
    reconcile_time: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    max_concurrent: Family<ControllerLabel, Gauge>,
    active_workers: Family<ControllerLabel, Gauge>,
}

impl Compat {
    /// Every series at zero from the start, as controller-runtime initialises them.
    fn new() -> Self {
        let compat = Self {
            reconcile_total: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_time: Family::new_with_constructor(controller_runtime_histogram),
            max_concurrent: Family::default(),
            active_workers: Family::default(),
        };
        for version in [Version::V1beta1, Version::V1beta2] {
            let controller = controller_name(version);
            for result in RESULTS {
                let _ = compat
                    .reconcile_total
                    .get_or_create(&ResultLabels { controller, result });
            }
            let label = ControllerLabel { controller };
            let _ = compat.reconcile_errors.get_or_create(&label);
            let _ = compat.reconcile_time.get_or_create(&label);
            let _ = compat.max_concurrent.get_or_create(&label);
            let _ = compat.active_workers.get_or_create(&label);
        }
        compat
    }
}

#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    pub reconcile_duration: Histogram,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconciles: Counter,
    pub verifications: Family<OutcomeLabels, Counter>,
    /// Bindings newly refused or flagged by the operator's policy (`acrpull_policy_refusals`).
    pub refusals: Family<RefusalLabels, Counter>,
    /// Credentials taken away by policy (`acrpull_credential_revocations`): one per deleted Secret.
    pub revocations: Counter,
    compat: Compat,
    /// Leadership; `None` counts every pass as the leader's (leader election off).
    leader: Option<watch::Receiver<bool>>,
}

/// `mode` is the tenancy mode (`off`, `audit`, `enforce`); `reason` the static refusal reason
/// (`NotPermitted`, `ActionNotAllowed`, `AuthorityNotAllowed`). `audit` + `NotPermitted` counts
/// bindings that were served but flagged.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub mode: &'static str,
    pub reason: &'static str,
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
            refusals: Family::default(),
            revocations: Counter::default(),
            compat: Compat::new(),
            leader: None,
        }
    }
}

impl ControllerMetrics {
    /// Count the controller-runtime series only while `leader` says this replica leads.
    pub fn with_leader(mut self, leader: watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// `controller_runtime_max_concurrent_reconciles`: `--concurrency`, which kube-runtime
    /// applies to each of the two controllers.
    pub fn with_max_concurrent(self, concurrency: u16) -> Self {
        for version in [Version::V1beta1, Version::V1beta2] {
            self.compat
                .max_concurrent
                .get_or_create(&ControllerLabel {
                    controller: controller_name(version),
                })
                .set(i64::from(concurrency));
        }
        self
    }

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
            "Checks of new credentials (the access token's own grant, or the registry token endpoint), by outcome",
            self.verifications.clone(),
        );
        registry.register(
            "acrpull_policy_refusals",
            "Bindings newly refused (or, in audit mode, flagged) by the operator's allow-lists and AcrPullPolicies, by tenancy mode and reason",
            self.refusals.clone(),
        );
        registry.register(
            "acrpull_credential_revocations",
            "Pull secrets deleted because the operator's policy no longer permits their binding",
            self.revocations.clone(),
        );
        registry.register(
            "acrpull_reconciles",
            "Reconcile passes",
            self.reconciles.clone(),
        );
        let compat = &self.compat;
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller (controller-runtime compatible; passes while leading)",
            compat.reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller (controller-runtime compatible; passes while leading)",
            compat.reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "controller_runtime_reconcile_time",
            "Length of time per reconciliation per controller (controller-runtime compatible; passes while leading)",
            Unit::Seconds,
            compat.reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller (controller-runtime compatible)",
            compat.max_concurrent.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller (controller-runtime compatible; passes while leading)",
            compat.active_workers.clone(),
        );
    }

    /// One post-mint credential check: verified (asked the registry), from_token (read the
    /// grant from the access token the registry issued), cached, scope_not_granted, rejected,
    /// unavailable or skipped.
    pub fn verification(&self, outcome: &'static str) {
        self.verifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A binding newly refused (or flagged in audit mode).
    pub fn refusal(&self, mode: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { mode, reason })
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

    /// A pass of `version`'s controller starts: it holds a worker until it is finished or
    /// dropped.
    pub fn reconcile_started(&self, version: Version) -> ReconcilePass<'_> {
        let controller = controller_name(version);
        let compat = self.leader.as_ref().is_none_or(|l| *l.borrow());
        if compat {
            self.compat
                .active_workers
                .get_or_create(&ControllerLabel { controller })
                .inc();
        }
        ReconcilePass {
            metrics: self,
            controller,
            started: Instant::now(),
            compat,
        }
    }
}

/// One reconcile pass being timed. [`ReconcilePass::finish`] records it; dropped unfinished
/// (the pass was cancelled at shutdown) it only gives its worker back.
#[must_use = "a pass is recorded by finish()"]
#[derive(Debug)]
pub struct ReconcilePass<'a> {
    metrics: &'a ControllerMetrics,
    controller: &'static str,
    started: Instant,
    /// Counted in the controller-runtime series: this replica led when the pass started.
    compat: bool,
}

impl ReconcilePass<'_> {
    /// The pass returned `outcome`: its action, or its error's static reason.
    pub fn finish(self, outcome: Result<&Action, &'static str>) {
        let took = self.started.elapsed();
        self.metrics.observe_reconcile(took, outcome.err());
        if !self.compat {
            return;
        }
        let compat = &self.metrics.compat;
        let controller = self.controller;
        // controller-runtime: an error, else a requeue after a delay, else success. acrpull
        // never asks for an immediate rate-limited requeue, so `requeue` stays at zero.
        let result = match outcome {
            Err(_) => "error",
            Ok(action) if *action == Action::await_change() => "success",
            Ok(_) => "requeue_after",
        };
        compat
            .reconcile_total
            .get_or_create(&ResultLabels { controller, result })
            .inc();
        if outcome.is_err() {
            compat
                .reconcile_errors
                .get_or_create(&ControllerLabel { controller })
                .inc();
        }
        compat
            .reconcile_time
            .get_or_create(&ControllerLabel { controller })
            .observe(took.as_secs_f64());
    }
}

impl Drop for ReconcilePass<'_> {
    fn drop(&mut self) {
        if self.compat {
            self.metrics
                .compat
                .active_workers
                .get_or_create(&ControllerLabel {
                    controller: self.controller,
                })
                .dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(metrics: &ControllerMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    const V2: &str = "acr-pull-binding-v1beta2";

    #[test]
    fn compatibility_series_exist_at_zero_with_controller_runtime_names_and_buckets() {
        let text = scrape(&ControllerMetrics::default().with_max_concurrent(16));
        for controller in ["acr-pull-binding", V2] {
            for result in RESULTS {
                let s = format!(
                    r#"controller_runtime_reconcile_total{{controller="{controller}",result="{result}"}}"#
                );
                assert_eq!(value(&text, &s), 0.0);
            }
            for s in [
                format!(
                    r#"controller_runtime_reconcile_errors_total{{controller="{controller}"}}"#
                ),
                format!(
                    r#"controller_runtime_reconcile_time_seconds_count{{controller="{controller}"}}"#
                ),
                format!(r#"controller_runtime_active_workers{{controller="{controller}"}}"#),
            ] {
                assert_eq!(value(&text, &s), 0.0);
            }
            let s = format!(
                r#"controller_runtime_max_concurrent_reconciles{{controller="{controller}"}}"#
            );
            assert_eq!(value(&text, &s), 16.0);
        }
        assert!(text.contains("# TYPE controller_runtime_reconcile counter"));
        assert!(text.contains("# TYPE controller_runtime_reconcile_time_seconds histogram"));
        let bounds: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("controller_runtime_reconcile_time_seconds_bucket{"))
            .filter(|l| l.contains(&format!(r#"controller="{V2}""#)))
            .filter_map(|l| l.split(r#"le=""#).nth(1)?.split('"').next())
            .collect();
        let mut want: Vec<String> = CONTROLLER_RUNTIME_BUCKETS
            .iter()
            .map(|b| format!("{b:?}"))
            .collect();
        want.push("+Inf".into());
        assert_eq!(bounds, want, "controller-runtime's 40 buckets and +Inf");
        assert_eq!(bounds[0], "0.005");
        assert_eq!(bounds[39], "60.0");
    }

    #[test]
    fn passes_are_classified_like_controller_runtime_results() {
        let metrics = ControllerMetrics::default();
        metrics
            .reconcile_started(Version::V1beta2)
            .finish(Ok(&Action::await_change()));
        metrics
            .reconcile_started(Version::V1beta2)
            .finish(Ok(&Action::requeue(Duration::from_secs(60))));
        metrics
            .reconcile_started(Version::V1beta2)
            .finish(Err("ApiError"));
        metrics
            .reconcile_started(Version::V1beta1)
            .finish(Err("Timeout"));
        let text = scrape(&metrics);
        let total = |c: &str, r: &str| {
            value(
                &text,
                &format!(r#"controller_runtime_reconcile_total{{controller="{c}",result="{r}"}}"#),
            )
        };
        assert_eq!(total(V2, "success"), 1.0);
        assert_eq!(total(V2, "requeue_after"), 1.0);
        assert_eq!(total(V2, "error"), 1.0);
        assert_eq!(total(V2, "requeue"), 0.0);
        assert_eq!(total("acr-pull-binding", "error"), 1.0);
        assert_eq!(
            value(
                &text,
                &format!(r#"controller_runtime_reconcile_errors_total{{controller="{V2}"}}"#)
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"controller_runtime_reconcile_time_seconds_count{{controller="{V2}"}}"#)
            ),
            3.0
        );
        // The acrpull series count the same passes, errors by reason.
        assert_eq!(value(&text, "acrpull_reconciles_total"), 4.0);
        assert_eq!(
            value(
                &text,
                r#"acrpull_reconcile_errors_total{reason="ApiError"}"#
            ),
            1.0
        );
        assert_eq!(
            value(&text, r#"acrpull_reconcile_errors_total{reason="Timeout"}"#),
            1.0
        );
    }

    #[test]
    fn a_standby_counts_its_passes_only_in_the_acrpull_series() {
        let (tx, rx) = watch::channel(false);
        let metrics = ControllerMetrics::default().with_leader(rx);
        metrics
            .reconcile_started(Version::V1beta2)
            .finish(Ok(&Action::await_change()));
        let _ = tx.send(true);
        metrics
            .reconcile_started(Version::V1beta2)
            .finish(Ok(&Action::await_change()));
        let text = scrape(&metrics);
        assert_eq!(value(&text, "acrpull_reconciles_total"), 2.0);
        assert_eq!(
            value(
                &text,
                &format!(
                    r#"controller_runtime_reconcile_total{{controller="{V2}",result="success"}}"#
                )
            ),
            1.0
        );
    }

    #[test]
    fn a_pass_holds_a_worker_until_finished_or_dropped() {
        let metrics = ControllerMetrics::default();
        let active = |m: &ControllerMetrics| {
            value(
                &scrape(m),
                &format!(r#"controller_runtime_active_workers{{controller="{V2}"}}"#),
            )
        };
        let first = metrics.reconcile_started(Version::V1beta2);
        let second = metrics.reconcile_started(Version::V1beta2);
        assert_eq!(active(&metrics), 2.0);
        first.finish(Ok(&Action::await_change()));
        assert_eq!(active(&metrics), 1.0);
        // Cancelled (shutdown): the worker is given back, nothing is recorded.
        drop(second);
        assert_eq!(active(&metrics), 0.0);
        assert_eq!(value(&scrape(&metrics), "acrpull_reconciles_total"), 1.0);
    }
}
