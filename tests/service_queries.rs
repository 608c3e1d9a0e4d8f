//! The engine's read-only questions (src/engine/query.rs) against the apply path itself: at
//! random points of random sample logs, `authorize` a random usage event, then apply exactly
//! that event and check that the answer was right: allowed exactly when it is charged (not
//! rejected, not dead-lettered), the same credits, the same grants drawn, the same overage;
//! refused with the rejection's reason; a dead letter's reason when it is one. The largest
//! quantity it names is allowed and one unit more is not. Asking changes nothing.

use std::sync::Arc;

use creditflow::catalog::Catalog;
use creditflow::decimal::{Fixed, Quantity};
use creditflow::engine::{partition_of, Engine, Envelope};
use creditflow::sample::Rng;
use creditflow::time::Instant;
use creditflow::wire::input::{decode, Message};
use creditflow::wire::output::Body;

fn catalog() -> Arc<Catalog> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml");
    Arc::new(creditflow::catalog::load::from_path(&path).expect("catalog"))
}

const PARTITIONS: u32 = 4;
const METERS: &[&str] = &[
    "api_call",
    "llm_token",
    "gpu_second",
    "storage_gb_hour",
    "export",
];
const DIMS: &[&str] = &[
    "",
    r#","dims":{"model":"large"}"#,
    r#","dims":{"model":"small","region":"eu"}"#,
];

fn usage_line(
    id: &str,
    account: &str,
    meter: &str,
    quantity: &str,
    ts: Instant,
    dims: &str,
) -> String {
    format!(
        r#"{{"id":"{id}","account":"{account}","meter":"{meter}","quantity":"{quantity}","ts":"{ts}"{dims}}}"#
    )
}

/// What applying one usage event did: Ok(charged?) with its credits, draws and overage, or the
/// dead letter's reason.
#[derive(Debug, PartialEq)]
enum Applied {
    Charged {
        credits: String,
        draws: Vec<(String, String)>,
        overage: String,
    },
    Rejected(String),
    Dead(String),
}

fn apply(engine: &mut Engine, seq: u64, line: &str, account: &str) -> Applied {
    engine.set_explain(Some(account));
    let mut out = Vec::new();
    engine.apply(
        &Envelope {
            payload: line.as_bytes(),
            seq,
            subject: "creditflow.in",
            received: None,
        },
        &mut out,
    );
    let explanations = engine.take_explanations();
    engine.set_explain(None);
    for output in &out {
        match &output.body {
            Body::DeadLetter { reason, .. } => return Applied::Dead(reason.to_string()),
            Body::UsageRejected { reason, .. } => return Applied::Rejected(reason.to_string()),
            _ => {}
        }
    }
    let explanation = explanations.last().expect("an applied event is explained");
    let priced = explanation.priced.expect("a usage is priced");
    Applied::Charged {
        credits: priced.cost.to_string(),
        draws: explanation
            .draws
            .iter()
            .map(|(g, c)| (g.clone(), c.to_string()))
            .collect(),
        overage: explanation.overage.to_string(),
    }
}

/// The engine's answer in the same form.
fn authorized(engine: &Engine, catalog: &Catalog, line: &str, at: Instant) -> Applied {
    let Ok(Message::Usage(usage)) = decode(line.as_bytes(), catalog) else {
        return Applied::Dead("decode".into());
    };
    let partition = &engine.partitions()[partition_of(&usage.account, PARTITIONS) as usize];
    match partition.authorize(catalog, &usage, at) {
        Err(dead) => Applied::Dead(dead.reason.name().to_string()),
        Ok(answer) if answer.allowed => Applied::Charged {
            credits: answer.priced.cost.to_string(),
            draws: answer
                .draws
                .iter()
                .map(|(g, c)| (g.clone(), c.to_string()))
                .collect(),
            overage: answer.overage.to_string(),
        },
        Ok(answer) => Applied::Rejected(answer.reason.unwrap_or("?").to_string()),
    }
}

#[test]
fn authorize_answers_what_applying_the_event_does() {
    let catalog = catalog();
    let mut checked = [0usize; 3];
    let mut limits_checked = 0;
    for seed in 1..=12u64 {
        let log = creditflow::sample::scenario(seed, 24, 1500);
        let mut engine = Engine::new(catalog.clone(), PARTITIONS);
        let mut rng = Rng::new(seed * 7919);
        let mut seq = 0u64;
        for (index, line) in log.iter().enumerate() {
            seq += 1;
            let mut out = Vec::new();
            engine.apply(
                &Envelope {
                    payload: line.as_bytes(),
                    seq,
                    subject: "creditflow.in",
                    received: None,
                },
                &mut out,
            );
            if index % 17 != 0 {
                continue;
            }
            // A random account (sometimes one never seen), meter, quantity and time.
            let account = if rng.chance(50) {
                format!("new_{seed}_{index}")
            } else {
                format!("acct_{:02}", 1 + rng.below(24))
            };
            let meter = METERS[rng.below(METERS.len() as u64) as usize];
            let quantity = match rng.below(4) {
                0 => format!("{}", rng.below(5)),
                1 => format!("{}", rng.below(5000)),
                2 => format!("{}.{}", rng.below(100), rng.below(1000)),
                _ => format!("{}", rng.below(5_000_000)),
            };
            let dims = DIMS[rng.below(DIMS.len() as u64) as usize];
            let partition = &engine.partitions()[partition_of(&account, PARTITIONS) as usize];
            let now = partition
                .account(&account)
                .map(|a| partition.now_of(a))
                .or(partition.clock())
                .unwrap_or(Instant(1_788_220_800_000));
            let ts = Instant(now.0 + rng.below(3_600_000) as i64 - 1_800_000);
            let id = format!("probe-{seed}-{index}");
            let line = usage_line(&id, &account, meter, &quantity, ts, dims);
            let before = engine.state_view();
            let answer = authorized(&engine, &catalog, &line, ts);
            assert_eq!(engine.state_view(), before, "authorize changed the state");
            if let (Ok(Message::Usage(usage)), Applied::Charged { .. } | Applied::Rejected(_)) =
                (decode(line.as_bytes(), &catalog), &answer)
            {
                // The largest quantity named is allowed, one unit (at its decimals) more is not.
                let p = &engine.partitions()[partition_of(&account, PARTITIONS) as usize];
                let full = p.authorize(&catalog, &usage, ts).unwrap();
                if let Some(max) = full.max_quantity {
                    let decimals = usage.quantity.to_dec().normalized().scale();
                    let unit = 10i128.pow(u32::from(Quantity::SCALE - decimals));
                    for (quantity, allowed) in [(max, true), (Fixed(max.0 + unit), false)] {
                        let mut probe = usage.clone();
                        probe.quantity = quantity;
                        let answer = p.authorize(&catalog, &probe, ts).unwrap();
                        assert_eq!(
                            answer.allowed, allowed,
                            "{quantity} of {meter} for {account} (max {max}): {answer:?}"
                        );
                    }
                    limits_checked += 1;
                }
            }
            seq += 1;
            let applied = apply(&mut engine, seq, &line, &account);
            if answer == Applied::Dead("decode".into()) {
                assert!(matches!(applied, Applied::Dead(_)), "{line}: {applied:?}");
                continue;
            }
            assert_eq!(answer, applied, "seed {seed}, message {index}: {line}");
            checked[match applied {
                Applied::Charged { .. } => 0,
                Applied::Rejected(_) => 1,
                Applied::Dead(_) => 2,
            }] += 1;
        }
    }
    // Every kind of answer came up, many times.
    assert!(checked.iter().all(|&n| n > 20), "{checked:?}");
    assert!(limits_checked > 100, "{limits_checked}");
}

/// The statement lists an account's charges newest first, each with the grants that paid it,
/// exactly as `replay --explain` shows them, up to the journal's capacity; a reversal is marked.
#[test]
fn the_statement_is_what_explain_shows() {
    let catalog = catalog();
    let log = creditflow::sample::scenario(3, 12, 3000);
    let mut engine = Engine::new(catalog.clone(), 2);
    let account = "acct_04";
    engine.set_explain(Some(account));
    let mut partitions = engine.into_partitions();
    for partition in &mut partitions {
        partition.keep_journal(100_000);
    }
    let mut engine = Engine::from_partitions(catalog.clone(), partitions);
    engine.set_explain(Some(account));
    let mut out = Vec::new();
    for (index, line) in log.iter().enumerate() {
        engine.apply(
            &Envelope {
                payload: line.as_bytes(),
                seq: index as u64 + 1,
                subject: "creditflow.in",
                received: None,
            },
            &mut out,
        );
    }
    let expected: Vec<_> = engine
        .take_explanations()
        .into_iter()
        .filter(|e| e.outcome == "charged" || (e.kind == "commit" && !e.draws.is_empty()))
        .rev()
        .collect();
    assert!(expected.len() > 30, "{}", expected.len());
    let partition = &engine.partitions()[partition_of(account, 2) as usize];
    let statement = partition.statement(&catalog, account, 1000).unwrap();
    let charged: Vec<_> = statement.iter().filter(|e| e.kind == "usage").collect();
    let explained: Vec<_> = expected.iter().filter(|e| e.kind == "usage").collect();
    assert_eq!(charged.len(), explained.len());
    for (entry, explanation) in charged.iter().zip(&explained) {
        assert_eq!(entry.seq, explanation.seq);
        assert_eq!(entry.event_id, explanation.id);
        let draws: Vec<(String, String)> = entry
            .draws
            .iter()
            .map(|(g, c, _)| (g.clone(), c.to_string()))
            .collect();
        let want: Vec<(String, String)> = explanation
            .draws
            .iter()
            .map(|(g, c)| (g.clone(), c.to_string()))
            .collect();
        assert_eq!(draws, want, "event {}", entry.event_id);
        assert_eq!(entry.overage, explanation.overage);
    }
    // Newest first, and the limit holds.
    assert!(statement.windows(2).all(|w| w[0].seq > w[1].seq));
    assert_eq!(partition.statement(&catalog, account, 5).unwrap().len(), 5);
    // A reversal is marked on the charge it undid (while the dedupe index remembers it).
    let partition = &engine.partitions()[partition_of(account, 2) as usize];
    let now = partition.now_of(partition.account(account).unwrap());
    let lines = [
        usage_line("late-1", account, "api_call", "1", now, ""),
        usage_line("late-2", account, "api_call", "1", now, ""),
        format!(
            r#"{{"type":"reverse","id":"rev-1","account":"{account}","ts":"{now}","event_id":"late-1"}}"#
        ),
    ];
    for (i, line) in lines.iter().enumerate() {
        engine.apply(
            &Envelope {
                payload: line.as_bytes(),
                seq: log.len() as u64 + 1 + i as u64,
                subject: "creditflow.in",
                received: None,
            },
            &mut out,
        );
    }
    let partition = &engine.partitions()[partition_of(account, 2) as usize];
    let after = partition.statement(&catalog, account, 3).unwrap();
    let marks: Vec<(&str, Option<bool>)> = after
        .iter()
        .map(|e| (e.event_id.as_str(), e.reversed))
        .collect();
    assert_eq!(
        marks[..2],
        [("late-2", Some(false)), ("late-1", Some(true))]
    );
    // Older than the dedupe window but within the reversal window (SEMANTICS §9): still
    // known, and not reversed.
    assert_eq!(marks[2].1, Some(false));
    // Without a journal: empty, not unknown.
    let plain = Engine::new(catalog.clone(), 2);
    assert!(plain.partitions()[0]
        .statement(&catalog, account, 10)
        .is_none());
}
