//! The invariants of one account, checked after every input in debug builds.

use super::*;

impl Account {
    /// Checks every invariant of this account; `Err` describes the first broken one.
    pub fn check(&self) -> Result<(), String> {
        let fail = |what: String| Err(format!("account {}: {what}", self.id));
        if let Err(what) = self.dues_check() {
            return fail(what);
        }
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
