//! The model test: the engine (`src/engine/`) against the reference model (`tests/model/`) on
//! thousands of generated logs (grants, usage, expiries, period ends, reversals, voids, holds,
//! top-ups, duplicates, dead letters, plan and policy changes, ticks).
//!
//! After **every** message the outputs of both must be equal, as exact JSON text and in order,
//! and both must pass their invariants; the state views (SEMANTICS §16) must be equal at a few
//! random points and at the end. Each case runs on 1 to 4 partitions (nothing may depend on it),
//! and some cases round-trip the engine's partitions through the snapshot codec midway and go
//! on (nothing may change).
//!
//! Some cases publish every message with an account on its partition's subject, as the pipeline
//! does (`creditflow.in.<p>.usage` for usage events and malformed messages, `.cmd` for
//! commands), and one in ten of those on a subject of the wrong kind, which both must
//! dead-letter (`not_allowed_on_subject`, SEMANTICS §2.2); the rest use a plain log's subject.
//!
//! Comparison rules (SEMANTICS §3, §14): a tick's outputs are compared per account (the order
//! of different accounts' outputs within one tick depends on the partitioning and is not part
//! of the contract); a dead letter's `detail` is free text for operators and is not compared.
//!
//! Size: `PROPTEST_CASES` cases (default 2000) of 100 to 220 messages, run as two tests of half
//! the cases each (two threads): about 70 s of CPU in the debug test profile, so 35–60 s on this
//! 2-core machine (the budget is ~90 s).
//!
//! Reproduce: a failure prints the seed, the message index, the payload, both outputs and the
//! account's earlier messages; `MODEL_SEED=<seed> MODEL_LEN=<len> cargo test --test model_test`
//! runs exactly that case, `MODEL_TRACE=<account>` (or `*`) also prints every message of that
//! account with its outputs. proptest records failing cases in
//! `tests/model_test.proptest-regressions` and replays them first.

mod model;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use creditflow::catalog::Catalog;
use creditflow::engine::{Engine, Envelope, Partition};
use creditflow::time::Instant;
use model::gen::{scenario_received, Rng};
use model::{Model, ModelCatalog};
use proptest::prelude::*;
use serde_json::Value;

const SUBJECT: &str = "creditflow.in";
const DEFAULT_CASES: u32 = 2000;
const LEN_MIN: usize = 100;
const LEN_MAX: usize = 220;

/// What a case runs on, derived from its seed alone (so a seed and a length reproduce it).
#[derive(Debug)]
struct Case {
    seed: u64,
    len: usize,
    partitions: u32,
    /// Whether the log carries receive times (JetStream) or not (a plain JSONL file).
    received: bool,
    /// Round-trip the engine through the snapshot codec after this many messages.
    snapshot_after: Option<usize>,
    /// Compare the state views after these many messages (and always at the end).
    views_after: Vec<usize>,
    /// Publish messages with an account on partition subjects (see the module doc), choosing
    /// with this seed.
    subjects: Option<u64>,
}

impl Case {
    fn new(seed: u64, len: usize) -> Case {
        let mut rng = Rng::new(seed ^ 0xA5A5_5A5A_C3C3_3C3C);
        let partitions = 1 + rng.below(4) as u32;
        let received = rng.chance(80);
        let snapshot_after = rng.chance(35).then(|| rng.below(len as u64 + 1) as usize);
        let views_after = (0..3).map(|_| rng.below(len as u64 + 1) as usize).collect();
        let subjects = rng.chance(50).then(|| rng.below(u64::MAX));
        Case {
            seed,
            len,
            partitions,
            received,
            snapshot_after,
            views_after,
            subjects,
        }
    }

    fn reproduce(&self) -> String {
        format!(
            "MODEL_SEED={} MODEL_LEN={} cargo test --test model_test",
            self.seed, self.len
        )
    }
}

/// The model's standard catalog and the engine's catalog loaded from its TOML (built once).
fn catalogs() -> &'static (ModelCatalog, Arc<Catalog>) {
    static CATALOGS: OnceLock<(ModelCatalog, Arc<Catalog>)> = OnceLock::new();
    CATALOGS.get_or_init(|| {
        let model_catalog = ModelCatalog::standard();
        let toml = model_catalog.to_toml();
        let catalog = creditflow::catalog::load::from_str(&toml)
            .unwrap_or_else(|e| panic!("the model catalog does not load: {e:?}\n{toml}"));
        (model_catalog, Arc::new(catalog))
    })
}

/// The outputs of one input in the form they are compared in (see the module doc).
fn comparable(outputs: Vec<String>, is_tick: bool) -> Vec<String> {
    let mut outputs: Vec<String> = outputs
        .into_iter()
        .map(|text| {
            if text.starts_with(r#"{"type":"dead_letter","#) {
                relabel_detail(&text)
            } else {
                text
            }
        })
        .collect();
    if is_tick {
        // Stable: each account's outputs keep their order.
        outputs.sort_by(|a, b| account_of(a).cmp(account_of(b)));
    }
    outputs
}

/// The `account` of an output's text (fields start `type`, `id`, `account`, §14); "" if null.
fn account_of(output: &str) -> &str {
    let Some(start) = output.find(r#","account":""#) else {
        return "";
    };
    let rest = &output[start + r#","account":""#.len()..];
    // Account ids are `[A-Za-z0-9_-]`: no escapes.
    &rest[..rest.find('"').unwrap_or(rest.len())]
}

/// A dead letter's text with its `detail` value replaced by `"…"` (field order untouched).
fn relabel_detail(text: &str) -> String {
    let Some(start) = text.find(",\"detail\":") else {
        return text.to_string();
    };
    let value_start = start + ",\"detail\":".len();
    let rest = &text[value_start..];
    let end = if rest.starts_with("null") {
        4
    } else {
        // A JSON string: find its closing quote, skipping escapes.
        let bytes = rest.as_bytes();
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        i + 1
    };
    format!("{}\"…\"{}", &text[..value_start], &rest[end..])
}

/// The subject a message is published on in a case with partition subjects: its account's
/// partition (a message without a readable account, a tick included, goes on the plain log's
/// subject), the kind its type needs, or one in ten times another kind.
fn subject_for(payload: &[u8], partitions: u32, rng: &mut Rng) -> String {
    use creditflow::wire::subject::{subject, SubjectKind};
    let value: Option<Value> = serde_json::from_slice(payload).ok();
    let field = |name: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let Some(account) = field("account").filter(|a| creditflow::wire::input::account_is_valid(a))
    else {
        return SUBJECT.to_string();
    };
    let right = match field("type").as_deref() {
        None | Some("usage") => SubjectKind::Usage,
        Some("tick") => SubjectKind::Tick,
        Some(_) => SubjectKind::Command,
    };
    let kind = if rng.chance(10) {
        let others: Vec<SubjectKind> = SubjectKind::ALL
            .into_iter()
            .filter(|k| *k != right)
            .collect();
        others[rng.below(others.len() as u64) as usize]
    } else {
        right
    };
    let partition = creditflow::engine::partition_of(&account, partitions);
    subject(SUBJECT, partition, kind)
}

fn is_tick(payload: &[u8]) -> bool {
    // Only ticks the generator wrote matter here (their outputs are regrouped per account): its
    // JSON objects have sorted keys, so `type` comes last. A dead-lettered "tick" has a single
    // output.
    payload.ends_with(br#""type":"tick"}"#)
}

fn show(outputs: &[String]) -> String {
    if outputs.is_empty() {
        return "    (none)".into();
    }
    outputs
        .iter()
        .enumerate()
        .map(|(i, o)| format!("    [{i}] {o}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last messages that concern the failing message's account (its own messages, and ticks
/// or others that produced outputs for it).
fn context(
    history: &[(usize, String, Vec<String>)],
    payload: &str,
    engine_out: &[String],
    model_out: &[String],
) -> String {
    let account = serde_json::from_str::<Value>(payload)
        .ok()
        .and_then(|v| v["account"].as_str().map(str::to_string))
        .or_else(|| {
            engine_out.iter().chain(model_out).find_map(|o| {
                serde_json::from_str::<Value>(o)
                    .ok()
                    .and_then(|v| v["account"].as_str().map(str::to_string))
            })
        });
    let Some(account) = account else {
        return "    (no account)".into();
    };
    let tag = format!("\"account\":\"{account}\"");
    let relevant: Vec<String> = history
        .iter()
        .filter(|(_, p, outs)| p.contains(&tag) || outs.iter().any(|o| o.contains(&tag)))
        .map(|(i, p, outs)| {
            let outs: Vec<String> = outs.iter().filter(|o| o.contains(&tag)).cloned().collect();
            format!(
                "    #{i} {p}\n{}",
                show(&outs).replace("    [", "        [")
            )
        })
        .collect();
    let from = relevant.len().saturating_sub(20);
    relevant[from..].join("\n")
}

fn first_difference(a: &[String], b: &[String]) -> String {
    let n = a.len().max(b.len());
    for i in 0..n {
        if a.get(i) != b.get(i) {
            let (x, y) = (
                a.get(i).map_or("(none)", String::as_str),
                b.get(i).map_or("(none)", String::as_str),
            );
            let at = x.bytes().zip(y.bytes()).take_while(|(p, q)| p == q).count();
            let from = at.saturating_sub(120);
            let around = |t: &str| {
                let start = (from..=at.min(t.len())).find(|&k| t.is_char_boundary(k));
                let end = (at + 160).min(t.len());
                let end = (end..=t.len())
                    .find(|&k| t.is_char_boundary(k))
                    .unwrap_or(t.len());
                start.map_or(String::new(), |s| t[s..end].to_string())
            };
            return format!(
                "  first difference at [{i}], byte {at}:\n    engine: …{}\n    model:  …{}",
                around(x),
                around(y)
            );
        }
    }
    String::new()
}

fn views_differ(case: &Case, at: usize, engine: &Engine, model: &Model) -> Option<String> {
    let e = engine.state_view();
    let m = model.state();
    if e == m {
        return None;
    }
    Some(format!(
        "state views differ after message {at} (seed {}, {} partitions)\n  reproduce: {}\n{}\n  engine:\n{}\n  model:\n{}",
        case.seed,
        case.partitions,
        case.reproduce(),
        first_difference(&e, &m),
        show(&e),
        show(&m)
    ))
}

/// Encodes every partition with the snapshot codec, decodes them and rebuilds the engine.
fn round_trip(engine: Engine) -> Result<Engine, String> {
    let catalog = engine.catalog().clone();
    let mut restored = Vec::new();
    for partition in engine.into_partitions() {
        let bytes = creditflow::codec::encode(&partition)
            .map_err(|e| format!("snapshot encode failed: {e:?}"))?;
        let decoded: Partition = creditflow::codec::decode(&bytes)
            .map_err(|e| format!("snapshot decode failed: {e:?}"))?;
        restored.push(decoded);
    }
    Ok(Engine::from_partitions(catalog, restored))
}

/// Runs one case; `Err` explains the first disagreement.
fn run_case(case: &Case) -> Result<(), String> {
    let (model_catalog, catalog) = catalogs();
    let log = scenario_received(case.seed, case.len, model_catalog);
    let mut engine = Engine::new(catalog.clone(), case.partitions);
    let mut model = Model::new(model_catalog.clone());
    let mut out = Vec::new();
    // (index, payload, outputs) of every message so far: the context printed on a failure.
    let mut history: Vec<(usize, String, Vec<String>)> = Vec::new();
    let mut subject_rng = case.subjects.map(Rng::new);
    for (index, (payload, received)) in log.iter().enumerate() {
        let subject = match &mut subject_rng {
            Some(rng) => subject_for(payload, case.partitions, rng),
            None => SUBJECT.to_string(),
        };
        if case.snapshot_after == Some(index) {
            let before = engine.state_view();
            engine = round_trip(engine)?;
            if engine.state_view() != before {
                return Err(format!(
                    "the snapshot round trip after message {index} changed the state view\n  reproduce: {}",
                    case.reproduce()
                ));
            }
        }
        if case.views_after.contains(&index) {
            if let Some(problem) = views_differ(case, index, &engine, &model) {
                return Err(problem);
            }
        }
        let seq = index as u64 + 1;
        let received = case.received.then_some(*received);
        out.clear();
        let envelope = Envelope {
            payload,
            seq,
            subject: &subject,
            received: received.map(Instant),
        };
        // A panic (the engine's debug invariant checks included) is reported with its context.
        let applied = catch_unwind(AssertUnwindSafe(|| {
            engine.apply(&envelope, &mut out);
            model.apply_envelope(payload, seq, &subject, received)
        }));
        let model_out = match applied {
            Ok(model_out) => model_out,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(format!(
                    "panic at message index {index} (seq {seq}) of seed {} ({} partitions): {what}\n  reproduce: {}\n  payload: {}\n  earlier messages of this account:\n{}",
                    case.seed,
                    case.partitions,
                    case.reproduce(),
                    String::from_utf8_lossy(payload),
                    context(&history, &String::from_utf8_lossy(payload), &[], &[]),
                ));
            }
        };
        let tick = is_tick(payload);
        let engine_out = comparable(out.iter().map(|o| o.to_json()).collect(), tick);
        let model_out = comparable(model_out, tick);
        let problem = if engine_out != model_out {
            Some("outputs differ".to_string())
        } else if let Err(broken) = engine.check_invariants() {
            Some(format!("engine invariant broken: {broken}"))
        } else if let Err(broken) = model.check_invariants() {
            Some(format!("model invariant broken: {broken}"))
        } else {
            None
        };
        let text = String::from_utf8_lossy(payload).to_string();
        if let Some(problem) = problem {
            return Err(format!(
                "{problem} at message index {index} (seq {seq}) of seed {} ({} partitions, received {:?})\n  reproduce: {}\n  payload: {} on {subject}\n{}\n  engine outputs:\n{}\n  model outputs:\n{}\n  earlier messages of this account, with their (agreed) outputs:\n{}",
                case.seed,
                case.partitions,
                received,
                case.reproduce(),
                text,
                first_difference(&engine_out, &model_out),
                show(&engine_out),
                show(&model_out),
                context(&history, &text, &engine_out, &model_out),
            ));
        }
        if let Ok(account) = std::env::var("MODEL_TRACE") {
            let tag = format!("\"account\":\"{account}\"");
            if account == "*" || text.contains(&tag) || engine_out.iter().any(|o| o.contains(&tag))
            {
                eprintln!("#{index} {text}\n{}", show(&engine_out));
            }
        }
        history.push((index, text, engine_out));
    }
    if let Some(problem) = views_differ(case, case.len, &engine, &model) {
        return Err(problem);
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Cases per half: the cases run as two tests, which the test harness runs on two threads.
fn cases_per_half() -> u32 {
    let total = env_u64("PROPTEST_CASES").map_or(DEFAULT_CASES, |n| n as u32);
    total.div_ceil(2)
}

/// One case of either half; `MODEL_SEED` runs a single case instead (see `one_seed`).
fn check(seed: u64, len: usize) -> Result<(), TestCaseError> {
    if env_u64("MODEL_SEED").is_some() {
        return Ok(());
    }
    run_case(&Case::new(seed, len)).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases_per_half(),
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    /// The engine and the model agree on every generated log (first half of the cases).
    #[test]
    fn engine_matches_model(seed in any::<u64>().no_shrink(), len in LEN_MIN..=LEN_MAX) {
        check(seed, len)?;
    }

    /// The same, second half: a separate test so that both cores work.
    #[test]
    fn engine_matches_model_too(seed in any::<u64>().no_shrink(), len in LEN_MIN..=LEN_MAX) {
        check(seed, len)?;
    }
}

/// `MODEL_SEED=<n>` (and optionally `MODEL_LEN=<len>`, default the longest) runs one case.
#[test]
fn one_seed() {
    let Some(seed) = env_u64("MODEL_SEED") else {
        return;
    };
    let len = env_u64("MODEL_LEN").map_or(LEN_MAX, |n| n as usize);
    let case = Case::new(seed, len);
    eprintln!("{case:?}");
    if let Err(problem) = run_case(&case) {
        panic!("{problem}");
    }
}

/// The harness itself: the detail of a dead letter is masked, nothing else.
#[test]
fn detail_masking_keeps_everything_else() {
    let text = r#"{"type":"dead_letter","id":"dead:1","account":null,"seq":1,"ts":null,"reason":"malformed_json","detail":"a \"quoted\" word","subject":"creditflow.in","payload":"x"}"#;
    assert_eq!(
        relabel_detail(text),
        r#"{"type":"dead_letter","id":"dead:1","account":null,"seq":1,"ts":null,"reason":"malformed_json","detail":"…","subject":"creditflow.in","payload":"x"}"#
    );
}

/// The comparison is not vacuous for runways (SEMANTICS §5.6, §10.5): the generated logs make
/// the standard catalog's plans cross their `runway_alert` both ways, and the engine agrees
/// with the model on every one of those outputs.
#[test]
fn generated_logs_cross_runway_alerts_both_ways() {
    let (model_catalog, catalog) = catalogs();
    let (mut lows, mut recoveries) = (0, 0);
    for seed in 0..40u64 {
        let log = scenario_received(seed, LEN_MAX, model_catalog);
        let mut engine = Engine::new(catalog.clone(), 4);
        let mut out = Vec::new();
        for (index, (payload, received)) in log.iter().enumerate() {
            let envelope = Envelope {
                payload,
                seq: index as u64 + 1,
                subject: SUBJECT,
                received: Some(Instant(*received)),
            };
            engine.apply(&envelope, &mut out);
        }
        for output in &out {
            let json = output.to_json();
            if json.contains("\"type\":\"balance.runway_low\"") {
                lows += 1;
            }
            if json.contains("\"type\":\"balance.recovered\"")
                && json.contains("\"threshold\":\"runway\"")
            {
                recoveries += 1;
            }
        }
    }
    assert!(
        lows > 0 && recoveries > 0,
        "lows {lows}, recoveries {recoveries}"
    );
}
