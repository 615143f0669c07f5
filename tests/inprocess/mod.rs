//! The middle test layer: the controller's real reconcile machinery (`acrpull::k8s::run` with a
//! `Context` built the way `app` builds it) driven in-process against the stand-in API server
//! and the stand-in Azure, no child process. Starting one costs a few milliseconds, so dozens
//! of scenarios run in seconds, and a test can reach what a process hides: the context, the
//! records, the metrics and the logs.
//!
//! As in the process-level harness (`common`), the API server enforces `deploy/`'s CRDs, RBAC
//! and admission policies, the controller's client carries its ServiceAccount's token, and a
//! [`StandIns`] asserts when it goes away after a passing test that nothing the controller
//! asked was refused.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use acrpull::azure::{
    IdentityAudience, PipelineConfig, PipelineMetrics, RetryPolicy, Timeouts, TokenPipeline,
};
use acrpull::http::health::Readiness;
use acrpull::http::metrics::BindingCollector;
use acrpull::k8s::cache::Caches;
use acrpull::k8s::context::Context;
use acrpull::k8s::failures::Failures;
use acrpull::k8s::leader::{LeaderConfig, LeaderElector};
use acrpull::k8s::metrics::ControllerMetrics;
use acrpull::k8s::run::{self, RunConfig};
use acrpull::k8s::sa_token::TokenRequests;
use acrpull::k8s::tracker::Tracker;
use acrpull::k8s::verify::Verifier;
use acrpull::k8s::writer::Writer;
use acrpull::state::binding::Policy;
use acrpull::state::selector::Selector;
use azure_standin::AzureStandIn;
use kube::runtime::events::Reporter;
use kube_standin::StandIn;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::common::{azure_config, controller_refusals, install_deploy, REGISTRY};

/// Both stand-ins, `deploy/` installed (CRDs, RBAC, admission policies), namespaces `team-a`
/// and `team-b`.
pub struct StandIns {
    pub kube: kube_standin::Handle,
    pub azure: azure_standin::Handle,
    /// A token of the controller's ServiceAccount, `acrpull-system/acrpull`.
    pub controller_token: String,
}

impl StandIns {
    pub async fn start() -> StandIns {
        let _ = rustls::crypto::ring::default_provider().install_default();
        capture_logs();
        let kube = StandIn::builder().start().await.expect("kube stand-in");
        let controller_token = install_deploy(&kube).await;
        for ns in ["team-a", "team-b"] {
            kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .unwrap();
        }
        let azure = AzureStandIn::builder()
            .config(azure_config(&kube.issuer(), kube.jwks()))
            .start()
            .await
            .expect("azure stand-in");
        StandIns {
            kube,
            azure,
            controller_token,
        }
    }

    pub fn create(&self, obj: Value) -> Value {
        self.kube.apply(obj).expect("apply")
    }

    pub fn namespace(&self, ns: &str) {
        self.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }

    pub fn binding(&self, api_version: &str, ns: &str, name: &str) -> Option<Value> {
        self.kube.get(api_version, "AcrPullBinding", ns, name)
    }

    /// Wait until `pred` holds for the binding.
    pub async fn wait_binding(
        &self,
        api_version: &str,
        ns: &str,
        name: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let got = self
            .kube
            .wait_for(
                api_version,
                "AcrPullBinding",
                ns,
                name,
                |o| o.is_some_and(&pred),
                Duration::from_secs(60),
            )
            .await;
        match got {
            Ok(Some(v)) => v,
            other => panic!(
                "{ns}/{name} never {what}: {other:?}\nbinding: {:#}\nlogs:\n{}",
                self.binding(api_version, ns, name).unwrap_or_default(),
                logs_about(ns).join("\n")
            ),
        }
    }

    /// Wait for the `Ready` condition to be `want`.
    pub async fn wait_ready(&self, api_version: &str, ns: &str, name: &str, want: bool) -> Value {
        let want = if want { "True" } else { "False" };
        self.wait_binding(api_version, ns, name, &format!("Ready={want}"), |b| {
            condition(b, "Ready").is_some_and(|c| c["status"] == want)
        })
        .await
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        // At the end of a test that passed: the API server refused the controller nothing.
        if !std::thread::panicking() {
            let refused = controller_refusals(&self.kube, true);
            assert!(
                refused.is_empty(),
                "the API server refused the controller (RBAC: deploy/rbac.yaml, policies: \
                 deploy/admission.yaml):\n{}",
                refused.join("\n")
            );
        }
    }
}

/// The condition of `type_` in a binding's status.
pub fn condition(b: &Value, type_: &str) -> Option<Value> {
    b["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// How to run the controller.
pub struct Setup {
    pub policy: Policy,
    /// Run the real leader elector with this identity (and these timings), else always lead.
    pub leader: Option<LeaderConfig>,
    /// Goes into the User-Agent (`acrpull/<version> (<identity>)`), as `app` does.
    pub identity: String,
    pub concurrency: u16,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub verify: bool,
    pub call_timeout: Duration,
    /// More `host → address` overrides for the token pipeline (e.g. a honeypot).
    pub resolve: Vec<(String, std::net::SocketAddr)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            leader: None,
            identity: "inprocess".into(),
            concurrency: 16,
            // Azure failures surface quickly: two attempts, short delays.
            retry: RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(200),
                max_total: Duration::from_secs(5),
                max_retry_after: Duration::from_secs(2),
                jitter: false,
            },
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                request: Duration::from_secs(3),
                service_account_token: Duration::from_secs(3),
            },
            verify: true,
            call_timeout: Duration::from_secs(10),
            resolve: Vec::new(),
        }
    }
}

/// A running in-process controller. Dropping it stops it.
pub struct Controller {
    pub ctx: Arc<Context>,
    pub metrics_url: String,
    pub leader: watch::Receiver<bool>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    elector: Option<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Build the context as `app::run` does and start the watches and controllers.
    pub async fn start(s: &StandIns, setup: Setup) -> Controller {
        let mut config = kube::Config::new(s.kube.url().parse().unwrap());
        config.read_timeout = Some(Duration::from_secs(300));
        config.connect_timeout = Some(Duration::from_secs(10));
        // As the controller's ServiceAccount, under deploy/'s RBAC and admission policies.
        config.auth_info.token = Some(s.controller_token.clone().into());
        let agent = format!("acrpull/{} ({})", env!("CARGO_PKG_VERSION"), setup.identity);
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_str(&agent).unwrap(),
        ));
        let client = kube::Client::try_from(config).unwrap();

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shutdown = {
            let mut rx = shutdown_rx.clone();
            futures::FutureExt::shared(Box::pin(async move {
                let _ = rx.wait_for(|v| *v).await;
            }))
        };
        let (leader_tx, leader_rx) = watch::channel(setup.leader.is_none());
        let elector = setup.leader.clone().map(|config| {
            let elector = LeaderElector::new(client.clone(), config);
            tokio::spawn(elector.run(leader_tx, shutdown.clone()))
        });

        let writer = Writer::new(client, leader_rx.clone(), setup.call_timeout);
        let https = s.azure.https_addr();
        let pipeline_config = PipelineConfig {
            imds_base_url: s.azure.imds_url(),
            resolve: [
                (REGISTRY.to_string(), https),
                ("login.microsoftonline.com".to_string(), https),
            ]
            .into_iter()
            .chain(setup.resolve.iter().cloned())
            .collect(),
            // As `app` does: the pipeline's own check uses the operator's lists too.
            allowed_clouds: setup.policy.allowed_clouds.clone(),
            extra_ca_pem: Some(s.azure.ca_pem().into_bytes()),
            retry: setup.retry,
            timeouts: setup.timeouts,
            ..PipelineConfig::default()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let pipeline_metrics = PipelineMetrics::default();
        pipeline_metrics.register(&mut registry);
        let metrics = ControllerMetrics::default().with_max_concurrent(setup.concurrency);
        metrics.register(&mut registry);
        let pipeline = TokenPipeline::new(
            pipeline_config,
            Arc::new(TokenRequests::new(writer.clone())),
            pipeline_metrics,
        )
        .unwrap();
        let tracker = Tracker::default();
        let readiness = Readiness::new(run::watches(&setup.policy));
        let mut collector = BindingCollector::new(tracker.clone(), leader_rx.clone())
            .with_readiness(readiness.clone());
        if let Some(lease) = &setup.leader {
            collector = collector.with_lease(lease.name.clone());
        }
        registry.register_collector(Box::new(collector));
        let ctx = Arc::new(Context {
            writer,
            verifier: Verifier::new(pipeline.clone(), metrics.clone(), setup.verify),
            pipeline,
            policy: setup.policy,
            selector: Selector::parse("").unwrap(),
            caches: Caches::default(),
            tracker: tracker.clone(),
            metrics: metrics.with_leader(leader_rx.clone()),
            readiness,
            audience: IdentityAudience::ResourceManager,
            reporter: Reporter {
                controller: "acrpull".into(),
                instance: Some(setup.identity.clone()),
            },
            failures: Failures::default(),
            pacing: Default::default(),
            crds: acrpull::k8s::crd_check::CrdSchemas::default(),
            ahead: Default::default(),
            requeues: Default::default(),
        });
        // The real /metrics and /debug routes.
        let app =
            acrpull::http::metrics::router(Arc::new(registry), tracker, leader_rx.clone(), true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let task = tokio::spawn(run::run(
            ctx.clone(),
            RunConfig {
                concurrency: setup.concurrency,
                label_selector: String::new(),
            },
            shutdown,
        ));
        Controller {
            ctx,
            metrics_url,
            leader: leader_rx,
            shutdown: shutdown_tx,
            task,
            elector,
            server,
        }
    }

    pub async fn get(&self, path: &str) -> String {
        reqwest::Client::new()
            .get(format!("{}{path}", self.metrics_url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The `/debug/bindings/{ns}/{name}` entry of one version.
    pub async fn debug(&self, api_version: &str, ns: &str, name: &str) -> Value {
        let body = self.get(&format!("/debug/bindings/{ns}/{name}")).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["bindings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["apiVersion"] == api_version)
            .cloned()
            .unwrap_or_default()
    }

    /// Stop and wait for the controllers and the elector (which releases the Lease).
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
        if let Some(e) = self.elector.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), e).await;
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
        self.server.abort();
        if let Some(e) = &self.elector {
            e.abort();
        }
    }
}

/// Poll `check` until it returns `Some`, for at most `secs`; `what` names the condition.
pub async fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Logs: one global subscriber per test binary writing JSON lines into a buffer; tests tell
// their lines apart by namespace.

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("acrpull=info")
            .with_writer(move || Capture(writer.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    });
}

/// Every captured log line (JSON objects).
pub fn logs() -> Vec<Value> {
    let Some(buf) = LOGS.get() else {
        return Vec::new();
    };
    let bytes = buf.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Log lines whose `namespace` field is `ns`, as text.
pub fn logs_about(ns: &str) -> Vec<String> {
    logs()
        .into_iter()
        .filter(|l| l["namespace"] == ns)
        .map(|l| l.to_string())
        .collect()
}
