//! Adding, drawing from and holding credits on grants (SEMANTICS §5).

use std::collections::HashMap;

use super::*;

/// Up to this many earlier draws or claims, a linear search is cheaper than building an index.
const SMALL: usize = 8;

impl Account {
    /// Adds a grant: pays debt first (§5.2), inserts it in burn order, books revenue.
    /// Returns its serial. The caller books the ledger term and invoice line.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_grant(
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
        self.dues_added(position);
        self.grant_id_added(id);
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
    pub(super) fn draw(
        &mut self,
        credit_type: CreditTypeId,
        meter: Option<MeterId>,
        ts: Instant,
        needed: Credits,
        only: Option<&[(u32, Credits)]>,
        draws: &mut Draws,
    ) -> Credits {
        let mut rest = needed;
        // Each grant is visited once here, so a grant can already be in `draws` only from an
        // earlier call (a commit draws its hold's claims first): only those are searched, and
        // through a map when there are many. Claims are searched sorted by serial when there
        // are many. Both keep the first match, as the linear searches did: a charge drawing
        // from n grants costs O(n log n), not O(n²).
        let earlier = draws.len();
        let earlier_index: Option<HashMap<u32, usize>> = (earlier > SMALL).then(|| {
            let mut index = HashMap::with_capacity(earlier);
            for (position, draw) in draws.iter().enumerate() {
                index.entry(draw.0).or_insert(position);
            }
            index
        });
        let sorted_claims: Option<Vec<(u32, Credits)>> =
            only.filter(|claims| claims.len() > SMALL).map(|claims| {
                let mut sorted = claims.to_vec();
                sorted.sort_by_key(|claim| claim.0);
                sorted
            });
        let claim_of = |serial: u32| -> Option<(u32, Credits)> {
            match (&sorted_claims, only) {
                (Some(sorted), _) => {
                    let at = sorted.partition_point(|claim| claim.0 < serial);
                    sorted.get(at).filter(|claim| claim.0 == serial).copied()
                }
                (None, Some(claims)) => claims.iter().find(|claim| claim.0 == serial).copied(),
                (None, None) => None,
            }
        };
        for grant in self.grants.iter_mut() {
            if !rest.is_positive() {
                break;
            }
            let limit = match only {
                Some(_) => {
                    let Some(claim) = claim_of(grant.serial) else {
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
            let existing = match &earlier_index {
                Some(index) => index.get(&grant.serial).copied(),
                None => draws[..earlier].iter().position(|d| d.0 == grant.serial),
            };
            match existing {
                Some(position) => draws[position].1 += take,
                None => draws.push((grant.serial, take, grant.cost_basis)),
            }
        }
        needed - rest
    }

    /// Releases every claim a hold has (credits become spendable again); returns the total.
    pub(super) fn release_claims(&mut self, claims: &[(u32, Credits)]) -> Credits {
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
    pub(super) fn drop_claims_on(&mut self, serial: u32) {
        if let Some(rare) = &mut self.rare {
            for hold in &mut rare.holds {
                hold.claims.retain(|c| c.0 != serial);
            }
        }
    }
}
