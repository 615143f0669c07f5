//! Wiring: four watches (both binding versions, labelled Secrets as metadata, ServiceAccounts)
//! feeding reflector caches, and one kube-runtime controller per binding version, both
//! triggered by Secret and ServiceAccount changes. The context's readiness flips once every
//! watch has delivered its initial list; passes wait for it (the sync gate).
//!
//! With `--tenancy-mode` audit or enforce, two more watches join the sync gate: `AcrPullPolicy`
//! objects (a change re-evaluates every binding: policies are few and rarely edited, and which
//! bindings an edit affects depends on the policy before and after it) and Namespaces as
//! metadata only (a namespace's label change re-evaluates the bindings in it). With `off`
//! neither is watched, so the old controller's memory and RBAC needs are unchanged.

use std::future::Future;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use super::api::policy::AcrPullPolicy;
use super::api::{v1beta1, v1beta2};
use super::binding::BindingResource;
use super::cache::{
    cached_secret_event, sibling_of, trim_binding, trim_service_account, BindingIndex,
    CachedSecret, NamespaceMeta,
};
use super::context::Context;
use super::observe::{pull_secret_names, secret_owner, SecretMeta};
use super::reconcile::{error_policy, look_ahead, reconcile};
use super::tracker::BindingKey;
use crate::http::health::Readiness;
use crate::state::binding::{Policy, Version};
use crate::state::names::{expected_secret_name, BINDING_LABEL};
use crate::state::tenancy::Mode;

/// Events buffered per subscriber of a shared cache.
const SUBSCRIBE_BUFFER: usize = 1024;
/// The watches readiness waits for with `--tenancy-mode=off`; see [`watches`].
pub const WATCHES: usize = 4;

/// The watches readiness waits for under `policy`: policies and namespaces join with a
/// tenancy mode, so no pass decides on a policy cache that has not delivered its list (an
/// empty one would refuse, and in enforce revoke, every binding).
pub fn watches(policy: &Policy) -> usize {
    if policy.tenancy_mode == Mode::Off {
        WATCHES
    } else {
        WATCHES + 2
    }
}

/// Passes that may run at once per API call slot (`--concurrency`): most of a pass that
/// waits is waiting for Azure (rate limits, retries), which loads neither the API server nor
/// this process, and must not keep other bindings' passes — their retries, or bindings whose
/// token is cached — waiting for a slot (RELIABILITY.md bug 9).
pub const PASSES_PER_API_SLOT: u16 = 8;

/// How many passes kube-runtime runs at once for `--concurrency`.
pub fn passes(concurrency: u16) -> u16 {
    concurrency.saturating_mul(PASSES_PER_API_SLOT)
}

/// Settings of the watch/reconcile machinery.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `--concurrency`: API calls in flight (the writer's bound); passes run [`passes`] at once.
    pub concurrency: u16,
    /// `--label-selector`, handed to the API server for the binding watches.
    pub label_selector: String,
}

fn mark_ready<K>(readiness: Readiness) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    let mut done = false;
    move |event| {
        if !done && matches!(event, Ok(watcher::Event::InitDone)) {
            done = true;
            readiness.synced();
        }
    }
}

/// Where a Secret or ServiceAccount change is sent: the bindings it concerns, as references
/// to each version's controller — deletions included (a hand-deleted Secret or ServiceAccount
/// must trigger its bindings), which kube-runtime's shared-store subscriptions do not deliver.
/// References, not copies of the object: during an initial list of 10,000 Secrets the
/// channels would otherwise hold two copies of each until the controllers caught up.
#[derive(Clone)]
struct Wake {
    v1: mpsc::UnboundedSender<ObjectRef<v1beta1::AcrPullBinding>>,
    v2: mpsc::UnboundedSender<ObjectRef<v1beta2::AcrPullBinding>>,
}

impl Wake {
    fn secret(&self, s: &CachedSecret) {
        if let Some(r) = secret_to_binding::<v1beta1::AcrPullBinding>(s) {
            let _ = self.v1.unbounded_send(r);
        }
        if let Some(r) = secret_to_binding::<v1beta2::AcrPullBinding>(s) {
            let _ = self.v2.unbounded_send(r);
        }
    }

    fn service_account(&self, caches: &super::cache::Caches, sa: &ServiceAccount) {
        for r in sa_to_bindings::<v1beta1::AcrPullBinding>(&caches.v1beta1, sa) {
            let _ = self.v1.unbounded_send(r);
        }
        for r in sa_to_bindings::<v1beta2::AcrPullBinding>(&caches.v1beta2, sa) {
            let _ = self.v2.unbounded_send(r);
        }
    }

    /// A binding whose planned pass is due ([`super::requeue`]).
    fn binding(&self, key: &BindingKey) {
        let (ns, name) = (key.namespace.as_str(), key.name.as_str());
        match key.version {
            Version::V1beta1 => {
                let _ = self.v1.unbounded_send(ObjectRef::new(name).within(ns));
            }
            Version::V1beta2 => {
                let _ = self.v2.unbounded_send(ObjectRef::new(name).within(ns));
            }
        }
    }

    /// A Namespace's labels changed: every binding in it (tenancy modes only).
    fn namespace(&self, caches: &super::cache::Caches, ns: &NamespaceMeta) {
        let ns = ns.name_any();
        for (name, _) in caches.v1beta1.in_namespace(&ns) {
            let _ = self.v1.unbounded_send(ObjectRef::new(&name).within(&ns));
        }
        for (name, _) in caches.v1beta2.in_namespace(&ns) {
            let _ = self.v2.unbounded_send(ObjectRef::new(&name).within(&ns));
        }
    }
}

/// Run both controllers until `shutdown` resolves. Becoming leader (the channel the context's
/// writer is gated on) triggers a pass over every binding.
pub async fn run(
    ctx: Arc<Context>,
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.writer.client().clone();
    let leader = ctx.writer.leadership();
    let readiness = ctx.readiness.clone();
    let secret_cache = ctx.caches.secrets.clone();
    let caches = ctx.caches.clone();
    let ns_caches = ctx.caches.clone();
    let client_for_policies = client.clone();
    let client_for_namespaces = client.clone();
    let (v1_tx, v1_rx) = mpsc::unbounded();
    let (v2_tx, v2_rx) = mpsc::unbounded();
    let wake = Wake {
        v1: v1_tx,
        v2: v2_tx,
    };
    let sa_wake = wake.clone();
    let ns_wake = wake.clone();
    let (requeues, due) = (ctx.requeues.clone(), wake.clone());
    // A watch event held back while our own write to the object was in flight, and found
    // not to be that write's, wakes like any other.
    let held_secret = wake.clone();
    ctx.caches
        .secrets
        .set_waker(move |s: &CachedSecret| held_secret.secret(s));
    let (held_sa, sa_caches) = (wake.clone(), ctx.caches.clone());
    ctx.caches
        .service_accounts
        .set_waker(move |sa: &ServiceAccount| held_sa.service_account(&sa_caches, sa));

    let secrets = watcher(
        Api::<SecretMeta>::all(client.clone()),
        watcher::Config::default().labels(BINDING_LABEL),
    )
    .default_backoff()
    .map(|e| e.map(cached_secret_event))
    .inspect(mark_ready(readiness.clone()))
    .for_each(move |e| {
        if let Ok(e) = e {
            // The echo of our own write wakes nothing: the pass that wrote it decided on it.
            if !secret_cache.apply_event(&e) {
                touched(&e, |o| wake.secret(o));
            }
        }
        std::future::ready(())
    });

    let service_accounts = watcher(
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(trim_service_account)
    .inspect(mark_ready(readiness.clone()))
    .for_each(move |e| {
        if let Ok(e) = e {
            if !caches.service_accounts.apply_event(&e) {
                touched(&e, |o| sa_wake.service_account(&caches, o));
            }
        }
        std::future::ready(())
    });

    // Tenancy: policies and namespace labels (only when a mode reads them).
    let tenancy = ctx.policy.tenancy_mode != Mode::Off;
    let (policy_tx, policy_rx) = watch::channel(0u64);
    let policy_cache = ctx.caches.policies.clone();
    let policy_ready = readiness.clone();
    let policies = async move {
        if !tenancy {
            return std::future::pending::<()>().await;
        }
        watcher(
            Api::<AcrPullPolicy>::all(client_for_policies),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(strip_managed_fields)
        .inspect(mark_ready(policy_ready))
        .for_each(move |e| {
            match &e {
                Ok(event) => {
                    policy_cache.apply_event(event);
                    if matches!(
                        event,
                        watcher::Event::Apply(_)
                            | watcher::Event::Delete(_)
                            | watcher::Event::InitDone
                    ) {
                        policy_tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
                Err(err) => tracing::warn!(
                    error = %err,
                    "watching AcrPullPolicy objects failed (is the CRD installed?); bindings wait"
                ),
            }
            std::future::ready(())
        })
        .await
    };
    let ns_ready = readiness.clone();
    let namespaces = async move {
        if !tenancy {
            return std::future::pending::<()>().await;
        }
        watcher(
            Api::<NamespaceMeta>::all(client_for_namespaces),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(strip_managed_fields)
        .inspect(mark_ready(ns_ready))
        .for_each(move |e| {
            if let Ok(e) = e {
                ns_caches.namespaces.apply_event(&e);
                touched(&e, |o| ns_wake.namespace(&ns_caches, o));
            }
            std::future::ready(())
        })
        .await
    };

    let v1 = controller_for::<v1beta1::AcrPullBinding>(
        &client,
        &config,
        ctx.clone(),
        Triggers {
            related: v1_rx,
            policies: policy_rx.clone(),
            leader: leader.clone(),
            crds: ctx.crds.changes(),
        },
        shutdown.clone(),
    );
    let crds = ctx.crds.changes();
    let v2 = controller_for::<v1beta2::AcrPullBinding>(
        &client,
        &config,
        ctx,
        Triggers {
            related: v2_rx,
            policies: policy_rx,
            leader,
            crds,
        },
        shutdown.clone(),
    );
    let watches = async {
        tokio::select! {
            _ = requeues.drive(move |key| due.binding(key)) => {}
            _ = secrets => {}
            _ = service_accounts => {}
            _ = policies => {}
            _ = namespaces => {}
            _ = shutdown => {}
        }
    };
    tokio::join!(watches, v1, v2);
}

/// The objects a watch event touched (deletions included).
fn touched<K>(event: &watcher::Event<K>, mut send: impl FnMut(&K)) {
    match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
            send(o)
        }
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// A stream that yields once each time this replica becomes the leader.
fn on_leadership(leader: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((leader, false), |(mut rx, mut was)| async move {
        loop {
            let is = *rx.borrow_and_update();
            if is && !was {
                return Some(((), (rx, true)));
            }
            was = is;
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
}

/// A stream that yields once each time the watched value changes.
fn on_change<T: Send + Sync + 'static>(
    rx: watch::Receiver<T>,
) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// What one controller is triggered by, besides its own bindings.
struct Triggers<K: BindingResource> {
    /// Bindings whose Secret, ServiceAccount or (tenancy modes) Namespace changed.
    related: mpsc::UnboundedReceiver<ObjectRef<K>>,
    /// Bumped when any `AcrPullPolicy` changes (tenancy modes only).
    policies: watch::Receiver<u64>,
    leader: watch::Receiver<bool>,
    crds: watch::Receiver<u64>,
}

async fn controller_for<K: BindingResource>(
    client: &Client,
    config: &RunConfig,
    ctx: Arc<Context>,
    triggers: Triggers<K>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let readiness = ctx.readiness.clone();
    let (reader, writer) = reflector::store_shared::<K>(SUBSCRIBE_BUFFER);
    let events = writer.subscribe().expect("shared store");
    let mut wc = watcher::Config::default();
    if !config.label_selector.trim().is_empty() {
        wc = wc.labels(&config.label_selector);
    }
    let index = ctx.caches.index_of(K::VERSION).clone();
    let store = reader.clone();
    index.set_lookup(move |ns, name| {
        store
            .get(&ObjectRef::new(name).within(ns))
            .map(|b| sibling_of(b.as_ref()))
    });
    let bindings = watcher(Api::<K>::all(client.clone()), wc)
        .default_backoff()
        .modify(trim_binding)
        .inspect(mark_ready(readiness))
        .inspect(move |e| {
            if let Ok(e) = e {
                index.apply_event(e);
            }
        })
        .reflect_shared(writer)
        .for_each(|_| std::future::ready(()));
    // The echo of our own finalizer or status write wakes nothing: the pass that wrote it has
    // already decided on what it returned.
    // Its event can arrive before the write's answer: it waits for the answer (not holding
    // up other bindings' events) to be told apart.
    let written = ctx.caches.bindings.clone();
    let ahead = ctx.clone();
    let fetched = ctx
        .ahead
        .subscribe(K::VERSION)
        .map(|key| ObjectRef::new(&key.name).within(&key.namespace));
    let events = events
        .map(move |b| {
            let written = written.clone();
            async move {
                written.settled(b.as_ref()).await;
                (!written.is_echo(b.as_ref())).then_some(b)
            }
        })
        .buffer_unordered(SUBSCRIBE_BUFFER)
        .filter_map(std::future::ready)
        // A binding whose pass will wait for a credential is queued once it is fetched.
        .filter(move |b| std::future::ready(!look_ahead(b, &ahead)));

    // kube-runtime holds the runner until the store has its initial list and only then
    // notices the shutdown, so a controller that never synced (the API server unreachable)
    // would hold SIGTERM until the drain timeout. Unsynced, nothing can be in flight: stop.
    let unsynced_stop = {
        let reader = reader.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            if reader.wait_until_ready().now_or_never().is_some() {
                // Synced: the controller drains its passes on the same signal.
                std::future::pending::<()>().await;
            }
        }
    };
    let controller = Controller::for_shared_stream(events, reader)
        .with_config(controller::Config::default().concurrency(passes(config.concurrency)))
        .reconcile_on(triggers.related)
        .reconcile_on(fetched)
        .reconcile_all_on(on_leadership(triggers.leader))
        .reconcile_all_on(on_change(triggers.policies))
        // What the installed CRDs keep changed (new CRDs applied): every status is rewritten.
        .reconcile_all_on(on_change(triggers.crds))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| std::future::ready(()));
    tokio::select! {
        _ = bindings => {}
        _ = controller => {}
        _ = unsynced_stop => {
            tracing::debug!(version = ?K::VERSION, "stopped before the initial list arrived");
        }
    }
}

/// The tenancy caches never need `managedFields`.
fn strip_managed_fields<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A labelled Secret maps to the binding of its version named by the label.
fn secret_to_binding<K: BindingResource>(s: &CachedSecret) -> Option<ObjectRef<K>> {
    let name = s.binding_label.as_deref()?;
    let (version, _) = secret_owner(s)?;
    (version == K::VERSION).then(|| ObjectRef::new(name).within(&s.namespace))
}

/// A ServiceAccount maps to the bindings that target it, use it for workload identity, or
/// whose secrets it references.
fn sa_to_bindings<K: BindingResource>(
    index: &BindingIndex,
    sa: &ServiceAccount,
) -> Vec<ObjectRef<K>> {
    let Some(ns) = sa.namespace() else {
        return Vec::new();
    };
    let name = sa.name_any();
    let refs = pull_secret_names(sa);
    index
        .in_namespace(&ns)
        .into_iter()
        .filter(|(binding, entry)| {
            entry.service_accounts.contains(&name)
                || refs.contains(&expected_secret_name(K::VERSION, binding))
        })
        .map(|(binding, _)| ObjectRef::new(&binding).within(&ns))
        .collect()
}
