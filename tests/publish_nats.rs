//! The output publisher against a real `nats-server -js`: an output is acked with the sequence
//! the stream stored it at, a repeated id with the first one's sequence (stored once), and a
//! publish nobody stores and one whose reply never comes each fail with the reason, without
//! waiting longer than the timeout. (An output the stream refuses, its fence: `cluster_nats`.)

use std::time::Duration;

use async_nats::jetstream;
use creditflow::pipeline::emit::Publisher;
use creditflow::pipeline::publish::JetStreamPublisher;
use creditflow::pipeline::Outbound;
use futures::StreamExt;

fn output(subject: &str, id: &str, partition: u32) -> Outbound {
    Outbound {
        partition,
        seq: 1,
        subject: subject.into(),
        id: id.into(),
        payload: bytes::Bytes::from(format!("{{\"id\":\"{id}\"}}")),
    }
}

/// Publishes `output` and waits for its ack.
async fn stored(
    publisher: &JetStreamPublisher,
    output: Outbound,
) -> Result<u64, creditflow::pipeline::emit::PublishFailure> {
    publisher.publish(&output).await.expect("sent").await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn output_stream(client: &async_nats::Client) -> jetstream::stream::Stream {
    jetstream::new(client.clone())
        .create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create the stream")
}

#[test]
fn acks_give_the_stored_sequence_and_a_repeated_id_is_stored_once() {
    let server = creditflow::testkit::NatsServer::start();
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let mut stream = output_stream(&client).await;
        let publisher = JetStreamPublisher::new(client.clone(), Duration::from_secs(5), None)
            .await
            .expect("publisher");
        // Many in flight before the first is awaited, as the emitter's window has them.
        let mut tickets = Vec::new();
        for n in 0..500u32 {
            let sent = publisher
                .publish(&output(
                    &format!("out.{}.line", n % 4),
                    &format!("id-{n}"),
                    0,
                ))
                .await
                .expect("sent");
            tickets.push(sent);
        }
        for (n, ticket) in tickets.into_iter().enumerate() {
            assert_eq!(ticket.await.expect("acked"), n as u64 + 1);
        }
        // The same id again: the stream's duplicate window drops it and the ack names the
        // first copy's sequence.
        let again = stored(&publisher, output("out.0.line", "id-7", 0))
            .await
            .expect("acked");
        assert_eq!(again, 8);
        assert_eq!(stream.info().await.expect("info").state.messages, 500);
        let stored = stream.get_raw_message(8).await.expect("message 8");
        assert_eq!(&stored.payload[..], br#"{"id":"id-7"}"#);
    });
}

#[test]
fn no_stream_and_no_reply_each_fail_with_the_reason_and_a_late_reply_is_ignored() {
    let server = creditflow::testkit::NatsServer::start();
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        output_stream(&client).await;
        let timeout = Duration::from_millis(400);
        let publisher = JetStreamPublisher::new(client.clone(), timeout, None)
            .await
            .expect("publisher");

        // No stream stores the subject and nothing listens: the server says no responders.
        let failure = stored(&publisher, output("nowhere.0.line", "a", 0))
            .await
            .expect_err("nobody stores it");
        assert!(failure.0.contains("no responders"), "{failure}");

        // A plain subscriber that never answers: the ack times out.
        let mut silent = client.subscribe("silent.>").await.expect("subscribe");
        client.flush().await.expect("flush");
        let started = std::time::Instant::now();
        let failure = stored(&publisher, output("silent.0.line", "b", 0))
            .await
            .expect_err("no reply");
        assert!(failure.0.contains("no ack within"), "{failure}");
        assert!(started.elapsed() < timeout * 10, "{:?}", started.elapsed());
        let unanswered = silent
            .next()
            .await
            .expect("the publish reached the subscriber");

        // A reply that comes after its ticket gave up is ignored: the next publish is acked
        // with its own sequence, not the late reply's.
        client
            .publish(
                unanswered.reply.expect("a reply subject"),
                r#"{"stream":"OUT","seq":99}"#.into(),
            )
            .await
            .expect("late reply");
        client.flush().await.expect("flush");
        let sequence = stored(&publisher, output("out.0.line", "c", 0))
            .await
            .expect("acked");
        assert_eq!(sequence, 1);
    });
}
