//! Running a workload against NATS: the open-loop sender, the publishers, the observer that
//! sees probes come back, and the live line.
//!
//! Owns: [`execute`], shared by `run` (observer: the processor's `command.result` outputs),
//! `raw` (observer: a bare pull consumer on a scratch stream, no processor) and `fill` (no
//! observer, as fast as possible).
//!
//! Must never: let the system under test change *when* a message is due (the schedule is
//! fixed; a full window delays sending, and that delay is part of the measured latency), or
//! print a latency measured from the actual send time in open-loop mode.
//!
//! Invariants: partition `p` is always published on connection `p % connections`; every probe
//! handed to a publisher is recorded in the probe book before it can be answered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::measure::{rate, Percentiles, ProbeBook};
use crate::nats::{self, Outgoing, PublishStats, RunClock, SharedPublishStats};
use crate::schedule::Nanos;
use crate::workload::{Counts, Kind, Workload, WorkloadSpec};

/// A message due sooner than this is sent at once rather than slept for (a thread sleep
/// costs tens of microseconds anyway).
const SLEEP_MIN_NS: Nanos = 20_000;

/// Who tells loadgen that a message has had its effect.
#[derive(Clone, Debug)]
pub enum Observe {
    /// Nobody (`fill`).
    Nothing,
    /// The processor: probe results on `<output_prefix>.*.command.result` (core NATS).
    ProcessorResults { output_prefix: String },
    /// The broker alone: a pull consumer without acks reads the stream back (`raw`).
    StreamReader,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workload: WorkloadSpec,
    pub nats_url: String,
    pub connections: usize,
    /// Publishes without an ack, per connection.
    pub window: usize,
    pub stream: String,
    pub create_stream: bool,
    pub duplicate_window: Duration,
    pub observe: Observe,
    /// After the last publish, how long to wait for probes (or the reader) to catch up.
    pub drain_timeout: Duration,
    /// Print the live line every second (to stderr).
    pub live: bool,
}

/// One second of the live line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    pub t_s: u64,
    /// Nominal offered rate at that second, probes included (`None` for `max`).
    pub offered_per_s: Option<f64>,
    pub sent_per_s: f64,
    pub acked_per_s: f64,
    pub consumed_per_s: Option<f64>,
    pub lag_ms: Option<f64>,
    pub lag_messages: Option<u64>,
    pub e2e: Option<Percentiles>,
    pub ack: Percentiles,
}

/// What the reader of `raw` saw.
#[derive(Clone, Debug, Default)]
pub struct ConsumeStats {
    pub consumed: u64,
    pub first_at: Option<Nanos>,
    pub last_at: Nanos,
}

/// Everything a run measured.
#[derive(Debug)]
pub struct RunResult {
    pub counts: Counts,
    pub publish: PublishStats,
    /// From the start to the last ack.
    pub publish_elapsed: Nanos,
    /// Scheduled offset of the last message.
    pub schedule_span: Nanos,
    pub probes: Option<ProbeBook>,
    pub consume: Option<ConsumeStats>,
    pub timeline: Vec<Second>,
}

impl RunResult {
    /// Messages the stream stored (acks that were not broker duplicates).
    pub fn stored(&self) -> u64 {
        self.publish.acked - self.publish.broker_duplicates
    }

    pub fn publish_rate(&self) -> f64 {
        rate(self.publish.acked, self.publish_elapsed)
    }
}

/// An observer connected and subscribed, not yet running (one per run, so its size is moot).
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Nothing,
    Results(async_nats::Client, async_nats::Subscriber),
    Reader(
        async_nats::jetstream::Context,
        async_nats::jetstream::consumer::pull::Stream,
    ),
}

struct Shared {
    book: Option<ProbeBook>,
    /// Highest input sequence named by a probe result seen.
    probe_result_sequence: u64,
    consume: ConsumeStats,
}

/// A `command.result` output id without the trailing `:<seq>` of its cause (SEMANTICS §14:
/// `result:<account>:<command id>:<seq>`): what loadgen can predict before publishing.
pub fn result_key(output_id: &str) -> &str {
    match output_id.rsplit_once(':') {
        Some((key, seq)) if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => key,
        _ => output_id,
    }
}

/// The probe number in an id like `result:probe_3:probe-<run>-<n>:<seq>` or `probe-<run>-<n>`.
pub fn probe_number(id: &str, run_id: &str) -> Option<u64> {
    let marker = format!("probe-{run_id}-");
    let at = id.rfind(&marker)?;
    let rest = &id[at + marker.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `"seq":N` field of an output's JSON.
pub fn output_sequence(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let at = text.find("\"seq\":")? + 6;
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The `"id":"…"` field of an output's JSON.
pub fn output_id(payload: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(payload).ok()?;
    let at = text.find("\"id\":\"")? + 6;
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}

pub async fn execute(options: RunOptions) -> anyhow::Result<RunResult> {
    assert!(options.connections > 0 && options.window > 0);
    let spec = options.workload.clone();
    let run_id = spec.run_id.clone();
    let partitions = spec.partitions;
    let probe_interval = spec.probe_interval.filter(|_| !spec.rate.is_max());

    let mut clients = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        clients.push(nats::connect(&options.nats_url).await?);
    }
    let control = nats::jetstream(clients[0].clone(), options.window);
    nats::ensure_stream(
        &control,
        &options.stream,
        &creditflow::wire::subject::stream_filter(&spec.subject_prefix),
        options.create_stream,
        options.duplicate_window,
    )
    .await?;
    let start_sequence = nats::last_sequence(&control, &options.stream).await? + 1;

    let shared = Arc::new(Mutex::new(Shared {
        book: probe_interval.map(ProbeBook::new),
        probe_result_sequence: 0,
        consume: ConsumeStats::default(),
    }));
    let stats: SharedPublishStats = Arc::new(Mutex::new(PublishStats::default()));
    // The observer subscribes before the first publish, so no answer can be missed. All
    // network set-up happens before the clock starts: probe 0 is due at once.
    let prepared = match &options.observe {
        Observe::Nothing => Prepared::Nothing,
        Observe::ProcessorResults { output_prefix } => {
            let client = nats::connect(&options.nats_url).await?;
            let subscription = client
                .subscribe(format!("{output_prefix}.*.command.result"))
                .await
                .context("subscribing to probe results")?;
            client.flush().await.context("flushing the subscription")?;
            Prepared::Results(client, subscription)
        }
        Observe::StreamReader => {
            let js = nats::jetstream(nats::connect(&options.nats_url).await?, 1);
            let consumer = nats::reader(&js, &options.stream, start_sequence).await?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(500)
                .messages()
                .await
                .context("starting the raw reader")?;
            Prepared::Reader(js, messages)
        }
    };
    let clock = RunClock::start();
    let observer = match prepared {
        Prepared::Nothing => None,
        Prepared::Results(client, mut subscription) => {
            let shared = shared.clone();
            let run_id = run_id.clone();
            Some(tokio::spawn(async move {
                let _client = client;
                while let Some(message) = subscription.next().await {
                    let now = clock.now();
                    let header_id = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                        .map(|v| v.as_str().to_string());
                    let id = header_id.or_else(|| output_id(&message.payload).map(str::to_string));
                    let Some(n) = id.and_then(|id| probe_number(&id, &run_id)) else {
                        continue;
                    };
                    let sequence = output_sequence(&message.payload).unwrap_or(0);
                    let mut shared = shared.lock().expect("shared lock");
                    shared.probe_result_sequence = shared.probe_result_sequence.max(sequence);
                    if let Some(book) = shared.book.as_mut() {
                        book.answered(n, now);
                    }
                }
            }))
        }
        Prepared::Reader(js, mut messages) => {
            let shared = shared.clone();
            let run_id = run_id.clone();
            Some(tokio::spawn(async move {
                let _js = js;
                while let Some(Ok(message)) = messages.next().await {
                    let now = clock.now();
                    let probe = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                        .and_then(|v| probe_number(v.as_str(), &run_id));
                    let mut shared = shared.lock().expect("shared lock");
                    shared.consume.consumed += 1;
                    shared.consume.first_at.get_or_insert(now);
                    shared.consume.last_at = now;
                    if let (Some(n), Some(book)) = (probe, shared.book.as_mut()) {
                        book.answered(n, now);
                    }
                }
            }))
        }
    };

    let subjects = nats::partition_subjects(&spec.subject_prefix, partitions);
    let mut senders = Vec::with_capacity(options.connections);
    let mut publishers = Vec::with_capacity(options.connections);
    for client in &clients {
        let (tx, rx) = mpsc::channel::<Outgoing>(options.window.max(1024));
        senders.push(tx);
        publishers.push(tokio::spawn(nats::publish_loop(
            nats::jetstream(client.clone(), options.window),
            subjects.clone(),
            rx,
            options.window,
            clock,
            stats.clone(),
        )));
    }

    let timeline = Arc::new(Mutex::new(Vec::<Second>::new()));
    let live = tokio::spawn(live_line(LiveLine {
        clock,
        shape: spec.rate.clone(),
        probe_per_s: probe_interval.map_or(0.0, |i| 1e9 / i as f64),
        stats: stats.clone(),
        shared: shared.clone(),
        timeline: timeline.clone(),
        print: options.live,
        reader: matches!(options.observe, Observe::StreamReader),
    }));

    // The open-loop sender runs on its own OS thread: tokio's timer has a 1 ms resolution,
    // which would add up to a millisecond of sender lateness to every latency, while a thread
    // sleep is precise to tens of microseconds. Each message leaves when it is due, or at once
    // if overdue (after a stall every overdue message goes out, keeping its scheduled time).
    let max = spec.rate.is_max();
    let generator = {
        let shared = shared.clone();
        let stats = stats.clone();
        let spec = spec.clone();
        std::thread::Builder::new()
            .name("loadgen-sender".into())
            .spawn(move || -> Result<(Counts, Nanos), String> {
                let mut workload = Workload::new(spec);
                let mut schedule_span = 0;
                for planned in workload.by_ref() {
                    if !max {
                        let now = clock.now();
                        if planned.at > now + SLEEP_MIN_NS {
                            std::thread::sleep(Duration::from_nanos(planned.at - now));
                        }
                    }
                    schedule_span = planned.at;
                    if let Kind::Probe(n) = planned.kind {
                        if let Some(book) = shared.lock().expect("shared lock").book.as_mut() {
                            book.sent(n);
                        }
                    }
                    let start = if max { clock.now() } else { planned.at };
                    let connection = planned.partition as usize % senders.len();
                    stats.lock().expect("stats lock").sent += 1;
                    if senders[connection]
                        .blocking_send(Outgoing { planned, start })
                        .is_err()
                    {
                        return Err("a publisher stopped early".into());
                    }
                }
                Ok((workload.counts.clone(), schedule_span))
            })
            .context("starting the sender thread")?
    };
    let (counts, schedule_span) = tokio::task::spawn_blocking(move || generator.join())
        .await
        .context("joining the sender thread")?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
        .map_err(|e| anyhow::anyhow!(e))?;
    for publisher in publishers {
        publisher.await.context("a publisher task failed")?;
    }
    let publish_elapsed = clock.now();

    // Wait for the observer to catch up with everything published.
    let deadline = clock.now() + options.drain_timeout.as_nanos() as Nanos;
    let stored = {
        let stats = stats.lock().expect("stats lock");
        stats.acked - stats.broker_duplicates
    };
    loop {
        let done = {
            let shared = shared.lock().expect("shared lock");
            match options.observe {
                Observe::Nothing => true,
                Observe::ProcessorResults { .. } => {
                    shared.book.as_ref().is_none_or(ProbeBook::all_answered)
                }
                Observe::StreamReader => {
                    shared.consume.consumed >= stored
                        && shared.book.as_ref().is_none_or(ProbeBook::all_answered)
                }
            }
        };
        if done || clock.now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = clock.now();
    live.abort();
    if let Some(observer) = observer {
        observer.abort();
    }
    let mut shared = shared.lock().expect("shared lock");
    if let Some(book) = shared.book.as_mut() {
        book.close(end);
    }
    let publish = stats.lock().expect("stats lock").clone();
    let timeline = timeline.lock().expect("timeline lock").clone();
    Ok(RunResult {
        counts,
        publish,
        publish_elapsed,
        schedule_span,
        probes: shared.book.take(),
        consume: matches!(options.observe, Observe::StreamReader).then(|| shared.consume.clone()),
        timeline,
    })
}

/// What the live line reads and where it writes.
struct LiveLine {
    clock: RunClock,
    shape: crate::schedule::RateShape,
    probe_per_s: f64,
    stats: SharedPublishStats,
    shared: Arc<Mutex<Shared>>,
    timeline: Arc<Mutex<Vec<Second>>>,
    print: bool,
    reader: bool,
}

async fn live_line(live: LiveLine) {
    let LiveLine {
        clock,
        shape,
        probe_per_s,
        stats,
        shared,
        timeline,
        print,
        reader,
    } = live;
    let mut interval =
        tokio::time::interval_at(clock.instant_at(1_000_000_000), Duration::from_secs(1));
    let (mut sent_before, mut acked_before, mut consumed_before) = (0, 0, 0);
    let mut t_before = 0;
    let mut t = 0u64;
    loop {
        interval.tick().await;
        t += 1;
        let now = clock.now();
        let elapsed = now - t_before;
        t_before = now;
        let (sent, acked, stored, last_sequence, ack) = {
            let mut stats = stats.lock().expect("stats lock");
            let ack = stats.interval_ack_latency.percentiles();
            stats.interval_ack_latency.reset();
            let stored = stats.acked - stats.broker_duplicates;
            (stats.sent, stats.acked, stored, stats.last_sequence, ack)
        };
        let (e2e, lag_ms, lag_messages, consumed) = {
            let mut shared = shared.lock().expect("shared lock");
            let consumed = shared.consume.consumed;
            let result_sequence = shared.probe_result_sequence;
            match shared.book.as_mut() {
                Some(book) => {
                    let e2e = book.interval_latency.percentiles();
                    book.interval_latency.reset();
                    let lag_messages = if reader {
                        stored.saturating_sub(consumed)
                    } else {
                        last_sequence.saturating_sub(result_sequence)
                    };
                    (
                        Some(e2e),
                        Some(book.lag(now) as f64 / 1e6),
                        Some(lag_messages),
                        consumed,
                    )
                }
                None => (
                    None,
                    None,
                    reader.then(|| stored.saturating_sub(consumed)),
                    consumed,
                ),
            }
        };
        let second = Second {
            t_s: t,
            offered_per_s: offered_over(&shape, now - elapsed, now).map(|r| r + probe_per_s),
            sent_per_s: rate(sent - sent_before, elapsed),
            acked_per_s: rate(acked - acked_before, elapsed),
            consumed_per_s: reader.then(|| rate(consumed - consumed_before, elapsed)),
            lag_ms,
            lag_messages,
            e2e,
            ack,
        };
        sent_before = sent;
        acked_before = acked;
        consumed_before = consumed;
        if print {
            eprintln!("{}", render_second(&second));
        }
        timeline.lock().expect("timeline lock").push(second);
    }
}

/// The mean offered rate of `shape` over `[from, to)` (sampled at 100 points: exact for
/// constant rates, and steps and bursts are resolved to a hundredth of the interval).
fn offered_over(shape: &crate::schedule::RateShape, from: Nanos, to: Nanos) -> Option<f64> {
    const SAMPLES: u64 = 100;
    let span = to.saturating_sub(from).max(1);
    let mut sum = 0.0;
    for k in 0..SAMPLES {
        sum += shape.rate_at(from + span * k / SAMPLES + span / (2 * SAMPLES))?;
    }
    Some(sum / SAMPLES as f64)
}

/// The live line: `[ 3s] offered 20000/s sent 20000/s acked 19950/s | lag 1.2 ms 40 msgs |
/// e2e p50 0.61 p99 1.90 p99.9 3.10 ms | ack p99 0.80 ms`.
pub fn render_second(s: &Second) -> String {
    let mut line = format!(
        "[{:>4}s] offered {} sent {:>8.0}/s acked {:>8.0}/s",
        s.t_s,
        s.offered_per_s
            .map_or_else(|| "     max".to_string(), |r| format!("{r:>8.0}/s")),
        s.sent_per_s,
        s.acked_per_s
    );
    if let Some(consumed) = s.consumed_per_s {
        line.push_str(&format!(" consumed {consumed:>8.0}/s"));
    }
    match (s.lag_ms, s.lag_messages) {
        (Some(ms), Some(m)) => line.push_str(&format!(" | lag {ms:>7.1} ms {m:>7} msgs")),
        (None, Some(m)) => line.push_str(&format!(" | lag {m:>7} msgs")),
        _ => {}
    }
    if let Some(e2e) = &s.e2e {
        line.push_str(&format!(
            " | e2e p50 {:.2} p99 {:.2} p99.9 {:.2} ms",
            e2e.p50_ms, e2e.p99_ms, e2e.p999_ms
        ));
    }
    line.push_str(&format!(
        " | ack p50 {:.2} p99 {:.2} ms",
        s.ack.p50_ms, s.ack.p99_ms
    ));
    line
}
