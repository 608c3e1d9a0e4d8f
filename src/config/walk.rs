//! The walk: the TOML tables (defaults, file, environment) merged into one, then read key by
//! key by typed readers, every error collected with its key. [`from_parts`] runs it: merge,
//! read the sections (`sections.rs`), then the cross-field checks (`checks.rs`).
//!
//! Owns: [`from_parts`], the `Loader` (the merged table, where each key's value came from, the
//! errors and the keys that have one), merging the file and the `CREDITFLOW_` variables over the
//! defaults, and the typed readers the sections call (`string`, `integer`, `duration`, `size`,
//! `choice`, ..., `storage`), each taking its key out of the table and reporting a wrong type or
//! value under the key's name.
//!
//! Must never: stop at the first error, accept an unknown section, key or `CREDITFLOW_`
//! variable, or read a key twice (`take` panics: the walk and `config/creditflow.toml` disagree).
//!
//! Invariants: every error names its key (`section.key`, or the variable's name), says so when
//! the value came from the environment, and marks the key bad, so later checks skip it; a reader
//! that reports returns a placeholder (`min`, empty, zero), never panics on a value.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use super::checks::{subject_prefix_problem, valid_stream_name};
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

// ---------------------------------------------------------------------------------------------
// The walk

/// Where a key's value came from, so an error can say which variable to fix.
#[derive(Clone, Debug)]
enum Origin {
    File,
    Env(String),
}

pub(super) struct Loader {
    /// The defaults with the file's and the environment's values laid over them. Each key is
    /// removed as the walk reads it.
    pub(super) table: Table,
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

    pub(super) fn error(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(Origin::Env(name)) = self.origins.get(key) {
            let _ = write!(message, " (from {name})");
        }
        self.errors.push(ConfigError::new(key, message));
        self.bad.insert(key.to_string());
    }

    pub(super) fn ok(&self, keys: &[&str]) -> bool {
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

    pub(super) fn string(&mut self, section: &str, key: &str) -> String {
        match self.take(section, key) {
            (_, Value::String(text)) => text,
            (path, other) => {
                self.wrong_type(&path, "a string", &other);
                String::new()
            }
        }
    }

    /// A string that must not be empty.
    pub(super) fn name(&mut self, section: &str, key: &str) -> String {
        let text = self.string(section, key);
        if text.is_empty() && !self.bad.contains(&format!("{section}.{key}")) {
            self.error(&format!("{section}.{key}"), "must not be empty");
        }
        text
    }

    pub(super) fn boolean(&mut self, section: &str, key: &str) -> bool {
        match self.take(section, key) {
            (_, Value::Boolean(flag)) => flag,
            (path, other) => {
                self.wrong_type(&path, "true or false", &other);
                false
            }
        }
    }

    /// An integer in `min..=max`; `min` on error.
    pub(super) fn integer(&mut self, section: &str, key: &str, min: i64, max: i64) -> i64 {
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

    pub(super) fn count(&mut self, section: &str, key: &str, min: usize, max: usize) -> usize {
        let min_i = i64::try_from(min).unwrap_or(i64::MAX);
        let max_i = i64::try_from(max).unwrap_or(i64::MAX);
        usize::try_from(self.integer(section, key, min_i, max_i)).unwrap_or(min)
    }

    pub(super) fn count_u64(&mut self, section: &str, key: &str, min: u64) -> u64 {
        let min_i = i64::try_from(min).unwrap_or(i64::MAX);
        u64::try_from(self.integer(section, key, min_i, i64::MAX)).unwrap_or(min)
    }

    /// A duration string, `> 0` unless `zero_allowed`, at most [`DURATION_MAX`].
    pub(super) fn duration(&mut self, section: &str, key: &str, zero_allowed: bool) -> Duration {
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
    pub(super) fn size(&mut self, section: &str, key: &str) -> u64 {
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
    pub(super) fn path(&mut self, section: &str, key: &str) -> Option<PathBuf> {
        let text = self.string(section, key);
        (!text.is_empty()).then(|| PathBuf::from(text))
    }

    /// One of `choices` (its index), or `None` after reporting.
    pub(super) fn choice(&mut self, section: &str, key: &str, choices: &[&str]) -> Option<usize> {
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

    pub(super) fn string_list(&mut self, section: &str, key: &str) -> Vec<String> {
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

    /// A name like [`Loader::stream_name`]'s, or `None` when the key is empty (off).
    pub(super) fn optional_name(&mut self, section: &str, key: &str) -> Option<String> {
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

    pub(super) fn stream_name(&mut self, section: &str, key: &str) -> String {
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

    pub(super) fn subject_prefix(&mut self, section: &str) -> String {
        let prefix = self.string(section, "subject_prefix");
        let path = format!("{section}.subject_prefix");
        if !self.bad.contains(&path) {
            if let Some(problem) = subject_prefix_problem(&prefix) {
                self.error(&path, format!("{prefix:?} {problem}"));
            }
        }
        prefix
    }

    pub(super) fn storage(&mut self, section: &str) -> Storage {
        match self.choice(section, "storage", &["file", "memory"]) {
            Some(1) => Storage::Memory,
            _ => Storage::File,
        }
    }
}
