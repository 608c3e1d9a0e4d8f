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
//! Files: this one holds the types and the entry points; `walk.rs` merges the file and the
//! environment over the defaults and holds the typed readers of single keys; `sections.rs` reads
//! each section into its struct; `checks.rs` holds the cross-field checks and the validation of
//! names, subject prefixes and URLs; `text.rs` prints the effective config and parses sizes and
//! durations; `tests.rs` covers them all.
//!
//! Invariants: a [`Config`] comes out of [`load`] only when the error list is empty; it then
//! holds every rule stated on its fields (ranges, pairings, exclusions, files that exist). The
//! embedded defaults load without error (a test checks it), and every key of the defaults is read
//! exactly once by the walk (asserted: a key added to the file but not to the code is a
//! programmer error and crashes every test).

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catalog::Catalog;

/// The documented defaults: `config/creditflow.toml`, compiled in.
pub const DEFAULTS_TOML: &str = include_str!("../../config/creditflow.toml");
/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "CREDITFLOW_";
/// Most partitions: partition ids appear in subjects and metric labels, and each costs a timer
/// heap and a snapshot file.
pub const PARTITIONS_MAX: u32 = 4096;
/// Most stream replicas JetStream allows.
pub const REPLICAS_MAX: usize = 5;
/// Fewest snapshots kept per partition: the newest may be torn by a crash mid-write.
pub const SNAPSHOTS_KEPT_MIN: usize = 2;

/// Most `snapshot.deltas_max`: a longer chain only makes recovery read more files.
pub const DELTAS_MAX: usize = 1024;
/// Longest duration any key accepts: 100 years. JetStream holds durations as signed 64-bit
/// nanoseconds (about 292 years), so anything longer could not be sent to it.
pub const DURATION_MAX: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Largest config file [`load`] reads: 1 MiB (the reference file, every key documented, is
/// 12 KB). A larger file, or a device such as `/dev/zero`, is refused after reading this much.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;
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
    pub lease: LeaseConfig,
    pub cluster: ClusterConfig,
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

/// `[input]`: the stream of usage events, commands and ticks, and how it is read.
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
    /// Let the kernel back the heap with transparent huge pages (off: the process opts out).
    pub huge_pages: bool,
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
    /// Consecutive snapshot failures after which `/readyz` says not ready; >= 1.
    pub failures_unready: u64,
    /// Snapshots written as deltas (only what changed) between two full ones; 0 = every
    /// snapshot full.
    pub deltas_max: usize,
    /// Fold the deltas into a full file once their bytes reach this percentage of the full
    /// file's; 1..=1000.
    pub fold_percent: u32,
    /// A JetStream object store bucket the snapshots are mirrored to (`snapshot::remote`);
    /// `None` (the key empty): local disk only.
    pub object_store: Option<String>,
}

/// `[lease]`: one processor at a time on the streams (`crate::lease`).
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseConfig {
    /// The JetStream key-value bucket, `[A-Za-z0-9_-]+`; the key is the input stream's name.
    pub bucket: String,
    /// The bucket's `max_age`: how long a holder that stopped renewing keeps the lease;
    /// >= [`LEASE_TTL_MIN`]. Renewed every third of it.
    pub ttl: Duration,
}

/// `[cluster]`: several processors sharing the partitions (`crate::cluster`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// false: this processor owns every partition under the lease on the input stream. true:
    /// it owns the partitions whose leases it holds; needs `snapshot.object_store`.
    pub enabled: bool,
}

/// Shortest `lease.ttl`: a renewal every third of it must fit a round trip to the broker with
/// room to spare.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(1);

/// Shortest `lease.ttl` with a replicated bucket (`input.replicas` > 1): when the node leading
/// the bucket dies, writes fail until the others elect a new leader (nats-server waits 4 to 9 s
/// before electing), and the holder's fence closes 4/5 of the TTL after its last renewal, which
/// may have been a third of the TTL before the death: 4/5 − 1/3 of 20 s is 9.3 s.
pub const LEASE_TTL_REPLICATED_MIN: Duration = Duration::from_secs(20);

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
    /// Serve the HTTP read API (`/api/v1/...`) on the same server.
    pub api: bool,
    /// The bearer token the API requires; required when `api` is on and `listen` is not a
    /// loopback address. Never printed.
    pub token: Option<String>,
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
    let fail = |message: String| ConfigErrors(vec![ConfigError::new("", message)]);
    let file = match path {
        None => None,
        Some(path) => {
            let bytes = crate::catalog::load::read_bounded(path, CONFIG_BYTES_MAX)
                .map_err(|error| fail(format!("cannot read config {}: {error}", path.display())))?
                .ok_or_else(|| {
                    fail(format!(
                        "config {} is larger than {CONFIG_BYTES_MAX} bytes (1 MiB), the most a \
                         config file may be",
                        path.display()
                    ))
                })?;
            let text = String::from_utf8(bytes).map_err(|error| {
                fail(format!(
                    "config {} is not UTF-8 (byte {})",
                    path.display(),
                    error.utf8_error().valid_up_to()
                ))
            })?;
            Some((path, text))
        }
    };
    let file = file.as_ref().map(|(path, text)| (*path, text.as_str()));
    from_parts(file, env)
}

/// [`load`] with the file's text given: see [`walk::from_parts`].
pub use walk::from_parts;

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
}

mod checks;
mod sections;
mod text;
mod walk;

use text::span_duration;
pub use text::{format_duration, format_size, parse_duration, parse_size, SizeParseError};

#[cfg(test)]
mod tests;
