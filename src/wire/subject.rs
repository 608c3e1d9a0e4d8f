//! Input subjects: which partition a message is for, and which message types its subject may
//! carry (SEMANTICS §2.2).
//!
//! Owns: the subject grammar `<prefix>.<partition>.<kind>` with kind `usage`, `cmd` or `tick`,
//! and the rule of which message types each kind carries. Usage events, commands and ticks
//! travel on different subjects so that NATS permissions can let a usage producer publish
//! usage and nothing else; the engine dead-letters a message whose subject does not carry its
//! type (`not_allowed_on_subject`), the same way live and on replay, since the subject is in the
//! log.
//!
//! Must never: accept a subject loosely (`<prefix>.07.usage`, a partition out of range, an
//! unknown kind), or look at the payload: the verdict depends on the subject and the decoded
//! message type only.
//!
//! Invariants: [`subject`] and [`route`] are inverse on every valid partition subject; a
//! subject that is not under the prefix is a plain log ([`Route::Log`]: routed by the account's
//! hash, every type allowed: an offline JSONL file the operator owns).

use super::input::Message;

/// What one input subject carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    /// Usage events only: what producers publish.
    Usage,
    /// Commands only (grant, void_grant, set_plan, set_policy, adjust, reverse, reserve,
    /// commit, release): what operators publish, directly or through the service.
    Command,
    /// Ticks only: what the processor publishes.
    Tick,
}

impl SubjectKind {
    pub const ALL: [SubjectKind; 3] = [SubjectKind::Usage, SubjectKind::Command, SubjectKind::Tick];

    /// The subject's last token.
    pub fn token(self) -> &'static str {
        match self {
            SubjectKind::Usage => "usage",
            SubjectKind::Command => "cmd",
            SubjectKind::Tick => "tick",
        }
    }

    fn parse(token: &str) -> Option<SubjectKind> {
        SubjectKind::ALL.into_iter().find(|k| k.token() == token)
    }

    /// Whether a subject of this kind may carry `message`.
    pub fn allows(self, message: &Message<'_>) -> bool {
        matches!(
            (self, message),
            (SubjectKind::Usage, Message::Usage(_))
                | (SubjectKind::Command, Message::Command(_))
                | (SubjectKind::Tick, Message::Tick { .. })
        )
    }
}

/// Why a subject under the prefix routes nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unroutable {
    /// No partition number below the partition count in the second-to-last position.
    NoPartition,
    /// A partition, but a last token that is not a kind (or a missing one).
    NoKind,
}

/// Where a message's subject sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Not a partition subject (a plain JSONL log replayed offline): routed by the account's
    /// hash, every message type allowed.
    Log,
    /// `<prefix>.<number>.<kind>`.
    Partition { number: u32, kind: SubjectKind },
    /// Under the prefix but not a valid partition subject: dead-lettered, by partition 0.
    Unroutable(Unroutable),
}

impl Route {
    /// The partition the subject names, if it names one.
    pub fn partition(self) -> Option<u32> {
        match self {
            Route::Partition { number, .. } => Some(number),
            _ => None,
        }
    }
}

/// The subject that partition `partition`'s messages of `kind` are published on.
pub fn subject(prefix: &str, partition: u32, kind: SubjectKind) -> String {
    format!("{prefix}.{partition}.{}", kind.token())
}

/// The subjects of the input stream: `<prefix>.*.*` (partition, kind).
pub fn stream_filter(prefix: &str) -> String {
    format!("{prefix}.*.*")
}

/// Routes `subject` for a deployment of `partitions` partitions.
pub fn route(prefix: &str, subject: &str, partitions: u32) -> Route {
    let Some(rest) = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return Route::Log;
    };
    let (number, kind) = match rest.split_once('.') {
        Some((number, kind)) => (number, Some(kind)),
        None => (rest, None),
    };
    // Digits only, no leading zero: one subject per partition, so permissions and the
    // stream's per-subject limits cannot be dodged by spelling a number another way.
    let canonical = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && (number == "0" || !number.starts_with('0'));
    let number = match number.parse::<u32>() {
        Ok(n) if canonical && n < partitions => n,
        _ => return Route::Unroutable(Unroutable::NoPartition),
    };
    match kind.and_then(SubjectKind::parse) {
        Some(kind) => Route::Partition { number, kind },
        None => Route::Unroutable(Unroutable::NoKind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "creditflow.in";

    #[test]
    fn partition_subjects_round_trip() {
        for partition in [0, 7, 15] {
            for kind in SubjectKind::ALL {
                let text = subject(P, partition, kind);
                assert_eq!(
                    route(P, &text, 16),
                    Route::Partition {
                        number: partition,
                        kind
                    }
                );
            }
        }
        assert_eq!(subject(P, 3, SubjectKind::Command), "creditflow.in.3.cmd");
        assert_eq!(stream_filter(P), "creditflow.in.*.*");
    }

    #[test]
    fn anything_else_under_the_prefix_routes_nowhere() {
        use Unroutable::*;
        for (text, why) in [
            ("creditflow.in.16.usage", NoPartition),
            ("creditflow.in.07.usage", NoPartition),
            ("creditflow.in.+7.usage", NoPartition),
            ("creditflow.in.x.usage", NoPartition),
            ("creditflow.in..usage", NoPartition),
            ("creditflow.in.3", NoKind),
            ("creditflow.in.3.usages", NoKind),
            ("creditflow.in.3.usage.x", NoKind),
            ("creditflow.in.3.", NoKind),
        ] {
            assert_eq!(route(P, text, 16), Route::Unroutable(why), "{text}");
        }
    }

    #[test]
    fn a_subject_outside_the_prefix_is_a_plain_log() {
        for text in ["creditflow.in", "creditflow.input.1.usage", "other", ""] {
            assert_eq!(route(P, text, 16), Route::Log, "{text}");
        }
    }
}
