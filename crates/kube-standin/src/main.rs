//! `kube-standin`: run the stand-in API server by hand. It serves until killed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// An in-memory Kubernetes API server for tests.
#[derive(Debug, Parser)]
#[command(name = "kube-standin", version)]
struct Args {
    /// Port of the API (0 = ephemeral).
    #[arg(long, env = "KUBE_STANDIN_PORT", default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig for this server here once it is listening.
    #[arg(long, env = "KUBE_STANDIN_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Apply these manifests (CRDs or any objects) at start; repeatable.
    #[arg(long = "crd")]
    crds: Vec<PathBuf>,
    /// Watch cache size (changes kept for watch resumption).
    #[arg(long, default_value_t = 1024)]
    watch_cache_size: usize,
    /// Bookmark interval in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    bookmark_interval_ms: u64,
    /// Garbage-collector delay in milliseconds.
    #[arg(long, default_value_t = 100)]
    gc_delay_ms: u64,
    /// Token issuer (default: the server URL).
    #[arg(long)]
    issuer: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut b = kube_standin::StandIn::builder()
        .port(args.port)
        .watch_cache_size(args.watch_cache_size)
        .bookmark_interval(Duration::from_millis(args.bookmark_interval_ms))
        .gc_delay(Duration::from_millis(args.gc_delay_ms));
    if let Some(i) = args.issuer {
        b = b.issuer(i);
    }
    for f in &args.crds {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        b = b.seed_yaml(text);
    }
    let h = b.start().await?;
    if let Some(p) = &args.kubeconfig {
        h.write_kubeconfig(p)?;
    }
    println!(
        "kube-standin listening on {} (control: {})",
        h.url(),
        h.control_url()
    );
    tokio::signal::ctrl_c().await?;
    h.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Args::command().debug_assert();
    }
}
