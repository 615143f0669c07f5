//! `acrpull-bench`: a reproducible scale benchmark of the real `acrpull` binary.
//!
//! Starts the stand-in API server and stand-in Azure in this process with realistic latencies
//! and Azure's rate limits, runs `acrpull` as a child process, creates N v1beta2 bindings and
//! reports convergence time, Azure calls per hop against the minimum, API requests per
//! binding, memory and CPU, a steady-state window, a restart, and refresh smoothness with
//! short-lived tokens — next to a clearly labelled arithmetic model of the old controller's
//! algorithm and a measured `--concurrency 1` run.

mod env;
mod measure;
mod scenario;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use serde::Serialize;

use crate::env::ControllerOptions;
use crate::scenario::{Convergence, OldModel, Refresh, Run, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "acrpull-bench",
    about = "Scale benchmark of the acrpull controller"
)]
struct Cli {
    /// The acrpull binary (default: `acrpull` next to this executable).
    #[arg(long)]
    acrpull_bin: Option<PathBuf>,
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    n: Vec<usize>,
    /// Runs per N (medians are reported).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// CI smoke: N=200, short windows, short-lived refresh tokens, no serial run.
    #[arg(long)]
    quick: bool,
    /// Write the machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Length of the steady-state window in seconds (default 30; 5 with --quick).
    #[arg(long)]
    steady_secs: Option<u64>,
    /// Sizes (of --n) at which acrpull also runs for real with --concurrency 1.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    serial_n: Vec<usize>,
    /// Sizes (of --n) with a refresh-smoothness phase (default: every --n).
    #[arg(long, value_delimiter = ',')]
    refresh_n: Option<Vec<usize>>,
    /// Lifetime of ACR access tokens in the refresh phase, seconds (default 120; 20 with --quick).
    #[arg(long)]
    refresh_ttl: Option<u64>,
    /// Refresh cycles to observe (default 3; 2 with --quick).
    #[arg(long)]
    refresh_cycles: Option<u64>,
    /// Skip the refresh phase.
    #[arg(long)]
    no_refresh: bool,
    /// Measure convergence only (no steady, restart, serial or refresh phase), e.g. for
    /// `acrpull-kube-floor`, which has no `/debug` page to restart against.
    #[arg(long)]
    converge_only: bool,
    /// Directory for controller logs (default: a new directory under the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Extra argument for every acrpull process (repeatable), e.g. --acrpull-arg=--acr-rps=20.
    #[arg(long = "acrpull-arg", allow_hyphen_values = true)]
    acrpull_args: Vec<String>,
    /// Run the controller as the admin with no admission policies (default: as its
    /// ServiceAccount under deploy/'s RBAC and policies). For comparing with figures recorded
    /// before the stand-in enforced them; the report's workload says which was used.
    #[arg(long)]
    no_enforcement: bool,
    /// The controller serves `/debug` on its metrics port and has no `--debug-bind-address`
    /// (builds from before the tenancy work), for measuring an older build on this rig.
    #[arg(long)]
    debug_on_metrics_port: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    metric: String,
    median: f64,
    min: f64,
    max: f64,
    target: String,
    /// `Some(true)` met, `Some(false)` missed, `None` no target at this N.
    met: Option<bool>,
}

#[derive(Debug, Serialize)]
struct SizeReport {
    n: usize,
    runs: Vec<Run>,
    rows: Vec<Row>,
    serial: Option<Convergence>,
    refresh: Option<Refresh>,
    old_model: OldModel,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: BTreeMap<String, String>,
    acrpull_bin: String,
    acrpull_args: Vec<String>,
    workload: BTreeMap<String, String>,
    sizes: Vec<SizeReport>,
}

type Extract = fn(&Run) -> f64;
type Check = fn(f64, usize) -> Option<bool>;

fn rows(runs: &[Run], n: usize) -> Vec<Row> {
    let min = &runs[0].convergence.minimum;
    let defs: Vec<(String, Extract, String, Check)> = vec![
        (
            "converge: seconds to all Ready".into(),
            |r| r.convergence.seconds,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: Azure floor s (busiest limiter)".into(),
            |r| r.convergence.floor_seconds,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: time / Azure floor".into(),
            |r| r.convergence.over_floor,
            "≤ 1.15".into(),
            |v, _| Some(v <= 1.15),
        ),
        (
            "converge: reconciles / binding".into(),
            |r| r.convergence.reconciles_per_binding,
            "≤ 1.5".into(),
            |v, _| Some(v <= 1.5),
        ),
        (
            "converge: API requests / binding (excl. Events)".into(),
            |r| r.convergence.requests_per_binding_excluding_events,
            "≤ 4".into(),
            |v, _| Some(v <= 4.0),
        ),
        (
            "converge: controller CPU ms / binding".into(),
            |r| r.convergence.cpu_ms_per_binding,
            "≤ 0.5".into(),
            |v, _| Some(v <= 0.5),
        ),
        (
            "converge: bindings Ready".into(),
            |r| r.convergence.ready as f64,
            format!("{n}"),
            |v, n| Some(v as usize == n),
        ),
        (
            format!("converge: IMDS calls (min {})", min.imds),
            |r| r.convergence.azure.imds as f64,
            "= minimum".into(),
            |_, _| None,
        ),
        (
            format!("converge: Entra token calls (min {})", min.entra_token),
            |r| r.convergence.azure.entra_token as f64,
            "= minimum".into(),
            |_, _| None,
        ),
        (
            format!("converge: ACR exchange calls (min {})", min.acr_exchange),
            |r| r.convergence.azure.acr_exchange as f64,
            "= minimum".into(),
            |_, _| None,
        ),
        (
            format!("converge: ACR token calls (min {})", min.acr_token),
            |r| r.convergence.azure.acr_token as f64,
            "= minimum".into(),
            |_, _| None,
        ),
        (
            "converge: other Azure calls (e.g. registry checks)".into(),
            |r| r.convergence.azure.other as f64,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: Azure 429s".into(),
            |r| r.convergence.azure.throttled_429 as f64,
            "0".into(),
            |v, _| Some(v == 0.0),
        ),
        (
            "converge: API writes / binding (incl. Events)".into(),
            |r| r.convergence.writes_per_binding,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: API writes / binding (excl. Events)".into(),
            |r| r.convergence.writes_per_binding_excluding_events,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: API requests / binding".into(),
            |r| r.convergence.api.requests as f64 / r.convergence.n as f64,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: API 409 conflicts".into(),
            |r| r.convergence.api.conflicts_409 as f64,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: controller peak RSS MiB".into(),
            |r| r.convergence.peak_rss_mib,
            "≤ 64 MiB at ≥ 10,000".into(),
            |v, n| (n >= 10_000).then_some(v <= 64.0),
        ),
        (
            "converge: controller RSS MiB when all Ready".into(),
            |r| r.convergence.rss_mib,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: stand-ins' CPU, cores busy".into(),
            |r| r.convergence.standins_cores_busy,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: API requests / s".into(),
            |r| r.convergence.api_requests_per_second,
            "".into(),
            |_, _| None,
        ),
        (
            "converge: controller CPU seconds".into(),
            |r| r.convergence.cpu_seconds,
            "".into(),
            |_, _| None,
        ),
        (
            "steady: Azure calls".into(),
            |r| r.steady.azure.total as f64,
            "0".into(),
            |v, _| Some(v == 0.0),
        ),
        (
            "steady: API writes".into(),
            |r| r.steady.api.writes as f64,
            "0".into(),
            |v, _| Some(v == 0.0),
        ),
        (
            "steady: API requests".into(),
            |r| r.steady.api.requests as f64,
            "".into(),
            |_, _| None,
        ),
        (
            "steady: CPU % of one core".into(),
            |r| r.steady.cpu_percent_of_one_core,
            "< 1 %".into(),
            |v, _| Some(v < 1.0),
        ),
        (
            "restart: Azure calls".into(),
            |r| r.restart.azure.total as f64,
            "0".into(),
            |v, _| Some(v == 0.0),
        ),
        (
            "restart: API writes".into(),
            |r| r.restart.api.writes as f64,
            "0".into(),
            |v, _| Some(v == 0.0),
        ),
        (
            "restart: /readyz s after first list".into(),
            |r| r.restart.readyz_secs_from_first_list,
            "≤ 2 s".into(),
            |v, _| Some(v <= 2.0),
        ),
        (
            "restart: /readyz s after spawn".into(),
            |r| r.restart.readyz_secs_from_spawn,
            "".into(),
            |_, _| None,
        ),
        (
            "restart: all confirmed Ready s after first list".into(),
            |r| r.restart.confirmed_secs_from_first_list,
            "≤ 5 s".into(),
            |v, _| Some(v <= 5.0),
        ),
        (
            "restart: RSS MiB when all confirmed".into(),
            |r| r.restart.rss_mib,
            "".into(),
            |_, _| None,
        ),
        (
            "restart: peak RSS MiB".into(),
            |r| r.restart.peak_rss_mib,
            "≤ 64 MiB at ≥ 10,000".into(),
            |v, n| (n >= 10_000).then_some(v <= 64.0),
        ),
    ];
    let mut out = Vec::new();
    for (metric, extract, target, check) in defs {
        let mut values: Vec<f64> = runs.iter().map(extract).collect();
        let median = measure::median(&mut values);
        let met = if target == "= minimum" {
            // Every run must hit the minimum exactly, not just the median.
            let want = match metric.as_str() {
                m if m.contains("IMDS") => min.imds,
                m if m.contains("Entra") => min.entra_token,
                m if m.contains("exchange") => min.acr_exchange,
                _ => min.acr_token,
            } as f64;
            Some(values.iter().all(|v| *v == want))
        } else {
            check(median, n)
        };
        out.push(Row {
            metric,
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            target,
            met,
        });
    }
    out
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    m.insert("cpu_model".into(), model);
    m.insert(
        "nproc".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(total) = meminfo.lines().find(|l| l.starts_with("MemTotal")) {
        m.insert(
            "mem_total".into(),
            total.trim_start_matches("MemTotal:").trim().into(),
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    m.insert("loadavg_at_start".into(), load.trim().into());
    m
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn print_size(s: &SizeReport) {
    println!();
    println!(
        "=== N = {} ({} run{}; medians, min..max) ===",
        s.n,
        s.runs.len(),
        if s.runs.len() == 1 { "" } else { "s" }
    );
    println!(
        "{:<52} {:>10} {:>19} {:>20} {:>6}",
        "metric", "median", "min..max", "target", "met"
    );
    for r in &s.rows {
        println!(
            "{:<52} {:>10} {:>19} {:>20} {:>6}",
            r.metric,
            fmt_num(r.median),
            format!("{}..{}", fmt_num(r.min), fmt_num(r.max)),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            }
        );
    }
    let last = &s.runs[s.runs.len() - 1].convergence;
    println!("API requests of the last run by verb and resource (convergence):");
    for (k, v) in &last.api.by_verb_resource {
        println!(
            "    {k:<46} {v:>8}  ({:.2}/binding)",
            *v as f64 / s.n as f64
        );
    }
    println!(
        "Where convergence time went (last run; count, first..last s after the first create):"
    );
    for (k, v) in last
        .azure_profile
        .iter()
        .map(|(k, v)| (format!("azure {k}"), v))
        .chain(
            last.api_profile
                .iter()
                .map(|(k, v)| (format!("api {k}"), v)),
        )
    {
        println!(
            "    {k:<46} {:>8}  {:>7.2}..{:<7.2}",
            v.count, v.first_secs, v.last_secs
        );
    }
    for (k, v) in &last.controller_metrics {
        if k.contains("wait") || k.contains("reconcile") || k.contains("_sum") {
            println!("    {k:<70} {v:.3}");
        }
    }
    let restart = &s.runs[s.runs.len() - 1].restart;
    println!("API requests of the last run's restart by verb and resource:");
    for (k, v) in &restart.api.by_verb_resource {
        println!("    {k:<46} {v:>8}");
    }
    if let Some((before, after)) = &restart.status_change_sample {
        println!("    status of one binding changed by the restart:\n      before {before}\n      after  {after}");
    }
    println!("Azure limiters of the last run (convergence; offered peaks vs limits):");
    for l in &last.limiters {
        println!(
            "    {:<28} peak {:>5}/{:<5} per {:>5} ms, peak concurrency {:>3}/{:<3} rejected {} {}",
            l.name,
            l.peak_rate,
            l.rate_limit_per_window,
            l.window_ms,
            l.peak_concurrency,
            l.concurrency_limit,
            l.rejected,
            if l.exceeded { "EXCEEDED" } else { "ok" }
        );
    }
    let median_conv = s.rows.first().map(|r| r.median).unwrap_or(f64::NAN);
    println!(
        "{}: {} IMDS + {} Entra + {} exchange + {} token calls, {:.0} ms per binding serially, {} → {:.1} s ({:.1}× the measured median)",
        s.old_model.label,
        s.old_model.azure_calls_per_hop.imds,
        s.old_model.azure_calls_per_hop.entra_token,
        s.old_model.azure_calls_per_hop.acr_exchange,
        s.old_model.azure_calls_per_hop.acr_token,
        s.old_model.mean_ms_per_binding,
        s.n,
        s.old_model.convergence_seconds,
        s.old_model.convergence_seconds / median_conv
    );
    if let Some(c) = &s.serial {
        println!(
            "measured acrpull --concurrency 1 (caching on): all Ready in {:.1} s ({:.1}× the default concurrency), Azure calls imds {} exchange {} token {}, writes/binding {:.2}",
            c.seconds,
            c.seconds / median_conv,
            c.azure.imds,
            c.azure.acr_exchange,
            c.azure.acr_token,
            c.writes_per_binding
        );
    }
    if let Some(r) = &s.refresh {
        println!(
            "refresh (ACR tokens {} s, fraction {}, {} cycles = {} s): {} calls, peak {}/s, mean {:.2}/s, peak-to-mean {:.2} (target ≤ 1.5: {}); over the {} active seconds {:.2}; ACR token calls/cycle {:.1} (min {}); writes/binding/cycle {:.2}; limiters exceeded: {}; all Ready at end: {}",
            r.acr_token_lifetime_secs,
            r.rotation_fraction,
            r.cycles,
            r.window_secs,
            r.calls_total,
            r.peak_per_second,
            r.mean_per_second,
            r.peak_to_mean,
            if r.peak_to_mean <= 1.5 { "met" } else { "MISSED" },
            r.active_seconds,
            r.peak_to_mean_active,
            r.acr_token_per_cycle,
            r.acr_token_minimum,
            r.api_writes_per_binding_per_cycle,
            r.limiters_exceeded,
            r.all_ready_at_end
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let bin = match &cli.acrpull_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("acrpull"),
    };
    let sizes = if cli.quick { vec![200] } else { cli.n.clone() };
    let steady_secs = cli.steady_secs.unwrap_or(if cli.quick { 5 } else { 30 });
    let refresh_ttl = cli.refresh_ttl.unwrap_or(if cli.quick { 20 } else { 120 });
    let refresh_cycles = cli.refresh_cycles.unwrap_or(if cli.quick { 2 } else { 3 });
    let refresh_n = cli.refresh_n.clone().unwrap_or_else(|| sizes.clone());
    let work_dir = scenario::work_dir(cli.work_dir.as_deref())?;
    let opts = RunOptions {
        controller: ControllerOptions {
            bin: bin.clone(),
            extra_args: cli.acrpull_args.clone(),
            enforcement: !cli.no_enforcement,
            debug_on_metrics_port: cli.debug_on_metrics_port,
        },
        steady_secs,
        work_dir: work_dir.clone(),
    };
    eprintln!(
        "acrpull-bench: {} at N={sizes:?}, {} run(s), {}; logs in {}",
        bin.display(),
        cli.runs,
        if cli.no_enforcement {
            "as the admin without admission policies"
        } else {
            "as its ServiceAccount under deploy/ RBAC and admission policies"
        },
        work_dir.display()
    );
    let mut report = Report {
        machine: machine(),
        acrpull_bin: bin.display().to_string(),
        acrpull_args: cli.acrpull_args.clone(),
        workload: workload_description(!cli.no_enforcement),
        sizes: Vec::new(),
    };
    if cli.converge_only {
        return converge_only(&cli, &sizes, &opts).await;
    }
    for &n in &sizes {
        let mut runs = Vec::new();
        for i in 0..cli.runs.max(1) {
            eprintln!("N={n}: run {}/{}", i + 1, cli.runs.max(1));
            let run = scenario::run(n, &opts, i).await?;
            eprintln!(
                "N={n}: run {} converged in {:.2} s",
                i + 1,
                run.convergence.seconds
            );
            runs.push(run);
        }
        let serial = if !cli.quick && cli.serial_n.contains(&n) {
            eprintln!("N={n}: measured run with --concurrency 1");
            let mut serial_opts = opts.clone();
            serial_opts
                .controller
                .extra_args
                .push("--concurrency=1".into());
            Some(scenario::converge_only(n, &serial_opts, "serial").await?)
        } else {
            None
        };
        let refresh = if !cli.no_refresh && refresh_n.contains(&n) {
            eprintln!("N={n}: refresh phase ({refresh_ttl} s tokens, {refresh_cycles} cycles)");
            Some(scenario::refresh(n, refresh_ttl, refresh_cycles, &opts).await?)
        } else {
            None
        };
        let size = SizeReport {
            n,
            rows: rows(&runs, n),
            runs,
            serial,
            refresh,
            old_model: scenario::old_model(n),
        };
        print_size(&size);
        report.sizes.push(size);
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--converge-only`: convergence runs at each size, their medians printed, the runs written
/// to `--json`.
async fn converge_only(cli: &Cli, sizes: &[usize], opts: &RunOptions) -> Result<()> {
    let mut all = BTreeMap::new();
    for &n in sizes {
        let mut runs = Vec::new();
        for i in 0..cli.runs.max(1) {
            let c = scenario::converge_only(n, opts, &format!("run{i}")).await?;
            eprintln!(
                "N={n}: run {} converged in {:.2} s ({} Ready)",
                i + 1,
                c.seconds,
                c.ready
            );
            runs.push(c);
        }
        println!(
            "\n=== N = {n}, convergence only ({} runs; medians, min..max) ===",
            runs.len()
        );
        type Metric = fn(&scenario::Convergence) -> f64;
        let metrics: [(&str, Metric); 7] = [
            ("seconds to all Ready", |c| c.seconds),
            ("controller CPU ms / binding", |c| c.cpu_ms_per_binding),
            ("controller peak RSS MiB", |c| c.peak_rss_mib),
            ("controller RSS MiB when all Ready", |c| c.rss_mib),
            ("reconciles / binding", |c| c.reconciles_per_binding),
            ("API requests / binding (excl. Events)", |c| {
                c.requests_per_binding_excluding_events
            }),
            ("API requests / s", |c| c.api_requests_per_second),
        ];
        for (name, f) in metrics {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            println!(
                "{name:<45} {:>10} {:>10}..{}",
                fmt_num(v[v.len() / 2]),
                fmt_num(v[0]),
                fmt_num(v[v.len() - 1])
            );
        }
        all.insert(n.to_string(), runs);
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&all)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn workload_description(enforcement: bool) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(
        "api_enforcement".into(),
        if enforcement {
            "controller as its ServiceAccount under deploy/ RBAC + admission policies".into()
        } else {
            "controller as the admin, no admission policies (--no-enforcement)".into()
        },
    );
    let ms = |(f, j): (u64, u64)| format!("{f} ms + 0..{j} ms jitter");
    m.insert("api_version".into(), workload::V2.into());
    m.insert("namespaces".into(), workload::NAMESPACES.to_string());
    m.insert(
        "identities".into(),
        format!(
            "{} managed (client id), 1 app registration via workload identity in 1 namespace of 10 (half its bindings)",
            workload::MANAGED_IDENTITIES
        ),
    );
    m.insert(
        "registries".into(),
        format!(
            "{} (2 Premium, 2 Standard, 1 Basic; ops/min limits by SKU)",
            workload::REGISTRIES
        ),
    );
    m.insert(
        "scopes".into(),
        "1–3 repositories of a pool of 4, pull".into(),
    );
    m.insert(
        "bindings_per_service_account".into(),
        format!("~{}", workload::BINDINGS_PER_SA),
    );
    m.insert("latency_imds".into(), ms(workload::IMDS_MS));
    m.insert("latency_entra".into(), ms(workload::ENTRA_MS));
    m.insert("latency_acr_exchange".into(), ms(workload::EXCHANGE_MS));
    m.insert("latency_acr_token".into(), ms(workload::TOKEN_MS));
    m.insert("latency_api_server".into(), ms(workload::API_MS));
    m.insert(
        "imds_limits".into(),
        "20 req/s, 5 concurrent (enforced by the stand-in)".into(),
    );
    m
}
