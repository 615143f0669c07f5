//! The running process: Kubernetes client, token pipeline, caches, controllers, probes and
//! signal handling, wired from the command line.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::Reporter;
use kube::Client;
use tokio::sync::watch;

use crate::azure::{
    AuthorityHosts, IdentityAudience, LimitConfig, Limits, PipelineConfig, PipelineMetrics,
    TokenPipeline,
};
use crate::config::{Audience, Cli};
use crate::http::health::{self, Readiness};
use crate::http::metrics::{self, BindingCollector};
use crate::k8s::cache::Caches;
use crate::k8s::context::Context;
use crate::k8s::failures::Failures;
use crate::k8s::leader::{LeaderConfig, LeaderElector};
use crate::k8s::metrics::ControllerMetrics;
use crate::k8s::run::{self, RunConfig};
use crate::k8s::sa_token::TokenRequests;
use crate::k8s::tracker::Tracker;
use crate::k8s::verify::Verifier;
use crate::k8s::writer::Writer;
use crate::state::binding::{EnvDefaults, Policy};
use crate::state::selector::Selector;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no Kubernetes configuration (in-cluster, KUBECONFIG or ~/.kube/config): {0}")]
    KubeConfig(String),
    #[error("building the Kubernetes client: {0}")]
    KubeClient(kube::Error),
    #[error("reading --azure-ca-file {0}: {1}")]
    CaFile(String, std::io::Error),
    #[error("token pipeline: {0}")]
    Pipeline(String),
    #[error("binding {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    #[error("{0}")]
    Selector(#[from] crate::state::selector::SelectorError),
    #[error("the leader-election task stopped; exiting so a healthy replica can lead")]
    LeaseTaskDied,
}

/// The Lease namespace: the flag, else the pod's namespace (downward API or the mounted
/// ServiceAccount), else `default`.
fn lease_namespace(cli: &Cli) -> String {
    cli.leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// A kube client from in-cluster config, else `KUBECONFIG` / `~/.kube/config`, with a read
/// timeout (kube's default has none, so a hung API server would stall a call forever).
///
/// Requests carry `User-Agent: acrpull/<version> (<identity>)`, so API server audit logs (and
/// the tests) can tell replicas apart.
pub async fn kube_client(identity: &str) -> Result<Client, AppError> {
    let mut config = match kube::Config::incluster() {
        Ok(c) => c,
        Err(_) => kube::Config::infer()
            .await
            .map_err(|e| AppError::KubeConfig(e.to_string()))?,
    };
    // Longer than the watch timeout (290 s) so long polls are not cut; per-call timeouts
    // bound everything else.
    config.read_timeout = Some(Duration::from_secs(300));
    config.connect_timeout = Some(Duration::from_secs(10));
    let agent = format!("acrpull/{} ({identity})", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    Client::try_from(config).map_err(AppError::KubeClient)
}

pub fn pipeline_config(cli: &Cli) -> Result<PipelineConfig, AppError> {
    let extra_ca_pem = match &cli.azure_ca_file {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| AppError::CaFile(path.display().to_string(), e))?)
        }
        None => None,
    };
    Ok(PipelineConfig {
        imds_base_url: cli.imds_endpoint.clone(),
        authority_hosts: AuthorityHosts {
            public: cli.entra_authority_host_public.clone(),
            us_government: cli.entra_authority_host_us_government.clone(),
            china: cli.entra_authority_host_china.clone(),
        },
        resolve: cli.azure_resolve.clone(),
        extra_ca_pem,
        limits: Limits {
            imds: LimitConfig::new(cli.imds_rps, 1, cli.imds_concurrency),
            entra: LimitConfig::new(cli.entra_rps, 1, cli.entra_concurrency),
            acr_per_registry: LimitConfig::new(cli.acr_rps, 1, cli.acr_concurrency),
        },
        service_account_token_audience: cli.service_account_token_audience.clone(),
        allowed_suffixes: cli.allowed_suffixes().as_slice().to_vec(),
        ..PipelineConfig::default()
    })
}

fn audience(cli: &Cli) -> IdentityAudience {
    match cli.identity_audience {
        Audience::ResourceManager => IdentityAudience::ResourceManager,
        Audience::ContainerRegistry => IdentityAudience::ContainerRegistry,
    }
}

pub fn policy(cli: &Cli) -> Policy {
    Policy {
        allowed_suffixes: cli.allowed_suffixes(),
        allow_ports: cli.allow_registry_ports,
        ttl_rotation_fraction: cli.ttl_rotation_fraction,
        env: EnvDefaults {
            acr_server: cli.acr_server.clone(),
            client_id: cli.managed_identity_client_id.clone(),
            resource_id: cli.managed_identity_resource_id.clone(),
            arm_resource: cli.arm_resource.clone(),
        },
        ..Policy::default()
    }
}

/// Installs the SIGTERM and SIGINT handlers now (a signal that arrives before the returned
/// future is polled is not lost, and does not kill the process with the default action) and
/// returns a future that resolves on the first; a second signal exits the process at once.
fn first_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            let (Ok(mut term), Ok(mut int)) = handlers else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::warn!("second signal: exiting at once");
                std::process::exit(130);
            });
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Run until signalled.
pub async fn run(cli: Cli) -> Result<(), AppError> {
    // First: from here on SIGTERM means "shut down cleanly", whatever is still starting.
    let signalled = first_signal();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let selector = Selector::parse(&cli.label_selector)?;
    let identity = cli
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("acrpull-{}", std::process::id()));
    let client = kube_client(&identity).await?;

    let mut registry = prometheus_client::registry::Registry::default();
    let pipeline_metrics = PipelineMetrics::default();
    pipeline_metrics.register(&mut registry);
    let controller_metrics =
        ControllerMetrics::default().with_max_concurrent(run::passes(cli.concurrency));
    controller_metrics.register(&mut registry);

    let readiness = Readiness::new(run::WATCHES);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = {
        let rx = shutdown_rx.clone();
        async move {
            let mut rx = rx;
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));

    // Probes.
    let probe_listener = tokio::net::TcpListener::bind(cli.health_probe_bind_address)
        .await
        .map_err(|e| AppError::Bind(cli.health_probe_bind_address, e))?;
    let probe_app = health::router(readiness.clone());
    let probe_shutdown = shutdown.clone();
    let probes = tokio::spawn(async move {
        let _ = axum::serve(probe_listener, probe_app)
            .with_graceful_shutdown(probe_shutdown)
            .await;
    });

    // Leadership: without --leader-elect this replica always leads.
    let (leader_tx, leader_rx) = watch::channel(!cli.leader_elect);
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let mut elector = if cli.leader_elect {
        let elector = LeaderElector::new(
            client.clone(),
            LeaderConfig {
                namespace: lease_namespace(&cli),
                name: cli.leader_election_id.clone(),
                identity: identity.clone(),
                lease_duration: cli.lease_duration,
                renew_deadline: cli.renew_deadline,
                retry_period: cli.retry_period,
            },
        );
        let task = tokio::spawn(elector.run(leader_tx, async move {
            let _ = release_rx.await;
        }));
        Some(task)
    } else {
        drop(release_rx);
        None
    };
    // Every write — the token pipeline's TokenRequests included — checks leadership here.
    let writer = Writer::new(client.clone(), leader_rx.clone(), cli.kube_call_timeout)
        .with_in_flight(usize::from(cli.concurrency));
    let sa_tokens = Arc::new(TokenRequests::new(writer.clone()));
    let pipeline = TokenPipeline::new(pipeline_config(&cli)?, sa_tokens, pipeline_metrics)
        .map_err(|e| AppError::Pipeline(e.to_string()))?;

    let tracker = Tracker::default();
    let mut collector =
        BindingCollector::new(tracker.clone(), leader_rx.clone()).with_readiness(readiness.clone());
    if cli.leader_elect {
        collector = collector.with_lease(cli.leader_election_id.clone());
    }
    registry.register_collector(Box::new(collector));
    let registry = Arc::new(registry);
    let metrics_listener = tokio::net::TcpListener::bind(cli.metrics_bind_address)
        .await
        .map_err(|e| AppError::Bind(cli.metrics_bind_address, e))?;
    let metrics_app = metrics::router(
        registry.clone(),
        tracker.clone(),
        leader_rx.clone(),
        cli.debug_endpoint,
    );
    let metrics_shutdown = shutdown.clone();
    let metrics_server = tokio::spawn(async move {
        let _ = axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(metrics_shutdown)
            .await;
    });

    let ctx = Arc::new(Context {
        writer,
        verifier: Verifier::new(
            pipeline.clone(),
            controller_metrics.clone(),
            cli.verify_credentials,
        ),
        pipeline,
        policy: policy(&cli),
        selector,
        caches: Caches::default(),
        tracker,
        metrics: controller_metrics.with_leader(leader_rx.clone()),
        readiness: readiness.clone(),
        audience: audience(&cli),
        reporter: Reporter {
            controller: "acrpull".into(),
            instance: Some(identity),
        },
        failures: Failures::default(),
        pacing: Default::default(),
    });
    let controllers = tokio::spawn(run::run(
        ctx,
        RunConfig {
            concurrency: cli.concurrency,
            label_selector: cli.label_selector.clone(),
        },
        shutdown.clone(),
    ));

    // The lease task dying is fatal: a replica that cannot tell whether it leads must not run.
    let lease_died = async {
        match elector.as_mut() {
            Some(task) => {
                let _ = task.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = signalled => {}
        _ = lease_died => {
            return Err(AppError::LeaseTaskDied);
        }
    }
    tracing::info!("shutting down: readiness off, reconcilers stopping");
    readiness.shutting_down();
    let _ = shutdown_tx.send(true);
    let grace = Duration::from_secs(20);
    let _ = tokio::time::timeout(grace, controllers).await;
    // Release the Lease only once no reconcile can write any more, and wait for the elector
    // to have done so (it bounds the release call itself by two retry periods).
    let _ = release_tx.send(());
    if let Some(task) = elector {
        let release = cli.retry_period * 2 + Duration::from_secs(1);
        if tokio::time::timeout(release, task).await.is_err() {
            tracing::warn!("the leader elector did not stop in time; the Lease expires on its own");
        }
    }
    let _ = tokio::time::timeout(grace, async {
        let _ = probes.await;
        let _ = metrics_server.await;
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}
