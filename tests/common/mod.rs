//! Shared helpers for the tests that run the real `creditflow` binary against a real
//! `nats-server` (started by `creditflow::testkit::NatsServer` on a free port).

#![allow(dead_code)]

pub mod schemas;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditflow::catalog::Catalog;
use creditflow::cli::replay::LogEntry;
use creditflow::engine::{partition_of, Engine, Partition};
use creditflow::wire::output::Output;
use futures::StreamExt;

pub fn catalog_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml")
}

pub fn catalog() -> Arc<Catalog> {
    Arc::new(creditflow::catalog::load::from_path(&catalog_path()).expect("catalog"))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A config file for one processor under test.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub partitions: u32,
}

impl Setup {
    pub fn new(url: &str, partitions: u32, shards: usize, extra: &str) -> Setup {
        Setup::with_metrics(url, partitions, shards, extra, false)
    }

    /// As `new`, serving metrics on a free port the processor picks (`metrics_port()` reads it
    /// from the log) when `metrics` is true. `extra` is TOML whose keys override or extend the
    /// base config's, section by section.
    pub fn with_metrics(
        url: &str,
        partitions: u32,
        shards: usize,
        extra: &str,
        metrics: bool,
    ) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("creditflow.toml");
        let listen = if metrics { "127.0.0.1:0" } else { "" };
        let base = format!(
            r#"
[nats]
urls = ["{url}"]
[engine]
catalog = "{catalog}"
partitions = {partitions}
shards = {shards}
batch_size_max = 256
tick_interval = "0"
[snapshot]
dir = "{snapshots}"
interval_events = 2000
interval = "1s"
keep = 3
[metrics]
listen = "{listen}"
[input]
max_bytes = "1GiB"
[output]
max_bytes = "1GiB"
"#,
            catalog = catalog_path().display(),
            snapshots = dir.path().join("snapshots").display(),
        );
        let mut merged: toml::Table = base.parse().expect("base config");
        let extra: toml::Table = extra.parse().expect("extra config");
        for (section, values) in extra {
            let target = merged
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let (Some(target), toml::Value::Table(values)) = (target.as_table_mut(), values) {
                target.extend(values);
            }
        }
        std::fs::write(&config, toml::to_string(&merged).expect("config text"))
            .expect("write config");
        Setup {
            dir,
            config,
            partitions,
        }
    }

    pub fn snapshots(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }

    /// Starts `creditflow run --config …`, logging to a file in the setup's directory.
    pub fn start(&self, extra_args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("processor.log"))
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_creditflow"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(extra_args)
            .env(
                "CREDITFLOW_LOG_LEVEL",
                std::env::var("TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start creditflow")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("processor.log")).unwrap_or_default()
    }

    /// The metrics port of the most recently started processor (from its log).
    pub fn metrics_port(&self) -> Option<u16> {
        let log = self.log();
        let line = log.lines().rfind(|l| l.contains("metrics listening"))?;
        let start = line.find("127.0.0.1:")? + "127.0.0.1:".len();
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }
}

/// A child process killed when dropped (a failing test must not leave its processor running).
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM and waits for the exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    terminate_explained(child, String::new)
}

/// [`terminate`], and past a minute a panic that adds what `explain` says (a log's tail).
pub fn terminate_explained(
    child: &mut Child,
    explain: impl FnOnce() -> String,
) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            panic!(
                "the processor did not stop within 60 s of SIGTERM{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `condition` until it holds or `timeout` passes (then panics with `what`).
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The account of a message, if it has a well-formed one.
pub fn account_of(payload: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let account = value.get("account")?.as_str()?;
    creditflow::wire::input::account_is_valid(account).then(|| account.to_string())
}

/// The subject a line is published on: its account's partition (0 without one), on the
/// `cmd` subject for a command, `tick` for a tick and `usage` for anything else (a usage event,
/// or a malformed message a producer might send).
pub fn subject_of(line: &str, partitions: u32) -> String {
    use creditflow::wire::subject::SubjectKind;
    let partition = account_of(line).map_or(0, |a| partition_of(&a, partitions));
    let kind = match serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .as_deref()
    {
        None | Some("usage") => SubjectKind::Usage,
        Some("tick") => SubjectKind::Tick,
        Some(_) => SubjectKind::Command,
    };
    creditflow::wire::subject::subject("creditflow.in", partition, kind)
}

/// Publishes each line to its subject ([`subject_of`]), with `Nats-Msg-Id` = its partition and
/// `id` when it has one, awaiting every ack.
pub async fn publish(url: &str, lines: &[String], partitions: u32) {
    let client = async_nats::connect(url).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    let mut acks = Vec::new();
    for line in lines {
        let partition = account_of(line).map_or(0, |a| partition_of(&a, partitions));
        let mut publish =
            async_nats::jetstream::message::PublishMessage::build().payload(line.clone().into());
        if let Some(id) = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        {
            publish = publish.message_id(format!("{partition}-{id}"));
        }
        let ack = context
            .send_publish(subject_of(line, partitions), publish)
            .await
            .expect("publish");
        acks.push(ack);
        if acks.len() >= 512 {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
}

/// Number of messages in a stream (0 if it does not exist yet).
pub async fn stream_len(url: &str, stream: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    match context.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every output in the output stream: (msg id, payload), in stream order.
pub async fn outputs(url: &str) -> Vec<(String, String)> {
    let client = async_nats::connect(url).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    let mut stream = context
        .get_stream("CREDITFLOW_OUT")
        .await
        .expect("output stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let mut all = Vec::new();
    if last == 0 {
        return all;
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .expect("read outputs")
    {
        let message = message.expect("message");
        let seq = message.info().expect("info").stream_sequence;
        if message.subject.starts_with("creditflow.out.fence.") {
            // A fence record of processors sharing the partitions, not an output.
            if seq >= last {
                break;
            }
            continue;
        }
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        all.push((id, String::from_utf8_lossy(&message.payload).into_owned()));
        if seq >= last {
            break;
        }
    }
    all
}

/// What the input stream holds, exported and read back as `replay` reads a log.
pub async fn exported_log(url: &str) -> Vec<LogEntry> {
    let client = async_nats::connect(url).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    let lines = creditflow::cli::run::export_stream(&context, "CREDITFLOW_IN")
        .await
        .expect("export");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("input.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write export");
    creditflow::cli::replay::read_log(&file, true).expect("read export")
}

/// The oracle: `replay` of what the input stream holds, with the same partition count.
pub async fn oracle(url: &str, partitions: u32) -> (Engine, Vec<Output>) {
    let log = exported_log(url).await;
    creditflow::cli::replay::run_log(catalog(), partitions, &log, None)
}

/// The state held by the newest snapshot of every partition (fresh for never-snapshotted ones).
pub fn snapshot_state(dir: &Path, partitions: u32) -> Vec<String> {
    let store = creditflow::snapshot::Store::open(dir, 3).expect("snapshot store");
    let restored: Vec<Partition> = (0..partitions)
        .map(|p| {
            store
                .load(p)
                .loaded
                .map_or_else(|| Partition::new(p, partitions), |l| l.partition)
        })
        .collect();
    Engine::from_partitions(catalog(), restored).state_view()
}

/// Asserts the output stream holds exactly the oracle's outputs, each once.
pub fn assert_outputs_match(actual: &[(String, String)], expected: &[Output]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _) in actual {
        *counts.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "outputs stored more than once: {duplicated:?}"
    );
    let actual: BTreeMap<&str, &str> = actual
        .iter()
        .map(|(id, p)| (id.as_str(), p.as_str()))
        .collect();
    let expected_json: Vec<(String, String)> = expected
        .iter()
        .map(|o| (o.id.clone(), o.to_json()))
        .collect();
    let expected: BTreeMap<&str, &str> = expected_json
        .iter()
        .map(|(id, p)| (id.as_str(), p.as_str()))
        .collect();
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?} ({} vs {})",
        actual.len(),
        expected.len()
    );
    for (id, payload) in &expected {
        assert_eq!(actual[id], *payload, "output {id} differs");
    }
}

/// A gauge's value from the processor's metrics endpoint, if it answers.
pub fn gauge(metrics_port: u16, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let prefix = format!("{name} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The processor's consumer lag, if it answers.
pub fn lag(metrics_port: u16) -> Option<u64> {
    gauge(metrics_port, "creditflow_consumer_lag_messages")
}

/// Publishes lines at about `rate` per second, retrying each until acked (same message id, so
/// a retry that already landed is dropped by the stream): a producer that survives broker
/// restarts.
pub async fn publish_resilient(url: &str, lines: &[String], partitions: u32, rate: u64) {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .expect("connect");
    let context = async_nats::jetstream::new(client);
    let started = Instant::now();
    for (index, line) in lines.iter().enumerate() {
        let due = started + Duration::from_secs_f64(index as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let subject = subject_of(line, partitions);
        let id = format!("m{index}");
        loop {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(line.clone().into())
                .message_id(id.clone());
            let sent = context.send_publish(subject.clone(), publish).await;
            match sent {
                Ok(ack) => match ack.await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The oracle restricted to the input stream's first `through` messages (ticks published while
/// a processor was stopping may follow what it applied).
pub async fn oracle_through(url: &str, partitions: u32, through: u64) -> (Engine, Vec<Output>) {
    let client = async_nats::connect(url).await.expect("connect");
    let context = async_nats::jetstream::new(client);
    let lines = creditflow::cli::run::export_stream(&context, "CREDITFLOW_IN")
        .await
        .expect("export");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("input.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write export");
    let log: Vec<LogEntry> = creditflow::cli::replay::read_log(&file, true)
        .expect("read export")
        .into_iter()
        .filter(|e| e.seq <= through)
        .collect();
    creditflow::cli::replay::run_log(catalog(), partitions, &log, None)
}

/// The highest position any snapshot of the directory has applied through.
pub fn applied_through(dir: &Path, partitions: u32) -> u64 {
    let store = creditflow::snapshot::Store::open(dir, 3).expect("snapshot store");
    (0..partitions)
        .filter_map(|p| store.load(p).loaded.map(|l| l.header.applied_through))
        .max()
        .unwrap_or(0)
}

/// Waits until the processor has read every message the input stream holds now (later ticks
/// of its own may follow; a graceful stop applies everything read). On timeout, panics with the
/// processor's log tail and metrics, which is what a stuck run needs to be understood.
pub fn wait_caught_up(url: &str, setup: &Setup, timeout: Duration) {
    let last = runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let context = async_nats::jetstream::new(client);
        let mut stream = context
            .get_stream("CREDITFLOW_IN")
            .await
            .expect("input stream");
        stream.info().await.expect("info").state.last_sequence
    });
    let deadline = Instant::now() + timeout;
    let read_through = || {
        setup
            .metrics_port()
            .and_then(|port| gauge(port, "creditflow_input_position"))
            .is_some_and(|p| p >= last)
    };
    while !read_through() {
        if Instant::now() > deadline {
            let log = setup.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let metrics = setup
                .metrics_port()
                .and_then(metrics_text)
                .unwrap_or_default();
            let interesting: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.contains("position")
                            || l.contains("lag")
                            || l.contains("queue")
                            || l.contains("in_flight")
                            || l.contains("recreated")
                            || l.contains("retries"))
                })
                .collect();
            panic!(
                "the processor did not read the input through {last} within {timeout:?}\nmetrics:\n{}\nlog tail:\n{}",
                interesting.join("\n"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn metrics_text(metrics_port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The processor's `/metrics` text once it contains `needed` (waiting up to a minute).
pub fn metrics_once(setup: &Setup, needed: &str) -> String {
    let mut text = String::new();
    wait_until("the metrics", Duration::from_secs(60), || {
        text = setup
            .metrics_port()
            .and_then(metrics_text)
            .unwrap_or_default();
        text.contains(needed)
    });
    text
}

/// `GET /readyz`: the status code and the body, if the processor answers.
pub fn readyz(metrics_port: u16) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

/// Waits until the input stream exists (the first processor creates it).
pub fn wait_streams(runtime: &tokio::runtime::Runtime, url: &str) {
    wait_until("the input stream", Duration::from_secs(60), || {
        runtime.block_on(async {
            match async_nats::connect(url).await {
                Ok(client) => async_nats::jetstream::new(client)
                    .get_stream("CREDITFLOW_IN")
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
    });
}

/// One request to the NATS service: the reply's body, or the code and status of its
/// `Nats-Service-Error` (code 0 when no reply came at all).
pub async fn service_request(
    client: &async_nats::Client,
    subject: &str,
    body: String,
) -> Result<String, (u16, String)> {
    let request = async_nats::client::Request::new()
        .payload(body.into())
        .timeout(Some(Duration::from_secs(15)));
    let message = client
        .send_request(subject.to_string(), request)
        .await
        .map_err(|e| (0, e.to_string()))?;
    match creditflow::service::error::reply_error(&message) {
        Some((status, code)) => Err((code.parse().unwrap_or(0), status)),
        None => Ok(String::from_utf8_lossy(&message.payload).into_owned()),
    }
}
