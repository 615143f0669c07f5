//! The phases of one benchmark run: converge N new bindings, hold a steady window, restart the
//! controller, and (in a fresh environment with short-lived ACR tokens) watch refresh cycles.
//! Plus the arithmetic model of the old controller's algorithm.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;

use crate::env::{ControllerOptions, Env};
use crate::measure::{self, ApiStats, AzureCalls};
use crate::workload::{self, Minimum, Workload, V2};

/// How long any one phase may take before the run is declared failed.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// "No writes for this long" ends a phase's trailing activity (the controller's after-write
/// requeue is 5 s, so anything it still had to do shows up within this).
const QUIET: Duration = Duration::from_secs(6);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub controller: ControllerOptions,
    pub steady_secs: u64,
    pub work_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Convergence {
    pub n: usize,
    pub concurrency: String,
    /// First create → last successful status write of the controller (all Ready).
    pub seconds: f64,
    /// Time the bench took to create the objects in the store (not a controller cost).
    pub create_seconds: f64,
    pub ready: usize,
    pub azure: AzureCalls,
    pub minimum: Minimum,
    pub api: ApiStats,
    pub writes_per_binding: f64,
    pub writes_per_binding_excluding_events: f64,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    pub limiters: Vec<Limiter>,
    /// Controller writes by kind: count, first and last, seconds after the first create.
    pub api_profile: BTreeMap<String, measure::Span>,
    /// Azure calls by hop: count, first and last, seconds after the first create.
    pub azure_profile: BTreeMap<String, measure::Span>,
    /// Selected controller metrics at the end of convergence (limiter waits, hop durations).
    pub controller_metrics: BTreeMap<String, f64>,
    /// The Azure floor at the controller's limits (see [`Minimum::floor_seconds`]).
    pub floor_seconds: f64,
    /// `seconds / floor_seconds`.
    pub over_floor: f64,
    /// Reconcile passes of the controller (`acrpull_reconciles_total`) per binding.
    pub reconciles_per_binding: f64,
    /// API requests per binding other than Event writes.
    pub requests_per_binding_excluding_events: f64,
    /// Controller CPU milliseconds per binding converged.
    pub cpu_ms_per_binding: f64,
    /// Controller RSS (VmRSS) when all were Ready.
    pub rss_mib: f64,
    /// CPU seconds of this process — the stand-ins — during convergence, and the same as a
    /// share of the machine's cores: how close the stand-in API server was to its bound.
    pub standins_cpu_seconds: f64,
    pub standins_cores_busy: f64,
    /// API requests of the controller per second of convergence.
    pub api_requests_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Steady {
    pub window_secs: u64,
    /// Time waited for trailing requeues after the last Ready (no writes for 6 s).
    pub settle_secs: f64,
    pub azure: AzureCalls,
    pub api: ApiStats,
    pub cpu_seconds: f64,
    pub cpu_percent_of_one_core: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub readyz_secs_from_spawn: f64,
    /// From the first list request of the new process to /readyz 200.
    pub readyz_secs_from_first_list: f64,
    /// From spawn until /debug/bindings shows all N bindings Ready.
    pub confirmed_secs_from_spawn: f64,
    pub confirmed_secs_from_first_list: f64,
    pub azure: AzureCalls,
    pub api: ApiStats,
    pub peak_rss_mib: f64,
    /// RSS (VmRSS) once all were confirmed Ready.
    pub rss_mib: f64,
    pub cpu_seconds: f64,
    /// One binding's status before and after the restart when they differ (why it was
    /// rewritten).
    pub status_change_sample: Option<(Value, Value)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limiter {
    pub name: String,
    pub rate_limit_per_window: u32,
    pub window_ms: u64,
    pub peak_rate: u32,
    pub concurrency_limit: u32,
    pub peak_concurrency: u32,
    pub rejected: u64,
    pub exceeded: bool,
}

fn limiters(azure: &azure_standin::Handle) -> Vec<Limiter> {
    azure
        .limiter_stats()
        .into_iter()
        .map(|s| Limiter {
            exceeded: s.rejected > 0
                || (s.rate_limit > 0 && s.peak_rate > s.rate_limit)
                || (s.concurrency_limit > 0 && s.peak_concurrency > s.concurrency_limit),
            name: s.name,
            rate_limit_per_window: s.rate_limit,
            window_ms: s.window_ms,
            peak_rate: s.peak_rate,
            concurrency_limit: s.concurrency_limit,
            peak_concurrency: s.peak_concurrency,
            rejected: s.rejected,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub convergence: Convergence,
    pub steady: Steady,
    pub restart: Restart,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Start the environment and the controller, create the fleet, wait until all are Ready.
async fn converge(
    w: &Workload,
    opts: &RunOptions,
    acr_access_secs: Option<u64>,
    tag: &str,
) -> Result<(Env, Convergence)> {
    let dir = opts.work_dir.join(format!("{tag}-n{}", w.n));
    let mut env = Env::start(w, opts.controller.clone(), acr_access_secs, &dir).await?;
    env.spawn()?;
    env.wait_readyz(Duration::from_secs(60)).await?;
    let created = Instant::now();
    let standins_before = crate::env::cpu_seconds_of(std::process::id());
    let first = env.create_bindings(w)?;
    let create_seconds = created.elapsed().as_secs_f64();
    let ready = {
        let kube = env.kube.clone();
        let mut alive = || match env.exited() {
            Some(s) => bail!("acrpull exited ({s}); log: {}", env.log_path().display()),
            None => Ok(()),
        };
        measure::wait_all_ready(&kube, w.n, PHASE_TIMEOUT, &mut alive).await?
    };
    env.check_not_refused()?;
    let records = env.kube.requests();
    let last = measure::last_status_write(&records).unwrap_or_else(jiff::Timestamp::now);
    let seconds = last.duration_since(first).as_secs_f64();
    let api = measure::api_stats(&records);
    let azure = measure::azure_calls(&env.azure.counts());
    let standins_cpu_seconds = crate::env::cpu_seconds_of(std::process::id()) - standins_before;
    let waited = created.elapsed().as_secs_f64();
    let (hwm, rss) = env.memory_kib();
    let (_, metrics_text) = env.http_get(env.metrics_port, "/metrics").await;
    let controller_metrics = selected_metrics(&metrics_text);
    let reconciles = controller_metrics
        .get("acrpull_reconciles_total")
        .copied()
        .unwrap_or(f64::NAN);
    let floor_seconds = w.minimum().floor_seconds(acr_rps_of(&opts.controller));
    let cpu_seconds = env.cpu_seconds();
    let c = Convergence {
        floor_seconds,
        over_floor: seconds / floor_seconds,
        reconciles_per_binding: reconciles / w.n as f64,
        requests_per_binding_excluding_events: api.requests_excluding_events as f64 / w.n as f64,
        cpu_ms_per_binding: 1000.0 * cpu_seconds / w.n as f64,
        rss_mib: mib(rss),
        standins_cpu_seconds,
        standins_cores_busy: standins_cpu_seconds / waited,
        api_requests_per_second: api.requests as f64 / seconds,
        api_profile: measure::api_profile(&records, first),
        azure_profile: measure::azure_profile(&env.azure.requests(), first),
        controller_metrics,
        n: w.n,
        concurrency: concurrency_of(&opts.controller),
        seconds,
        create_seconds,
        ready,
        azure,
        minimum: w.minimum(),
        writes_per_binding: api.writes as f64 / w.n as f64,
        writes_per_binding_excluding_events: api.writes_excluding_events as f64 / w.n as f64,
        api,
        peak_rss_mib: mib(hwm),
        cpu_seconds,
        limiters: limiters(&env.azure),
    };
    Ok((env, c))
}

/// The controller's `--acr-rps` (default 10).
fn acr_rps_of(c: &ControllerOptions) -> f64 {
    c.extra_args
        .iter()
        .find_map(|a| a.strip_prefix("--acr-rps=").and_then(|v| v.parse().ok()))
        .unwrap_or(10.0)
}

fn concurrency_of(c: &ControllerOptions) -> String {
    c.extra_args
        .iter()
        .find_map(|a| a.strip_prefix("--concurrency=").map(str::to_string))
        .unwrap_or_else(|| "default (16)".into())
}

/// All phases at one N.
pub async fn run(n: usize, opts: &RunOptions, index: usize) -> Result<Run> {
    let w = Workload::generate(n);
    let (mut env, convergence) = converge(&w, opts, None, &format!("run{index}")).await?;

    // Steady state: let trailing requeues finish, then watch a window with no changes.
    let settle = measure::wait_quiet(&env.kube, QUIET, PHASE_TIMEOUT).await?;
    let mark = env.kube.requests().len();
    let before = measure::azure_calls(&env.azure.counts());
    let cpu_before = env.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(opts.steady_secs)).await;
    let cpu = env.cpu_seconds() - cpu_before;
    let steady = Steady {
        window_secs: opts.steady_secs,
        settle_secs: settle.as_secs_f64(),
        azure: measure::azure_delta(&measure::azure_calls(&env.azure.counts()), &before),
        api: measure::api_stats(&env.kube.requests()[mark..]),
        cpu_seconds: cpu,
        cpu_percent_of_one_core: 100.0 * cpu / opts.steady_secs as f64,
    };

    // Restart with every token valid.
    let sample = &w.bindings[0];
    let status_of = |env: &Env| {
        env.kube
            .get(V2, "AcrPullBinding", &sample.namespace, &sample.name)
            .map(|b| b["status"].clone())
            .unwrap_or(Value::Null)
    };
    let status_before = status_of(&env);
    env.terminate().await?;
    let mark = env.kube.requests().len();
    let before = measure::azure_calls(&env.azure.counts());
    let spawned = env.spawn()?;
    let readyz = env.wait_readyz(Duration::from_secs(120)).await?;
    let readyz_wall = jiff::Timestamp::now();
    let confirmed = wait_debug_all_ready(&mut env, n).await?;
    let confirmed_wall = jiff::Timestamp::now();
    measure::wait_quiet(&env.kube, QUIET, PHASE_TIMEOUT).await?;
    let records = env.kube.requests();
    let first_list = records[mark..]
        .iter()
        .filter(|r| measure::is_controller(r) && r.verb == "list")
        .filter_map(|r| measure::parse_ts(&r.timestamp))
        .min()
        .unwrap_or(readyz_wall);
    let (hwm, rss) = env.memory_kib();
    let status_after = status_of(&env);
    let restart = Restart {
        status_change_sample: (status_before != status_after)
            .then_some((status_before, status_after)),
        readyz_secs_from_spawn: (readyz - spawned).as_secs_f64(),
        readyz_secs_from_first_list: readyz_wall.duration_since(first_list).as_secs_f64(),
        confirmed_secs_from_spawn: (confirmed - spawned).as_secs_f64(),
        confirmed_secs_from_first_list: confirmed_wall.duration_since(first_list).as_secs_f64(),
        azure: measure::azure_delta(&measure::azure_calls(&env.azure.counts()), &before),
        api: measure::api_stats(&records[mark..]),
        peak_rss_mib: mib(hwm),
        rss_mib: mib(rss),
        cpu_seconds: env.cpu_seconds(),
    };
    // The steady window and the restart were refused nothing either.
    env.check_not_refused()?;
    env.terminate().await?;
    Ok(Run {
        convergence,
        steady,
        restart,
    })
}

/// The controller metrics that explain where convergence time went: the `_sum` and `_count`
/// of rate-limiter waits, token-request durations and reconcile durations.
fn selected_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            (l.starts_with("acrpull_rate_limiter_wait_seconds")
                || l.starts_with("acrpull_token_request_duration_seconds")
                || l.starts_with("acrpull_reconcile_duration_seconds"))
                && (l.contains("_sum") || l.contains("_count"))
                || l.starts_with("acrpull_token_requests_total")
                || l.starts_with("acrpull_reconciles_total")
                || l.starts_with("acrpull_credential_verifications_total")
                || l.starts_with("acrpull_token_cache_total")
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Convergence only (for the measured `--concurrency 1` comparison).
pub async fn converge_only(n: usize, opts: &RunOptions, tag: &str) -> Result<Convergence> {
    let w = Workload::generate(n);
    let (mut env, c) = converge(&w, opts, None, tag).await?;
    env.terminate().await?;
    Ok(c)
}

/// Poll the controller's `/debug/bindings` until it lists all `n` v1beta2 bindings as Ready.
async fn wait_debug_all_ready(env: &mut Env, n: usize) -> Result<Instant> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let interval = if n >= 5_000 {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(50)
    };
    loop {
        let (code, body) = env.http_get(env.debug_port, "/debug/bindings").await;
        if code == 200 {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let ready = v["bindings"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|b| b["apiVersion"] == V2 && b["phase"] == "Ready")
                        .count()
                })
                .unwrap_or(0);
            if ready >= n {
                return Ok(Instant::now());
            }
        }
        if let Some(s) = env.exited() {
            bail!("acrpull exited ({s}) after restart");
        }
        if Instant::now() > deadline {
            bail!("/debug/bindings never showed all {n} bindings Ready");
        }
        tokio::time::sleep(interval).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Refresh {
    pub n: usize,
    pub acr_token_lifetime_secs: u64,
    pub rotation_fraction: f64,
    pub cycles: u64,
    pub window_secs: u64,
    /// Azure calls (all hops) in the window, per second.
    pub calls_total: u64,
    pub peak_per_second: u64,
    pub mean_per_second: f64,
    pub peak_to_mean: f64,
    /// The same over the seconds that had any refresh call (how bursty a refresh wave is).
    pub active_seconds: u64,
    pub peak_to_mean_active: f64,
    pub azure: AzureCalls,
    /// ACR token calls per cycle vs the minimum (one per identity × registry × scope).
    pub acr_token_per_cycle: f64,
    pub acr_token_minimum: u64,
    pub api_writes_per_binding_per_cycle: f64,
    pub limiters: Vec<Limiter>,
    pub limiters_exceeded: bool,
    pub all_ready_at_end: bool,
}

/// A fresh environment whose ACR access tokens live `ttl` seconds: converge, then watch
/// `cycles` refresh cycles (each `ttl × 0.5`, the default rotation fraction).
pub async fn refresh(n: usize, ttl: u64, cycles: u64, opts: &RunOptions) -> Result<Refresh> {
    const FRACTION: f64 = 0.5;
    let w = Workload::generate(n);
    let (mut env, _) = converge(&w, opts, Some(ttl), "refresh").await?;
    // Everything before this instant is initial minting, not refresh.
    env.azure.clear_requests();
    let mark = env.kube.requests().len();
    let start = jiff::Timestamp::now();
    let cycle = (ttl as f64 * FRACTION).round() as u64;
    let window = cycle * cycles;
    tokio::time::sleep(Duration::from_secs(window)).await;
    if let Some(s) = env.exited() {
        bail!("acrpull exited ({s}) during the refresh window");
    }
    let records = env.azure.requests();
    let (peak, mean, total) = measure::per_second(&records, start, window);
    let active = {
        let mut secs: Vec<u64> = records
            .iter()
            .map(|r| r.timestamp.duration_since(start).as_secs_f64())
            .filter(|s| *s >= 0.0 && (*s as u64) < window)
            .map(|s| s as u64)
            .collect();
        secs.sort_unstable();
        secs.dedup();
        secs.len() as u64
    };
    let azure = measure::azure_calls(&env.azure.counts());
    let api = measure::api_stats(&env.kube.requests()[mark..]);
    let lim = limiters(&env.azure);
    let ready = env
        .kube
        .list(V2, "AcrPullBinding", None)
        .iter()
        .filter(|b| measure::is_ready(b))
        .count();
    // Refreshing (Secret updates, TokenRequests) was refused nothing.
    env.check_not_refused()?;
    env.terminate().await?;
    Ok(Refresh {
        n,
        acr_token_lifetime_secs: ttl,
        rotation_fraction: FRACTION,
        cycles,
        window_secs: window,
        calls_total: total,
        peak_per_second: peak,
        mean_per_second: mean,
        peak_to_mean: if mean > 0.0 { peak as f64 / mean } else { 0.0 },
        active_seconds: active,
        peak_to_mean_active: if total > 0 {
            peak as f64 / (total as f64 / active.max(1) as f64)
        } else {
            0.0
        },
        acr_token_per_cycle: azure.acr_token as f64 / cycles as f64,
        acr_token_minimum: w.minimum().acr_token,
        api_writes_per_binding_per_cycle: api.writes as f64 / n as f64 / cycles as f64,
        azure,
        limiters_exceeded: lim.iter().any(|l| l.exceeded),
        limiters: lim,
        all_ready_at_end: ready == n,
    })
}

/// A model (not a measurement) of the old controller's algorithm: every binding fetches its
/// own IMDS (or Entra) token, exchange and access token, one binding at a time, each call at
/// this benchmark's configured mean latencies, plus its API round trips.
#[derive(Debug, Clone, Serialize)]
pub struct OldModel {
    pub label: &'static str,
    pub n: usize,
    pub azure_calls_per_hop: AzureCalls,
    pub api_round_trips_per_binding: u64,
    pub mean_ms_per_binding: f64,
    pub convergence_seconds: f64,
}

/// API round trips per binding of the old algorithm: get the binding, get the secret,
/// create the secret, get and update the ServiceAccount, update the status.
const OLD_API_ROUND_TRIPS: u64 = 6;

pub fn old_model(n: usize) -> OldModel {
    let w = Workload::generate(n);
    let wi = w.workload_identity_bindings() as u64;
    let mi = n as u64 - wi;
    let mean = |(fixed, jitter): (u64, u64)| fixed as f64 + jitter as f64 / 2.0;
    let acr = mean(workload::EXCHANGE_MS) + mean(workload::TOKEN_MS);
    let api = OLD_API_ROUND_TRIPS as f64 * mean(workload::API_MS);
    // A workload-identity binding also requests a ServiceAccount token (one more round trip).
    let total_ms = mi as f64 * (mean(workload::IMDS_MS) + acr + api)
        + wi as f64 * (mean(workload::ENTRA_MS) + acr + api + mean(workload::API_MS));
    OldModel {
        label: "model of the old algorithm (computed, not run)",
        n,
        azure_calls_per_hop: AzureCalls {
            imds: mi,
            entra_token: wi,
            acr_exchange: n as u64,
            acr_token: n as u64,
            other: 0,
            throttled_429: 0,
            total: 3 * n as u64,
            by_hop: Default::default(),
        },
        api_round_trips_per_binding: OLD_API_ROUND_TRIPS,
        mean_ms_per_binding: total_ms / n as f64,
        convergence_seconds: total_ms / 1000.0,
    }
}

/// Where each run's logs go.
pub fn work_dir(base: Option<&Path>) -> Result<std::path::PathBuf> {
    let dir = match base {
        Some(b) => b.to_path_buf(),
        None => std::env::temp_dir().join(format!("acrpull-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
