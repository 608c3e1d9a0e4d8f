//! The walk: the TOML tables (defaults, file, environment) read key by key into a [`Config`],
//! every error collected with its key, then the cross-field checks.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use super::text::string;
use super::*;

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

/// `url` with any credentials in it (`user:password@`) replaced by [`REDACTED`], for messages.
fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.split_once('@') {
        Some((_, host)) if !scheme.is_empty() => format!("{scheme}://{REDACTED}@{host}"),
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => url.to_string(),
    }
}

fn url_problem(url: &str) -> Option<String> {
    let shown = shown_url(url);
    if url.is_empty() || url.chars().any(char::is_whitespace) {
        return Some(format!("{shown:?} is not a server URL"));
    }
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !["nats", "tls", "ws", "wss"].contains(&scheme) {
                return Some(format!(
                    "{shown:?}: unknown scheme {scheme:?} (nats, tls, ws or wss)"
                ));
            }
            rest
        }
        None => url,
    };
    if rest.contains('@') {
        // The client would not use them for every server, and they would be printed with the
        // URL (--print-config, errors): credentials have keys of their own.
        return Some(format!(
            "{shown:?} carries credentials: put them in nats.user and nats.password (or token, \
             nkey_seed_file, creds_file), not in the URL"
        ));
    }
    if rest.is_empty() {
        return Some(format!("{shown:?} names no host"));
    }
    // The client's own parser, so a URL accepted here is one the connection can use (a bad
    // port or host used to pass the load and fail only when connecting). Its messages name
    // what is wrong without repeating the URL.
    if let Err(error) = url.parse::<async_nats::ServerAddr>() {
        return Some(format!("{shown:?} is not a valid server URL: {error}"));
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

    /// A name like [`Walk::stream_name`]'s, or `None` when the key is empty (off).
    fn optional_name(&mut self, section: &str, key: &str) -> Option<String> {
        let name = self.string(section, key);
        let path = format!("{section}.{key}");
        if name.is_empty() {
            return None;
        }
        if !self.bad.contains(&path) && !valid_stream_name(&name) {
            self.error(
                &path,
                format!(
                    "{name:?} is not a valid name: use 1 or more of A-Z, a-z, 0-9, _ and -, or \
                     leave it empty"
                ),
            );
        }
        Some(name)
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
        if config.input.replicas > 1
            && config.lease.ttl < LEASE_TTL_REPLICATED_MIN
            && self.ok(&["lease.ttl", "input.replicas"])
        {
            self.error(
                "lease.ttl",
                format!(
                    "{} is shorter than {}, the least with input.replicas = {} (the lease bucket's \
                     replicas): while a dead node's leadership is elected anew (4 to 9 s) no \
                     renewal succeeds, and the lease must outlast that",
                    format_duration(config.lease.ttl),
                    format_duration(LEASE_TTL_REPLICATED_MIN),
                    config.input.replicas
                ),
            );
        }
        if config.cluster.enabled
            && config.snapshot.object_store.is_none()
            && self.ok(&["cluster.enabled", "snapshot.object_store"])
        {
            self.error(
                "cluster.enabled",
                "processors sharing the partitions need snapshot.object_store: a partition \
                 taken over starts from the snapshots its last owner mirrored there",
            );
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
