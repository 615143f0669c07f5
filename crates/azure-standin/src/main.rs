//! `azure-standin` binary: loads a JSON configuration, serves IMDS (+ `/_standin`) on one
//! port and Entra + registries over HTTPS on another until killed.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use azure_standin::{AzureStandIn, Config, StandInError};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "azure-standin",
    about = "Azure IMDS, Entra ID and ACR token server stand-in"
)]
struct Args {
    /// JSON configuration file (see the crate README).
    #[arg(long, env = "AZURE_STANDIN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "AZURE_STANDIN_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Plain-HTTP port for IMDS and the control API (0 = ephemeral).
    #[arg(long, env = "AZURE_STANDIN_IMDS_PORT", default_value_t = 0)]
    imds_port: u16,
    /// HTTPS port for Entra and the registries (0 = ephemeral).
    #[arg(long, env = "AZURE_STANDIN_HTTPS_PORT", default_value_t = 0)]
    https_port: u16,
    /// Write the CA certificate (PEM) here once listening.
    #[arg(long, env = "AZURE_STANDIN_CA_OUT")]
    ca_out: Option<PathBuf>,
    /// Write the ACR token-signing certificate (PEM) here, for a registry's rootcertbundle.
    #[arg(long, env = "AZURE_STANDIN_SIGNING_CERT_OUT")]
    signing_cert_out: Option<PathBuf>,
    /// Write a JSON file with the ports and URLs once listening.
    #[arg(long, env = "AZURE_STANDIN_STATE_OUT")]
    state_out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), StandInError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::from_json(&std::fs::read_to_string(path)?)?,
        None => Config::default(),
    };
    let handle = AzureStandIn::builder()
        .config(config)
        .imds_bind(SocketAddr::new(args.bind, args.imds_port))
        .https_bind(SocketAddr::new(args.bind, args.https_port))
        .start()
        .await?;
    if let Some(path) = &args.ca_out {
        handle.write_ca(path)?;
    }
    if let Some(path) = &args.signing_cert_out {
        std::fs::write(path, handle.registry_signing_cert_pem())?;
    }
    if let Some(path) = &args.state_out {
        // Written atomically so a watcher never reads half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&handle.info())?)?;
        std::fs::rename(&tmp, path)?;
    }
    tracing::info!(
        imds = %handle.imds_url(),
        https = %handle.https_addr(),
        "Azure stand-in listening"
    );
    wait_for_signal().await;
    tracing::info!("Shutting down");
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }
}
