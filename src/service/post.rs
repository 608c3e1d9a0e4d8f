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
//! Must never: lose an answer silently (a delivery dropped unrun drops its oneshot sender, which
//! the asker reports as unanswered), or block a shard (sending is a push onto an unbounded
//! queue; it holds at most one delivery per request in flight).

use bytes::Bytes;
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
}

impl Post {
    /// A post and the task (spawned on the current runtime) that delivers what it gets. The
    /// task ends when every `Post` is dropped.
    /// Each reply sent is counted in `metrics` with its time since its request was received.
    pub fn start(metrics: Option<crate::metrics::Metrics>) -> (Post, tokio::task::JoinHandle<()>) {
        let (sender, mut receiver) = unbounded_channel::<Delivery>();
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
                            if let Some(metrics) = &metrics {
                                let seconds = to.received.elapsed().as_secs_f64();
                                metrics.service_request(to.endpoint, code, seconds);
                            }
                        }
                    }
                }
            }
        });
        (Post { sender }, task)
    }

    /// Hands `delivery` to the delivering task; if that has ended (the runtime is stopping), it
    /// is dropped unrun.
    pub fn send(&self, delivery: Box<dyn FnOnce() + Send>) {
        let _ = self.sender.send(Delivery::Run(delivery));
    }

    /// Hands `request`'s reply to the delivering task, which sends it; if that has ended (the
    /// runtime is stopping), it is dropped unsent.
    pub fn reply(&self, to: Addressed, reply: Result<String, ServiceError>) {
        let reply = reply.map(Bytes::from);
        let _ = self.sender.send(Delivery::Reply { to, reply });
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
