//! Logging setup. `serve` logs JSON lines; `dev` and `sim` log human-readable lines. The level
//! comes from `RUST_LOG` (or `EMBEDGATE_LOG`), default `info`.

use tracing_subscriber::{fmt, EnvFilter};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber once; later calls do nothing (tests call it freely).
pub fn init(format: LogFormat, default_level: &str) {
    let filter = std::env::var("EMBEDGATE_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let _ = match format {
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .with_target(false)
            .try_init(),
    };
}
