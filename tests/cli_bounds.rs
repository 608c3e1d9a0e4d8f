//! Bounds on what the command line and the files it names may hold, through the real binary:
//! server URLs checked at load, `--partitions 0` refused, the catalog read with a size limit,
//! a UTF-8 byte order mark at the start of a JSON lines log accepted.

use std::path::Path;
use std::process::{Command, Output};

fn creditflow(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .args(args)
        .current_dir(dir)
        .env_remove("CREDITFLOW_NATS_URL")
        .env_remove("CREDITFLOW_NATS_URLS")
        .output()
        .expect("run creditflow")
}

fn manifest(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn server_urls_the_client_cannot_parse_are_refused_at_load_each_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("creditflow.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurls = [\"nats://host:notaport\", \"host:99999\"]\n[engine]\ncatalog = \
             \"{}\"\npartitions = 0\n",
            manifest("config/catalog.toml")
        ),
    )
    .unwrap();
    let out = creditflow(
        &[
            "run",
            "--print-config",
            "--config",
            config.to_str().unwrap(),
        ],
        dir.path(),
    );
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("nats.urls: \"nats://host:notaport\" is not a valid server URL"),
        "{text}"
    );
    assert!(
        text.contains("nats.urls: \"host:99999\" is not a valid server URL"),
        "{text}"
    );
    assert!(
        text.contains("engine.partitions: must be between 1 and 4096"),
        "{text}"
    );
}

#[test]
fn zero_partitions_are_refused_by_every_command_that_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let events = manifest("config/sample-events.jsonl");
    let catalog = manifest("config/catalog.toml");
    let commands: [Vec<&str>; 4] = [
        vec![
            "replay",
            "--catalog",
            &catalog,
            "--events",
            &events,
            "--partitions",
            "0",
        ],
        vec![
            "simulate",
            "--catalog",
            &catalog,
            "--candidate",
            &catalog,
            "--events",
            &events,
            "--partitions",
            "0",
        ],
        // Refused before connecting: the closed port is never tried.
        vec![
            "publish",
            "--partitions",
            "0",
            "--usage",
            "acct_1",
            "api_call",
            "1",
            "--server",
            "nats://127.0.0.1:1",
        ],
        vec![
            "demo",
            "--catalog",
            &catalog,
            "--partitions",
            "0",
            "--messages",
            "10",
        ],
    ];
    for args in &commands {
        let out = creditflow(args, dir.path());
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(
            text.contains(
                "invalid value '0' for '--partitions <PARTITIONS>': 0 is not in 1..=4096"
            ),
            "{args:?}: {text}"
        );
    }
}

/// Runs creditflow and kills it if it has not ended within `limit` (then `None`).
fn creditflow_within(args: &[&str], dir: &Path, limit: std::time::Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run creditflow");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(child.wait_with_output().expect("output"))
}

#[test]
fn a_catalog_or_config_past_its_size_limit_is_refused_after_reading_that_much() {
    let dir = tempfile::tempdir().unwrap();
    let events = manifest("config/sample-events.jsonl");
    // A regular file one byte past 16 MiB (a TOML comment, so only its size is wrong).
    let big = dir.path().join("big.toml");
    let mut text = std::fs::read_to_string(manifest("config/catalog.toml")).unwrap();
    text.push('#');
    text.push_str(&"x".repeat((16 << 20) + 1 - text.len()));
    std::fs::write(&big, text).unwrap();
    let limit = std::time::Duration::from_secs(60);
    for catalog in [big.to_str().unwrap(), "/dev/zero"] {
        let out = creditflow_within(
            &["replay", "--catalog", catalog, "--events", &events],
            dir.path(),
            limit,
        )
        .unwrap_or_else(|| panic!("replay --catalog {catalog} did not end within {limit:?}"));
        let text = stderr(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains(&format!(
                "catalog {catalog} is larger than 16777216 bytes (16 MiB)"
            )),
            "{text}"
        );
    }
    let out = creditflow_within(
        &["run", "--print-config", "--config", "/dev/zero"],
        dir.path(),
        limit,
    )
    .expect("run --config /dev/zero did not end in time");
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("config /dev/zero is larger than 1048576 bytes (1 MiB)"),
        "{text}"
    );
}

#[test]
fn payload_max_is_bounded_at_one_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let events = manifest("config/sample-events.jsonl");
    let shipped = std::fs::read_to_string(manifest("config/catalog.toml")).unwrap();
    assert!(shipped.contains("payload_max = 16384"));
    for (value, accepted) in [
        (1_048_576, true),
        (1_048_577, false),
        (10_000_000_000i64, false),
    ] {
        let catalog = dir.path().join(format!("catalog-{value}.toml"));
        std::fs::write(
            &catalog,
            shipped.replace("payload_max = 16384", &format!("payload_max = {value}")),
        )
        .unwrap();
        let out = creditflow(
            &[
                "replay",
                "--catalog",
                catalog.to_str().unwrap(),
                "--events",
                &events,
                "--print",
                "state",
            ],
            dir.path(),
        );
        let text = stderr(&out);
        assert_eq!(out.status.success(), accepted, "{value}: {text}");
        if !accepted {
            assert!(
                text.contains("rules.payload_max: must be between 1 and 1048576"),
                "{value}: {text}"
            );
        }
    }
}

/// `text` with a UTF-8 byte order mark before it, written to `dir/name`.
fn with_bom(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(text.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_log_is_skipped_by_replay_and_simulate() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = manifest("config/catalog.toml");
    let plain = manifest("config/sample-events.jsonl");
    let marked = with_bom(
        dir.path(),
        "bom.jsonl",
        &std::fs::read_to_string(&plain).unwrap(),
    );
    let replay = |events: &str, envelope: bool| {
        let mut args = vec![
            "replay",
            "--catalog",
            &catalog,
            "--events",
            events,
            "--json",
        ];
        if envelope {
            args.push("--envelope");
        }
        let out = creditflow(&args, dir.path());
        assert!(out.status.success(), "{events}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let expected = replay(&plain, false);
    assert!(
        !expected.contains("invalid_json"),
        "the sample log has no malformed first line"
    );
    assert_eq!(replay(&marked, false), expected);
    // An envelope log (as `export` writes) with a mark: its first line is still an envelope.
    let first = std::fs::read_to_string(&plain)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let envelope = serde_json::json!({"seq": 1, "subject": "creditflow.in", "payload": first});
    let envelope_plain = dir.path().join("envelope.jsonl");
    std::fs::write(&envelope_plain, format!("{envelope}\n")).unwrap();
    let envelope_marked = with_bom(dir.path(), "envelope-bom.jsonl", &format!("{envelope}\n"));
    assert_eq!(
        replay(&envelope_marked, true),
        replay(envelope_plain.to_str().unwrap(), true)
    );
    let simulate = |events: &str| {
        let out = creditflow(
            &[
                "simulate",
                "--catalog",
                &catalog,
                "--candidate",
                &catalog,
                "--events",
                events,
                "--json",
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{events}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(simulate(&marked), simulate(&plain));
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_file_is_skipped_by_publish() {
    let server = creditflow::testkit::NatsServer::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let context = runtime.block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        context
            .create_stream(async_nats::jetstream::stream::Config {
                name: "CREDITFLOW_IN".into(),
                subjects: vec!["creditflow.in.*.*".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        context
    });
    let dir = tempfile::tempdir().unwrap();
    let first = r#"{"id":"e1","account":"acct_1","meter":"api_call","quantity":"1","ts":"2026-11-24T10:00:00Z"}"#;
    let second = r#"{"id":"e2","account":"acct_1","meter":"api_call","quantity":"2","ts":"2026-11-24T10:00:01Z"}"#;
    let file = with_bom(dir.path(), "usage.jsonl", &format!("{first}\n{second}\n"));
    let out = creditflow(&["publish", &file, "--server", &url], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = runtime.block_on(async {
        let stream = context.get_stream("CREDITFLOW_IN").await.unwrap();
        let mut payloads = Vec::new();
        for seq in 1..=2 {
            let message = stream.get_raw_message(seq).await.unwrap();
            payloads.push(String::from_utf8(message.payload.to_vec()).unwrap());
        }
        payloads
    });
    assert_eq!(stored, [first, second]);
}

/// A log line longer than any valid message (a file without newlines, `/dev/zero`) is refused
/// with its line number once the limit is read, not read whole; a last line without a newline
/// is still read.
#[test]
fn a_log_line_past_the_limit_is_refused_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = manifest("config/catalog.toml");
    let long = dir.path().join("long.jsonl");
    let first = r#"{"id":"e1","account":"a","meter":"api_call","quantity":"1","ts":"2026-11-24T10:00:00Z"}"#;
    let mut bytes = format!("{first}\n").into_bytes();
    bytes.extend(std::iter::repeat_n(
        b'x',
        creditflow::cli::replay::LOG_LINE_BYTES_MAX + 1,
    ));
    std::fs::write(&long, bytes).unwrap();
    for events in [long.display().to_string(), "/dev/zero".to_string()] {
        let output = creditflow(
            &["replay", "--catalog", &catalog, "--events", &events],
            dir.path(),
        );
        assert!(!output.status.success(), "{events}");
        let message = stderr(&output);
        let line = if events == "/dev/zero" { 1 } else { 2 };
        assert!(
            message.contains(&format!(":{line}: a line longer than 4194304 bytes")),
            "{events}: {message}"
        );
    }
    let unterminated = dir.path().join("unterminated.jsonl");
    std::fs::write(&unterminated, first).unwrap();
    let output = creditflow(
        &[
            "replay",
            "--catalog",
            &catalog,
            "--events",
            &unterminated.display().to_string(),
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
}
