//! `creditflow replay`: apply a JSONL log offline and print the final state and every output.
//!
//! This is the oracle every other path is compared with: the engine, single-threaded, fed the
//! log in order. It reads files and writes stdout; it never touches NATS.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};

use crate::catalog::Catalog;
use crate::engine::{Engine, Explanation};
use crate::wire::output::{Body, Output};

/// One message of a log: its payload, stream sequence and subject.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub seq: u64,
    pub subject: String,
    pub payload: Vec<u8>,
    /// When the stream received it, if the log says.
    pub received: Option<crate::time::Instant>,
}

impl LogEntry {
    pub fn envelope(&self) -> crate::engine::Envelope<'_> {
        crate::engine::Envelope {
            payload: &self.payload,
            seq: self.seq,
            subject: &self.subject,
            received: self.received,
        }
    }
}

/// The subject a plain JSONL line is treated as arriving on: no partition named, so the engine
/// routes by the account's hash.
pub const PLAIN_SUBJECT: &str = "creditflow.in";

/// The UTF-8 byte order mark some editors (and Windows tools) write at the start of a text file.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The longest line a log may have: room for the largest payload base64-encoded in an
/// envelope, with its fields. A longer line is refused (no valid message is that long).
pub const LOG_LINE_BYTES_MAX: usize = 4 << 20;

/// Reads a log. Plain lines are payloads with `seq` = line number (blank lines skipped but
/// counted, so sequences match the file). With `envelope`, each line is
/// `{"seq":N,"subject":"…","received":"…","payload":"…"}` (or `payload_base64`; `received`
/// optional), as `creditflow export` writes. A UTF-8 byte order mark at the start of the file
/// is skipped.
pub fn read_log(path: &Path, envelope: bool) -> anyhow::Result<Vec<LogEntry>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut entries = Vec::new();
    for index in 0.. {
        let mut line = Vec::new();
        // Never more than the limit in memory for one line: a file without newlines (a
        // device, a binary) is refused at the limit, not read whole.
        let read = std::io::Read::take(&mut reader, LOG_LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > LOG_LINE_BYTES_MAX {
            bail!(
                "{}:{}: a line longer than {} bytes (a valid message is at most {} bytes; is \
                 this a JSONL log?)",
                path.display(),
                index + 1,
                LOG_LINE_BYTES_MAX,
                crate::catalog::load::PAYLOAD_BYTES_MAX
            );
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if index == 0 && line.starts_with(UTF8_BOM) {
            line.drain(..UTF8_BOM.len());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let number = index as u64 + 1;
        if envelope {
            entries.push(
                parse_envelope(&line).with_context(|| format!("{}:{number}", path.display()))?,
            );
        } else {
            entries.push(LogEntry {
                seq: number,
                subject: PLAIN_SUBJECT.to_string(),
                payload: line,
                received: None,
            });
        }
    }
    Ok(entries)
}

fn parse_envelope(line: &[u8]) -> anyhow::Result<LogEntry> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Envelope {
        seq: u64,
        subject: String,
        received: Option<String>,
        payload: Option<String>,
        payload_base64: Option<String>,
    }
    let envelope: Envelope = serde_json::from_slice(line).context("not an envelope line")?;
    let payload = match (envelope.payload, envelope.payload_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => decode_base64(&encoded).context("payload_base64")?,
        _ => bail!("an envelope needs exactly one of payload and payload_base64"),
    };
    let received = match envelope.received {
        Some(text) => Some(text.parse().map_err(|e| anyhow::anyhow!("received: {e}"))?),
        None => None,
    };
    Ok(LogEntry {
        seq: envelope.seq,
        subject: envelope.subject,
        payload,
        received,
    })
}

pub fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let value = |c: u8| -> anyhow::Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("invalid base64 character {:?}", c as char),
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let produced = chunk.len().saturating_sub(1);
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

/// The partition count an exported log was written with, read from its subjects
/// (`<prefix>.<p>.<kind>`): the smallest count above every partition named under which the
/// accounts it can read (up to a thousand distinct ones) hash to the partition their subject
/// names, all but 1% of them (a producer may have published some on a wrong partition: those
/// were dead letters). The processor's ticks reach every partition, so a log with ticks names
/// the count outright. `Ok(1)` for a log that names no partition (a plain log: the count
/// changes nothing, SEMANTICS §1); an error when no count fits.
pub fn partitions_of_log(log: &[LogEntry]) -> anyhow::Result<u32> {
    use crate::wire::subject::route;
    const SAMPLE: usize = 1000;
    let max = crate::config::PARTITIONS_MAX;
    let mut highest = None;
    let mut sample: std::collections::BTreeSet<(u32, String)> = Default::default();
    for entry in log {
        let Some(partition) = route(PLAIN_SUBJECT, &entry.subject, max).partition() else {
            continue;
        };
        highest = highest.max(Some(partition));
        if sample.len() < SAMPLE {
            let account = serde_json::from_slice::<serde_json::Value>(&entry.payload)
                .ok()
                .and_then(|v| v.get("account")?.as_str().map(str::to_string))
                .filter(|a| crate::wire::input::account_is_valid(a));
            if let Some(account) = account {
                sample.insert((partition, account));
            }
        }
    }
    let Some(highest) = highest else {
        return Ok(1);
    };
    let fits = |count: u32| {
        let wrong = sample
            .iter()
            .filter(|(p, account)| crate::engine::partition_of(account, count) != *p)
            .count();
        wrong * 100 <= sample.len()
    };
    (highest + 1..=max)
        .find(|&count| fits(count))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the log's subjects fit no partition count from {} to {max}: give --partitions",
                highest + 1
            )
        })
}

/// What `replay` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// Outputs, then the final state.
    All,
    Outputs,
    State,
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The catalog (TOML).
    #[arg(long, default_value = "config/catalog.toml")]
    pub catalog: PathBuf,
    /// The log: one message per line (JSONL).
    #[arg(long)]
    pub events: PathBuf,
    /// Lines are envelopes `{"seq","subject","payload"}`, as `creditflow export` writes.
    #[arg(long)]
    pub envelope: bool,
    /// JSON lines instead of tables: every output (SEMANTICS §14), then each account's state
    /// (SEMANTICS §16).
    #[arg(long)]
    pub json: bool,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Print::All)]
    pub print: Print,
    /// Only this account's outputs and state.
    #[arg(long)]
    pub account: Option<String>,
    /// With --account: show, input by input, what was charged, at which rate, from which grants.
    #[arg(long, requires = "account")]
    pub explain: bool,
    /// Partition count (state and outputs do not depend on it; subjects naming a partition are
    /// checked against it). Default: read from an envelope log's subjects, 1 for a plain log.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::PARTITIONS_MAX)))]
    pub partitions: Option<u32>,
}

/// Replays a log; returns the engine and every output.
pub fn run_log(
    catalog: Arc<Catalog>,
    partitions: u32,
    log: &[LogEntry],
    explain: Option<&str>,
) -> (Engine, Vec<Output>) {
    let mut engine = Engine::new(catalog, partitions);
    engine.set_explain(explain);
    let mut outputs = Vec::new();
    // Batches of 1024 envelopes, applied with fetching ahead (the same result as one by one).
    for chunk in log.chunks(1024) {
        let envelopes: Vec<_> = chunk.iter().map(LogEntry::envelope).collect();
        engine.apply_batch(&envelopes, &mut outputs);
    }
    (engine, outputs)
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let catalog = crate::catalog::load::from_path(&args.catalog).map_err(|errors| {
        anyhow::anyhow!("catalog {} is invalid:\n{errors}", args.catalog.display())
    })?;
    let log = read_log(&args.events, args.envelope)?;
    let explain = if args.explain {
        args.account.as_deref()
    } else {
        None
    };
    let partitions = match args.partitions {
        Some(partitions) => partitions,
        None => partitions_of_log(&log)?,
    };
    let (mut engine, outputs) = run_log(Arc::new(catalog), partitions, &log, explain);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let keep = |o: &&Output| {
        args.account
            .as_ref()
            .is_none_or(|a| o.account.as_deref() == Some(a))
    };
    if args.explain {
        let explanations = engine.take_explanations();
        write!(
            out,
            "{}",
            explain_table(
                engine.catalog(),
                args.account.as_deref().unwrap_or(""),
                &explanations,
                &outputs
            )
        )?;
        return Ok(out.flush()?);
    }
    let state: Vec<String> = engine
        .state_view()
        .into_iter()
        .filter(|line| {
            args.account.as_ref().is_none_or(|a| {
                line.starts_with(&format!(
                    "{{\"account\":{}",
                    serde_json::to_string(a).unwrap_or_default()
                ))
            })
        })
        .collect();
    if args.json {
        if args.print != Print::State {
            for output in outputs.iter().filter(keep) {
                writeln!(out, "{}", output.to_json())?;
            }
        }
        if args.print != Print::Outputs {
            for line in &state {
                writeln!(out, "{line}")?;
            }
        }
    } else {
        let shown: Vec<&Output> = outputs.iter().filter(keep).collect();
        write!(out, "{}", summary_table(&engine, log.len(), &shown))?;
        if args.print != Print::State {
            write!(
                out,
                "{}",
                outputs_table(
                    &shown,
                    args.print == Print::Outputs || args.account.is_some()
                )
            )?;
        }
        if args.print != Print::Outputs {
            write!(out, "{}", state_table(&engine, args.account.as_deref()))?;
        }
    }
    Ok(out.flush()?)
}

fn summary_table(engine: &Engine, messages: usize, outputs: &[&Output]) -> String {
    let stats = engine.stats();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Replayed {messages} messages: {} usage applied, {} commands, {} ticks, {} duplicates ignored, {} dead letters.",
        stats.usage_applied, stats.commands_applied, stats.ticks, stats.duplicates, stats.dead_letters
    );
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for output in outputs {
        *counts.entry(output.body.type_name()).or_default() += 1;
    }
    let _ = writeln!(s, "\nOutputs by type ({} in all):", outputs.len());
    for (kind, count) in counts {
        let _ = writeln!(s, "  {kind:<20} {count:>8}");
    }
    s
}

/// One readable line per output; all of them with `all`, else the notable ones (no invoice
/// line updates or command results).
fn outputs_table(outputs: &[&Output], all: bool) -> String {
    let mut s = String::new();
    let notable: Vec<&&Output> = outputs
        .iter()
        .filter(|o| all || !matches!(o.body, Body::InvoiceLine(_) | Body::CommandResult(_)))
        .collect();
    let _ = writeln!(
        s,
        "\n{} (seq, event time, account, what):",
        if all {
            "Outputs"
        } else {
            "Notable outputs: alerts, rejections, top-ups, expiries, revenue, dead letters"
        }
    );
    for output in notable {
        let ts = output.ts.map_or_else(|| "-".to_string(), |t| t.to_string());
        let account = output.account.as_deref().unwrap_or("-");
        let _ = writeln!(
            s,
            "  {:>6}  {ts:<24}  {account:<12}  {}",
            output.seq,
            describe(output)
        );
    }
    s
}

/// A short human description of an output.
pub fn describe(output: &Output) -> String {
    match &output.body {
        Body::UsageRejected { event_id, meter, quantity, needed, available, reason, .. } => {
            format!("usage.rejected {event_id}: {quantity} {meter} needs {needed}, {available} available ({reason})")
        }
        Body::BalanceLow { credit_type, threshold, threshold_amount, balance } => {
            format!("balance.low {credit_type}: {balance} < {threshold} ({threshold_amount})")
        }
        Body::BalanceDepleted { credit_type, balance } => format!("balance.depleted {credit_type}: {balance}"),
        Body::RunwayLow { credit_type, runway_alert, runs_out_at, balance, .. } => {
            format!("balance.runway_low {credit_type}: {balance} runs out at {runs_out_at}, within {runway_alert}")
        }
        Body::BalanceRecovered { credit_type, threshold, balance } => {
            format!("balance.recovered {credit_type}: {balance} back above {threshold}")
        }
        Body::GrantExpiring { grant_id, remaining, expires_at, .. } => {
            format!("grant.expiring {grant_id}: {remaining} left, expires {expires_at}")
        }
        Body::GrantExpired { grant_id, credits, breakage, .. } => {
            format!("grant.expired {grant_id}: {credits} credits expired, breakage {breakage}")
        }
        Body::TopupGranted { grant_id, credits, money, .. } => format!("topup.granted {grant_id}: {credits} credits for {money}"),
        Body::InvoiceLine(line) => format!(
            "invoice.line {} {} v{}{}: qty {} credits {} money {}",
            line.kind,
            line.meter,
            line.version,
            if line.is_final { " final" } else { "" },
            line.quantity.map_or_else(|| "-".into(), |q| q.to_string()),
            line.credits,
            line.money
        ),
        Body::RevenuePeriod(r) => format!(
            "revenue.period {} {}: opening {} + granted {} - recognized {} - breakage {} - removed {} = closing {}",
            r.period_start, r.credit_type, r.opening_deferred, r.granted, r.recognized, r.breakage, r.removed, r.closing_deferred
        ),
        Body::HoldExpired { hold_id, credits_released } => format!("hold.expired {hold_id}: {credits_released} released"),
        Body::CommandResult(result) => format!(
            "command.result {} {}: {}",
            result.command,
            result.command_id,
            result.rejected.map_or_else(|| "applied".to_string(), |r| format!("rejected ({r})"))
        ),
        Body::DeadLetter { reason, detail, .. } => format!("dead_letter: {reason}: {detail}"),
    }
}

fn state_table(engine: &Engine, only: Option<&str>) -> String {
    let catalog = engine.catalog();
    let mut accounts: Vec<_> = engine
        .partitions()
        .iter()
        .flat_map(|p| p.accounts())
        .collect();
    accounts.sort_by(|a, b| a.id.cmp(&b.id));
    let mut s = String::new();
    let _ = writeln!(s, "\nFinal state ({} accounts):", accounts.len());
    let _ = writeln!(
        s,
        "  {:<14} {:<12} {:<15} {:>14} {:>10} {:>10} {:>7} {:>6}",
        "account", "plan", "credit_type", "balance", "held", "debt", "grants", "holds"
    );
    for account in accounts.iter().filter(|a| only.is_none_or(|o| *a.id == *o)) {
        for t in &account.types {
            let live = account
                .grants
                .iter()
                .filter(|g| {
                    g.credit_type == t.credit_type
                        && g.status == crate::engine::account::GrantStatus::Live
                })
                .count();
            let _ = writeln!(
                s,
                "  {:<14} {:<12} {:<15} {:>14} {:>10} {:>10} {:>7} {:>6}",
                account.id,
                catalog.plan(account.plan).name,
                catalog.credit_type(t.credit_type).name,
                account.balance(t.credit_type).to_string(),
                account.held(t.credit_type).to_string(),
                t.debt().to_string(),
                live,
                account.holds().len()
            );
        }
        if only.is_some() {
            let _ = writeln!(s, "\n  Grants of {} (burn order):", account.id);
            for g in &account.grants {
                let _ = writeln!(
                    s,
                    "    {:<34} {:<10} {:<8} {:>12} of {:>12}  priority {:>4}  expires {}  cost basis {}",
                    g.id,
                    g.source.name(),
                    g.status.name(),
                    g.remaining.to_string(),
                    g.amount.to_string(),
                    g.priority,
                    g.expires_at().map_or_else(|| "never".into(), |e| e.to_string()),
                    g.cost_basis
                );
            }
            for h in account.holds() {
                let _ = writeln!(
                    s,
                    "    hold {:<29} {:>12} held until {}",
                    h.id,
                    h.credits().to_string(),
                    h.expires_at
                );
            }
        }
    }
    s
}

fn explain_table(
    catalog: &Catalog,
    account: &str,
    explanations: &[Explanation],
    outputs: &[Output],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Account {account}, input by input ({} inputs):",
        explanations.len()
    );
    for e in explanations {
        let _ = write!(
            s,
            "\n  seq {:<6} {}  {} {}  -> {}",
            e.seq, e.ts, e.kind, e.id, e.outcome
        );
        if let Some(p) = &e.priced {
            let x = &p.explain;
            let _ = write!(
                s,
                "\n      price: {} model, version from {}, rate {}, multiplier {}{}{}{}, billed quantity {}, exact {} -> cost {}",
                x.model,
                x.version_from,
                x.rate.map_or_else(|| "by tier".to_string(), |r| r.to_string()),
                x.multiplier,
                x.dimension_rule.map_or_else(String::new, |i| format!(", dimension rule #{}", i + 1)),
                x.window.map_or_else(String::new, |i| format!(", time window #{}", i + 1)),
                if x.minimum_applied { ", minimum charge applied" } else { "" },
                p.billed_quantity,
                x.unrounded,
                p.cost
            );
        }
        if !e.draws.is_empty() || e.overage.is_positive() {
            let drawn: Vec<String> = e.draws.iter().map(|(g, a)| format!("{g} {a}")).collect();
            let _ = write!(
                s,
                "\n      paid from: {}",
                if drawn.is_empty() {
                    "-".into()
                } else {
                    drawn.join(", ")
                }
            );
            if e.overage.is_positive() {
                let _ = write!(s, "; overage {}", e.overage);
            }
        }
        let balances: Vec<String> = e
            .balance_after
            .iter()
            .map(|(t, b)| format!("{t} {b}"))
            .collect();
        let _ = write!(s, "\n      balance after: {}", balances.join(", "));
        for output in outputs
            .iter()
            .filter(|o| o.seq == e.seq && o.account.as_deref() == Some(account))
        {
            if !matches!(output.body, Body::InvoiceLine(_)) {
                let _ = write!(s, "\n      -> {}", describe(output));
            }
        }
    }
    let _ = catalog;
    s.push('\n');
    s
}
