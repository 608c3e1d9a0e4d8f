//! A fake processor for the tests: the wire contract built from the engine.

use std::sync::Arc;

use async_nats::jetstream;
use creditflow::engine::{Engine, Envelope};
use creditflow::time::Instant;
use futures::StreamExt;
use loadgen::nats::{INPUT_PREFIX, INPUT_STREAM, OUTPUT_PREFIX, OUTPUT_STREAM};
use loadgen::verify::partition_of_subject;

pub const CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/catalog.toml");
pub const PARTITIONS: u32 = 4;

pub fn catalog() -> Arc<creditflow::catalog::Catalog> {
    Arc::new(creditflow::catalog::load::from_path(CATALOG.as_ref()).unwrap())
}

/// Reads the input stream from the start, replays each message through the engine and
/// publishes its outputs to `creditflow.out.<p>.<type>` with `Nats-Msg-Id` = the output id.
pub async fn fake_processor(url: String) {
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    let consumer = loadgen::nats::reader(&js, INPUT_STREAM, 1).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut engine = Engine::new(catalog(), PARTITIONS);
    let mut outputs = Vec::new();
    while let Some(Ok(message)) = messages.next().await {
        let info = message.info().unwrap();
        let envelope = Envelope {
            payload: &message.payload,
            seq: info.stream_sequence,
            subject: message.subject.as_str(),
            received: Some(Instant(loadgen::nats::received_ms(&info))),
        };
        outputs.clear();
        engine.apply(&envelope, &mut outputs);
        let p = partition_of_subject(message.subject.as_str(), INPUT_PREFIX).unwrap();
        let mut acks = Vec::new();
        for output in &outputs {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, output.id.as_str());
            let subject = format!("{OUTPUT_PREFIX}.{p}.{}", output.body.type_name());
            acks.push(
                js.publish_with_headers(subject, headers, output.to_json().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// Creates the processor's two streams, as the processor would, before a fake one reads them.
pub async fn create_processor_streams(js: &jetstream::Context) {
    for (name, subjects) in [
        (INPUT_STREAM, "creditflow.in.*.*"),
        (OUTPUT_STREAM, "creditflow.out.>"),
    ] {
        loadgen::nats::ensure_stream(
            js,
            name,
            subjects,
            true,
            std::time::Duration::from_secs(120),
        )
        .await
        .unwrap();
    }
}
