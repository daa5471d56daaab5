//! Logging setup. `serve` logs JSON lines; `dev` and `sim` log human-readable lines; all to
//! stderr. The level comes from `EMBEDGATE_LOG` (or `RUST_LOG`), default `info`. Lines below
//! `warn` are written in batches ([`batch`]), at least every `log_flush_ms`.
//!
//! Every line logged while a request is handled carries that request's id, method and route as
//! a `request` span (the `request_id` is also returned as `X-Request-Id` and `RequestId`): they
//! are the task's [`request`] context, not a `tracing` span. Embed URLs are never logged
//! by embedgate; the AWS SDK and HTTP client crates are capped at `info` whatever the configured
//! level, because at debug/trace they log raw response bodies, which carry embed URLs.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt, EnvFilter};

use crate::wire::json::{push_json_fmt, push_json_str};

pub mod batch;
pub mod bursts;
pub mod request;

use batch::Batched;

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

/// The Redis client, which warns on every attempt while a node is down (about a hundred lines a
/// second over three replicas during a Redis Cluster failover); the fleet's own warnings say
/// when a replica stops and starts sharing. Kept at `error` unless the filter names it.
const CHATTY: &str = "redis";

/// The filter for `level` (an `EnvFilter` directive string), with the capped crates at `info`
/// and the Redis client at `error` unless `level` names it.
pub fn filter(level: &str) -> EnvFilter {
    let mut caps: Vec<String> = CAPPED.iter().map(|c| format!("{c}=info")).collect();
    let names_it = level
        .split(',')
        .any(|d| d.split(['=', '[']).next() == Some(CHATTY));
    if !names_it {
        caps.push(format!("{CHATTY}=error"));
    }
    let directives = format!("{level},{}", caps.join(","));
    EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{}", caps.join(","))))
}

/// Whether `level` is a filter to log with: comma-separated directives, each a level (`off`,
/// `error`, `warn`, `info`, `debug`, `trace`) or `target=level`. A bare word that is not a level
/// is a valid `EnvFilter` directive (every level of that target only), so a typo such as
/// `log_level = "infp"` silenced every other line; a directive that did not parse sent the whole
/// filter back to `info` without a word.
///
/// # Errors
/// The first directive that is neither, or why the list does not parse.
pub fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in level.split(',').map(str::trim) {
        let named = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(named)) {
            return Err(format!(
                "{directive:?} is not a level (off, error, warn, info, debug, trace) or target=level"
            ));
        }
    }
    EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The filter to log with: `EMBEDGATE_LOG`, else `RUST_LOG`, else `default_level`; and, when the
/// variable is not one ([`check_level`]), what to say about it once logging is up.
fn configured_level(default_level: &str) -> (String, Option<String>) {
    for var in ["EMBEDGATE_LOG", "RUST_LOG"] {
        if let Ok(level) = std::env::var(var) {
            return match check_level(&level) {
                Ok(()) => (level, None),
                Err(why) => (
                    default_level.to_string(),
                    Some(format!("{var} ignored ({why}); logging at {default_level}")),
                ),
            };
        }
    }
    (default_level.to_string(), None)
}

/// How long a line below `warn` may wait in its batch unless the configuration says otherwise.
pub const DEFAULT_FLUSH: Duration = Duration::from_millis(100);

/// The batches of the process's stderr log, for [`flush`].
static STDERR: OnceLock<Batched<std::io::Stderr>> = OnceLock::new();

/// Installs the global subscriber once, writing to stderr: lines below `warn` in batches written
/// at least every `flush` (each as it is logged when `flush` is zero). Later calls do nothing.
pub fn init(format: LogFormat, default_level: &str, flush: Duration) {
    let (level, ignored) = configured_level(default_level);
    init_batched(format, &level, flush);
    if let Some(why) = ignored {
        tracing::warn!("{why}");
    }
}

fn init_batched(format: LogFormat, level: &str, flush: Duration) {
    if flush.is_zero() {
        return init_with_writer(format, level, std::io::stderr);
    }
    let batched = STDERR.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The lines before a panic come before its message.
            if let Some(b) = STDERR.get() {
                b.try_flush();
            }
            previous(info);
        }));
        Batched::new(std::io::stderr(), flush)
    });
    init_with_writer(format, level, batched.clone());
}

/// Writes every line still waiting in a batch: call before the process ends.
pub fn flush() {
    if let Some(b) = STDERR.get() {
        b.flush();
    }
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
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .with_writer(writer)
            .with_env_filter(filter)
            .try_init(),
        LogFormat::Pretty => fmt()
            .event_format(PrettyLines::default())
            .with_writer(writer)
            .with_env_filter(filter)
            .try_init(),
    };
}

/// JSON lines shaped as `tracing-subscriber`'s `json()` format writes them with the current span
/// and no span list: `{"timestamp","level","fields":{…},"target","span":{…,"name"}}`.
///
/// Written here because that format costs a pool hit more than the rest of its handler at the
/// default level: for every line it parses the request span's stored fields back from JSON to
/// write them again, and collects the event's fields into a map of `serde_json` values first.
/// Here the span's fields are kept as JSON text by [`JsonSpanFields`] and copied into each line
/// as they are, and the event's fields are written straight into the line.
pub struct JsonLines;

/// Human-readable lines as `tracing-subscriber`'s default format writes them without the target
/// (`2026-12-04T01:12:45.123456Z  INFO request{request_id=… method=POST route=…}: message k=v`),
/// the request being handled written as the span it was until 2026-12-04.
pub struct PrettyLines {
    /// The default format for the rest of the line: the caller's spans, the message and fields.
    rest: fmt::format::Format<fmt::format::Full, ()>,
}

impl Default for PrettyLines {
    fn default() -> Self {
        PrettyLines {
            rest: fmt::format()
                .without_time()
                .with_level(false)
                .with_target(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for PrettyLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let normalized = event.normalized_metadata();
        let level = *normalized
            .as_ref()
            .unwrap_or_else(|| event.metadata())
            .level();
        let mut stamp = String::with_capacity(32);
        timestamp(&mut stamp);
        let colour = match level {
            tracing::Level::TRACE => "35",
            tracing::Level::DEBUG => "34",
            tracing::Level::INFO => "32",
            tracing::Level::WARN => "33",
            tracing::Level::ERROR => "31",
        };
        if writer.has_ansi_escapes() {
            write!(
                writer,
                "\x1b[2m{stamp}\x1b[0m \x1b[{colour}m{level:>5}\x1b[0m "
            )?;
        } else {
            write!(writer, "{stamp} {level:>5} ")?;
        }
        request::write_prefix(&mut writer)?;
        self.rest.format_event(ctx, writer, event)
    }
}

/// A span's fields kept as the members of a JSON object (`{"request_id":"…",…}`), for
/// [`JsonLines`] to copy into each line logged inside the span.
pub struct JsonSpanFields;

impl<S> FormatEvent<S, JsonSpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // Events bridged from the `log` crate carry their real target in `log.*` fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        // Each thread keeps its line's buffer between lines (taken, so a line logged while one
        // is written gets a buffer of its own).
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let mut line = LINE.with_borrow_mut(std::mem::take);
        line.clear();
        line.push_str("{\"timestamp\":\"");
        timestamp(&mut line);
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push_str("\",\"fields\":{");
        event.record(&mut Members::new(&mut line, false));
        line.push_str("},\"target\":");
        push_json_str(&mut line, meta.target());
        // The request being handled; outside one, the current span (a span of a caller's own).
        if !request::push_json(&mut line) {
            let span = event
                .parent()
                .and_then(|id| ctx.span(id))
                .or_else(|| ctx.lookup_current());
            if let Some(span) = span {
                line.push_str(",\"span\":{");
                if let Some(stored) = span.extensions().get::<FormattedFields<JsonSpanFields>>() {
                    let members = members_of(&stored.fields);
                    if !members.is_empty() {
                        line.push_str(members);
                        line.push(',');
                    }
                }
                line.push_str("\"name\":");
                push_json_str(&mut line, span.name());
                line.push('}');
            }
        }
        line.push_str("}\n");
        let written = writer.write_str(&line);
        // An outsized line's buffer is not kept.
        if line.capacity() <= 4096 {
            LINE.with_borrow_mut(|kept| *kept = line);
        }
        written
    }
}

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut object = String::from("{");
        fields.record(&mut Members::new(&mut object, true));
        object.push('}');
        writer.write_str(&object)
    }

    /// Fields recorded after the span was created join its object (a field recorded again
    /// appears twice; a JSON reader takes the later value).
    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut added = String::new();
        fields.record(&mut Members::new(&mut added, true));
        if added.is_empty() {
            return Ok(());
        }
        let kept = members_of(&current.fields).to_string();
        current.fields = if kept.is_empty() {
            format!("{{{added}}}")
        } else {
            format!("{{{kept},{added}}}")
        };
        Ok(())
    }
}

/// The members of a stored JSON object, without its braces.
fn members_of(object: &str) -> &str {
    object
        .strip_prefix('{')
        .and_then(|o| o.strip_suffix('}'))
        .unwrap_or("")
}

/// Writes fields as JSON object members (`"name":value`, comma-separated) as `serde_json` would
/// write them: strings escaped, `Debug` and `Display` values as strings, numbers as numbers (a
/// float that is not finite as `null`), bytes as an array.
struct Members<'a> {
    out: &'a mut String,
    first: bool,
    /// Leave out the `log.*` fields of events bridged from the `log` crate (a span's fields).
    skip_log: bool,
}

impl<'a> Members<'a> {
    fn new(out: &'a mut String, skip_log: bool) -> Members<'a> {
        Members {
            out,
            first: true,
            skip_log,
        }
    }

    /// Starts a member; false when the field is left out.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.skip_log && name.starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        push_json_str(self.out, name.strip_prefix("r#").unwrap_or(name));
        self.out.push(':');
        true
    }
}

impl Visit for Members<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                // `{:?}` writes a float as `serde_json` does (`1.0`, `0.25`, `1e-7`).
                let _ = write!(self.out, "{value:?}");
            } else {
                self.out.push_str("null");
            }
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            push_json_str(self.out, value);
        }
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        if self.key(field) {
            self.out
                .push_str(&serde_json::to_string(value).unwrap_or_default());
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            push_json_fmt(self.out, format_args!("{value}"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.key(field) {
            push_json_fmt(self.out, format_args!("{value:?}"));
        }
    }
}

/// Appends the current UTC time as RFC 3339 with microseconds (`2026-12-03T04:35:00.123456Z`,
/// as `tracing-subscriber` writes it). Each thread keeps the text of the current second.
fn timestamp(out: &mut String) {
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = time::OffsetDateTime::now_utc();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != now.unix_timestamp() {
            *at = now.unix_timestamp();
            text.clear();
            let _ = write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            );
        }
        out.push_str(text);
    });
    let _ = write!(out, ".{:06}Z", now.microsecond());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    pub(super) struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Capture {
        /// Everything written so far.
        pub(super) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[derive(Debug)]
    #[allow(dead_code)] // read through `Debug`
    struct Thing {
        name: &'static str,
        n: u32,
    }

    /// Every kind of field, in and out of spans, a span field recorded late, text that needs
    /// escaping.
    fn events() {
        tracing::info!("outside any span");
        let span = tracing::info_span!(
            "request",
            request_id = "r-1",
            method = "POST",
            late = tracing::field::Empty
        );
        let _entered = span.enter();
        tracing::info!(
            tenant = "alpha",
            outcome = "hit",
            elapsed_ms = 0.25,
            whole = 1.0,
            small = 1e-7,
            count = 3u64,
            delta = -4i64,
            ok = true,
            thing = ?Thing { name: "x\"y", n: 2 },
            shown = %"a\nb",
            "embed-url request"
        );
        span.record("late", 42u64);
        let err = std::io::Error::other("disk \"full\"");
        tracing::warn!(
            error = &err as &(dyn std::error::Error + 'static),
            r#type = "t",
            "after {} record",
            "a late"
        );
        let inner = tracing::debug_span!("inner", tenant = "beta");
        inner.in_scope(|| tracing::error!(nan = f64::NAN, "\u{1}control"));
        // A record of the `log` crate (actix-web logs through it), as the bridge passes it on.
        tracing_log::format_trace(
            &log::Record::builder()
                .args(format_args!("from the log crate"))
                .level(log::Level::Info)
                .target("actix_server::builder")
                .module_path_static(Some("actix_server::builder"))
                .file_static(Some("builder.rs"))
                .line(Some(7))
                .build(),
        )
        .unwrap();
    }

    fn lines(capture: &Capture) -> Vec<serde_json::Value> {
        capture
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The lines read as `tracing-subscriber`'s own JSON format's lines do, member for member
    /// (the timestamp apart, which is checked for its form).
    #[test]
    fn log_lines_read_as_the_stock_json_format_writes_them() {
        let ours = Capture::default();
        let theirs = Capture::default();
        let subscriber = fmt()
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .with_writer(ours.clone())
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let stock = fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(theirs.clone())
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(stock, events);

        let (mut ours, mut theirs) = (lines(&ours), lines(&theirs));
        assert_eq!(ours.len(), 5);
        for line in ours.iter_mut().chain(theirs.iter_mut()) {
            let at = line
                .as_object_mut()
                .unwrap()
                .remove("timestamp")
                .expect("a timestamp");
            let at = at.as_str().unwrap();
            assert_eq!(at.len(), "2026-12-03T04:35:00.123456Z".len(), "{at}");
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{e}: {at}"));
        }
        assert_eq!(ours, theirs);
        assert_eq!(ours[1]["span"]["request_id"], "r-1");
        assert_eq!(
            ours[2]["span"]["late"], 42,
            "a field recorded late joins the span"
        );
        assert_eq!(ours[3]["span"]["name"], "inner");
        assert_eq!(
            ours[4]["target"], "actix_server::builder",
            "a log record's own target"
        );
    }

    fn dashboard_request(id: &str) -> request::RequestFields {
        request::RequestFields {
            id: request::RequestId::named(id),
            method: "POST".into(),
            route: "/v1/embed-url/dashboard".into(),
        }
    }

    /// Lines as a request's handler logs them.
    fn handled() {
        tracing::info!(tenant = "alpha", outcome = "hit", "embed-url request");
        tracing::warn!(upstream_code = "Throttling", "QuickSight refused the call");
    }

    /// `handled` inside the `request` span the gateway opened for each request until
    /// 2026-12-04, then once outside it.
    fn handled_in_the_old_span() {
        tracing::info_span!(
            "request",
            request_id = %"r-7",
            method = %"POST",
            route = "/v1/embed-url/dashboard"
        )
        .in_scope(handled);
        handled();
    }

    /// The request being handled is written as the stock formats write the `request` span that
    /// carried it before: member for member in JSON, character for character (the timestamp
    /// apart) in the human-readable format. Outside a request there is no span.
    #[tokio::test]
    async fn lines_logged_while_a_request_is_handled_name_it_as_its_span_did() {
        async fn ours<S: Subscriber + Send + Sync + 'static>(subscriber: S) {
            let _default = tracing::subscriber::set_default(subscriber);
            request::scope(dashboard_request("r-7"), async { handled() }).await;
            handled();
        }
        let (json, stock_json) = (Capture::default(), Capture::default());
        ours(
            fmt()
                .fmt_fields(JsonSpanFields)
                .event_format(JsonLines)
                .with_writer(json.clone())
                .finish(),
        )
        .await;
        let stock = fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(stock_json.clone())
            .finish();
        tracing::subscriber::with_default(stock, handled_in_the_old_span);
        let strip = |capture: &Capture| -> Vec<serde_json::Value> {
            let mut lines = lines(capture);
            for l in &mut lines {
                l.as_object_mut().unwrap().remove("timestamp");
            }
            lines
        };
        let ours_json = strip(&json);
        assert_eq!(ours_json.len(), 4);
        assert_eq!(ours_json, strip(&stock_json));
        assert_eq!(ours_json[0]["span"]["request_id"], "r-7");
        assert_eq!(ours_json[1]["span"]["route"], "/v1/embed-url/dashboard");
        assert!(ours_json[2].get("span").is_none(), "{}", ours_json[2]);

        let (text, stock_text) = (Capture::default(), Capture::default());
        ours(
            fmt()
                .with_ansi(false)
                .event_format(PrettyLines::default())
                .with_writer(text.clone())
                .finish(),
        )
        .await;
        let stock = fmt()
            .with_target(false)
            .with_ansi(false)
            .with_writer(stock_text.clone())
            .finish();
        tracing::subscriber::with_default(stock, handled_in_the_old_span);
        let stamp = "2026-12-04T01:12:45.123456Z".len();
        let strip = |capture: &Capture| -> Vec<String> {
            capture
                .text()
                .lines()
                .map(|l| {
                    let (at, rest) = l.split_at(stamp);
                    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                        .unwrap_or_else(|e| panic!("{e}: {l}"));
                    rest.to_owned()
                })
                .collect()
        };
        let ours_text = strip(&text);
        assert_eq!(ours_text, strip(&stock_text));
        assert_eq!(
            ours_text[0],
            "  INFO request{request_id=r-7 method=POST route=\"/v1/embed-url/dashboard\"}: \
             embed-url request tenant=\"alpha\" outcome=\"hit\""
        );
    }

    /// Requests whose handling interleaves on one thread (as an actix worker's do) each log
    /// under their own id, and a task outside any request under none.
    #[tokio::test]
    async fn interleaved_requests_each_log_under_their_own_id() {
        let capture = Capture::default();
        let _default = tracing::subscriber::set_default(
            fmt()
                .fmt_fields(JsonSpanFields)
                .event_format(JsonLines)
                .with_writer(capture.clone())
                .finish(),
        );
        let handling = |id: &'static str| {
            request::scope(dashboard_request(id), async move {
                for step in 0..3 {
                    tracing::info!(step, expected = id, "step");
                    tokio::task::yield_now().await;
                }
                assert_eq!(request::id().as_deref(), Some(id));
            })
        };
        tokio::join!(handling("r-a"), handling("r-b"), async {
            tokio::task::yield_now().await;
            tracing::info!(expected = "none", "outside");
        });
        assert_eq!(request::id(), None, "nothing is left set after a request");
        let lines = lines(&capture);
        assert_eq!(lines.len(), 7);
        let order: Vec<&str> = lines
            .iter()
            .map(|l| l["fields"]["expected"].as_str().unwrap())
            .collect();
        assert_ne!(
            order,
            ["r-a", "r-a", "r-a", "r-b", "r-b", "r-b", "none"],
            "the requests interleaved"
        );
        for l in &lines {
            let id = l
                .get("span")
                .map_or("none", |s| s["request_id"].as_str().unwrap());
            assert_eq!(id, l["fields"]["expected"], "{l}");
        }
    }

    /// At `warn`, where the request span was never opened (so a warning carried no request
    /// id), a warning logged while a request is handled carries its id.
    #[tokio::test]
    async fn at_warn_a_warning_still_names_its_request() {
        use tracing_subscriber::layer::SubscriberExt;
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(filter("warn")).with(
            fmt::layer()
                .fmt_fields(JsonSpanFields)
                .event_format(JsonLines)
                .with_writer(capture.clone()),
        );
        let _default = tracing::subscriber::set_default(subscriber);
        request::scope(dashboard_request("r-3"), async { handled() }).await;
        let lines = lines(&capture);
        assert_eq!(lines.len(), 1, "only the warning");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["span"]["request_id"], "r-3");
    }

    /// The README's way to keep `info` but leave out the line every request logs: a warning
    /// logged while a request is handled still carries its id.
    #[tokio::test]
    async fn a_directive_drops_the_per_request_line_and_keeps_everything_else() {
        use tracing_subscriber::layer::SubscriberExt;
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter("info,embedgate::api::embed=warn"))
            .with(
                fmt::layer()
                    .fmt_fields(JsonSpanFields)
                    .event_format(JsonLines)
                    .with_writer(capture.clone()),
            );
        let _default = tracing::subscriber::set_default(subscriber);
        tracing::info!(target: "embedgate::startup", "listening");
        request::scope(dashboard_request("r-9"), async {
            tracing::info!(target: "embedgate::api::embed", outcome = "hit", "embed-url request");
            tracing::warn!(target: "embedgate::api::embed", "QuickSight refused the call");
        })
        .await;
        let lines = lines(&capture);
        let messages: Vec<&str> = lines
            .iter()
            .map(|l| l["fields"]["message"].as_str().unwrap())
            .collect();
        assert_eq!(messages, ["listening", "QuickSight refused the call"]);
        assert_eq!(lines[1]["span"]["request_id"], "r-9");
    }

    #[test]
    fn sdk_and_http_crates_stay_at_info_even_at_trace() {
        let f = filter("trace").to_string();
        for c in CAPPED {
            assert!(f.contains(&format!("{c}=info")), "{c} capped: {f}");
        }
        assert!(f.split(',').any(|d| d == "trace"), "{f}");
    }

    #[test]
    fn the_redis_clients_retry_warnings_are_off_unless_the_filter_names_it() {
        let has = |level: &str, directive: &str| {
            filter(level).to_string().split(',').any(|d| d == directive)
        };
        assert!(has("info", "redis=error"));
        assert!(has("debug,embedgate=trace", "redis=error"));
        assert!(!has("info,redis=warn", "redis=error"));
        assert!(has("info,redis=warn", "redis=warn"));
        // A target that only starts with the name is another crate.
        assert!(has("info,redis_extra=debug", "redis=error"));
    }
}
