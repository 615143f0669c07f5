//! `acrpull-kube-floor`: the cost of acrpull's API traffic with nothing of acrpull's own.
//!
//! A stand-in for the controller that the bench can run in its place (`acrpull-bench
//! --acrpull-bin target/release/acrpull-kube-floor --converge-only`). It watches what acrpull
//! watches (bindings, labelled Secrets as metadata, ServiceAccounts), trimmed as acrpull trims
//! them, through kube-runtime's controller, and sends the requests acrpull sends for a new
//! binding, with the same bodies: the finalizer, the pull Secret (acrpull's own
//! `pull_secret::document`), one `imagePullSecrets` patch per ServiceAccount, the Ready status
//! (acrpull's `status::render` and `status::patch`) and one Event. It decides nothing (it
//! only resolves the binding's request, which the Secret's annotations need), asks Azure
//! nothing (the token is a fixed string of a real token's length), logs nothing, and keeps no
//! `/debug` records or metrics but a reconcile count.
//!
//! What it costs in CPU and memory at N bindings is the floor that kube-rs, kube-runtime,
//! hyper, rustls and tokio put under acrpull on this rig: no design of acrpull's own logic on
//! top of them can cost less.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acrpull::azure::AcrCredential;
use acrpull::k8s::api::v1beta2::AcrPullBinding;
use acrpull::k8s::api::FINALIZER;
use acrpull::k8s::binding::{rfc3339, BindingResource};
use acrpull::k8s::observe::{service_account_view, SecretMeta};
use acrpull::k8s::pull_secret::{self, NewToken};
use acrpull::k8s::status;
use acrpull::k8s::trim::{trim_binding, trim_service_account, CachedSecret};
use acrpull::state::binding::{validate, Policy, Resolved, Version};
use acrpull::state::names::{expected_secret_name, BINDING_LABEL};
use acrpull::state::reason::Reason;
use acrpull::state::record::{Phase, Record};
use acrpull::state::status_schema::StatusFields;
use acrpull::state::token::SecretToken;
use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{predicates, watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// acrpull's default `--concurrency`: API calls in flight.
const API_CONCURRENCY: u16 = 16;

/// A pull secret's token is ~1.2 KB of JWT.
const TOKEN_LEN: usize = 1200;

/// Binding names by (namespace, target ServiceAccount).
type ByTarget = HashMap<(String, String), Vec<String>>;

struct Ctx {
    client: Client,
    service_accounts: Store<ServiceAccount>,
    /// Binding names by (namespace, target ServiceAccount), for the batched attach.
    by_target: Arc<Mutex<ByTarget>>,
    /// `--bindings-per-second`: new bindings are served no faster (acrpull's pace is set by
    /// the Azure limits; the floor is measured at the same pace).
    pace: Option<tokio::sync::Mutex<tokio::time::Interval>>,
    secrets: Mutex<HashMap<(String, String), CachedSecret>>,
    attached: Mutex<HashSet<(String, String)>>,
    reconciles: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

fn flag(args: &[String], name: &str) -> Option<SocketAddr> {
    let prefix = format!("--{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    // The client acrpull builds (`acrpull::app`): its timeouts and its user agent, by which
    // the bench tells the controller's requests from its own.
    let mut config = kube::Config::infer().await.context("kubeconfig")?;
    config.read_timeout = Some(Duration::from_secs(300));
    config.connect_timeout = Some(Duration::from_secs(10));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("acrpull/0.1.0 (kube-floor)"),
    ));
    let client = Client::try_from(config).context("kube client")?;
    let ready = Arc::new(AtomicBool::new(false));

    let (sa_reader, sa_writer) = reflector::store();
    let service_accounts = watcher(
        Api::<ServiceAccount>::all(client.clone()),
        Default::default(),
    )
    .default_backoff()
    .modify(trim_service_account)
    .reflect(sa_writer)
    .for_each(|_| std::future::ready(()));
    let per_second = args
        .iter()
        .find_map(|a| a.strip_prefix("--bindings-per-second="))
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|n| *n > 0.0);
    let (b_reader, b_writer) = reflector::store();
    let index = Arc::new(Mutex::new(ByTarget::new()));
    let indexed = index.clone();
    let bindings = watcher(
        Api::<AcrPullBinding>::all(client.clone()),
        Default::default(),
    )
    .default_backoff()
    .modify(trim_binding)
    .reflect(b_writer)
    .inspect_ok(move |e| {
        if let watcher::Event::Apply(b) | watcher::Event::InitApply(b) = e {
            let key = (
                b.namespace().unwrap_or_default(),
                b.spec.service_account_name.clone(),
            );
            let mut m = indexed.lock().unwrap_or_else(|p| p.into_inner());
            let names = m.entry(key).or_default();
            if !names.contains(&b.name_any()) {
                names.push(b.name_any());
            }
        }
    })
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        service_accounts: sa_reader.clone(),
        by_target: index,
        pace: per_second.map(|n| {
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / n));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::sync::Mutex::new(every)
        }),
        secrets: Mutex::new(HashMap::new()),
        attached: Mutex::new(HashSet::new()),
        reconciles: AtomicU64::new(0),
    });
    let cache = ctx.clone();
    let secrets = watcher(
        Api::<SecretMeta>::all(client.clone()),
        watcher::Config::default().labels(BINDING_LABEL),
    )
    .default_backoff()
    .for_each(move |e| {
        if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = e {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            let mut m = cache.secrets.lock().unwrap_or_else(|p| p.into_inner());
            m.insert(key, CachedSecret::of(&s.metadata));
        }
        std::future::ready(())
    });

    let r = ready.clone();
    let (sa_ready, b_ready) = (sa_reader.clone(), b_reader.clone());
    tokio::spawn(async move {
        let _ = sa_ready.wait_until_ready().await;
        let _ = b_ready.wait_until_ready().await;
        r.store(true, Ordering::SeqCst);
    });
    for name in [
        "health-probe-bind-address",
        "metrics-bind-address",
        "debug-bind-address",
    ] {
        if let Some(addr) = flag(&args, name) {
            tokio::spawn(serve(addr, ready.clone(), ctx.clone()));
        }
    }

    // As many requests in flight as acrpull's default `--concurrency` allows.
    let controller = Controller::for_stream(bindings, b_reader)
        .with_config(controller::Config::default().concurrency(API_CONCURRENCY))
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_secs(5)),
            ctx,
        )
        .for_each(|_| std::future::ready(()));
    tokio::select! {
        _ = controller => {}
        _ = service_accounts => {}
        _ = secrets => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// `/readyz` once the stores have their lists; `/metrics` with the reconcile count (the bench
/// reads `acrpull_reconciles_total`); anything else 404.
async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>, ctx: Arc<Ctx>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut sock, _) = listener.accept().await?;
        let (ready, ctx) = (ready.clone(), ctx.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/readyz" | "/healthz" if ready.load(Ordering::SeqCst) || path == "/healthz" => {
                    ("200 OK", "ok".to_string())
                }
                "/readyz" => ("503 Service Unavailable", "syncing".to_string()),
                "/metrics" => (
                    "200 OK",
                    format!(
                        "acrpull_reconciles_total {}\n",
                        ctx.reconciles.load(Ordering::SeqCst)
                    ),
                ),
                _ => ("404 Not Found", String::new()),
            };
            let answer = format!(
                "HTTP/1.1 {code}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(answer.as_bytes()).await;
        });
    }
}

async fn reconcile(b: Arc<AcrPullBinding>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.reconciles.fetch_add(1, Ordering::Relaxed);
    let ns = b.namespace().unwrap_or_default();
    let name = b.name_any();
    let ready = b
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Ready");
    if ready {
        return Ok(Action::await_change());
    }
    if let Some(pace) = &ctx.pace {
        pace.lock().await.tick().await;
    }
    let bindings: Api<AcrPullBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::default();
    let mut b = b;
    if !b.finalizers().iter().any(|f| f == FINALIZER) {
        let patch = json!({"metadata": {
            "resourceVersion": b.resource_version(),
            "finalizers": [FINALIZER],
        }});
        let mut written = bindings.patch(&name, &pp, &Patch::Merge(&patch)).await?;
        trim_binding(&mut written);
        b = Arc::new(written);
    }
    let secret_name = expected_secret_name(Version::V1beta2, &name);
    let now = jiff::Timestamp::now();
    let credential = AcrCredential {
        token: SecretToken::new("x".repeat(TOKEN_LEN)),
        expires_at: now + jiff::SignedDuration::from_hours(3),
        issued_at: Some(now),
    };
    let exists = ctx
        .secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&(ns.clone(), secret_name.clone()));
    if !exists {
        let Some(request) = resolved(&ctx, &b) else {
            return Ok(Action::await_change());
        };
        let token = NewToken {
            request: &request,
            credential: &credential,
            verified: Some(true),
            now,
            refresh_at: None,
        };
        let secret = pull_secret::document(b.as_ref(), &token);
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(written) => {
                let key = (ns.clone(), secret_name.clone());
                let mut m = ctx.secrets.lock().unwrap_or_else(|p| p.into_inner());
                m.insert(key, CachedSecret::of(&written.metadata));
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    attach(&ctx, &ns, &b.spec.service_account_name).await?;
    let record = Record {
        phase: Phase::Ready,
        reason: Reason::TokenIssued,
        ready: true,
        message: format!(
            "pull secret {secret_name} holds a token valid until {}",
            rfc3339(credential.expires_at)
        ),
        error: String::new(),
        last_refresh: Some(now),
        expiry: Some(credential.expires_at),
        next_refresh: Some(now + jiff::SignedDuration::from_mins(90)),
        consecutive_failures: 0,
        observed_generation: b.meta().generation.unwrap_or(0),
        verified: Some(true),
        permitted: None,
    };
    let status = status::render(&record, b.status.as_ref(), now);
    bindings
        .patch_status(
            &name,
            &pp,
            &Patch::Merge(&status::patch(&status, StatusFields::ALL)),
        )
        .await?;
    let event = event(&b, &secret_name, now);
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    let _ = events.create(&PostParams::default(), &event).await;
    Ok(Action::await_change())
}

/// One `imagePullSecrets` patch per ServiceAccount, naming every binding's Secret that targets
/// it (acrpull's rule 8 batches the same way).
async fn attach(ctx: &Ctx, ns: &str, sa: &str) -> Result<(), Error> {
    let key = (ns.to_string(), sa.to_string());
    if !ctx
        .attached
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key)
    {
        return Ok(());
    }
    let Some(current) = ctx
        .service_accounts
        .get(&reflector::ObjectRef::new(sa).within(ns))
    else {
        return Ok(());
    };
    let mut names: Vec<String> = current
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    let targeting = ctx
        .by_target
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(ns.to_string(), sa.to_string()))
        .cloned()
        .unwrap_or_default();
    for binding in targeting {
        let n = expected_secret_name(Version::V1beta2, &binding);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.sort();
    let refs: Vec<serde_json::Value> = names.iter().map(|n| json!({"name": n})).collect();
    let patch = json!({
        "metadata": {"resourceVersion": current.resource_version()},
        "imagePullSecrets": refs,
    });
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch(sa, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The request acrpull's pass resolves for the binding (the workload-identity ones read
/// their ServiceAccount's annotations); `None` for a binding acrpull would fail.
fn resolved(ctx: &Ctx, b: &AcrPullBinding) -> Option<Resolved> {
    let name = b.name_any();
    let stat = validate(&name, &b.spec_view(), &Policy::default()).ok()?;
    let workload = stat.workload_service_account().and_then(|sa| {
        let ns = b.namespace().unwrap_or_default();
        ctx.service_accounts
            .get(&reflector::ObjectRef::new(sa).within(&ns))
            .map(|sa| service_account_view(&sa))
    });
    stat.resolve(workload.as_ref()).ok()
}

/// The one Event acrpull publishes for a new binding.
fn event(b: &AcrPullBinding, secret: &str, now: jiff::Timestamp) -> Event {
    let regarding = b.object_ref(&());
    Event {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{}.", b.name_any())),
            namespace: b.namespace(),
            ..Default::default()
        },
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now,
        )),
        action: Some("Mint".into()),
        reason: Some("TokenIssued".into()),
        note: Some(format!(
            "pull secret {secret} created and attached to service account {}",
            b.spec.service_account_name
        )),
        regarding: Some(regarding),
        reporting_controller: Some("acrpull.microsoft.com/acrpull".into()),
        reporting_instance: Some("acrpull-kube-floor".into()),
        type_: Some("Normal".into()),
        ..Default::default()
    }
}
