//! Errors of the stand-in's own API (starting, reconfiguring, minting tokens). Errors seen by
//! HTTP clients are wire-format answers, not these.

use crate::config::ConfigError;
use crate::jwt::JwtError;
use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("configuration file: {0}")]
    ConfigFile(#[from] serde_json::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("token: {0}")]
    Jwt(#[from] JwtError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP client: {0}")]
    HttpClient(String),
    #[error("unknown identity {0}")]
    UnknownIdentity(String),
}
