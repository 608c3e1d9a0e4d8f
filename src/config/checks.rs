//! The checks: the rules that span keys or sections (`Loader::check`: stream names and subject
//! prefixes that must not collide, memory storage and `discard = "old"` only when insisted on,
//! duplicate windows within max age, the lease TTL a replicated stream needs, cluster mode's
//! object store, no more shards than partitions), and the free helpers that judge one value
//! (stream names, subject prefixes, server URLs).
//!
//! Owns: what makes a name, a subject prefix or a server URL acceptable, when two prefixes
//! overlap, and how a URL is shown in a message.
//!
//! Must never: read the table (the sections have read every key by the time `check` runs),
//! report a key that already has an error, or print a URL's credentials (`shown_url`).
//!
//! Invariants: every cross-field error names one of the keys involved; each rule is checked
//! once, on the values [`Config`] holds.

use super::walk::Loader;
use super::*;

impl Loader {
    pub(super) fn check(&mut self, config: &Config) {
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

/// `[A-Za-z0-9_-]+`: what JetStream allows in stream and consumer names and is safe in a
/// subject and a file name.
pub(super) fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why `prefix` is not a usable subject prefix, if it is not: dot-separated non-empty tokens of
/// printable ASCII without wildcards, not starting with `$` (system subjects).
pub(super) fn subject_prefix_problem(prefix: &str) -> Option<&'static str> {
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

pub(super) fn url_problem(url: &str) -> Option<String> {
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
