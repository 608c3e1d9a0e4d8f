//! What the connected nats-server is and can do: its version and JetStream API level, checked
//! once at start-up before anything touches the streams.
//!
//! Older servers ignore settings they do not know without an error (2.9.10, Debian's, returns
//! a stream created with a 2.10 `subject_transform` or a 2.11 `allow_msg_ttl` without them), so
//! a feature newer than the server must be refused by us, not discovered by its absence. The
//! level comes from the server itself (`$JS.API.INFO`, `api.level`: 0 before 2.11, 1 for 2.11,
//! 2 for 2.12, higher later) and, when the processor may not ask (its user lacks
//! `$JS.API.INFO`) or the server does not say, from the version in the server's `INFO`: the
//! lowest level a release of that version has.
//!
//! Must never: start against a server without JetStream, or older than [`MINIMUM`] (the input
//! stream is read with Direct Get, `allow_direct`, from 2.9; an older server would create the
//! stream without it and the history checks would fail later with a less clear error).

use std::fmt;

/// The oldest nats-server creditflow runs against.
pub const MINIMUM: Version = Version(2, 9, 0);

/// The first release whose clustered streams check an expected revision as part of the write
/// (nats-io/nats-server#4319).
pub const CONDITIONAL_WRITES_SERIALIZED: Version = Version(2, 9, 21);

/// A nats-server release: major, minor, patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Reads `2.12.8`, `v2.9.10`, `2.11.0-RC.1` (pre-release and build suffixes ignored).
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim().trim_start_matches('v');
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let version = Version(
            parts.next()??,
            parts.next()??,
            parts.next().unwrap_or(Some(0))?,
        );
        parts.next().is_none().then_some(version)
    }

    /// The lowest JetStream API level a release of this version reports (ADR-44).
    pub fn api_level_at_least(self) -> u32 {
        match self {
            Version(2, minor, _) if minor >= 12 => 2,
            Version(2, 11, _) => 1,
            Version(major, _, _) if major > 2 => 2,
            _ => 0,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Where [`Server::api_level`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelFrom {
    /// The server's own `$JS.API.INFO` answer.
    Server,
    /// The lowest level of the server's version ([`Version::api_level_at_least`]).
    Version,
}

impl LevelFrom {
    pub fn name(self) -> &'static str {
        match self {
            LevelFrom::Server => "server",
            LevelFrom::Version => "version",
        }
    }
}

/// The connected server, as checked at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// The version text the server sent (`INFO`), as it sent it.
    pub version_text: String,
    pub version: Version,
    pub api_level: u32,
    pub level_from: LevelFrom,
}

impl Server {
    /// Checks the server's `INFO` (`version`, `jetstream`) and combines it with the API level
    /// it reported, if it did. `Err` says why creditflow cannot run against it.
    pub fn check(
        version_text: &str,
        jetstream: bool,
        reported_level: Option<u32>,
    ) -> Result<Server, String> {
        let version = Version::parse(version_text).ok_or_else(|| {
            format!("the NATS server reports version {version_text:?}, which is not a version")
        })?;
        if version < MINIMUM {
            return Err(format!(
                "the NATS server is {version}; creditflow needs nats-server {MINIMUM} or newer \
                 (its input stream is read with Direct Get)"
            ));
        }
        if !jetstream {
            return Err(format!(
                "the NATS server ({version}) has JetStream disabled; start it with -js (or \
                 `jetstream {{}}` in its configuration)"
            ));
        }
        let (api_level, level_from) = match reported_level {
            Some(level) => (level, LevelFrom::Server),
            None => (version.api_level_at_least(), LevelFrom::Version),
        };
        Ok(Server {
            version_text: version_text.to_string(),
            version,
            api_level,
            level_from,
        })
    }

    /// Why a replicated lease bucket is unsafe on this server, if it is: before 2.9.21 a
    /// clustered stream checks a conditional write's expected revision before the write goes
    /// through Raft, not as part of it, so two writes expecting the same revision, in flight
    /// together, can both be stored (nats-io/nats-server#4320, fixed by #4319): two processors
    /// can take one lease. `None` on a server with the fix, or with one replica.
    pub fn lease_hazard(&self, replicas: usize) -> Option<String> {
        (replicas > 1 && self.version < CONDITIONAL_WRITES_SERIALIZED).then(|| {
            format!(
                "nats-server {} checks a replicated stream's expected revision outside Raft \
                 (nats-io/nats-server#4320): two processors can take one lease of the \
                 {replicas}-replica lease bucket at once; use nats-server \
                 {CONDITIONAL_WRITES_SERIALIZED} or newer",
                self.version
            )
        })
    }

    /// `Ok` when the server has at least `level`; else why `feature` cannot be used on it.
    pub fn require(&self, feature: &str, level: u32, release: &str) -> Result<(), String> {
        if self.api_level >= level {
            return Ok(());
        }
        Err(format!(
            "{feature} needs JetStream API level {level} (nats-server {release} or newer); the \
             server is {} at level {} (from its {})",
            self.version,
            self.api_level,
            self.level_from.name()
        ))
    }
}

/// Asks the server for its JetStream API level (`$JS.API.INFO`). `None` when the processor may
/// not ask, the request fails, or a server before 2.11 does not say (it reports level 0 or
/// nothing, which [`Version::api_level_at_least`] gives as well).
pub async fn reported_api_level(context: &async_nats::jetstream::Context) -> Option<u32> {
    match context.query_account().await {
        Ok(account) => {
            let level = u32::try_from(account.requests.level).unwrap_or(u32::MAX);
            (level > 0).then_some(level)
        }
        Err(error) => {
            tracing::debug!(%error, "$JS.API.INFO failed; the API level comes from the version");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicated_lease_bucket_is_a_hazard_before_2_9_21_only() {
        let server = |version: &str| Server::check(version, true, None).unwrap();
        let hazard = server("2.9.10")
            .lease_hazard(3)
            .expect("2.9.10 with 3 replicas");
        assert!(hazard.contains("2.9.10") && hazard.contains("#4320") && hazard.contains("2.9.21"));
        assert_eq!(
            server("2.9.10").lease_hazard(1),
            None,
            "one replica has no race"
        );
        assert_eq!(server("2.9.21").lease_hazard(3), None);
        assert_eq!(server("2.10.0").lease_hazard(3), None);
        assert_eq!(server("2.12.8").lease_hazard(5), None);
    }

    #[test]
    fn versions_parse_with_and_without_prefixes_and_suffixes() {
        assert_eq!(Version::parse("2.12.8"), Some(Version(2, 12, 8)));
        assert_eq!(Version::parse("v2.9.10"), Some(Version(2, 9, 10)));
        assert_eq!(Version::parse("2.11.0-RC.1"), Some(Version(2, 11, 0)));
        assert_eq!(Version::parse("2.10"), Some(Version(2, 10, 0)));
        assert_eq!(Version::parse("2.x.1"), None);
        assert_eq!(Version::parse("2.1.2.3"), None);
        assert_eq!(Version::parse(""), None);
        assert!(Version(2, 9, 10) < Version(2, 10, 0));
    }

    #[test]
    fn the_level_is_the_servers_when_it_says_else_the_versions_lowest() {
        let server = Server::check("2.12.8", true, Some(2)).unwrap();
        assert_eq!(
            (server.api_level, server.level_from),
            (2, LevelFrom::Server)
        );
        let server = Server::check("2.15.1", true, Some(5)).unwrap();
        assert_eq!(server.api_level, 5);
        let server = Server::check("2.9.10", true, None).unwrap();
        assert_eq!(
            (server.api_level, server.level_from),
            (0, LevelFrom::Version)
        );
        assert_eq!(Server::check("2.11.4", true, None).unwrap().api_level, 1);
        assert_eq!(Server::check("2.14.0", true, None).unwrap().api_level, 2);
    }

    #[test]
    fn old_servers_and_servers_without_jetstream_are_refused_saying_why() {
        let old = Server::check("2.8.4", true, None).unwrap_err();
        assert!(
            old.contains("2.8.4") && old.contains("2.9.0 or newer"),
            "{old}"
        );
        let off = Server::check("2.12.8", false, None).unwrap_err();
        assert!(
            off.contains("JetStream disabled") && off.contains("-js"),
            "{off}"
        );
        let junk = Server::check("banana", true, None).unwrap_err();
        assert!(junk.contains("\"banana\""), "{junk}");
    }

    #[test]
    fn a_feature_newer_than_the_server_is_refused_naming_both() {
        let server = Server::check("2.9.10", true, None).unwrap();
        assert!(server.require("direct get", 0, "2.9").is_ok());
        let refused = server.require("per-message TTL", 1, "2.11").unwrap_err();
        assert!(
            refused.contains("per-message TTL")
                && refused.contains("level 1")
                && refused.contains("2.11")
                && refused.contains("2.9.10 at level 0 (from its version)"),
            "{refused}"
        );
        let current = Server::check("2.12.8", true, Some(2)).unwrap();
        assert!(current.require("per-message TTL", 1, "2.11").is_ok());
    }
}
