//! The tick publisher: puts the processor's wall clock into the log as `tick` messages.
//!
//! Owns: reading the wall clock, which happens only here. Replay never reads it: the ticks are
//! in the log (SPEC §3: time is data).
//!
//! Must never: publish a tick into the past of a previous one (ticks only move forward; the
//! engine ignores a tick that does not advance its clock anyway), or block the pipeline: a
//! publish that fails is logged and reported (the processor goes not-ready while ticks fail:
//! without them no period ends and no grant expires), and the next interval tries again.
//!
//! Invariants: every owned partition's tick subject (`<prefix>.<p>.tick`) gets one tick per
//! interval from its owner alone (processors sharing the partitions each tick their own, under
//! their leases: one tick publisher per partition at a time), all with the same `ts`, each with a `Nats-Msg-Id` unique to (partition, ts), so a retried tick is
//! stored once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;

use crate::time::Instant;
use crate::wire::subject::{subject, SubjectKind};

/// The payload of a tick at `at`.
pub fn tick_payload(at: Instant) -> String {
    format!(
        r#"{{"type":"tick","id":"tick-{}","ts":"{at}"}}"#,
        at.millis()
    )
}

pub fn wall_clock() -> Instant {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Instant(millis)
}

/// Publishes ticks into `partitions` (the ones this process owns) every `interval` until `stop`
/// changes, while `may_publish` holds. Reports each interval's outcome to `on_interval`: `Ok`
/// when every partition's tick was stored, the error otherwise.
pub async fn run(
    context: jetstream::Context,
    input_prefix: String,
    partitions: Vec<u32>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    on_interval: impl Fn(Result<(), String>) + Send,
    may_publish: impl Fn() -> bool + Send,
) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = Instant(i64::MIN);
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        // A processor that may have lost its lease publishes nothing (its successor ticks).
        if !may_publish() {
            continue;
        }
        let at = wall_clock().max(last);
        last = at;
        let payload = bytes::Bytes::from(tick_payload(at));
        let mut acks = Vec::with_capacity(partitions.len());
        let mut failure = None;
        for &partition in &partitions {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("tick-{}-{partition}", at.millis()));
            let tick_subject = subject(&input_prefix, partition, SubjectKind::Tick);
            match context.send_publish(tick_subject.clone(), publish).await {
                Ok(ack) => acks.push((tick_subject, ack)),
                Err(error) => {
                    tracing::warn!(%error, "publishing a tick failed; the next interval retries");
                    failure = Some(format!("publishing a tick to {tick_subject}: {error}"));
                    break;
                }
            }
        }
        for (tick_subject, ack) in acks {
            if let Err(error) = ack.await {
                tracing::warn!(%error, "a tick was not acknowledged; the next interval retries");
                failure.get_or_insert(format!("a tick on {tick_subject} was not stored: {error}"));
            }
        }
        on_interval(match failure {
            None => Ok(()),
            Some(error) => Err(error),
        });
    }
}
