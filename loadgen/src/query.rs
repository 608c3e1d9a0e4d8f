//! Request load against the creditflow service (`loadgen query`), and the echo responder that
//! is its baseline (`loadgen echo-responder`, or in process for `query --endpoint echo`).
//!
//! Owns: the request bodies (a pure function of the seed and the request number), the open-loop
//! request sender (the same fixed schedule as `run`: a dedicated OS thread hands each request to
//! its connection when it is due), the per-connection dispatchers that bound the requests in
//! flight (`--concurrency`), the closed loop of `--rate max`, the classification of what came
//! back (a reply, a service error by its code, a timeout, no responders), the live line, and the
//! echo responder.
//!
//! Must never: measure an open-loop latency from the time a request was actually sent. A request
//! that waits for room under `--concurrency` (or behind a late sender) keeps its scheduled time,
//! so a stalled service shows up as the queueing it caused, not as one slow request (coordinated
//! omission). The time from the actual send is kept apart, as the service time.
//!
//! Invariants: every request handed to a connection is recorded exactly once in `latency` (a
//! timed-out one when its timeout fired); `ok + not_found + errors == requests` at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{Request, RequestError, RequestErrorKind, Subject};
use bytes::Bytes;
use creditflow::sample::Rng;
use creditflow::wire::output::push_json_string;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::measure::{rate, Latency, Percentiles};
use crate::nats::{self, RunClock};
use crate::schedule::{Nanos, RateShape, Schedule};
use crate::workload::{MeterChoice, Zipf};

/// An endpoint's counters in the service's `$SRV.STATS` reply (the NATS micro protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EndpointCounters {
    pub requests: u64,
    /// Summed over the requests: from the request's delivery to the service's endpoint until
    /// its reply was handed to the service's connection (async-nats measures it).
    pub processing_ns: u128,
}

/// The service's own time per request over a run: the difference of two `$SRV.STATS` readings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ServiceProcessing {
    pub requests: u64,
    pub mean_ms: f64,
}

impl EndpointCounters {
    /// What the service did between `self` (read before a run) and `after`; `None` when it
    /// answered nothing in between (or the counters went back: another responder, a restart).
    pub fn until(self, after: EndpointCounters) -> Option<ServiceProcessing> {
        let requests = after.requests.checked_sub(self.requests)?;
        let ns = after.processing_ns.checked_sub(self.processing_ns)?;
        (requests > 0).then(|| ServiceProcessing {
            requests,
            mean_ms: ns as f64 / requests as f64 / 1e6,
        })
    }
}

/// `endpoint`'s counters from the `$SRV.STATS` reply of the micro service `service` (one
/// responder's: the first to answer), or `None` when none answers or the reply lacks them.
pub async fn endpoint_counters(
    client: &async_nats::Client,
    service: &str,
    endpoint: &str,
) -> Option<EndpointCounters> {
    let request = Request::new().timeout(Some(Duration::from_secs(2)));
    let reply = client
        .send_request(format!("$SRV.STATS.{service}"), request)
        .await
        .ok()?;
    parse_endpoint_counters(&reply.payload, endpoint)
}

/// The counters of `endpoint` in a `$SRV.STATS` reply.
pub fn parse_endpoint_counters(payload: &[u8], endpoint: &str) -> Option<EndpointCounters> {
    let stats: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let found = stats
        .get("endpoints")?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(endpoint))?;
    Some(EndpointCounters {
        requests: found.get("num_requests")?.as_u64()?,
        processing_ns: u128::from(found.get("processing_time")?.as_u64()?),
    })
}

/// The micro service whose `$SRV.STATS` is read (creditflow's).
const SERVICE_NAME: &str = creditflow::service::NAME;
/// The subject of the echo responder.
pub const ECHO_SUBJECT: &str = "loadgen.echo";
/// The echo's reply size: about a balance reply of the workload's accounts.
pub const ECHO_REPLY_BYTES: usize = 600;
/// A request due sooner than this is sent at once rather than slept for.
const SLEEP_MIN_NS: Nanos = 20_000;
/// Requests queued for one connection's dispatcher at most (the sender thread waits past it,
/// and its requests keep their scheduled times).
const QUEUE_MAX: usize = 65_536;

/// What is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `<prefix>.query.balance` with `{"account":…}`.
    Balance,
    /// `<prefix>.query.authorize` with `{"account":…,"meter":…,"quantity":…[,"dims":…]}`.
    Authorize,
    /// The echo responder (`loadgen.echo`) with the balance requests' bodies: the broker's
    /// request-reply round trip with a responder that does nothing.
    Echo,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Balance => "balance",
            Endpoint::Authorize => "authorize",
            Endpoint::Echo => "echo",
        }
    }
}

/// The request bodies: request `n`'s body depends on the seed and `n` alone.
#[derive(Clone, Debug)]
pub struct Bodies {
    pub seed: u64,
    pub accounts: u32,
    /// Accounts are `<account_prefix>_<i>`, as in the workload.
    pub account_prefix: String,
    /// Account popularity; `None` = uniform.
    pub zipf: Option<Arc<Zipf>>,
    /// Authorize requests: the meter mix, quantities 1..=quantity_max and the meter's dims.
    /// Empty: balance requests.
    pub meters: Vec<MeterChoice>,
    pub quantity_max: u32,
}

impl Bodies {
    /// Request `n`'s own generator.
    fn rng(&self, n: u64) -> Rng {
        Rng::new(self.seed ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    pub fn body(&self, n: u64) -> Bytes {
        let mut rng = self.rng(n);
        let account = match &self.zipf {
            Some(zipf) => zipf.sample(&mut rng),
            None => rng.below(u64::from(self.accounts.max(1))) as u32,
        };
        let mut json = String::with_capacity(160);
        json.push_str(r#"{"account":"#);
        push_json_string(&mut json, &format!("{}_{account}", self.account_prefix));
        if !self.meters.is_empty() {
            let total: u64 = self.meters.iter().map(|m| u64::from(m.weight)).sum();
            let mut x = rng.below(total.max(1));
            let mut meter = &self.meters[0];
            for choice in &self.meters {
                if x < u64::from(choice.weight) {
                    meter = choice;
                    break;
                }
                x -= u64::from(choice.weight);
            }
            let quantity = 1 + rng.below(u64::from(self.quantity_max.max(1)));
            json.push_str(r#","meter":"#);
            push_json_string(&mut json, &meter.name);
            json.push_str(&format!(r#","quantity":"{quantity}""#));
            if !meter.dims.is_empty() {
                let dims = &meter.dims[rng.below(meter.dims.len() as u64) as usize];
                if !dims.is_empty() {
                    json.push_str(r#","dims":{"#);
                    for (i, (key, value)) in dims.iter().enumerate() {
                        if i > 0 {
                            json.push(',');
                        }
                        push_json_string(&mut json, key);
                        json.push(':');
                        push_json_string(&mut json, value);
                    }
                    json.push('}');
                }
            }
        }
        json.push('}');
        Bytes::from(json)
    }
}

/// When a query run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QueryLimit {
    /// No request scheduled at or after this offset (closed loop: none started after it).
    Duration(Nanos),
    /// This many requests.
    Requests(u64),
}

#[derive(Clone, Debug)]
pub struct QueryOptions {
    pub nats_url: String,
    pub subject: String,
    pub bodies: Bodies,
    /// The schedule; `Max` = closed loop, `concurrency` requests in flight per connection.
    pub rate: RateShape,
    pub limit: QueryLimit,
    pub connections: usize,
    /// Requests in flight per connection at most.
    pub concurrency: usize,
    pub timeout: Duration,
    /// Print the live line every second (stderr).
    pub live: bool,
    /// The service endpoint whose `$SRV.STATS` counters are read before and after the run
    /// (`None`: the echo, which has none).
    pub stats_endpoint: Option<String>,
}

/// What came back for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A reply without error headers.
    Ok {
        bytes: usize,
    },
    /// A reply with `Nats-Service-Error-Code` (0 when the code is not a number).
    Code {
        code: u16,
        status: String,
    },
    TimedOut,
    NoResponders,
    Failed(String),
}

/// Classifies what `send_request` returned.
pub fn classify(result: Result<async_nats::Message, RequestError>) -> Outcome {
    match result {
        Ok(message) => match creditflow::service::error::reply_error(&message) {
            Some((status, code)) => Outcome::Code {
                code: code.trim().parse().unwrap_or(0),
                status,
            },
            None => Outcome::Ok {
                bytes: message.payload.len(),
            },
        },
        Err(error) => match error.kind() {
            RequestErrorKind::TimedOut => Outcome::TimedOut,
            RequestErrorKind::NoResponders => Outcome::NoResponders,
            _ => Outcome::Failed(error.to_string()),
        },
    }
}

/// Counts and latencies of a query run.
#[derive(Clone, Debug, Default)]
pub struct QueryStats {
    /// Requests handed to a connection.
    pub requests: u64,
    /// Requests whose outcome is known.
    pub completed: u64,
    pub ok: u64,
    /// Replies `404` (unknown account): an answer, counted apart from both ok and errors.
    pub not_found: u64,
    /// Every other outcome: error replies, timeouts, no responders, client failures.
    pub errors: u64,
    /// Every outcome that is not ok, by code: `"404"`, `"503"`, …, `"timeout"`,
    /// `"no_responders"`, `"failed"`.
    pub by_code: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// Open loop: scheduled time → outcome; closed loop: send → outcome.
    pub latency: Latency,
    /// Send → outcome.
    pub service_time: Latency,
    /// Scheduled time → send (open loop only): the sender's and the concurrency bound's delay.
    pub send_delay: Latency,
    /// `latency`, reset by the live line every second.
    pub interval_latency: Latency,
    pub request_bytes: u64,
    /// Payload bytes of ok replies.
    pub reply_bytes: u64,
    /// When the last outcome was known (run offset).
    pub last_completed_at: Nanos,
}

impl QueryStats {
    /// Records request `scheduled` (open loop; = `sent` in a closed loop), sent at `sent`,
    /// whose outcome was known at `observed`.
    pub fn record(
        &mut self,
        outcome: Outcome,
        open_loop: bool,
        scheduled: Nanos,
        sent: Nanos,
        observed: Nanos,
        request_bytes: usize,
    ) {
        self.completed += 1;
        self.request_bytes += request_bytes as u64;
        self.last_completed_at = self.last_completed_at.max(observed);
        self.latency.record_scheduled(scheduled, observed);
        self.interval_latency.record_scheduled(scheduled, observed);
        self.service_time.record_scheduled(sent, observed);
        if open_loop {
            self.send_delay.record_scheduled(scheduled, sent);
        }
        let (key, error) = match outcome {
            Outcome::Ok { bytes } => {
                self.ok += 1;
                self.reply_bytes += bytes as u64;
                return;
            }
            Outcome::Code { code: 404, .. } => {
                self.not_found += 1;
                *self.by_code.entry("404".into()).or_default() += 1;
                return;
            }
            Outcome::Code { code, status } => (code.to_string(), format!("{code} {status}")),
            Outcome::TimedOut => ("timeout".to_string(), "timed out".to_string()),
            Outcome::NoResponders => (
                "no_responders".to_string(),
                "no responders on the subject".to_string(),
            ),
            Outcome::Failed(error) => ("failed".to_string(), error),
        };
        self.errors += 1;
        *self.by_code.entry(key).or_default() += 1;
        self.first_error.get_or_insert(error);
    }
}

/// One second of the live line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QuerySecond {
    pub t_s: u64,
    pub sent_per_s: f64,
    pub completed_per_s: f64,
    pub in_flight: u64,
    pub errors: u64,
    pub latency: Percentiles,
}

/// Everything a query run measured.
#[derive(Debug)]
pub struct QueryResult {
    pub stats: QueryStats,
    /// Closed loop (`--rate max`): latencies are service times.
    pub closed_loop: bool,
    /// Scheduled offset of the last request (open loop).
    pub schedule_span: Nanos,
    /// From the start to the last outcome.
    pub elapsed: Nanos,
    pub timeline: Vec<QuerySecond>,
    /// The service's own time per request over the run ([`QueryOptions::stats_endpoint`]).
    pub service_processing: Option<ServiceProcessing>,
}

impl QueryResult {
    /// Requests per second offered by the schedule; `None` in a closed loop.
    pub fn offered_per_s(&self) -> Option<f64> {
        (!self.closed_loop && self.schedule_span > 0)
            .then(|| rate(self.stats.requests.saturating_sub(1), self.schedule_span))
    }

    /// Answers (ok and 404) per second over the run.
    pub fn answered_per_s(&self) -> f64 {
        rate(self.stats.ok + self.stats.not_found, self.elapsed)
    }

    pub fn ok_per_s(&self) -> f64 {
        rate(self.stats.ok, self.elapsed)
    }
}

struct Job {
    scheduled: Nanos,
    body: Bytes,
}

/// Runs the request load of `options` and returns what it measured.
pub async fn execute(options: QueryOptions) -> anyhow::Result<QueryResult> {
    anyhow::ensure!(
        options.connections > 0 && options.concurrency > 0,
        "--connections and --concurrency must be > 0"
    );
    let mut clients = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        clients.push(nats::connect(&options.nats_url).await?);
    }
    let subject = Subject::from(options.subject.as_str());
    // The first request of a connection subscribes its reply inbox: do it before the clock
    // starts (a read-only request; its outcome is not counted).
    for client in &clients {
        let _ = client
            .send_request(
                subject.clone(),
                Request::new()
                    .payload(options.bodies.body(u64::MAX))
                    .timeout(Some(options.timeout)),
            )
            .await;
    }
    // The service's counters once the warm-up requests are answered, and again at the end.
    let counters = || async {
        match &options.stats_endpoint {
            Some(endpoint) => endpoint_counters(&clients[0], SERVICE_NAME, endpoint).await,
            None => None,
        }
    };
    let before = counters().await;
    let stats = Arc::new(Mutex::new(QueryStats::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let closed_loop = options.rate.is_max();
    let clock = RunClock::start();
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let live = tokio::spawn(live_line(
        clock,
        stats.clone(),
        sent.clone(),
        timeline.clone(),
        options.live,
    ));
    let schedule_span = if closed_loop {
        closed(&options, &clients, &subject, clock, &stats, &sent).await?;
        0
    } else {
        open(&options, &clients, &subject, clock, &stats, &sent).await?
    };
    live.abort();
    let mut stats = stats.lock().expect("stats lock").clone();
    stats.requests = sent.load(Ordering::SeqCst);
    let elapsed = stats.last_completed_at.max(1);
    let timeline = timeline.lock().expect("timeline lock").clone();
    let after = counters().await;
    Ok(QueryResult {
        stats,
        closed_loop,
        schedule_span,
        elapsed,
        timeline,
        service_processing: before.zip(after).and_then(|(b, a)| b.until(a)),
    })
}

/// The open loop: returns the scheduled offset of the last request.
async fn open(
    options: &QueryOptions,
    clients: &[async_nats::Client],
    subject: &Subject,
    clock: RunClock,
    stats: &Arc<Mutex<QueryStats>>,
    sent: &Arc<AtomicU64>,
) -> anyhow::Result<Nanos> {
    let mut senders = Vec::with_capacity(clients.len());
    let mut dispatchers = Vec::with_capacity(clients.len());
    for client in clients {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_MAX);
        senders.push(tx);
        dispatchers.push(tokio::spawn(dispatch(
            client.clone(),
            subject.clone(),
            rx,
            options.concurrency,
            options.timeout,
            clock,
            stats.clone(),
        )));
    }
    // The schedule runs on its own OS thread (a thread sleep is precise to tens of
    // microseconds; tokio's timer to a millisecond). A request leaves when it is due, or at
    // once if overdue; it never loses its scheduled time.
    let shape = options.rate.clone();
    let limit = options.limit;
    let bodies = options.bodies.clone();
    let sent = sent.clone();
    let sender = std::thread::Builder::new()
        .name("loadgen-query-sender".into())
        .spawn(move || -> Result<Nanos, String> {
            let mut schedule = Schedule::new(shape);
            let mut span = 0;
            let mut n = 0u64;
            loop {
                let at = schedule.next_offset();
                match limit {
                    QueryLimit::Duration(d) if at >= d => break,
                    QueryLimit::Requests(r) if n >= r => break,
                    _ => {}
                }
                let now = clock.now();
                if at > now + SLEEP_MIN_NS {
                    std::thread::sleep(Duration::from_nanos(at - now));
                }
                let job = Job {
                    scheduled: at,
                    body: bodies.body(n),
                };
                sent.fetch_add(1, Ordering::SeqCst);
                if senders[(n % senders.len() as u64) as usize]
                    .blocking_send(job)
                    .is_err()
                {
                    return Err("a dispatcher stopped early".into());
                }
                span = at;
                n += 1;
            }
            Ok(span)
        })
        .context("starting the query sender thread")?;
    let span = tokio::task::spawn_blocking(move || sender.join())
        .await
        .context("joining the query sender thread")?
        .map_err(|_| anyhow::anyhow!("the query sender thread panicked"))?
        .map_err(|e| anyhow::anyhow!(e))?;
    for dispatcher in dispatchers {
        dispatcher.await.context("a query dispatcher failed")?;
    }
    Ok(span)
}

/// One connection of the open loop: each request is sent as soon as it arrives and fewer than
/// `concurrency` are in flight; returns when `rx` is closed and every request has its outcome.
async fn dispatch(
    client: async_nats::Client,
    subject: Subject,
    mut rx: mpsc::Receiver<Job>,
    concurrency: usize,
    timeout: Duration,
    clock: RunClock,
    stats: Arc<Mutex<QueryStats>>,
) {
    let room = Arc::new(Semaphore::new(concurrency));
    while let Some(job) = rx.recv().await {
        let permit = room.clone().acquire_owned().await.expect("never closed");
        let client = client.clone();
        let subject = subject.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let bytes = job.body.len();
            let sent = clock.now();
            let result = client
                .send_request(
                    subject,
                    Request::new().payload(job.body).timeout(Some(timeout)),
                )
                .await;
            let observed = clock.now();
            drop(permit);
            let outcome = classify(result);
            stats.lock().expect("stats lock").record(
                outcome,
                true,
                job.scheduled,
                sent,
                observed,
                bytes,
            );
        });
    }
    // Every permit back: every request in flight has its outcome (each is bounded by timeout).
    let _all = room
        .acquire_many(concurrency as u32)
        .await
        .expect("never closed");
}

/// The closed loop: `concurrency` workers per connection, each sending its next request when
/// its previous one has its outcome.
async fn closed(
    options: &QueryOptions,
    clients: &[async_nats::Client],
    subject: &Subject,
    clock: RunClock,
    stats: &Arc<Mutex<QueryStats>>,
    sent: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for client in clients {
        for _ in 0..options.concurrency {
            let client = client.clone();
            let subject = subject.clone();
            let stats = stats.clone();
            let sent = sent.clone();
            let next = next.clone();
            let bodies = options.bodies.clone();
            let limit = options.limit;
            let timeout = options.timeout;
            workers.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let start = clock.now();
                    match limit {
                        QueryLimit::Requests(r) if n >= r => break,
                        QueryLimit::Duration(d) if start >= d => break,
                        _ => {}
                    }
                    let body = bodies.body(n);
                    let bytes = body.len();
                    sent.fetch_add(1, Ordering::SeqCst);
                    let result = client
                        .send_request(
                            subject.clone(),
                            Request::new().payload(body).timeout(Some(timeout)),
                        )
                        .await;
                    let observed = clock.now();
                    let outcome = classify(result);
                    stats
                        .lock()
                        .expect("stats lock")
                        .record(outcome, false, start, start, observed, bytes);
                }
            }));
        }
    }
    for worker in workers {
        worker.await.context("a query worker failed")?;
    }
    Ok(())
}

async fn live_line(
    clock: RunClock,
    stats: Arc<Mutex<QueryStats>>,
    sent: Arc<AtomicU64>,
    timeline: Arc<Mutex<Vec<QuerySecond>>>,
    print: bool,
) {
    let mut interval =
        tokio::time::interval_at(clock.instant_at(1_000_000_000), Duration::from_secs(1));
    let (mut sent_before, mut completed_before, mut t_before) = (0, 0, 0);
    let mut t = 0;
    loop {
        interval.tick().await;
        t += 1;
        let now = clock.now();
        let elapsed = now - t_before;
        t_before = now;
        let sent_now = sent.load(Ordering::SeqCst);
        let (completed, errors, latency) = {
            let mut stats = stats.lock().expect("stats lock");
            let latency = stats.interval_latency.percentiles();
            stats.interval_latency.reset();
            (stats.completed, stats.errors, latency)
        };
        let second = QuerySecond {
            t_s: t,
            sent_per_s: rate(sent_now - sent_before, elapsed),
            completed_per_s: rate(completed - completed_before, elapsed),
            in_flight: sent_now.saturating_sub(completed),
            errors,
            latency,
        };
        sent_before = sent_now;
        completed_before = completed;
        if print {
            eprintln!(
                "[{:>4}s] sent {:>8.0}/s answered {:>8.0}/s in flight {:>5} errors {} | p50 {:.3} p99 {:.3} p99.9 {:.3} ms",
                second.t_s,
                second.sent_per_s,
                second.completed_per_s,
                second.in_flight,
                second.errors,
                second.latency.p50_ms,
                second.latency.p99_ms,
                second.latency.p999_ms
            );
        }
        timeline.lock().expect("timeline lock").push(second);
    }
}

/// A JSON object of exactly `size` bytes (at least its 12-byte frame): the echo's reply.
pub fn echo_body(size: usize) -> Bytes {
    let frame = r#"{"echo":""}"#.len();
    let fill = size.saturating_sub(frame);
    let mut body = String::with_capacity(frame + fill);
    body.push_str(r#"{"echo":""#);
    body.push_str(&"x".repeat(fill));
    body.push_str(r#""}"#);
    Bytes::from(body)
}

/// A running echo responder; dropping it does not stop it, [`EchoResponder::stop`] does.
pub struct EchoResponder {
    task: tokio::task::JoinHandle<()>,
    served: Arc<AtomicU64>,
}

impl EchoResponder {
    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    pub fn stop(self) -> u64 {
        self.task.abort();
        self.served()
    }
}

/// Answers every request on `subject` with a fixed body of `reply_bytes` bytes (0: the request's
/// own payload), on `client` (a connection of its own), in the order received, doing nothing
/// else: the broker's request-reply round trip, the floor of any service on it.
pub async fn echo_responder(
    client: async_nats::Client,
    subject: &str,
    reply_bytes: usize,
) -> anyhow::Result<EchoResponder> {
    let mut subscription = client
        .subscribe(subject.to_string())
        .await
        .with_context(|| format!("subscribing to {subject}"))?;
    client.flush().await.context("flushing the subscription")?;
    let body = echo_body(reply_bytes);
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    let task = tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let Some(reply) = message.reply else {
                continue;
            };
            let payload = if reply_bytes == 0 {
                message.payload
            } else {
                body.clone()
            };
            if client.publish(reply, payload).await.is_err() {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(EchoResponder { task, served })
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_services_own_time_is_the_difference_of_two_stats_readings() {
        let reply = |requests: u64, ns: u64| {
            format!(
                r#"{{"type":"io.nats.micro.v1.stats_response","name":"creditflow","endpoints":[
                  {{"name":"authorize","num_requests":9,"processing_time":900}},
                  {{"name":"balance","num_requests":{requests},"processing_time":{ns}}}]}}"#
            )
        };
        let before = parse_endpoint_counters(reply(10, 5_000_000).as_bytes(), "balance").unwrap();
        let after = parse_endpoint_counters(reply(30, 45_000_000).as_bytes(), "balance").unwrap();
        assert_eq!(
            before.until(after),
            Some(ServiceProcessing {
                requests: 20,
                mean_ms: 2.0
            })
        );
        assert_eq!(
            after.until(before),
            None,
            "counters that went back: another responder"
        );
        assert_eq!(before.until(before), None, "nothing answered in between");
        assert!(parse_endpoint_counters(reply(1, 1).as_bytes(), "usage").is_none());
        assert!(parse_endpoint_counters(b"not json", "balance").is_none());
    }
    use super::*;

    fn bodies(meters: Vec<MeterChoice>) -> Bodies {
        Bodies {
            seed: 7,
            accounts: 100,
            account_prefix: "lg".into(),
            zipf: None,
            meters,
            quantity_max: 5,
        }
    }

    #[test]
    fn bodies_are_a_function_of_the_seed_and_the_number() {
        let b = bodies(Vec::new());
        assert_eq!(b.body(3), b.body(3));
        let text = String::from_utf8(b.body(3).to_vec()).unwrap();
        assert!(text.starts_with(r#"{"account":"lg_"#), "{text}");
        let meters = vec![MeterChoice {
            name: "api_call".into(),
            weight: 1,
            credit_type: "credit".into(),
            dims: vec![vec![("region".into(), "eu".into())]],
        }];
        let text = String::from_utf8(bodies(meters).body(3).to_vec()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["meter"], "api_call");
        assert_eq!(value["dims"]["region"], "eu");
        let q: u32 = value["quantity"].as_str().unwrap().parse().unwrap();
        assert!((1..=5).contains(&q));
    }

    #[test]
    fn the_echo_body_has_the_size_asked() {
        assert_eq!(echo_body(600).len(), 600);
        assert!(serde_json::from_slice::<serde_json::Value>(&echo_body(600)).is_ok());
    }

    #[test]
    fn outcomes_add_up() {
        let mut stats = QueryStats::default();
        stats.record(Outcome::Ok { bytes: 10 }, true, 0, 1000, 5000, 20);
        stats.record(
            Outcome::Code {
                code: 404,
                status: "unknown_account: x".into(),
            },
            true,
            0,
            0,
            1000,
            20,
        );
        stats.record(
            Outcome::Code {
                code: 503,
                status: "busy: y".into(),
            },
            true,
            0,
            0,
            1000,
            20,
        );
        stats.record(Outcome::TimedOut, true, 0, 0, 2_000_000, 20);
        assert_eq!((stats.ok, stats.not_found, stats.errors), (1, 1, 2));
        assert_eq!(stats.by_code["404"], 1);
        assert_eq!(stats.by_code["503"], 1);
        assert_eq!(stats.by_code["timeout"], 1);
        assert_eq!(stats.first_error.as_deref(), Some("503 busy: y"));
        assert_eq!(stats.latency.count(), 4);
        assert!((stats.latency.max_ms() - 2.0).abs() < 0.01);
    }
}
