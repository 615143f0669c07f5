//! Leader election on a `coordination.k8s.io/v1` Lease (no crate fits kube 5 correctly; see
//! CRATES.md). The decisions are in [`crate::state::lease`]; this module does the I/O:
//! GET the Lease, create it or PUT it with the resourceVersion it was read at (a 409 means
//! someone else wrote first), renew every retry period, step down when no renew succeeded
//! within the renew deadline, and release the Lease on shutdown so a successor does not
//! wait out the TTL. Leadership is published on a `watch` channel that gates every write.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::state::lease::{
    decide, must_step_down, next_attempt, Attempt, LeaseAction, LeaseRecord,
};

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    origin: Instant,
    /// The last record we saw and when (our clock) we saw it change.
    observed: Option<(String, Duration)>,
}

/// Who holds the Lease after an attempt.
enum Lead {
    Holder,
    /// Someone else, until `until` on [`LeaderElector::now`]'s clock.
    Follower {
        until: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
enum LeaseError {
    #[error("lease call timed out")]
    Timeout,
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            origin: Instant::now(),
            observed: None,
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Run until `shutdown` resolves; then release the Lease if held.
    pub async fn run(
        mut self,
        leader: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut last_renew: Option<Duration> = None;
        loop {
            let attempt =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew());
            let outcome = tokio::select! {
                r = attempt => r.unwrap_or(Err(LeaseError::Timeout)),
                _ = &mut shutdown => break,
            };
            let now = self.now();
            let after = match outcome {
                Ok(Lead::Holder) => {
                    if last_renew.is_none() {
                        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    }
                    last_renew = Some(now);
                    leader.send_replace(true);
                    Attempt::Led
                }
                Ok(Lead::Follower { until }) => {
                    if last_renew.take().is_some() {
                        tracing::warn!(lease = %self.config.name, "lost the lease to another holder; writes stopped");
                    }
                    leader.send_replace(false);
                    Attempt::Followed { until, now }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "lease renew/acquire failed");
                    if let Some(lr) = last_renew {
                        if must_step_down(lr, now, self.config.renew_deadline) {
                            tracing::warn!(lease = %self.config.name, "renew deadline passed; stepping down");
                            last_renew = None;
                            leader.send_replace(false);
                        }
                    }
                    Attempt::Failed
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next_attempt(after, self.config.retry_period)) => {}
                _ = &mut shutdown => break,
            }
        }
        let was_leader = *leader.borrow();
        leader.send_replace(false);
        if was_leader {
            match tokio::time::timeout(self.config.retry_period * 2, self.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.config.name, "lease released"),
                Ok(Err(e)) => tracing::warn!(error = %e, "lease release failed"),
                Err(_) => tracing::warn!("lease release timed out"),
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Lead, LeaseError> {
        let now_ts = MicroTime(Timestamp::now());
        let existing = self.api.get_opt(&self.config.name).await?;
        let Some(lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
                    acquire_time: Some(now_ts.clone()),
                    renew_time: Some(now_ts),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Lead::Holder),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.lost_race()),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = LeaseRecord {
            holder: spec.holder_identity.clone(),
            lease_duration: Duration::from_secs(
                spec.lease_duration_seconds.unwrap_or(15).max(1) as u64
            ),
            transitions: spec.lease_transitions.unwrap_or(0),
        };
        // When did we see this record change? (resourceVersion identifies the record.)
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let now = self.now();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == rv => *at,
            _ => {
                self.observed = Some((rv.clone(), now));
                now
            }
        };
        match decide(&self.config.identity, &record, observed_at, now) {
            LeaseAction::Follow { until, .. } => Ok(Lead::Follower { until }),
            LeaseAction::Take { new_transition } => {
                let mut updated = lease.clone();
                let s = updated.spec.get_or_insert_with(Default::default);
                s.holder_identity = Some(self.config.identity.clone());
                s.lease_duration_seconds = Some(self.config.lease_duration.as_secs() as i32);
                s.renew_time = Some(now_ts.clone());
                if new_transition {
                    s.acquire_time = Some(now_ts);
                    s.lease_transitions = Some(record.transitions + 1);
                }
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &updated)
                    .await
                {
                    Ok(written) => {
                        self.observed = Some((
                            written.metadata.resource_version.unwrap_or_default(),
                            self.now(),
                        ));
                        Ok(Lead::Holder)
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.lost_race()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Someone else wrote the Lease first: follow, and look again at once (the next read
    /// records when the new record was seen).
    fn lost_race(&self) -> Lead {
        Lead::Follower { until: self.now() }
    }

    /// Give the Lease up: empty holder, 1 s duration (as client-go does), guarded by RV.
    async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}
