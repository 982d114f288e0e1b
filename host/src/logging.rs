//! The node's logs: Fabric's log format (flogging's default console
//! format) or JSON lines (zap's production encoder, as Fabric writes them
//! with `FABRIC_LOGGING_FORMAT=json`), and Fabric's log specification
//! syntax (`info:consenter_host::chain=debug`), changeable while the node
//! runs (the operations endpoint's `/logspec`, through a reloadable
//! `tracing` filter).
//!
//! Every line about a chain carries its channel: the `channel` field the
//! chain code logs, else the channel of the chain's own thread
//! (`chain-<channel>`, `ledger-<channel>`). Writes to stderr, one
//! `write` per line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Fabric's console format:
    /// `2006-01-02 15:04:05.000 UTC 0001 INFO [module] file.rs:12 -> message key=value`
    /// (flogging's `%{color}%{time:2006-01-02 15:04:05.000 MST} %{id:04x}
    /// %{level:.4s}%{color:reset} [%{module}] %{color:bold}%{shortfunc}%{color:reset}
    /// -> %{message}`, with the source position for the Go function
    /// name, and the fields in logfmt after the message).
    #[default]
    Fabric,
    /// One JSON object per line: `level`, `ts` (Unix seconds), `name`,
    /// `caller`, `msg`, then the fields.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fabric" | "console" | "" => Ok(LogFormat::Fabric),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: expected fabric or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Fabric => "fabric",
            LogFormat::Json => "json",
        })
    }
}

/// A log specification that is not valid (Fabric's texts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogSpecError {
    /// A segment that is neither a level nor `logger[,logger]=level`.
    #[error("invalid logging specification '{spec}': bad segment '{segment}'")]
    BadSegment {
        /// The spec.
        spec: String,
        /// The segment.
        segment: String,
    },
    /// `=level` with no logger.
    #[error("invalid logging specification '{spec}': no logger specified in segment '{segment}'")]
    NoLogger {
        /// The spec.
        spec: String,
        /// The segment.
        segment: String,
    },
    /// A logger name with characters Fabric does not allow.
    #[error("invalid logging specification '{spec}': bad logger name '{logger}'")]
    BadLogger {
        /// The spec.
        spec: String,
        /// The logger name.
        logger: String,
    },
    /// The filter built from a spec was refused by `tracing`.
    #[error("logging specification '{spec}': {reason}")]
    Filter {
        /// The spec.
        spec: String,
        /// What `tracing` said.
        reason: String,
    },
    /// The filter could not be swapped in (the subscriber is gone).
    #[error("changing the log filter: {0}")]
    Reload(String),
}

/// A parsed log specification: a default level and levels by logger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// Level of loggers without their own.
    pub default: &'static str,
    /// Level by logger (a module path prefix, e.g. `consenter_host::chain`).
    pub loggers: BTreeMap<String, &'static str>,
}

fn level_name(s: &str) -> Option<&'static str> {
    Some(match s.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        _ => return None,
    })
}

/// Splits a spec at its `:` separators; a `::` belongs to a module path.
fn segments(spec: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' {
            if chars.peek() == Some(&':') {
                chars.next();
                if let Some(s) = out.last_mut() {
                    s.push_str("::");
                }
                continue;
            }
            out.push(String::new());
        } else if let Some(s) = out.last_mut() {
            s.push(c);
        }
    }
    out
}

fn valid_logger(name: &str) -> bool {
    !name.is_empty()
        && name
            .split("::")
            .flat_map(|p| p.split('.'))
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '#' | '-')))
}

impl LogSpec {
    /// Parses Fabric's syntax: `:`-separated segments, each a level
    /// (the default) or `logger[,logger...]=level`. Loggers are module
    /// paths (`consenter_host::chain`; Fabric's dotted form
    /// `consenter_host.chain` means the same). An empty spec is `info`.
    pub fn parse(spec: &str) -> Result<LogSpec, LogSpecError> {
        let mut default = "info";
        let mut loggers = BTreeMap::new();
        for seg in segments(spec) {
            match seg.split('=').collect::<Vec<_>>()[..] {
                [""] => {}
                [level] => {
                    default = level_name(level)
                        .ok_or_else(|| LogSpecError::BadSegment { spec: spec.to_string(), segment: seg.clone() })?
                }
                [names, level] => {
                    if names.is_empty() {
                        return Err(LogSpecError::NoLogger { spec: spec.into(), segment: seg.clone() });
                    }
                    let level = level_name(level)
                        .ok_or_else(|| LogSpecError::BadSegment { spec: spec.into(), segment: seg.clone() })?;
                    for name in names.split(',') {
                        let trimmed = name.trim_end_matches('.');
                        if !valid_logger(trimmed) {
                            return Err(LogSpecError::BadLogger { spec: spec.into(), logger: name.into() });
                        }
                        loggers.insert(trimmed.replace('.', "::"), level);
                    }
                }
                _ => return Err(LogSpecError::BadSegment { spec: spec.into(), segment: seg.clone() }),
            }
        }
        Ok(LogSpec { default, loggers })
    }

    /// The spec as Fabric prints it: `logger=level` sorted, then the
    /// default level, `:`-separated.
    pub fn to_spec_string(&self) -> String {
        let mut parts: Vec<String> = self.loggers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(self.default.to_string());
        parts.join(":")
    }

    /// The `tracing` filter directives of the spec.
    pub fn directives(&self) -> String {
        let mut d = vec![self.default.to_string()];
        d.extend(self.loggers.iter().map(|(k, v)| format!("{k}={v}")));
        d.join(",")
    }

    fn filter(&self, spec: &str) -> Result<EnvFilter, LogSpecError> {
        EnvFilter::try_new(self.directives())
            .map_err(|e| LogSpecError::Filter { spec: spec.to_string(), reason: e.to_string() })
    }
}

/// Changes what is logged while the node runs; cloning shares it.
#[derive(Clone)]
pub struct LogControl {
    reload: reload::Handle<EnvFilter, Registry>,
    spec: Arc<Mutex<String>>,
}

impl LogControl {
    /// The active spec (Fabric's normalized form).
    pub fn spec(&self) -> String {
        self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Activates a spec in Fabric's syntax; nothing changes if it is not
    /// valid.
    pub fn activate(&self, spec: &str) -> Result<(), LogSpecError> {
        let parsed = LogSpec::parse(spec)?;
        let filter = parsed.filter(spec)?;
        self.reload.reload(filter).map_err(|e| LogSpecError::Reload(e.to_string()))?;
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = parsed.to_spec_string();
        tracing::info!(spec = %parsed.to_spec_string(), "log spec changed");
        Ok(())
    }
}

/// Installs the process's subscriber: `format` on stderr (colored when
/// `color`), filtered by `spec` (Fabric's syntax), or by `raw_directives`
/// (`RUST_LOG`'s syntax) when given. Returns the handle that changes the
/// spec later.
pub fn init(
    format: LogFormat,
    spec: &str,
    raw_directives: Option<&str>,
    color: bool,
) -> Result<LogControl, LogSpecError> {
    let (filter, shown) = match raw_directives {
        Some(d) => (
            EnvFilter::try_new(d).map_err(|e| LogSpecError::Filter { spec: d.to_string(), reason: e.to_string() })?,
            d.to_string(),
        ),
        None => {
            let parsed = LogSpec::parse(spec)?;
            (parsed.filter(spec)?, parsed.to_spec_string())
        }
    };
    let (filter, reload) = reload::Layer::new(filter);
    let layer = FabricLayer { format, color: color && format == LogFormat::Fabric, seq: AtomicU64::new(0) };
    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
    Ok(LogControl { reload, spec: Arc::new(Mutex::new(shown)) })
}

/// A field's value as recorded.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl Fields {
    fn set(&mut self, name: &'static str, v: Value) {
        if name == "message" {
            self.message = Some(match v {
                Value::Str(s) => s,
                Value::I64(n) => n.to_string(),
                Value::U64(n) => n.to_string(),
                Value::F64(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
            });
            return;
        }
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((name, v)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), Value::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), Value::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), Value::Str(value.to_string()));
    }
}

/// Span fields, kept in the span's extensions.
struct SpanFields(Vec<(&'static str, Value)>);

struct FabricLayer {
    format: LogFormat,
    color: bool,
    seq: AtomicU64,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for FabricLayer {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(f.fields));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let mut f = Fields { message: None, fields: ext.remove::<SpanFields>().map(|s| s.0).unwrap_or_default() };
        values.record(&mut f);
        ext.insert(SpanFields(f.fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        // Span fields first (outermost first), the event's own win.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(sf) = span.extensions().get::<SpanFields>() {
                    for (n, v) in &sf.0 {
                        f.set(n, v.clone());
                    }
                }
            }
        }
        event.record(&mut f);
        if !f.fields.iter().any(|(n, _)| *n == "channel")
            && let Some(ch) = thread_channel()
        {
            f.fields.insert(0, ("channel", Value::Str(ch)));
        }
        let meta = event.metadata();
        let now = SystemTime::now();
        let line = match self.format {
            LogFormat::Fabric => {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                fabric_line(now, seq, *meta.level(), meta.target(), caller(meta), &f, self.color)
            }
            LogFormat::Json => json_line(now, *meta.level(), meta.target(), caller(meta), &f),
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// The channel of a chain's own threads (`chain-<channel>`,
/// `ledger-<channel>`).
fn thread_channel() -> Option<String> {
    let t = std::thread::current();
    let name = t.name()?;
    name.strip_prefix("chain-").or_else(|| name.strip_prefix("ledger-")).map(str::to_string)
}

/// `dir/file.rs:line` of the call (zap's short caller).
fn caller(meta: &tracing::Metadata<'_>) -> String {
    let file = meta.file().unwrap_or("?");
    let mut parts = file.rsplit(['/', '\\']);
    let base = parts.next().unwrap_or(file);
    let short = match parts.next() {
        Some(dir) => format!("{dir}/{base}"),
        None => base.to_string(),
    };
    match meta.line() {
        Some(l) => format!("{short}:{l}"),
        None => short,
    }
}

/// A civil UTC time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    milli: u32,
    /// Seconds since the epoch, with their fraction.
    unix: f64,
}

/// The civil UTC time of `t`.
fn civil(t: SystemTime) -> Civil {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: sod / 3600,
        minute: sod / 60 % 60,
        second: sod % 60,
        milli: d.subsec_millis(),
        unix: d.as_secs_f64(),
    }
}

/// RFC 3339 UTC time with nanoseconds, as Go's `time.Time` marshals to
/// JSON (e.g. `2024-05-01T12:00:00.123456789Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let Civil { year: y, month: mo, day: d, hour: h, minute: mi, second: s, .. } = civil(t);
    let nanos = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let frac = if nanos == 0 { String::new() } else { format!(".{nanos:09}").trim_end_matches('0').to_string() };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z")
}

fn level_color(l: Level) -> u8 {
    match l {
        Level::TRACE | Level::DEBUG => 36,
        Level::INFO => 34,
        Level::WARN => 33,
        Level::ERROR => 31,
    }
}

fn level_caps(l: Level) -> &'static str {
    match l {
        Level::TRACE => "TRAC",
        Level::DEBUG => "DEBU",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERRO",
    }
}

/// A logfmt value: bare if it needs no quoting, else a quoted string.
fn logfmt(out: &mut String, v: &Value) {
    match v {
        Value::Str(s) => {
            let bare = !s.is_empty() && s.chars().all(|c| c > ' ' && c != '"' && c != '=' && c != '\u{7f}');
            if bare {
                out.push_str(s);
            } else {
                let _ = write!(out, "{s:?}");
            }
        }
        Value::I64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
    }
}

fn fabric_line(
    now: SystemTime,
    seq: u64,
    level: Level,
    target: &str,
    caller: String,
    f: &Fields,
    color: bool,
) -> String {
    let Civil { year: y, month: mo, day: d, hour: h, minute: mi, second: s, milli: ms, .. } = civil(now);
    let mut out = String::with_capacity(160);
    let c = level_color(level);
    if color {
        let _ = write!(out, "\x1b[{c}m");
    }
    let _ = write!(out, "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{ms:03} UTC {seq:04x} {}", level_caps(level));
    if color {
        out.push_str("\x1b[0m");
    }
    let _ = write!(out, " [{target}] ");
    if color {
        let _ = write!(out, "\x1b[{c};1m{caller}\x1b[0m");
    } else {
        out.push_str(&caller);
    }
    out.push_str(" -> ");
    out.push_str(f.message.as_deref().unwrap_or("").trim_end_matches('\n'));
    for (n, v) in &f.fields {
        let _ = write!(out, " {n}=");
        logfmt(&mut out, v);
    }
    out.push('\n');
    out
}

fn json_line(now: SystemTime, level: Level, target: &str, caller: String, f: &Fields) -> String {
    let ts = civil(now).unix;
    let mut m = serde_json::Map::new();
    let level = match level {
        Level::TRACE | Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    };
    m.insert("level".into(), level.into());
    m.insert("ts".into(), serde_json::Number::from_f64(ts).map_or(serde_json::Value::Null, Into::into));
    m.insert("name".into(), target.into());
    m.insert("caller".into(), caller.into());
    m.insert("msg".into(), f.message.clone().unwrap_or_default().into());
    for (n, v) in &f.fields {
        let v = match v {
            Value::Str(s) => s.clone().into(),
            Value::I64(n) => (*n).into(),
            Value::U64(n) => (*n).into(),
            Value::F64(n) => serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into),
            Value::Bool(b) => (*b).into(),
        };
        m.insert((*n).to_string(), v);
    }
    let mut line = serde_json::Value::Object(m).to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fabric_spec_syntax() {
        let s = LogSpec::parse("info:consenter_host::chain=debug").unwrap();
        assert_eq!(s.default, "info");
        assert_eq!(s.loggers["consenter_host::chain"], "debug");
        assert_eq!(s.to_spec_string(), "consenter_host::chain=debug:info");
        assert_eq!(s.directives(), "info,consenter_host::chain=debug");
        // Fabric's dotted names, several loggers, the default last or first.
        let s = LogSpec::parse("consenter_host.grpc,tonic=warning:debug").unwrap();
        assert_eq!(s.to_spec_string(), "consenter_host::grpc=warn:tonic=warn:debug");
        assert_eq!(LogSpec::parse("").unwrap().to_spec_string(), "info");
        assert_eq!(
            LogSpec::parse("info:chatty").unwrap_err().to_string(),
            "invalid logging specification 'info:chatty': bad segment 'chatty'"
        );
        assert_eq!(
            LogSpec::parse("=debug").unwrap_err().to_string(),
            "invalid logging specification '=debug': no logger specified in segment '=debug'"
        );
        assert!(matches!(LogSpec::parse("a b=debug"), Err(LogSpecError::BadLogger { .. })));
        assert!(matches!(LogSpec::parse("a=b=c"), Err(LogSpecError::BadSegment { .. })));
    }

    #[test]
    fn times() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_714_564_800, 123_000_000);
        assert_eq!(rfc3339(t), "2024-05-01T12:00:00.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let c = civil(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400));
        assert_eq!((c.year, c.month, c.day), (2000, 2, 29));
    }

    #[test]
    fn line_formats() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_714_564_800, 5_000_000);
        let mut f = Fields::default();
        f.set("message", Value::Str("chain started".into()));
        f.set("channel", Value::Str("devchannel".into()));
        f.set("height", Value::U64(3));
        f.set("reason", Value::Str("two words".into()));
        let line = fabric_line(t, 26, Level::INFO, "consenter_host::node", "src/node.rs:12".into(), &f, false);
        assert_eq!(
            line,
            "2024-05-01 12:00:00.005 UTC 001a INFO [consenter_host::node] src/node.rs:12 -> chain started \
             channel=devchannel height=3 reason=\"two words\"\n"
        );
        let colored = fabric_line(t, 1, Level::WARN, "m", "f.rs:1".into(), &f, true);
        assert!(
            colored.starts_with("\x1b[33m2024-05-01 12:00:00.005 UTC 0001 WARN\x1b[0m [m] \x1b[33;1mf.rs:1\x1b[0m -> ")
        );
        let j: serde_json::Value =
            serde_json::from_str(&json_line(t, Level::ERROR, "consenter_host::chain", "chain/actor.rs:9".into(), &f))
                .unwrap();
        assert_eq!(j["level"], "error");
        assert_eq!(j["name"], "consenter_host::chain");
        assert_eq!(j["caller"], "chain/actor.rs:9");
        assert_eq!(j["msg"], "chain started");
        assert_eq!(j["channel"], "devchannel");
        assert_eq!(j["height"], 3);
        assert!((j["ts"].as_f64().unwrap() - 1_714_564_800.005).abs() < 1e-6);
    }
}
