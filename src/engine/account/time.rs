//! Transitions in time: advancing the clock, expiry, period close, flushes (SEMANTICS §3, §10).

use super::*;

impl Account {
    /// The next transition due, if any, with its time.
    pub(super) fn next_due(&self, catalog: &Catalog) -> Option<(Instant, Due)> {
        self.next_due_using(catalog, self.dues())
    }

    /// [`Account::next_due`] from the kept due instants of many grants when `dues` is given, by
    /// walking every grant when not: the same answer either way.
    pub(super) fn next_due_using(
        &self,
        catalog: &Catalog,
        dues: Option<&dues::Dues>,
    ) -> Option<(Instant, Due)> {
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
        if let Some(dues) = dues {
            // The same answer as the walk below, without it (engine/account/dues.rs).
            if let Some((expires_at, index)) = dues.first_expiry(&self.grants) {
                consider(expires_at, Due::GrantExpiry(index));
            }
            if let Some(lead) = lead {
                if let Some((expires_at, index)) = dues.first_unwarned(&self.grants) {
                    consider(expires_at.saturating_sub(lead), Due::Expiring(index));
                }
            }
        } else {
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
        self.dues_ensure();
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
            // Alerts once after every transition due at this instant, on the state they leave
            // (§10.5): an allowance expiring at the period's end and the next one granted at the
            // same instant are one step, not a depletion and a recovery.
            let more_now = self
                .next_due(ctx.catalog)
                .is_some_and(|(next, _)| next <= target && next.max(self.clock) == at);
            if !more_now {
                self.evaluate_alerts(ctx, at);
            }
        }
        // Moving the clock changes no transition's time.
        if target > self.clock {
            self.clock = target;
        }
        next
    }

    pub(super) fn expire_hold(&mut self, ctx: &mut Context<'_>, index: usize, at: Instant) {
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

    pub(super) fn expire_grant(&mut self, ctx: &mut Context<'_>, index: usize, at: Instant) {
        self.dues_leaving(index);
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

    pub(super) fn warn_expiring(&mut self, ctx: &mut Context<'_>, index: usize, at: Instant) {
        self.dues_warning(index);
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
    pub(super) fn close_period(
        &mut self,
        ctx: &mut Context<'_>,
        at: Instant,
        closed_end: Instant,
        next_end: Instant,
    ) {
        self.period_end = closed_end;
        // A charge of a period can be reversed while its record is kept: until the tick clock
        // passes its ts + reversal_window (at least dedupe_window), and the tick clock is at
        // most future_max behind the account's. Older records are no longer needed.
        let rules = &ctx.catalog.rules;
        let kept = rules.reversal_window.0.saturating_add(rules.future_max.0);
        let opened = self.period_start;
        for t in &mut self.types {
            let debt = t.debt();
            if let Some(rare) = t.rare.as_deref_mut() {
                rare.settled_periods
                    .retain(|p| p.end.0.saturating_add(kept) > at.0);
            }
            if debt.is_positive() {
                t.rare_mut().settled_periods.push(SettledPeriod {
                    start: opened,
                    end: closed_end,
                    credits: debt,
                });
            }
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
        self.grants_removed();
        self.dues_grants_removed();
        self.open_period(ctx, at, next_end, at);
    }

    pub(super) fn emit_revenue(&mut self, ctx: &mut Context<'_>, at: Instant) {
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
    pub(super) fn open_period(
        &mut self,
        ctx: &mut Context<'_>,
        start: Instant,
        end: Instant,
        at: Instant,
    ) {
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
}
