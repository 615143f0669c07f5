//! The `acrpull` binary: set up the allocator, parse flags, set up logging, hand over to the
//! library.

fn main() -> anyhow::Result<()> {
    tune_malloc();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// glibc's malloc, set for a controller whose memory peaks are bursts (a fleet's bindings
/// arriving at once, the initial lists after a restart) and whose threads all share one heap:
/// - one arena, not one per thread that ever contended: memory a burst freed in one thread's
///   arena is not reused by the others, so it stayed resident;
/// - allocations of 128 KiB and more mapped on their own and unmapped when freed, and free
///   memory above 128 KiB at the top of the heap returned. glibc raises both thresholds as the
///   process frees large blocks, after which list pages and grown tables stay in the heap.
///
/// At 10,000 bindings this lowered the peak after a restart by ~10 MiB (BENCHMARKS.md). An
/// operator who sets `GLIBC_TUNABLES` with malloc settings keeps them: nothing is changed then.
/// The library has no `unsafe`; this is the binary's only use of it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    if operator_sets_malloc(std::env::var("GLIBC_TUNABLES").ok().as_deref()) {
        return;
    }
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists, and each value is one glibc documents for its parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Whether `GLIBC_TUNABLES` (`name=value` pairs joined by `:`) sets any malloc parameter.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn operator_sets_malloc(tunables: Option<&str>) -> bool {
    tunables.is_some_and(|t| t.split(':').any(|pair| pair.starts_with("glibc.malloc.")))
}

async fn run() -> anyhow::Result<()> {
    // Go's spellings and controller-runtime's flags as well as clap's (upstream_flags).
    let (cli, compat) = match acrpull::upstream_flags::parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    acrpull::logging::init(cli.log_format, &cli.log_level)?;
    for note in &compat.notes {
        tracing::info!("{note}");
    }
    if cli.allowed_suffixes().is_disabled() {
        tracing::warn!(
            "registry suffix check disabled (--allowed-acr-server-suffixes is empty): tokens may be sent to any registry host"
        );
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        metrics = %cli.metrics_bind_address,
        probes = %cli.health_probe_bind_address,
        leader_elect = cli.leader_elect,
        "acrpull starting"
    );
    acrpull::app::run(cli).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_operators_malloc_tunables_win() {
        for (tunables, set) in [
            (None, false),
            (Some(""), false),
            (Some("glibc.malloc.arena_max=4"), true),
            (Some("glibc.rtld.nns=2:glibc.malloc.trim_threshold=0"), true),
            (Some("glibc.rtld.nns=2"), false),
            (Some("glibc.pthread.rseq=0"), false),
        ] {
            assert_eq!(super::operator_sets_malloc(tunables), set, "{tunables:?}");
        }
    }
}
