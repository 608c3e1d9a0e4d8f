//! The input and output streams: created when missing, checked when present.
//!
//! Owns: the stream configurations creditflow needs and the judgement of an existing stream.
//!
//! Must never: change an existing stream (an operator owns it once it exists), or start on a
//! stream whose settings could lose or reorder billing data: memory storage, `discard: old`
//! (both only when explicitly allowed), any retention but limits (interest and work-queue
//! streams delete messages a restart must replay), subjects that miss ours, or message deletion
//! and purge allowed on the input stream (a deleted message is a gap, and a gap halts us).

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// What a stream must look like.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSettings {
    pub name: String,
    /// Subjects the stream must capture, e.g. `creditflow.in.>`.
    pub subjects: Vec<String>,
    pub replicas: usize,
    pub memory_storage: bool,
    pub allow_memory_storage: bool,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_messages: i64,
    pub duplicate_window: Duration,
    pub discard_old: bool,
    pub allow_discard_old: bool,
    /// The input stream refuses deletes and purges (a deleted message would be a gap).
    pub deny_delete_and_purge: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream {name} has settings creditflow refuses:\n  - {}", problems.join("\n  - "))]
    Unsafe { name: String, problems: Vec<String> },
    #[error("stream {name}: {source}")]
    Nats {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StreamSettings {
    /// The configuration used when creating the stream.
    pub fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            num_replicas: self.replicas,
            storage: if self.memory_storage {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            retention: stream::RetentionPolicy::Limits,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_messages: self.max_messages,
            duplicate_window: self.duplicate_window,
            discard: if self.discard_old {
                stream::DiscardPolicy::Old
            } else {
                stream::DiscardPolicy::New
            },
            deny_delete: self.deny_delete_and_purge,
            deny_purge: self.deny_delete_and_purge,
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Every reason an existing stream's configuration is unsafe or incompatible.
    pub fn problems(&self, existing: &stream::Config) -> Vec<String> {
        let mut problems = Vec::new();
        for subject in &self.subjects {
            if !existing.subjects.iter().any(|s| covers(s, subject)) {
                problems.push(format!(
                    "subjects {:?} do not include {subject:?}",
                    existing.subjects
                ));
            }
        }
        if existing.retention != stream::RetentionPolicy::Limits {
            problems.push(format!(
                "retention is {:?}: only limits retention keeps messages a restart must replay",
                existing.retention
            ));
        }
        if existing.storage == stream::StorageType::Memory && !self.allow_memory_storage {
            problems.push("storage is memory: a broker restart would lose the billing log".into());
        }
        if existing.discard == stream::DiscardPolicy::Old && !self.allow_discard_old {
            problems.push(
                "discard is old: the broker would delete unconsumed billing messages when full"
                    .into(),
            );
        }
        if self.deny_delete_and_purge && (!existing.deny_delete || !existing.deny_purge) {
            problems.push(
                "deny_delete and deny_purge must be set: a deleted message is a gap in the log"
                    .into(),
            );
        }
        if existing.max_age != Duration::ZERO && existing.max_age < self.max_age {
            problems.push(format!(
                "max_age {:?} is shorter than the configured {:?}",
                existing.max_age, self.max_age
            ));
        }
        problems
    }
}

/// Whether every subject `pattern` matches is also matched by `filter` (NATS wildcards: `*`
/// is one token, `>` one or more at the end).
pub fn covers(filter: &str, pattern: &str) -> bool {
    let mut filter = filter.split('.');
    let mut pattern = pattern.split('.');
    loop {
        match (filter.next(), pattern.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(f), Some(p)) if f == p && f != "*" && f != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether [`ensure_stream`] found the stream or made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    Existing,
    Created,
}

/// Returns the stream, creating it when missing (and saying so); refuses an existing unsafe
/// one.
pub async fn ensure_stream(
    context: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(stream::Stream, Ensured), StreamError> {
    let nats = |e: Box<dyn std::error::Error + Send + Sync>| StreamError::Nats {
        name: settings.name.clone(),
        source: e,
    };
    match context.get_stream(&settings.name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| nats(Box::new(e)))?;
            let problems = settings.problems(&info.config);
            if !problems.is_empty() {
                return Err(StreamError::Unsafe {
                    name: settings.name.clone(),
                    problems,
                });
            }
            Ok((existing, Ensured::Existing))
        }
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            tracing::info!(stream = %settings.name, "creating stream");
            context
                .create_stream(settings.to_config())
                .await
                .map(|stream| (stream, Ensured::Created))
                .map_err(|e| nats(Box::new(e)))
        }
        Err(error) => Err(nats(Box::new(error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> StreamSettings {
        StreamSettings {
            name: "CREDITFLOW_IN".into(),
            subjects: vec!["creditflow.in.*.*".into()],
            replicas: 1,
            memory_storage: false,
            allow_memory_storage: false,
            max_age: Duration::from_secs(30 * 86_400),
            max_bytes: 1 << 30,
            max_messages: 1_000_000,
            duplicate_window: Duration::from_secs(120),
            discard_old: false,
            allow_discard_old: false,
            deny_delete_and_purge: true,
        }
    }

    #[test]
    fn a_wider_filter_covers_ours() {
        assert!(covers("creditflow.in.*.*", "creditflow.in.*.*"));
        assert!(covers("creditflow.in.>", "creditflow.in.*.*"));
        assert!(covers("creditflow.>", "creditflow.in.*.*"));
        assert!(covers(">", "creditflow.in.*.*"));
        assert!(covers("creditflow.in.*.*", "creditflow.in.3.usage"));
        assert!(!covers("creditflow.in.*", "creditflow.in.*.*"));
        assert!(!covers("creditflow.in.*.usage", "creditflow.in.*.*"));
        assert!(!covers("creditflow.in.*.*", "creditflow.in.>"));
        assert!(!covers("creditflow.in.*.*.*", "creditflow.in.*.*"));
        assert!(!covers("creditflow.out.>", "creditflow.in.*.*"));
    }

    #[test]
    fn our_own_configuration_is_safe() {
        let settings = settings();
        assert!(settings.problems(&settings.to_config()).is_empty());
    }

    #[test]
    fn every_unsafe_setting_is_reported() {
        let settings = settings();
        let existing = stream::Config {
            name: "CREDITFLOW_IN".into(),
            subjects: vec!["other.>".into()],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::Memory,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(60),
            ..Default::default()
        };
        let problems = settings.problems(&existing);
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }
}
