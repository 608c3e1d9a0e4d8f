//! Balance alerts with hysteresis and expiring warnings (SEMANTICS §10.5).

use super::*;

/// What a threshold of [`Account::alert_step`] says when it goes low.
pub(super) enum Low {
    Threshold(Threshold),
    Depleted,
    Runway {
        limit: crate::time::Span,
        burned: Credits,
        runs_out_at: Instant,
    },
}

impl Account {
    /// Evaluates every threshold of every credit type (SEMANTICS §10.5). Runs after every
    /// charge, so it allocates nothing unless an alert fires, and compares in fixed point.
    pub fn evaluate_alerts(&mut self, ctx: &mut Context<'_>, at: Instant) {
        let catalog = ctx.catalog;
        let plan = catalog.plan(self.plan);
        for index in 0..self.types.len() {
            let credit_type = self.types[index].credit_type;
            // The ledger's balance, O(1): by the ledger invariant (SEMANTICS §5.4) it equals the
            // grants' remaining minus debt, which took a walk over every grant.
            let balance = self.types[index].ledger().balance();
            debug_assert_eq!(
                balance,
                self.balance(credit_type),
                "ledger and grants disagree"
            );
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
                    Low::Threshold(rule.threshold),
                    below,
                    balance,
                    base,
                    at,
                );
            }
            let depleted = !balance.is_positive();
            self.alert_step(
                ctx,
                index,
                "depleted",
                Low::Depleted,
                depleted,
                balance,
                base,
                at,
            );
            if let Some(limit) = plan.runway_alert {
                // At the account's clock, which is where the burn was counted (`at` may be
                // ahead of it during a transition; the clock follows right after).
                let clock = self.clock.max(at);
                let held = self.held(credit_type);
                let runway =
                    self.types[index].runway(catalog.rules.runway_window, clock, balance - held);
                let below = runway
                    .runs_out_at
                    .is_some_and(|end| end.0 - clock.0 < limit.0);
                let low = Low::Runway {
                    limit,
                    burned: runway.burned,
                    runs_out_at: runway.runs_out_at.unwrap_or(clock),
                };
                self.alert_step(ctx, index, "runway", low, below, balance, base, at);
            }
        }
    }

    /// Records a threshold's state and emits `low`/`depleted` or `recovered` on a crossing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn alert_step(
        &mut self,
        ctx: &mut Context<'_>,
        index: usize,
        name: &str,
        low: Low,
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
            let body = match low {
                Low::Threshold(threshold) => Body::BalanceLow {
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
                Low::Depleted => Body::BalanceDepleted {
                    credit_type: credit_name,
                    balance,
                },
                Low::Runway {
                    limit,
                    burned,
                    runs_out_at,
                } => Body::RunwayLow {
                    credit_type: credit_name,
                    runway_alert: limit,
                    burned,
                    runs_out_at,
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
}
