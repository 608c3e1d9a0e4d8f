//! The due instants of an account with many grants, kept in order (SEMANTICS §10: a grant's
//! expiry, and its `grant.expiring` warning a plan's `expiring_lead` before it).
//!
//! Finding an account's next transition used to walk every grant, twice per input, so n grant
//! commands on one account cost O(n²). From [`GRANT_DUES_INDEXED`] grants on, the live grants
//! that expire are kept in two ordered sets, by (expiry, burn order): all of them, and those not
//! yet warned. The earliest of each is the first entry; its grant is found by binary search in
//! the grants (which are in burn order, and a [`BurnKey`] is a grant's whole burn-order key).
//! The warning instant is the expiry less the plan's lead, read when asked, so a plan change
//! needs no rebuild.
//!
//! A cache, not state: never serialized (snapshots are unchanged), equal to any other, built
//! when an account reaches the threshold or is first advanced with that many grants (after a
//! restore), updated when a grant is added, expires, is voided or warned, rebuilt after the
//! grants a period close removes. `next_due` gives the same answer with it as without: the
//! first grant in burn order among those due at the earliest instant (checked after every input
//! in debug builds, [`Account::check`]).

use std::collections::BTreeSet;

use super::*;

/// From this many grants on, an account's grant due instants are kept in [`GrantDues`].
pub const GRANT_DUES_INDEXED: usize = 64;

/// A grant's whole burn-order key, owned: compared field by field in the order
/// `Grant::burn_order` compares them (the derived order follows the field order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct BurnKey {
    priority: i32,
    expiry: Instant,
    cost_basis: Price,
    granted_at: Instant,
    id: Box<str>,
    serial: u32,
}

impl BurnKey {
    fn of(grant: &Grant) -> BurnKey {
        BurnKey {
            priority: grant.priority,
            expiry: grant.expiry,
            cost_basis: grant.cost_basis,
            granted_at: grant.granted_at,
            id: grant.id.clone(),
            serial: grant.serial,
        }
    }

    /// This key's order against `grant`'s place in burn order.
    fn cmp_grant(&self, grant: &Grant) -> Ordering {
        (
            self.priority,
            self.expiry,
            self.cost_basis,
            self.granted_at,
            self.id.as_bytes(),
            self.serial,
        )
            .cmp(&(
                grant.priority,
                grant.expiry,
                grant.cost_basis,
                grant.granted_at,
                grant.id.as_bytes(),
                grant.serial,
            ))
    }

    /// The position of this key's grant in `grants` (in burn order).
    fn position(&self, grants: &[Grant]) -> usize {
        let at = grants.partition_point(|g| self.cmp_grant(g) == Ordering::Greater);
        debug_assert!(
            grants.get(at).is_some_and(|g| g.serial == self.serial),
            "a due grant is in the grants"
        );
        at
    }
}

/// The ordered sets (see the module's documentation).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Dues {
    /// Every live grant that expires, by (expiry, burn order).
    expiries: BTreeSet<(Instant, BurnKey)>,
    /// Those of them not yet warned (`Grant::warned` false).
    unwarned: BTreeSet<(Instant, BurnKey)>,
}

impl Dues {
    fn of(grants: &[Grant]) -> Dues {
        let mut dues = Dues::default();
        for grant in grants {
            dues.add(grant);
        }
        dues
    }

    fn add(&mut self, grant: &Grant) {
        if grant.status != GrantStatus::Live {
            return;
        }
        let Some(expiry) = grant.expires_at() else {
            return;
        };
        if !grant.warned {
            self.unwarned.insert((expiry, BurnKey::of(grant)));
        }
        self.expiries.insert((expiry, BurnKey::of(grant)));
    }

    /// The earliest expiry and the position of its grant.
    pub(super) fn first_expiry(&self, grants: &[Grant]) -> Option<(Instant, usize)> {
        let (at, key) = self.expiries.first()?;
        Some((*at, key.position(grants)))
    }

    /// The earliest expiry of a grant not yet warned, and the position of its grant.
    pub(super) fn first_unwarned(&self, grants: &[Grant]) -> Option<(Instant, usize)> {
        let (at, key) = self.unwarned.first()?;
        Some((*at, key.position(grants)))
    }
}

/// The cache in [`AccountRare`]: `None` until built, or after the grants fell below the threshold.
#[derive(Clone, Default)]
pub struct GrantDues(pub(super) Option<Box<Dues>>);

impl PartialEq for GrantDues {
    fn eq(&self, _: &GrantDues) -> bool {
        true
    }
}

impl std::fmt::Debug for GrantDues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantDues")
    }
}

impl Account {
    /// The ordered due instants, when built.
    pub(super) fn dues(&self) -> Option<&Dues> {
        self.rare.as_ref().and_then(|r| r.grant_dues.0.as_deref())
    }

    fn dues_mut(&mut self) -> Option<&mut Dues> {
        self.rare
            .as_mut()
            .and_then(|r| r.grant_dues.0.as_deref_mut())
    }

    /// Builds the due instants if the account has enough grants and they are not built yet
    /// (the first advance after a restore, or the grant that reaches the threshold).
    pub(super) fn dues_ensure(&mut self) {
        if self.grants.len() < GRANT_DUES_INDEXED || self.dues().is_some() {
            return;
        }
        let dues = Dues::of(&self.grants);
        self.rare.get_or_insert_with(Box::default).grant_dues.0 = Some(Box::new(dues));
    }

    /// Keeps the due instants in step with the grant just inserted at `index`.
    pub(super) fn dues_added(&mut self, index: usize) {
        let grant = &self.grants[index];
        match self
            .rare
            .as_mut()
            .and_then(|r| r.grant_dues.0.as_deref_mut())
        {
            Some(dues) => dues.add(grant),
            None => self.dues_ensure(),
        }
    }

    /// The grant at `index` is about to stop being live (expiry, void): it has no due instants.
    pub(super) fn dues_leaving(&mut self, index: usize) {
        self.dues_forget(index, true);
    }

    /// The grant at `index` is about to be warned: no warning is due for it any more.
    pub(super) fn dues_warning(&mut self, index: usize) {
        self.dues_forget(index, false);
    }

    /// Removes the grant at `index` from the unwarned set, and from all expiries if `expiry`.
    fn dues_forget(&mut self, index: usize, expiry: bool) {
        let grant = &self.grants[index];
        let Some(expires_at) = grant.expires_at() else {
            return;
        };
        if self.dues().is_none() {
            return;
        }
        let key = (expires_at, BurnKey::of(grant));
        if let Some(dues) = self.dues_mut() {
            dues.unwarned.remove(&key);
            if expiry {
                dues.expiries.remove(&key);
            }
        }
    }

    /// Grants were removed (period close): rebuilt if still needed, else dropped.
    pub(super) fn dues_grants_removed(&mut self) {
        if let Some(rare) = &mut self.rare {
            rare.grant_dues.0 = None;
        }
        self.dues_ensure();
    }

    /// For [`Account::check`]: the kept due instants are those the grants have.
    pub(super) fn dues_check(&self) -> Result<(), String> {
        match self.dues() {
            Some(kept) if *kept != Dues::of(&self.grants) => {
                Err("the kept grant due instants differ from the grants'".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::engine::{Engine, Envelope};
    use crate::time::Instant;

    /// A small xorshift: the test's logs are a function of the seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// One account on the daily plan with `expiring_lead = 1h` gets 70 to 150 grants (few
    /// priorities, cost bases and expiry instants, so burn-order keys tie on every field but the
    /// id and serial), then two days of usage, voids, more grants and ticks: expiries, warnings
    /// and period closes. After every message the next transition found from the kept due
    /// instants is the one walking every grant finds, and the kept instants are built.
    #[test]
    fn kept_due_instants_give_the_walks_answer() {
        let text = std::fs::read_to_string("config/catalog.toml").expect("config/catalog.toml");
        let catalog = Arc::new(crate::catalog::load::from_str(&text).expect("catalog"));
        let t0: Instant = "2026-11-24T00:30:00Z".parse().expect("ts");
        let ts = |ms: i64| Instant(t0.0 + ms).to_string();
        const MINUTE: i64 = 60_000;
        let (mut expired, mut warned, mut closes) = (0, 0, 0);
        for seed in 1..=12u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut engine = Engine::new(catalog.clone(), 1);
            let mut seq = 0u64;
            let mut apply = |engine: &mut Engine, payload: String| {
                seq += 1;
                let mut out = Vec::new();
                engine.apply(
                    &Envelope {
                        payload: payload.as_bytes(),
                        seq,
                        subject: "creditflow.in",
                        received: None,
                    },
                    &mut out,
                );
                let account = engine.account("acct").expect("the account exists");
                assert_eq!(
                    account.next_due(&catalog),
                    account.next_due_using(&catalog, None),
                    "seed {seed}, after {payload}"
                );
                assert_eq!(
                    account.dues().is_some(),
                    account.grants.len() >= super::GRANT_DUES_INDEXED,
                    "seed {seed}, after {payload}"
                );
                out.iter().map(|o| o.body.type_name()).collect::<Vec<_>>()
            };
            apply(
                &mut engine,
                format!(
                    r#"{{"type":"set_plan","id":"p","account":"acct","ts":"{}","plan":"daily_test"}}"#,
                    ts(0)
                ),
            );
            let mut now = 0i64;
            let mut grants = 0u64;
            let grant = |rng: &mut Rng, grants: &mut u64, now: i64| {
                *grants += 1;
                let expiry = match rng.below(5) {
                    0 => String::new(),
                    _ => format!(
                        r#","expires_at":"{}""#,
                        ts(now + (1 + rng.below(96) as i64) * 30 * MINUTE)
                    ),
                };
                format!(
                    r#"{{"type":"grant","id":"g{grants}","account":"acct","ts":"{}","amount":"{}","priority":{},"cost_basis":"{}"{expiry}}}"#,
                    ts(now + rng.below(3) as i64 * 1000),
                    ["1", "5", "0.5"][rng.below(3) as usize],
                    rng.below(3),
                    ["0.01", "0.02"][rng.below(2) as usize],
                )
            };
            for _ in 0..70 + rng.below(80) {
                let payload = grant(&mut rng, &mut grants, now);
                apply(&mut engine, payload);
            }
            let mut step = 0;
            while now < 2 * 24 * 60 * MINUTE {
                step += 1;
                let payload = match rng.below(10) {
                    0..=3 => {
                        now += rng.below(40) as i64 * MINUTE;
                        format!(r#"{{"type":"tick","id":"t{step}","ts":"{}"}}"#, ts(now))
                    }
                    4..=6 => format!(
                        r#"{{"id":"u{step}","account":"acct","meter":"api_call","quantity":"{}","ts":"{}"}}"#,
                        rng.below(2000),
                        ts(now)
                    ),
                    7 => format!(
                        r#"{{"type":"void_grant","id":"v{step}","account":"acct","ts":"{}","grant_id":"g{}"}}"#,
                        ts(now),
                        1 + rng.below(grants)
                    ),
                    _ => grant(&mut rng, &mut grants, now),
                };
                for kind in apply(&mut engine, payload) {
                    match kind {
                        "grant.expired" => expired += 1,
                        "grant.expiring" => warned += 1,
                        "revenue.period" => closes += 1,
                        _ => {}
                    }
                }
            }
        }
        // The logs reached every transition the kept instants stand for.
        assert!(
            expired > 100 && warned > 100 && closes > 10,
            "{expired} {warned} {closes}"
        );
    }
}
