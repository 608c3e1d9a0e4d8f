//! The effective configuration as text, and the scalars of the format (sizes, durations).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use toml::Value;

use super::*;
use crate::time::Span;

impl Config {
    /// The effective configuration as TOML, every key, in the order of `config/creditflow.toml`.
    /// Secrets (`nats.token`, `nats.password`) are printed as [`REDACTED`], so the text is for
    /// reading; with no secret set it loads back to an equal `Config`.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let nats = &self.nats;
        let (mut token, mut user, mut password, mut nkey, mut creds) =
            (String::new(), String::new(), String::new(), None, None);
        match &nats.auth {
            NatsAuth::None => {}
            NatsAuth::Token(_) => token = REDACTED.to_string(),
            NatsAuth::UserPassword { user: name, .. } => {
                user = name.clone();
                password = REDACTED.to_string();
            }
            NatsAuth::NkeySeedFile(path) => nkey = Some(path.clone()),
            NatsAuth::CredsFile(path) => creds = Some(path.clone()),
        }
        let urls = Value::Array(nats.urls.iter().cloned().map(Value::String).collect());
        write_section(
            &mut out,
            "nats",
            &[
                ("urls", urls),
                ("name", string(&nats.name)),
                ("token", Value::String(token)),
                ("user", Value::String(user)),
                ("password", Value::String(password)),
                ("nkey_seed_file", path_value(nkey.as_deref())),
                ("creds_file", path_value(creds.as_deref())),
                ("tls_required", Value::Boolean(nats.tls_required)),
                ("tls_ca_file", path_value(nats.tls_ca_file.as_deref())),
                ("tls_cert_file", path_value(nats.tls_cert_file.as_deref())),
                ("tls_key_file", path_value(nats.tls_key_file.as_deref())),
                ("connect_timeout", duration_value(nats.connect_timeout)),
                ("request_timeout", duration_value(nats.request_timeout)),
                (
                    "reconnect_delay_max",
                    duration_value(nats.reconnect_delay_max),
                ),
            ],
        );
        let input = &self.input;
        write_section(
            &mut out,
            "input",
            &[
                ("stream", string(&input.stream)),
                ("subject_prefix", string(&input.subject_prefix)),
                ("replicas", count_value(input.replicas)),
                ("storage", string(input.storage.name())),
                (
                    "allow_memory_storage",
                    Value::Boolean(input.allow_memory_storage),
                ),
                ("max_age", duration_value(input.max_age)),
                ("max_bytes", size_value(input.max_bytes)),
                ("max_msgs", count_value(input.max_msgs)),
                ("duplicate_window", duration_value(input.duplicate_window)),
                ("discard", string(input.discard.name())),
                ("allow_discard_old", Value::Boolean(input.allow_discard_old)),
                ("fetch_batch_max", count_value(input.fetch_batch_max)),
                ("fetch_bytes_max", size_value(input.fetch_bytes_max)),
                ("stall_timeout", duration_value(input.stall_timeout)),
            ],
        );
        let output = &self.output;
        write_section(
            &mut out,
            "output",
            &[
                ("stream", string(&output.stream)),
                ("subject_prefix", string(&output.subject_prefix)),
                ("replicas", count_value(output.replicas)),
                ("storage", string(output.storage.name())),
                (
                    "allow_memory_storage",
                    Value::Boolean(output.allow_memory_storage),
                ),
                ("max_age", duration_value(output.max_age)),
                ("max_bytes", size_value(output.max_bytes)),
                ("max_msgs", count_value(output.max_msgs)),
                ("duplicate_window", duration_value(output.duplicate_window)),
                ("publish_window", count_value(output.publish_window)),
                (
                    "publish_retry_backoff_max",
                    duration_value(output.publish_retry_backoff_max),
                ),
            ],
        );
        let engine = &self.engine;
        write_section(
            &mut out,
            "engine",
            &[
                ("catalog", path_value(Some(&engine.catalog))),
                ("partitions", count_value(engine.partitions)),
                ("shards", count_value(engine.shards)),
                ("queue_batches_max", count_value(engine.queue_batches_max)),
                ("batch_size_max", count_value(engine.batch_size_max)),
                ("huge_pages", Value::Boolean(engine.huge_pages)),
                (
                    "tick_interval",
                    duration_value(engine.tick_interval.unwrap_or(Duration::ZERO)),
                ),
            ],
        );
        let snapshot = &self.snapshot;
        write_section(
            &mut out,
            "snapshot",
            &[
                ("dir", path_value(Some(&snapshot.dir))),
                ("interval_events", count_value(snapshot.interval_events)),
                ("interval", duration_value(snapshot.interval)),
                ("keep", count_value(snapshot.keep)),
                ("failures_unready", count_value(snapshot.failures_unready)),
                ("deltas_max", count_value(snapshot.deltas_max)),
                ("fold_percent", count_value(snapshot.fold_percent)),
                (
                    "object_store",
                    string(snapshot.object_store.as_deref().unwrap_or("")),
                ),
            ],
        );
        write_section(
            &mut out,
            "lease",
            &[
                ("bucket", string(&self.lease.bucket)),
                ("ttl", duration_value(self.lease.ttl)),
            ],
        );
        write_section(
            &mut out,
            "cluster",
            &[("enabled", Value::Boolean(self.cluster.enabled))],
        );
        let service = &self.service;
        write_section(
            &mut out,
            "service",
            &[
                ("enabled", Value::Boolean(service.enabled)),
                ("subject_prefix", string(&service.subject_prefix)),
                ("queue_group", string(&service.queue_group)),
                ("questions_max", count_value(service.questions_max)),
                ("wait_max", duration_value(service.wait_max)),
                ("results_max", count_value(service.results_max)),
                (
                    "statement_entries_max",
                    count_value(service.statement_entries_max),
                ),
            ],
        );
        let listen = self
            .metrics
            .listen
            .map_or_else(String::new, |address| address.to_string());
        let token = if self.metrics.token.is_some() {
            REDACTED.to_string()
        } else {
            String::new()
        };
        write_section(
            &mut out,
            "metrics",
            &[
                ("listen", Value::String(listen)),
                ("api", Value::Boolean(self.metrics.api)),
                ("token", Value::String(token)),
            ],
        );
        write_section(
            &mut out,
            "log",
            &[
                ("format", string(self.log.format.name())),
                ("level", string(&self.log.level)),
            ],
        );
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn write_section(out: &mut String, name: &str, entries: &[(&str, Value)]) {
    if !out.is_empty() {
        out.push('\n');
    }
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "[{name}]");
    for (key, value) in entries {
        let _ = writeln!(out, "{key} = {value}");
    }
}

pub(super) fn string(text: &str) -> Value {
    Value::String(text.to_string())
}

fn path_value(path: Option<&Path>) -> Value {
    Value::String(path.map_or_else(String::new, |p| p.display().to_string()))
}

fn count_value(count: impl TryInto<i64>) -> Value {
    // Every count was range-checked into i64 at load; a wider one is a programmer error.
    match count.try_into() {
        Ok(count) => Value::Integer(count),
        Err(_) => panic!("a config count does not fit in i64"),
    }
}

fn duration_value(duration: Duration) -> Value {
    Value::String(format_duration(duration))
}

fn size_value(bytes: u64) -> Value {
    let text = format_size(bytes);
    match text.parse::<i64>() {
        Ok(plain) => Value::Integer(plain),
        Err(_) => Value::String(text),
    }
}

/// The shortest exact spelling of `duration` in the units [`Span`] parses (whole milliseconds;
/// anything finer is dropped, and the config never holds finer).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0".to_string();
    }
    for (unit, factor) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis % factor == 0 {
            return format!("{}{unit}", millis / factor);
        }
    }
    format!("{millis}ms")
}

/// The shortest exact spelling of a byte size: `"64MiB"`, or a plain number of bytes.
pub fn format_size(bytes: u64) -> String {
    for (unit, factor) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= factor && bytes % factor == 0 {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

// ---------------------------------------------------------------------------------------------
// Parsing scalars

/// A text that is not a byte size.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a byte size: write an integer (bytes) or a whole number with a unit B, KB, MB, GB, TB \
     (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. \"64MiB\""
)]
pub struct SizeParseError;

/// `"1024"`, `"64MiB"`, `"100GiB"`, `"5 GB"`. Units are case-sensitive (`mb` would be millibits
/// to some readers); overflow of u64 is an error.
pub fn parse_size(text: &str) -> Result<u64, SizeParseError> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(SizeParseError);
    }
    let number: u64 = text[..digits].parse().map_err(|_| SizeParseError)?;
    let factor: u64 = match text[digits..].trim_start() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(SizeParseError),
    };
    number.checked_mul(factor).ok_or(SizeParseError)
}

/// A duration in the syntax of [`Span`] (`"250ms"`, `"10s"`, `"1h30m"`, `"30d"`, `"0"`).
pub fn parse_duration(text: &str) -> Result<Duration, crate::time::SpanParseError> {
    text.parse::<Span>().map(span_duration)
}

pub(super) fn span_duration(span: Span) -> Duration {
    // Spans parsed from text are never negative; a negative rule span would be refused by the
    // catalog loader, so zero is only a safe floor here.
    Duration::from_millis(u64::try_from(span.0).unwrap_or(0))
}
