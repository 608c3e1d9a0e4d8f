//! One account's state and every change to it (SEMANTICS §4–§12).
//!
//! Owns: the account's grants (in burn order), holds, overage debt, ledger totals, alert states,
//! invoice lines of the open period, revenue accumulators, and the clock-driven transitions.
//!
//! Must never: read anything but its arguments (the catalog, the message, the context), touch
//! another account, or round except where SEMANTICS names a rounding.
//!
//! Invariants (checked by [`Account::check`]): per credit type, `granted − consumed − expired −
//! voided + adjusted + settled + returned = Σ remaining − debt`; `0 ≤ held ≤ remaining` per
//! grant and `held` equals the holds' claims on it; debt ≥ 0; revenue `opening + granted −
//! recognised − breakage − removed = Σ remaining × cost basis`; grants sorted in burn order.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::catalog::pricing::{self, PriceRequest, Priced};
use crate::catalog::{
    Catalog, CreditTypeId, Fallback, MeterId, Overage, Plan, PlanId, Policy, Threshold,
    TopupAmount, TopupRule,
};
use crate::decimal::{Credits, Dec, Fixed, Price, Quantity, Revenue};
use crate::engine::compact::{Draws, ShortStr};
use crate::engine::dedupe::{Charge, Remembered};
use crate::time::Instant;
use crate::wire::input::{CommandKind, GrantCommand, ReserveCommand, Source};
use crate::wire::output::{
    Body, CommandResult, InvoiceLine, Output, ResultDetail, RevenueLot, RevenuePeriod,
};

/// Where outputs go, and which input caused them.
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    pub seq: u64,
    pub out: &'a mut Vec<Output>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantStatus {
    Live,
    Expired,
    Voided,
}

impl GrantStatus {
    pub fn name(self) -> &'static str {
        match self {
            GrantStatus::Live => "live",
            GrantStatus::Expired => "expired",
            GrantStatus::Voided => "voided",
        }
    }
}

/// A lot of credits. 128 bytes (two cache lines, one allocator size class): what most grants
/// never use (held credits, a rollover cap, expired credits, a meter scope) is in
/// [`GrantRare`], boxed and allocated the first time one of them is set; no expiry is stored
/// as [`NEVER`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// Unique per account for its lifetime; holds and charge records refer to grants by it.
    pub serial: u32,
    pub id: Box<str>,
    pub credit_type: CreditTypeId,
    pub source: Source,
    pub status: GrantStatus,
    pub amount: Credits,
    pub remaining: Credits,
    pub priority: i32,
    pub effective_at: Instant,
    /// [`NEVER`] when it does not expire ([`Grant::expires_at`]).
    expiry: Instant,
    pub cost_basis: Price,
    pub granted_at: Instant,
    /// `grant.expiring` already handled.
    pub warned: bool,
    /// Credits recognised from this lot in the open period (negative after reversals).
    pub recognized_in_period: Credits,
    rare: Option<Box<GrantRare>>,
}

/// The parts of a [`Grant`] most grants leave empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrantRare {
    /// Claimed by holds (≤ remaining).
    pub held: Credits,
    /// Allowance grants only: how much may roll over at expiry.
    pub rollover_cap: Credits,
    /// Credits expired from this lot in the open period.
    pub expired_in_period: Credits,
    /// The meters it may pay for (all when `None`).
    pub scope: Option<Box<[MeterId]>>,
}

// The layout the memory budget counts on (ARCHITECTURE.md, performance budget).
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<Grant>() == 128);
    assert!(std::mem::size_of::<TypeState>() == 128);
    assert!(std::mem::size_of::<Account>() == 136);
};

/// Inserts `value` at `index` of a boxed slice, which grows by exactly one (per-account lists
/// are short and grow rarely: a new credit type, grant or invoice line).
fn insert_one<T>(slice: &mut Box<[T]>, index: usize, value: T) {
    let mut items = std::mem::take(slice).into_vec();
    items.reserve_exact(1);
    items.insert(index, value);
    *slice = items.into_boxed_slice();
}

/// Keeps the elements of a boxed slice for which `keep` is true, in order.
fn retain_in<T>(slice: &mut Box<[T]>, keep: impl FnMut(&T) -> bool) {
    let mut items = std::mem::take(slice).into_vec();
    items.retain(keep);
    *slice = items.into_boxed_slice();
}

/// The expiry of a grant that never expires (after every valid timestamp).
pub const NEVER: Instant = Instant(i64::MAX);

const NO_GRANT_RARE: GrantRare = GrantRare {
    held: Credits::ZERO,
    rollover_cap: Credits::ZERO,
    expired_in_period: Credits::ZERO,
    scope: None,
};

impl Grant {
    pub fn expires_at(&self) -> Option<Instant> {
        (self.expiry != NEVER).then_some(self.expiry)
    }

    fn rare(&self) -> &GrantRare {
        self.rare.as_deref().unwrap_or(&NO_GRANT_RARE)
    }

    /// Allocates the rare parts on first use: callers write only non-empty values.
    fn rare_mut(&mut self) -> &mut GrantRare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Credits claimed by holds.
    pub fn held(&self) -> Credits {
        self.rare().held
    }

    pub fn rollover_cap(&self) -> Credits {
        self.rare().rollover_cap
    }

    pub fn expired_in_period(&self) -> Credits {
        self.rare().expired_in_period
    }

    pub fn scope(&self) -> Option<&[MeterId]> {
        self.rare().scope.as_deref()
    }

    /// Heap bytes of the rare parts (the box and its scope).
    pub fn rare_heap_bytes(&self) -> usize {
        self.rare.as_ref().map_or(0, |rare| {
            std::mem::size_of::<GrantRare>() + rare.scope.as_ref().map_or(0, |s| size_of_val(&**s))
        })
    }

    /// Adds to the held credits (`amount` may be negative).
    fn add_held(&mut self, amount: Credits) {
        if !amount.is_zero() {
            self.rare_mut().held += amount;
        }
    }

    fn burn_order(&self, other: &Grant) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| self.expiry.cmp(&other.expiry))
            .then_with(|| self.cost_basis.cmp(&other.cost_basis))
            .then_with(|| self.granted_at.cmp(&other.granted_at))
            .then_with(|| self.id.as_bytes().cmp(other.id.as_bytes()))
            .then_with(|| self.serial.cmp(&other.serial))
    }

    /// May pay for `meter` (or, with `None`, anything of its type) at `ts`.
    fn eligible(&self, credit_type: CreditTypeId, meter: Option<MeterId>, ts: Instant) -> bool {
        self.status == GrantStatus::Live
            && self.credit_type == credit_type
            && self.effective_at <= ts
            && ts < self.expiry
            && match (meter, self.scope()) {
                (Some(meter), Some(scope)) => scope.contains(&meter),
                _ => true,
            }
    }

    fn spendable(&self) -> Credits {
        self.remaining - self.held()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// Unique per account for its lifetime (shared numbering with grants): a hold id may be
    /// reused once its hold has closed, the serial never is.
    pub serial: u32,
    pub id: Box<str>,
    pub meter: MeterId,
    pub dims: Vec<(String, String)>,
    pub expires_at: Instant,
    /// (grant serial, credits held on it).
    pub claims: Vec<(u32, Credits)>,
}

impl Hold {
    pub fn credits(&self) -> Credits {
        self.claims.iter().fold(Credits::ZERO, |sum, c| sum + c.1)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub granted: Credits,
    pub consumed: Credits,
    pub expired: Credits,
    pub voided: Credits,
    pub adjusted: Credits,
    pub settled: Credits,
    pub returned: Credits,
}

impl Ledger {
    pub fn balance(&self) -> Credits {
        self.granted - self.consumed - self.expired - self.voided
            + self.adjusted
            + self.settled
            + self.returned
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RevenueTotals {
    pub opening: Revenue,
    pub granted: Revenue,
    pub recognized: Revenue,
    pub breakage: Revenue,
    pub removed: Revenue,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub name: Box<str>,
    pub below: bool,
    pub lows: u32,
    pub recoveries: u32,
}

/// Per credit type state of an account.
///
/// The totals a usage event moves are inline; the ones most accounts never move (debt,
/// expiry, voids, adjustments, settlement, returns, breakage, removals) and the alert states
/// are in [`RareTotals`], boxed and allocated the first time one of them is written non-zero
/// or an alert first fires. A type state is 112 bytes instead of 256 with all of them inline;
/// an account that has them pays 160 more (and its alert states).
/// [`TypeState::ledger`] and [`TypeState::revenue`] give the full totals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[repr(align(64))]
pub struct TypeState {
    pub credit_type: CreditTypeId,
    /// Ledger: credits granted (lifetime).
    pub granted: Credits,
    /// Ledger: credits consumed by usage (lifetime).
    pub consumed: Credits,
    /// Allowance + top-ups + purchases granted this period: the base of percent thresholds.
    pub period_base: Credits,
    /// Revenue this period: deferred at its opening.
    pub revenue_opening: Revenue,
    /// Revenue this period: granted at cost basis.
    pub revenue_granted: Revenue,
    /// Revenue this period: recognised.
    pub recognized: Revenue,
    rare: Option<Box<RareTotals>>,
}

/// The parts of a [`TypeState`] that most accounts leave at zero or empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RareTotals {
    /// Overage owed (≥ 0).
    pub debt: Credits,
    pub expired: Credits,
    pub voided: Credits,
    pub adjusted: Credits,
    pub settled: Credits,
    pub returned: Credits,
    /// Revenue this period: breakage.
    pub breakage: Revenue,
    /// Revenue this period: removed by voids and negative adjustments.
    pub removed: Revenue,
    /// Alert thresholds ever crossed (a state is created at its first crossing).
    pub alerts: Vec<AlertState>,
}

static NO_RARE_TOTALS: RareTotals = RareTotals {
    debt: Credits::ZERO,
    expired: Credits::ZERO,
    voided: Credits::ZERO,
    adjusted: Credits::ZERO,
    settled: Credits::ZERO,
    returned: Credits::ZERO,
    breakage: Revenue::ZERO,
    removed: Revenue::ZERO,
    alerts: Vec::new(),
};

impl TypeState {
    fn new(credit_type: CreditTypeId) -> TypeState {
        TypeState {
            credit_type,
            granted: Credits::ZERO,
            consumed: Credits::ZERO,
            period_base: Credits::ZERO,
            revenue_opening: Revenue::ZERO,
            revenue_granted: Revenue::ZERO,
            recognized: Revenue::ZERO,
            rare: None,
        }
    }

    /// The rarely moved totals (zeros when never written).
    pub fn rare(&self) -> &RareTotals {
        self.rare.as_deref().unwrap_or(&NO_RARE_TOTALS)
    }

    /// The rarely moved totals, to write: allocates them on first use, so callers write only
    /// non-zero amounts.
    fn rare_mut(&mut self) -> &mut RareTotals {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Heap bytes of the rare totals without the alert states (0 while never written).
    pub fn rare_heap_bytes(&self) -> usize {
        self.rare
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<RareTotals>())
    }

    /// Heap bytes of the alert states, names included.
    pub fn alert_heap_bytes(&self) -> usize {
        let alerts = &self.rare().alerts;
        alerts.capacity() * std::mem::size_of::<AlertState>()
            + alerts.iter().map(|a| a.name.len()).sum::<usize>()
    }

    /// Overage owed.
    pub fn debt(&self) -> Credits {
        self.rare().debt
    }

    pub fn ledger(&self) -> Ledger {
        let rare = self.rare();
        Ledger {
            granted: self.granted,
            consumed: self.consumed,
            expired: rare.expired,
            voided: rare.voided,
            adjusted: rare.adjusted,
            settled: rare.settled,
            returned: rare.returned,
        }
    }

    pub fn revenue(&self) -> RevenueTotals {
        let rare = self.rare();
        RevenueTotals {
            opening: self.revenue_opening,
            granted: self.revenue_granted,
            recognized: self.recognized,
            breakage: rare.breakage,
            removed: rare.removed,
        }
    }

    /// Adds `amount` to one rare total, allocating them only when it is non-zero.
    fn add_rare<const S: u8>(
        &mut self,
        field: fn(&mut RareTotals) -> &mut crate::decimal::Fixed<S>,
        amount: crate::decimal::Fixed<S>,
    ) {
        if !amount.is_zero() {
            *field(self.rare_mut()) += amount;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LineKind {
    Usage,
    Overage,
    OverageRepaid,
    Topup,
    Allowance,
    PlanFee,
    Adjustment,
    Reversal,
}

impl LineKind {
    pub fn name(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::Overage => "overage",
            LineKind::OverageRepaid => "overage_repaid",
            LineKind::Topup => "topup",
            LineKind::Allowance => "allowance",
            LineKind::PlanFee => "plan_fee",
            LineKind::Adjustment => "adjustment",
            LineKind::Reversal => "reversal",
        }
    }

    /// Whether lines of this kind carry a quantity (`usage`, `reversal`).
    pub fn has_quantity(self) -> bool {
        matches!(self, LineKind::Usage | LineKind::Reversal)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub kind: LineKind,
    pub meter: Option<MeterId>,
    pub credit_type: CreditTypeId,
    pub quantity: Quantity,
    pub credits: Credits,
    /// Exact; rounded once when emitted.
    pub money: Revenue,
    pub version: u32,
    pub dirty: bool,
}

impl Line {
    /// The order lines are emitted in (SEMANTICS §11): kind, then meter, then credit type.
    pub fn order_key(&self) -> (LineKind, u32, CreditTypeId) {
        (
            self.kind,
            self.meter.map_or(u32::MAX, |m| u32::from(m.0)),
            self.credit_type,
        )
    }
}

/// Kinds of transitions in time, in their order at one instant (SEMANTICS §10.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    HoldExpiry(usize),
    GrantExpiry(usize),
    PeriodClose,
    Flush,
    Expiring(usize),
}

impl Due {
    fn rank(self) -> u8 {
        match self {
            Due::HoldExpiry(_) => 0,
            Due::GrantExpiry(_) => 1,
            Due::PeriodClose => 2,
            Due::Flush => 3,
            Due::Expiring(_) => 4,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Inline when short (account ids usually are): compared in place by the partition index.
    pub id: ShortStr,
    pub plan: PlanId,
    pub clock: Instant,
    pub period_start: Instant,
    pub period_end: Instant,
    /// When the dirty invoice lines are flushed next ([`NO_TIMER`]: none are dirty).
    pub flush_due: Instant,
    /// Earliest time this account has an entry in its partition's timer heap.
    pub timer: Instant,
    /// Per-account lists are boxed slices, exactly as long as their contents (8 bytes less
    /// each than a `Vec`'s header; they grow rarely, one element at a time, through
    /// `insert_one` and `retain_in`). Serialized as sequences, like a `Vec`.
    pub types: Box<[TypeState]>,
    pub grants: Box<[Grant]>,
    /// Lines of the open period.
    pub lines: Box<[Line]>,
    pub next_serial: u32,
    /// 1 for the account's first period, +1 at every period opened: what invoice line and
    /// revenue ids name a period by (two periods can share a start instant).
    pub period_number: u32,
    /// Policy override, holds, top-up counters: allocated the first time one is set.
    rare: Option<Box<AccountRare>>,
}

/// The parts of an [`Account`] most accounts never use (160 bytes of record instead of 208).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountRare {
    /// The `set_policy` override: its canonical JSON and its compiled form.
    pub policy_override: Option<Box<(String, Policy)>>,
    /// Sorted by id.
    pub holds: Vec<Hold>,
    pub topups_in_period: u32,
    pub last_topup: Option<Instant>,
}

static NO_ACCOUNT_RARE: AccountRare = AccountRare {
    policy_override: None,
    holds: Vec::new(),
    topups_in_period: 0,
    last_topup: None,
};

/// What a charge should do when credits run out.
#[derive(Clone, Copy, Debug)]
enum Shortfall {
    Reject,
    Overage(Overage),
}

/// What remains to do after paying: the post-payment top-up check (SEMANTICS §7).
struct PostPay {
    rule: Option<TopupRule>,
    topups: u32,
}

/// Outcome of trying to pay.
enum Payment {
    Rejected {
        reason: &'static str,
        available: Credits,
    },
    Paid {
        charge: Charge,
        unpaid: Credits,
    },
}

pub const NO_TIMER: Instant = Instant(i64::MAX);

/// Prefetches every 64-byte line of `bytes` bytes from `start` (at most 8 lines).
fn prefetch_bytes<T>(start: *const T, bytes: usize) {
    let start = start.cast::<u8>();
    for offset in (0..bytes.min(512)).step_by(64) {
        crate::engine::compact::prefetch(start.wrapping_add(offset));
    }
}

fn money(credits: Credits, price: Price) -> Revenue {
    credits
        .times_price(price)
        .expect("credits × price overflow: amount limits are broken")
}

impl Account {
    /// A new account at `ts` on `plan`, with the plan's period containing `ts` opened.
    pub fn new(ctx: &mut Context<'_>, id: &str, plan: PlanId, ts: Instant) -> Account {
        let plan_def = ctx.catalog.plan(plan);
        let (start, end) = plan_def.period.period_containing(&plan_def.time_zone, ts);
        let mut account = Account {
            id: id.into(),
            plan,
            clock: ts,
            period_start: start,
            period_end: end,
            flush_due: NO_TIMER,
            timer: NO_TIMER,
            types: Box::default(),
            grants: Box::default(),
            lines: Box::default(),
            next_serial: 1,
            period_number: 0,
            rare: None,
        };
        account.open_period(ctx, start, end, ts);
        account
    }

    /// Starts loading this record's cache lines (see `Partition::prefetch_buckets`).
    pub fn prefetch(&self) {
        prefetch_bytes(self as *const Account, std::mem::size_of::<Account>());
    }

    /// Starts loading the first per-type state, the first grant and the open lines: what a usage
    /// event reads and writes.
    pub fn prefetch_data(&self) {
        if let Some(first) = self.types.first() {
            prefetch_bytes(first as *const TypeState, std::mem::size_of::<TypeState>());
        }
        if let Some(grants) = self.grants.get(..self.grants.len().min(1)) {
            prefetch_bytes(grants.as_ptr(), std::mem::size_of_val(grants));
        }
        prefetch_bytes(self.lines.as_ptr(), std::mem::size_of_val(&self.lines[..]));
    }

    fn rare(&self) -> &AccountRare {
        self.rare.as_deref().unwrap_or(&NO_ACCOUNT_RARE)
    }

    /// Allocates the rare parts on first use: callers write only non-empty values.
    fn rare_mut(&mut self) -> &mut AccountRare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Open holds, sorted by id.
    pub fn holds(&self) -> &[Hold] {
        &self.rare().holds
    }

    /// The `set_policy` override: its canonical JSON and its compiled form.
    pub fn policy_override(&self) -> Option<&(String, Policy)> {
        self.rare().policy_override.as_deref()
    }

    /// Heap bytes of the rare parts (box, override, holds).
    pub fn rare_heap_bytes(&self) -> usize {
        self.rare.as_ref().map_or(0, |rare| {
            std::mem::size_of::<AccountRare>()
                + rare
                    .policy_override
                    .as_ref()
                    .map_or(0, |p| size_of_val(&**p) + p.0.capacity())
                + rare.holds.capacity() * std::mem::size_of::<Hold>()
        })
    }

    fn plan<'c>(&self, catalog: &'c Catalog) -> &'c Plan {
        catalog.plan(self.plan)
    }

    fn policy<'s>(&'s self, catalog: &'s Catalog) -> &'s Policy {
        match self.policy_override() {
            Some(over) => &over.1,
            None => &catalog.plan(self.plan).policy,
        }
    }

    /// The overage price of the effective policy (0 when it has none).
    fn overage_price(&self, catalog: &Catalog) -> Price {
        match self.policy(catalog) {
            Policy::Overage(o) => o.price,
            Policy::AutoTopup(TopupRule {
                fallback: Fallback::Overage(o),
                ..
            }) => o.price,
            _ => Price::ZERO,
        }
    }

    pub fn type_index(&mut self, credit_type: CreditTypeId) -> usize {
        // Most accounts use one credit type.
        if let Some(first) = self.types.first() {
            if first.credit_type == credit_type {
                return 0;
            }
        }
        match self
            .types
            .binary_search_by_key(&credit_type, |t| t.credit_type)
        {
            Ok(index) => index,
            Err(index) => {
                insert_one(&mut self.types, index, TypeState::new(credit_type));
                index
            }
        }
    }

    pub fn balance(&self, credit_type: CreditTypeId) -> Credits {
        let remaining = self
            .grants
            .iter()
            .filter(|g| g.credit_type == credit_type)
            .fold(Credits::ZERO, |sum, g| sum + g.remaining);
        let debt = self
            .types
            .iter()
            .find(|t| t.credit_type == credit_type)
            .map_or(Credits::ZERO, TypeState::debt);
        remaining - debt
    }

    pub fn held(&self, credit_type: CreditTypeId) -> Credits {
        self.grants
            .iter()
            .filter(|g| g.credit_type == credit_type)
            .fold(Credits::ZERO, |sum, g| sum + g.held())
    }

    fn deferred(&self, credit_type: CreditTypeId) -> Revenue {
        self.grants
            .iter()
            .filter(|g| g.credit_type == credit_type && g.status == GrantStatus::Live)
            .fold(Revenue::ZERO, |sum, g| {
                sum + money(g.remaining, g.cost_basis)
            })
    }

    fn spendable(&self, credit_type: CreditTypeId, meter: Option<MeterId>, ts: Instant) -> Credits {
        self.grants
            .iter()
            .filter(|g| g.eligible(credit_type, meter, ts))
            .fold(Credits::ZERO, |sum, g| sum + g.spendable())
    }

    /// What a charge can draw (exactly what [`Account::draw`] takes): the spendable credits of
    /// eligible grants and, for a commit, what its hold had claimed on each grant, even a grant
    /// not eligible at `ts` (the reservation was made when it was).
    fn drawable(
        &self,
        credit_type: CreditTypeId,
        meter: MeterId,
        ts: Instant,
        claims: Option<&[(u32, Credits)]>,
    ) -> Credits {
        self.grants.iter().fold(Credits::ZERO, |sum, g| {
            let claimed = claims
                .and_then(|claims| claims.iter().find(|c| c.0 == g.serial))
                .filter(|_| g.status == GrantStatus::Live && g.credit_type == credit_type)
                .map_or(Credits::ZERO, |c| c.1.min(g.spendable()));
            let free = if g.eligible(credit_type, Some(meter), ts) {
                g.spendable() - claimed
            } else {
                Credits::ZERO
            };
            sum + claimed + free
        })
    }

    /// The most a usage charge of `meter` at `ts` can cost and still be paid, as
    /// [`Account::pay`] decides: what it can draw plus the overage room of the effective policy,
    /// after the top-up the policy makes first for a charge the credits do not cover (when one
    /// is allowed now). A charge costing at most this is paid; one costing more is rejected.
    pub(super) fn payable(&self, catalog: &Catalog, meter: MeterId, ts: Instant) -> Credits {
        let credit_type = catalog.meter(meter).credit_type;
        let after_topup = match self.policy(catalog) {
            Policy::AutoTopup(rule)
                if rule.credit_type == credit_type && self.topup_allowed(rule, ts) =>
            {
                let rule = rule.clone();
                let mut copy = self.clone();
                let mut out = Vec::new();
                let mut ctx = Context {
                    catalog,
                    seq: 0,
                    out: &mut out,
                };
                copy.topup(&mut ctx, &rule, "payable", ts, &mut 0);
                Some(copy)
            }
            _ => None,
        };
        let account = after_topup.as_ref().unwrap_or(self);
        account.drawable(credit_type, meter, ts, None) + account.overage_room(catalog, credit_type)
    }

    /// How far the effective policy lets the debt of `credit_type` grow from here (0 without an
    /// overage policy or fallback).
    pub(super) fn overage_room(&self, catalog: &Catalog, credit_type: CreditTypeId) -> Credits {
        let overage = match self.policy(catalog) {
            Policy::Overage(o) => Some(o),
            Policy::AutoTopup(TopupRule {
                fallback: Fallback::Overage(o),
                ..
            }) => Some(o),
            _ => None,
        };
        let debt = self
            .types
            .iter()
            .find(|t| t.credit_type == credit_type)
            .map_or(Credits::ZERO, TypeState::debt);
        overage.map_or(Credits::ZERO, |o| (o.limit - debt).max(Credits::ZERO))
    }

    /// The spendable credits of `credit_type` at `ts` in every live grant effective then,
    /// whatever meters it is scoped to: what a balance query calls spendable.
    pub(super) fn spendable_any_meter(&self, credit_type: CreditTypeId, ts: Instant) -> Credits {
        self.spendable(credit_type, None, ts)
    }

    fn grant_by_serial(&mut self, serial: u32) -> Option<&mut Grant> {
        self.grants.iter_mut().find(|g| g.serial == serial)
    }

    // ---------------------------------------------------------------- invoice lines

    fn line(
        &mut self,
        kind: LineKind,
        meter: Option<MeterId>,
        credit_type: CreditTypeId,
    ) -> &mut Line {
        let position = self
            .lines
            .iter()
            .position(|l| l.kind == kind && l.meter == meter && l.credit_type == credit_type);
        let index = match position {
            Some(index) => index,
            None => {
                let index = self.lines.len();
                insert_one(
                    &mut self.lines,
                    index,
                    Line {
                        kind,
                        meter,
                        credit_type,
                        quantity: Quantity::ZERO,
                        credits: Credits::ZERO,
                        money: Revenue::ZERO,
                        version: 0,
                        dirty: false,
                    },
                );
                index
            }
        };
        &mut self.lines[index]
    }

    /// Adds to a line and schedules its flush.
    #[allow(clippy::too_many_arguments)]
    fn book(
        &mut self,
        catalog: &Catalog,
        kind: LineKind,
        meter: Option<MeterId>,
        credit_type: CreditTypeId,
        quantity: Quantity,
        credits: Credits,
        money: Revenue,
    ) {
        let line = self.line(kind, meter, credit_type);
        line.quantity += quantity;
        line.credits += credits;
        line.money += money;
        line.dirty = true;
        if self.flush_due == NO_TIMER {
            let interval = catalog.rules.flush_interval.millis().max(1);
            let next = (self.clock.millis().div_euclid(interval) + 1) * interval;
            self.flush_due = Instant(next);
        }
    }

    fn emit_line(&self, ctx: &mut Context<'_>, line: &Line, ts: Instant, is_final: bool) {
        let catalog = ctx.catalog;
        let period_start = self.period_start;
        let credit_type = catalog.credit_type(line.credit_type).name.clone();
        let meter = line
            .meter
            .map_or_else(|| "-".to_string(), |m| catalog.meter(m).name.clone());
        let line_id = format!(
            "line:{}:{}:{}:{}:{}",
            self.id,
            self.period_number,
            line.kind.name(),
            meter,
            credit_type
        );
        let body = Body::InvoiceLine(InvoiceLine {
            line_id: line_id.clone(),
            version: line.version,
            is_final,
            period_start,
            period_end: self.period_end,
            kind: line.kind.name(),
            meter,
            credit_type,
            quantity: line.kind.has_quantity().then_some(line.quantity),
            credits: line.credits,
            money: line
                .money
                .round_money(catalog.currency.scale, catalog.currency.rounding),
            currency: catalog.currency.code.clone(),
        });
        ctx.out.push(Output {
            id: format!("{line_id}:v{}", line.version),
            account: Some(self.id.to_string()),
            seq: ctx.seq,
            ts: Some(ts),
            body,
        });
    }

    fn flush(&mut self, ctx: &mut Context<'_>, ts: Instant) {
        self.flush_due = NO_TIMER;
        self.lines.sort_by_key(Line::order_key);
        let mut lines = std::mem::take(&mut self.lines);
        for line in lines.iter_mut().filter(|l| l.dirty) {
            line.version += 1;
            line.dirty = false;
            self.emit_line(ctx, line, ts, false);
        }
        self.lines = lines;
    }

    // ---------------------------------------------------------------- outputs

    fn emit(&self, ctx: &mut Context<'_>, id: String, ts: Instant, body: Body) {
        ctx.out.push(Output {
            id,
            account: Some(self.id.to_string()),
            seq: ctx.seq,
            ts: Some(ts),
            body,
        });
    }

    fn emit_result(
        &self,
        ctx: &mut Context<'_>,
        command: &'static str,
        command_id: &str,
        ts: Instant,
        rejected: Option<&'static str>,
        detail: ResultDetail,
    ) {
        let id = format!("result:{}:{}:{}", self.id, command_id, ctx.seq);
        self.emit(
            ctx,
            id,
            ts,
            Body::CommandResult(CommandResult {
                command,
                command_id: command_id.to_string(),
                rejected,
                detail,
            }),
        );
    }

    // ---------------------------------------------------------------- grants

    /// Adds a grant: pays debt first (§5.2), inserts it in burn order, books revenue.
    /// Returns its serial. The caller books the ledger term and invoice line.
    #[allow(clippy::too_many_arguments)]
    fn add_grant(
        &mut self,
        ctx: &mut Context<'_>,
        id: &str,
        credit_type: CreditTypeId,
        source: Source,
        amount: Credits,
        priority: i32,
        effective_at: Instant,
        expires_at: Option<Instant>,
        cost_basis: Price,
        granted_at: Instant,
        scope: Option<Box<[MeterId]>>,
        rollover_cap: Credits,
        counts_as_granted_revenue: bool,
    ) -> u32 {
        let t = self.type_index(credit_type);
        let paid = amount.min(self.types[t].debt());
        self.types[t].add_rare(|r| &mut r.debt, -paid);
        if counts_as_granted_revenue {
            self.types[t].revenue_granted += money(amount, cost_basis);
        }
        self.types[t].recognized += money(paid, cost_basis);
        let serial = self.next_serial;
        self.next_serial += 1;
        let rare = (scope.is_some() || !rollover_cap.is_zero()).then(|| {
            Box::new(GrantRare {
                scope,
                rollover_cap,
                ..GrantRare::default()
            })
        });
        let grant = Grant {
            serial,
            id: id.into(),
            credit_type,
            source,
            status: GrantStatus::Live,
            amount,
            remaining: amount - paid,
            priority,
            effective_at,
            expiry: expires_at.unwrap_or(NEVER),
            cost_basis,
            granted_at,
            warned: false,
            recognized_in_period: paid,
            rare,
        };
        let position = self
            .grants
            .partition_point(|g| g.burn_order(&grant) == Ordering::Less);
        insert_one(&mut self.grants, position, grant);
        if paid.is_positive() {
            let price = self.overage_price(ctx.catalog);
            self.book(
                ctx.catalog,
                LineKind::OverageRepaid,
                None,
                credit_type,
                Quantity::ZERO,
                -paid,
                -money(paid, price),
            );
        }
        serial
    }

    /// Draws up to `needed` from eligible grants in burn order; `only` restricts to (serial,
    /// limit) claims. Returns what was drawn per grant.
    fn draw(
        &mut self,
        credit_type: CreditTypeId,
        meter: Option<MeterId>,
        ts: Instant,
        needed: Credits,
        only: Option<&[(u32, Credits)]>,
        draws: &mut Draws,
    ) -> Credits {
        let mut rest = needed;
        for grant in self.grants.iter_mut() {
            if !rest.is_positive() {
                break;
            }
            let limit = match only {
                Some(claims) => {
                    let Some(claim) = claims.iter().find(|c| c.0 == grant.serial) else {
                        continue;
                    };
                    if grant.status != GrantStatus::Live || grant.credit_type != credit_type {
                        continue;
                    }
                    claim.1
                }
                None => {
                    if !grant.eligible(credit_type, meter, ts) {
                        continue;
                    }
                    rest
                }
            };
            let take = rest.min(limit).min(grant.spendable());
            if !take.is_positive() {
                continue;
            }
            grant.remaining -= take;
            grant.recognized_in_period += take;
            rest -= take;
            match draws.iter_mut().find(|d| d.0 == grant.serial) {
                Some(existing) => existing.1 += take,
                None => draws.push((grant.serial, take, grant.cost_basis)),
            }
        }
        needed - rest
    }

    /// Releases every claim a hold has (credits become spendable again); returns the total.
    fn release_claims(&mut self, claims: &[(u32, Credits)]) -> Credits {
        let mut released = Credits::ZERO;
        for &(serial, amount) in claims {
            if let Some(grant) = self.grant_by_serial(serial) {
                let amount = amount.min(grant.held());
                grant.add_held(-amount);
                released += amount;
            }
        }
        released
    }

    /// A grant lost its credits (expiry, void): holds lose their claims on it.
    fn drop_claims_on(&mut self, serial: u32) {
        if let Some(rare) = &mut self.rare {
            for hold in &mut rare.holds {
                hold.claims.retain(|c| c.0 != serial);
            }
        }
    }

    // ---------------------------------------------------------------- time

    /// The next transition due, if any, with its time.
    fn next_due(&self, catalog: &Catalog) -> Option<(Instant, Due)> {
        let mut best: Option<(Instant, Due)> = None;
        let mut consider = |at: Instant, due: Due| {
            let better = match best {
                None => true,
                Some((t, d)) => (at, due.rank()) < (t, d.rank()),
            };
            if better {
                best = Some((at, due));
            }
        };
        for (index, hold) in self.holds().iter().enumerate() {
            consider(hold.expires_at, Due::HoldExpiry(index));
        }
        let lead = self.plan(catalog).expiring_lead;
        for (index, grant) in self.grants.iter().enumerate() {
            if grant.status != GrantStatus::Live {
                continue;
            }
            if let Some(expires_at) = grant.expires_at() {
                consider(expires_at, Due::GrantExpiry(index));
                if let (Some(lead), false) = (lead, grant.warned) {
                    consider(expires_at.saturating_sub(lead), Due::Expiring(index));
                }
            }
        }
        consider(self.period_end, Due::PeriodClose);
        if self.flush_due != NO_TIMER {
            consider(self.flush_due, Due::Flush);
        }
        best
    }

    /// The earliest instant this account needs to be advanced at.
    pub fn next_due_time(&self, catalog: &Catalog) -> Instant {
        self.next_due(catalog).map_or(NO_TIMER, |(t, _)| t)
    }

    /// Performs every transition due at or before `target`, in order, and moves the clock to
    /// `target` if it is later (SEMANTICS §3, §10). Returns the next transition's time after
    /// that ([`Account::next_due_time`], found on the way: callers need not compute it again).
    pub fn advance(&mut self, ctx: &mut Context<'_>, target: Instant) -> Instant {
        let mut next = NO_TIMER;
        while let Some((due_at, due)) = self.next_due(ctx.catalog) {
            if due_at > target {
                next = due_at;
                break;
            }
            let at = due_at.max(self.clock);
            self.clock = at;
            match due {
                Due::HoldExpiry(index) => self.expire_hold(ctx, index, at),
                Due::GrantExpiry(index) => self.expire_grant(ctx, index, at),
                Due::PeriodClose => {
                    let plan = self.plan(ctx.catalog);
                    let end = plan
                        .period
                        .period_end_after(&plan.time_zone, self.period_end);
                    self.close_period(ctx, at, self.period_end, end);
                }
                Due::Flush => self.flush(ctx, at),
                Due::Expiring(index) => self.warn_expiring(ctx, index, at),
            }
            self.evaluate_alerts(ctx, at);
        }
        // Moving the clock changes no transition's time.
        if target > self.clock {
            self.clock = target;
        }
        next
    }

    fn expire_hold(&mut self, ctx: &mut Context<'_>, index: usize, at: Instant) {
        let hold = self.rare_mut().holds.remove(index);
        let released = self.release_claims(&hold.claims);
        let id = format!("hold:{}:{}:{}:expired", self.id, hold.id, hold.serial);
        self.emit(
            ctx,
            id,
            at,
            Body::HoldExpired {
                hold_id: hold.id.to_string(),
                credits_released: released,
            },
        );
    }

    fn expire_grant(&mut self, ctx: &mut Context<'_>, index: usize, at: Instant) {
        let (serial, credit_type, remaining, basis, rollover_cap, source) = {
            let g = &mut self.grants[index];
            let remaining = g.remaining;
            g.remaining = Credits::ZERO;
            g.add_held(-g.held());
            g.status = GrantStatus::Expired;
            (
                g.serial,
                g.credit_type,
                remaining,
                g.cost_basis,
                g.rollover_cap(),
                g.source,
            )
        };
        self.drop_claims_on(serial);
        let roll = if source == Source::Allowance {
            remaining.min(rollover_cap)
        } else {
            Credits::ZERO
        };
        let expired = remaining - roll;
        let t = self.type_index(credit_type);
        self.types[t].add_rare(|r| &mut r.expired, expired);
        self.types[t].add_rare(|r| &mut r.breakage, money(expired, basis));
        let grant = &mut self.grants[index];
        if !expired.is_zero() {
            grant.rare_mut().expired_in_period += expired;
        }
        let grant_id = grant.id.to_string();
        let (priority, scope) = (grant.priority, grant.scope().map(Box::<[MeterId]>::from));
        if expired.is_positive() {
            let id = format!("expired:{}:{}:{}", self.id, grant_id, serial);
            let credit_type_name = ctx.catalog.credit_type(credit_type).name.clone();
            self.emit(
                ctx,
                id,
                at,
                Body::GrantExpired {
                    grant_id: grant_id.clone(),
                    credit_type: credit_type_name,
                    credits: expired,
                    breakage: money(expired, basis),
                },
            );
        }
        if roll.is_positive() {
            let plan = self.plan(ctx.catalog);
            let (_, end) = plan.period.period_containing(&plan.time_zone, at);
            self.add_grant(
                ctx,
                &format!("rollover-{grant_id}"),
                credit_type,
                Source::Rollover,
                roll,
                priority,
                at,
                Some(end),
                basis,
                at,
                scope,
                Credits::ZERO,
                false,
            );
        }
    }

    fn warn_expiring(&mut self, ctx: &mut Context<'_>, index: usize, at: Instant) {
        let grant = &mut self.grants[index];
        grant.warned = true;
        if !grant.remaining.is_positive() {
            return;
        }
        let body = Body::GrantExpiring {
            grant_id: grant.id.to_string(),
            credit_type: ctx.catalog.credit_type(grant.credit_type).name.clone(),
            remaining: grant.remaining,
            expires_at: grant.expires_at().unwrap_or(at),
        };
        let id = format!("expiring:{}:{}:{}", self.id, grant.id, grant.serial);
        self.emit(ctx, id, at, body);
    }

    /// Closes the open period at `at` (its natural end, or a plan switch) and opens
    /// `[at, next_end)` on the account's (possibly new) plan (SEMANTICS §10.3).
    fn close_period(
        &mut self,
        ctx: &mut Context<'_>,
        at: Instant,
        closed_end: Instant,
        next_end: Instant,
    ) {
        self.period_end = closed_end;
        for t in &mut self.types {
            let debt = t.debt();
            t.add_rare(|r| &mut r.settled, debt);
            t.add_rare(|r| &mut r.debt, -debt);
        }
        self.flush_due = NO_TIMER;
        self.lines.sort_by_key(Line::order_key);
        let mut lines = std::mem::take(&mut self.lines);
        for line in &mut lines {
            line.version += 1;
            self.emit_line(ctx, line, at, true);
        }
        self.emit_revenue(ctx, at);
        retain_in(&mut self.grants, |g| {
            g.status == GrantStatus::Live && (g.remaining.is_positive() || g.held().is_positive())
        });
        self.open_period(ctx, at, next_end, at);
    }

    fn emit_revenue(&mut self, ctx: &mut Context<'_>, at: Instant) {
        for index in 0..self.types.len() {
            let credit_type = self.types[index].credit_type;
            let closing = self.deferred(credit_type);
            let totals = self.types[index].revenue();
            let all_zero = [
                totals.opening,
                totals.granted,
                totals.recognized,
                totals.breakage,
                totals.removed,
                closing,
            ]
            .iter()
            .all(|v| v.is_zero());
            if all_zero {
                continue;
            }
            let lots = self
                .grants
                .iter()
                .filter(|g| {
                    g.credit_type == credit_type
                        && (!g.recognized_in_period.is_zero() || !g.expired_in_period().is_zero())
                })
                .map(|g| RevenueLot {
                    grant_id: g.id.to_string(),
                    cost_basis: g.cost_basis,
                    recognized_credits: g.recognized_in_period,
                    recognized: money(g.recognized_in_period, g.cost_basis),
                    breakage_credits: g.expired_in_period(),
                    breakage: money(g.expired_in_period(), g.cost_basis),
                })
                .collect();
            let name = ctx.catalog.credit_type(credit_type).name.clone();
            let body = Body::RevenuePeriod(RevenuePeriod {
                period_start: self.period_start,
                period_end: self.period_end,
                credit_type: name.clone(),
                opening_deferred: totals.opening,
                granted: totals.granted,
                recognized: totals.recognized,
                breakage: totals.breakage,
                removed: totals.removed,
                closing_deferred: closing,
                lots,
            });
            let id = format!("revenue:{}:{}:{}", self.id, self.period_number, name);
            self.emit(ctx, id, at, body);
        }
    }

    /// Opens `[start, end)`: resets period counters and grants the plan's allowance at `at`.
    fn open_period(&mut self, ctx: &mut Context<'_>, start: Instant, end: Instant, at: Instant) {
        self.period_start = start;
        self.period_number += 1;
        self.period_end = end;
        if let Some(rare) = &mut self.rare {
            rare.topups_in_period = 0;
        }
        for index in 0..self.types.len() {
            let credit_type = self.types[index].credit_type;
            let opening = self.deferred(credit_type);
            let t = &mut self.types[index];
            t.period_base = Credits::ZERO;
            t.revenue_opening = opening;
            t.revenue_granted = Revenue::ZERO;
            t.recognized = Revenue::ZERO;
            if let Some(rare) = &mut t.rare {
                rare.breakage = Revenue::ZERO;
                rare.removed = Revenue::ZERO;
            }
        }
        for grant in &mut self.grants {
            grant.recognized_in_period = Credits::ZERO;
            if let Some(rare) = &mut grant.rare {
                rare.expired_in_period = Credits::ZERO;
            }
        }
        let catalog = ctx.catalog;
        let plan = self.plan(catalog);
        let price = plan.price;
        let allowances = plan.allowances.clone();
        for (index, allowance) in allowances.iter().enumerate() {
            let id = format!("allowance-{}-{}", start.millis(), index + 1);
            self.add_grant(
                ctx,
                &id,
                allowance.credit_type,
                Source::Allowance,
                allowance.amount,
                allowance.priority,
                start,
                Some(end),
                Price::ZERO,
                start,
                allowance.scope.clone().map(Vec::into_boxed_slice),
                allowance.rollover_cap,
                true,
            );
            let t = self.type_index(allowance.credit_type);
            self.types[t].granted += allowance.amount;
            self.types[t].period_base += allowance.amount;
            self.book(
                catalog,
                LineKind::Allowance,
                None,
                allowance.credit_type,
                Quantity::ZERO,
                allowance.amount,
                Revenue::ZERO,
            );
        }
        if price.is_positive() {
            let fee = Revenue::ZERO + money(Fixed(1_000_000_000), price);
            self.book(
                catalog,
                LineKind::PlanFee,
                None,
                CreditTypeId(0),
                Quantity::ZERO,
                Credits::ZERO,
                fee,
            );
        }
        let _ = at;
    }

    // ---------------------------------------------------------------- alerts

    /// Evaluates every threshold of every credit type (SEMANTICS §10.5). Runs after every
    /// charge, so it allocates nothing unless an alert fires, and compares in fixed point.
    pub fn evaluate_alerts(&mut self, ctx: &mut Context<'_>, at: Instant) {
        let catalog = ctx.catalog;
        let plan = catalog.plan(self.plan);
        for index in 0..self.types.len() {
            let credit_type = self.types[index].credit_type;
            let balance = self.balance(credit_type);
            let base = self.types[index].period_base;
            for rule in plan.alerts.iter().filter(|a| a.credit_type == credit_type) {
                let below = match rule.threshold {
                    Threshold::Amount(amount) => balance < amount,
                    // balance < base × percent / 100, exactly: compare balance × 100.
                    Threshold::Percent(percent) => match base.to_dec().checked_mul(percent) {
                        Some(limit) => Dec::from_int(balance.0 * 100)
                            .checked_mul(Dec::new(1, Credits::SCALE).unwrap_or(Dec::ONE))
                            .is_some_and(|b| b < limit),
                        None => false,
                    },
                };
                self.alert_step(
                    ctx,
                    index,
                    &rule.name,
                    Some(rule.threshold),
                    below,
                    balance,
                    base,
                    at,
                );
            }
            let depleted = !balance.is_positive();
            self.alert_step(ctx, index, "depleted", None, depleted, balance, base, at);
        }
    }

    /// Records a threshold's state and emits `low`/`depleted` or `recovered` on a crossing.
    #[allow(clippy::too_many_arguments)]
    fn alert_step(
        &mut self,
        ctx: &mut Context<'_>,
        index: usize,
        name: &str,
        threshold: Option<Threshold>,
        below: bool,
        balance: Credits,
        base: Credits,
        at: Instant,
    ) {
        let position = self.types[index]
            .rare()
            .alerts
            .iter()
            .position(|s| &*s.name == name);
        let state = match position {
            Some(position) => &mut self.types[index].rare_mut().alerts[position],
            // A threshold without a state has never been crossed: not below, no counts. Its state
            // is created at its first crossing, so an account that never runs low stores none.
            None if !below => return,
            None => {
                let states = &mut self.types[index].rare_mut().alerts;
                states.reserve_exact(1);
                states.push(AlertState {
                    name: name.into(),
                    below: false,
                    lows: 0,
                    recoveries: 0,
                });
                states.last_mut().expect("just pushed")
            }
        };
        if below == state.below {
            return;
        }
        state.below = below;
        let credit_name = ctx
            .catalog
            .credit_type(self.types[index].credit_type)
            .name
            .clone();
        let state = self.types[index]
            .rare_mut()
            .alerts
            .iter_mut()
            .find(|s| &*s.name == name)
            .expect("just found");
        let (id, body) = if below {
            state.lows += 1;
            let id = format!(
                "alert:{}:{}:{}:low:{}",
                self.id, credit_name, name, state.lows
            );
            let body = match threshold {
                Some(threshold) => Body::BalanceLow {
                    credit_type: credit_name,
                    threshold: name.to_string(),
                    threshold_amount: match threshold {
                        Threshold::Amount(amount) => amount.to_dec(),
                        Threshold::Percent(percent) => base
                            .to_dec()
                            .checked_mul(percent)
                            .and_then(|v| v.checked_mul(Dec::new(1, 2).unwrap_or(Dec::ONE)))
                            .unwrap_or(Dec::ZERO)
                            .normalized(),
                    },
                    balance,
                },
                None => Body::BalanceDepleted {
                    credit_type: credit_name,
                    balance,
                },
            };
            (id, body)
        } else {
            state.recoveries += 1;
            let id = format!(
                "alert:{}:{}:{}:recovered:{}",
                self.id, credit_name, name, state.recoveries
            );
            let body = Body::BalanceRecovered {
                credit_type: credit_name,
                threshold: name.to_string(),
                balance,
            };
            (id, body)
        };
        self.emit(ctx, id, at, body);
    }

    // ---------------------------------------------------------------- charging

    fn topup_allowed(&self, rule: &TopupRule, ts: Instant) -> bool {
        let rare = self.rare();
        rare.topups_in_period < rule.max_per_period
            && rare
                .last_topup
                .is_none_or(|last| ts >= last.saturating_add(rule.cooldown))
    }

    /// Tops up per `rule` if allowed; returns whether it did.
    fn topup(
        &mut self,
        ctx: &mut Context<'_>,
        rule: &TopupRule,
        cause: &str,
        ts: Instant,
        nth: &mut u32,
    ) -> bool {
        if !self.topup_allowed(rule, ts) {
            return false;
        }
        let amount = match rule.amount {
            TopupAmount::Fixed(amount) => amount,
            TopupAmount::Target(target) => target - self.balance(rule.credit_type),
        };
        if !amount.is_positive() {
            return false;
        }
        *nth += 1;
        let grant_id = if *nth == 1 {
            format!("topup-{cause}")
        } else {
            format!("topup-{cause}-{nth}")
        };
        let serial = self.add_grant(
            ctx,
            &grant_id,
            rule.credit_type,
            Source::Topup,
            amount,
            rule.priority,
            ts,
            None,
            rule.price,
            ts,
            None,
            Credits::ZERO,
            true,
        );
        let t = self.type_index(rule.credit_type);
        self.types[t].granted += amount;
        self.types[t].period_base += amount;
        let rare = self.rare_mut();
        rare.topups_in_period += 1;
        rare.last_topup = Some(ts);
        let exact = money(amount, rule.price);
        self.book(
            ctx.catalog,
            LineKind::Topup,
            None,
            rule.credit_type,
            Quantity::ZERO,
            amount,
            exact,
        );
        let body = Body::TopupGranted {
            grant_id: grant_id.clone(),
            credit_type: ctx.catalog.credit_type(rule.credit_type).name.clone(),
            credits: amount,
            price: rule.price,
            money: exact.round_money(ctx.catalog.currency.scale, ctx.catalog.currency.rounding),
        };
        let id = format!("topup:{}:{}:{}", self.id, grant_id, serial);
        self.emit(ctx, id, ts, body);
        true
    }

    /// Pays `priced` for `meter` under the effective policy (SEMANTICS §7), booking lines and
    /// revenue; a commit passes its hold's claims and `never_refuse`.
    #[allow(clippy::too_many_arguments)]
    fn pay(
        &mut self,
        ctx: &mut Context<'_>,
        meter: MeterId,
        priced: &Priced,
        ts: Instant,
        cause: &str,
        claims: Option<&[(u32, Credits)]>,
        never_refuse: bool,
    ) -> (Payment, PostPay) {
        let catalog = ctx.catalog;
        let credit_type = catalog.meter(meter).credit_type;
        let cost = priced.cost;
        let policy = self.policy(catalog).clone();
        let mut topups = 0u32;
        let rule = match &policy {
            Policy::AutoTopup(rule) if rule.credit_type == credit_type => Some(rule.clone()),
            _ => None,
        };
        // A commit has already released its hold's claims, so they are spendable again here;
        // they are drawn first, even from a grant not eligible at the commit's ts (SEMANTICS §8).
        let spendable = |account: &Account| account.drawable(credit_type, meter, ts, claims);
        if let Some(rule) = &rule {
            if cost > spendable(self) && self.topup(ctx, rule, cause, ts, &mut topups) {
                self.evaluate_alerts(ctx, ts);
            }
        }
        let shortfall = match &policy {
            Policy::Reject => Shortfall::Reject,
            Policy::Overage(o) => Shortfall::Overage(*o),
            Policy::AutoTopup(rule) => match rule.fallback {
                Fallback::Reject => Shortfall::Reject,
                Fallback::Overage(o) => Shortfall::Overage(o),
            },
        };
        let available = spendable(self);
        let t = self.type_index(credit_type);
        let debt = self.types[t].debt();
        let (overage, unpaid) = if cost <= available {
            (Credits::ZERO, Credits::ZERO)
        } else {
            let short = cost - available;
            match shortfall {
                Shortfall::Reject if never_refuse => (Credits::ZERO, short),
                Shortfall::Reject => {
                    let rejected = Payment::Rejected {
                        reason: "insufficient_credits",
                        available,
                    };
                    return (rejected, PostPay { rule, topups });
                }
                Shortfall::Overage(o) => {
                    let room = (o.limit - debt).max(Credits::ZERO);
                    if short <= room {
                        (short, Credits::ZERO)
                    } else if never_refuse {
                        (room, short - room)
                    } else {
                        let rejected = Payment::Rejected {
                            reason: "overage_limit",
                            available: available + room,
                        };
                        return (rejected, PostPay { rule, topups });
                    }
                }
            }
        };
        let mut draws = Draws::new();
        let from_grants = cost - overage - unpaid;
        let mut drawn = Credits::ZERO;
        if let Some(claims) = claims {
            drawn += self.draw(
                credit_type,
                Some(meter),
                ts,
                from_grants,
                Some(claims),
                &mut draws,
            );
        }
        drawn += self.draw(
            credit_type,
            Some(meter),
            ts,
            from_grants - drawn,
            None,
            &mut draws,
        );
        assert_eq!(
            drawn, from_grants,
            "spendable credits were counted but not drawable"
        );
        let overage_money = match shortfall {
            Shortfall::Overage(o) => money(overage, o.price),
            Shortfall::Reject => Revenue::ZERO,
        };
        let charged = cost - unpaid;
        let t = self.type_index(credit_type);
        let state = &mut self.types[t];
        state.add_rare(|r| &mut r.debt, overage);
        state.consumed += charged;
        for &(_, amount, basis) in &draws {
            state.recognized += money(amount, basis);
        }
        self.book(
            catalog,
            LineKind::Usage,
            Some(meter),
            credit_type,
            priced.billed_quantity,
            charged,
            Revenue::ZERO,
        );
        if overage.is_positive() {
            self.book(
                catalog,
                LineKind::Overage,
                Some(meter),
                credit_type,
                Quantity::ZERO,
                overage,
                overage_money,
            );
        }
        let charge = Charge {
            meter,
            credit_type,
            quantity: priced.billed_quantity,
            cost: charged,
            draws,
            overage,
            overage_money,
            period_start: self.period_start,
            reversed: false,
        };
        (Payment::Paid { charge, unpaid }, PostPay { rule, topups })
    }

    /// After the charge (or its rejection, already emitted by the caller): alerts, then the
    /// post-payment top-up and its alerts.
    fn after_payment(
        &mut self,
        ctx: &mut Context<'_>,
        mut post: PostPay,
        cause: &str,
        ts: Instant,
    ) {
        self.evaluate_alerts(ctx, ts);
        if let Some(rule) = &post.rule {
            if self.balance(rule.credit_type) < rule.threshold
                && self.topup(ctx, rule, cause, ts, &mut post.topups)
            {
                self.evaluate_alerts(ctx, ts);
            }
        }
    }

    /// A usage event, already priced and checked (SEMANTICS §6). Returns what to remember.
    pub fn usage(
        &mut self,
        ctx: &mut Context<'_>,
        event_id: &str,
        meter: MeterId,
        quantity: Quantity,
        priced: &Priced,
        ts: Instant,
    ) -> Remembered {
        let (payment, post) = self.pay(ctx, meter, priced, ts, event_id, None, false);
        let remembered = match payment {
            Payment::Rejected { reason, available } => {
                let catalog = ctx.catalog;
                let credit_type = catalog.meter(meter).credit_type;
                let body = Body::UsageRejected {
                    event_id: event_id.to_string(),
                    meter: catalog.meter(meter).name.clone(),
                    quantity,
                    credit_type: catalog.credit_type(credit_type).name.clone(),
                    needed: priced.cost,
                    available,
                    reason,
                };
                let id = format!("rejected:{}:{}:{}", self.id, event_id, ctx.seq);
                self.emit(ctx, id, ts, body);
                Remembered::Rejected
            }
            Payment::Paid { charge, .. } => Remembered::Charged(charge),
        };
        self.after_payment(ctx, post, event_id, ts);
        remembered
    }

    // ---------------------------------------------------------------- commands

    pub fn command(
        &mut self,
        ctx: &mut Context<'_>,
        command_id: &str,
        ts: Instant,
        kind: &CommandKind,
        priced: Option<&Priced>,
        reversed_event: Option<&mut Remembered>,
    ) -> Remembered {
        let name = kind.name();
        let (rejected, detail, remembered) = match kind {
            CommandKind::Grant(grant) => self.grant_command(ctx, command_id, ts, grant),
            CommandKind::VoidGrant { grant_id, .. } => self.void_grant(ctx, grant_id),
            CommandKind::SetPlan { plan } => {
                self.set_plan(ctx, *plan, ts);
                (None, ResultDetail::None, Remembered::Applied)
            }
            CommandKind::SetPolicy(policy) => {
                if policy.is_some() || self.rare.is_some() {
                    self.rare_mut().policy_override = policy.clone();
                }
                (None, ResultDetail::None, Remembered::Applied)
            }
            CommandKind::Adjust {
                credit_type,
                amount,
                ..
            } => self.adjust(ctx, command_id, ts, *credit_type, *amount),
            CommandKind::Reverse { event_id, .. } => self.reverse(ctx, event_id, reversed_event),
            CommandKind::Reserve(reserve) => self.reserve(ctx, ts, reserve, priced),
            CommandKind::Commit { hold_id, .. } => {
                self.commit(ctx, command_id, ts, hold_id, priced)
            }
            CommandKind::Release { hold_id } => self.release(hold_id),
        };
        self.evaluate_alerts(ctx, ts);
        self.emit_result(ctx, name, command_id, ts, rejected, detail);
        remembered
    }

    fn grant_command(
        &mut self,
        ctx: &mut Context<'_>,
        command_id: &str,
        ts: Instant,
        grant: &GrantCommand,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let detail = ResultDetail::Grant {
            grant_id: grant.grant_id.clone(),
        };
        if self.grants.iter().any(|g| *g.id == *grant.grant_id) {
            return (Some("grant_exists"), detail, Remembered::Applied);
        }
        let live = self
            .grants
            .iter()
            .filter(|g| g.status == GrantStatus::Live)
            .count();
        if live >= ctx.catalog.rules.grants_per_account_max {
            return (Some("grant_limit"), detail, Remembered::Applied);
        }
        let _ = command_id;
        self.add_grant(
            ctx,
            &grant.grant_id,
            grant.credit_type,
            grant.source,
            grant.amount,
            grant.priority,
            grant.effective_at,
            grant.expires_at,
            grant.cost_basis,
            ts,
            grant.scope.clone().map(Vec::into_boxed_slice),
            Credits::ZERO,
            // Whatever its source, an imported grant brings deferred value the period's
            // opening did not have (only the engine's own rollovers move existing value).
            true,
        );
        let t = self.type_index(grant.credit_type);
        self.types[t].granted += grant.amount;
        if matches!(
            grant.source,
            Source::Purchase | Source::Allowance | Source::Topup
        ) {
            self.types[t].period_base += grant.amount;
        }
        (None, detail, Remembered::Applied)
    }

    fn void_grant(
        &mut self,
        ctx: &mut Context<'_>,
        grant_id: &str,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let Some(index) = self
            .grants
            .iter()
            .position(|g| *g.id == *grant_id && g.status == GrantStatus::Live)
        else {
            return (
                Some("unknown_grant"),
                ResultDetail::None,
                Remembered::Applied,
            );
        };
        let grant = &mut self.grants[index];
        let removed = grant.remaining;
        let (serial, credit_type, basis) = (grant.serial, grant.credit_type, grant.cost_basis);
        grant.remaining = Credits::ZERO;
        grant.add_held(-grant.held());
        grant.status = GrantStatus::Voided;
        self.drop_claims_on(serial);
        let t = self.type_index(credit_type);
        self.types[t].add_rare(|r| &mut r.voided, removed);
        self.types[t].add_rare(|r| &mut r.removed, money(removed, basis));
        let _ = ctx;
        (None, ResultDetail::None, Remembered::Applied)
    }

    fn set_plan(&mut self, ctx: &mut Context<'_>, plan: PlanId, ts: Instant) {
        if plan == self.plan {
            return;
        }
        let closed_end = self.clock.max(ts).max(self.period_start);
        self.plan = plan;
        let plan_def = ctx.catalog.plan(plan);
        let (_, next_end) = plan_def
            .period
            .period_containing(&plan_def.time_zone, closed_end);
        self.close_period(ctx, closed_end, closed_end, next_end);
    }

    fn adjust(
        &mut self,
        ctx: &mut Context<'_>,
        command_id: &str,
        ts: Instant,
        credit_type: CreditTypeId,
        amount: Credits,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let applied = if amount.is_positive() {
            self.add_grant(
                ctx,
                command_id,
                credit_type,
                Source::Adjustment,
                amount,
                100,
                ts,
                None,
                Price::ZERO,
                ts,
                None,
                Credits::ZERO,
                true,
            );
            amount
        } else {
            let mut draws = Draws::new();
            let taken = self.draw(credit_type, None, ts, -amount, None, &mut draws);
            let t = self.type_index(credit_type);
            for &(serial, take, basis) in &draws {
                self.types[t].add_rare(|r| &mut r.removed, money(take, basis));
                if let Some(grant) = self.grants.iter_mut().find(|g| g.serial == serial) {
                    // `draw` counted it as recognised; a removal is not revenue.
                    grant.recognized_in_period -= take;
                }
            }
            -taken
        };
        let t = self.type_index(credit_type);
        self.types[t].add_rare(|r| &mut r.adjusted, applied);
        if !applied.is_zero() {
            self.book(
                ctx.catalog,
                LineKind::Adjustment,
                None,
                credit_type,
                Quantity::ZERO,
                applied,
                Revenue::ZERO,
            );
        }
        (None, ResultDetail::Adjust { applied }, Remembered::Applied)
    }

    fn reverse(
        &mut self,
        ctx: &mut Context<'_>,
        event_id: &str,
        entry: Option<&mut Remembered>,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let charge = match entry {
            None | Some(Remembered::Applied) => {
                return (
                    Some("unknown_event"),
                    ResultDetail::None,
                    Remembered::Applied,
                )
            }
            Some(Remembered::Rejected) => {
                return (Some("not_charged"), ResultDetail::None, Remembered::Applied)
            }
            Some(Remembered::Charged(charge)) => charge,
        };
        if charge.reversed {
            return (
                Some("already_reversed"),
                ResultDetail::None,
                Remembered::Applied,
            );
        }
        charge.reversed = true;
        let charge = charge.clone();
        let catalog = ctx.catalog;
        let ts = self.clock;
        let credit_type = charge.credit_type;
        let mut new_grants = 0u32;
        let same_period = charge.period_start == self.period_start;
        // The overage part first: it cancels the event's own debt. Returning the drawn credits
        // first would let a new reversal grant repay that debt (§5.2), booking an
        // `overage_repaid` credit for overage that the reversal also takes off the invoice.
        if same_period {
            let t = self.type_index(credit_type);
            let cancel = charge.overage.min(self.types[t].debt());
            self.types[t].add_rare(|r| &mut r.debt, -cancel);
            self.types[t].add_rare(|r| &mut r.returned, cancel);
            let rest = charge.overage - cancel;
            if rest.is_positive() {
                self.types[t].add_rare(|r| &mut r.returned, rest);
                new_grants += 1;
                let id = format!("reversal-{event_id}-{new_grants}");
                self.add_grant(
                    ctx,
                    &id,
                    credit_type,
                    Source::Adjustment,
                    rest,
                    100,
                    ts,
                    None,
                    Price::ZERO,
                    ts,
                    None,
                    Credits::ZERO,
                    false,
                );
            }
        }
        let t = self.type_index(credit_type);
        for &(serial, amount, basis) in &charge.draws {
            self.types[t].add_rare(|r| &mut r.returned, amount);
            self.types[t].recognized -= money(amount, basis);
            match self
                .grants
                .iter_mut()
                .find(|g| g.serial == serial && g.status == GrantStatus::Live)
            {
                Some(grant) => {
                    grant.remaining += amount;
                    grant.recognized_in_period -= amount;
                }
                None => {
                    new_grants += 1;
                    let id = format!("reversal-{event_id}-{new_grants}");
                    let serial = self.add_grant(
                        ctx,
                        &id,
                        credit_type,
                        Source::Adjustment,
                        amount,
                        100,
                        ts,
                        None,
                        basis,
                        ts,
                        None,
                        Credits::ZERO,
                        false,
                    );
                    if let Some(grant) = self.grant_by_serial(serial) {
                        grant.recognized_in_period -= amount;
                    }
                }
            }
        }
        if same_period {
            self.book(
                catalog,
                LineKind::Usage,
                Some(charge.meter),
                credit_type,
                -charge.quantity,
                -charge.cost,
                Revenue::ZERO,
            );
            if charge.overage.is_positive() {
                self.book(
                    catalog,
                    LineKind::Overage,
                    Some(charge.meter),
                    credit_type,
                    Quantity::ZERO,
                    -charge.overage,
                    -charge.overage_money,
                );
            }
        } else {
            self.book(
                catalog,
                LineKind::Reversal,
                Some(charge.meter),
                credit_type,
                -charge.quantity,
                -charge.cost,
                -charge.overage_money,
            );
        }
        (None, ResultDetail::None, Remembered::Applied)
    }

    fn reserve(
        &mut self,
        ctx: &mut Context<'_>,
        ts: Instant,
        reserve: &ReserveCommand,
        priced: Option<&Priced>,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let zero = ResultDetail::Reserve {
            credits_requested: Credits::ZERO,
            credits_reserved: Credits::ZERO,
            quantity_reserved: Quantity::ZERO,
        };
        if self.holds().iter().any(|h| *h.id == *reserve.hold_id) {
            return (Some("hold_exists"), zero, Remembered::Applied);
        }
        if self.holds().len() >= ctx.catalog.rules.holds_per_account_max {
            return (Some("hold_limit"), zero, Remembered::Applied);
        }
        let priced = priced.expect("reserve is priced before it is applied");
        let catalog = ctx.catalog;
        let credit_type = catalog.meter(reserve.meter).credit_type;
        let requested = priced.cost;
        let available = self.spendable(credit_type, Some(reserve.meter), ts);
        let reserved = requested.min(available);
        let mut claims = Vec::new();
        let mut rest = reserved;
        for grant in self.grants.iter_mut() {
            if !rest.is_positive() {
                break;
            }
            if !grant.eligible(credit_type, Some(reserve.meter), ts) {
                continue;
            }
            let take = rest.min(grant.spendable());
            if take.is_positive() {
                grant.add_held(take);
                rest -= take;
                claims.push((grant.serial, take));
            }
        }
        let quantity_reserved = if reserved == requested {
            reserve.quantity
        } else {
            self.largest_affordable(catalog, reserve, ts, reserved)
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        let hold = Hold {
            serial,
            id: reserve.hold_id.as_str().into(),
            meter: reserve.meter,
            dims: reserve.dims.clone(),
            expires_at: ts.saturating_add(reserve.ttl),
            claims,
        };
        let holds = &mut self.rare_mut().holds;
        let position = holds.partition_point(|h| h.id < hold.id);
        holds.reserve_exact(1);
        holds.insert(position, hold);
        (
            None,
            ResultDetail::Reserve {
                credits_requested: requested,
                credits_reserved: reserved,
                quantity_reserved,
            },
            Remembered::Applied,
        )
    }

    /// Largest quantity at the request's scale whose price is at most `budget` (bisection).
    fn largest_affordable(
        &self,
        catalog: &Catalog,
        reserve: &ReserveCommand,
        ts: Instant,
        budget: Credits,
    ) -> Quantity {
        let scale = reserve.quantity.to_dec().normalized().scale();
        let step = 10i128.pow(u32::from(Quantity::SCALE - scale));
        let cumulative = self.cumulative(reserve.meter);
        let price_of = |units: i128| {
            pricing::price(
                catalog,
                &PriceRequest {
                    meter: reserve.meter,
                    quantity: Fixed(units * step),
                    dims: &reserve.dims,
                    ts,
                    cumulative,
                },
            )
            .map(|p| p.cost)
        };
        let (mut low, mut high) = (0i128, reserve.quantity.0 / step);
        while low < high {
            let middle = low + (high - low + 1) / 2;
            match price_of(middle) {
                Ok(cost) if cost <= budget => low = middle,
                _ => high = middle - 1,
            }
        }
        Fixed(low * step)
    }

    /// The open period's billed quantity of `meter` (the base of tiered pricing).
    pub fn cumulative(&self, meter: MeterId) -> Quantity {
        self.lines
            .iter()
            .find(|l| l.kind == LineKind::Usage && l.meter == Some(meter))
            .map_or(Quantity::ZERO, |l| l.quantity)
            // A reversal of an event billed before a period restart can take the line below
            // zero; tiers are priced from zero then (never from a negative base).
            .max(Quantity::ZERO)
    }

    /// The cumulative quantity the account will have for `meter` at `ts`, after advancing.
    pub fn cumulative_at(&self, meter: MeterId, ts: Instant) -> Quantity {
        if ts >= self.period_end {
            Quantity::ZERO
        } else {
            self.cumulative(meter)
        }
    }

    pub fn hold(&self, hold_id: &str) -> Option<&Hold> {
        self.holds().iter().find(|h| &*h.id == hold_id)
    }

    fn commit(
        &mut self,
        ctx: &mut Context<'_>,
        command_id: &str,
        ts: Instant,
        hold_id: &str,
        priced: Option<&Priced>,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let Some(index) = self.holds().iter().position(|h| &*h.id == hold_id) else {
            let detail = ResultDetail::Commit {
                credits_charged: Credits::ZERO,
                credits_unpaid: Credits::ZERO,
            };
            return (Some("unknown_hold"), detail, Remembered::Applied);
        };
        let hold = self.rare_mut().holds.remove(index);
        self.release_claims(&hold.claims);
        let priced = priced.expect("commit is priced before it is applied");
        let (payment, post) = self.pay(
            ctx,
            hold.meter,
            priced,
            ts,
            command_id,
            Some(&hold.claims),
            true,
        );
        let Payment::Paid { charge, unpaid } = payment else {
            unreachable!("a commit is never refused");
        };
        self.after_payment(ctx, post, command_id, ts);
        let detail = ResultDetail::Commit {
            credits_charged: charge.cost,
            credits_unpaid: unpaid,
        };
        (None, detail, Remembered::Charged(charge))
    }

    fn release(&mut self, hold_id: &str) -> (Option<&'static str>, ResultDetail, Remembered) {
        let Some(index) = self.holds().iter().position(|h| &*h.id == hold_id) else {
            return (
                Some("unknown_hold"),
                ResultDetail::Release {
                    credits_released: Credits::ZERO,
                },
                Remembered::Applied,
            );
        };
        let hold = self.rare_mut().holds.remove(index);
        let released = self.release_claims(&hold.claims);
        (
            None,
            ResultDetail::Release {
                credits_released: released,
            },
            Remembered::Applied,
        )
    }

    // ---------------------------------------------------------------- invariants

    /// Checks every invariant of this account; `Err` describes the first broken one.
    pub fn check(&self) -> Result<(), String> {
        let fail = |what: String| Err(format!("account {}: {what}", self.id));
        for pair in self.grants.windows(2) {
            if pair[0].burn_order(&pair[1]) != Ordering::Less {
                return fail(format!(
                    "grants {} and {} out of burn order",
                    pair[0].id, pair[1].id
                ));
            }
        }
        for grant in &self.grants {
            if grant.remaining.is_negative()
                || grant.held().is_negative()
                || grant.held() > grant.remaining
            {
                return fail(format!(
                    "grant {}: remaining {} held {}",
                    grant.id,
                    grant.remaining,
                    grant.held()
                ));
            }
            if grant.status != GrantStatus::Live && !grant.remaining.is_zero() {
                return fail(format!(
                    "grant {} is {} with credits",
                    grant.id,
                    grant.status.name()
                ));
            }
            let claimed = self
                .holds()
                .iter()
                .flat_map(|h| h.claims.iter())
                .filter(|c| c.0 == grant.serial)
                .fold(Credits::ZERO, |s, c| s + c.1);
            if claimed != grant.held() {
                return fail(format!(
                    "grant {}: held {} but holds claim {}",
                    grant.id,
                    grant.held(),
                    claimed
                ));
            }
        }
        for t in &self.types {
            let balance = self.balance(t.credit_type);
            if t.debt().is_negative() {
                return fail(format!("negative debt {}", t.debt()));
            }
            let ledger = t.ledger();
            if ledger.balance() != balance {
                return fail(format!(
                    "ledger {:?} gives {} but grants minus debt give {}",
                    ledger,
                    ledger.balance(),
                    balance
                ));
            }
            let r = t.revenue();
            let expected = r.opening + r.granted - r.recognized - r.breakage - r.removed;
            let deferred = self.deferred(t.credit_type);
            if expected != deferred {
                return fail(format!(
                    "revenue {r:?} gives deferred {expected} but lots hold {deferred}"
                ));
            }
        }
        Ok(())
    }
}
