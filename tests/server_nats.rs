//! The processor checks the nats-server it connects to (src/pipeline/server.rs), against the
//! real server binary the tests use: `scripts/test` runs these against Debian's 2.9.10 and
//! again against a current release (`NATS_SERVER`, installed by `scripts/nats-server-current`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use creditflow::pipeline::server::Version;
use creditflow::testkit::{free_port, nats_server_binary, NatsServer};

/// The version the binary prints (`nats-server: v2.12.8`).
fn binary_version() -> Version {
    let output = Command::new(nats_server_binary())
        .arg("--version")
        .output()
        .expect("nats-server --version");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let version = text.rsplit(' ').next().unwrap_or_default();
    Version::parse(version).unwrap_or_else(|| panic!("a version in {text:?}"))
}

/// The API level the server itself reports (`$JS.API.INFO`), asked independently of the
/// processor; 0 when it reports none (before 2.11).
fn reported_level(url: &str) -> u64 {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let reply = client
            .request("$JS.API.INFO", "".into())
            .await
            .expect("$JS.API.INFO");
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
        info["api"]["level"].as_u64().unwrap_or(0)
    })
}

/// The processor's `creditflow_nats_server_info` series names the server's version and its
/// JetStream API level: the server's own answer when it gives one, else the lowest level of
/// its version; and that lowest level is never more than what the real server reports.
#[test]
fn the_processor_reports_the_servers_version_and_api_level() {
    let server = NatsServer::start();
    let version = binary_version();
    let level = reported_level(&server.url());
    assert!(
        u64::from(version.api_level_at_least()) <= level,
        "{version} reports level {level}, below the table's {}",
        version.api_level_at_least()
    );
    let setup = Setup::with_metrics(&server.url(), 2, 1, "", true);
    let _processor = KillOnDrop(setup.start(&[]));
    let text = metrics_once(&setup, "creditflow_nats_server_info{");
    let from = if level > 0 { "server" } else { "version" };
    let expected = format!(
        "creditflow_nats_server_info{{version=\"{version}\",api_level=\"{level}\",level_from=\"{from}\"}} 1"
    );
    assert!(text.contains(&expected), "{expected} in\n{text}");
    assert!(
        setup.log().contains("NATS server checked"),
        "{}",
        setup.log()
    );
}

/// A server without JetStream is refused at start, saying so, before any stream is touched.
#[test]
fn a_server_without_jetstream_is_refused_saying_so() {
    let port = free_port();
    let mut server = KillOnDrop(
        Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    let url = format!("nats://127.0.0.1:{port}");
    wait_until("the server", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let setup = Setup::new(&url, 2, 1, "");
    let mut processor = KillOnDrop(setup.start(&[]));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = processor.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{}", setup.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = setup.log();
    assert!(
        log.contains("has JetStream disabled") && log.contains("-js"),
        "{log}"
    );
    let _ = server.kill();
}
