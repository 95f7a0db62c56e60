//! Tracing set-up, in one place: human-readable logs by default, JSON lines when
//! `LOG_FORMAT=json`. The filter comes from `RUST_LOG` (default `info`).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format, picked with `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Coloured, one event a line, for a terminal.
    Pretty,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Installs the global subscriber. Calling it twice is harmless (tests do), the
/// second call is ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Pretty => registry.with(fmt::layer().with_target(false)).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json()).try_init(),
    };
}
