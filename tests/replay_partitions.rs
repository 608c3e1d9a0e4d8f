//! `replay` and `simulate` of an exported log read its partition count from its subjects, so an
//! export of a multi-partition stream replays right without `--partitions` (it used to replay
//! on one partition and dead-letter every message of the others).

use creditflow::cli::replay::{partitions_of_log, LogEntry};
use creditflow::engine::partition_of;
use creditflow::wire::subject::{subject, SubjectKind};

/// The sample log as a processor with `partitions` partitions would have stored it: each
/// message on its account's partition subject, ticks on every partition's.
fn exported(partitions: u32, with_ticks: bool) -> Vec<LogEntry> {
    let mut log = Vec::new();
    for line in creditflow::sample::scenario(4, 40, 1500) {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let kind = match value["type"].as_str() {
            None => SubjectKind::Usage,
            Some("tick") => SubjectKind::Tick,
            Some(_) => SubjectKind::Command,
        };
        let targets: Vec<u32> = match value["account"].as_str() {
            Some(account) => vec![partition_of(account, partitions)],
            None if with_ticks => (0..partitions).collect(),
            None => Vec::new(),
        };
        for partition in targets {
            log.push(LogEntry {
                seq: log.len() as u64 + 1,
                subject: subject("creditflow.in", partition, kind),
                payload: line.clone().into_bytes(),
                received: None,
            });
        }
    }
    log
}

#[test]
fn the_partition_count_is_read_from_the_subjects() {
    for partitions in [1, 2, 7, 16, 64] {
        for with_ticks in [true, false] {
            let log = exported(partitions, with_ticks);
            let found = partitions_of_log(&log).unwrap();
            assert_eq!(
                found, partitions,
                "{partitions} partitions, ticks {with_ticks}"
            );
            let catalog = std::sync::Arc::new(
                creditflow::catalog::load::from_path(
                    &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml"),
                )
                .unwrap(),
            );
            let (_, outputs) = creditflow::cli::replay::run_log(catalog, found, &log, None);
            assert!(
                !outputs
                    .iter()
                    .any(|o| o.to_json().contains("wrong_partition")),
                "{partitions}"
            );
        }
    }
    // A plain log names no partition.
    let plain: Vec<LogEntry> = exported(4, true)
        .into_iter()
        .map(|e| LogEntry {
            subject: "creditflow.in".into(),
            ..e
        })
        .collect();
    assert_eq!(partitions_of_log(&plain).unwrap(), 1);
    // Subjects no count explains (accounts scattered at random) are refused, not guessed.
    let mut scrambled = exported(4, false);
    for (i, entry) in scrambled.iter_mut().enumerate() {
        entry.subject = subject("creditflow.in", (i % 5) as u32, SubjectKind::Usage);
    }
    assert!(partitions_of_log(&scrambled).is_err());
}
