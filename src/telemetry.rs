//! Logging setup. `serve` logs JSON lines; `dev` and `sim` log human-readable lines; all to
//! stderr. The level comes from `EMBEDGATE_LOG` (or `RUST_LOG`), default `info`.
//!
//! Every line logged while a request is handled carries that request's id (the `request_id` of
//! the request span, also returned as `X-Request-Id` and `RequestId`). Embed URLs are never logged
//! by embedgate; the AWS SDK and HTTP client crates are capped at `info` whatever the configured
//! level, because at debug/trace they log raw response bodies, which carry embed URLs.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Crates that may log response bodies (and so embed URLs) below `info`.
const CAPPED: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_smithy_types",
    "aws_sdk_quicksight",
    "aws_runtime",
    "aws_config",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
];

/// The filter for `level` (an `EnvFilter` directive string), with the capped crates at `info`.
pub fn filter(level: &str) -> EnvFilter {
    let caps: Vec<String> = CAPPED.iter().map(|c| format!("{c}=info")).collect();
    let directives = format!("{level},{}", caps.join(","));
    EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{}", caps.join(","))))
}

fn configured_level(default_level: &str) -> String {
    std::env::var("EMBEDGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string())
}

/// Installs the global subscriber once, writing to stderr; later calls do nothing.
pub fn init(format: LogFormat, default_level: &str) {
    init_with_writer(format, &configured_level(default_level), std::io::stderr);
}

/// Installs the global subscriber with `level` and a writer of the caller's (tests capture logs
/// this way). Later calls do nothing.
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = filter(level);
    let _ = match format {
        LogFormat::Json => fmt()
            .json()
            .with_writer(writer)
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => fmt()
            .with_writer(writer)
            .with_env_filter(filter)
            .with_target(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_and_http_crates_stay_at_info_even_at_trace() {
        let f = filter("trace").to_string();
        for c in CAPPED {
            assert!(f.contains(&format!("{c}=info")), "{c} capped: {f}");
        }
        assert!(f.split(',').any(|d| d == "trace"), "{f}");
    }
}
