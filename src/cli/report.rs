//! `creditflow report`: the finance report over the outputs (an exported output stream, or
//! what `replay --json --print outputs` prints), per calendar month (UTC) and credit type.
//!
//! Owns: reading output lines (plain outputs, or `export --stream output` envelopes whose
//! `payload` is the output), taking the latest version of each invoice line, bucketing by the
//! month the account's period ends in, summing exactly (decimal, never a float), checking the
//! revenue identity per row, and printing a table, `--json` or `--csv`.
//!
//! What the outputs say and this reports, per (month, credit type):
//! - revenue (`revenue.period`, closed periods): opening deferred (of each account's first
//!   period ending in the month), granted (value sold), recognised, breakage, removed, closing
//!   deferred (of each account's last period ending in the month); the identity opening +
//!   granted − recognised − breakage − removed = closing is checked per row;
//! - credits consumed and expired, each split into purchased (cost basis > 0) and free
//!   (cost basis 0), from the periods' lots;
//! - from the invoice lines (latest version; `final` once the period closed): allowance credits
//!   granted free, top-up credits and money, overage credits and money, plan fees, adjustments,
//!   and usage per meter (quantity, credits).
//!
//! Must never: guess what the outputs do not say. Credits granted by operator `grant`
//! commands are not in any output (their value is, in `granted`), so "purchased credits granted"
//! and "credits remaining" are not reported; `replay` prints the balances.

use std::collections::BTreeMap;
use std::io::{BufRead, Write as _};
use std::str::FromStr;

use anyhow::{bail, Context as _};
use rust_decimal::Decimal;
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Output lines: `creditflow export --stream output`, or `replay --json --print outputs`
    /// ("-" for standard input).
    pub file: std::path::PathBuf,
    /// JSON lines, one per row, instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV with a header, one line per row and one per (row, meter) for usage.
    #[arg(long)]
    pub csv: bool,
}

/// One row: a month and a credit type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub opening_deferred: Decimal,
    pub granted: Decimal,
    pub recognized: Decimal,
    pub breakage: Decimal,
    pub removed: Decimal,
    pub closing_deferred: Decimal,
    pub consumed_purchased: Decimal,
    pub consumed_free: Decimal,
    pub expired_purchased: Decimal,
    pub expired_free: Decimal,
    pub allowance_credits: Decimal,
    pub topup_credits: Decimal,
    pub topup_money: Decimal,
    pub overage_credits: Decimal,
    pub overage_money: Decimal,
    pub plan_fees: Decimal,
    pub adjustments: Decimal,
    /// Per meter: (quantity, credits).
    pub usage: BTreeMap<String, (Decimal, Decimal)>,
    /// Whether every invoice line in the row was final (its period closed).
    pub closed: bool,
}

impl Row {
    /// opening + granted − recognised − breakage − removed − closing: zero when it holds.
    pub fn identity_difference(&self) -> Decimal {
        self.opening_deferred + self.granted
            - self.recognized
            - self.breakage
            - self.removed
            - self.closing_deferred
    }
}

/// The report: rows keyed by (month `YYYY-MM`, credit type).
pub type Report = BTreeMap<(String, String), Row>;

fn decimal(value: &Value, field: &str, line: usize) -> anyhow::Result<Decimal> {
    let text = value[field]
        .as_str()
        .with_context(|| format!("line {line}: {field} is not a decimal string"))?;
    Decimal::from_str(text).with_context(|| format!("line {line}: {field} {text:?}"))
}

fn text<'a>(value: &'a Value, field: &str, line: usize) -> anyhow::Result<&'a str> {
    value[field]
        .as_str()
        .with_context(|| format!("line {line}: no {field}"))
}

/// The month (`YYYY-MM`) of an output timestamp.
fn month_of(ts: &str, line: usize) -> anyhow::Result<String> {
    if ts.len() < 7 || ts.as_bytes()[4] != b'-' {
        bail!("line {line}: {ts:?} is not a timestamp");
    }
    Ok(ts[..7].to_string())
}

/// The period an invoice line's or revenue record's period ends in belongs to the month
/// before when it ends exactly at a month's start (a period `[09-01, 10-01)` is September's).
fn period_month(period_end: &str, line: usize) -> anyhow::Result<String> {
    let month = month_of(period_end, line)?;
    if period_end.get(7..) == Some("-01T00:00:00.000Z") {
        let year: i32 = month[..4].parse().context("year")?;
        let number: u32 = month[5..7].parse().context("month")?;
        let (year, number) = if number == 1 {
            (year - 1, 12)
        } else {
            (year, number - 1)
        };
        return Ok(format!("{year:04}-{number:02}"));
    }
    Ok(month)
}

/// Reads output lines (plain, or export envelopes) into outputs.
pub fn read_outputs(reader: impl BufRead) -> anyhow::Result<Vec<(usize, Value)>> {
    let mut outputs = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("reading line {number}"))?;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("line {number}: not JSON"))?;
        let value = match (&value["type"], &value["payload"]) {
            (Value::String(_), _) => value,
            (Value::Null, Value::String(payload)) => serde_json::from_str(payload)
                .with_context(|| format!("line {number}: the envelope's payload is not JSON"))?,
            _ => bail!(
                "line {number}: neither an output (no \"type\") nor an export envelope with a \
                 payload"
            ),
        };
        outputs.push((number, value));
    }
    Ok(outputs)
}

/// Builds the report from outputs.
pub fn report(outputs: &[(usize, Value)]) -> anyhow::Result<Report> {
    let mut report = Report::new();
    // Latest version of each invoice line.
    let mut lines: BTreeMap<String, (u64, usize, &Value)> = BTreeMap::new();
    // Per (month, credit type, account): (first period start, opening), (last, closing).
    type Chain = ((String, Decimal), (String, Decimal));
    let mut chains: BTreeMap<(String, String, String), Chain> = BTreeMap::new();
    for (number, output) in outputs {
        let number = *number;
        match output["type"].as_str() {
            Some("invoice.line") => {
                let id = text(output, "line_id", number)?.to_string();
                let version = output["version"]
                    .as_u64()
                    .with_context(|| format!("line {number}: no version"))?;
                if lines.get(&id).is_none_or(|(v, _, _)| version > *v) {
                    lines.insert(id, (version, number, output));
                }
            }
            Some("revenue.period") => {
                let month = period_month(text(output, "period_end", number)?, number)?;
                let credit_type = text(output, "credit_type", number)?.to_string();
                let account = text(output, "account", number)?.to_string();
                let start = text(output, "period_start", number)?.to_string();
                let row = report
                    .entry((month.clone(), credit_type.clone()))
                    .or_insert_with(|| Row {
                        closed: true,
                        ..Row::default()
                    });
                row.granted += decimal(output, "granted", number)?;
                row.recognized += decimal(output, "recognized", number)?;
                row.breakage += decimal(output, "breakage", number)?;
                row.removed += decimal(output, "removed", number)?;
                for lot in output["lots"].as_array().into_iter().flatten() {
                    let purchased = decimal(lot, "cost_basis", number)? > Decimal::ZERO;
                    let consumed = decimal(lot, "recognized_credits", number)?;
                    let expired = decimal(lot, "breakage_credits", number)?;
                    if purchased {
                        row.consumed_purchased += consumed;
                        row.expired_purchased += expired;
                    } else {
                        row.consumed_free += consumed;
                        row.expired_free += expired;
                    }
                }
                let opening = decimal(output, "opening_deferred", number)?;
                let closing = decimal(output, "closing_deferred", number)?;
                let chain = chains
                    .entry((month, credit_type, account))
                    .or_insert_with(|| ((start.clone(), opening), (start.clone(), closing)));
                if start < chain.0 .0 {
                    chain.0 = (start.clone(), opening);
                }
                if start >= chain.1 .0 {
                    chain.1 = (start, closing);
                }
            }
            Some(_) => {}
            None => bail!("line {number}: an output without a type"),
        }
    }
    for ((month, credit_type, _), ((_, opening), (_, closing))) in chains {
        let row = report.entry((month, credit_type)).or_default();
        row.opening_deferred += opening;
        row.closing_deferred += closing;
    }
    for (_, number, line) in lines.into_values() {
        let month = period_month(text(line, "period_end", number)?, number)?;
        let credit_type = text(line, "credit_type", number)?.to_string();
        let is_final = line["final"].as_bool().unwrap_or(false);
        let row = report.entry((month, credit_type)).or_insert_with(|| Row {
            closed: true,
            ..Row::default()
        });
        row.closed &= is_final;
        let credits = decimal(line, "credits", number)?;
        let money = decimal(line, "money", number)?;
        match text(line, "kind", number)? {
            "usage" | "reversal" => {
                let quantity = match line["quantity"].as_str() {
                    Some(q) => Decimal::from_str(q)
                        .with_context(|| format!("line {number}: quantity {q:?}"))?,
                    None => Decimal::ZERO,
                };
                let meter = text(line, "meter", number)?.to_string();
                let usage = row.usage.entry(meter).or_default();
                usage.0 += quantity;
                usage.1 += credits;
                row.overage_money += if text(line, "kind", number)? == "reversal" {
                    money
                } else {
                    Decimal::ZERO
                };
            }
            "overage" | "overage_repaid" => {
                row.overage_credits += credits;
                row.overage_money += money;
            }
            "topup" => {
                row.topup_credits += credits;
                row.topup_money += money;
            }
            "allowance" => row.allowance_credits += credits,
            "plan_fee" => row.plan_fees += money,
            "adjustment" => row.adjustments += credits,
            other => bail!("line {number}: unknown invoice line kind {other:?}"),
        }
    }
    Ok(report)
}

const FIELDS: [&str; 17] = [
    "opening_deferred",
    "granted",
    "recognized",
    "breakage",
    "removed",
    "closing_deferred",
    "consumed_purchased",
    "consumed_free",
    "expired_purchased",
    "expired_free",
    "allowance_credits",
    "topup_credits",
    "topup_money",
    "overage_credits",
    "overage_money",
    "plan_fees",
    "adjustments",
];

fn values(row: &Row) -> [Decimal; 17] {
    [
        row.opening_deferred,
        row.granted,
        row.recognized,
        row.breakage,
        row.removed,
        row.closing_deferred,
        row.consumed_purchased,
        row.consumed_free,
        row.expired_purchased,
        row.expired_free,
        row.allowance_credits,
        row.topup_credits,
        row.topup_money,
        row.overage_credits,
        row.overage_money,
        row.plan_fees,
        row.adjustments,
    ]
}

/// One JSON object per row (amounts as normalized decimal strings).
pub fn row_json(month: &str, credit_type: &str, row: &Row) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("month".into(), month.into());
    object.insert("credit_type".into(), credit_type.into());
    object.insert("closed".into(), row.closed.into());
    for (field, value) in FIELDS.iter().zip(values(row)) {
        object.insert((*field).into(), value.normalize().to_string().into());
    }
    object.insert(
        "identity_holds".into(),
        row.identity_difference().is_zero().into(),
    );
    object.insert(
        "usage".into(),
        row.usage
            .iter()
            .map(|(meter, (quantity, credits))| {
                json!({"meter": meter, "quantity": quantity.normalize().to_string(),
                       "credits": credits.normalize().to_string()})
            })
            .collect::<Vec<_>>()
            .into(),
    );
    Value::Object(object)
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let outputs = if args.file.as_os_str() == "-" {
        read_outputs(std::io::stdin().lock())?
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        read_outputs(std::io::BufReader::new(file))
            .with_context(|| args.file.display().to_string())?
    };
    let report = report(&outputs)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        for ((month, credit_type), row) in &report {
            writeln!(out, "{}", row_json(month, credit_type, row))?;
        }
    } else if args.csv {
        writeln!(
            out,
            "month,credit_type,closed,{},identity_holds,meter,quantity,credits",
            FIELDS.join(",")
        )?;
        for ((month, credit_type), row) in &report {
            let figures: Vec<String> = values(row)
                .iter()
                .map(|v| v.normalize().to_string())
                .collect();
            let head = format!(
                "{month},{credit_type},{},{},{}",
                row.closed,
                figures.join(","),
                row.identity_difference().is_zero()
            );
            writeln!(out, "{head},,,")?;
            for (meter, (quantity, credits)) in &row.usage {
                writeln!(
                    out,
                    "{head},{meter},{},{}",
                    quantity.normalize(),
                    credits.normalize()
                )?;
            }
        }
    } else {
        for ((month, credit_type), row) in &report {
            writeln!(
                out,
                "{month}  {credit_type}{}",
                if row.closed {
                    ""
                } else {
                    "  (open: lines not final)"
                }
            )?;
            for (field, value) in FIELDS.iter().zip(values(row)) {
                writeln!(out, "  {field:<20} {:>24}", value.normalize().to_string())?;
            }
            writeln!(
                out,
                "  {:<20} {:>24}",
                "identity",
                if row.identity_difference().is_zero() {
                    "holds".to_string()
                } else {
                    format!("DIFFERS by {}", row.identity_difference())
                }
            )?;
            for (meter, (quantity, credits)) in &row.usage {
                writeln!(
                    out,
                    "  usage {meter:<14} {:>18} units {:>18} credits",
                    quantity.normalize().to_string(),
                    credits.normalize().to_string()
                )?;
            }
        }
    }
    out.flush()?;
    let broken: Vec<String> = report
        .iter()
        .filter(|(_, row)| !row.identity_difference().is_zero())
        .map(|((month, credit_type), _)| format!("{month} {credit_type}"))
        .collect();
    if !broken.is_empty() {
        bail!(
            "the revenue identity does not hold for {}",
            broken.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_ending_at_a_month_start_is_the_month_before() {
        assert_eq!(
            period_month("2026-10-01T00:00:00.000Z", 1).unwrap(),
            "2026-09"
        );
        assert_eq!(
            period_month("2026-01-01T00:00:00.000Z", 1).unwrap(),
            "2025-12"
        );
        assert_eq!(
            period_month("2026-09-02T00:00:00.000Z", 1).unwrap(),
            "2026-09"
        );
        assert!(period_month("x", 1).is_err());
    }

    #[test]
    fn envelopes_and_plain_outputs_read_alike() {
        let plain = r#"{"type":"hold.expired","id":"h","account":"a","seq":1,"ts":"2026-09-01T00:00:00.000Z","hold_id":"h","credits_released":"1"}"#;
        let envelope =
            json!({"seq": 4, "subject": "creditflow.out.0.hold.expired", "payload": plain})
                .to_string();
        let read = read_outputs(format!("{plain}\n\n{envelope}\n").as_bytes()).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].1, read[1].1);
        assert!(read_outputs("{\"seq\":1}\n".as_bytes()).is_err());
    }
}
