//! The service's post: answers coming back from the shards, delivered on the service's own
//! runtime in bursts.
//!
//! Owns: one unbounded queue of deliveries (a closure that completes one waiting request, or a
//! query's reply to send: queries answered without a task of their own, [`super::Desk::take_query`])
//! and the task on the service's runtime that runs them.
//!
//! Why: a shard completing a request's oneshot channel directly schedules the request's task
//! on the service's runtime from another thread, and tokio wakes that runtime for every such
//! schedule (an eventfd write on the shard thread, however many answers it completes in one
//! round). Through the post, only the first answer of a burst wakes the runtime (the queue
//! wakes its receiver once until it runs again); the rest wait in the queue, and the task then
//! completes each request on the runtime's own thread, where waking a task is a local push.
//!
//! A query's answer skips the post when it can: [`Post::reply`] hands it, on the shard's own
//! thread, straight to the NATS connection's queue (what the post's task would do), and only
//! when that queue is full, or the reply is a refusal, does it go through the post. Under
//! ingest the hand-off from a shard to the service's runtime was 0.06-0.26 ms of a query's
//! time (docs/PERFORMANCE.md "Service queries"); the connection's own thread is woken either
//! way.
//!
//! Must never: lose an answer silently (a delivery dropped unrun drops its oneshot sender, which
//! the asker reports as unanswered), or block a shard (sending is a push onto an unbounded
//! queue; it holds at most one delivery per request in flight).

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::ServiceError;

/// What the post delivers.
// Most deliveries are replies: boxing the request would add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub enum Delivery {
    /// Completes one waiting request.
    Run(Box<dyn FnOnce() + Send>),
    /// Sends a request's reply (or its error, in the micro protocol's headers).
    Reply {
        to: Addressed,
        reply: Result<Bytes, ServiceError>,
    },
}

/// A request waiting for its reply: what the reply goes to, and what it is counted as.
pub struct Addressed {
    pub request: async_nats::service::Request,
    /// Its endpoint's name (of `QUERIES` or `COMMANDS`).
    pub endpoint: &'static str,
    /// When its endpoint delivered it.
    pub received: std::time::Instant,
}

/// Deliveries most run per wake-up.
const BURST_MAX: usize = 256;

/// Where shards post their answers; cloned into each question.
#[derive(Clone)]
pub struct Post {
    sender: UnboundedSender<Delivery>,
    /// Counts the replies sent from the shards' threads ([`Post::reply`]).
    metrics: Option<crate::metrics::Metrics>,
}

impl Post {
    /// A post and the task (spawned on the current runtime) that delivers what it gets. The
    /// task ends when every `Post` is dropped.
    /// Each reply sent is counted in `metrics` with its time since its request was received.
    pub fn start(metrics: Option<crate::metrics::Metrics>) -> (Post, tokio::task::JoinHandle<()>) {
        let (sender, mut receiver) = unbounded_channel::<Delivery>();
        let post = Post {
            sender,
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(async move {
            let mut burst = Vec::with_capacity(BURST_MAX);
            while receiver.recv_many(&mut burst, BURST_MAX).await > 0 {
                for delivery in burst.drain(..) {
                    match delivery {
                        Delivery::Run(run) => run(),
                        Delivery::Reply { to, reply } => {
                            if let Err(error) = &reply {
                                tracing::debug!(%error, "request refused");
                            }
                            let code = reply.as_ref().err().map(|error| error.code);
                            // Publishing waits only while the connection's queue is full.
                            if let Err(error) = to.request.respond(reply.map_err(Into::into)).await
                            {
                                tracing::debug!(%error, "replying failed");
                            }
                            count(metrics.as_ref(), &to, code);
                        }
                    }
                }
            }
        });
        (post, task)
    }

    /// Hands `delivery` to the delivering task; if that has ended (the runtime is stopping), it
    /// is dropped unrun.
    pub fn send(&self, delivery: Box<dyn FnOnce() + Send>) {
        let _ = self.sender.send(Delivery::Run(delivery));
    }

    /// Sends `request`'s answer from this thread when the connection's queue has room (it
    /// almost always has: the send then completes at once, never waiting); otherwise, and for
    /// a refusal, hands the reply to the delivering task, which sends it (if that has ended,
    /// the runtime is stopping, it is dropped unsent).
    pub fn reply(&self, to: Addressed, reply: Result<String, ServiceError>) {
        let reply = reply.map(Bytes::from);
        if let Ok(body) = &reply {
            // A send that cannot complete now is dropped unsent (a full queue takes nothing)
            // and goes through the post; `respond` counts a request only once sent. A refusal
            // is counted as an error before it is sent, so it always takes the post's path.
            if let Some(sent) = to.request.respond(Ok(body.clone())).now_or_never() {
                if let Err(error) = sent {
                    tracing::debug!(%error, "replying failed");
                }
                count(self.metrics.as_ref(), &to, None);
                return;
            }
        }
        let _ = self.sender.send(Delivery::Reply { to, reply });
    }
}

/// Counts a reply sent, with its time since its request was received.
fn count(metrics: Option<&crate::metrics::Metrics>, to: &Addressed, code: Option<u16>) {
    if let Some(metrics) = metrics {
        metrics.service_request(to.endpoint, code, to.received.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn answers_from_other_threads_reach_their_askers() {
        let (post, task) = Post::start(None);
        let mut waiting = Vec::new();
        let mut senders = Vec::new();
        for n in 0..1000u32 {
            let (reply, answered) = tokio::sync::oneshot::channel::<u32>();
            waiting.push(answered);
            senders.push((n, reply));
        }
        let shard = {
            let post = post.clone();
            std::thread::spawn(move || {
                for (n, reply) in senders {
                    post.send(Box::new(move || {
                        let _ = reply.send(n * 2);
                    }));
                }
            })
        };
        for (n, answered) in waiting.into_iter().enumerate() {
            assert_eq!(answered.await.unwrap(), n as u32 * 2);
        }
        shard.join().unwrap();
        drop(post);
        task.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_delivery_after_the_task_ended_closes_its_asker() {
        let (post, task) = Post::start(None);
        task.abort();
        let _ = task.await;
        let (reply, answered) = tokio::sync::oneshot::channel::<u32>();
        post.send(Box::new(move || {
            let _ = reply.send(1);
        }));
        assert!(answered.await.is_err());
    }
}

/// Against a real `nats-server`: an answer is sent from the thread that has it, with no help
/// from the post's task (here ended before it), and counted once, in the metrics and in the
/// micro service's stats; a refusal goes through the task.
#[cfg(test)]
mod on_nats {
    use super::*;
    use async_nats::service::ServiceExt;
    use futures::StreamExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_is_sent_from_the_shards_thread_and_a_refusal_through_the_task() {
        let server = crate::testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let service = client
            .service_builder()
            .start("post_test", "1.0.0")
            .await
            .expect("service");
        let mut endpoint = service.endpoint("balance").await.expect("endpoint");
        let metrics = crate::metrics::Metrics::new(1, 1);
        let addressed = |request| Addressed {
            request,
            endpoint: "balance",
            received: std::time::Instant::now(),
        };

        // The answer, sent from a plain thread by a post whose task has ended: had it gone
        // through the task, it would be dropped unsent and the request would time out.
        let (post, task) = Post::start(Some(metrics.clone()));
        task.abort();
        let _ = task.await;
        let asked = {
            let client = client.clone();
            tokio::spawn(async move { client.request("balance", "a".into()).await })
        };
        let to = addressed(endpoint.next().await.expect("a request"));
        std::thread::spawn(move || post.reply(to, Ok("{\"balance\":1}".into())))
            .join()
            .expect("the shard's thread");
        let answer = asked.await.expect("asked").expect("answered");
        assert_eq!(&answer.payload[..], b"{\"balance\":1}");

        // A refusal, through a post whose task runs.
        let (post, task) = Post::start(Some(metrics.clone()));
        let asked = {
            let client = client.clone();
            tokio::spawn(async move { client.request("balance", "b".into()).await })
        };
        let to = addressed(endpoint.next().await.expect("a second request"));
        post.reply(
            to,
            Err(ServiceError::new(
                404,
                "account_not_found",
                "no such account",
            )),
        );
        let refusal = asked.await.expect("asked").expect("answered");
        assert_eq!(
            crate::service::error::reply_error(&refusal),
            Some((
                "account_not_found: no such account".to_string(),
                "404".to_string()
            ))
        );
        drop(post);
        task.await.expect("the task ends with the last post");

        let text = metrics.render();
        for line in [
            "creditflow_service_requests_total{endpoint=\"balance\",outcome=\"ok\"} 1",
            "creditflow_service_requests_total{endpoint=\"balance\",outcome=\"404\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let info = service.stats().await;
        let stats = &info["balance"];
        assert_eq!((stats.requests, stats.errors), (2, 1));
    }
}
