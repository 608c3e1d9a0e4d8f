//! Commands: grants, voids, adjustments, reversals, plans, policies, holds (SEMANTICS §4, §8, §9).

use super::*;

impl Account {
    pub fn command(
        &mut self,
        ctx: &mut Context<'_>,
        command_id: &str,
        ts: Instant,
        kind: &CommandKind,
        priced: Option<&Priced>,
        // The record a `reverse` found, or the reason it is rejected with when none was.
        reversed_event: Result<&mut Remembered, &'static str>,
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

    pub(super) fn grant_command(
        &mut self,
        ctx: &mut Context<'_>,
        command_id: &str,
        ts: Instant,
        grant: &GrantCommand,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let detail = ResultDetail::Grant {
            grant_id: grant.grant_id.clone(),
        };
        if self.has_grant_id(&grant.grant_id) {
            return (Some("grant_exists"), detail, Remembered::Applied);
        }
        // Live grants are never more than all grants: count them only when the list could be
        // at the limit (a grant command used to walk every grant).
        let max = ctx.catalog.rules.grants_per_account_max;
        if self.grants.len() >= max
            && self
                .grants
                .iter()
                .filter(|g| g.status == GrantStatus::Live)
                .count()
                >= max
        {
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

    pub(super) fn void_grant(
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
        self.dues_leaving(index);
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

    pub(super) fn set_plan(&mut self, ctx: &mut Context<'_>, plan: PlanId, ts: Instant) {
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

    pub(super) fn adjust(
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

    pub(super) fn reverse(
        &mut self,
        ctx: &mut Context<'_>,
        event_id: &str,
        entry: Result<&mut Remembered, &'static str>,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
        let charge = match entry {
            Err(missing) => return (Some(missing), ResultDetail::None, Remembered::Applied),
            Ok(Remembered::Applied) => {
                return (
                    Some("unknown_event"),
                    ResultDetail::None,
                    Remembered::Applied,
                )
            }
            Ok(Remembered::Rejected) => {
                return (Some("not_charged"), ResultDetail::None, Remembered::Applied)
            }
            Ok(Remembered::Charged(charge)) => charge,
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
        // Of the event's overage `o`, what is still owed (in the current period: the debt; in a
        // closed one: what its close settled and invoiced) is cancelled; the rest was repaid
        // by grants (§5.2), and those credits come back with the repayment's invoice credit
        // undone: the account ends as if the event had never been charged (§9).
        let t = self.type_index(credit_type);
        let mut invoiced = Credits::ZERO;
        if charge.overage.is_positive() {
            let (owed, repaid) = if same_period {
                let cancel = charge.overage.min(self.types[t].debt());
                self.types[t].add_rare(|r| &mut r.debt, -cancel);
                self.types[t].add_rare(|r| &mut r.returned, cancel);
                (cancel, charge.overage - cancel)
            } else {
                let settled = self.types[t].take_settled(charge.period_start, charge.overage);
                invoiced = settled;
                (settled, charge.overage - settled)
            };
            debug_assert!(owed + repaid == charge.overage);
            if repaid.is_positive() {
                self.types[t].add_rare(|r| &mut r.returned, repaid);
                new_grants += 1;
                let id = format!("reversal-{event_id}-{new_grants}");
                self.add_grant(
                    ctx,
                    &id,
                    credit_type,
                    Source::Adjustment,
                    repaid,
                    100,
                    ts,
                    None,
                    Price::ZERO,
                    ts,
                    None,
                    Credits::ZERO,
                    false,
                );
                if same_period {
                    let price = self.overage_price(catalog);
                    self.book(
                        catalog,
                        LineKind::OverageRepaid,
                        None,
                        credit_type,
                        Quantity::ZERO,
                        repaid,
                        money(repaid, price),
                    );
                }
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
            // Only the overage that was invoiced is credited as money; what grants repaid
            // came back as credits above.
            let credited = if invoiced == charge.overage {
                charge.overage_money
            } else {
                money(invoiced, charge.overage_price)
            };
            self.book(
                catalog,
                LineKind::Reversal,
                Some(charge.meter),
                credit_type,
                -charge.quantity,
                -charge.cost,
                -credited,
            );
        }
        (None, ResultDetail::None, Remembered::Applied)
    }

    pub(super) fn reserve(
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
    pub(super) fn largest_affordable(
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

    pub(super) fn commit(
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

    pub(super) fn release(
        &mut self,
        hold_id: &str,
    ) -> (Option<&'static str>, ResultDetail, Remembered) {
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
}
