//! The sections of the config, read one by one into their typed structs: `Loader::config` and
//! one reader per section (`nats`, `auth`, `input`, `output`, `engine`, `snapshot`, `lease`,
//! `service`, `metrics`, `log`), with the checks that concern a single section (auth methods,
//! TLS file pairs, files that must exist, the lease's shortest TTL, the metrics token).
//!
//! Owns: which keys each section has, what type and range each one takes, and how they map
//! onto the fields of [`Config`].
//!
//! Must never: skip a key of `config/creditflow.toml` (`config` asserts that none is left
//! unread), read the table except through the typed readers of `walk.rs`, or check across
//! sections (that is `checks.rs`).
//!
//! Invariants: every key is read exactly once, in the order of the sections; a check on a key
//! runs only when the key has no error yet (`ok`), so one mistake is reported once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Value;

use super::checks::url_problem;
use super::walk::Loader;
use super::*;

impl Loader {
    pub(super) fn config(&mut self) -> Config {
        let config = Config {
            nats: self.nats(),
            input: self.input(),
            output: self.output(),
            engine: self.engine(),
            snapshot: self.snapshot(),
            lease: self.lease(),
            cluster: ClusterConfig {
                enabled: self.boolean("cluster", "enabled"),
            },
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
            huge_pages: self.boolean(s, "huge_pages"),
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
            failures_unready: self.count_u64(s, "failures_unready", 1),
            deltas_max: self.count(s, "deltas_max", 0, DELTAS_MAX),
            fold_percent: u32::try_from(self.integer(s, "fold_percent", 1, 1000)).unwrap_or(1),
            object_store: self.optional_name(s, "object_store"),
        }
    }

    fn lease(&mut self) -> LeaseConfig {
        let bucket = self.stream_name("lease", "bucket");
        let ttl = self.duration("lease", "ttl", false);
        if ttl < LEASE_TTL_MIN && self.ok(&["lease.ttl"]) {
            self.error(
                "lease.ttl",
                format!(
                    "{} is shorter than {}: renewals every third of it would race the broker's \
                     round trip",
                    format_duration(ttl),
                    format_duration(LEASE_TTL_MIN)
                ),
            );
        }
        LeaseConfig { bucket, ttl }
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
        let api = self.boolean("metrics", "api");
        let token = Some(self.string("metrics", "token")).filter(|t| !t.is_empty());
        if let Some(address) = listen {
            if api && token.is_none() && !address.ip().is_loopback() && self.ok(&["metrics.token"])
            {
                self.error(
                    "metrics.token",
                    format!(
                        "required when metrics.api is on and metrics.listen ({address}) is not a \
                         loopback address: the API shows every account's balance (set it, or \
                         CREDITFLOW_METRICS_TOKEN, or turn metrics.api off)"
                    ),
                );
            }
        }
        MetricsConfig { listen, api, token }
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
}
