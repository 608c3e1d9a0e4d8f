//! The service's post: answers coming back from the shards, delivered on the service's own
//! runtime in bursts.
//!
//! Owns: one unbounded queue of deliveries (a closure that completes one waiting request) and
//! the task on the service's runtime that runs them.
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

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Completes one waiting request.
pub type Delivery = Box<dyn FnOnce() + Send>;

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
    pub fn start() -> (Post, tokio::task::JoinHandle<()>) {
        let (sender, mut receiver) = unbounded_channel::<Delivery>();
        let task = tokio::spawn(async move {
            let mut burst = Vec::with_capacity(BURST_MAX);
            while receiver.recv_many(&mut burst, BURST_MAX).await > 0 {
                for delivery in burst.drain(..) {
                    delivery();
                }
            }
        });
        (Post { sender }, task)
    }

    /// Hands `delivery` to the delivering task; if that has ended (the runtime is stopping), it
    /// is dropped unrun.
    pub fn send(&self, delivery: Delivery) {
        let _ = self.sender.send(delivery);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn answers_from_other_threads_reach_their_askers() {
        let (post, task) = Post::start();
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
        let (post, task) = Post::start();
        task.abort();
        let _ = task.await;
        let (reply, answered) = tokio::sync::oneshot::channel::<u32>();
        post.send(Box::new(move || {
            let _ = reply.send(1);
        }));
        assert!(answered.await.is_err());
    }
}
