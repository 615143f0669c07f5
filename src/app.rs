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
use crate::http::{debug, secure};
use crate::k8s::cache::Caches;
use crate::k8s::context::Context;
use crate::k8s::crd_check::{self, CrdCollector, CrdSchemas};
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
use crate::state::tenancy::{AllowedActions, AllowedClouds};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "no Kubernetes configuration (--kubeconfig, KUBECONFIG, in-cluster or ~/.kube/config): {0}"
    )]
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
    #[error("--metrics-secure: {0}")]
    Secure(String),
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

/// This replica's identity: the Lease holder, the Events' reporting instance and the
/// User-Agent's comment. `POD_NAME` (`--pod-name`) when set; otherwise client-go's default,
/// `<hostname>_<random UUID>`, unique per process even when every replica is PID 1 with the
/// same host name (upstream's Deployment sets no `POD_NAME`).
pub fn replica_identity(pod_name: Option<&str>) -> String {
    if let Some(name) = pod_name.map(str::trim).filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    // Go's os.Hostname reads the same file first.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "acrpull".to_string());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// The Kubernetes configuration, in controller-runtime's order (upstream's): `--kubeconfig`,
/// then `KUBECONFIG`, then the in-cluster ServiceAccount, then `~/.kube/config`.
pub async fn kube_config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, AppError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions::default();
    if let Some(path) = kubeconfig {
        let file = Kubeconfig::read_from(path)
            .map_err(|e| AppError::KubeConfig(format!("--kubeconfig {}: {e}", path.display())))?;
        return kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .map_err(|e| AppError::KubeConfig(format!("--kubeconfig {}: {e}", path.display())));
    }
    if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        return kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| AppError::KubeConfig(format!("KUBECONFIG: {e}")));
    }
    match kube::Config::incluster() {
        Ok(c) => Ok(c),
        Err(_) => kube::Config::infer()
            .await
            .map_err(|e| AppError::KubeConfig(e.to_string())),
    }
}

/// A kube client from [`kube_config`], with a read timeout (kube's default has none, so a hung
/// API server would stall a call forever).
///
/// Requests carry `User-Agent: acrpull/<version> (<identity>)`, so API server audit logs (and
/// the tests) can tell replicas apart.
pub async fn kube_client(
    identity: &str,
    kubeconfig: Option<&std::path::Path>,
) -> Result<Client, AppError> {
    let mut config = kube_config(kubeconfig).await?;
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
        allowed_clouds: allowed_clouds(cli),
        ..PipelineConfig::default()
    })
}

fn audience(cli: &Cli) -> IdentityAudience {
    match cli.identity_audience {
        Audience::ResourceManager => IdentityAudience::ResourceManager,
        Audience::ContainerRegistry => IdentityAudience::ContainerRegistry,
    }
}

fn allowed_clouds(cli: &Cli) -> AllowedClouds {
    AllowedClouds::new(
        &cli.allowed_entra_authority_hosts,
        &cli.allowed_resource_manager_audiences,
    )
}

pub fn policy(cli: &Cli) -> Policy {
    Policy {
        allowed_suffixes: cli.allowed_suffixes(),
        allow_ports: cli.allow_registry_ports,
        ttl_rotation_fraction: cli.ttl_rotation_fraction,
        allowed_actions: AllowedActions::new(&cli.allowed_scope_actions),
        allowed_clouds: allowed_clouds(cli),
        tenancy_mode: cli.tenancy_mode.mode(),
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
    let identity = replica_identity(cli.pod_name.as_deref());
    let client = kube_client(&identity, cli.upstream.kubeconfig.as_deref()).await?;

    let mut registry = prometheus_client::registry::Registry::default();
    let pipeline_metrics = PipelineMetrics::default();
    pipeline_metrics.register(&mut registry);
    let controller_metrics =
        ControllerMetrics::default().with_max_concurrent(run::passes(cli.concurrency));
    controller_metrics.register(&mut registry);

    let readiness = Readiness::new(run::watches(&policy(&cli)));
    let crds = CrdSchemas::default();
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
    registry.register_collector(Box::new(CrdCollector(crds.clone())));
    let registry = Arc::new(registry);
    // A standby makes no passes: what its tracker holds goes stale the moment it loses the
    // Lease, so it is dropped then.
    tokio::spawn(tracker.clone().clear_on_standby(leader_rx.clone()));
    let metrics_listener = tokio::net::TcpListener::bind(cli.metrics_bind_address)
        .await
        .map_err(|e| AppError::Bind(cli.metrics_bind_address, e))?;
    let metrics_shutdown = shutdown.clone();
    let metrics_server = if cli.metrics_secure {
        // HTTPS; /metrics and /debug only for callers Kubernetes authenticates and authorizes.
        let tls = secure::tls_config(cli.metrics_cert_dir.as_deref())
            .map_err(|e| AppError::Secure(e.to_string()))?;
        let authz = Arc::new(secure::Authorizer::new(client.clone()));
        let mut app = metrics::metrics_router(registry.clone());
        if cli.debug_endpoint {
            app = app.merge(debug::router(
                tracker.clone(),
                leader_rx.clone(),
                Some(authz.clone()),
            ));
        }
        let app = app.layer(axum::middleware::from_fn_with_state(
            authz,
            secure::authenticate,
        ));
        tokio::spawn(secure::serve_tls(
            metrics_listener,
            tls,
            app,
            metrics_shutdown,
        ))
    } else {
        let app = metrics::metrics_router(registry.clone());
        tokio::spawn(async move {
            let _ = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(metrics_shutdown)
                .await;
        })
    };
    // /debug without authentication: on its own address, loopback unless the operator says.
    let debug_server = if cli.debug_endpoint {
        if !cli.debug_bind_address.ip().is_loopback() {
            tracing::warn!(
                address = %cli.debug_bind_address,
                "/debug is served without authentication on a non-loopback address; it lists every binding's identities and registries"
            );
        }
        let listener = tokio::net::TcpListener::bind(cli.debug_bind_address)
            .await
            .map_err(|e| AppError::Bind(cli.debug_bind_address, e))?;
        let app = debug::router(tracker.clone(), leader_rx.clone(), None);
        let debug_shutdown = shutdown.clone();
        Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(debug_shutdown)
                .await;
        }))
    } else {
        None
    };

    // What the installed CRDs keep of the status, known before the first pass (an API server
    // that cannot be reached yet leaves it at "everything" until the next check).
    crd_check::check(&client, &crds, &readiness, cli.kube_call_timeout).await;
    let crd_checks = tokio::spawn(crd_check::run(
        client.clone(),
        crds.clone(),
        readiness.clone(),
        cli.kube_call_timeout,
        cli.crd_recheck_interval,
        shutdown.clone(),
    ));

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
        crds: crds.clone(),
        ahead: Default::default(),
        requeues: Default::default(),
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
        if let Some(debug) = debug_server {
            let _ = debug.await;
        }
        let _ = crd_checks.await;
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_pod_name_else_hostname_and_a_fresh_uuid() {
        assert_eq!(
            replica_identity(Some("acrpull-7d9f-x2x4q")),
            "acrpull-7d9f-x2x4q"
        );
        let a = replica_identity(None);
        let b = replica_identity(Some("  "));
        assert_ne!(a, b, "unique per call, like a process's");
        for id in [&a, &b] {
            let (host, uuid) = id.rsplit_once('_').expect(id);
            assert!(!host.is_empty(), "{id}");
            assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{id}");
        }
    }
}
