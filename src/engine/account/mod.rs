//! One account's state and every change to it (SEMANTICS §4–§12).
//!
//! Owns: the account's grants (in burn order), holds, overage debt, ledger totals, alert states,
//! invoice lines of the open period, revenue accumulators, and the clock-driven transitions.
//!
//! Must never: read anything but its arguments (the catalog, the message, the context), touch
//! another account, or round except where SEMANTICS names a rounding.
//!
//! Files, by concern (each an `impl Account` block): this one holds the types and the basic
//! reads; `lines.rs` invoice lines and outputs; `grants.rs` adding and drawing credits;
//! `time.rs` transitions in time; `alerts.rs`; `charging.rs` paying under a policy and usage;
//! `commands.rs`; `check.rs` the invariants.
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
use dues::GrantDues;

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
    /// Burn counters (§5.6; `runway.rs`): the window index of `burn_current`, the credits
    /// consumed in it and in the window before, in 10^-9 units.
    pub burn_window: u32,
    pub burn_current: u64,
    pub burn_previous: u64,
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
    /// Per closed period that ended in debt: the debt settled (invoiced) at its close that no
    /// reversal has yet taken back, so a reversal of a charge of that period knows how much of
    /// its overage was invoiced rather than repaid by grants (SEMANTICS §9). Kept while the
    /// period's charges can still be reversed.
    pub settled_periods: Vec<SettledPeriod>,
}

/// The overage debt a closed period settled, for reversals of its charges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettledPeriod {
    pub start: Instant,
    pub end: Instant,
    /// Settled at the close, less what reversals of its charges have taken back.
    pub credits: Credits,
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
    settled_periods: Vec::new(),
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
            burn_window: 0,
            burn_current: 0,
            burn_previous: 0,
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

    /// The alert states of the thresholds ever crossed (one that never was has none).
    pub fn alert_states(&self) -> &[AlertState] {
        &self.rare().alerts
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

    /// Takes back up to `overage` credits of the debt settled at the close of the period that
    /// started at `start` (what a reversal of a charge of that period cancels); returns them.
    fn take_settled(&mut self, start: Instant, overage: Credits) -> Credits {
        let Some(rare) = self.rare.as_deref_mut() else {
            return Credits::ZERO;
        };
        let Some(period) = rare.settled_periods.iter_mut().find(|p| p.start == start) else {
            return Credits::ZERO;
        };
        let taken = overage.min(period.credits);
        period.credits -= taken;
        taken
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
    /// The grants' ids, once the account has [`GRANT_IDS_INDEXED`] grants or more.
    #[serde(skip)]
    pub grant_ids: GrantIds,
    /// The grants' due instants in order, once the account has
    /// [`dues::GRANT_DUES_INDEXED`] grants.
    #[serde(skip)]
    grant_dues: GrantDues,
}

static NO_ACCOUNT_RARE: AccountRare = AccountRare {
    policy_override: None,
    holds: Vec::new(),
    topups_in_period: 0,
    last_topup: None,
    grant_ids: GrantIds(None),
    grant_dues: GrantDues(None),
};

/// From this many grants on, a grant command looks its id up in a set ([`GrantIds`]) instead
/// of comparing it with every grant's id (which made adding n grants O(n²)).
pub const GRANT_IDS_INDEXED: usize = 64;

/// The ids of an account's grants, for the duplicate check of a grant command. A cache, not
/// state: never serialized (a snapshot's format is unchanged), equal to any other (two accounts
/// with the same state are equal whether or not one has built it), built on first use, updated
/// when a grant is added, dropped when grants are removed (period close).
#[derive(Clone, Default)]
pub struct GrantIds(Option<std::collections::HashSet<Box<str>>>);

impl PartialEq for GrantIds {
    fn eq(&self, _: &GrantIds) -> bool {
        true
    }
}

impl std::fmt::Debug for GrantIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantIds")
    }
}

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

    /// The deferred revenue of `credit_type`: live grants' remaining credits at cost basis.
    pub fn deferred(&self, credit_type: CreditTypeId) -> Revenue {
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

    /// True when a grant (live or not, until period close) already has `id`.
    fn has_grant_id(&mut self, id: &str) -> bool {
        if self.grants.len() < GRANT_IDS_INDEXED {
            return self.grants.iter().any(|g| *g.id == *id);
        }
        let grants = &self.grants;
        let rare = self.rare.get_or_insert_with(Box::default);
        rare.grant_ids
            .0
            .get_or_insert_with(|| grants.iter().map(|g| g.id.clone()).collect())
            .contains(id)
    }

    /// Keeps [`GrantIds`] in step with a grant just added.
    fn grant_id_added(&mut self, id: &str) {
        if let Some(ids) = self.rare.as_mut().and_then(|r| r.grant_ids.0.as_mut()) {
            ids.insert(id.into());
        }
    }

    /// Drops [`GrantIds`] when grants were removed (rebuilt when next needed).
    fn grants_removed(&mut self) {
        if let Some(rare) = &mut self.rare {
            rare.grant_ids.0 = None;
        }
    }

    fn grant_by_serial(&mut self, serial: u32) -> Option<&mut Grant> {
        self.grants.iter_mut().find(|g| g.serial == serial)
    }
}

mod alerts;
mod charging;
mod check;
mod commands;
mod dues;
mod grants;
mod lines;
mod runway;
mod time;

pub use runway::Runway;
