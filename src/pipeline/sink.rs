//! The queue from the shards to the emitter, with a wake-up the emitter can await.
//!
//! Owns: the bounded channel of [`SinkMessage`]s and the [`tokio::sync::Notify`] beside it.
//!
//! Must never: drop a message, or let the emitter sleep while a message waits: every send
//! notifies after the message is queued, and `Notify` keeps one permit when nobody waits, so
//! a send between the emitter's last look at the queue and its wait still wakes it.
//!
//! Why: the emitter waits for the oldest ack and for new outputs at once. Before, it waited for
//! the ack with a 1 ms timeout (1-2 ms with tokio's timer wheel) and looked at the queue after,
//! so at load every output queued behind an ack round trip or a timer tick before it was sent.
//! Bounded: a full queue blocks the shards (`send`), which is how an output stream that cannot
//! take more reaches the input.

use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvError, SendError, SendTimeoutError, Sender, TryRecvError};
use tokio::sync::Notify;

use super::SinkMessage;

/// The sending end (one per shard; cloned).
#[derive(Clone)]
pub struct Sink {
    sender: Sender<SinkMessage>,
    wake: Arc<Notify>,
}

/// The receiving end (the emitter's, or the demo's counter).
pub struct SinkReceiver {
    receiver: Receiver<SinkMessage>,
    wake: Arc<Notify>,
}

/// A queue holding at most `capacity` messages.
pub fn sink_queue(capacity: usize) -> (Sink, SinkReceiver) {
    let (sender, receiver) = crossbeam::channel::bounded(capacity.max(1));
    let wake = Arc::new(Notify::new());
    (
        Sink {
            sender,
            wake: wake.clone(),
        },
        SinkReceiver { receiver, wake },
    )
}

impl Sink {
    /// Queues `message`, waiting for room; `Err` when the receiver is gone.
    pub fn send(&self, message: SinkMessage) -> Result<(), SendError<SinkMessage>> {
        self.sender.send(message)?;
        self.wake.notify_one();
        Ok(())
    }

    /// Queues `message` if room comes within `timeout`.
    pub fn send_timeout(
        &self,
        message: SinkMessage,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<SinkMessage>> {
        self.sender.send_timeout(message, timeout)?;
        self.wake.notify_one();
        Ok(())
    }
}

impl SinkReceiver {
    pub fn try_recv(&self) -> Result<SinkMessage, TryRecvError> {
        self.receiver.try_recv()
    }

    pub fn recv(&self) -> Result<SinkMessage, RecvError> {
        self.receiver.recv()
    }

    /// Resolves once a message has been queued since the last time it resolved (it may have
    /// been taken already by `try_recv`: the caller looks again).
    pub async fn queued(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_send_before_the_wait_still_wakes_it() {
        let (sink, receiver) = sink_queue(4);
        sink.send(SinkMessage::ShardStopped(0)).unwrap();
        assert!(
            receiver.queued().now_or_never().is_some(),
            "the permit was kept"
        );
        assert!(
            receiver.queued().now_or_never().is_none(),
            "one permit for one send"
        );
        assert!(matches!(
            receiver.try_recv(),
            Ok(SinkMessage::ShardStopped(0))
        ));
    }

    #[test]
    fn a_send_from_another_thread_wakes_a_waiting_receiver() {
        let (sink, receiver) = sink_queue(4);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            sink.send(SinkMessage::ShardStopped(1)).unwrap();
        });
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), receiver.queued())
                .await
                .expect("woken by the send");
        });
        assert!(matches!(
            receiver.try_recv(),
            Ok(SinkMessage::ShardStopped(1))
        ));
        sender.join().unwrap();
    }
}
