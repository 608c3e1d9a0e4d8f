//! Questions about one account, answered from its partition's state without changing it: what
//! the service's queries return (SEMANTICS §17). The balance itself is the state view
//! ([`super::view`]); this module adds what can be spent now, whether a usage event would be
//! paid (and how much of the meter could be), the open period's usage, a dry-run price and the
//! recent charges.
//!
//! Owns: the read-only counterparts of the apply path.
//!
//! Must never: change the partition (every question takes `&self`; what one needs to try, it
//! tries on a copy of the one account), or answer differently from what applying the same
//! input would do: [`Partition::authorize`] runs the apply's own steps, in the apply's order, on
//! a copy (`tests/service_queries.rs` holds the two equal on random logs).
//!
//! Invariants: "now" for an account is the later of its clock and the partition's tick clock;
//! an answer about now is computed on a copy of the account advanced to then (expiries, period
//! changes and hold timeouts due by then performed), the state view is the account as it is.

use crate::catalog::pricing::{self, PriceError, PriceRequest, Priced};
use crate::catalog::{Catalog, CreditTypeId, MeterId};
use crate::decimal::{Credits, Price, Quantity, Revenue};
use crate::engine::account::{Account, Context, Line};
use crate::engine::dedupe::{dedupe_key, Remembered};
use crate::engine::{check_future, Partition};
use crate::time::Instant;
use crate::wire::input::{DeadLetter, DeadReason, Message, Usage};
use crate::wire::output::Body;

/// What an account can spend now in one credit type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Available {
    pub credit_type: CreditTypeId,
    /// Remaining minus held, over the live grants effective now, whatever meters they are
    /// scoped to.
    pub spendable: Credits,
    /// How much further the effective policy lets debt grow (0 unless it allows overage).
    pub overage_room: Credits,
}

impl Available {
    pub fn total(&self) -> Credits {
        self.spendable + self.overage_room
    }
}

/// Whether a usage event would be paid now, and what it would do.
#[derive(Clone, Debug, PartialEq)]
pub struct Authorization {
    /// The event time it was judged at.
    pub ts: Instant,
    pub allowed: bool,
    /// Why not: `insufficient_credits` or `overage_limit` (the reasons of `usage.rejected`).
    pub reason: Option<&'static str>,
    pub credit_type: CreditTypeId,
    pub priced: Priced,
    /// The most such a charge could cost and still be paid: what it can draw, the overage
    /// room, and the top-up the policy would make first when the credits do not cover it.
    pub available: Credits,
    /// The largest quantity of the meter, at the request's decimals, an event could be paid
    /// for now; `None` when there is no such limit (a free meter).
    pub max_quantity: Option<Quantity>,
    /// (grant id, credits) the charge would draw, in burn order.
    pub draws: Vec<(String, Credits)>,
    /// Credits that would go into overage debt.
    pub overage: Credits,
    /// Credits the policy would top up while paying (before and after the charge).
    pub topup: Credits,
}

/// The open period's usage of an account.
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodUsage {
    pub period_start: Instant,
    pub period_end: Instant,
    pub period_number: u32,
    /// Every invoice line of the period so far, in the order they are emitted (SEMANTICS §11).
    pub lines: Vec<Line>,
}

/// One recent charge of an account (the charge journal).
#[derive(Clone, Debug, PartialEq)]
pub struct StatementEntry {
    pub seq: u64,
    pub ts: Instant,
    pub event_id: String,
    /// `usage` or `commit`.
    pub kind: &'static str,
    pub meter: MeterId,
    pub credit_type: CreditTypeId,
    /// Billed quantity.
    pub quantity: Quantity,
    /// Credits charged (drawn + overage).
    pub credits: Credits,
    pub overage: Credits,
    /// (grant id, credits drawn, the grant's cost basis), in burn order.
    pub draws: Vec<(String, Credits, Price)>,
    /// Reversed since; `None` once the dedupe index no longer remembers the event.
    pub reversed: Option<bool>,
}

/// Why a period's usage cannot be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageError {
    UnknownAccount,
    /// Only the open period's lines are in memory; a closed period's final lines are in the
    /// output stream.
    PeriodNotInMemory {
        current: u32,
    },
}

impl Partition {
    /// The latest of `account`'s clock and the partition's tick clock: "now" for questions
    /// about it.
    pub fn now_of(&self, account: &Account) -> Instant {
        self.tick_clock
            .map_or(account.clock, |t| t.max(account.clock))
    }

    /// `account` advanced to `at`: a copy with the transitions due by then performed (their
    /// outputs dropped), or the account itself when none is due, since advancing would then
    /// only move its clock, which no reader of the result looks at (they are given `at`).
    fn advanced_copy<'a>(
        catalog: &Catalog,
        account: &'a Account,
        at: Instant,
    ) -> std::borrow::Cow<'a, Account> {
        if account.next_due_time(catalog) > at {
            return std::borrow::Cow::Borrowed(account);
        }
        let mut copy = account.clone();
        let mut out = Vec::new();
        let mut ctx = Context {
            catalog,
            seq: 0,
            out: &mut out,
        };
        copy.advance(&mut ctx, at);
        std::borrow::Cow::Owned(copy)
    }

    /// What `account` (one of this partition's) can spend now, per credit type it has a balance
    /// in (the state view's order).
    pub fn available_of(&self, catalog: &Catalog, account: &Account) -> Vec<Available> {
        Self::available_at(catalog, account, self.now_of(account))
    }

    fn available_at(catalog: &Catalog, account: &Account, now: Instant) -> Vec<Available> {
        let copy = Self::advanced_copy(catalog, account, now);
        copy.types
            .iter()
            .map(|t| Available {
                credit_type: t.credit_type,
                spendable: copy.spendable_any_meter(t.credit_type, now),
                overage_room: copy.overage_room(catalog, t.credit_type),
            })
            .collect()
    }

    /// Whether `usage` would be paid if it were applied now (`received`: the instant the stream
    /// would receive it), without applying it: the apply's own checks and steps, in its order,
    /// on a copy of the account (a new one for an account never seen). `Err` is the dead
    /// letter the event would get. The usage's id is not looked up: authorize asks about the
    /// event, not about one already sent.
    pub fn authorize(
        &self,
        catalog: &Catalog,
        usage: &Usage<'_>,
        received: Instant,
    ) -> Result<Authorization, DeadLetter> {
        let message = Message::Usage(usage.clone());
        // As `apply_message` and `apply_account_message`, in order.
        check_future(catalog, &message, Some(received))?;
        let account_id: &str = &usage.account;
        let ts = usage.ts;
        let existing = self.account(account_id);
        let clock = match (existing.map(|a| a.clock), self.tick_clock) {
            (Some(a), Some(t)) => Some(a.max(t)),
            (a, t) => a.or(t),
        };
        if let Some(clock) = clock {
            if ts < clock.saturating_sub(catalog.rules.backdate_max) {
                return Err(dead(
                    DeadReason::TsTooOld,
                    format!(
                        "ts {ts} is more than {} before the account's clock {clock}",
                        catalog.rules.backdate_max
                    ),
                ));
            }
        }
        let cumulative = existing.map_or(Quantity::ZERO, |a| a.cumulative_at(usage.meter, ts));
        let request = PriceRequest {
            meter: usage.meter,
            quantity: usage.quantity,
            dims: &usage.dims,
            ts,
            cumulative,
        };
        let priced = pricing::price(catalog, &request)
            .map_err(|error| price_dead(catalog, usage.meter, error))?;
        if existing.is_none() && self.accounts.len() >= catalog.rules.accounts_per_partition_max {
            return Err(dead(
                DeadReason::AccountLimit,
                format!(
                    "partition {} already holds {} accounts",
                    self.number, catalog.rules.accounts_per_partition_max
                ),
            ));
        }
        let mut out = Vec::new();
        let mut ctx = Context {
            catalog,
            seq: 0,
            out: &mut out,
        };
        let mut copy = match existing {
            Some(account) => account.clone(),
            None => {
                let start = self.tick_clock.map_or(ts, |t| t.max(ts));
                Account::new(&mut ctx, account_id, catalog.default_plan, start)
            }
        };
        copy.advance(&mut ctx, self.tick_clock.map_or(ts, |t| t.max(ts)));
        let available = copy.payable(catalog, usage.meter, ts);
        let decimals = usage.quantity.to_dec().normalized().scale();
        let max_quantity = pricing::max_quantity(catalog, &request, decimals, available)
            .map_err(|error| price_dead(catalog, usage.meter, error))?;
        ctx.out.clear();
        let remembered = copy.usage(
            &mut ctx,
            &usage.id,
            usage.meter,
            usage.quantity,
            &priced,
            ts,
        );
        let topup = ctx
            .out
            .iter()
            .filter_map(|o| match &o.body {
                Body::TopupGranted { credits, .. } => Some(*credits),
                _ => None,
            })
            .fold(Credits::ZERO, |sum, c| sum + c);
        let credit_type = catalog.meter(usage.meter).credit_type;
        let (allowed, reason, draws, overage) = match &remembered {
            Remembered::Charged(charge) => (
                true,
                None,
                charge
                    .draws
                    .iter()
                    .map(|&(serial, credits, _)| (grant_name(&copy, serial), credits))
                    .collect(),
                charge.overage,
            ),
            _ => {
                let reason = ctx.out.iter().find_map(|o| match &o.body {
                    Body::UsageRejected { reason, .. } => Some(*reason),
                    _ => None,
                });
                (false, reason, Vec::new(), Credits::ZERO)
            }
        };
        Ok(Authorization {
            ts,
            allowed,
            reason,
            credit_type,
            priced,
            available,
            max_quantity,
            draws,
            overage,
            topup,
        })
    }

    /// A dry-run price of `quantity` of `meter` at `ts` for the account (its period's
    /// cumulative quantity, as the apply would use) or, without one, for a new account (no
    /// cumulative quantity).
    pub fn price_for(
        &self,
        catalog: &Catalog,
        account_id: Option<&str>,
        meter: MeterId,
        quantity: Quantity,
        dims: &[(String, String)],
        ts: Instant,
    ) -> Result<Priced, PriceError> {
        let cumulative = account_id
            .and_then(|id| self.account(id))
            .map_or(Quantity::ZERO, |a| a.cumulative_at(meter, ts));
        pricing::price(
            catalog,
            &PriceRequest {
                meter,
                quantity,
                dims,
                ts,
                cumulative,
            },
        )
    }

    /// The open period's usage (now: see the module doc); `period`, when given, must be its
    /// number.
    pub fn period_usage(
        &self,
        catalog: &Catalog,
        account_id: &str,
        period: Option<u32>,
    ) -> Result<PeriodUsage, UsageError> {
        let account = self.account(account_id).ok_or(UsageError::UnknownAccount)?;
        let copy = Self::advanced_copy(catalog, account, self.now_of(account));
        if period.is_some_and(|p| p != copy.period_number) {
            return Err(UsageError::PeriodNotInMemory {
                current: copy.period_number,
            });
        }
        let mut lines = copy.lines.to_vec();
        lines.sort_by_key(Line::order_key);
        Ok(PeriodUsage {
            period_start: copy.period_start,
            period_end: copy.period_end,
            period_number: copy.period_number,
            lines,
        })
    }

    /// The account's most recent charges, newest first, at most `limit` (the charge journal:
    /// empty unless the partition keeps one); `None` for an account this partition does not
    /// have.
    pub fn statement(
        &self,
        catalog: &Catalog,
        account_id: &str,
        limit: usize,
    ) -> Option<Vec<StatementEntry>> {
        let hash = crate::engine::compact::AccountIndex::hash(account_id.as_bytes());
        let slot = self.slot_hashed(account_id, hash)?;
        let account = &*self.accounts[slot as usize];
        let Some(journal) = &self.journal else {
            return Some(Vec::new());
        };
        let entries = journal
            .of_account(slot)
            .take(limit)
            .map(|entry| {
                let key = dedupe_key(account_id, &entry.event_id);
                let reversed = self
                    .reversals
                    .lookup(&self.dedupe, key, self.tick_clock, &catalog.rules)
                    .map(|(remembered, _)| match remembered.what {
                        Remembered::Charged(charge) => charge.reversed,
                        _ => false,
                    });
                StatementEntry {
                    seq: entry.seq,
                    ts: entry.ts,
                    event_id: entry.event_id.to_string(),
                    kind: entry.kind,
                    meter: entry.charge.meter,
                    credit_type: entry.charge.credit_type,
                    quantity: entry.charge.quantity,
                    credits: entry.charge.cost,
                    overage: entry.charge.overage,
                    draws: entry
                        .charge
                        .draws
                        .iter()
                        .enumerate()
                        .map(|(index, &(serial, credits, basis))| {
                            let name = entry
                                .grants
                                .get(index)
                                .map_or_else(|| grant_name(account, serial), str::to_string);
                            (name, credits, basis)
                        })
                        .collect(),
                    reversed,
                }
            })
            .collect();
        Some(entries)
    }

    /// Whether the dedupe index remembers `(account, id)` (a message with that id would be a
    /// duplicate now).
    pub fn remembers(&self, catalog: &Catalog, account_id: &str, id: &str) -> bool {
        self.dedupe.contains(
            dedupe_key(account_id, id),
            self.tick_clock,
            catalog.rules.dedupe_window,
        )
    }
}

/// One credit type's totals over a set of accounts (the HTTP API's deployment totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TypeTotals {
    /// Accounts with a balance in this credit type.
    pub accounts: u64,
    /// Σ balance (remaining minus debt), Σ held, Σ debt.
    pub balance: Credits,
    pub held: Credits,
    pub debt: Credits,
    /// Σ of each ledger total (lifetime).
    pub granted: Credits,
    pub consumed: Credits,
    pub expired: Credits,
    pub voided: Credits,
    pub adjusted: Credits,
    /// Revenue of each account's open period, as its `revenue.period` will state it: Σ deferred
    /// at the opening, Σ granted at cost basis (what was bought: its `granted`), Σ recognised,
    /// Σ breakage, Σ removed; and Σ deferred now (the closing so far). Per account, so summed:
    /// deferred = opening + granted − recognised − breakage − removed.
    pub opening_deferred: Revenue,
    pub granted_value: Revenue,
    pub recognized: Revenue,
    pub breakage: Revenue,
    pub removed: Revenue,
    pub deferred: Revenue,
}

impl TypeTotals {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &TypeTotals) {
        self.accounts += other.accounts;
        self.balance += other.balance;
        self.held += other.held;
        self.debt += other.debt;
        self.granted += other.granted;
        self.consumed += other.consumed;
        self.expired += other.expired;
        self.voided += other.voided;
        self.adjusted += other.adjusted;
        self.opening_deferred += other.opening_deferred;
        self.granted_value += other.granted_value;
        self.removed += other.removed;
        self.recognized += other.recognized;
        self.breakage += other.breakage;
        self.deferred += other.deferred;
    }
}

/// The accounts that consumed the most of one credit type (lifetime ledger), most first, ties
/// by account id; at most `n`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopConsumers {
    n: usize,
    pub accounts: Vec<(Credits, String)>,
}

impl TopConsumers {
    pub fn new(n: usize) -> TopConsumers {
        TopConsumers {
            n,
            accounts: Vec::with_capacity(n + 1),
        }
    }

    /// Offers an account; kept if it is among the `n` largest so far.
    pub fn offer(&mut self, consumed: Credits, account: &str) {
        if self.n == 0 || !consumed.is_positive() {
            return;
        }
        let before =
            |(c, a): &(Credits, String)| *c > consumed || (*c == consumed && **a < *account);
        let at = self.accounts.partition_point(before);
        if at >= self.n {
            return;
        }
        self.accounts.insert(at, (consumed, account.to_string()));
        self.accounts.truncate(self.n);
    }

    /// Merges another partition's list into this one.
    pub fn merge(&mut self, other: &TopConsumers) {
        for (consumed, account) in &other.accounts {
            self.offer(*consumed, account);
        }
    }
}

impl Partition {
    /// The partition's accounts and, per credit type (by id), the sums of their balances and
    /// ledgers as they are (no account advanced): one pass over the accounts.
    /// With them, per credit type the `top` accounts by credits consumed ([`TopConsumers`]).
    pub fn totals(
        &self,
        credit_types: usize,
        top: usize,
    ) -> (u64, Vec<TypeTotals>, Vec<TopConsumers>) {
        let mut totals = vec![TypeTotals::default(); credit_types];
        let mut tops = vec![TopConsumers::new(top); credit_types];
        for account in self.accounts() {
            for t in &account.types {
                let index = t.credit_type.0 as usize;
                let (Some(into), Some(best)) = (totals.get_mut(index), tops.get_mut(index)) else {
                    continue;
                };
                let ledger = t.ledger();
                let revenue = t.revenue();
                best.offer(ledger.consumed, &account.id);
                into.add(&TypeTotals {
                    accounts: 1,
                    balance: account.balance(t.credit_type),
                    held: account.held(t.credit_type),
                    debt: t.debt(),
                    granted: ledger.granted,
                    consumed: ledger.consumed,
                    expired: ledger.expired,
                    voided: ledger.voided,
                    adjusted: ledger.adjusted,
                    opening_deferred: revenue.opening,
                    granted_value: revenue.granted,
                    removed: revenue.removed,
                    recognized: revenue.recognized,
                    breakage: revenue.breakage,
                    deferred: account.deferred(t.credit_type),
                });
            }
        }
        (self.accounts().len() as u64, totals, tops)
    }
}

/// A grant's id by its serial, or `#<serial>` when it has been pruned.
fn grant_name(account: &Account, serial: u32) -> String {
    account
        .grants
        .iter()
        .find(|g| g.serial == serial)
        .map_or_else(|| format!("#{serial}"), |g| g.id.to_string())
}

fn dead(reason: DeadReason, detail: String) -> DeadLetter {
    DeadLetter {
        reason,
        detail,
        account: None,
        ts: None,
    }
}

fn price_dead(catalog: &Catalog, meter: MeterId, error: PriceError) -> DeadLetter {
    let reason = match error {
        PriceError::NoPriceInForce => DeadReason::NoPriceInForce,
        PriceError::NoRateForDims => DeadReason::NoRateForDims,
        PriceError::CostOverflow => DeadReason::CostOverflow,
    };
    dead(
        reason,
        format!("meter {}: {error}", catalog.meter(meter).name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Envelope};

    /// Answering from the account itself when nothing is due gives what the advanced copy
    /// gives, at instants from the account's clock to a year past it (grants expiring, holds
    /// expiring, periods closing), at points along sample logs.
    #[test]
    fn availability_without_a_copy_equals_the_advanced_copy() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml");
        let catalog = std::sync::Arc::new(crate::catalog::load::from_path(&path).unwrap());
        let copied = |account: &Account, at: Instant| -> Vec<Available> {
            let mut copy = account.clone();
            let mut out = Vec::new();
            let mut ctx = Context {
                catalog: &catalog,
                seq: 0,
                out: &mut out,
            };
            copy.advance(&mut ctx, at);
            copy.types
                .iter()
                .map(|t| Available {
                    credit_type: t.credit_type,
                    spendable: copy.spendable_any_meter(t.credit_type, at),
                    overage_room: copy.overage_room(&catalog, t.credit_type),
                })
                .collect()
        };
        let (mut borrowed, mut advanced) = (0, 0);
        for seed in 1..=3 {
            let mut engine = Engine::new(catalog.clone(), 2);
            let lines = crate::sample::scenario(seed, 30, 1500);
            for (n, line) in lines.iter().enumerate() {
                let mut out = Vec::new();
                engine.apply(
                    &Envelope {
                        payload: line.as_bytes(),
                        seq: n as u64 + 1,
                        subject: "creditflow.in",
                        received: None,
                    },
                    &mut out,
                );
                if n % 100 != 99 {
                    continue;
                }
                for partition in engine.partitions() {
                    for account in partition.accounts() {
                        for hours in [0i64, 1, 24, 24 * 40, 24 * 365] {
                            let at = account
                                .clock
                                .saturating_add(crate::time::Span::from_secs(hours * 3600));
                            if account.next_due_time(&catalog) > at {
                                borrowed += 1;
                            } else {
                                advanced += 1;
                            }
                            assert_eq!(
                                Partition::available_at(&catalog, account, at),
                                copied(account, at),
                                "{} at {at}",
                                account.id
                            );
                        }
                    }
                }
            }
        }
        assert!(borrowed > 100 && advanced > 100, "{borrowed} {advanced}");
    }
}
