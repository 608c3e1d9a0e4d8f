//! Coordinated omission: a system that stalls for one second must show up in the tail as the
//! thousand probes that queued behind the stall, not as one slow sample.

use loadgen::measure::{Latency, ProbeBook};
use loadgen::schedule::{Pacer, RateShape};

const MS: u64 = 1_000_000;

/// Probes every 1 ms for 10 s; the system answers 1 ms after a probe is sent, except that
/// between 5 s and 6 s it is stalled: the sender (blocked on it) sends nothing, then sends
/// every overdue probe at 6 s.
fn simulate() -> (ProbeBook, Latency) {
    let mut pacer = Pacer::new(RateShape::Constant { rate: 1000.0 });
    let mut book = ProbeBook::new(MS);
    let mut naive = Latency::new();
    let mut now = 0;
    let mut n = 0;
    while now < 10_000 * MS {
        if (5_000 * MS..6_000 * MS).contains(&now) {
            now = 6_000 * MS; // the stall: the sender's clock jumps
        }
        while let Some(scheduled) = pacer.take_due(now) {
            assert_eq!(
                scheduled,
                n * MS,
                "the pacer keeps each probe's scheduled time"
            );
            book.sent(n);
            let answered = now + MS;
            book.answered(n, answered);
            naive.record_scheduled(now, answered); // from the actual send: what CO hides
            n += 1;
        }
        now = pacer.upcoming();
    }
    book.close(now);
    (book, naive)
}

#[test]
fn a_one_second_stall_reaches_the_p99_when_measured_from_the_schedule() {
    let (book, naive) = simulate();
    assert_eq!(book.sent_count(), 10_000);
    assert_eq!(book.unanswered, 0);
    let corrected = book.latency.percentiles();
    // 1000 of 10000 probes waited 1 ms .. 1 s: the top 1% waited at least ~900 ms.
    assert!(
        corrected.p99_ms > 890.0 && corrected.p99_ms < 910.0,
        "{corrected:?}"
    );
    assert!(corrected.p999_ms > 985.0, "{corrected:?}");
    assert!(corrected.p50_ms < 1.1, "{corrected:?}");
    // Measured from the actual send, the stall is invisible.
    let hidden = naive.percentiles();
    assert!(hidden.p99_ms < 1.1 && hidden.max_ms < 1.1, "{hidden:?}");
}

#[test]
fn record_correct_backfills_a_closed_loop_stall() {
    // A closed-loop client meant to send every 1 ms sees 9000 answers of 1 ms and one of 1 s.
    let mut plain = Latency::new();
    let mut corrected = Latency::new();
    for _ in 0..9_000 {
        plain.record_scheduled(0, MS);
        corrected.record_closed_loop(MS, MS);
    }
    plain.record_scheduled(0, 1_000 * MS);
    corrected.record_closed_loop(1_000 * MS, MS);
    assert!(plain.quantile_ms(0.99) < 1.1);
    // The 999 requests the stall kept from being sent are back-filled (999 ms .. 1 ms).
    assert_eq!(corrected.count(), 9_000 + 1_000);
    assert!(
        corrected.quantile_ms(0.99) > 890.0,
        "{}",
        corrected.quantile_ms(0.99)
    );
}

#[test]
fn a_lost_probe_counts_against_the_tail() {
    let mut book = ProbeBook::new(MS);
    for n in 0..100 {
        book.sent(n);
        if n != 42 {
            book.answered(n, n * MS + MS);
        }
    }
    assert_eq!(book.lag(200 * MS), 158 * MS);
    book.close(200 * MS);
    assert_eq!(book.unanswered, 1);
    assert!(book.latency.max_ms() >= 158.0);
}
