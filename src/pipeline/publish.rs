//! The output stream's publisher: each output is a core NATS publish with a reply subject of
//! this publisher's own inbox, and its ack is the stream's reply read from one subscription.
//!
//! Owns: the inbox subscription, the acks received and not yet claimed, the reply's reading.
//!
//! Must never: report an output stored without the stream's reply saying so (a sequence), or
//! wait for a reply forever (every ack times out after `timeout`, like every other request).
//!
//! Why not async-nats's JetStream publish: it costs the emitter thread about twice the CPU per
//! output (a semaphore permit, a one-shot channel and a fresh inbox subject per publish, a
//! timer around the send and another around the ack, and the reply read through an untagged
//! serde enum), and the client's own thread a map insert and remove per request (profile in
//! docs/PERFORMANCE.md "The emitter's acks"). The protocol is the same: a publish with a reply
//! subject, the `Nats-Msg-Id` header and the JSON reply `{"stream":…,"seq":…}` or
//! `{"error":{…}}`; what this saves is bookkeeping.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt};

use super::emit::{PublishFailure, Publisher};
use super::Outbound;

/// The fence records an owner published (`processor::generation`).
#[derive(Clone, Debug)]
pub struct Fences {
    /// `<output prefix>.fence`: partition p's record is on `<subject_prefix>.<p>`.
    pub subject_prefix: String,
    /// By partition: the stream sequence of this owner's record.
    pub sequences: Arc<Vec<Option<u64>>>,
}

/// The NATS JetStream publisher.
pub struct JetStreamPublisher {
    client: async_nats::Client,
    /// `<inbox>.<token>` is each publish's reply subject.
    inbox: String,
    acks: Arc<Mutex<AckBook>>,
    /// The longest wait for the client to take a publish, and for its ack.
    timeout: Duration,
    /// Processors sharing the partitions, on a server that checks it: each output expects its
    /// partition's fence record to be the last message on `<subject_prefix>.<partition>`, so
    /// the server refuses it once another owner has fenced the partition.
    fences: Option<Fences>,
}

impl JetStreamPublisher {
    /// Subscribes to a fresh inbox of `client` for the acks.
    pub async fn new(
        client: async_nats::Client,
        timeout: Duration,
        fences: Option<Fences>,
    ) -> Result<JetStreamPublisher, PublishFailure> {
        let inbox = client.new_inbox();
        let subscriber = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| PublishFailure(format!("subscribing to the acks' inbox: {e}")))?;
        Ok(JetStreamPublisher {
            client,
            inbox,
            acks: Arc::new(Mutex::new(AckBook {
                subscriber,
                first: 0,
                slots: VecDeque::new(),
            })),
            timeout,
            fences,
        })
    }

    fn headers(&self, output: &Outbound) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, output.id.as_str());
        if let Some(fences) = &self.fences {
            if let Some(Some(sequence)) = fences.sequences.get(output.partition as usize) {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    format!("{}.{}", fences.subject_prefix, output.partition).as_str(),
                );
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    sequence.to_string().as_str(),
                );
            }
        }
        headers
    }
}

impl Publisher for JetStreamPublisher {
    type Ack = AckTicket;

    async fn publish(&self, output: &Outbound) -> Result<AckTicket, PublishFailure> {
        let token = lock(&self.acks).open();
        let ticket = AckTicket {
            token,
            acks: self.acks.clone(),
            timeout: self.timeout,
            timer: None,
        };
        let reply = format!("{}.{token}", self.inbox);
        let send = self.client.publish_with_reply_and_headers(
            output.subject.clone(),
            reply,
            self.headers(output),
            output.payload.clone(),
        );
        futures::pin_mut!(send);
        // The client's queue almost always has room: only then is a timer armed.
        let sent = match send.as_mut().now_or_never() {
            Some(sent) => sent,
            None => tokio::time::timeout(self.timeout, send)
                .await
                .map_err(|_| {
                    PublishFailure("timed out handing the publish to the client".into())
                })?,
        };
        // On failure the ticket is dropped here, which closes its slot.
        sent.map_err(|e| PublishFailure(e.to_string()))?;
        Ok(ticket)
    }
}

/// The acks received and not yet claimed, by token: tokens are handed out in order and slot
/// `i` is token `first + i`; a slot is closed when its ticket completes or is dropped, and the
/// closed slots at the front are let go. A reply to a closed or unknown token is ignored.
struct AckBook {
    subscriber: async_nats::Subscriber,
    first: u64,
    slots: VecDeque<Slot>,
}

enum Slot {
    Waiting,
    Arrived(Result<u64, PublishFailure>),
    Closed,
}

impl AckBook {
    fn open(&mut self) -> u64 {
        self.slots.push_back(Slot::Waiting);
        self.first + self.slots.len() as u64 - 1
    }

    fn slot(&mut self, token: u64) -> Option<&mut Slot> {
        let index = token.checked_sub(self.first)?;
        self.slots.get_mut(usize::try_from(index).ok()?)
    }

    fn close(&mut self, token: u64) {
        if let Some(slot) = self.slot(token) {
            *slot = Slot::Closed;
        }
        while matches!(self.slots.front(), Some(Slot::Closed)) {
            self.slots.pop_front();
            self.first += 1;
        }
    }

    /// `token`'s reply if it has arrived (its slot is then closed), `Some(None)` while it is
    /// awaited, `None` once its slot is let go (a closed slot behind an open one still reads as
    /// awaited; a ticket is not polled after it completes).
    fn take(&mut self, token: u64) -> Option<Option<Result<u64, PublishFailure>>> {
        let slot = self.slot(token)?;
        match std::mem::replace(slot, Slot::Closed) {
            Slot::Arrived(result) => {
                self.close(token);
                Some(Some(result))
            }
            other => {
                *slot = other;
                Some(None)
            }
        }
    }

    /// Files a reply under its token.
    fn file(&mut self, message: async_nats::Message) {
        let Some(token) = message
            .subject
            .rsplit_once('.')
            .and_then(|(_, token)| token.parse::<u64>().ok())
        else {
            return;
        };
        if let Some(slot @ Slot::Waiting) = self.slot(token) {
            *slot = Slot::Arrived(read_reply(&message));
        }
    }
}

fn lock(acks: &Mutex<AckBook>) -> std::sync::MutexGuard<'_, AckBook> {
    // Only the emitter's one task uses the book; a panic there ends the emitter anyway.
    acks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resolves to the output's stream sequence once the stream's reply to its token arrives;
/// fails when the reply is a refusal or does not come within the timeout.
pub struct AckTicket {
    token: u64,
    acks: Arc<Mutex<AckBook>>,
    timeout: Duration,
    /// Armed the first time the reply is not there yet.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for AckTicket {
    type Output = Result<u64, PublishFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let token = self.token;
        {
            let mut book = lock(&self.acks);
            loop {
                match book.take(token) {
                    Some(Some(result)) => return Poll::Ready(result),
                    Some(None) => {}
                    None => return Poll::Ready(Err(PublishFailure("ack already taken".into()))),
                }
                match book.subscriber.poll_next_unpin(cx) {
                    Poll::Ready(Some(message)) => book.file(message),
                    Poll::Ready(None) => {
                        book.close(token);
                        return Poll::Ready(Err(PublishFailure(
                            "the acks' subscription ended".into(),
                        )));
                    }
                    Poll::Pending => break,
                }
            }
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                lock(&self.acks).close(token);
                Poll::Ready(Err(PublishFailure(format!("no ack within {timeout:?}"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for AckTicket {
    fn drop(&mut self) {
        lock(&self.acks).close(self.token);
    }
}

/// The stream's reply to a publish: its sequence, or why it was refused.
fn read_reply(message: &async_nats::Message) -> Result<u64, PublishFailure> {
    if let Some(status) = message.status {
        if status == async_nats::StatusCode::NO_RESPONDERS {
            return Err(PublishFailure(
                "no responders: no stream stores the output's subject".into(),
            ));
        }
        return Err(PublishFailure(format!(
            "the server answered with status {status}"
        )));
    }
    read_ack(&message.payload)
}

/// Reads a JetStream publish ack: `{"stream":…,"seq":…}` (with `"duplicate":true` when the
/// id was seen in the stream's duplicate window: the output is stored, at that sequence) or
/// `{"error":{"code":…,"err_code":…,"description":…}}`.
pub fn read_ack(payload: &[u8]) -> Result<u64, PublishFailure> {
    #[derive(serde::Deserialize)]
    struct Ack<'a> {
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default, borrow)]
        error: Option<ApiError<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError<'a> {
        #[serde(default)]
        code: u64,
        #[serde(default)]
        err_code: u64,
        #[serde(default, borrow)]
        description: Option<std::borrow::Cow<'a, str>>,
    }
    let ack: Ack = serde_json::from_slice(payload).map_err(|e| {
        PublishFailure(format!(
            "unreadable publish ack ({e}): {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ))
    })?;
    match (ack.error, ack.seq) {
        (Some(error), _) => Err(PublishFailure(format!(
            "the stream refused the output: {} (code {}, error code {})",
            error.description.as_deref().unwrap_or("no description"),
            error.code,
            error.err_code
        ))),
        (None, Some(sequence)) => Ok(sequence),
        (None, None) => Err(PublishFailure(format!(
            "a publish ack without a sequence: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_gives_its_sequence_also_for_a_duplicate() {
        assert_eq!(read_ack(br#"{"stream":"OUT","seq":42}"#).unwrap(), 42);
        assert_eq!(
            read_ack(br#"{"stream":"OUT","domain":"hub","seq":7,"duplicate":true}"#).unwrap(),
            7
        );
    }

    #[test]
    fn a_refusal_or_an_unreadable_ack_is_a_failure_that_says_why() {
        let refused = read_ack(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}"#,
        )
        .unwrap_err();
        assert!(
            refused.0.contains("wrong last sequence: 5") && refused.0.contains("10071"),
            "{refused}"
        );
        for bad in [&b"not json"[..], b"{}", b"{\"stream\":\"OUT\"}", b""] {
            assert!(read_ack(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
