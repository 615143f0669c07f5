//! Structured logs with `tracing`: one line per event, text or JSON. Tokens never reach a
//! log line because every token is a [`crate::state::token::SecretToken`].

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid --log-level {0:?}: {1}")]
    Filter(String, String),
    #[error("logging was already initialised")]
    AlreadySet,
}

pub fn init(format: crate::config::LogFormat, level: &str) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_new(level)
        .map_err(|e| LoggingError::Filter(level.to_string(), e.to_string()))?;
    // Colour only on a terminal: container logs and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = if format == crate::config::LogFormat::Json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|_| LoggingError::AlreadySet)
}
