//! Paying for a charge under the effective policy, top-ups, usage (SEMANTICS §6, §7).

use super::*;

impl Account {
    pub(super) fn topup_allowed(&self, rule: &TopupRule, ts: Instant) -> bool {
        let rare = self.rare();
        rare.topups_in_period < rule.max_per_period
            && rare
                .last_topup
                .is_none_or(|last| ts >= last.saturating_add(rule.cooldown))
    }

    /// Tops up per `rule` if allowed; returns whether it did.
    pub(super) fn topup(
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
    pub(super) fn pay(
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
            // Alerts wait for the end of the input (§10.5): a dip this top-up repairs is none.
            if cost > spendable(self) {
                self.topup(ctx, rule, cause, ts, &mut topups);
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
        let (overage_money, overage_price) = match shortfall {
            Shortfall::Overage(o) => (money(overage, o.price), o.price),
            Shortfall::Reject => (Revenue::ZERO, Price::ZERO),
        };
        let charged = cost - unpaid;
        let t = self.type_index(credit_type);
        let state = &mut self.types[t];
        state.add_rare(|r| &mut r.debt, overage);
        state.consumed += charged;
        state.record_burn(catalog.rules.runway_window, self.clock, charged);
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
            overage_price: if overage.is_positive() {
                overage_price
            } else {
                Price::ZERO
            },
            period_start: self.period_start,
            reversed: false,
        };
        (Payment::Paid { charge, unpaid }, PostPay { rule, topups })
    }

    /// After the charge (or its rejection, already emitted by the caller): the post-payment
    /// top-up. The input's alerts are evaluated once, by the caller, after it (§10.5).
    pub(super) fn after_payment(
        &mut self,
        ctx: &mut Context<'_>,
        mut post: PostPay,
        cause: &str,
        ts: Instant,
    ) {
        if let Some(rule) = &post.rule {
            if self.balance(rule.credit_type) < rule.threshold {
                self.topup(ctx, rule, cause, ts, &mut post.topups);
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
        self.evaluate_alerts(ctx, ts);
        remembered
    }
}
