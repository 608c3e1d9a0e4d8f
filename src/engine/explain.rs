//! What the engine tells about its work besides outputs, kept only when asked and never in a
//! snapshot: per (account, meter) totals for `simulate` ([`Tally`]) and, for one account, what
//! each input did to it for `replay --explain` ([`Explanation`]).

use super::account::Account;
use super::dedupe;
use crate::catalog::pricing::Priced;
use crate::catalog::Catalog;
use crate::time::Instant;
use crate::wire::input::Message;

/// What an account's usage of one meter was charged, for `simulate`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub quantity: crate::decimal::Quantity,
    pub credits: crate::decimal::Credits,
    /// Money: credits drawn × their grants' cost basis, plus overage money; exact.
    pub revenue: crate::decimal::Revenue,
    pub charged: u64,
    pub rejected: u64,
    pub reversed: u64,
}

impl Tally {
    pub(super) fn add(&mut self, charge: &dedupe::Charge, sign: i128) {
        let revenue = charge
            .draws
            .iter()
            .fold(charge.overage_money, |sum, &(_, amount, basis)| {
                sum + amount.times_price(basis).unwrap_or_default()
            });
        self.quantity += crate::decimal::Fixed(sign * charge.quantity.0);
        self.credits += crate::decimal::Fixed(sign * charge.cost.0);
        self.revenue += crate::decimal::Fixed(sign * revenue.0);
    }
}

/// What one input did to the explained account: enough to show what was charged, at which
/// rate, and from which grants.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub seq: u64,
    pub id: String,
    pub kind: &'static str,
    pub ts: Instant,
    pub priced: Option<Priced>,
    /// (grant id, credits drawn) for a charge; empty otherwise.
    pub draws: Vec<(String, crate::decimal::Credits)>,
    pub overage: crate::decimal::Credits,
    pub outcome: &'static str,
    pub balance_after: Vec<(String, crate::decimal::Credits)>,
}

pub(super) fn explain(
    catalog: &Catalog,
    account: &Account,
    message: &Message<'_>,
    seq: u64,
    priced: Option<Priced>,
    remembered: &dedupe::Remembered,
) -> Explanation {
    let (kind, outcome) = match (message, remembered) {
        (Message::Usage(_), dedupe::Remembered::Rejected) => ("usage", "rejected"),
        (Message::Usage(_), _) => ("usage", "charged"),
        (Message::Command(c), _) => (c.kind.name(), "applied"),
        (Message::Tick { .. }, _) => ("tick", "applied"),
    };
    let (draws, overage) = match remembered {
        dedupe::Remembered::Charged(charge) => (
            charge
                .draws
                .iter()
                .map(|&(serial, amount, _)| {
                    let id = account
                        .grants
                        .iter()
                        .find(|g| g.serial == serial)
                        .map_or_else(|| format!("#{serial}"), |g| g.id.to_string());
                    (id, amount)
                })
                .collect(),
            charge.overage,
        ),
        _ => (Vec::new(), crate::decimal::Credits::ZERO),
    };
    Explanation {
        seq,
        id: message.id().to_string(),
        kind,
        ts: message.ts(),
        priced,
        draws,
        overage,
        outcome,
        balance_after: account
            .types
            .iter()
            .map(|t| {
                (
                    catalog.credit_type(t.credit_type).name.clone(),
                    account.balance(t.credit_type),
                )
            })
            .collect(),
    }
}
