//! `creditflow simulate`: reprice a historical log under a candidate catalog and compare credits
//! and revenue per account and meter with the current catalog.
//!
//! Both runs are full engine replays, so the comparison includes knock-on effects: a price rise
//! drains balances sooner, so more events are rejected or top-ups happen earlier. That is what a
//! pricing experiment needs to see before rolling out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::cli::replay::read_log;
use crate::decimal::{Credits, Quantity, Revenue};
use crate::engine::Engine;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The log to reprice (JSONL).
    #[arg(long)]
    pub events: PathBuf,
    /// Lines are envelopes, as `creditflow export` writes.
    #[arg(long)]
    pub envelope: bool,
    /// The catalog in force.
    #[arg(long, default_value = "config/catalog.toml")]
    pub catalog: PathBuf,
    /// The catalog to try.
    #[arg(long)]
    pub candidate: PathBuf,
    /// JSON lines (one per account and meter, then a total) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Partition count the log was written with. Default: read from an envelope log's
    /// subjects, 1 for a plain log.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::PARTITIONS_MAX)))]
    pub partitions: Option<u32>,
}

/// One side of the comparison for one (account, meter).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Side {
    pub quantity: Quantity,
    pub credits: Credits,
    pub revenue: Revenue,
    pub charged: u64,
    pub rejected: u64,
}

/// (account, meter) → (current, candidate).
pub type Comparison = BTreeMap<(String, String), (Side, Side)>;

fn tallied(
    catalog: Arc<Catalog>,
    partitions: u32,
    log: &[crate::cli::replay::LogEntry],
) -> (Engine, BTreeMap<(String, String), Side>) {
    let mut engine = Engine::new(catalog, partitions);
    engine.enable_tally();
    let mut outputs = Vec::new();
    for entry in log {
        engine.apply(&entry.envelope(), &mut outputs);
        outputs.clear();
    }
    let catalog = engine.catalog().clone();
    let sides = engine
        .tally()
        .into_iter()
        .map(|((account, meter), t)| {
            let side = Side {
                quantity: t.quantity,
                credits: t.credits,
                revenue: t.revenue,
                charged: t.charged,
                rejected: t.rejected,
            };
            ((account, catalog.meter(meter).name.clone()), side)
        })
        .collect();
    (engine, sides)
}

/// Replays `log` under both catalogs and pairs the per (account, meter) results.
pub fn compare(
    current: Arc<Catalog>,
    candidate: Arc<Catalog>,
    partitions: u32,
    log: &[crate::cli::replay::LogEntry],
) -> (Comparison, [crate::engine::Stats; 2]) {
    let (current_engine, current_sides) = tallied(current, partitions, log);
    let (candidate_engine, candidate_sides) = tallied(candidate, partitions, log);
    let mut comparison = Comparison::new();
    for (key, side) in current_sides {
        comparison.entry(key).or_default().0 = side;
    }
    for (key, side) in candidate_sides {
        comparison.entry(key).or_default().1 = side;
    }
    (
        comparison,
        [current_engine.stats(), candidate_engine.stats()],
    )
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let load = |path: &PathBuf| {
        crate::catalog::load::from_path(path)
            .map(Arc::new)
            .map_err(|errors| anyhow::anyhow!("catalog {} is invalid:\n{errors}", path.display()))
    };
    let current = load(&args.catalog)?;
    let candidate = load(&args.candidate)?;
    let log = read_log(&args.events, args.envelope)?;
    let partitions = match args.partitions {
        Some(partitions) => partitions,
        None => crate::cli::replay::partitions_of_log(&log)?,
    };
    let (comparison, stats) = compare(current, candidate, partitions, &log);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut total = (Side::default(), Side::default());
    for (current, candidate) in comparison.values() {
        for (sum, side) in [(&mut total.0, current), (&mut total.1, candidate)] {
            sum.credits += side.credits;
            sum.revenue += side.revenue;
            sum.charged += side.charged;
            sum.rejected += side.rejected;
        }
    }
    if args.json {
        for ((account, meter), (current, candidate)) in &comparison {
            writeln!(out, "{}", json_row(account, meter, current, candidate))?;
        }
        writeln!(out, "{}", json_row("TOTAL", "*", &total.0, &total.1))?;
    } else {
        write!(out, "{}", table(&args, &comparison, &total, &stats))?;
    }
    Ok(out.flush()?)
}

fn json_row(account: &str, meter: &str, current: &Side, candidate: &Side) -> String {
    serde_json::json!({
        "account": account,
        "meter": meter,
        "quantity": current.quantity.to_string(),
        "credits_current": current.credits.to_string(),
        "credits_candidate": candidate.credits.to_string(),
        "credits_difference": (candidate.credits - current.credits).to_string(),
        "revenue_current": current.revenue.to_string(),
        "revenue_candidate": candidate.revenue.to_string(),
        "revenue_difference": (candidate.revenue - current.revenue).to_string(),
        "rejected_current": current.rejected,
        "rejected_candidate": candidate.rejected,
    })
    .to_string()
}

/// Money for display: exact revenue rounded half-up to 4 places (the JSON keeps it exact).
fn show(revenue: Revenue) -> String {
    revenue
        .round_money(4, crate::decimal::Rounding::HalfUp)
        .to_string()
}

fn table(
    args: &SimulateArgs,
    comparison: &Comparison,
    total: &(Side, Side),
    stats: &[crate::engine::Stats; 2],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Repricing {} under {} (current) and {} (candidate).",
        args.events.display(),
        args.catalog.display(),
        args.candidate.display()
    );
    let _ = writeln!(
        s,
        "Dead letters: {} current, {} candidate. Revenue = credits drawn × their cost basis + overage money.\n",
        stats[0].dead_letters, stats[1].dead_letters
    );
    let _ = writeln!(
        s,
        "  {:<12} {:<16} {:>14} {:>14} {:>14} {:>12} {:>12} {:>12} {:>9}",
        "account",
        "meter",
        "quantity",
        "credits now",
        "credits new",
        "Δ credits",
        "revenue now",
        "revenue new",
        "rejected"
    );
    for ((account, meter), (current, candidate)) in comparison {
        let _ = writeln!(
            s,
            "  {:<12} {:<16} {:>14} {:>14} {:>14} {:>12} {:>12} {:>12} {:>4}/{:<4}",
            account,
            meter,
            current.quantity.to_string(),
            current.credits.to_string(),
            candidate.credits.to_string(),
            (candidate.credits - current.credits).to_string(),
            show(current.revenue),
            show(candidate.revenue),
            current.rejected,
            candidate.rejected
        );
    }
    let _ = writeln!(
        s,
        "  {:<12} {:<16} {:>14} {:>14} {:>14} {:>12} {:>12} {:>12} {:>4}/{:<4}",
        "TOTAL",
        "",
        "",
        total.0.credits.to_string(),
        total.1.credits.to_string(),
        (total.1.credits - total.0.credits).to_string(),
        show(total.0.revenue),
        show(total.1.revenue),
        total.0.rejected,
        total.1.rejected
    );
    let difference = total.1.revenue - total.0.revenue;
    let percent = match total.0.revenue.0 {
        0 => "no current revenue".to_string(),
        // Tenths of a percent, truncated: a display figure, the exact one is in the columns.
        current => {
            let tenths = difference.0.saturating_mul(1000) / current;
            format!(
                "{}{}.{}%",
                if tenths < 0 { "-" } else { "+" },
                tenths.abs() / 10,
                tenths.abs() % 10
            )
        }
    };
    let _ = writeln!(s, "\nRevenue difference: {} ({percent}).", show(difference));
    s
}
