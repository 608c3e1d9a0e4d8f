//! The reference model of the credit engine, written from `docs/SEMANTICS.md` alone.
//!
//! Owns: a deliberately plain re-implementation of the contract (Vec scans, recomputation,
//! sorting on demand) that the engine is checked against by the model test, plus its catalog
//! ([`ModelCatalog`]), a seeded input generator ([`gen`]) and the exact output format.
//!
//! Must never: use `creditflow` internals (decimal, time, catalog, engine). Arithmetic is
//! `rust_decimal`, rounding only through [`Rounding::round`], time through `jiff`.
//!
//! Invariants: after every input, every transition due at or before an account's clock has
//! run (`advance`); the ledger invariant of §5.4 holds ([`Model::check_invariants`]).
//! The contract is SEMANTICS.md; the model's own choices are in `DECISIONS.md` (M1, M2, …).
#![allow(dead_code)]

pub mod catalog;
pub mod gen;
pub mod input;
pub mod json;
pub mod time;

use rust_decimal::Decimal;

pub use catalog::*;
pub use json::{output_to_json_string, Obj, J};

use input::{Body, GrantInput, Message, Refusal};
use json::obj;
use time::{format_span, format_ts, period_containing};

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Live,
    Expired,
    Voided,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Live => "live",
            Status::Expired => "expired",
            Status::Voided => "voided",
        }
    }
}

/// Burn order key (§5.5): priority, expiry soonest (none last), cost basis, grant time, grant
/// id bytes; the serial only separates grants that agree on all of that.
type BurnKey = (i64, (bool, i64), Decimal, i64, String, u64);

#[derive(Clone, Debug)]
struct Grant {
    /// Account-local creation number: how holds, charges and lots refer to a grant.
    serial: u64,
    grant_id: String,
    credit_type: String,
    source: String,
    status: Status,
    amount: Decimal,
    remaining: Decimal,
    held: Decimal,
    priority: i64,
    effective_at: i64,
    expires_at: Option<i64>,
    scope: Option<Vec<String>>,
    cost_basis: Decimal,
    granted_at: i64,
    /// Allowance grants made at a period start: how much rolls over at expiry, the cap of
    /// the plan entry that made it (SEMANTICS §5.3); 0 for every other grant.
    rollover_cap: Decimal,
    warned: bool,
}

impl Grant {
    fn key(&self) -> BurnKey {
        (
            self.priority,
            (self.expires_at.is_none(), self.expires_at.unwrap_or(0)),
            self.cost_basis,
            self.granted_at,
            self.grant_id.clone(),
            self.serial,
        )
    }

    /// §5.4 eligibility; `meter = None` means any scope (negative adjustments).
    fn eligible(&self, credit_type: &str, meter: Option<&str>, ts: i64) -> bool {
        self.credit_type == credit_type
            && self.status == Status::Live
            && self.effective_at <= ts
            && self.expires_at.is_none_or(|e| ts < e)
            && match (&self.scope, meter) {
                (Some(scope), Some(m)) => scope.iter().any(|s| s == m),
                _ => true,
            }
    }

    fn free(&self) -> Decimal {
        self.remaining - self.held
    }
}

#[derive(Clone, Debug)]
struct Hold {
    /// Shares the account's numbering with grants (SEMANTICS §14).
    serial: u64,
    hold_id: String,
    meter: String,
    /// `(grant serial, credits held on it)`.
    claims: Vec<(u64, Decimal)>,
    expires_at: i64,
}

impl Hold {
    fn credits(&self) -> Decimal {
        self.claims.iter().map(|(_, c)| *c).sum()
    }
}

#[derive(Clone, Debug)]
struct Line {
    kind: &'static str,
    meter: Option<String>,
    credit_type: String,
    quantity: Option<Decimal>,
    credits: Decimal,
    /// Exact; rounded only when emitted.
    money: Decimal,
    version: u64,
    flush_due: Option<i64>,
}

#[derive(Clone, Debug, Default)]
struct Ledger {
    granted: Decimal,
    consumed: Decimal,
    expired: Decimal,
    voided: Decimal,
    adjusted: Decimal,
    settled: Decimal,
    returned: Decimal,
}

#[derive(Clone, Debug)]
struct Lot {
    serial: u64,
    grant_id: String,
    key: BurnKey,
    cost_basis: Decimal,
    recognized_credits: Decimal,
    breakage_credits: Decimal,
}

/// Revenue of the current period for one credit type (§12), exact.
#[derive(Clone, Debug, Default)]
struct Revenue {
    opening: Decimal,
    granted: Decimal,
    recognized: Decimal,
    breakage: Decimal,
    removed: Decimal,
    lots: Vec<Lot>,
}

#[derive(Clone, Debug)]
struct Balance {
    credit_type: String,
    debt: Decimal,
    ledger: Ledger,
    revenue: Revenue,
    /// This period's allowance + top-ups + purchases: the base of percent alerts (§10.5).
    percent_base: Decimal,
    /// Per closed period (by its start): the debt its close settled, less what reversals of
    /// its charges took back (§9). Kept for ever: the model has no memory to save.
    settled_periods: Vec<(i64, Decimal)>,
    /// §5.6: the start (ms) of the window of the last consumption, the credits consumed in it
    /// and in the window just before it.
    burn_start: i64,
    burn_now: Decimal,
    burn_before: Decimal,
}

/// §5.6: the credits burned over the trailing window at `t` and the instant `remaining` runs
/// out at that rate. The estimate counts the window before the last one by the part of it the
/// trailing window still covers, and is floored to 10^-9 credit; the runway in whole ms.
fn runway(b: &Balance, window: i64, t: i64, remaining: Decimal) -> (Decimal, Option<i64>) {
    let nano = Decimal::new(1, 9);
    let w = Decimal::from(window);
    let t = t.max(b.burn_start);
    let end = b.burn_start + window;
    let weighted = if t < end {
        b.burn_now * w + b.burn_before * Decimal::from(end - t)
    } else if t < end + window {
        b.burn_now * Decimal::from(end + window - t)
    } else {
        Decimal::ZERO
    };
    // Floor to 10^-9 in integer units, so no division is ever rounded.
    let units = |d: Decimal| -> i128 { (d / nano).trunc().mantissa() };
    let burned_units = units(weighted) / i128::from(window);
    let burned = Decimal::from_i128_with_scale(burned_units, 9).normalize();
    let out = if remaining <= Decimal::ZERO {
        Some(t)
    } else if burned_units == 0 {
        None
    } else {
        let ms = units(remaining) * i128::from(window) / burned_units;
        let at = i128::from(t) + ms;
        (at <= 253_402_300_799_999).then_some(at as i64)
    };
    (burned, out)
}

#[derive(Clone, Debug)]
struct AlertState {
    credit_type: String,
    /// The alert's name, or `depleted`.
    name: String,
    below: bool,
    lows: u64,
    recoveries: u64,
}

#[derive(Clone, Debug)]
struct Draw {
    serial: u64,
    grant_id: String,
    key: BurnKey,
    cost_basis: Decimal,
    amount: Decimal,
}

#[derive(Clone, Debug)]
struct Charge {
    meter: String,
    credit_type: String,
    /// Billed quantity `q'`.
    quantity: Decimal,
    /// Credits charged: drawn + overage (never the unpaid part of a commit).
    credits: Decimal,
    draws: Vec<Draw>,
    overage: Decimal,
    overage_money: Decimal,
    overage_price: Decimal,
    period_start: i64,
    reversed: bool,
}

#[derive(Clone, Debug)]
enum Record {
    Command,
    RejectedUsage,
    Charge(Charge),
}

#[derive(Clone, Debug)]
struct Seen {
    id: String,
    ts: i64,
    record: Record,
}

#[derive(Clone, Debug)]
struct Account {
    id: String,
    plan: String,
    policy_override: Option<(Policy, J)>,
    clock: i64,
    period_start: i64,
    period_end: i64,
    grants: Vec<Grant>,
    holds: Vec<Hold>,
    /// Invoice lines of the current period only.
    lines: Vec<Line>,
    /// Catalog order.
    balances: Vec<Balance>,
    alerts: Vec<AlertState>,
    seen: Vec<Seen>,
    topups_in_period: u64,
    last_topup_ts: Option<i64>,
    /// Grant and hold serials: one sequence, from 1, never reused (§14).
    next_serial: u64,
    /// 1 for the account's first period, +1 at every period opened (§14).
    period_number: u64,
}

/// The reference model: catalog, tick clock, accounts sorted by id.
pub struct Model {
    catalog: ModelCatalog,
    tick_clock: Option<i64>,
    accounts: Vec<Account>,
}

/// What one input is processed with: the catalog, the input's stream sequence, the outputs.
struct Cx<'c> {
    cat: &'c ModelCatalog,
    seq: u64,
    subject: String,
    /// When the stream received the input (`None`: no future bound).
    received: Option<i64>,
    out: Vec<Obj>,
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Exact product. Panics if `rust_decimal` would have to round (amounts far beyond what the
/// generator produces): a silent rounding would make the model wrong without anyone noticing.
fn mul(a: Decimal, b: Decimal) -> Decimal {
    checked_exact_mul(a, b).expect("model arithmetic must stay exact")
}

fn checked_exact_mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    // Built from the exact integer product, so `rust_decimal` never gets a chance to round.
    let a = a.normalize();
    let b = b.normalize();
    let mantissa = a.mantissa().checked_mul(b.mantissa())?;
    Decimal::try_from_i128_with_scale(mantissa, a.scale() + b.scale()).ok()
}

fn pos(value: Decimal) -> Decimal {
    value.max(Decimal::ZERO)
}

fn cost_limit() -> Decimal {
    Decimal::from(1_000_000_000_000_000i64)
}

/// Billed quantity and cost of `quantity` units of `meter` at `ts` (§13, unit rate only).
fn price(
    cat: &ModelCatalog,
    meter: &str,
    ts: i64,
    quantity: Decimal,
) -> Result<(Decimal, Decimal), &'static str> {
    let meter = cat.meter(meter).expect("meters are validated on input");
    let version = meter
        .versions
        .iter()
        .rfind(|v| v.effective_from_ms <= ts)
        .ok_or("no_price_in_force")?;
    let billed = match version.increment {
        Some(step) => {
            let rest = quantity % step;
            if rest.is_zero() {
                quantity
            } else {
                quantity - rest + step
            }
        }
        None => quantity,
    };
    let mut cost = checked_exact_mul(billed, version.rate).ok_or("cost_overflow")?;
    if let Some(minimum) = version.minimum {
        if quantity > Decimal::ZERO {
            cost = cost.max(minimum);
        }
    }
    let scale = cat
        .credit_type(&meter.credit_type)
        .expect("catalog is valid")
        .scale;
    let cost = meter.rounding.round(cost, scale);
    if cost > cost_limit() {
        return Err("cost_overflow");
    }
    Ok((billed, cost))
}

fn header(kind: &str, id: String, account: &str, seq: u64, ts: i64) -> Obj {
    obj(vec![
        ("type", J::s(kind)),
        ("id", J::s(id)),
        ("account", J::s(account)),
        ("seq", J::Int(seq as i64)),
        ("ts", J::s(format_ts(ts))),
    ])
}

impl Cx<'_> {
    fn emit(&mut self, kind: &str, id: String, account: &str, ts: i64, fields: Vec<(&str, J)>) {
        let mut o = header(kind, id, account, self.seq, ts);
        o.extend(obj(fields));
        self.out.push(o);
    }

    fn money(&self, exact: Decimal) -> Decimal {
        self.cat
            .currency
            .rounding
            .round(exact, self.cat.currency.scale)
    }
}

// ---------------------------------------------------------------------------------------------
// Account queries
// ---------------------------------------------------------------------------------------------

impl Account {
    fn plan<'c>(&self, cat: &'c ModelCatalog) -> &'c Plan {
        cat.plan(&self.plan).expect("plans are validated on input")
    }

    fn policy(&self, cat: &ModelCatalog) -> Policy {
        match &self.policy_override {
            Some((policy, _)) => policy.clone(),
            None => self.plan(cat).policy.clone(),
        }
    }

    /// Indices of grants in burn order.
    fn burn_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.grants.len()).collect();
        order.sort_by_key(|&i| self.grants[i].key());
        order
    }

    fn grant_by_serial(&mut self, serial: u64) -> Option<&mut Grant> {
        self.grants.iter_mut().find(|g| g.serial == serial)
    }

    /// `Σ remaining − debt` (§5.4).
    fn balance(&self, credit_type: &str) -> Decimal {
        let remaining: Decimal = self
            .grants
            .iter()
            .filter(|g| g.credit_type == credit_type)
            .map(|g| g.remaining)
            .sum();
        remaining - self.debt(credit_type)
    }

    fn debt(&self, credit_type: &str) -> Decimal {
        self.balances
            .iter()
            .find(|b| b.credit_type == credit_type)
            .map_or(Decimal::ZERO, |b| b.debt)
    }

    fn spendable(&self, credit_type: &str, meter: Option<&str>, ts: i64) -> Decimal {
        self.grants
            .iter()
            .filter(|g| g.eligible(credit_type, meter, ts))
            .map(|g| g.free())
            .sum()
    }

    fn deferred(&self, credit_type: &str) -> Decimal {
        self.grants
            .iter()
            .filter(|g| g.credit_type == credit_type && g.status == Status::Live)
            .map(|g| mul(g.remaining, g.cost_basis))
            .sum()
    }

    /// The balance entry of a credit type, created in catalog order when first needed.
    fn entry(&mut self, cat: &ModelCatalog, credit_type: &str) -> &mut Balance {
        if !self.balances.iter().any(|b| b.credit_type == credit_type) {
            self.balances.push(Balance {
                credit_type: credit_type.to_string(),
                debt: Decimal::ZERO,
                ledger: Ledger::default(),
                revenue: Revenue::default(),
                percent_base: Decimal::ZERO,
                settled_periods: Vec::new(),
                burn_start: 0,
                burn_now: Decimal::ZERO,
                burn_before: Decimal::ZERO,
            });
            self.balances
                .sort_by_key(|b| cat.credit_type_index(&b.credit_type));
        }
        self.balances
            .iter_mut()
            .find(|b| b.credit_type == credit_type)
            .expect("just inserted")
    }

    fn overage_price_now(&self, cat: &ModelCatalog) -> Decimal {
        match self.policy(cat) {
            Policy::Overage { price, .. } => price,
            Policy::AutoTopup(TopupRule {
                fallback: Fallback::Overage { price, .. },
                ..
            }) => price,
            _ => Decimal::ZERO,
        }
    }

    /// §11: `line:<account>:<period number>:<kind>:<meter or ->:<credit type>`.
    fn line_id(&self, line: &Line) -> String {
        format!(
            "line:{}:{}:{}:{}:{}",
            self.id,
            self.period_number,
            line.kind,
            line.meter.as_deref().unwrap_or("-"),
            line.credit_type
        )
    }

    fn seen_index(&self, id: &str, tick_clock: Option<i64>, window: i64) -> Option<usize> {
        self.seen
            .iter()
            .position(|s| s.id == id && tick_clock.is_none_or(|t| t <= s.ts + window))
    }
}

fn lot<'a>(
    revenue: &'a mut Revenue,
    serial: u64,
    grant_id: &str,
    key: BurnKey,
    basis: Decimal,
) -> &'a mut Lot {
    if !revenue.lots.iter().any(|l| l.serial == serial) {
        revenue.lots.push(Lot {
            serial,
            grant_id: grant_id.to_string(),
            key,
            cost_basis: basis,
            recognized_credits: Decimal::ZERO,
            breakage_credits: Decimal::ZERO,
        });
    }
    revenue
        .lots
        .iter_mut()
        .find(|l| l.serial == serial)
        .expect("just inserted")
}

// ---------------------------------------------------------------------------------------------
// Invoice lines
// ---------------------------------------------------------------------------------------------

/// Adds to a line of the current period (creating it) and schedules its flush (§10.4).
#[allow(clippy::too_many_arguments)]
fn touch_line(
    cx: &Cx,
    a: &mut Account,
    kind: &'static str,
    meter: Option<&str>,
    credit_type: &str,
    quantity: Option<Decimal>,
    credits: Decimal,
    money: Decimal,
) {
    // The account's pending flush if there is one (a change joins it, even one made at the
    // flush instant by a transition ranked before the flush), else the first multiple of the
    // interval strictly after the clock (§10.4).
    let interval = cx.cat.rules.flush_interval_ms;
    let due = a
        .lines
        .iter()
        .filter_map(|l| l.flush_due)
        .min()
        .unwrap_or((a.clock.div_euclid(interval) + 1) * interval);
    let index =
        match a.lines.iter().position(|l| {
            l.kind == kind && l.meter.as_deref() == meter && l.credit_type == credit_type
        }) {
            Some(i) => i,
            None => {
                a.lines.push(Line {
                    kind,
                    meter: meter.map(str::to_string),
                    credit_type: credit_type.to_string(),
                    quantity: quantity.map(|_| Decimal::ZERO),
                    credits: Decimal::ZERO,
                    money: Decimal::ZERO,
                    version: 0,
                    flush_due: None,
                });
                a.lines.len() - 1
            }
        };
    let line = &mut a.lines[index];
    if let (Some(total), Some(q)) = (line.quantity.as_mut(), quantity) {
        *total += q;
    }
    line.credits += credits;
    line.money += money;
    if line.flush_due.is_none() {
        line.flush_due = Some(due);
    }
}

fn emit_line(cx: &mut Cx, a: &mut Account, index: usize, final_: bool, ts: i64, period_end: i64) {
    let line_id = a.line_id(&a.lines[index]);
    let line = &mut a.lines[index];
    line.version += 1;
    line.flush_due = None;
    let line = line.clone();
    let money = cx.money(line.money);
    cx.emit(
        "invoice.line",
        format!("{line_id}:v{}", line.version),
        &a.id,
        ts,
        vec![
            ("line_id", J::s(line_id.clone())),
            ("version", J::Int(line.version as i64)),
            ("final", J::Bool(final_)),
            ("period_start", J::s(format_ts(a.period_start))),
            ("period_end", J::s(format_ts(period_end))),
            ("kind", J::s(line.kind)),
            ("meter", J::s(line.meter.as_deref().unwrap_or("-"))),
            ("credit_type", J::s(line.credit_type.clone())),
            ("quantity", J::opt_d(line.quantity)),
            ("credits", J::d(line.credits)),
            ("money", J::d(money)),
            ("currency", J::s(cx.cat.currency.code.clone())),
        ],
    );
}

/// The kinds of invoice lines in the order of §11's table.
const LINE_KINDS: [&str; 8] = [
    "usage",
    "overage",
    "overage_repaid",
    "topup",
    "allowance",
    "plan_fee",
    "adjustment",
    "reversal",
];

/// Line indices in emission order (§11): table order of the kind, then the meter in catalog
/// order, then the credit type in catalog order.
fn lines_in_order(cat: &ModelCatalog, a: &Account) -> Vec<usize> {
    let mut order: Vec<usize> = (0..a.lines.len()).collect();
    order.sort_by_key(|&i| {
        let line = &a.lines[i];
        (
            LINE_KINDS.iter().position(|k| *k == line.kind),
            line.meter
                .as_deref()
                .map_or(usize::MAX, |m| cat.meter_index(m)),
            cat.credit_type_index(&line.credit_type),
        )
    });
    order
}

// ---------------------------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------------------------

/// Which ledger total a new grant's amount goes to, and how its value enters revenue.
#[derive(Clone, Debug)]
enum Origin {
    /// `granted` += amount; revenue `granted` += amount × basis (commands, allowance, top-up).
    Granted,
    /// `adjusted` += amount (positive adjustments; cost basis 0).
    Adjusted,
    /// Rollover: neither ledger nor revenue moves (value moves from the expiring grant).
    Rollover,
    /// Reversal grant: `returned` += amount; revenue `recognized` −= amount × basis, booked on
    /// the new grant's own lot (`on_lot`; not for the overage rest, whose basis is 0).
    Returned { on_lot: bool },
}

struct NewGrant {
    grant_id: String,
    credit_type: String,
    source: &'static str,
    amount: Decimal,
    priority: i64,
    effective_at: i64,
    expires_at: Option<i64>,
    scope: Option<Vec<String>>,
    cost_basis: Decimal,
    granted_at: i64,
    rollover_cap: Decimal,
}

/// Adds credits (§5.2): debt is paid first, the grant keeps the rest. Returns its serial.
fn add_grant(cx: &mut Cx, a: &mut Account, new: NewGrant, origin: Origin) -> u64 {
    let cat = cx.cat;
    let serial = a.next_serial;
    a.next_serial += 1;
    let overage_price = a.overage_price_now(cat);
    let grant = Grant {
        serial,
        grant_id: new.grant_id.clone(),
        credit_type: new.credit_type.clone(),
        source: new.source.to_string(),
        status: Status::Live,
        amount: new.amount,
        remaining: new.amount,
        held: Decimal::ZERO,
        priority: new.priority,
        effective_at: new.effective_at,
        expires_at: new.expires_at,
        scope: new.scope,
        cost_basis: new.cost_basis,
        granted_at: new.granted_at,
        rollover_cap: new.rollover_cap,
        warned: false,
    };
    let key = grant.key();
    let basis = new.cost_basis;
    let amount = new.amount;
    let entry = a.entry(cat, &new.credit_type);
    let repaid = amount.min(entry.debt);
    entry.debt -= repaid;
    match &origin {
        Origin::Granted => {
            entry.ledger.granted += amount;
            entry.revenue.granted += mul(amount, basis);
        }
        Origin::Adjusted => {
            entry.ledger.adjusted += amount;
            entry.revenue.granted += mul(amount, basis);
        }
        Origin::Rollover => {}
        Origin::Returned { on_lot } => {
            entry.ledger.returned += amount;
            entry.revenue.recognized -= mul(amount, basis);
            if *on_lot {
                lot(
                    &mut entry.revenue,
                    serial,
                    &new.grant_id,
                    key.clone(),
                    basis,
                )
                .recognized_credits -= amount;
            }
        }
    }
    if ["allowance", "topup", "purchase"].contains(&new.source) {
        entry.percent_base += amount;
    }
    if repaid > Decimal::ZERO {
        entry.revenue.recognized += mul(repaid, basis);
        lot(&mut entry.revenue, serial, &new.grant_id, key, basis).recognized_credits += repaid;
    }
    let mut grant = grant;
    grant.remaining = amount - repaid;
    a.grants.push(grant);
    if repaid > Decimal::ZERO {
        touch_line(
            cx,
            a,
            "overage_repaid",
            None,
            &new.credit_type,
            None,
            -repaid,
            -mul(repaid, overage_price),
        );
    }
    serial
}

/// Removes a grant's claim from every hold (the grant expired or was voided).
fn drop_claims(a: &mut Account, serial: u64) {
    for hold in &mut a.holds {
        hold.claims.retain(|(s, _)| *s != serial);
    }
}

// ---------------------------------------------------------------------------------------------
// Periods
// ---------------------------------------------------------------------------------------------

/// Opens the period `[a.period_start, a.period_end)`: a new period number, counters reset, the
/// plan's allowance granted (effective at the period start, §5.3) and its fee booked (§11).
fn open_period(cx: &mut Cx, a: &mut Account) {
    let cat = cx.cat;
    let plan = a.plan(cat);
    let start = a.period_start;
    a.period_number += 1;
    // The per-period cap resets; the cooldown runs from the last top-up, whatever its period.
    a.topups_in_period = 0;
    for entry in &mut a.balances {
        entry.percent_base = Decimal::ZERO;
    }
    for (n, allowance) in plan.allowances.iter().enumerate() {
        add_grant(
            cx,
            a,
            NewGrant {
                grant_id: format!("allowance-{start}-{}", n + 1),
                credit_type: allowance.credit_type.clone(),
                source: "allowance",
                amount: allowance.amount,
                priority: allowance.priority,
                effective_at: start,
                expires_at: Some(a.period_end),
                scope: allowance.scope.clone(),
                cost_basis: Decimal::ZERO,
                granted_at: start,
                rollover_cap: allowance.rollover_cap,
            },
            Origin::Granted,
        );
        touch_line(
            cx,
            a,
            "allowance",
            None,
            &allowance.credit_type,
            None,
            allowance.amount,
            Decimal::ZERO,
        );
    }
    if plan.price > Decimal::ZERO {
        let first_type = cat.credit_types[0].name.clone();
        touch_line(
            cx,
            a,
            "plan_fee",
            None,
            &first_type,
            None,
            Decimal::ZERO,
            plan.price,
        );
    }
}

/// §10.3 steps 1–4 at `at` (the period end, or a plan switch).
fn close_period(cx: &mut Cx, a: &mut Account, at: i64) {
    let cat = cx.cat;
    let opened = a.period_start;
    for entry in &mut a.balances {
        if entry.debt > Decimal::ZERO {
            entry.settled_periods.push((opened, entry.debt));
        }
        entry.ledger.settled += entry.debt;
        entry.debt = Decimal::ZERO;
    }
    for index in lines_in_order(cx.cat, a) {
        emit_line(cx, a, index, true, at, at);
    }
    a.lines.clear();
    let types: Vec<String> = a.balances.iter().map(|b| b.credit_type.clone()).collect();
    for credit_type in types {
        let closing = a.deferred(&credit_type);
        let entry = a.entry(cat, &credit_type);
        let rev = std::mem::take(&mut entry.revenue);
        entry.revenue.opening = closing;
        let mut lots: Vec<&Lot> = rev
            .lots
            .iter()
            .filter(|l| !l.recognized_credits.is_zero() || !l.breakage_credits.is_zero())
            .collect();
        lots.sort_by_key(|l| l.key.clone());
        let figures = [
            rev.opening,
            rev.granted,
            rev.recognized,
            rev.breakage,
            rev.removed,
            closing,
        ];
        // Only a credit type with money to report (§10.3 step 3).
        if figures.iter().all(|f| f.is_zero()) {
            continue;
        }
        let lots_json = lots
            .iter()
            .map(|l| {
                J::Obj(obj(vec![
                    ("grant_id", J::s(l.grant_id.clone())),
                    ("cost_basis", J::d(l.cost_basis)),
                    ("recognized_credits", J::d(l.recognized_credits)),
                    ("recognized", J::d(mul(l.recognized_credits, l.cost_basis))),
                    ("breakage_credits", J::d(l.breakage_credits)),
                    ("breakage", J::d(mul(l.breakage_credits, l.cost_basis))),
                ]))
            })
            .collect();
        cx.emit(
            "revenue.period",
            format!("revenue:{}:{}:{}", a.id, a.period_number, credit_type),
            &a.id.clone(),
            at,
            vec![
                ("period_start", J::s(format_ts(a.period_start))),
                ("period_end", J::s(format_ts(at))),
                ("credit_type", J::s(credit_type.clone())),
                ("opening_deferred", J::d(rev.opening)),
                ("granted", J::d(rev.granted)),
                ("recognized", J::d(rev.recognized)),
                ("breakage", J::d(rev.breakage)),
                ("removed", J::d(rev.removed)),
                ("closing_deferred", J::d(closing)),
                ("lots", J::Arr(lots_json)),
            ],
        );
    }
    a.grants
        .retain(|g| g.status == Status::Live && !(g.remaining.is_zero() && g.held.is_zero()));
}

// ---------------------------------------------------------------------------------------------
// Transitions (§10)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Transition {
    HoldExpiry(String),
    GrantExpiry(u64),
    PeriodClose,
    Flush,
    Warning(u64),
}

/// The next transition due at or before `limit`: earliest due time, then hold expiries, grant
/// expiries, the period close, flushes, warnings; holds by id and grants in burn order.
fn next_transition(cat: &ModelCatalog, a: &Account, limit: i64) -> Option<(i64, Transition)> {
    let mut candidates: Vec<((i64, u8, usize), Transition)> = Vec::new();
    let mut holds: Vec<&Hold> = a.holds.iter().collect();
    holds.sort_by(|x, y| x.hold_id.cmp(&y.hold_id));
    for (i, hold) in holds.iter().enumerate() {
        candidates.push((
            (hold.expires_at, 0, i),
            Transition::HoldExpiry(hold.hold_id.clone()),
        ));
    }
    let lead = a.plan(cat).expiring_lead_ms;
    for (i, &g) in a.burn_order().iter().enumerate() {
        let grant = &a.grants[g];
        if grant.status != Status::Live {
            continue;
        }
        if let Some(expires_at) = grant.expires_at {
            candidates.push(((expires_at, 1, i), Transition::GrantExpiry(grant.serial)));
            if let (Some(lead), false) = (lead, grant.warned) {
                candidates.push(((expires_at - lead, 4, i), Transition::Warning(grant.serial)));
            }
        }
    }
    candidates.push(((a.period_end, 2, 0), Transition::PeriodClose));
    if let Some(due) = a.lines.iter().filter_map(|l| l.flush_due).min() {
        candidates.push(((due, 3, 0), Transition::Flush));
    }
    candidates
        .into_iter()
        .filter(|((due, _, _), _)| *due <= limit)
        .min_by_key(|(key, _)| *key)
        .map(|((due, _, _), t)| (due, t))
}

/// Advances the account to `target` (§3): every transition due at or before it, in order.
/// A transition already due when it was made (before the account's clock) runs at the clock,
/// with the clock as its time (§10.6).
fn advance(cx: &mut Cx, a: &mut Account, target: i64) {
    while let Some((due, transition)) = next_transition(cx.cat, a, target) {
        let at = due.max(a.clock);
        a.clock = at;
        run_transition(cx, a, at, transition);
        // §10.5: once after every transition due at this instant.
        let more_now =
            next_transition(cx.cat, a, target).is_some_and(|(next, _)| next.max(a.clock) == at);
        if !more_now {
            evaluate_alerts(cx, a, at);
        }
    }
    a.clock = a.clock.max(target);
}

fn run_transition(cx: &mut Cx, a: &mut Account, due: i64, transition: Transition) {
    let cat = cx.cat;
    match transition {
        Transition::HoldExpiry(hold_id) => {
            let serial = a
                .holds
                .iter()
                .find(|h| h.hold_id == hold_id)
                .expect("expiring holds exist")
                .serial;
            let released = release_hold(a, &hold_id);
            cx.emit(
                "hold.expired",
                format!("hold:{}:{}:{}:expired", a.id, hold_id, serial),
                &a.id.clone(),
                due,
                vec![
                    ("hold_id", J::s(hold_id.clone())),
                    ("credits_released", J::d(released)),
                ],
            );
        }
        Transition::GrantExpiry(serial) => expire_grant(cx, a, serial, due),
        Transition::PeriodClose => {
            close_period(cx, a, due);
            let plan = a.plan(cat);
            a.period_start = due;
            a.period_end = period_containing(plan.period, due).1;
            open_period(cx, a);
        }
        Transition::Flush => {
            for index in lines_in_order(cx.cat, a) {
                if a.lines[index].flush_due.is_some_and(|d| d <= due) {
                    let end = a.period_end;
                    emit_line(cx, a, index, false, due, end);
                }
            }
        }
        Transition::Warning(serial) => {
            let grant = a.grant_by_serial(serial).expect("warned grants exist");
            grant.warned = true;
            let grant = grant.clone();
            if grant.remaining > Decimal::ZERO {
                cx.emit(
                    "grant.expiring",
                    format!("expiring:{}:{}:{}", a.id, grant.grant_id, grant.serial),
                    &a.id,
                    due,
                    vec![
                        ("grant_id", J::s(grant.grant_id.clone())),
                        ("credit_type", J::s(grant.credit_type.clone())),
                        ("remaining", J::d(grant.remaining)),
                        (
                            "expires_at",
                            J::opt_s(grant.expires_at.map(format_ts).as_deref()),
                        ),
                    ],
                );
            }
        }
    }
}

/// §10.2 with the allowance rollover of §5.3.
fn expire_grant(cx: &mut Cx, a: &mut Account, serial: u64, at: i64) {
    let cat = cx.cat;
    drop_claims(a, serial);
    let grant = a.grant_by_serial(serial).expect("expiring grants exist");
    let remaining = grant.remaining;
    grant.remaining = Decimal::ZERO;
    grant.held = Decimal::ZERO;
    grant.status = Status::Expired;
    let grant = grant.clone();
    let rolled = remaining.min(grant.rollover_cap);
    let expired = remaining - rolled;
    let entry = a.entry(cat, &grant.credit_type);
    entry.ledger.expired += expired;
    entry.revenue.breakage += mul(expired, grant.cost_basis);
    if !expired.is_zero() {
        lot(
            &mut entry.revenue,
            serial,
            &grant.grant_id,
            grant.key(),
            grant.cost_basis,
        )
        .breakage_credits += expired;
    }
    if rolled > Decimal::ZERO {
        let plan = a.plan(cat);
        add_grant(
            cx,
            a,
            NewGrant {
                grant_id: format!("rollover-{}", grant.grant_id),
                credit_type: grant.credit_type.clone(),
                source: "rollover",
                amount: rolled,
                priority: grant.priority,
                effective_at: at,
                expires_at: Some(period_containing(plan.period, at).1),
                scope: grant.scope.clone(),
                cost_basis: grant.cost_basis,
                granted_at: at,
                rollover_cap: Decimal::ZERO,
            },
            Origin::Rollover,
        );
    }
    if expired > Decimal::ZERO {
        cx.emit(
            "grant.expired",
            format!("expired:{}:{}:{}", a.id, grant.grant_id, serial),
            &a.id.clone(),
            at,
            vec![
                ("grant_id", J::s(grant.grant_id.clone())),
                ("credit_type", J::s(grant.credit_type.clone())),
                ("credits", J::d(expired)),
                ("breakage", J::d(mul(expired, grant.cost_basis))),
            ],
        );
    }
}

/// Returns a hold's credits to its grants and removes it; the credits released.
fn release_hold(a: &mut Account, hold_id: &str) -> Decimal {
    let index = a
        .holds
        .iter()
        .position(|h| h.hold_id == hold_id)
        .expect("released holds exist");
    let hold = a.holds.remove(index);
    for (serial, credits) in &hold.claims {
        if let Some(grant) = a.grant_by_serial(*serial) {
            grant.held -= *credits;
        }
    }
    hold.credits()
}

// ---------------------------------------------------------------------------------------------
// Alerts (§10.5)
// ---------------------------------------------------------------------------------------------

fn evaluate_alerts(cx: &mut Cx, a: &mut Account, ts: i64) {
    let cat = cx.cat;
    let plan = a.plan(cat);
    let types: Vec<String> = a.balances.iter().map(|b| b.credit_type.clone()).collect();
    for credit_type in types {
        let balance = a.balance(&credit_type);
        let base = a
            .balances
            .iter()
            .find(|b| b.credit_type == credit_type)
            .map_or(Decimal::ZERO, |b| b.percent_base);
        let mut checks: Vec<(String, Option<Decimal>, bool)> = Vec::new();
        for alert in plan
            .alerts
            .iter()
            .filter(|al| al.credit_type == credit_type)
        {
            let threshold = match alert.threshold {
                Threshold::Amount(amount) => amount,
                Threshold::Percent(percent) => mul(percent, base) / Decimal::from(100),
            };
            checks.push((alert.name.clone(), Some(threshold), balance < threshold));
        }
        checks.push(("depleted".to_string(), None, balance <= Decimal::ZERO));
        // The runway alert (§10.5), judged at the account's clock.
        let mut runway_low: Option<(i64, Decimal, i64)> = None;
        if let Some(limit) = plan.runway_alert_ms {
            let t = a.clock.max(ts);
            let held: Decimal = a
                .grants
                .iter()
                .filter(|g| g.credit_type == credit_type)
                .map(|g| g.held)
                .sum();
            let entry = a
                .balances
                .iter()
                .find(|b| b.credit_type == credit_type)
                .expect("a balance being evaluated exists");
            let (burned, out) = runway(entry, cat.rules.runway_window_ms, t, balance - held);
            runway_low = Some((limit, burned, out.unwrap_or(t)));
            checks.push((
                "runway".to_string(),
                None,
                out.is_some_and(|end| end - t < limit),
            ));
        }
        for (name, threshold, below_now) in checks {
            let index = match a
                .alerts
                .iter()
                .position(|s| s.credit_type == credit_type && s.name == name)
            {
                Some(i) => i,
                None => {
                    a.alerts.push(AlertState {
                        credit_type: credit_type.clone(),
                        name: name.clone(),
                        below: false,
                        lows: 0,
                        recoveries: 0,
                    });
                    a.alerts.len() - 1
                }
            };
            let state = &mut a.alerts[index];
            if !state.below && below_now {
                state.below = true;
                state.lows += 1;
                let n = state.lows;
                let id = format!("alert:{}:{}:{}:low:{}", a.id, credit_type, name, n);
                match threshold {
                    None if name == "runway" => {
                        let (limit, burned, out) = runway_low.expect("a runway check");
                        cx.emit(
                            "balance.runway_low",
                            id,
                            &a.id,
                            ts,
                            vec![
                                ("credit_type", J::s(credit_type.clone())),
                                ("threshold", J::s("runway".to_string())),
                                ("runway_alert", J::s(format_span(limit))),
                                ("burned", J::d(burned)),
                                ("runs_out_at", J::s(format_ts(out))),
                                ("balance", J::d(balance)),
                            ],
                        )
                    }
                    Some(threshold) => cx.emit(
                        "balance.low",
                        id,
                        &a.id,
                        ts,
                        vec![
                            ("credit_type", J::s(credit_type.clone())),
                            ("threshold", J::s(name.clone())),
                            ("threshold_amount", J::d(threshold)),
                            ("balance", J::d(balance)),
                        ],
                    ),
                    None => cx.emit(
                        "balance.depleted",
                        id,
                        &a.id,
                        ts,
                        vec![
                            ("credit_type", J::s(credit_type.clone())),
                            ("balance", J::d(balance)),
                        ],
                    ),
                }
            } else if state.below && !below_now {
                state.below = false;
                state.recoveries += 1;
                let n = state.recoveries;
                cx.emit(
                    "balance.recovered",
                    format!("alert:{}:{}:{}:recovered:{}", a.id, credit_type, name, n),
                    &a.id,
                    ts,
                    vec![
                        ("credit_type", J::s(credit_type.clone())),
                        ("threshold", J::s(name.clone())),
                        ("balance", J::d(balance)),
                    ],
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Charging (§6, §7, §8 commit)
// ---------------------------------------------------------------------------------------------

/// What pays when the policy decides, per §7: `reject`, or `overage` with its limit and price.
#[derive(Clone, Debug)]
enum Base {
    Reject,
    Overage { limit: Decimal, price: Decimal },
}

/// The policy's base rule and its top-up rule, for a charge in `credit_type` (§7: an
/// auto top-up rule of another credit type leaves only its fallback).
fn policy_for(policy: &Policy, credit_type: &str) -> (Base, Option<TopupRule>) {
    match policy {
        Policy::Reject => (Base::Reject, None),
        Policy::Overage { limit, price } => (
            Base::Overage {
                limit: *limit,
                price: *price,
            },
            None,
        ),
        Policy::AutoTopup(rule) => {
            let base = match &rule.fallback {
                Fallback::Reject => Base::Reject,
                Fallback::Overage { limit, price } => Base::Overage {
                    limit: *limit,
                    price: *price,
                },
            };
            let rule = (rule.credit_type == credit_type).then(|| rule.clone());
            (base, rule)
        }
    }
}

fn topup_allowed(a: &Account, rule: &TopupRule, ts: i64) -> bool {
    a.topups_in_period < rule.max_per_period
        && a.last_topup_ts
            .is_none_or(|last| ts >= last + rule.cooldown_ms)
}

/// One top-up (§7); `nth` counts the top-ups of this input (the second gets a `-2` suffix).
fn topup(cx: &mut Cx, a: &mut Account, rule: &TopupRule, cause_id: &str, ts: i64, nth: &mut u32) {
    let credits = match rule.amount {
        TopupAmount::Fixed(amount) => amount,
        TopupAmount::Target(target) => target - a.balance(&rule.credit_type),
    };
    if credits <= Decimal::ZERO {
        return;
    }
    *nth += 1;
    let grant_id = if *nth == 1 {
        format!("topup-{cause_id}")
    } else {
        format!("topup-{cause_id}-{nth}")
    };
    a.topups_in_period += 1;
    a.last_topup_ts = Some(ts);
    let serial = add_grant(
        cx,
        a,
        NewGrant {
            grant_id: grant_id.clone(),
            credit_type: rule.credit_type.clone(),
            source: "topup",
            amount: credits,
            priority: rule.priority,
            effective_at: ts,
            expires_at: None,
            scope: None,
            cost_basis: rule.price,
            granted_at: ts,
            rollover_cap: Decimal::ZERO,
        },
        Origin::Granted,
    );
    let money = mul(credits, rule.price);
    touch_line(
        cx,
        a,
        "topup",
        None,
        &rule.credit_type,
        None,
        credits,
        money,
    );
    let rounded = cx.money(money);
    cx.emit(
        "topup.granted",
        format!("topup:{}:{}:{}", a.id, grant_id, serial),
        &a.id.clone(),
        ts,
        vec![
            ("grant_id", J::s(grant_id.clone())),
            ("credit_type", J::s(rule.credit_type.clone())),
            ("credits", J::d(credits)),
            ("price", J::d(rule.price)),
            ("money", J::d(rounded)),
        ],
    );
}

/// Credits available to a charge: eligible free credits, plus (for a commit) the credits the
/// hold had claimed, which are drawn first.
fn available(
    a: &Account,
    credit_type: &str,
    meter: &str,
    ts: i64,
    claims: &[(u64, Decimal)],
) -> Decimal {
    let claimed: Decimal = claims.iter().map(|(_, c)| *c).sum();
    let claim_on = |serial: u64| -> Decimal {
        claims
            .iter()
            .filter(|(s, _)| *s == serial)
            .map(|(_, c)| *c)
            .sum()
    };
    let free: Decimal = a
        .grants
        .iter()
        .filter(|g| g.eligible(credit_type, Some(meter), ts))
        .map(|g| pos(g.free() - claim_on(g.serial)))
        .sum();
    claimed + free
}

/// Draws exactly `amount` (≤ `available`): first the claimed grants in burn order up to their
/// claim, then eligible grants in burn order (§5.5, §8 commit).
fn draw(
    a: &mut Account,
    credit_type: &str,
    meter: &str,
    ts: i64,
    claims: &[(u64, Decimal)],
    amount: Decimal,
) -> Vec<Draw> {
    let mut needed = amount;
    let mut draws: Vec<Draw> = Vec::new();
    let take = |g: &mut Grant, limit: Decimal, draws: &mut Vec<Draw>, needed: &mut Decimal| {
        let taken = (*needed).min(limit);
        if taken <= Decimal::ZERO {
            return;
        }
        g.remaining -= taken;
        *needed -= taken;
        match draws.iter_mut().find(|d| d.serial == g.serial) {
            Some(d) => d.amount += taken,
            None => draws.push(Draw {
                serial: g.serial,
                grant_id: g.grant_id.clone(),
                key: g.key(),
                cost_basis: g.cost_basis,
                amount: taken,
            }),
        }
    };
    for i in a.burn_order() {
        let claim: Decimal = claims
            .iter()
            .filter(|(s, _)| *s == a.grants[i].serial)
            .map(|(_, c)| *c)
            .sum();
        if claim > Decimal::ZERO && a.grants[i].status == Status::Live {
            take(&mut a.grants[i], claim, &mut draws, &mut needed);
        }
    }
    for i in a.burn_order() {
        if a.grants[i].eligible(credit_type, Some(meter), ts) {
            let free = a.grants[i].free();
            take(&mut a.grants[i], free, &mut draws, &mut needed);
        }
    }
    assert!(needed.is_zero(), "draw asked for more than available");
    draws
}

struct ChargeRequest<'a> {
    cause_id: &'a str,
    ts: i64,
    meter: &'a str,
    quantity: Decimal,
    billed: Decimal,
    cost: Decimal,
    /// A commit: never refused; the hold's claims are drawn first.
    commit_claims: Option<Vec<(u64, Decimal)>>,
}

enum ChargeOutcome {
    Rejected {
        reason: &'static str,
        available: Decimal,
    },
    Charged {
        charged: Decimal,
        unpaid: Decimal,
    },
}

/// Pays a priced charge per the effective policy (§7), books it (§6 step 3) and returns the
/// outcome plus the rule for the top-up after paying.
fn charge(
    cx: &mut Cx,
    a: &mut Account,
    req: &ChargeRequest,
    nth_topup: &mut u32,
) -> (ChargeOutcome, Option<TopupRule>) {
    let cat = cx.cat;
    let credit_type = cat
        .meter(req.meter)
        .expect("meters are validated")
        .credit_type
        .clone();
    let (base, rule) = policy_for(&a.policy(cat), &credit_type);
    // Any charge, paid or refused, gives the account a balance entry of its credit type (§16),
    // so its alerts are evaluated from then on.
    a.entry(cat, &credit_type);
    let claims = req.commit_claims.clone().unwrap_or_default();
    let never_refuse = req.commit_claims.is_some();
    let mut s = available(a, &credit_type, req.meter, req.ts, &claims);
    if let Some(rule) = &rule {
        if req.cost > s && topup_allowed(a, rule, req.ts) {
            // §10.5: no alerts here; the input's are evaluated once, after it.
            topup(cx, a, rule, req.cause_id, req.ts, nth_topup);
            s = available(a, &credit_type, req.meter, req.ts, &claims);
        }
    }
    let debt = a.debt(&credit_type);
    let taken = req.cost.min(s);
    let mut overage = Decimal::ZERO;
    let mut unpaid = Decimal::ZERO;
    let mut overage_price = Decimal::ZERO;
    match base {
        Base::Reject => {
            if req.cost > s {
                if !never_refuse {
                    let outcome = ChargeOutcome::Rejected {
                        reason: "insufficient_credits",
                        available: s,
                    };
                    return (outcome, rule);
                }
                unpaid = req.cost - s;
            }
        }
        Base::Overage { limit, price } => {
            overage_price = price;
            let shortfall = req.cost - taken;
            // Only a shortfall can break the limit (§7).
            if shortfall > Decimal::ZERO && debt + shortfall > limit {
                if !never_refuse {
                    let outcome = ChargeOutcome::Rejected {
                        reason: "overage_limit",
                        available: s + pos(limit - debt),
                    };
                    return (outcome, rule);
                }
                overage = pos(limit - debt).min(shortfall);
                unpaid = shortfall - overage;
            } else {
                overage = shortfall;
            }
        }
    }
    let draws = draw(a, &credit_type, req.meter, req.ts, &claims, taken);
    let charged = taken + overage;
    let overage_money = mul(overage, overage_price);
    let period_start = a.period_start;
    let clock = a.clock;
    let entry = a.entry(cat, &credit_type);
    entry.debt += overage;
    entry.ledger.consumed += charged;
    if charged > Decimal::ZERO {
        let window = cat.rules.runway_window_ms;
        let start = clock.div_euclid(window) * window;
        if start <= entry.burn_start {
            entry.burn_now += charged;
        } else {
            entry.burn_before = if start == entry.burn_start + window {
                entry.burn_now
            } else {
                Decimal::ZERO
            };
            entry.burn_now = charged;
            entry.burn_start = start;
        }
    }
    for d in &draws {
        entry.revenue.recognized += mul(d.amount, d.cost_basis);
        lot(
            &mut entry.revenue,
            d.serial,
            &d.grant_id,
            d.key.clone(),
            d.cost_basis,
        )
        .recognized_credits += d.amount;
    }
    touch_line(
        cx,
        a,
        "usage",
        Some(req.meter),
        &credit_type,
        Some(req.billed),
        charged,
        Decimal::ZERO,
    );
    if overage > Decimal::ZERO {
        touch_line(
            cx,
            a,
            "overage",
            Some(req.meter),
            &credit_type,
            None,
            overage,
            overage_money,
        );
    }
    a.seen.push(Seen {
        id: req.cause_id.to_string(),
        ts: req.ts,
        record: Record::Charge(Charge {
            meter: req.meter.to_string(),
            credit_type: credit_type.clone(),
            quantity: req.billed,
            credits: charged,
            draws,
            overage,
            overage_money,
            overage_price,
            period_start,
            reversed: false,
        }),
    });
    (ChargeOutcome::Charged { charged, unpaid }, rule)
}

/// §7 "after paying (or rejecting)": one more top-up if the balance is under the threshold.
fn topup_after(
    cx: &mut Cx,
    a: &mut Account,
    rule: Option<TopupRule>,
    cause_id: &str,
    ts: i64,
    nth: &mut u32,
) {
    let Some(rule) = rule else { return };
    if a.balance(&rule.credit_type) < rule.threshold && topup_allowed(a, &rule, ts) {
        topup(cx, a, &rule, cause_id, ts, nth);
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

impl Model {
    pub fn new(catalog: ModelCatalog) -> Model {
        catalog.assert_valid();
        Model {
            catalog,
            tick_clock: None,
            accounts: Vec::new(),
        }
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    /// Applies one raw input message with its stream sequence, from a log without receive
    /// times (no future bound) on the subject `creditflow.in`; returns the compact JSON text of
    /// every output it produced, in emission order.
    pub fn apply(&mut self, payload: &[u8], seq: u64) -> Vec<String> {
        self.apply_envelope(payload, seq, "creditflow.in", None)
    }

    /// Applies one raw input message as the stream delivered it: its sequence, subject and the
    /// instant the stream received it (`None`: no future bound, SEMANTICS §2.1 check 5).
    pub fn apply_envelope(
        &mut self,
        payload: &[u8],
        seq: u64,
        subject: &str,
        received: Option<i64>,
    ) -> Vec<String> {
        let mut cx = Cx {
            cat: &self.catalog,
            seq,
            subject: subject.to_string(),
            received,
            out: Vec::new(),
        };
        if payload.len() > cx.cat.rules.payload_max {
            dead_letter(&mut cx, payload, "payload_too_large", None);
        } else {
            match input::parse(payload, cx.cat) {
                Err(Refusal { reason, detail }) => dead_letter(&mut cx, payload, reason, detail),
                Ok(message) if !carries(subject, &message) => {
                    dead_letter(&mut cx, payload, "not_allowed_on_subject", None);
                }
                Ok(Message::Tick { ts }) if too_far_ahead(cx.cat, cx.received, ts) => {
                    dead_letter(&mut cx, payload, "ts_too_far_ahead", None);
                }
                Ok(Message::Tick { ts }) => {
                    let clock = self.tick_clock.map_or(ts, |t| t.max(ts));
                    self.tick_clock = Some(clock);
                    for a in &mut self.accounts {
                        if next_transition(cx.cat, a, clock).is_some() {
                            advance(&mut cx, a, clock);
                        }
                    }
                }
                Ok(Message::Account {
                    id,
                    account,
                    ts,
                    body,
                }) => {
                    if let Err(reason) = verdict(
                        cx.cat,
                        &self.accounts,
                        self.tick_clock,
                        cx.received,
                        &account,
                        ts,
                        &body,
                    ) {
                        dead_letter(&mut cx, payload, reason, None);
                    } else {
                        let index = match self.accounts.iter().position(|a| a.id == account) {
                            Some(i) => i,
                            None => {
                                // §4: on the plan a `set_plan` names, else the default plan,
                                // at the later of `ts` and the tick clock.
                                let plan = match &body {
                                    Body::SetPlan { plan } => plan.clone(),
                                    _ => cx.cat.default_plan.clone(),
                                };
                                let at = self.tick_clock.map_or(ts, |t| t.max(ts));
                                let a = new_account(&mut cx, &account, &plan, at);
                                self.accounts.push(a);
                                self.accounts.sort_by(|x, y| x.id.cmp(&y.id));
                                self.accounts
                                    .iter()
                                    .position(|a| a.id == account)
                                    .expect("just added")
                            }
                        };
                        let tick_clock = self.tick_clock;
                        let a = &mut self.accounts[index];
                        apply_account_message(&mut cx, a, tick_clock, &id, ts, body);
                    }
                }
            }
        }
        cx.out.iter().map(output_to_json_string).collect()
    }

    /// §16: one compact JSON object per account, sorted by account id.
    pub fn state(&self) -> Vec<String> {
        self.accounts
            .iter()
            .map(|a| output_to_json_string(&state_view(&self.catalog, a)))
            .collect()
    }

    /// §5.4 for every account and credit type, plus the model's own bookkeeping identities.
    pub fn check_invariants(&self) -> Result<(), String> {
        for a in &self.accounts {
            for grant in &a.grants {
                if grant.held < Decimal::ZERO || grant.held > grant.remaining {
                    return Err(format!(
                        "{}: grant {} held out of range",
                        a.id, grant.grant_id
                    ));
                }
                if grant.status != Status::Live
                    && !(grant.remaining.is_zero() && grant.held.is_zero())
                {
                    return Err(format!("{}: dead grant {} not empty", a.id, grant.grant_id));
                }
                let claimed: Decimal = a
                    .holds
                    .iter()
                    .flat_map(|h| h.claims.iter())
                    .filter(|(s, _)| *s == grant.serial)
                    .map(|(_, c)| *c)
                    .sum();
                if claimed != grant.held {
                    return Err(format!("{}: grant {} held ≠ claims", a.id, grant.grant_id));
                }
            }
            for grant in &a.grants {
                if !a
                    .balances
                    .iter()
                    .any(|b| b.credit_type == grant.credit_type)
                {
                    return Err(format!("{}: grant without balance entry", a.id));
                }
            }
            for b in &a.balances {
                let l = &b.ledger;
                let balance = a.balance(&b.credit_type);
                let from_ledger = l.granted - l.consumed - l.expired - l.voided
                    + l.adjusted
                    + l.settled
                    + l.returned;
                if from_ledger != balance {
                    return Err(format!(
                        "{} {}: ledger says {} but Σ remaining − debt = {}",
                        a.id, b.credit_type, from_ledger, balance
                    ));
                }
                if b.debt < Decimal::ZERO {
                    return Err(format!("{} {}: negative debt", a.id, b.credit_type));
                }
                let r = &b.revenue;
                let closing = r.opening + r.granted - r.recognized - r.breakage - r.removed;
                if closing != a.deferred(&b.credit_type) {
                    return Err(format!(
                        "{} {}: revenue identity broken ({} vs deferred {})",
                        a.id,
                        b.credit_type,
                        closing,
                        a.deferred(&b.credit_type)
                    ));
                }
                let lots_recognized: Decimal = r
                    .lots
                    .iter()
                    .map(|l| mul(l.recognized_credits, l.cost_basis))
                    .sum();
                let lots_breakage: Decimal = r
                    .lots
                    .iter()
                    .map(|l| mul(l.breakage_credits, l.cost_basis))
                    .sum();
                if lots_recognized != r.recognized || lots_breakage != r.breakage {
                    return Err(format!("{} {}: lots do not add up", a.id, b.credit_type));
                }
            }
            if a.clock < a.period_start || a.clock >= a.period_end {
                return Err(format!("{}: clock outside its period", a.id));
            }
        }
        Ok(())
    }
}

/// §2.1 check 5, the future bound: against the instant the stream received the message.
fn too_far_ahead(cat: &ModelCatalog, received: Option<i64>, ts: i64) -> bool {
    received.is_some_and(|r| ts > r + cat.rules.future_max_ms)
}

/// Steps 5–9 of §2.1, for a message that passed steps 1–4.
fn verdict(
    cat: &ModelCatalog,
    accounts: &[Account],
    tick_clock: Option<i64>,
    received: Option<i64>,
    account: &str,
    ts: i64,
    body: &Body,
) -> Result<(), &'static str> {
    if too_far_ahead(cat, received, ts) {
        return Err("ts_too_far_ahead");
    }
    let existing = accounts.iter().find(|a| a.id == account);
    // `ts_too_old` against the account's clock (which includes the tick clock, §3).
    let reference = match existing {
        Some(a) => Some(tick_clock.map_or(a.clock, |t| t.max(a.clock))),
        None => tick_clock,
    };
    if let Some(reference) = reference {
        if ts < reference - cat.rules.backdate_max_ms {
            return Err("ts_too_old");
        }
    }
    match body {
        Body::Usage { meter, quantity }
        | Body::Reserve {
            meter, quantity, ..
        } => price(cat, meter, ts, *quantity).map(|_| ()),
        Body::Commit { hold_id, quantity } => {
            match existing.and_then(|a| a.holds.iter().find(|h| &h.hold_id == hold_id)) {
                Some(hold) => price(cat, &hold.meter, ts, *quantity).map(|_| ()),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// How much of an oversized payload a dead letter carries (§14).
const DEAD_PAYLOAD_MAX: usize = 1024;

/// §2.2: whether `subject` may carry `message`. A partition subject
/// `creditflow.in.<p>.<kind>` carries usage events (`usage`), commands (`cmd`) or ticks
/// (`tick`) only; a plain log (any other subject) carries every type. (The model is only fed
/// partition subjects of the account's own partition.)
fn carries(subject: &str, message: &Message) -> bool {
    let kind = subject
        .strip_prefix("creditflow.in.")
        .and_then(|rest| rest.split_once('.'))
        .map(|(_, kind)| kind);
    match (kind, message) {
        (None, _) => true,
        (
            Some("usage"),
            Message::Account {
                body: Body::Usage { .. },
                ..
            },
        ) => true,
        (Some("cmd"), Message::Account { body, .. }) => !matches!(body, Body::Usage { .. }),
        (Some("tick"), Message::Tick { .. }) => true,
        _ => false,
    }
}

fn dead_letter(cx: &mut Cx, payload: &[u8], reason: &str, detail: Option<String>) {
    // An oversized payload is not read (that is what the limit is for), and only its start is
    // carried.
    let (account, ts, payload) = if reason == "payload_too_large" {
        (None, None, &payload[..payload.len().min(DEAD_PAYLOAD_MAX)])
    } else {
        let (account, ts) = input::readable_account_and_ts(payload);
        (account, ts, payload)
    };
    let mut o = obj(vec![
        ("type", J::s("dead_letter")),
        ("id", J::s(format!("dead:{}", cx.seq))),
        ("account", J::opt_s(account.as_deref())),
        ("seq", J::Int(cx.seq as i64)),
        ("ts", J::opt_s(ts.map(format_ts).as_deref())),
        ("reason", J::s(reason)),
        ("detail", J::opt_s(detail.as_deref())),
        ("subject", J::s(cx.subject.clone())),
    ]);
    match std::str::from_utf8(payload) {
        Ok(text) => o.push(("payload".into(), J::s(text))),
        Err(_) => {
            o.push(("payload".into(), J::Null));
            o.push(("payload_base64".into(), J::s(json::base64(payload))));
        }
    }
    cx.out.push(o);
}

/// §4: a new account on `plan`, its clock at `at`, in the plan's period containing `at`.
fn new_account(cx: &mut Cx, id: &str, plan: &str, at: i64) -> Account {
    let plan = cx.cat.plan(plan).expect("plans are validated on input");
    let (start, end) = period_containing(plan.period, at);
    let mut a = Account {
        id: id.to_string(),
        plan: plan.name.clone(),
        policy_override: None,
        clock: at,
        period_start: start,
        period_end: end,
        grants: Vec::new(),
        holds: Vec::new(),
        lines: Vec::new(),
        balances: Vec::new(),
        alerts: Vec::new(),
        seen: Vec::new(),
        topups_in_period: 0,
        last_topup_ts: None,
        next_serial: 1,
        period_number: 0,
    };
    open_period(cx, &mut a);
    a
}

/// A command's own result: its extra `command.result` fields, or the rejection reason.
type Outcome<'j> = Result<Vec<(&'j str, J)>, &'static str>;

/// Emits a command's `command.result`. `if_rejected` are the per-command fields a rejection
/// shows (§14: the requested grant id; amounts `"0"`).
fn command_result(
    cx: &mut Cx,
    a: &Account,
    command: &str,
    id: &str,
    ts: i64,
    outcome: Outcome,
    if_rejected: Vec<(&str, J)>,
) {
    let mut fields = vec![("command", J::s(command)), ("command_id", J::s(id))];
    match outcome {
        Ok(extra) => {
            fields.push(("status", J::s("applied")));
            fields.push(("reason", J::Null));
            fields.extend(extra);
        }
        Err(reason) => {
            fields.push(("status", J::s("rejected")));
            fields.push(("reason", J::s(reason)));
            fields.extend(if_rejected);
        }
    }
    cx.emit(
        "command.result",
        format!("result:{}:{}:{}", a.id, id, cx.seq),
        &a.id,
        ts,
        fields,
    );
}

fn apply_account_message(
    cx: &mut Cx,
    a: &mut Account,
    tick_clock: Option<i64>,
    id: &str,
    ts: i64,
    body: Body,
) {
    let cat = cx.cat;
    // §6 step 1: a duplicate changes nothing, not even the clock.
    if a.seen_index(id, tick_clock, cat.rules.dedupe_window_ms)
        .is_some()
    {
        return;
    }
    advance(cx, a, tick_clock.map_or(ts, |t| t.max(ts)));
    let mut nth_topup = 0u32;
    match body {
        Body::Usage { meter, quantity } => {
            let (billed, cost) = price(cat, &meter, ts, quantity).expect("checked by verdict");
            let request = ChargeRequest {
                cause_id: id,
                ts,
                meter: &meter,
                quantity,
                billed,
                cost,
                commit_claims: None,
            };
            let (outcome, rule) = charge(cx, a, &request, &mut nth_topup);
            if let ChargeOutcome::Rejected { reason, available } = outcome {
                a.seen.push(Seen {
                    id: id.to_string(),
                    ts,
                    record: Record::RejectedUsage,
                });
                let credit_type = cat.meter(&meter).expect("validated").credit_type.clone();
                cx.emit(
                    "usage.rejected",
                    format!("rejected:{}:{}:{}", a.id, id, cx.seq),
                    &a.id,
                    ts,
                    vec![
                        ("event_id", J::s(id)),
                        ("meter", J::s(meter.clone())),
                        ("quantity", J::d(quantity)),
                        ("credit_type", J::s(credit_type)),
                        ("needed", J::d(cost)),
                        ("available", J::d(available)),
                        ("reason", J::s(reason)),
                    ],
                );
            }
            topup_after(cx, a, rule, id, ts, &mut nth_topup);
            evaluate_alerts(cx, a, ts);
        }
        Body::Commit { hold_id, quantity } => {
            let zeros = || {
                vec![
                    ("credits_charged", J::d(Decimal::ZERO)),
                    ("credits_unpaid", J::d(Decimal::ZERO)),
                ]
            };
            if !a.holds.iter().any(|h| h.hold_id == hold_id) {
                remember(a, id, ts);
                evaluate_alerts(cx, a, ts);
                command_result(cx, a, "commit", id, ts, Err("unknown_hold"), zeros());
            } else {
                let hold = a
                    .holds
                    .iter()
                    .find(|h| h.hold_id == hold_id)
                    .expect("checked")
                    .clone();
                release_hold(a, &hold_id);
                let (billed, cost) =
                    price(cat, &hold.meter, ts, quantity).expect("checked by verdict");
                let request = ChargeRequest {
                    cause_id: id,
                    ts,
                    meter: &hold.meter,
                    quantity,
                    billed,
                    cost,
                    commit_claims: Some(hold.claims.clone()),
                };
                let (outcome, rule) = charge(cx, a, &request, &mut nth_topup);
                let ChargeOutcome::Charged { charged, unpaid } = outcome else {
                    unreachable!("a commit is never refused")
                };
                topup_after(cx, a, rule, id, ts, &mut nth_topup);
                evaluate_alerts(cx, a, ts);
                // §9: the result is the command's last output, after its top-ups and alerts.
                command_result(
                    cx,
                    a,
                    "commit",
                    id,
                    ts,
                    Ok(vec![
                        ("credits_charged", J::d(charged)),
                        ("credits_unpaid", J::d(unpaid)),
                    ]),
                    zeros(),
                );
            }
        }
        other => {
            let command = other.command_name().expect("commands have names");
            remember(a, id, ts);
            let zero = || J::d(Decimal::ZERO);
            let (outcome, if_rejected): (Outcome, Vec<(&str, J)>) = match other {
                Body::Grant(g) => {
                    let grant_id = J::s(g.grant_id.clone());
                    (command_grant(cx, a, ts, g), vec![("grant_id", grant_id)])
                }
                Body::VoidGrant { grant_id } => (command_void(cx, a, &grant_id), vec![]),
                Body::SetPlan { plan } => (command_set_plan(cx, a, &plan), vec![]),
                Body::SetPolicy { policy } => {
                    a.policy_override = policy;
                    (Ok(vec![]), vec![])
                }
                Body::Adjust {
                    credit_type,
                    amount,
                } => (
                    command_adjust(cx, a, id, ts, &credit_type, amount),
                    vec![("applied", zero())],
                ),
                Body::Reverse { event_id, event_ts } => (
                    command_reverse(cx, a, tick_clock, &event_id, event_ts),
                    vec![],
                ),
                Body::Reserve {
                    meter,
                    quantity,
                    quantity_scale,
                    ttl_ms,
                    hold_id,
                } => (
                    command_reserve(cx, a, ts, &meter, quantity, quantity_scale, ttl_ms, hold_id),
                    vec![
                        ("credits_requested", zero()),
                        ("credits_reserved", zero()),
                        ("quantity_reserved", zero()),
                    ],
                ),
                Body::Release { hold_id } => {
                    if a.holds.iter().any(|h| h.hold_id == hold_id) {
                        let released = release_hold(a, &hold_id);
                        (Ok(vec![("credits_released", J::d(released))]), vec![])
                    } else {
                        (Err("unknown_hold"), vec![("credits_released", zero())])
                    }
                }
                Body::Usage { .. } | Body::Commit { .. } => unreachable!("handled above"),
            };
            evaluate_alerts(cx, a, ts);
            command_result(cx, a, command, id, ts, outcome, if_rejected);
        }
    }
    // Transitions this input made already due run now, at the account's clock (§10.6).
    let clock = a.clock;
    advance(cx, a, clock);
}

fn remember(a: &mut Account, id: &str, ts: i64) {
    a.seen.push(Seen {
        id: id.to_string(),
        ts,
        record: Record::Command,
    });
}

fn command_grant<'j>(cx: &mut Cx, a: &mut Account, ts: i64, g: GrantInput) -> Outcome<'j> {
    if a.grants.iter().any(|x| x.grant_id == g.grant_id) {
        return Err("grant_exists");
    }
    let live = a.grants.iter().filter(|x| x.status == Status::Live).count();
    if live >= cx.cat.rules.grants_per_account_max {
        return Err("grant_limit");
    }
    let source: &'static str = match g.source.as_str() {
        "purchase" => "purchase",
        "allowance" => "allowance",
        "promotion" => "promotion",
        "rollover" => "rollover",
        "topup" => "topup",
        _ => "adjustment",
    };
    add_grant(
        cx,
        a,
        NewGrant {
            grant_id: g.grant_id.clone(),
            credit_type: g.credit_type,
            source,
            amount: g.amount,
            priority: g.priority,
            effective_at: g.effective_at,
            expires_at: g.expires_at,
            scope: g.scope,
            cost_basis: g.cost_basis,
            granted_at: ts,
            rollover_cap: Decimal::ZERO,
        },
        Origin::Granted,
    );
    Ok(vec![("grant_id", J::s(g.grant_id))])
}

fn command_void<'j>(cx: &mut Cx, a: &mut Account, grant_id: &str) -> Outcome<'j> {
    let Some(grant) = a
        .grants
        .iter()
        .find(|g| g.grant_id == grant_id && g.status == Status::Live)
        .cloned()
    else {
        return Err("unknown_grant");
    };
    drop_claims(a, grant.serial);
    let g = a.grant_by_serial(grant.serial).expect("found above");
    g.remaining = Decimal::ZERO;
    g.held = Decimal::ZERO;
    g.status = Status::Voided;
    let entry = a.entry(cx.cat, &grant.credit_type);
    entry.ledger.voided += grant.remaining;
    entry.revenue.removed += mul(grant.remaining, grant.cost_basis);
    Ok(vec![])
}

fn command_set_plan<'j>(cx: &mut Cx, a: &mut Account, plan: &str) -> Outcome<'j> {
    if a.plan == plan {
        return Ok(vec![]);
    }
    // The switch happens at the account's clock (= the command's ts unless backdated: closing
    // a period in the past would rewrite issued lines), always with a close (§4).
    let at = a.clock;
    let new_plan = cx.cat.plan(plan).expect("validated");
    close_period(cx, a, at);
    a.plan = plan.to_string();
    a.period_start = at;
    a.period_end = period_containing(new_plan.period, at).1;
    open_period(cx, a);
    Ok(vec![])
}

fn command_adjust<'j>(
    cx: &mut Cx,
    a: &mut Account,
    id: &str,
    ts: i64,
    credit_type: &str,
    amount: Decimal,
) -> Outcome<'j> {
    let cat = cx.cat;
    // Any adjustment gives the account a balance entry of its credit type (§16).
    a.entry(cat, credit_type);
    if amount > Decimal::ZERO {
        add_grant(
            cx,
            a,
            NewGrant {
                grant_id: id.to_string(),
                credit_type: credit_type.to_string(),
                source: "adjustment",
                amount,
                priority: 100,
                effective_at: ts,
                expires_at: None,
                scope: None,
                cost_basis: Decimal::ZERO,
                granted_at: ts,
                rollover_cap: Decimal::ZERO,
            },
            Origin::Adjusted,
        );
        touch_line(
            cx,
            a,
            "adjustment",
            None,
            credit_type,
            None,
            amount,
            Decimal::ZERO,
        );
        return Ok(vec![("applied", J::d(amount))]);
    }
    let mut wanted = -amount;
    let mut removed = Decimal::ZERO;
    let mut removed_value = Decimal::ZERO;
    for i in a.burn_order() {
        let g = &mut a.grants[i];
        if wanted.is_zero() || !g.eligible(credit_type, None, ts) {
            continue;
        }
        let taken = wanted.min(g.free());
        g.remaining -= taken;
        wanted -= taken;
        removed += taken;
        removed_value += mul(taken, g.cost_basis);
    }
    if !removed.is_zero() {
        let entry = a.entry(cat, credit_type);
        entry.ledger.adjusted -= removed;
        entry.revenue.removed += removed_value;
        touch_line(
            cx,
            a,
            "adjustment",
            None,
            credit_type,
            None,
            -removed,
            Decimal::ZERO,
        );
    }
    Ok(vec![("applied", J::d(-removed))])
}

fn command_reverse<'j>(
    cx: &mut Cx,
    a: &mut Account,
    tick_clock: Option<i64>,
    event_id: &str,
    event_ts: Option<i64>,
) -> Outcome<'j> {
    let cat = cx.cat;
    // The id's live entry, whatever it is; else its latest charge (in log order) while that
    // charge's reversal window is open (§9).
    let open = |ts: i64| tick_clock.is_none_or(|t| t <= ts + cat.rules.reversal_window_ms);
    let index = a
        .seen_index(event_id, tick_clock, cat.rules.dedupe_window_ms)
        .or_else(|| {
            a.seen
                .iter()
                .rposition(|s| s.id == event_id && matches!(s.record, Record::Charge(_)))
                .filter(|&i| open(a.seen[i].ts))
        })
        .ok_or(match event_ts {
            Some(ts) if !open(ts) => "reversal_window_passed",
            _ => "unknown_event",
        })?;
    let charge = match &mut a.seen[index].record {
        Record::Charge(c) if c.reversed => return Err("already_reversed"),
        Record::Charge(c) => {
            c.reversed = true;
            c.clone()
        }
        Record::RejectedUsage => return Err("not_charged"),
        // The id of a command is no usage event (§9).
        Record::Command => return Err("unknown_event"),
    };
    let same_period = charge.period_start == a.period_start;
    let credit_type = charge.credit_type.clone();
    // Credits come back now: new grants are made at the account's clock (§9).
    let at = a.clock;
    let mut made = 0usize;
    let mut reversal_grant = |amount: Decimal, basis: Decimal| {
        made += 1;
        NewGrant {
            grant_id: format!("reversal-{event_id}-{made}"),
            credit_type: credit_type.clone(),
            source: "adjustment",
            amount,
            priority: 100,
            effective_at: at,
            expires_at: None,
            scope: None,
            cost_basis: basis,
            granted_at: at,
            rollover_cap: Decimal::ZERO,
        }
    };
    // The overage part first: it cancels this event's own debt before any returned credits
    // could repay that debt as if it were someone else's (§9). What is still owed (the debt
    // now, or what the event's closed period settled) is cancelled; the rest was repaid by
    // grants and comes back as credits, with the repayment's invoice credit undone.
    let mut invoiced = Decimal::ZERO;
    if charge.overage > Decimal::ZERO {
        let entry = a.entry(cat, &credit_type);
        let owed = if same_period {
            let cut = charge.overage.min(entry.debt);
            entry.debt -= cut;
            entry.ledger.returned += cut;
            cut
        } else {
            let settled = entry
                .settled_periods
                .iter_mut()
                .find(|(start, _)| *start == charge.period_start)
                .map_or(Decimal::ZERO, |(_, credits)| {
                    let taken = charge.overage.min(*credits);
                    *credits -= taken;
                    taken
                });
            invoiced = settled;
            settled
        };
        let repaid = charge.overage - owed;
        if repaid > Decimal::ZERO {
            let new = reversal_grant(repaid, Decimal::ZERO);
            add_grant(cx, a, new, Origin::Returned { on_lot: false });
            if same_period {
                let price = a.overage_price_now(cat);
                touch_line(
                    cx,
                    a,
                    "overage_repaid",
                    None,
                    &credit_type,
                    None,
                    repaid,
                    mul(repaid, price),
                );
            }
        }
    }
    for d in &charge.draws {
        let live = a
            .grants
            .iter()
            .any(|g| g.serial == d.serial && g.status == Status::Live);
        if live {
            a.grant_by_serial(d.serial).expect("live").remaining += d.amount;
            let entry = a.entry(cat, &credit_type);
            entry.ledger.returned += d.amount;
            entry.revenue.recognized -= mul(d.amount, d.cost_basis);
            lot(
                &mut entry.revenue,
                d.serial,
                &d.grant_id,
                d.key.clone(),
                d.cost_basis,
            )
            .recognized_credits -= d.amount;
        } else {
            let new = reversal_grant(d.amount, d.cost_basis);
            add_grant(cx, a, new, Origin::Returned { on_lot: true });
        }
    }
    if same_period {
        touch_line(
            cx,
            a,
            "usage",
            Some(&charge.meter),
            &credit_type,
            Some(-charge.quantity),
            -charge.credits,
            Decimal::ZERO,
        );
        if charge.overage > Decimal::ZERO {
            touch_line(
                cx,
                a,
                "overage",
                Some(&charge.meter),
                &credit_type,
                None,
                -charge.overage,
                -charge.overage_money,
            );
        }
    } else {
        touch_line(
            cx,
            a,
            "reversal",
            Some(&charge.meter),
            &credit_type,
            Some(-charge.quantity),
            -charge.credits,
            -mul(invoiced, charge.overage_price),
        );
    }
    Ok(vec![])
}

#[allow(clippy::too_many_arguments)]
fn command_reserve<'j>(
    cx: &mut Cx,
    a: &mut Account,
    ts: i64,
    meter: &str,
    quantity: Decimal,
    quantity_scale: u32,
    ttl_ms: i64,
    hold_id: String,
) -> Outcome<'j> {
    let cat = cx.cat;
    if a.holds.iter().any(|h| h.hold_id == hold_id) {
        return Err("hold_exists");
    }
    if a.holds.len() >= cat.rules.holds_per_account_max {
        return Err("hold_limit");
    }
    let credit_type = cat.meter(meter).expect("validated").credit_type.clone();
    let (_, requested) = price(cat, meter, ts, quantity).expect("checked by verdict");
    let spendable = a.spendable(&credit_type, Some(meter), ts);
    let reserved = requested.min(spendable);
    let mut needed = reserved;
    let mut claims = Vec::new();
    for i in a.burn_order() {
        let g = &mut a.grants[i];
        if needed.is_zero() || !g.eligible(&credit_type, Some(meter), ts) {
            continue;
        }
        let taken = needed.min(g.free());
        if taken > Decimal::ZERO {
            g.held += taken;
            needed -= taken;
            claims.push((g.serial, taken));
        }
    }
    let quantity_reserved = if reserved == requested {
        quantity
    } else {
        largest_quantity(cat, meter, ts, quantity, quantity_scale, reserved)
    };
    let serial = a.next_serial;
    a.next_serial += 1;
    a.holds.push(Hold {
        serial,
        hold_id,
        meter: meter.to_string(),
        claims,
        expires_at: ts + ttl_ms,
    });
    Ok(vec![
        ("credits_requested", J::d(requested)),
        ("credits_reserved", J::d(reserved)),
        ("quantity_reserved", J::d(quantity_reserved)),
    ])
}

/// The largest quantity in `[0, requested]` with `scale` decimals whose price is ≤ `budget`
/// (price is non-decreasing in quantity, and the price of 0 is 0), by bisection.
fn largest_quantity(
    cat: &ModelCatalog,
    meter: &str,
    ts: i64,
    requested: Decimal,
    scale: u32,
    budget: Decimal,
) -> Decimal {
    let unit = Decimal::new(1, scale);
    let cost = |steps: Decimal| {
        price(cat, meter, ts, steps * unit)
            .expect("priced before")
            .1
    };
    let mut low = Decimal::ZERO;
    let mut high = (requested / unit).normalize();
    if cost(high) <= budget {
        return requested;
    }
    while high - low > Decimal::ONE {
        let middle = ((low + high) / Decimal::TWO).floor();
        if cost(middle) <= budget {
            low = middle;
        } else {
            high = middle;
        }
    }
    (low * unit).normalize()
}

// ---------------------------------------------------------------------------------------------
// State view (§16)
// ---------------------------------------------------------------------------------------------

fn state_view(cat: &ModelCatalog, a: &Account) -> Obj {
    let balances = a
        .balances
        .iter()
        .map(|b| {
            let held: Decimal = a
                .grants
                .iter()
                .filter(|g| g.credit_type == b.credit_type)
                .map(|g| g.held)
                .sum();
            let l = &b.ledger;
            J::Obj(obj(vec![
                ("credit_type", J::s(b.credit_type.clone())),
                ("balance", J::d(a.balance(&b.credit_type))),
                ("held", J::d(held)),
                ("debt", J::d(b.debt)),
                (
                    "ledger",
                    J::Obj(obj(vec![
                        ("granted", J::d(l.granted)),
                        ("consumed", J::d(l.consumed)),
                        ("expired", J::d(l.expired)),
                        ("voided", J::d(l.voided)),
                        ("adjusted", J::d(l.adjusted)),
                        ("settled", J::d(l.settled)),
                        ("returned", J::d(l.returned)),
                    ])),
                ),
                ("runway", {
                    let window = cat.rules.runway_window_ms;
                    let remaining = a.balance(&b.credit_type) - held;
                    let (burned, out) = runway(b, window, a.clock, remaining);
                    J::Obj(obj(vec![
                        ("window", J::s(format_span(window))),
                        ("burned", J::d(burned)),
                        ("runs_out_at", J::opt_s(out.map(format_ts).as_deref())),
                    ]))
                }),
            ]))
        })
        .collect();
    let grants = a
        .burn_order()
        .into_iter()
        .map(|i| {
            let g = &a.grants[i];
            J::Obj(obj(vec![
                ("grant_id", J::s(g.grant_id.clone())),
                ("credit_type", J::s(g.credit_type.clone())),
                ("source", J::s(g.source.clone())),
                ("status", J::s(g.status.name())),
                ("amount", J::d(g.amount)),
                ("remaining", J::d(g.remaining)),
                ("held", J::d(g.held)),
                ("priority", J::Int(g.priority)),
                ("effective_at", J::s(format_ts(g.effective_at))),
                (
                    "expires_at",
                    J::opt_s(g.expires_at.map(format_ts).as_deref()),
                ),
                ("cost_basis", J::d(g.cost_basis)),
                (
                    "scope",
                    match &g.scope {
                        None => J::Null,
                        Some(s) => J::Arr(s.iter().map(|m| J::s(m.clone())).collect()),
                    },
                ),
            ]))
        })
        .collect();
    let mut holds: Vec<&Hold> = a.holds.iter().collect();
    holds.sort_by(|x, y| x.hold_id.cmp(&y.hold_id));
    let holds = holds
        .into_iter()
        .map(|h| {
            J::Obj(obj(vec![
                ("hold_id", J::s(h.hold_id.clone())),
                ("meter", J::s(h.meter.clone())),
                ("credits_held", J::d(h.credits())),
                ("expires_at", J::s(format_ts(h.expires_at))),
            ]))
        })
        .collect();
    let _ = cat;
    obj(vec![
        ("account", J::s(a.id.clone())),
        ("plan", J::s(a.plan.clone())),
        (
            "policy_override",
            a.policy_override
                .as_ref()
                .map_or(J::Null, |(_, j)| j.clone()),
        ),
        ("clock", J::s(format_ts(a.clock))),
        ("period_start", J::s(format_ts(a.period_start))),
        ("period_end", J::s(format_ts(a.period_end))),
        ("balances", J::Arr(balances)),
        ("grants", J::Arr(grants)),
        ("holds", J::Arr(holds)),
    ])
}
