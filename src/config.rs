//! The processor's operational configuration: how `creditflow run` connects to NATS, consumes,
//! publishes, shards, snapshots and reports. What things cost is the catalog, not this.
//!
//! Owns: the config format (documented key by key in `config/creditflow.toml`, which is
//! embedded as the defaults), its three layers (defaults, then the `--config` file, then
//! `CREDITFLOW_<SECTION>_<KEY>` environment variables), its validation, and the effective
//! config's text ([`Config::to_toml`]).
//!
//! Must never: stop at the first error, accept an unknown key or an unknown `CREDITFLOW_`
//! variable (a typo would silently leave a default in place), read the process environment
//! itself (the caller passes it in, so tests are hermetic), or print a secret.
//!
//! How it reports: like the catalog loader, the TOML is parsed into plain tables and walked by
//! hand, because serde's `deny_unknown_fields` stops at the first problem and an operator wants
//! the whole list. Every [`ConfigError`] names its key as `section.key` (`nats.urls`), or the
//! variable's name for an environment variable that names no key; a value that came from the
//! environment says so in its message. Cross-field checks skip keys that already have an error,
//! so one mistake is reported once.
//!
//! Invariants: a [`Config`] comes out of [`load`] only when the error list is empty; it then
//! holds every rule stated on its fields (ranges, pairings, exclusions, files that exist). The
//! embedded defaults load without error (a test checks it), and every key of the defaults is read
//! exactly once by the walk (asserted: a key added to the file but not to the code is a
//! programmer error and crashes every test).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::catalog::Catalog;
use crate::time::Span;

/// The documented defaults: `config/creditflow.toml`, compiled in.
pub const DEFAULTS_TOML: &str = include_str!("../config/creditflow.toml");
/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "CREDITFLOW_";
/// Most partitions: partition ids appear in subjects and metric labels, and each costs a timer
/// heap and a snapshot file.
pub const PARTITIONS_MAX: u32 = 4096;
/// Most stream replicas JetStream allows.
pub const REPLICAS_MAX: usize = 5;
/// Fewest snapshots kept per partition: the newest may be torn by a crash mid-write.
pub const SNAPSHOTS_KEPT_MIN: usize = 2;
/// Longest duration any key accepts: 100 years. JetStream holds durations as signed 64-bit
/// nanoseconds (about 292 years), so anything longer could not be sent to it.
pub const DURATION_MAX: Duration = Duration::from_secs(100 * 365 * 86_400);
/// What [`Config::to_toml`] prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The effective configuration of `creditflow run`. See `config/creditflow.toml` for every key.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub nats: NatsConfig,
    pub input: InputConfig,
    pub output: OutputConfig,
    pub engine: EngineConfig,
    pub snapshot: SnapshotConfig,
    pub service: ServiceConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

/// `[nats]`: the connection shared by input and output (the service opens a second one with
/// the same settings).
#[derive(Clone, Debug, PartialEq)]
pub struct NatsConfig {
    /// Servers, tried in turn; never empty.
    pub urls: Vec<String>,
    /// Client name shown in the server's monitoring; never empty.
    pub name: String,
    /// The one authentication method (from `token`, `user` + `password`, `nkey_seed_file`,
    /// `creds_file`), or none.
    pub auth: NatsAuth,
    /// Refuse a server that does not offer TLS.
    pub tls_required: bool,
    /// PEM roots to trust instead of the system's; exists at load time.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS; set exactly when `tls_key_file` is; exists at load time.
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key; set exactly when `tls_cert_file` is.
    pub tls_key_file: Option<PathBuf>,
    /// Time to establish a connection; > 0.
    pub connect_timeout: Duration,
    /// Time allowed for a request to the server; > 0.
    pub request_timeout: Duration,
    /// Longest wait between reconnect attempts; > 0.
    pub reconnect_delay_max: Duration,
}

/// How the client authenticates. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// Anonymous.
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
    /// A file holding an NKey seed; exists at load time.
    NkeySeedFile(PathBuf),
    /// A `.creds` file (JWT and seed); exists at load time.
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => write!(f, "Token({REDACTED})"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &REDACTED)
                .finish(),
            NatsAuth::NkeySeedFile(path) => f.debug_tuple("NkeySeedFile").field(path).finish(),
            NatsAuth::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
        }
    }
}

/// Where a JetStream stream keeps its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    /// Lost on a server restart; only with `allow_memory_storage = true`.
    Memory,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::File => "file",
            Storage::Memory => "memory",
        }
    }
}

/// What a stream does at a retention limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// Refuse new messages.
    New,
    /// Delete the oldest, consumed or not; only with `allow_discard_old = true`.
    Old,
}

impl Discard {
    pub fn name(self) -> &'static str {
        match self {
            Discard::New => "new",
            Discard::Old => "old",
        }
    }
}

/// `[input]`: the stream of usage events and commands, and its durable pull consumer.
#[derive(Clone, Debug, PartialEq)]
pub struct InputConfig {
    /// Stream name, `[A-Za-z0-9_-]+`, different from the output's.
    pub stream: String,
    /// Partition `p`'s usage events are published on `<subject_prefix>.<p>.usage`, its commands
    /// on `<subject_prefix>.<p>.cmd`, its ticks on `<subject_prefix>.<p>.tick`. NATS tokens, no
    /// wildcards, not overlapping the output's prefix.
    pub subject_prefix: String,
    /// 1..=[`REPLICAS_MAX`].
    pub replicas: usize,
    /// `Memory` only when `allow_memory_storage`.
    pub storage: Storage,
    /// The explicit consent that memory storage needs.
    pub allow_memory_storage: bool,
    /// Retention by age; > 0 and (checked with the catalog) >= its `backdate_max`.
    pub max_age: Duration,
    /// Retention by size; 1..=i64::MAX.
    pub max_bytes: u64,
    /// Retention by count; 1..=i64::MAX.
    pub max_msgs: u64,
    /// JetStream's duplicate window; > 0 and <= `max_age`.
    pub duplicate_window: Duration,
    /// `Old` only when `allow_discard_old`.
    pub discard: Discard,
    /// The explicit consent that discard old needs.
    pub allow_discard_old: bool,
    /// Durable pull consumer name, `[A-Za-z0-9_-]+`.
    pub consumer: String,
    /// Messages per pull request; >= 1.
    pub fetch_batch_max: usize,
    /// Bytes per pull request at most; 1..=i64::MAX.
    pub fetch_bytes_max: u64,
    /// No delivery for this long while messages are pending: the consumer is recreated; > 0.
    pub stall_timeout: Duration,
}

impl InputConfig {
    /// The subject that partition `partition`'s messages of `kind` are published on.
    pub fn subject(&self, partition: u32, kind: crate::wire::subject::SubjectKind) -> String {
        crate::wire::subject::subject(&self.subject_prefix, partition, kind)
    }

    /// The subjects of the stream: every partition's, of every kind.
    pub fn subject_filter(&self) -> String {
        crate::wire::subject::stream_filter(&self.subject_prefix)
    }
}

/// `[output]`: the stream every output is published to.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputConfig {
    /// Stream name, `[A-Za-z0-9_-]+`, different from the input's.
    pub stream: String,
    /// Outputs go to `<subject_prefix>.<partition>.<type>`. NATS tokens, no wildcards.
    pub subject_prefix: String,
    /// 1..=[`REPLICAS_MAX`].
    pub replicas: usize,
    /// `Memory` only when `allow_memory_storage`.
    pub storage: Storage,
    /// The explicit consent that memory storage needs.
    pub allow_memory_storage: bool,
    /// Retention by age; > 0.
    pub max_age: Duration,
    /// Retention by size; 1..=i64::MAX.
    pub max_bytes: u64,
    /// Retention by count; 1..=i64::MAX.
    pub max_msgs: u64,
    /// JetStream's duplicate window; > 0 and <= `max_age`.
    pub duplicate_window: Duration,
    /// Publishes awaiting their ack at most; >= 1.
    pub publish_window: usize,
    /// Longest wait between publish attempts; > 0.
    pub publish_retry_backoff_max: Duration,
}

impl OutputConfig {
    /// The subject an output of type `output_type` from partition `partition` goes to.
    pub fn subject(&self, partition: u32, output_type: &str) -> String {
        format!("{}.{partition}.{output_type}", self.subject_prefix)
    }

    /// The subjects of the stream: every partition's outputs of every type (a type such as
    /// `invoice.line` is two tokens, hence `>`).
    pub fn subject_filter(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// `[engine]`: partitions and the shard threads that own them.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// The catalog file; exists at load time.
    pub catalog: PathBuf,
    /// 1..=[`PARTITIONS_MAX`]; fixed for the life of a stream.
    pub partitions: u32,
    /// 0 (one per core) ..= `partitions`; resolve with [`Config::shard_count`].
    pub shards: usize,
    /// Batches waiting in each shard's queue at most; >= 1.
    pub queue_batches_max: usize,
    /// Messages per batch at most; >= 1.
    pub batch_size_max: usize,
    /// Wall-clock interval of published ticks; `None` when ticks are disabled (`"0"`).
    pub tick_interval: Option<Duration>,
}

/// `[snapshot]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotConfig {
    /// Directory of snapshot files; not an existing file.
    pub dir: PathBuf,
    /// Snapshot after this many messages; >= 1.
    pub interval_events: u64,
    /// ... or after this much time, whichever first; > 0.
    pub interval: Duration,
    /// Snapshots kept per partition; >= [`SNAPSHOTS_KEPT_MIN`].
    pub keep: usize,
}

/// `[service]`: the NATS micro service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub enabled: bool,
    /// Endpoints `<prefix>.query.<name>` and `<prefix>.command.<name>`; a subject prefix not
    /// overlapping the streams'.
    pub subject_prefix: String,
    /// A NATS queue group name: no spaces or wildcards.
    pub queue_group: String,
    /// Per shard; >= 1.
    pub questions_max: usize,
    /// > 0.
    pub wait_max: Duration,
    /// Per shard; >= 1.
    pub results_max: usize,
    /// Per partition; 0 disables.
    pub statement_entries_max: usize,
}

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` disables the server. The
    /// caller warns when it is not a loopback address.
    pub listen: Option<SocketAddr>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive that parses.
    pub level: String,
}

/// One problem in the configuration, at one key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// `section.key`, a section name, the name of an environment variable that names no key, or
    /// empty for a file that cannot be read or parsed.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found, in the order met: the file, the environment, then section by section.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line: `key: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_char('\n')?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads the configuration: the embedded defaults, then the file at `path` (if any), then the
/// `CREDITFLOW_` variables of `env` (the binary passes `std::env::vars()`; other variables are
/// ignored). Relative paths in the config are checked against the working directory.
pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigErrors> {
    let file = match path {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some((path, text)),
            Err(error) => {
                return Err(ConfigErrors(vec![ConfigError::new(
                    "",
                    format!("cannot read config {}: {error}", path.display()),
                )]))
            }
        },
    };
    let file = file.as_ref().map(|(path, text)| (*path, text.as_str()));
    from_parts(file, env)
}

/// [`load`] with the file's text given: `file` is its name (for messages) and text.
pub fn from_parts(
    file: Option<(&Path, &str)>,
    env: &[(String, String)],
) -> Result<Config, ConfigErrors> {
    let defaults = match DEFAULTS_TOML.parse::<Table>() {
        Ok(table) => table,
        Err(error) => panic!("the embedded config/creditflow.toml is not valid TOML: {error}"),
    };
    let mut loader = Loader {
        table: defaults,
        origins: HashMap::new(),
        errors: Vec::new(),
        bad: HashSet::new(),
    };
    if let Some((path, text)) = file {
        match text.parse::<Table>() {
            Ok(table) => loader.merge_file(table),
            Err(error) => loader.errors.push(syntax_error(path, text, &error)),
        }
    }
    loader.merge_env(env);
    let config = loader.config();
    loader.check(&config);
    if loader.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(loader.errors))
    }
}

impl Config {
    /// The built-in defaults (`config/creditflow.toml`), as [`load`] with no file and no
    /// environment gives them.
    pub fn defaults() -> Result<Config, ConfigErrors> {
        from_parts(None, &[])
    }

    /// Number of shard threads: `engine.shards`, or for 0 the available parallelism (1 when it
    /// cannot be read); never more than the partitions, never less than 1.
    pub fn shard_count(&self) -> usize {
        let partitions = usize::try_from(self.engine.partitions).unwrap_or(usize::MAX);
        let wanted = if self.engine.shards == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            self.engine.shards
        };
        wanted.clamp(1, partitions.max(1))
    }

    /// The checks that need the catalog: the input's retention must cover the catalog's
    /// backdate window, so every event the engine still accepts as on time can be replayed.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), ConfigErrors> {
        let backdate = span_duration(catalog.rules.backdate_max);
        if self.input.max_age < backdate {
            return Err(ConfigErrors(vec![ConfigError::new(
                "input.max_age",
                format!(
                    "{} is shorter than the catalog's rules.backdate_max ({}): make it at least \
                     that",
                    format_duration(self.input.max_age),
                    format_duration(backdate)
                ),
            )]));
        }
        Ok(())
    }

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
                ("consumer", string(&input.consumer)),
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
            ],
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
        write_section(&mut out, "metrics", &[("listen", Value::String(listen))]);
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

fn string(text: &str) -> Value {
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

fn span_duration(span: Span) -> Duration {
    // Spans parsed from text are never negative; a negative rule span would be refused by the
    // catalog loader, so zero is only a safe floor here.
    Duration::from_millis(u64::try_from(span.0).unwrap_or(0))
}

fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let message = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(
                "{}: TOML syntax error at line {line}, column {column}: {}",
                path.display(),
                error.message().trim_end()
            )
        }
        None => format!(
            "{}: TOML syntax error: {}",
            path.display(),
            error.message().trim_end()
        ),
    };
    ConfigError::new("", message)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// `[A-Za-z0-9_-]+`: what JetStream allows in stream and consumer names and is safe in a
/// subject and a file name.
fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why `prefix` is not a usable subject prefix, if it is not: dot-separated non-empty tokens of
/// printable ASCII without wildcards, not starting with `$` (system subjects).
fn subject_prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        return Some("must not be empty");
    }
    if prefix.starts_with('$') {
        return Some("must not start with $ (reserved for system subjects)");
    }
    if prefix.split('.').any(str::is_empty) {
        return Some("has an empty token (a leading, trailing or doubled '.')");
    }
    if prefix.bytes().any(|b| b == b'*' || b == b'>') {
        return Some("must not contain the wildcards * or >");
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("must be printable ASCII without spaces");
    }
    None
}

/// True when one prefix's subjects include the other's: equal, or one is a whole-token prefix
/// of the other (`a.b` and `a.b.c`, but not `a.b` and `a.bc`).
fn prefixes_overlap(a: &str, b: &str) -> bool {
    let within = |short: &str, long: &str| {
        long == short
            || (long.len() > short.len()
                && long.starts_with(short)
                && long.as_bytes()[short.len()] == b'.')
    };
    within(a, b) || within(b, a)
}

fn url_problem(url: &str) -> Option<String> {
    if url.is_empty() || url.chars().any(char::is_whitespace) {
        return Some(format!("{url:?} is not a server URL"));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !["nats", "tls", "ws", "wss"].contains(&scheme) {
            return Some(format!(
                "{url:?}: unknown scheme {scheme:?} (nats, tls, ws or wss)"
            ));
        }
        if rest.is_empty() {
            return Some(format!("{url:?} names no host"));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The walk

/// Where a key's value came from, so an error can say which variable to fix.
#[derive(Clone, Debug)]
enum Origin {
    File,
    Env(String),
}

struct Loader {
    /// The defaults with the file's and the environment's values laid over them. Each key is
    /// removed as the walk reads it.
    table: Table,
    /// Keys (`section.key`) set by the file or the environment; absent means the default.
    origins: HashMap<String, Origin>,
    errors: Vec<ConfigError>,
    /// Keys with an error, which cross-field checks skip.
    bad: HashSet<String>,
}

/// Renders the keys of one section for "unknown key" messages.
fn key_list(table: &Table) -> String {
    table
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Loader {
    fn merge_file(&mut self, file: Table) {
        let sections = key_list(&self.table);
        for (section, value) in file {
            let Some(defaults) = self.table.get_mut(&section) else {
                self.errors.push(ConfigError::new(
                    &section,
                    format!("unknown section (sections: {sections})"),
                ));
                continue;
            };
            let Value::Table(defaults) = defaults else {
                panic!("config/creditflow.toml: [{section}] is not a table");
            };
            let Value::Table(values) = value else {
                self.errors.push(ConfigError::new(
                    &section,
                    format!("expected a table [{section}], found {}", type_name(&value)),
                ));
                continue;
            };
            for (key, value) in values {
                let path = format!("{section}.{key}");
                if defaults.contains_key(&key) {
                    defaults.insert(key, value);
                    self.origins.insert(path, Origin::File);
                } else {
                    let keys = key_list(defaults);
                    self.errors.push(ConfigError::new(
                        path,
                        format!("unknown key (keys of [{section}]: {keys})"),
                    ));
                }
            }
        }
    }

    fn merge_env(&mut self, env: &[(String, String)]) {
        // The shorthand CREDITFLOW_NATS_URL names one server, as container setups commonly
        // pass it; it is the same key as CREDITFLOW_NATS_URLS, so both at once is an error.
        const URL_SHORTHAND: &str = "CREDITFLOW_NATS_URL";
        const URLS: &str = "CREDITFLOW_NATS_URLS";
        let has_urls = env.iter().any(|(name, _)| name == URLS);
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == URL_SHORTHAND {
                if has_urls {
                    self.errors.push(ConfigError::new(
                        name,
                        format!("set together with {URLS}: set one of them"),
                    ));
                    self.bad.insert("nats.urls".to_string());
                } else {
                    self.set_env("nats", "urls", name, Value::Array(vec![string(raw.trim())]));
                }
                continue;
            }
            let Some((section, key)) = self.env_key(rest) else {
                self.errors.push(ConfigError::new(
                    name,
                    "names no config key: expected CREDITFLOW_<SECTION>_<KEY> for a key of \
                     config/creditflow.toml, in upper case (e.g. CREDITFLOW_ENGINE_SHARDS)",
                ));
                continue;
            };
            let path = format!("{section}.{key}");
            let value = match &self.table[&section][&key] {
                Value::String(_) => Ok(Value::String(raw.clone())),
                Value::Integer(_) => raw
                    .trim()
                    .parse::<i64>()
                    .map(Value::Integer)
                    .map_err(|_| "expected an integer"),
                Value::Boolean(_) => match raw.trim() {
                    "true" => Ok(Value::Boolean(true)),
                    "false" => Ok(Value::Boolean(false)),
                    _ => Err("expected true or false"),
                },
                Value::Array(_) => Ok(Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .map(string)
                        .collect(),
                )),
                other => panic!(
                    "config/creditflow.toml: {path} has a type ({}) that environment variables \
                     cannot set",
                    type_name(other)
                ),
            };
            match value {
                Ok(value) => self.set_env(&section, &key, name, value),
                Err(expected) => {
                    self.errors.push(ConfigError::new(
                        &path,
                        format!("{expected}, found {raw:?} (from {name})"),
                    ));
                    self.bad.insert(path);
                }
            }
        }
    }

    /// The `(section, key)` that `rest` (a variable's name after the prefix) names, if any.
    fn env_key(&self, rest: &str) -> Option<(String, String)> {
        self.table.iter().find_map(|(section, keys)| {
            let upper = section.to_ascii_uppercase();
            let key_upper = rest.strip_prefix(upper.as_str())?.strip_prefix('_')?;
            let Value::Table(keys) = keys else {
                return None;
            };
            keys.keys()
                .find(|key| key.to_ascii_uppercase() == key_upper)
                .map(|key| (section.clone(), key.clone()))
        })
    }

    fn set_env(&mut self, section: &str, key: &str, name: &str, value: Value) {
        if let Some(Value::Table(keys)) = self.table.get_mut(section) {
            keys.insert(key.to_string(), value);
        }
        self.origins
            .insert(format!("{section}.{key}"), Origin::Env(name.to_string()));
    }

    // ---- reading values -----------------------------------------------------------------

    fn error(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(Origin::Env(name)) = self.origins.get(key) {
            let _ = write!(message, " (from {name})");
        }
        self.errors.push(ConfigError::new(key, message));
        self.bad.insert(key.to_string());
    }

    fn ok(&self, keys: &[&str]) -> bool {
        keys.iter().all(|key| !self.bad.contains(*key))
    }

    /// Removes and returns the value at `section.key`. The defaults hold every key, so a missing
    /// one is a programmer error: the walk and `config/creditflow.toml` disagree.
    fn take(&mut self, section: &str, key: &str) -> (String, Value) {
        let value = match self.table.get_mut(section) {
            Some(Value::Table(keys)) => keys.remove(key),
            _ => None,
        };
        match value {
            Some(value) => (format!("{section}.{key}"), value),
            None => {
                panic!("config/creditflow.toml has no key {section}.{key}, or it was read twice")
            }
        }
    }

    fn wrong_type(&mut self, key: &str, expected: &str, value: &Value) {
        self.error(
            key,
            format!("expected {expected}, found {}", type_name(value)),
        );
    }

    fn string(&mut self, section: &str, key: &str) -> String {
        match self.take(section, key) {
            (_, Value::String(text)) => text,
            (path, other) => {
                self.wrong_type(&path, "a string", &other);
                String::new()
            }
        }
    }

    /// A string that must not be empty.
    fn name(&mut self, section: &str, key: &str) -> String {
        let text = self.string(section, key);
        if text.is_empty() && !self.bad.contains(&format!("{section}.{key}")) {
            self.error(&format!("{section}.{key}"), "must not be empty");
        }
        text
    }

    fn boolean(&mut self, section: &str, key: &str) -> bool {
        match self.take(section, key) {
            (_, Value::Boolean(flag)) => flag,
            (path, other) => {
                self.wrong_type(&path, "true or false", &other);
                false
            }
        }
    }

    /// An integer in `min..=max`; `min` on error.
    fn integer(&mut self, section: &str, key: &str, min: i64, max: i64) -> i64 {
        match self.take(section, key) {
            (path, Value::Integer(number)) => {
                if (min..=max).contains(&number) {
                    number
                } else {
                    let message = if max == i64::MAX {
                        format!("must be >= {min}, found {number}")
                    } else {
                        format!("must be between {min} and {max}, found {number}")
                    };
                    self.error(&path, message);
                    min
                }
            }
            (path, other) => {
                self.wrong_type(&path, "an integer", &other);
                min
            }
        }
    }

    fn count(&mut self, section: &str, key: &str, min: usize, max: usize) -> usize {
        let min_i = i64::try_from(min).unwrap_or(i64::MAX);
        let max_i = i64::try_from(max).unwrap_or(i64::MAX);
        usize::try_from(self.integer(section, key, min_i, max_i)).unwrap_or(min)
    }

    fn count_u64(&mut self, section: &str, key: &str, min: u64) -> u64 {
        let min_i = i64::try_from(min).unwrap_or(i64::MAX);
        u64::try_from(self.integer(section, key, min_i, i64::MAX)).unwrap_or(min)
    }

    /// A duration string, `> 0` unless `zero_allowed`, at most [`DURATION_MAX`].
    fn duration(&mut self, section: &str, key: &str, zero_allowed: bool) -> Duration {
        let (path, value) = self.take(section, key);
        let Value::String(text) = &value else {
            self.wrong_type(&path, "a duration string such as \"5s\"", &value);
            return Duration::ZERO;
        };
        match parse_duration(text) {
            Err(error) => self.error(&path, format!("{text:?} is {error}")),
            Ok(duration) if duration.is_zero() && !zero_allowed => self.error(&path, "must be > 0"),
            Ok(duration) if duration > DURATION_MAX => self.error(
                &path,
                format!("{text:?} is longer than the limit of 100 years"),
            ),
            Ok(duration) => return duration,
        }
        Duration::ZERO
    }

    /// A byte size (an integer, or a string with a unit) in `1..=i64::MAX`: JetStream holds sizes
    /// as signed 64-bit integers, and 0 would mean "unlimited" there.
    fn size(&mut self, section: &str, key: &str) -> u64 {
        let (path, value) = self.take(section, key);
        let bytes = match &value {
            Value::Integer(number) => match u64::try_from(*number) {
                Ok(bytes) => bytes,
                Err(_) => {
                    self.error(&path, format!("must be > 0, found {number}"));
                    return 0;
                }
            },
            Value::String(text) => match parse_size(text) {
                Ok(bytes) => bytes,
                Err(error) => {
                    self.error(&path, format!("{text:?} is {error}"));
                    return 0;
                }
            },
            other => {
                self.wrong_type(
                    &path,
                    "an integer or a size string such as \"64MiB\"",
                    other,
                );
                return 0;
            }
        };
        if bytes == 0 {
            self.error(&path, "must be > 0");
        } else if i64::try_from(bytes).is_err() {
            self.error(&path, format!("must be at most {} bytes", i64::MAX));
        }
        bytes
    }

    /// A path; empty means not set.
    fn path(&mut self, section: &str, key: &str) -> Option<PathBuf> {
        let text = self.string(section, key);
        (!text.is_empty()).then(|| PathBuf::from(text))
    }

    /// One of `choices` (its index), or `None` after reporting.
    fn choice(&mut self, section: &str, key: &str, choices: &[&str]) -> Option<usize> {
        let path = format!("{section}.{key}");
        let text = self.string(section, key);
        if self.bad.contains(&path) {
            return None;
        }
        let index = choices.iter().position(|choice| *choice == text);
        if index.is_none() {
            self.error(
                &path,
                format!("unknown value {text:?} ({})", choices.join(" or ")),
            );
        }
        index
    }

    fn string_list(&mut self, section: &str, key: &str) -> Vec<String> {
        let (path, value) = self.take(section, key);
        let Value::Array(items) = value else {
            self.wrong_type(&path, "an array of strings", &value);
            return Vec::new();
        };
        let mut strings = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Value::String(text) => strings.push(text),
                other => self.wrong_type(&format!("{path}[{index}]"), "a string", &other),
            }
        }
        strings
    }

    fn stream_name(&mut self, section: &str, key: &str) -> String {
        let name = self.string(section, key);
        let path = format!("{section}.{key}");
        if !self.bad.contains(&path) && !valid_stream_name(&name) {
            self.error(
                &path,
                format!("{name:?} is not a valid name: use 1 or more of A-Z, a-z, 0-9, _ and -"),
            );
        }
        name
    }

    fn subject_prefix(&mut self, section: &str) -> String {
        let prefix = self.string(section, "subject_prefix");
        let path = format!("{section}.subject_prefix");
        if !self.bad.contains(&path) {
            if let Some(problem) = subject_prefix_problem(&prefix) {
                self.error(&path, format!("{prefix:?} {problem}"));
            }
        }
        prefix
    }

    fn storage(&mut self, section: &str) -> Storage {
        match self.choice(section, "storage", &["file", "memory"]) {
            Some(1) => Storage::Memory,
            _ => Storage::File,
        }
    }

    // ---- sections -----------------------------------------------------------------------

    fn config(&mut self) -> Config {
        let config = Config {
            nats: self.nats(),
            input: self.input(),
            output: self.output(),
            engine: self.engine(),
            snapshot: self.snapshot(),
            service: self.service(),
            metrics: self.metrics(),
            log: self.log(),
        };
        let left: Vec<String> = self
            .table
            .iter()
            .flat_map(|(section, keys)| match keys {
                Value::Table(keys) => keys.keys().map(|key| format!("{section}.{key}")).collect(),
                _ => vec![section.clone()],
            })
            .collect();
        assert!(
            left.is_empty(),
            "config/creditflow.toml has keys the loader never reads: {left:?}"
        );
        config
    }

    fn nats(&mut self) -> NatsConfig {
        let urls = self.string_list("nats", "urls");
        if self.ok(&["nats.urls"]) {
            if urls.is_empty() {
                self.error("nats.urls", "must name at least one server");
            }
            for url in &urls {
                if let Some(problem) = url_problem(url) {
                    self.error("nats.urls", problem);
                }
            }
        }
        let name = self.name("nats", "name");
        let token = self.string("nats", "token");
        let user = self.string("nats", "user");
        let password = self.string("nats", "password");
        let nkey_seed_file = self.path("nats", "nkey_seed_file");
        let creds_file = self.path("nats", "creds_file");
        let auth = self.auth(token, user, password, nkey_seed_file, creds_file);
        let tls_required = self.boolean("nats", "tls_required");
        let tls_ca_file = self.path("nats", "tls_ca_file");
        let tls_cert_file = self.path("nats", "tls_cert_file");
        let tls_key_file = self.path("nats", "tls_key_file");
        match (&tls_cert_file, &tls_key_file) {
            (Some(_), None) if self.ok(&["nats.tls_key_file"]) => self.error(
                "nats.tls_key_file",
                "must be set when tls_cert_file is (a client certificate needs its key)",
            ),
            (None, Some(_)) if self.ok(&["nats.tls_cert_file"]) => self.error(
                "nats.tls_cert_file",
                "must be set when tls_key_file is (a key needs its certificate)",
            ),
            _ => {}
        }
        for (key, path) in [
            ("nats.tls_ca_file", &tls_ca_file),
            ("nats.tls_cert_file", &tls_cert_file),
            ("nats.tls_key_file", &tls_key_file),
        ] {
            self.file_exists(key, path.as_deref());
        }
        NatsConfig {
            urls,
            name,
            auth,
            tls_required,
            tls_ca_file,
            tls_cert_file,
            tls_key_file,
            connect_timeout: self.duration("nats", "connect_timeout", false),
            request_timeout: self.duration("nats", "request_timeout", false),
            reconnect_delay_max: self.duration("nats", "reconnect_delay_max", false),
        }
    }

    fn auth(
        &mut self,
        token: String,
        user: String,
        password: String,
        nkey_seed_file: Option<PathBuf>,
        creds_file: Option<PathBuf>,
    ) -> NatsAuth {
        if user.is_empty() != password.is_empty() {
            let (missing, given) = if user.is_empty() {
                ("nats.user", "password")
            } else {
                ("nats.password", "user")
            };
            self.error(missing, format!("must be set when {given} is"));
        }
        self.file_exists("nats.nkey_seed_file", nkey_seed_file.as_deref());
        self.file_exists("nats.creds_file", creds_file.as_deref());
        let mut methods: Vec<(&str, NatsAuth)> = Vec::new();
        if !token.is_empty() {
            methods.push(("token", NatsAuth::Token(token)));
        }
        if !user.is_empty() || !password.is_empty() {
            methods.push(("user + password", NatsAuth::UserPassword { user, password }));
        }
        if let Some(path) = nkey_seed_file {
            methods.push(("nkey_seed_file", NatsAuth::NkeySeedFile(path)));
        }
        if let Some(path) = creds_file {
            methods.push(("creds_file", NatsAuth::CredsFile(path)));
        }
        if methods.len() > 1 {
            let names: Vec<&str> = methods.iter().map(|(name, _)| *name).collect();
            self.error(
                "nats",
                format!(
                    "more than one auth method is set ({}): set at most one",
                    names.join(", ")
                ),
            );
        }
        methods
            .into_iter()
            .next()
            .map_or(NatsAuth::None, |(_, auth)| auth)
    }

    fn file_exists(&mut self, key: &str, path: Option<&Path>) {
        if let Some(path) = path {
            if self.ok(&[key]) && !path.exists() {
                self.error(
                    key,
                    format!(
                        "file not found: {} (relative to the working directory)",
                        path.display()
                    ),
                );
            }
        }
    }

    fn input(&mut self) -> InputConfig {
        let s = "input";
        let stream = self.stream_name(s, "stream");
        let subject_prefix = self.subject_prefix(s);
        let replicas = self.count(s, "replicas", 1, REPLICAS_MAX);
        let storage = self.storage(s);
        let allow_memory_storage = self.boolean(s, "allow_memory_storage");
        let max_age = self.duration(s, "max_age", false);
        let max_bytes = self.size(s, "max_bytes");
        let max_msgs = self.count_u64(s, "max_msgs", 1);
        let duplicate_window = self.duration(s, "duplicate_window", false);
        let discard = match self.choice(s, "discard", &["new", "old"]) {
            Some(1) => Discard::Old,
            _ => Discard::New,
        };
        let allow_discard_old = self.boolean(s, "allow_discard_old");
        InputConfig {
            stream,
            subject_prefix,
            replicas,
            storage,
            allow_memory_storage,
            max_age,
            max_bytes,
            max_msgs,
            duplicate_window,
            discard,
            allow_discard_old,
            consumer: self.stream_name(s, "consumer"),
            fetch_batch_max: self.count(s, "fetch_batch_max", 1, usize::MAX),
            fetch_bytes_max: self.size(s, "fetch_bytes_max"),
            stall_timeout: self.duration(s, "stall_timeout", false),
        }
    }

    fn output(&mut self) -> OutputConfig {
        let s = "output";
        OutputConfig {
            stream: self.stream_name(s, "stream"),
            subject_prefix: self.subject_prefix(s),
            replicas: self.count(s, "replicas", 1, REPLICAS_MAX),
            storage: self.storage(s),
            allow_memory_storage: self.boolean(s, "allow_memory_storage"),
            max_age: self.duration(s, "max_age", false),
            max_bytes: self.size(s, "max_bytes"),
            max_msgs: self.count_u64(s, "max_msgs", 1),
            duplicate_window: self.duration(s, "duplicate_window", false),
            publish_window: self.count(s, "publish_window", 1, usize::MAX),
            publish_retry_backoff_max: self.duration(s, "publish_retry_backoff_max", false),
        }
    }

    fn engine(&mut self) -> EngineConfig {
        let s = "engine";
        let catalog = self.path(s, "catalog");
        if catalog.is_none() && self.ok(&["engine.catalog"]) {
            self.error("engine.catalog", "must not be empty");
        }
        self.file_exists("engine.catalog", catalog.as_deref());
        let partitions = self.integer(s, "partitions", 1, i64::from(PARTITIONS_MAX));
        EngineConfig {
            catalog: catalog.unwrap_or_default(),
            partitions: u32::try_from(partitions).unwrap_or(1),
            shards: self.count(s, "shards", 0, PARTITIONS_MAX as usize),
            queue_batches_max: self.count(s, "queue_batches_max", 1, usize::MAX),
            batch_size_max: self.count(s, "batch_size_max", 1, usize::MAX),
            tick_interval: Some(self.duration(s, "tick_interval", true))
                .filter(|interval| !interval.is_zero()),
        }
    }

    fn snapshot(&mut self) -> SnapshotConfig {
        let s = "snapshot";
        let dir = self.path(s, "dir");
        match &dir {
            None if self.ok(&["snapshot.dir"]) => self.error("snapshot.dir", "must not be empty"),
            Some(dir) if dir.exists() && !dir.is_dir() => self.error(
                "snapshot.dir",
                format!("{} exists and is not a directory", dir.display()),
            ),
            _ => {}
        }
        SnapshotConfig {
            dir: dir.unwrap_or_default(),
            interval_events: self.count_u64(s, "interval_events", 1),
            interval: self.duration(s, "interval", false),
            keep: self.count(s, "keep", SNAPSHOTS_KEPT_MIN, usize::MAX),
        }
    }

    fn service(&mut self) -> ServiceConfig {
        let s = "service";
        let enabled = self.boolean(s, "enabled");
        let subject_prefix = self.subject_prefix(s);
        let queue_group = self.string(s, "queue_group");
        if self.ok(&["service.queue_group"])
            && (queue_group.is_empty()
                || !queue_group
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'))
        {
            self.error(
                "service.queue_group",
                format!(
                    "{queue_group:?} is not a queue group name (printable, no spaces or wildcards)"
                ),
            );
        }
        ServiceConfig {
            enabled,
            subject_prefix,
            queue_group,
            questions_max: self.count(s, "questions_max", 1, usize::MAX),
            wait_max: self.duration(s, "wait_max", false),
            results_max: self.count(s, "results_max", 1, usize::MAX),
            statement_entries_max: self.count(s, "statement_entries_max", 0, usize::MAX),
        }
    }

    fn metrics(&mut self) -> MetricsConfig {
        let text = self.string("metrics", "listen");
        let listen = if text.is_empty() {
            None
        } else {
            match text.parse::<SocketAddr>() {
                Ok(address) => Some(address),
                Err(_) => {
                    if self.ok(&["metrics.listen"]) {
                        self.error(
                            "metrics.listen",
                            format!(
                                "{text:?} is not an IP:port address (e.g. \"127.0.0.1:9464\", \
                                 \"[::1]:9464\"), or \"\" to disable"
                            ),
                        );
                    }
                    None
                }
            }
        };
        MetricsConfig { listen }
    }

    fn log(&mut self) -> LogConfig {
        let format = match self.choice("log", "format", &["text", "json"]) {
            Some(1) => LogFormat::Json,
            _ => LogFormat::Text,
        };
        let level = self.name("log", "level");
        if self.ok(&["log.level"]) {
            if let Err(error) = tracing_subscriber::EnvFilter::try_new(&level) {
                self.error(
                    "log.level",
                    format!("{level:?} is not a tracing filter directive: {error}"),
                );
            }
        }
        LogConfig { format, level }
    }

    // ---- cross-field checks -------------------------------------------------------------

    fn check(&mut self, config: &Config) {
        let (input, output) = (&config.input, &config.output);
        if self.ok(&["input.stream", "output.stream"]) && input.stream == output.stream {
            self.error(
                "output.stream",
                format!("{:?} is also the input stream's name", output.stream),
            );
        }
        if self.ok(&["input.subject_prefix", "output.subject_prefix"])
            && prefixes_overlap(&input.subject_prefix, &output.subject_prefix)
        {
            self.error(
                "output.subject_prefix",
                format!(
                    "{:?} overlaps the input's {:?}: outputs would land in the input stream",
                    output.subject_prefix, input.subject_prefix
                ),
            );
        }
        let service = &config.service.subject_prefix;
        for (key, prefix) in [
            ("input.subject_prefix", &input.subject_prefix),
            ("output.subject_prefix", &output.subject_prefix),
        ] {
            if self.ok(&["service.subject_prefix", key]) && prefixes_overlap(service, prefix) {
                self.error(
                    "service.subject_prefix",
                    format!(
                        "{service:?} overlaps {key} {prefix:?}: requests would land in a stream"
                    ),
                );
            }
        }
        for (section, storage, allowed) in [
            ("input", input.storage, input.allow_memory_storage),
            ("output", output.storage, output.allow_memory_storage),
        ] {
            let key = format!("{section}.storage");
            if storage == Storage::Memory && !allowed && self.ok(&[key.as_str()]) {
                self.error(
                    &key,
                    "memory storage loses every message when the server restarts; a billing \
                     log must survive that (set allow_memory_storage = true to insist)",
                );
            }
        }
        if input.discard == Discard::Old && !input.allow_discard_old && self.ok(&["input.discard"])
        {
            self.error(
                "input.discard",
                "\"old\" deletes billing events that may not have been applied yet (set \
                 allow_discard_old = true to insist)",
            );
        }
        for (section, window, age) in [
            ("input", input.duplicate_window, input.max_age),
            ("output", output.duplicate_window, output.max_age),
        ] {
            let (window_key, age_key) = (
                format!("{section}.duplicate_window"),
                format!("{section}.max_age"),
            );
            if window > age && self.ok(&[window_key.as_str(), age_key.as_str()]) {
                self.error(
                    &window_key,
                    format!(
                        "{} is longer than max_age ({}): JetStream refuses that",
                        format_duration(window),
                        format_duration(age)
                    ),
                );
            }
        }
        let engine = &config.engine;
        if self.ok(&["engine.shards", "engine.partitions"])
            && engine.shards > usize::try_from(engine.partitions).unwrap_or(usize::MAX)
        {
            self.error(
                "engine.shards",
                format!(
                    "{} is more than the {} partitions (a shard without a partition would idle)",
                    engine.shards, engine.partitions
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn with_file(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        from_parts(Some((Path::new("test.toml"), text)), &env(vars))
    }

    fn errors_of(text: &str, vars: &[(&str, &str)]) -> Vec<ConfigError> {
        match with_file(text, vars) {
            Ok(config) => panic!("expected errors, loaded {config:#?}"),
            Err(errors) => errors.0,
        }
    }

    fn keys_of(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|error| error.key.as_str()).collect()
    }

    #[test]
    fn defaults_load_with_the_documented_values() {
        let config = Config::defaults().expect("the defaults load");
        assert_eq!(config.nats.urls, vec!["nats://127.0.0.1:4222".to_string()]);
        assert_eq!(config.nats.auth, NatsAuth::None);
        assert_eq!(config.nats.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.input.stream, "CREDITFLOW_IN");
        assert_eq!(
            config
                .input
                .subject(7, crate::wire::subject::SubjectKind::Usage),
            "creditflow.in.7.usage"
        );
        assert_eq!(config.input.subject_filter(), "creditflow.in.*.*");
        assert_eq!(config.output.subject(7, "alert"), "creditflow.out.7.alert");
        assert_eq!(config.input.storage, Storage::File);
        assert_eq!(config.input.discard, Discard::New);
        assert_eq!(config.input.max_age, Duration::from_secs(35 * 86_400));
        assert_eq!(config.input.max_bytes, 10 << 30);
        assert_eq!(config.input.fetch_bytes_max, 8 << 20);
        assert_eq!(config.input.max_msgs, 1_000_000_000);
        assert_eq!(config.output.max_age, Duration::from_secs(30 * 86_400));
        assert_eq!(config.output.duplicate_window, Duration::from_secs(120));
        assert_eq!(config.engine.partitions, 16);
        assert_eq!(config.engine.shards, 0);
        assert_eq!(config.engine.tick_interval, Some(Duration::from_secs(1)));
        assert_eq!(config.snapshot.keep, 3);
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9464".parse().expect("address"))
        );
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.log.level, "info");
        assert!(config.service.enabled);
        assert_eq!(config.service.subject_prefix, "creditflow.svc");
        assert_eq!(config.service.queue_group, "q");
        assert_eq!(config.service.wait_max, Duration::from_secs(5));
        assert_eq!(config.service.statement_entries_max, 16_384);
    }

    #[test]
    fn the_shipped_file_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/creditflow.toml");
        let loaded = load(Some(&path), &[]).expect("config/creditflow.toml loads");
        assert_eq!(loaded, Config::defaults().expect("defaults"));
    }

    #[test]
    fn the_environment_wins_over_the_file_which_wins_over_the_defaults() {
        let file = "[engine]\nshards = 4\npartitions = 8\n[nats]\nname = \"from-file\"\n";
        let config = with_file(file, &[]).expect("loads");
        assert_eq!((config.engine.shards, config.engine.partitions), (4, 8));
        assert_eq!(config.nats.name, "from-file");
        assert_eq!(
            config.engine.batch_size_max, 1024,
            "untouched keys keep defaults"
        );

        let vars = [
            ("CREDITFLOW_ENGINE_SHARDS", "2"),
            ("CREDITFLOW_NATS_URLS", "nats://a:4222, nats://b:4222"),
            ("CREDITFLOW_INPUT_ALLOW_DISCARD_OLD", "true"),
            ("CREDITFLOW_INPUT_MAX_BYTES", "1GiB"),
            ("HOME", "/root"),
        ];
        let config = with_file(file, &vars).expect("loads");
        assert_eq!(config.engine.shards, 2, "the environment wins");
        assert_eq!(config.engine.partitions, 8, "the file still applies");
        assert_eq!(config.nats.urls, vec!["nats://a:4222", "nats://b:4222"]);
        assert!(config.input.allow_discard_old);
        assert_eq!(config.input.max_bytes, 1 << 30);

        let config = load(None, &env(&[("CREDITFLOW_NATS_URL", "nats://h:4222")])).expect("loads");
        assert_eq!(config.nats.urls, vec!["nats://h:4222"]);
    }

    #[test]
    fn unknown_keys_sections_and_variables_are_rejected() {
        let errors = errors_of(
            "colour = 3\n[nats]\nurl = \"nats://x\"\n[engine]\nshard = 2\n[metrics]\nlisten = \"\"\n",
            &[
                ("CREDITFLOW_ENGINE_SHARD", "2"),
                ("CREDITFLOW_BOGUS", "1"),
                ("CREDITFLOW_nats_urls", "nats://x"),
                ("OTHER_ENGINE_SHARDS", "2"),
            ],
        );
        let listing = ConfigErrors(errors.clone()).to_string();
        let mut keys = keys_of(&errors);
        keys.sort_unstable();
        assert_eq!(
            keys,
            vec![
                "CREDITFLOW_BOGUS",
                "CREDITFLOW_ENGINE_SHARD",
                "CREDITFLOW_nats_urls",
                "colour",
                "engine.shard",
                "nats.url",
            ],
            "{listing}"
        );
        assert!(
            listing.contains("nats.url: unknown key (keys of [nats]: "),
            "{listing}"
        );
    }

    #[test]
    fn many_mistakes_are_reported_together_each_with_its_key() {
        let file = r#"
[nats]
urls = []
token = "t"
creds_file = "/nonexistent/creditflow.creds"
tls_cert_file = "/nonexistent/cert.pem"
connect_timeout = 5
[input]
stream = "IN.PUT"
subject_prefix = "creditflow.*"
replicas = 7
storage = "memory"
max_age = "0"
max_bytes = "12 parsecs"
discard = "old"
fetch_batch_max = 0
[output]
stream = "IN.PUT"
subject_prefix = "creditflow"
duplicate_window = "60d"
[engine]
partitions = 4
shards = 9
tick_interval = "soon"
[snapshot]
keep = 1
[metrics]
listen = "localhost"
[log]
format = "xml"
"#;
        let errors = errors_of(file, &[("CREDITFLOW_ENGINE_BATCH_SIZE_MAX", "lots")]);
        let listing = ConfigErrors(errors.clone()).to_string();
        let expected = [
            "engine.batch_size_max",
            "nats.urls",
            "nats",
            "nats.tls_key_file",
            "nats.tls_cert_file",
            "nats.creds_file",
            "nats.connect_timeout",
            "input.stream",
            "input.subject_prefix",
            "input.replicas",
            "input.max_age",
            "input.max_bytes",
            "input.fetch_batch_max",
            "output.stream",
            "output.duplicate_window",
            "engine.tick_interval",
            "snapshot.keep",
            "metrics.listen",
            "log.format",
            "input.storage",
            "input.discard",
            "engine.shards",
            // The service's default prefix, creditflow.svc, is under the output's creditflow.
            "service.subject_prefix",
        ];
        let mut got = keys_of(&errors);
        got.sort_unstable();
        let mut want = expected.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{listing}");
        assert_eq!(errors.len(), 23, "{listing}");
        for line in [
            "engine.batch_size_max: expected an integer, found \"lots\" (from \
             CREDITFLOW_ENGINE_BATCH_SIZE_MAX)",
            "nats.urls: must name at least one server",
            "nats: more than one auth method is set (token, creds_file): set at most one",
            "nats.connect_timeout: expected a duration string such as \"5s\", found an integer",
            "input.replicas: must be between 1 and 5, found 7",
            "input.max_age: must be > 0",
            "engine.shards: 9 is more than the 4 partitions",
            "snapshot.keep: must be >= 2, found 1",
            "log.format: unknown value \"xml\" (text or json)",
        ] {
            assert!(listing.contains(line), "missing {line:?} in\n{listing}");
        }
        // The output prefix overlaps the input's, but the input's is invalid: reported once.
        assert!(!listing.contains("overlaps the input's"), "{listing}");
        assert!(
            listing.contains("service.subject_prefix: \"creditflow.svc\" overlaps output.subject_prefix \"creditflow\""),
            "{listing}"
        );
        assert_eq!(listing.lines().count(), errors.len(), "one error per line");
    }

    #[test]
    fn cross_field_rules() {
        let cases: &[(&str, &str)] = &[
            (
                "[output]\nsubject_prefix = \"creditflow.in.x\"\n",
                "output.subject_prefix: \"creditflow.in.x\" overlaps the input's",
            ),
            (
                "[output]\nstream = \"CREDITFLOW_IN\"\n",
                "output.stream: \"CREDITFLOW_IN\" is also the input stream's name",
            ),
            (
                "[nats]\nuser = \"u\"\n",
                "nats.password: must be set when user is",
            ),
            (
                "[nats]\ntls_key_file = \"Cargo.toml\"\n",
                "nats.tls_cert_file: must be set when tls_key_file is",
            ),
            (
                "[output]\nstorage = \"memory\"\n",
                "output.storage: memory storage loses every message",
            ),
            (
                "[input]\nduplicate_window = \"36d\"\n",
                "input.duplicate_window: 36d is longer than max_age (35d)",
            ),
            (
                "[engine]\ncatalog = \"no/such/catalog.toml\"\n",
                "engine.catalog: file not found: no/such/catalog.toml",
            ),
            (
                "[snapshot]\ndir = \"Cargo.toml\"\n",
                "snapshot.dir: Cargo.toml exists and is not a directory",
            ),
            (
                "[nats]\nurls = [\"http://x:1\"]\n",
                "nats.urls: \"http://x:1\": unknown scheme \"http\"",
            ),
            (
                "[service]\nsubject_prefix = \"creditflow.in.svc\"\n",
                "service.subject_prefix: \"creditflow.in.svc\" overlaps input.subject_prefix",
            ),
            (
                "[service]\nqueue_group = \"a b\"\n",
                "service.queue_group: \"a b\" is not a queue group name",
            ),
            (
                "[service]\nwait_max = \"0\"\n",
                "service.wait_max: must be > 0",
            ),
        ];
        for (file, want) in cases {
            let errors = errors_of(file, &[]);
            let listing = ConfigErrors(errors.clone()).to_string();
            assert_eq!(errors.len(), 1, "{file}\n{listing}");
            assert!(
                listing.starts_with(want),
                "{file}\n got  {listing}\n want {want}"
            );
        }
        // The consents make the same settings valid.
        let config = with_file(
            "[input]\nstorage = \"memory\"\nallow_memory_storage = true\ndiscard = \"old\"\n\
             allow_discard_old = true\n[engine]\ntick_interval = \"0\"\n[metrics]\nlisten = \"\"\n",
            &[],
        )
        .expect("loads");
        assert_eq!(config.input.storage, Storage::Memory);
        assert_eq!(config.input.discard, Discard::Old);
        assert_eq!(config.engine.tick_interval, None);
        assert_eq!(config.metrics.listen, None);
        // Files that exist are accepted, and the auth method is typed.
        let config = with_file(
            "[nats]\ncreds_file = \"Cargo.toml\"\ntls_cert_file = \"Cargo.toml\"\n\
             tls_key_file = \"Cargo.toml\"\n",
            &[],
        )
        .expect("loads");
        assert_eq!(config.nats.auth, NatsAuth::CredsFile("Cargo.toml".into()));
        // Both ways of naming the servers at once is ambiguous.
        let errors = errors_of(
            "",
            &[
                ("CREDITFLOW_NATS_URL", "nats://a:1"),
                ("CREDITFLOW_NATS_URLS", "nats://b:1"),
            ],
        );
        assert_eq!(keys_of(&errors), vec!["CREDITFLOW_NATS_URL"]);
    }

    #[test]
    fn shard_count_resolves_zero_and_never_exceeds_partitions() {
        let mut config = Config::defaults().expect("defaults");
        config.engine.shards = 3;
        assert_eq!(config.shard_count(), 3);
        config.engine.shards = 0;
        config.engine.partitions = 1;
        assert_eq!(config.shard_count(), 1);
        config.engine.partitions = 4096;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(config.shard_count(), cores.min(4096));
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("100GiB"), Ok(100 << 30));
        assert_eq!(parse_size("5 GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("3KB"), Ok(3000));
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "-1",
            "10mb",
            "10 MiBs",
            "99999999999TiB",
        ] {
            assert_eq!(parse_size(bad), Err(SizeParseError), "{bad:?}");
        }
        assert_eq!(format_size(8 << 20), "8MiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size(3 << 40), "3TiB");
        let config = with_file("[input]\nfetch_bytes_max = 65536\n", &[]).expect("loads");
        assert_eq!(config.input.fetch_bytes_max, 65536);
        let errors = errors_of("[input]\nfetch_bytes_max = 0\nmax_bytes = -5\n", &[]);
        assert_eq!(
            keys_of(&errors),
            vec!["input.max_bytes", "input.fetch_bytes_max"]
        );
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "1.5s", "-1s", "5 s", "10y"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for (text, millis) in [("0", 0), ("250ms", 250), ("90s", 90_000), ("2m", 120_000)] {
            assert_eq!(format_duration(Duration::from_millis(millis)), text);
        }
        assert_eq!(format_duration(Duration::from_secs(86_400 * 30)), "30d");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        let errors = errors_of("[nats]\nrequest_timeout = \"6000w\"\n", &[]);
        assert!(
            errors[0].message.contains("longer than the limit"),
            "{errors:?}"
        );
    }

    #[test]
    fn effective_config_prints_every_key_and_loads_back() {
        let vars = [
            ("CREDITFLOW_ENGINE_PARTITIONS", "32"),
            ("CREDITFLOW_INPUT_FETCH_BYTES_MAX", "1000"),
            ("CREDITFLOW_NATS_URLS", "tls://a:4222,nats://b:4222"),
            ("CREDITFLOW_NATS_TLS_REQUIRED", "true"),
        ];
        let config = load(None, &env(&vars)).expect("loads");
        let text = config.to_toml();
        let again = with_file(&text, &[]).expect("the printed config loads");
        assert_eq!(again, config);
        // Every key of the documented file is printed.
        let defaults: Table = DEFAULTS_TOML.parse().expect("toml");
        let printed: Table = text.parse().expect("toml");
        for (section, keys) in &defaults {
            let (Value::Table(keys), Some(Value::Table(got))) = (keys, printed.get(section)) else {
                panic!("section {section} missing from\n{text}");
            };
            for key in keys.keys() {
                assert!(
                    got.contains_key(key),
                    "{section}.{key} missing from\n{text}"
                );
            }
        }
    }

    #[test]
    fn secrets_are_never_printed() {
        let config = load(
            None,
            &env(&[
                ("CREDITFLOW_NATS_USER", "svc"),
                ("CREDITFLOW_NATS_PASSWORD", "hunter2"),
            ]),
        )
        .expect("loads");
        assert_eq!(
            config.nats.auth,
            NatsAuth::UserPassword {
                user: "svc".into(),
                password: "hunter2".into()
            }
        );
        assert!(!config.to_toml().contains("hunter2"));
        assert!(config.to_toml().contains("user = \"svc\""));
        assert!(!format!("{config:?}").contains("hunter2"));
        let config = load(None, &env(&[("CREDITFLOW_NATS_TOKEN", "s3cret")])).expect("loads");
        assert!(!config.to_toml().contains("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn syntax_errors_and_unreadable_files_say_where() {
        let errors = errors_of("[nats]\nname = \n", &[]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .starts_with("test.toml: TOML syntax error at line 2"),
            "{errors:?}"
        );
        let missing = load(Some(Path::new("/nonexistent/creditflow.toml")), &[]).unwrap_err();
        assert!(missing
            .to_string()
            .starts_with("cannot read config /nonexistent/creditflow.toml"));
        // A syntax error in the file does not hide the environment's errors.
        let errors = errors_of("[nats\n", &[("CREDITFLOW_NOPE", "1")]);
        assert_eq!(keys_of(&errors), vec!["", "CREDITFLOW_NOPE"]);
    }

    #[test]
    fn the_catalog_check_needs_retention_that_covers_backdating() {
        let catalog = crate::catalog::load::from_path(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml"),
        )
        .expect("the shipped catalog loads");
        let mut config = Config::defaults().expect("defaults");
        assert_eq!(config.check_catalog(&catalog), Ok(()));
        config.input.max_age = Duration::from_secs(86_400);
        let errors = config.check_catalog(&catalog).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "input.max_age: 1d is shorter than the catalog's rules.backdate_max (35d): make it \
             at least that"
        );
    }
}
