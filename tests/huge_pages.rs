//! `engine.huge_pages`: the running processor opts out of transparent huge pages by default
//! (the kernel reports `THP_enabled: 0` for it) and keeps them when the key is true.

mod common;

use std::time::Duration;

use common::{terminate, wait_until, KillOnDrop, Setup};
use creditflow::testkit::NatsServer;

/// The kernel's view of the process: `THP_enabled` in /proc/<pid>/status (Linux 5.0 and
/// later).
fn thp_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

#[test]
fn the_processor_opts_out_of_huge_pages_unless_configured() {
    if thp_enabled(std::process::id()).is_none() {
        eprintln!("skipped: this kernel does not report THP_enabled");
        return;
    }
    let server = NatsServer::start();
    for (extra, expected) in [("", false), ("[engine]\nhuge_pages = true\n", true)] {
        let setup = Setup::new(&server.url(), 2, 1, extra);
        let mut processor = KillOnDrop(setup.start(&[]));
        wait_until("the processor recovered", Duration::from_secs(60), || {
            setup.log().contains("recovered")
        });
        assert_eq!(
            thp_enabled(processor.id()),
            Some(expected),
            "huge_pages config {extra:?}"
        );
        assert!(terminate(&mut processor).success(), "{}", setup.log());
    }
}
