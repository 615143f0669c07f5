//! The `acrpull` binary: parse flags, set up logging, hand over to the library.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
