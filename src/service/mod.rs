//! The service: a NATS micro service named `creditflow` that answers balance, authorize,
//! usage, price and statement queries and takes commands (README "The service"; SEMANTICS
//! §17).
//!
//! ```text
//!  client ─ request ─► <prefix>.query.<name>    ─► endpoint loop ─ Question ─► shard queue ─► shard
//!  client ◄─ reply (or Nats-Service-Error + code) ◄── post ◄───────── reply text ◄────────────┘
//!
//!  client ─ request ─► <prefix>.command.<name>  ─► handler task ─ publish ─► creditflow.in.<p>.cmd
//!                                                    │ ack (seq) ─ Question(min_seq = seq) ─► shard
//!  client ◄─ reply (or Nats-Service-Error + code) ───┘◄──── answer (oneshot, via the post) ◄──┘
//! ```
//!
//! A query is read on the endpoint's loop ([`query`]) and needs no task of its own: the shard
//! writes the reply and the post sends it ([`Desk::take_query`]). A command, and a query that
//! another processor's partition may own (processors sharing the partitions: [`route`]), gets a
//! task that waits for its answer.
//!
//! Owns: the micro service and its endpoints on a connection of its own (so a query never
//! queues behind the input stream's deliveries), request parsing ([`request`]), the queries
//! ([`query`]), reply text ([`reply`]), typed errors ([`error`]), and the command path: a
//! command is checked by the input decoder, published into the input stream on its account's
//! `cmd` subject with `Nats-Msg-Id: <account>:<id>` (ids are unique per account), and answered
//! once its partition has applied it, with its `command.result`.
//!
//! Must never: touch a partition (questions go to the shard that owns it, through its bounded
//! queue, and are answered there: [`crate::pipeline::question`]), block on a full shard queue
//! (busy is an answer: 503), leave a request unanswered (every wait is bounded by
//! `service.wait_max`), or apply a command itself: the log is the only write path, so a command
//! through the service and the same command published directly do exactly the same thing.
//!
//! Invariants: a reply's `as_of_seq` is a stream sequence through which every message of the
//! account's partition has been applied; a query with `min_seq` is answered only once its
//! partition has applied through it (read-your-writes); a command retried with the same id is
//! applied once (the broker's duplicate window, and the engine's dedupe index past it) and gets
//! the same `command.result`.

pub mod error;
pub mod post;
pub mod query;
pub mod reply;
pub mod request;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::channel::{Sender, TrySendError};
use futures::StreamExt;

use crate::catalog::Catalog;
use crate::engine::dedupe::dedupe_key;
use crate::engine::partition_of;
use crate::metrics::Health;
use crate::pipeline::question::{Needs, Question, Seen};
use crate::pipeline::Layout;
use crate::time::Instant;
use crate::wire::subject::SubjectKind;
pub use error::ServiceError;
use reply::Object;
use request::Fields;

/// The micro service's name (`$SRV.PING.creditflow`).
pub const NAME: &str = "creditflow";

/// The query endpoints, by name.
pub const QUERIES: [&str; 5] = ["balance", "authorize", "usage", "price", "statement"];
/// The command endpoints: each publishes the input command of the same name.
pub const COMMANDS: [&str; 9] = [
    "grant",
    "void_grant",
    "adjust",
    "reverse",
    "set_plan",
    "set_policy",
    "reserve",
    "commit",
    "release",
];
/// Charges a statement lists at most.
pub const STATEMENT_LIMIT_MAX: u64 = 1000;
/// Charges a statement lists when the request does not say.
pub const STATEMENT_LIMIT_DEFAULT: u64 = 20;

/// Where the service lives and how long it waits.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Endpoints are `<prefix>.query.<name>` and `<prefix>.command.<name>`.
    pub subject_prefix: String,
    pub queue_group: String,
    /// The longest a request waits for its partition (min_seq, a command's application).
    pub wait_max: Duration,
    /// The input stream's subject prefix (commands are published under it).
    pub input_prefix: String,
    pub partitions: u32,
    /// Time allowed for the publish of a command to be acknowledged.
    pub publish_timeout: Duration,
}

/// The subject of a query endpoint.
pub fn query_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.query.{name}")
}

/// The subject of a command endpoint.
pub fn command_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.command.{name}")
}

/// What every handler works with.
pub struct Desk {
    pub catalog: Arc<Catalog>,
    pub settings: Settings,
    /// One bounded queue per shard.
    pub questions: Vec<Sender<Question>>,
    /// Which shard owns which partition (none: another processor owns it).
    pub layout: Arc<Layout>,
    pub health: Health,
    /// JetStream on the service's connection, for publishing commands; `None` for a desk that
    /// only answers queries (the HTTP read API).
    pub jetstream: Option<async_nats::jetstream::Context>,
    /// Where requests for partitions owned elsewhere go (processors sharing the partitions:
    /// [`route`]); `None` when this processor owns every partition.
    pub router: Option<route::Router>,
    /// Where the shards deliver answers in bursts ([`post`]), on the runtime the requests run
    /// on; `None`: each answer completes its request directly.
    pub post: Option<post::Post>,
    /// Where each request the NATS endpoints answer is counted, with its time here (`None`:
    /// not counted: the HTTP API's desk, whose requests are not in these metrics).
    pub metrics: Option<crate::metrics::Metrics>,
}

/// The endpoint called `name` (a query, or a command when `command`), by its static name.
pub fn endpoint_name(command: bool, name: &str) -> Option<&'static str> {
    let names: &[&'static str] = if command { &COMMANDS } else { &QUERIES };
    names.iter().copied().find(|n| *n == name)
}

/// A running service; [`Running::stop`] unsubscribes every endpoint.
pub struct Running {
    service: async_nats::service::Service,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(error) = self.service.stop().await {
            tracing::warn!(%error, "stopping the service");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("starting the service: {0}")]
pub struct StartError(String);

/// Starts the service on `client` (a connection of its own) and a task per endpoint.
pub async fn start(client: async_nats::Client, desk: Arc<Desk>) -> Result<Running, StartError> {
    use async_nats::service::ServiceExt;
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| StartError(e.to_string());
    let settings = &desk.settings;
    let service = client
        .service_builder()
        .description(
            "creditflow: balances, authorization, usage, prices and statements from the owning \
             partition's memory; commands into the input log",
        )
        .metadata(
            [
                ("partitions".to_string(), settings.partitions.to_string()),
                (
                    "subject_prefix".to_string(),
                    settings.subject_prefix.clone(),
                ),
            ]
            .into(),
        )
        .queue_group(&settings.queue_group)
        .start(NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(fail)?;
    let mut tasks = Vec::new();
    if desk.router.is_some() {
        // Requests other processors forward for this one's partitions.
        let owned = desk.layout.owned_partitions();
        tasks = route::serve_owned(
            client.clone(),
            desk.clone(),
            &settings.subject_prefix,
            &owned,
        )
        .await
        .map_err(|e| StartError(e.to_string()))?;
    }
    let endpoints = QUERIES
        .iter()
        .map(|name| (*name, query_subject(&settings.subject_prefix, name), false))
        .chain(
            COMMANDS
                .iter()
                .map(|name| (*name, command_subject(&settings.subject_prefix, name), true)),
        );
    for (name, subject, command) in endpoints {
        let mut endpoint = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(fail)?;
        let desk = desk.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let received = std::time::Instant::now();
                let request = match command {
                    true => request,
                    false => match desk.take_query(name, received, request) {
                        Some(request) => request,
                        None => continue,
                    },
                };
                let desk = desk.clone();
                tokio::spawn(async move {
                    let reply = desk.handle(name, command, &request.message.payload).await;
                    if let Err(error) = &reply {
                        tracing::debug!(endpoint = name, %error, "request refused");
                    }
                    let code = reply.as_ref().err().map(|error| error.code);
                    let reply = reply.map(Bytes::from).map_err(Into::into);
                    if let Err(error) = request.respond(reply).await {
                        tracing::debug!(endpoint = name, %error, "replying failed");
                    }
                    if let Some(metrics) = &desk.metrics {
                        metrics.service_request(name, code, received.elapsed().as_secs_f64());
                    }
                });
            }
        }));
    }
    Ok(Running { service, tasks })
}

impl Desk {
    /// Answers one request of endpoint `name`: here when this processor owns the account's
    /// partition (or the request names no account), else through its owner ([`route`]).
    pub async fn handle(
        &self,
        name: &'static str,
        command: bool,
        payload: &[u8],
    ) -> Result<String, ServiceError> {
        if let Some(router) = &self.router {
            if let Some(partition) = self.elsewhere(payload) {
                return router
                    .forward(partition, name, command, payload, self.settings.wait_max)
                    .await;
            }
        }
        self.handle_here(name, command, payload).await
    }

    /// The partition of the request's account when another processor owns it. A request
    /// without a valid account is answered here (its error is the same everywhere).
    fn elsewhere(&self, payload: &[u8]) -> Option<u32> {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            account: Option<std::borrow::Cow<'a, str>>,
        }
        let named: Named<'_> = serde_json::from_slice(payload).ok()?;
        let account = named.account?;
        if !crate::wire::input::account_is_valid(&account) {
            return None;
        }
        let partition = self.partition(&account);
        (!self.layout.owns(partition)).then_some(partition)
    }

    /// One partition's share of the deployment totals, from this processor or its owner.
    pub async fn partition_totals(
        &self,
        partition: u32,
    ) -> Result<route::PartitionTotals, ServiceError> {
        match &self.router {
            Some(router) if !self.layout.owns(partition) => {
                router.totals(partition, self.settings.wait_max).await
            }
            _ => {
                let text = self.partition_totals_here(partition).await?;
                serde_json::from_str(&text)
                    .map_err(|e| ServiceError::new(500, "internal", e.to_string()))
            }
        }
    }

    /// [`Desk::partition_totals`] of a partition this processor owns, as JSON.
    pub async fn partition_totals_here(&self, partition: u32) -> Result<String, ServiceError> {
        self.ready()?;
        let types = self.catalog.credit_types.len();
        let top = crate::http_api::TOP_CONSUMERS;
        let totals = self
            .ask(partition, 0, Needs::State, move |seen| {
                let (accounts, types, top) = seen.partition.totals(types, top);
                Ok(route::PartitionTotals {
                    accounts,
                    types,
                    top,
                    as_of_seq: seen.as_of_seq,
                })
            })
            .await?;
        serde_json::to_string(&totals)
            .map_err(|e| ServiceError::new(500, "internal", e.to_string()))
    }

    /// 503 `not_ready` while the processor is not caught up with its input.
    fn ready(&self) -> Result<(), ServiceError> {
        if self.health.is_ready() {
            return Ok(());
        }
        let (_, reason) = self.health.readiness();
        Err(ServiceError::unavailable(
            "not_ready",
            format!("the processor is not caught up with its input yet ({reason})"),
        ))
    }

    /// Answers one request of endpoint `name` from this processor's partitions (a partition it
    /// does not own: 503 `not_owner`).
    pub async fn handle_here(
        &self,
        name: &'static str,
        command: bool,
        payload: &[u8],
    ) -> Result<String, ServiceError> {
        self.ready()?;
        if command {
            return self.command(name, payload).await;
        }
        match self.prepare(name, payload) {
            query::Prepared::Answered(answer) => answer,
            query::Prepared::Ask {
                partition,
                min_seq,
                answer,
            } => self.ask(partition, min_seq, Needs::State, answer).await,
        }
    }

    /// Takes a query request without a task of its own when this processor answers it (no
    /// processors share the partitions, and answers come through the post): it is read here,
    /// its question sent to its shard, and the shard's answer replied through the post, so a
    /// query costs no task, channel or timer of its own. `Some(request)` when it needs a task
    /// (to be forwarded, or without a post). `received`: when its endpoint delivered it, which
    /// its time in the processor is counted from.
    pub fn take_query(
        &self,
        name: &'static str,
        received: std::time::Instant,
        request: async_nats::service::Request,
    ) -> Option<async_nats::service::Request> {
        let (Some(post), None) = (&self.post, &self.router) else {
            return Some(request);
        };
        let prepared = self.prepare(name, &request.message.payload);
        let to = post::Addressed {
            request,
            endpoint: name,
            received,
        };
        let (partition, min_seq, answer) = match prepared {
            query::Prepared::Answered(answer) => {
                post.reply(to, answer);
                return None;
            }
            query::Prepared::Ask {
                partition,
                min_seq,
                answer,
            } => (partition, min_seq, answer),
        };
        let Some(shard) = self.layout.shard(partition) else {
            post.reply(to, Err(not_owner(partition)));
            return None;
        };
        let queue = &self.questions[shard];
        if queue.is_full() {
            post.reply(to, Err(busy(shard)));
            return None;
        }
        let wait = self.settings.wait_max;
        let pending = Pending {
            to: Some(to),
            post: post.clone(),
            partition,
            min_seq,
            wait,
        };
        let question = Question {
            partition,
            min_seq,
            needs: Needs::State,
            deadline: std::time::Instant::now() + wait,
            answer: Box::new(move |seen| pending.complete(answer(seen))),
        };
        // Refused (the queue filled since, or the shard stopped): the question is dropped here
        // and its request answered 503 by `Pending`.
        let _ = queue.try_send(question);
        None
    }

    /// Asks the shard that owns `partition`, once it has applied through `min_seq`, and waits
    /// at most `wait_max` for the answer.
    pub(crate) async fn ask<T: Send + 'static>(
        &self,
        partition: u32,
        min_seq: u64,
        needs: Needs,
        answer: impl FnOnce(Seen<'_>) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (reply, answered) = tokio::sync::oneshot::channel();
        let wait = self.settings.wait_max;
        // One reading of the clock for the shard's deadline and the wait here.
        let now = tokio::time::Instant::now();
        let answer: Box<dyn FnOnce(Seen<'_>) + Send> = match &self.post {
            Some(post) => {
                let post = post.clone();
                Box::new(move |seen| {
                    let answer = answer(seen);
                    post.send(Box::new(move || {
                        let _ = reply.send(answer);
                    }));
                })
            }
            None => Box::new(move |seen| {
                let _ = reply.send(answer(seen));
            }),
        };
        let question = Question {
            partition,
            min_seq,
            needs,
            deadline: now.into_std() + wait,
            answer,
        };
        let Some(shard) = self.layout.shard(partition) else {
            return Err(not_owner(partition));
        };
        match self.questions[shard].try_send(question) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(busy(shard)),
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServiceError::unavailable(
                    "stopping",
                    "the processor is stopping",
                ))
            }
        }
        // The shard drops a question past its deadline; the timeout here covers a shard that
        // is stuck altogether.
        match tokio::time::timeout_at(now + wait + Duration::from_millis(500), answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Err(unanswered(partition, min_seq, wait)),
        }
    }

    fn partition(&self, account: &str) -> u32 {
        partition_of(account, self.settings.partitions)
    }

    /// Publishes the command into the input log and answers once its partition has applied it.
    async fn command(&self, kind: &'static str, payload: &[u8]) -> Result<String, ServiceError> {
        let allowed: Vec<&str> = crate::wire::input::fields_of(kind)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|f| *f != "type")
            .collect();
        let fields = Fields::parse(payload, &allowed)?;
        let now = crate::pipeline::ticks::wall_clock();
        let (text, command) = request::command_request(&fields, kind, now, &self.catalog)?;
        let account = command.account.to_string();
        let id = command.id.to_string();
        let partition = self.partition(&account);
        let subject = crate::wire::subject::subject(
            &self.settings.input_prefix,
            partition,
            SubjectKind::Command,
        );
        let (seq, stored_before) = self.publish(subject, &account, &id, text).await?;
        let catalog = self.catalog.clone();
        let key = dedupe_key(&account, &id);
        self.ask(partition, seq, Needs::Results, move |seen| {
            let retry = Retry { seq, stored_before };
            command_reply(&catalog, seen, partition, key, retry, &account, &id)
        })
        .await
    }

    /// Publishes a command; the stream sequence it is stored at (the first one's, for a
    /// retry the broker's duplicate window caught), and whether it was stored before.
    async fn publish(
        &self,
        subject: String,
        account: &str,
        id: &str,
        text: String,
    ) -> Result<(u64, bool), ServiceError> {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(text.into())
            .message_id(format!("{account}:{id}"));
        let unavailable = |e: String| {
            ServiceError::unavailable(
                "input_unavailable",
                format!("the command could not be stored in the input stream: {e}"),
            )
        };
        let Some(jetstream) = &self.jetstream else {
            return Err(ServiceError::unavailable(
                "read_only",
                "this desk answers queries only; send commands to the NATS service",
            ));
        };
        let ack = jetstream
            .send_publish(subject, message)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(self.settings.publish_timeout, ack).await {
            Ok(Ok(ack)) => Ok((ack.sequence, ack.duplicate)),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!(
                "no acknowledgement within {:?}",
                self.settings.publish_timeout
            ))),
        }
    }
}

/// Where a command's publish landed.
struct Retry {
    /// The stream sequence of the message (the first one's when the broker dropped this one).
    seq: u64,
    /// The broker's duplicate window dropped this publish: the same id was stored before.
    stored_before: bool,
}

/// The reply to a command applied through `seq`: its `command.result` (the first application's
/// for a retry), the account's balance, and `as_of_seq`; a 422 when it was dead-lettered.
fn command_reply(
    catalog: &Catalog,
    seen: Seen<'_>,
    partition: u32,
    key: u128,
    retry: Retry,
    account: &str,
    id: &str,
) -> Result<String, ServiceError> {
    let seq = retry.seq;
    let book = seen.results.ok_or_else(|| {
        ServiceError::new(
            500,
            "internal",
            "a command was answered without its results",
        )
    })?;
    if let Some(dead) = book.find_dead_letter(seq) {
        let dead: serde_json::Value = serde_json::from_slice(dead).unwrap_or_default();
        let reason = dead["reason"].as_str().unwrap_or("dead_letter").to_string();
        let detail = dead["detail"].as_str().unwrap_or_default().to_string();
        return Err(ServiceError::new(
            422,
            "not_applied",
            format!("the command was dead-lettered ({reason}): {detail}"),
        ));
    }
    let balance = seen
        .partition
        .account(account)
        .map(|state| reply::balance(catalog, seen.partition, state, seen.as_of_seq));
    let balance = balance.as_deref().unwrap_or("null");
    let object = match book.find_result(partition, key) {
        Some((at, result)) => Object::new()
            .raw("result", std::str::from_utf8(result).unwrap_or("null"))
            .boolean("duplicate", retry.stored_before || *at != seq)
            .number("seq", *at),
        None if seen.partition.remembers(catalog, account, id) => Object::new()
            // Applied before this processor's last restart, and its result no longer at hand:
            // it is in the output stream (`result:<account>:<id>:<seq>`).
            .raw("result", "null")
            .boolean("duplicate", true)
            .raw("seq", "null"),
        None => {
            return Err(ServiceError::new(
                500,
                "internal",
                format!("the message at sequence {seq} is not the command {account}/{id}"),
            ))
        }
    };
    Ok(object
        .raw("balance", balance)
        .number("as_of_seq", seen.as_of_seq)
        .finish())
}

/// A query request answered from its shard without a task of its own ([`Desk::take_query`]):
/// replied to once, through the post, with the answer or, when its question is dropped
/// unanswered (past its deadline, a queue that filled, a shard stopping), with the error an
/// asker waiting for it would give.
struct Pending {
    to: Option<post::Addressed>,
    post: post::Post,
    partition: u32,
    min_seq: u64,
    wait: Duration,
}

impl Pending {
    fn complete(mut self, answer: Result<String, ServiceError>) {
        if let Some(to) = self.to.take() {
            self.post.reply(to, answer);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let error = unanswered(self.partition, self.min_seq, self.wait);
            self.post.reply(to, Err(error));
        }
    }
}

fn not_owner(partition: u32) -> ServiceError {
    ServiceError::unavailable(
        "not_owner",
        format!("partition {partition} is not this processor's; retry"),
    )
}

fn busy(shard: usize) -> ServiceError {
    ServiceError::unavailable(
        "busy",
        format!("shard {shard} has too many questions waiting; retry"),
    )
}

/// The error of a question its shard dropped unanswered (past its deadline, or stopping).
fn unanswered(partition: u32, min_seq: u64, wait: Duration) -> ServiceError {
    if min_seq > 0 {
        ServiceError::unavailable(
            "not_caught_up",
            format!(
                "partition {partition} had not applied through sequence {min_seq} within {wait:?}"
            ),
        )
    } else {
        ServiceError::unavailable(
            "not_answered",
            format!("partition {partition} did not answer within {wait:?}"),
        )
    }
}

/// The event an authorize describes would be a dead letter: 400 with its reason (422 for the
/// partition's account limit, which is not the request's fault).
fn refused_event(dead: crate::wire::input::DeadLetter) -> ServiceError {
    use crate::wire::input::DeadReason;
    let code = if dead.reason == DeadReason::AccountLimit {
        422
    } else {
        400
    };
    ServiceError::new(code, dead.reason.name(), dead.detail)
}

fn priced_refusal(
    catalog: &Catalog,
    meter: crate::catalog::MeterId,
    error: crate::catalog::pricing::PriceError,
) -> ServiceError {
    ServiceError::bad_request(
        error.reason(),
        format!("meter {}: {error}", catalog.meter(meter).name),
    )
}

/// The time a request is judged at when it names none.
pub fn now() -> Instant {
    crate::pipeline::ticks::wall_clock()
}
