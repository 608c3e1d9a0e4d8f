//! Least privilege, shipped and tested: a real `nats-server` runs the shipped
//! `config/nats-server.conf` (users processor, producer, operator, reader), the real processor
//! runs as `processor`, and each other user tries what it should and should not be able to
//! do. A producer's grant is refused by the server on a cmd subject and dead-lettered on a
//! usage subject; a reader can query but not command; an operator can command. The processor
//! takes its lease (`[lease]`) with exactly the bucket permissions listed; a producer cannot
//! write it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PASSWORDS: [(&str, &str); 4] = [
    ("CREDITFLOW_PROCESSOR_PASSWORD", "processor-secret"),
    ("CREDITFLOW_PRODUCER_PASSWORD", "producer-secret"),
    ("CREDITFLOW_OPERATOR_PASSWORD", "operator-secret"),
    ("CREDITFLOW_READER_PASSWORD", "reader-secret"),
];

async fn connect_as(url: &str, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .user_and_password(user.into(), format!("{user}-secret"))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting as {user}: {e}"))
}

/// The CLI as `user`: (exit success, stdout, stderr).
fn cli(url: &str, user: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_creditflow"))
        .args(args)
        .args([
            "--user",
            user,
            "--password",
            &format!("{user}-secret"),
            "--timeout",
            "3s",
        ])
        .env("NATS_URL", url)
        .output()
        .expect("creditflow");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_user_can_do_what_it_needs_and_nothing_more() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nats-server.conf");
    let server = creditflow::testkit::NatsServer::start_with_config(&config, &PASSWORDS);
    let url = server.url();
    let partitions = 2;
    let setup = Setup::new(
        &url,
        partitions,
        1,
        "[nats]\nuser = \"processor\"\npassword = \"processor-secret\"\n",
    );
    let mut processor = KillOnDrop(setup.start(&[]));
    let runtime = runtime();

    // The operator (through the service) grants; waits until the processor is up.
    wait_until(
        "the service, as the operator",
        Duration::from_secs(60),
        || {
            let (ok, _, _) = cli(&url, "operator", &["grant", "sec_1", "10", "--id", "g-op"]);
            ok
        },
    );
    let (ok, out, err) = cli(&url, "operator", &["balance", "sec_1", "--json"]);
    assert!(ok, "{err}\n{}", setup.log());
    let balance: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(balance["balances"][0]["balance"], "10");

    // The reader queries, but cannot command.
    let (ok, _, err) = cli(&url, "reader", &["balance", "sec_1"]);
    assert!(ok, "the reader's balance: {err}");
    let (ok, _, err) = cli(&url, "reader", &["authorize", "sec_1", "api_call", "1"]);
    assert!(ok, "the reader's authorize: {err}");
    let (ok, _, err) = cli(
        &url,
        "reader",
        &["grant", "sec_1", "1000", "--id", "g-reader"],
    );
    assert!(!ok, "the reader granted credits");
    assert!(err.contains("permission denied"), "{err}");

    let partition = creditflow::engine::partition_of("sec_1", partitions);
    let (seq_after, dead_letter) = runtime.block_on(async {
        let producer = connect_as(&url, "producer").await;
        let js = async_nats::jetstream::new(producer.clone());
        // Usage on its own subject: stored.
        let usage = json!({"id":"u1","account":"sec_1","meter":"api_call","quantity":"2",
                           "ts": creditflow::pipeline::ticks::wall_clock().to_string()});
        js.publish(
            format!("creditflow.in.{partition}.usage"),
            usage.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .expect("the producer's usage is stored");
        // A grant on a cmd subject: the server refuses the publish (no ack ever comes).
        let grant = json!({"type":"grant","id":"g-prod","account":"sec_1","amount":"1000000",
                           "ts": creditflow::pipeline::ticks::wall_clock().to_string()});
        let refused = tokio::time::timeout(Duration::from_secs(3), async {
            js.publish(
                format!("creditflow.in.{partition}.cmd"),
                grant.to_string().into(),
            )
            .await?
            .await
            .map(|_| ())
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .await;
        assert!(
            !matches!(refused, Ok(Ok(()))),
            "the producer stored a command"
        );
        // Nor can it ask the service, or manage the streams.
        let asked = producer
            .request(
                "creditflow.svc.command.grant",
                json!({"account":"sec_1","id":"g-prod2","amount":"5"})
                    .to_string()
                    .into(),
            )
            .await;
        assert!(asked.is_err(), "the producer reached the service");
        let purge = tokio::time::timeout(
            Duration::from_secs(3),
            producer.request("$JS.API.STREAM.PURGE.CREDITFLOW_IN", "".into()),
        )
        .await;
        assert!(
            !matches!(purge, Ok(Ok(_))),
            "the producer reached the JetStream API"
        );
        // Nor take the processor's lease (only the processor may write it).
        let stolen = tokio::time::timeout(Duration::from_secs(3), async {
            js.publish("$KV.creditflow_leases.CREDITFLOW_IN", "{}".into())
                .await?
                .await
                .map(|_| ())
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .await;
        assert!(
            !matches!(stolen, Ok(Ok(()))),
            "the producer wrote the lease"
        );
        // A grant on a usage subject: stored (the producer may publish there) and dead-lettered.
        let ack = js
            .publish(
                format!("creditflow.in.{partition}.usage"),
                grant.to_string().into(),
            )
            .await
            .unwrap()
            .await
            .expect("stored on the usage subject");
        (ack.sequence, ack.sequence)
    });

    // The grant on the usage subject is a dead letter, and the balance has only the usage.
    let (ok, out, err) = cli(
        &url,
        "reader",
        &[
            "balance",
            "sec_1",
            "--json",
            "--min-seq",
            &seq_after.to_string(),
        ],
    );
    assert!(ok, "{err}");
    let balance: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(balance["balances"][0]["balance"], "9.997");
    assert_eq!(balance["grants"].as_array().unwrap().len(), 1);
    let mut dead = None;
    wait_until("the dead letter", Duration::from_secs(30), || {
        let outputs = runtime.block_on(outputs_as(&url, "processor"));
        dead = outputs
            .iter()
            .find(|(id, _)| *id == format!("dead:{dead_letter}"))
            .map(|(_, payload)| serde_json::from_str::<Value>(payload).unwrap());
        dead.is_some()
    });
    let dead = dead.expect("the grant on the usage subject is dead-lettered");
    assert_eq!(dead["reason"], "not_allowed_on_subject");
    assert_eq!(dead["subject"], format!("creditflow.in.{partition}.usage"));

    let status = terminate(&mut processor);
    assert!(status.success(), "exit {status}; log:\n{}", setup.log());
    // A restart recovers with the same permissions (the history check reads the stream, the
    // output scan consumes the output stream).
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_until("the restarted service", Duration::from_secs(60), || {
        cli(&url, "reader", &["balance", "sec_1"]).0
    });
    let status = terminate(&mut processor);
    assert!(status.success(), "exit {status}; log:\n{}", setup.log());
    assert!(setup.log().contains("recovered"), "{}", setup.log());
    // The processor itself was never refused anything.
    let log = setup.log();
    assert!(
        !log.to_lowercase().contains("permission"),
        "the processor hit a permission it lacks:\n{log}"
    );
}

/// Every output, read with `user`'s credentials.
async fn outputs_as(url: &str, user: &str) -> Vec<(String, String)> {
    use futures::StreamExt;
    let client = connect_as(url, user).await;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream("CREDITFLOW_OUT")
        .await
        .expect("output stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut all = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("read outputs")
    {
        let message = message.expect("message");
        let seq = message.info().expect("info").stream_sequence;
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        all.push((id, String::from_utf8_lossy(&message.payload).into_owned()));
        if seq >= last {
            break;
        }
    }
    all
}

/// The shipped server config without the lines containing `drop` (each must match some).
fn shipped_config_without(drop: &[&str]) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nats-server.conf"),
    )
    .unwrap();
    for part in drop {
        assert!(shipped.contains(part), "the shipped config has no {part}");
    }
    shipped
        .lines()
        .filter(|l| !drop.iter().any(|part| l.contains(part)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A server running the shipped config without the lines containing `drop`.
fn server_without(dir: &Path, drop: &[&str]) -> creditflow::testkit::NatsServer {
    let config = dir.join("nats-server.conf");
    std::fs::write(&config, shipped_config_without(drop)).unwrap();
    creditflow::testkit::NatsServer::start_with_config(&config, &PASSWORDS)
}

/// Waits for the processor to exit by itself; its status.
fn exited(processor: &mut KillOnDrop, setup: &Setup) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = processor.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{}", setup.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

const AS_PROCESSOR: &str =
    "[nats]\nuser = \"processor\"\npassword = \"processor-secret\"\nrequest_timeout = \"1s\"\n";

/// A missing permission is named, not mistaken for lost history: without
/// `$JS.API.STREAM.MSG.GET.CREDITFLOW_IN` a restart cannot check the stream's history, and
/// refuses saying which permission it lacks (it said the history was deleted or purged,
/// which invites `--rebuild`); the server's refusals are logged as such.
#[test]
fn a_missing_permission_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_without(dir.path(), &["MSG.GET.CREDITFLOW_IN"]);
    let url = server.url();
    let setup = Setup::new(&url, 2, 1, AS_PROCESSOR);
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_until("the service", Duration::from_secs(60), || {
        cli(&url, "operator", &["grant", "perm_1", "10", "--id", "g1"]).0
    });
    let status = terminate(&mut processor);
    assert!(status.success(), "{}", setup.log());
    let mut processor = KillOnDrop(setup.start(&[]));
    assert!(!exited(&mut processor, &setup).success());
    let log = setup.log();
    assert!(
        log.contains("$JS.API.STREAM.MSG.GET.CREDITFLOW_IN"),
        "the refusal does not name the permission:\n{log}"
    );
    assert!(
        log.contains("the NATS server refused: Permissions Violation"),
        "{log}"
    );
    assert!(!log.contains("no longer holds the history"), "{log}");
    assert!(log.contains("the NATS server refused a request"), "{log}");
}

/// Without pull permission on the output stream, a start that must scan it for outputs already
/// published stops naming `$JS.API.CONSUMER.MSG.NEXT.CREDITFLOW_OUT` (it waited, not ready).
#[test]
fn a_missing_pull_permission_on_the_output_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_without(dir.path(), &[]);
    let url = server.url();
    let setup = Setup::new(&url, 2, 1, AS_PROCESSOR);
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_until("the service", Duration::from_secs(60), || {
        cli(&url, "operator", &["grant", "perm_2", "10", "--id", "g2"]).0
    });
    // The reply comes once the grant is applied; its outputs reach the stream a moment later,
    // and only an output stream with messages is scanned (CI once killed before they did).
    let runtime = runtime();
    wait_until("the grant's outputs", Duration::from_secs(60), || {
        runtime.block_on(async {
            let js = async_nats::jetstream::new(connect_as(&url, "processor").await);
            let mut stream = js
                .get_stream("CREDITFLOW_OUT")
                .await
                .expect("output stream");
            stream.info().await.expect("info").state.messages > 0
        })
    });
    // Killed, so its snapshots are behind the outputs and the next start scans them.
    processor.kill().unwrap();
    processor.wait().unwrap();
    let config = server.config_path().unwrap().to_path_buf();
    let text = std::fs::read_to_string(&config).unwrap();
    let without: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("CONSUMER.MSG.NEXT.CREDITFLOW_OUT"))
        .collect();
    assert!(without.len() < text.lines().count());
    std::fs::write(&config, without.join("\n")).unwrap();
    server.restart();
    let mut processor = KillOnDrop(setup.start(&[]));
    assert!(!exited(&mut processor, &setup).success());
    let log = setup.log();
    assert!(
        log.contains("scanning the output stream CREDITFLOW_OUT")
            && log.contains("$JS.API.CONSUMER.MSG.NEXT.CREDITFLOW_OUT"),
        "the refusal does not name the permission:\n{log}"
    );
    assert_eq!(
        log.matches("the NATS server refused:").count(),
        0,
        "said once:\n{log}"
    );
}

/// Without publish permission on the tick subjects, the processor is not ready and `/readyz`
/// names the subject it may not publish to (ticks failed forever while it said ready).
#[test]
fn ticks_refused_make_the_processor_not_ready_naming_the_subject() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_without(dir.path(), &["\"creditflow.in.*.tick\""]);
    let url = server.url();
    let setup = Setup::with_metrics(
        &url,
        2,
        1,
        &format!("{AS_PROCESSOR}[engine]\ntick_interval = \"200ms\"\n"),
        true,
    );
    let _processor = KillOnDrop(setup.start(&[]));
    let mut last = None;
    wait_until(
        "not ready, naming the tick subject",
        Duration::from_secs(60),
        || {
            last = setup.metrics_port().and_then(readyz);
            last.as_ref().is_some_and(|(status, body)| {
                *status == 503
                    && body.contains("ticks failed")
                    && body.contains("Permissions Violation for Publish to \"creditflow.in.")
            })
        },
    );
    let (_, body) = last.unwrap();
    assert!(body.contains(".tick"), "{body}");
}

/// A wrong password is said to be one, not "request error: timed out".
#[test]
fn a_wrong_password_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_without(dir.path(), &[]);
    let url = server.url();
    let setup = Setup::new(
        &url,
        2,
        1,
        "[nats]\nuser = \"processor\"\npassword = \"not-the-password\"\nrequest_timeout = \"1s\"\n",
    );
    let mut processor = KillOnDrop(setup.start(&[]));
    assert!(!exited(&mut processor, &setup).success());
    let log = setup.log();
    assert!(
        log.contains("refused this client's credentials") && log.contains("user and password"),
        "{log}"
    );
    assert!(
        !log.contains("not-the-password"),
        "the password is not printed:\n{log}"
    );
}

/// Without `$JS.API.INFO` (an older copy of the shipped config) the processor still runs: the
/// server's JetStream API level is taken from its version, and the refusal is logged.
#[test]
fn without_the_api_info_permission_the_level_comes_from_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_without(dir.path(), &["\"$JS.API.INFO\""]);
    let url = server.url();
    let setup = Setup::new(&url, 2, 1, AS_PROCESSOR);
    let _processor = KillOnDrop(setup.start(&[]));
    wait_until("the service", Duration::from_secs(60), || {
        cli(
            &url,
            "operator",
            &["grant", "perm_info", "10", "--id", "g1"],
        )
        .0
    });
    let log = setup.log();
    let checked = log
        .lines()
        .find(|line| line.contains("NATS server checked"))
        .unwrap_or_else(|| panic!("no check logged:\n{log}"));
    assert!(checked.contains("version"), "{checked}");
    assert!(
        checked.contains("level_from=\"version\"") || checked.contains("level_from=version"),
        "{checked}"
    );
    assert!(
        log.contains("$JS.API.INFO"),
        "the refusal is logged:\n{log}"
    );
}

/// With the shipped config, the processor mirrors its snapshots to the bucket the config
/// names (`creditflow_snapshots`) and a restart with its directory gone starts from them: the
/// listed permissions are enough, and no mirror fails.
#[test]
fn the_processor_may_mirror_snapshots_to_the_shipped_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_without(dir.path(), &[]);
    let url = server.url();
    let setup = Setup::new(
        &url,
        2,
        1,
        &format!("{AS_PROCESSOR}[snapshot]\nobject_store = \"creditflow_snapshots\"\n"),
    );
    let mut processor = KillOnDrop(setup.start(&[]));
    wait_until("the service", Duration::from_secs(60), || {
        cli(&url, "operator", &["grant", "mirror_1", "10", "--id", "g1"]).0
    });
    let status = terminate(&mut processor);
    assert!(status.success(), "{}", setup.log());
    std::fs::remove_dir_all(setup.snapshots()).unwrap();
    let _processor = KillOnDrop(setup.start(&[]));
    wait_until(
        "the balance after the restart",
        Duration::from_secs(60),
        || {
            let (ok, out, _) = cli(&url, "reader", &["balance", "mirror_1", "--json"]);
            ok && out.contains("\"balance\":\"10\"")
        },
    );
    let log = setup.log();
    assert!(
        log.contains("snapshots fetched from the object store"),
        "{log}"
    );
    assert!(!log.contains("mirroring the snapshots failed"), "{log}");
    assert!(!log.contains("Permissions Violation"), "{log}");
}
