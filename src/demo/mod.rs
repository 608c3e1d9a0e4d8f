//! `creditflow demo`: the pipeline's shard and engine code fed by a built-in generator through
//! an in-process log, with no NATS. The README's first command.
//!
//! Owns: the demo workload (accounts on every plan of the example catalog, their grants, their
//! usage of every meter, ticks that move event time forward), a sink that counts outputs, the
//! progress line and the closing report.
//!
//! Must never: differ from `run` in how messages are applied: it uses the same `Dispatcher`,
//! `Shard` and `Partition` code; only the source (a generator instead of JetStream) and the sink
//! (a counter instead of the output stream) are different.
//!
//! With `--serve` (`serve.rs`) it also serves the dashboard, the HTTP read API and the metrics
//! while it runs, paces the workload, and can keep serving after it.

pub mod serve;

pub use serve::DemoServe;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use bytes::Bytes;

use crate::catalog::Catalog;
use crate::decimal::Credits;
use crate::engine::Partition;
use crate::pipeline::dispatch::{shard_queues, Dispatcher};
use crate::pipeline::shard::{NoSnapshots, Shard};
use crate::pipeline::{Inbound, SinkMessage};
use crate::sample::Rng;
use crate::time::Instant;
use crate::wire::subject::{Route, SubjectKind};

#[derive(Clone, Debug)]
pub struct DemoSettings {
    pub accounts: usize,
    /// Stop after this many messages …
    pub messages: Option<u64>,
    /// … or after this long, whichever comes first (at least one must be set).
    pub duration: Option<Duration>,
    pub partitions: u32,
    pub shards: usize,
    pub batch_size_max: usize,
    pub queue_batches_max: usize,
    pub seed: u64,
    /// Print a progress line every second.
    pub progress: bool,
    /// Serve the dashboard and the HTTP read API while running (`--serve`); with it, neither
    /// `messages` nor `duration` is needed (the demo runs until stopped).
    pub serve: Option<DemoServe>,
}

#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    pub messages: u64,
    pub elapsed: Duration,
    pub accounts: usize,
    pub outputs_by_type: BTreeMap<String, u64>,
    /// Credits consumed per credit type, over all accounts.
    pub consumed: BTreeMap<String, Credits>,
    pub shards: usize,
    pub partitions: u32,
}

impl DemoReport {
    pub fn messages_per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn count(&self, prefix: &str) -> u64 {
        self.outputs_by_type
            .iter()
            .filter(|(kind, _)| kind.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "messages": self.messages,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "messages_per_second": self.messages_per_second(),
            "shards": self.shards,
            "partitions": self.partitions,
            "accounts": self.accounts,
            "consumed": self.consumed.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "outputs_by_type": self.outputs_by_type,
        })
        .to_string()
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\ncreditflow demo: {} messages in {:.2} s = {:.0} messages/s ({} shards, {} partitions, in-process log, no NATS)",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.messages_per_second(),
            self.shards,
            self.partitions
        );
        let _ = writeln!(s, "  accounts            {:>12}", self.accounts);
        for (credit_type, credits) in &self.consumed {
            let _ = writeln!(
                s,
                "  consumed            {:>12} {credit_type}",
                credits.to_string()
            );
        }
        let _ = writeln!(s, "  alerts              {:>12}", self.count("balance."));
        let _ = writeln!(s, "  top-ups             {:>12}", self.count("topup."));
        let _ = writeln!(
            s,
            "  rejections          {:>12}",
            self.count("usage.rejected")
        );
        let _ = writeln!(
            s,
            "  invoice lines       {:>12}",
            self.count("invoice.line")
        );
        let _ = writeln!(
            s,
            "  grants expired      {:>12}",
            self.count("grant.expired")
        );
        let _ = writeln!(s, "  revenue entries     {:>12}", self.count("revenue."));
        let _ = writeln!(s, "  dead letters        {:>12}", self.count("dead_letter"));
        let _ = writeln!(
            s,
            "  all outputs         {:>12}",
            self.outputs_by_type.values().sum::<u64>()
        );
        s
    }
}

/// The demo workload: a deterministic stream of JSON messages for `config/catalog.toml`.
pub struct Workload {
    rng: Rng,
    accounts: usize,
    now: Instant,
    produced: u64,
    setup: std::collections::VecDeque<String>,
}

/// Event time starts here and moves `STEP_MS` per message, so a few seconds of demo cover days
/// of event time: invoice flushes, daily and weekly period closes, the month end of Dec 1.
const DEMO_START: Instant = Instant(1_795_564_800_000); // 2026-11-25T00:00:00Z
const STEP_MS: i64 = 500;
/// A tick every this many messages, so expiries and period ends happen for idle accounts.
const TICK_EVERY: u64 = 5_000;

impl Workload {
    pub fn new(seed: u64, accounts: usize) -> Workload {
        let mut setup = std::collections::VecDeque::new();
        let plans = ["payg", "starter", "pro", "team_weekly", "daily_test"];
        for i in 0..accounts {
            let account = format!("demo_{i:06}");
            let plan = plans[i % plans.len()];
            if plan != "payg" {
                setup.push_back(format!(
                    r#"{{"type":"set_plan","id":"{account}-plan","account":"{account}","ts":"{DEMO_START}","plan":"{plan}"}}"#
                ));
            }
            setup.push_back(format!(
                r#"{{"type":"grant","id":"{account}-g","account":"{account}","ts":"{DEMO_START}","amount":"{}","cost_basis":"0.01"}}"#,
                20 + (i % 7) * 15
            ));
        }
        Workload {
            rng: Rng::new(seed),
            accounts: accounts.max(1),
            now: DEMO_START,
            produced: 0,
            setup,
        }
    }

    /// The next message's payload.
    pub fn next_message(&mut self) -> String {
        self.produced += 1;
        self.now = Instant(self.now.0 + STEP_MS);
        if let Some(setup) = self.setup.pop_front() {
            return setup;
        }
        if self.produced % TICK_EVERY == 0 {
            return format!(
                r#"{{"type":"tick","id":"tick-{}","ts":"{}"}}"#,
                self.produced, self.now
            );
        }
        // Half the traffic comes from the hottest 1% of accounts, as in real usage.
        let hot = (self.accounts as u64 / 100).max(1);
        let account = if self.rng.chance(500) {
            self.rng.below(hot)
        } else {
            self.rng.below(self.accounts as u64)
        };
        let n = self.produced;
        let ts = self.now;
        // Hot accounts are heavy users too: they drain allowances, top up, and go into overage.
        let heavy = if account < hot { 10 } else { 1 };
        match self.rng.below(1000) {
            0 => format!(
                r#"{{"type":"grant","id":"g{n}","account":"demo_{account:06}","ts":"{ts}","amount":"25","cost_basis":"0.0095"}}"#
            ),
            1..=40 if account % 5 == 2 => format!(
                r#"{{"id":"e{n}","account":"demo_{account:06}","meter":"gpu_second","quantity":"{}","ts":"{ts}"}}"#,
                heavy * (30 + self.rng.below(600))
            ),
            41..=300 => format!(
                r#"{{"id":"e{n}","account":"demo_{account:06}","meter":"llm_token","quantity":"{}","ts":"{ts}","dims":{{"model":"{}","region":"us"}}}}"#,
                heavy * (1000 + self.rng.below(40_000)),
                if self.rng.chance(200) {
                    "large"
                } else {
                    "small"
                }
            ),
            301..=330 => format!(
                r#"{{"id":"e{n}","account":"demo_{account:06}","meter":"export","quantity":"{}.{}","ts":"{ts}"}}"#,
                self.rng.below(4),
                self.rng.below(10)
            ),
            _ => format!(
                r#"{{"id":"e{n}","account":"demo_{account:06}","meter":"api_call","quantity":"{}","ts":"{ts}"}}"#,
                heavy * (1 + self.rng.below(200))
            ),
        }
    }
}

/// Runs the demo and returns its report; fails only when `--serve` cannot bind.
pub fn run(catalog: Arc<Catalog>, settings: &DemoSettings) -> std::io::Result<DemoReport> {
    assert!(
        settings.messages.is_some() || settings.duration.is_some() || settings.serve.is_some(),
        "the demo needs a message count or a duration"
    );
    let shards = settings
        .shards
        .clamp(1, settings.partitions.max(1) as usize);
    let partitions = settings.partitions.max(1);
    let (served, mut question_receivers) = match &settings.serve {
        Some(serve) => {
            let (served, receivers) =
                serve::Served::start(serve, catalog.clone(), partitions, shards)?;
            eprintln!(
                "creditflow demo: dashboard at http://{}/dashboard/ (API /api/v1/, metrics /metrics)",
                served.address
            );
            (Some(served), receivers.into_iter().map(Some).collect())
        }
        None => (None, vec![None; shards]),
    };
    let (senders, receivers) = shard_queues(shards, settings.queue_batches_max);
    let layout = Arc::new(crate::pipeline::Layout::all(partitions, shards));
    let mut dispatcher = Dispatcher::new(senders, settings.batch_size_max, layout.clone());
    let (sink_sender, sink_receiver) =
        crate::pipeline::sink::sink_queue(shards * settings.queue_batches_max.max(1));
    let mut handles = Vec::new();
    // The statement and the dashboard's chart read each partition's recent charges.
    let statement_entries = if served.is_some() {
        serve::STATEMENT_ENTRIES
    } else {
        0
    };
    for (number, receiver) in receivers.into_iter().enumerate() {
        let shard = Shard {
            number,
            layout: layout.clone(),
            catalog: catalog.clone(),
            partitions: layout
                .of_shard(number)
                .into_iter()
                .map(|p| {
                    let mut partition = Partition::new(p, partitions);
                    partition.keep_journal(statement_entries);
                    partition
                })
                .collect(),
            output_prefix: "creditflow.out".to_string(),
            snapshots: NoSnapshots,
            observer: served
                .as_ref()
                .map(|s| crate::processor::ShardMetrics::new(s.metrics.clone())),
            // Without a server nobody asks; `never` (not a disconnected queue) keeps the
            // shard's select from spinning on it.
            questions: question_receivers[number]
                .take()
                .unwrap_or_else(crossbeam::channel::never),
            dispatched: dispatcher.dispatched(),
            results: crate::pipeline::question::ResultBook::new(0, 0),
        };
        let sink = sink_sender.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("shard-{number}"))
                .spawn(move || shard.run(receiver, sink))
                .expect("spawning a shard thread"),
        );
    }
    drop(sink_sender);
    // The sink: counts outputs by type (from the subject's last tokens).
    let outputs_seen = Arc::new(AtomicU64::new(0));
    let seen = outputs_seen.clone();
    let sink = std::thread::Builder::new()
        .name("demo-sink".into())
        .spawn(move || {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            while let Ok(message) = sink_receiver.recv() {
                if let SinkMessage::Outputs(outputs) = message {
                    seen.fetch_add(outputs.len() as u64, Ordering::Relaxed);
                    for output in outputs {
                        // "<prefix>.<partition>.<type>": the type is everything after the
                        // partition token.
                        let kind = output.subject.splitn(4, '.').nth(3).unwrap_or("?");
                        *counts.entry(kind.to_string()).or_default() += 1;
                    }
                }
            }
            counts
        })
        .expect("spawning the demo sink");

    let produced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let progress = settings.progress.then(|| {
        let produced = produced.clone();
        let done = done.clone();
        let outputs = outputs_seen.clone();
        std::thread::spawn(move || {
            let start = WallInstant::now();
            let mut last = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let now = produced.load(Ordering::Relaxed);
                if now == last && now > 0 {
                    // Paused or done (a served demo keeps running): nothing new to say.
                    continue;
                }
                eprintln!(
                    "  {:>5.1} s  {:>10} messages  {:>9} msg/s  {:>9} outputs",
                    start.elapsed().as_secs_f64(),
                    now,
                    now - last,
                    outputs.load(Ordering::Relaxed)
                );
                last = now;
            }
        })
    });

    let subjects: Vec<Vec<async_nats::Subject>> = (0..partitions)
        .map(|p| {
            SubjectKind::ALL
                .iter()
                .map(|&kind| crate::wire::subject::subject("creditflow.in", p, kind).into())
                .collect()
        })
        .collect();
    let started = WallInstant::now();
    let mut workload = Workload::new(settings.seed, settings.accounts);
    let mut seq = 0u64;
    let stopped = || served.as_ref().is_some_and(serve::Served::stopped);
    let rate = settings.serve.as_ref().map_or(0, |s| s.rate);
    // Paced in steps of 1/100 s of messages; between steps the dispatcher is flushed so the
    // shards apply (and the pages see) what was generated.
    let step = (rate / 100).max(1);
    loop {
        if settings.messages.is_some_and(|max| seq >= max) {
            break;
        }
        // Check the clock once per batch, not per message.
        if seq % 1024 == 0
            && (settings.duration.is_some_and(|d| started.elapsed() >= d) || stopped())
        {
            break;
        }
        if rate > 0 && seq % step == 0 {
            let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
            let now = WallInstant::now();
            if due > now {
                if dispatcher.flush().is_err() {
                    break;
                }
                produced.store(seq, Ordering::Relaxed);
                std::thread::sleep(due - now);
                if stopped() {
                    break;
                }
            }
        }
        seq += 1;
        let payload = Bytes::from(workload.next_message());
        // As producers, operators and the tick publisher do: usage and commands on their
        // account's partition (usage and cmd subjects), a tick to every partition.
        let text = std::str::from_utf8(&payload).unwrap_or_default();
        let targets = match extract_account(text) {
            Some(account) => {
                let kind = if text.contains("\"type\":\"") {
                    SubjectKind::Command
                } else {
                    SubjectKind::Usage
                };
                let partition = crate::engine::partition_of(account, partitions);
                vec![(partition, kind)]
            }
            None => (0..partitions).map(|p| (p, SubjectKind::Tick)).collect(),
        };
        let mut pushed = true;
        for (number, kind) in targets {
            let inbound = Inbound {
                seq,
                route: Route::Partition { number, kind },
                subject: subjects[number as usize][kind as usize].clone(),
                payload: payload.clone(),
                received: None,
            };
            pushed &= dispatcher.push(inbound).is_ok();
        }
        if !pushed {
            break;
        }
        if seq % 1024 == 0 {
            produced.store(seq, Ordering::Relaxed);
        }
    }
    produced.store(seq, Ordering::Relaxed);
    let _ = dispatcher.flush();
    // The workload's time, without the keep-running wait below (the shards may still be
    // applying the last batches: `stop` below waits for them, and the wait is short).
    let generated_in = started.elapsed();
    if let Some(served) = &served {
        if settings.serve.as_ref().is_some_and(|s| s.keep_running) && !served.stopped() {
            let _ = dispatcher.flush();
            if !served.wait_applied(seq, Duration::from_secs(60)) {
                eprintln!("creditflow demo: the shards did not confirm the last messages");
            }
            eprintln!(
                "creditflow demo: workload done ({seq} messages); still serving \
                 http://{}/dashboard/ until Ctrl-C",
                served.address
            );
            while !served.stopped() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = dispatcher.stop();
    let mut all_partitions = Vec::new();
    for handle in handles {
        if let Ok(partitions) = handle.join() {
            all_partitions.extend(partitions);
        }
    }
    let elapsed = if settings.serve.as_ref().is_some_and(|s| s.keep_running) {
        generated_in
    } else {
        started.elapsed()
    };
    let outputs_by_type = sink.join().unwrap_or_default();
    done.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    let mut consumed: BTreeMap<String, Credits> = BTreeMap::new();
    let mut accounts = 0;
    for partition in &all_partitions {
        accounts += partition.accounts().len();
        for account in partition.accounts() {
            for t in &account.types {
                *consumed
                    .entry(catalog.credit_type(t.credit_type).name.clone())
                    .or_default() += t.consumed;
            }
        }
    }
    if let Some(served) = served {
        served.shutdown();
    }
    Ok(DemoReport {
        messages: seq,
        elapsed,
        accounts,
        outputs_by_type,
        consumed,
        shards,
        partitions,
    })
}

/// The `"account"` value of a generated message (the generator writes it unescaped), so the
/// demo can route like a publisher that knows the account.
fn extract_account(payload: &str) -> Option<&str> {
    let start = payload.find("\"account\":\"")? + 11;
    let end = payload[start..].find('"')? + start;
    Some(&payload[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_deterministic_and_every_message_is_valid() {
        let catalog = crate::catalog::load::from_path(std::path::Path::new("config/catalog.toml"))
            .expect("catalog");
        let mut a = Workload::new(3, 50);
        let mut b = Workload::new(3, 50);
        for _ in 0..5_000 {
            let message = a.next_message();
            assert_eq!(message, b.next_message());
            assert!(
                crate::wire::input::decode(message.as_bytes(), &catalog).is_ok(),
                "{message}"
            );
        }
    }

    #[test]
    fn demo_output_equals_a_single_threaded_replay() {
        let catalog = Arc::new(
            crate::catalog::load::from_path(std::path::Path::new("config/catalog.toml"))
                .expect("catalog"),
        );
        let settings = DemoSettings {
            accounts: 40,
            messages: Some(30_000),
            duration: None,
            partitions: 8,
            shards: 3,
            batch_size_max: 64,
            queue_batches_max: 4,
            seed: 5,
            progress: false,
            serve: None,
        };
        let report = run(catalog.clone(), &settings).expect("no server to bind");
        // The oracle: the same messages through one Engine, single-threaded.
        let mut workload = Workload::new(5, 40);
        let mut engine = crate::engine::Engine::new(catalog, 8);
        let mut outputs = Vec::new();
        for seq in 1..=30_000u64 {
            let payload = workload.next_message();
            let envelope = crate::engine::Envelope {
                payload: payload.as_bytes(),
                seq,
                subject: "creditflow.in",
                received: None,
            };
            engine.apply(&envelope, &mut outputs);
        }
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for output in &outputs {
            *expected
                .entry(output.body.type_name().to_string())
                .or_default() += 1;
        }
        assert_eq!(report.outputs_by_type, expected);
        assert_eq!(report.messages, 30_000);
        assert_eq!(report.accounts, 40);
        assert!(
            report
                .outputs_by_type
                .get("usage.rejected")
                .copied()
                .unwrap_or(0)
                > 0
        );
    }
}
