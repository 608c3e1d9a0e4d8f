//! Plans: allowances, scopes, policies, alerts.

use super::*;

impl Loader {
    pub(super) fn plan(&mut self, table: &Table, key: &str) {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &[
                "name",
                "period",
                "anchor_day",
                "anchor_weekday",
                "time_zone",
                "price",
                "expiring_lead",
                "runway_alert",
                "allowances",
                "policy",
                "alerts",
            ],
        );
        let name = self.name(table, key);
        let period_name = match self.string(table, key, "period") {
            Ok(name) => Some(name.unwrap_or("month")),
            Err(Reported) => None,
        };
        let anchor_day = self.integer_in(table, key, "anchor_day", 1, ANCHOR_DAY_MAX);
        let anchor_weekday = match self.string(table, key, "anchor_weekday") {
            Ok(Some(text)) => match weekday_index(text) {
                Some(day) => Ok(Some(day)),
                None => {
                    self.error(
                        at(key, "anchor_weekday"),
                        format!("{text:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                    );
                    Err(Reported)
                }
            },
            Ok(None) => Ok(None),
            Err(Reported) => Err(Reported),
        };
        let period = match period_name {
            Some(period @ ("month" | "week" | "day")) => {
                if period != "month" && table.contains_key("anchor_day") {
                    self.error(at(key, "anchor_day"), "only for period = \"month\"");
                }
                if period != "week" && table.contains_key("anchor_weekday") {
                    self.error(at(key, "anchor_weekday"), "only for period = \"week\"");
                }
                match period {
                    "month" => anchor_day.ok().map(|day| PeriodRule::Month {
                        anchor_day: day.map_or(1, |d| d as u8),
                    }),
                    "week" => anchor_weekday.ok().map(|day| PeriodRule::Week {
                        anchor_weekday: day.unwrap_or(0),
                    }),
                    _ => Some(PeriodRule::Day),
                }
            }
            Some(other) => {
                self.error(
                    at(key, "period"),
                    format!("unknown period {other:?} (month, week or day)"),
                );
                None
            }
            None => None,
        };
        let time_zone = self.zone(table, key);
        let price = self.credits(table, key, "price", None, false);
        // Optional spans that disable a feature when absent, so 0 is no way to say "off".
        let mut enabling = |name: &str| match self.span(table, key, name) {
            Ok(Some(span)) if span <= Span::ZERO => {
                self.error(at(key, name), "must be > 0 (omit it to disable)");
                None
            }
            Ok(span) => span,
            Err(Reported) => None,
        };
        let expiring_lead = enabling("expiring_lead");
        let runway_alert = enabling("runway_alert");
        let mut allowances = Vec::new();
        let mut allowance_types = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "allowances") {
            for (allowance_key, allowance_table) in entries {
                let (credit_type, allowance) = self.allowance(allowance_table, &allowance_key);
                if let Some(credit_type) = credit_type {
                    if allowance_types.contains(&credit_type) {
                        // Allowance and rollover grant ids carry the credit type (SEMANTICS
                        // §5.3), so two entries of one type would collide.
                        self.error(
                            at(&allowance_key, "credit_type"),
                            "a plan has at most one allowance per credit type",
                        );
                    }
                    allowance_types.push(credit_type);
                }
                allowances.extend(allowance);
            }
        }
        let policy = match self.table(table, key, "policy") {
            Ok(None) => Some(Policy::Reject),
            Ok(Some(policy_table)) => self.policy(policy_table, &at(key, "policy")),
            Err(Reported) => None,
        };
        let mut alerts = Vec::new();
        let mut alert_names: Vec<(CreditTypeId, String)> = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "alerts") {
            for (alert_key, alert_table) in entries {
                let (identity, alert) = self.alert(alert_table, &alert_key);
                if let Some(identity) = identity {
                    if alert_names.contains(&identity) {
                        self.error(
                            at(&alert_key, "name"),
                            format!(
                                "duplicate alert {:?} for this credit type in this plan",
                                identity.1
                            ),
                        );
                    }
                    alert_names.push(identity);
                }
                alerts.extend(alert);
            }
        }
        let Some(name) = name else { return };
        if self.plan_index.contains_key(&name) {
            self.error(at(key, "name"), format!("duplicate plan {name:?}"));
            return;
        }
        self.plan_index
            .insert(name.clone(), PlanId(self.plans.len() as u16));
        let plan = (|| {
            if self.errors.len() != before {
                return None;
            }
            Some(Plan {
                name,
                period: period?,
                time_zone: time_zone?,
                price: price.ok()?.unwrap_or(Price::ZERO),
                allowances,
                policy: policy?,
                alerts,
                expiring_lead,
                runway_alert,
            })
        })();
        self.plans.push(plan);
    }

    /// One allowance, and its credit type even when something else is wrong (so duplicates are
    /// still found).
    pub(super) fn allowance(
        &mut self,
        table: &Table,
        key: &str,
    ) -> (Option<CreditTypeId>, Option<Allowance>) {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &["credit_type", "amount", "priority", "scope", "rollover_cap"],
        );
        let credit_type = self.credit_type_ref(table, key);
        let scale = credit_type.and_then(|(_, scale)| scale);
        let got = self.credits(table, key, "amount", scale, true);
        let amount = self.required(key, "amount", got);
        let priority = self
            .integer_in(
                table,
                key,
                "priority",
                i64::from(i32::MIN),
                i64::from(i32::MAX),
            )
            .ok()
            .flatten()
            .map_or(ALLOWANCE_PRIORITY_DEFAULT, |p| p as i32);
        let rollover_cap = self
            .credits(table, key, "rollover_cap", scale, false)
            .ok()
            .flatten()
            .unwrap_or(Credits::ZERO);
        let scope = match self.array(table, key, "scope") {
            Ok(Some(values)) => Some(self.scope(values, &at(key, "scope"), credit_type)),
            _ => None,
        };
        let credit_type = credit_type.map(|(id, _)| id);
        if self.errors.len() != before {
            return (credit_type, None);
        }
        let allowance = credit_type
            .zip(amount)
            .map(|(credit_type, amount)| Allowance {
                credit_type,
                amount,
                priority,
                scope,
                rollover_cap,
            });
        (credit_type, allowance)
    }

    /// A non-empty list of distinct meters, all priced in `credit_type`.
    pub(super) fn scope(
        &mut self,
        values: &[Value],
        key: &str,
        credit_type: Option<(CreditTypeId, Option<u8>)>,
    ) -> Vec<MeterId> {
        if values.is_empty() {
            self.error(
                key,
                "must name at least one meter (omit scope for all meters)",
            );
        }
        let mut meters = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let meter_key = item(key, index);
            let Value::String(name) = value else {
                self.wrong_type(&meter_key, "a meter name", value);
                continue;
            };
            let Some(&id) = self.meter_index.get(name) else {
                self.error(meter_key, format!("unknown meter {name:?}"));
                continue;
            };
            if meters.contains(&id) {
                self.error(meter_key, format!("{name:?} is listed twice"));
                continue;
            }
            let meter_type = self.meters[id.0 as usize].credit_type;
            if let (Some((expected, _)), Some(actual)) = (credit_type, meter_type) {
                if expected != actual {
                    let expected_name = &self.credit_types[expected.0 as usize].name;
                    let actual_name = &self.credit_types[actual.0 as usize].name;
                    let message = format!(
                        "meter {name:?} is priced in {actual_name:?}, not {expected_name:?}"
                    );
                    self.error(meter_key, message);
                    continue;
                }
            }
            meters.push(id);
        }
        meters
    }

    /// Reads `[plans.policy]` into a [`PolicySpec`] (types only), then checks it with the same
    /// code as the wire `set_policy` command.
    pub(super) fn policy(&mut self, table: &Table, key: &str) -> Option<Policy> {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &[
                "kind",
                "credit_type",
                "threshold",
                "amount",
                "target",
                "price",
                "max_per_period",
                "cooldown",
                "priority",
                "fallback",
                "overage_limit",
                "overage_price",
            ],
        );
        let got = self.string(table, key, "kind");
        let kind = self.required(key, "kind", got);
        let spec = PolicySpec {
            kind: kind.unwrap_or_default().to_string(),
            credit_type: self
                .string(table, key, "credit_type")
                .ok()
                .flatten()
                .map(str::to_string),
            threshold: self.fixed(table, key, "threshold").ok().flatten(),
            amount: self.fixed(table, key, "amount").ok().flatten(),
            target: self.fixed(table, key, "target").ok().flatten(),
            price: self.fixed(table, key, "price").ok().flatten(),
            max_per_period: self
                .integer_in(table, key, "max_per_period", 0, i64::from(u32::MAX))
                .ok()
                .flatten()
                .map(|n| n as u32),
            cooldown: self.span(table, key, "cooldown").ok().flatten(),
            priority: self
                .integer_in(
                    table,
                    key,
                    "priority",
                    i64::from(i32::MIN),
                    i64::from(i32::MAX),
                )
                .ok()
                .flatten()
                .map(|p| p as i32),
            fallback: self
                .string(table, key, "fallback")
                .ok()
                .flatten()
                .map(str::to_string),
            overage_limit: self.fixed(table, key, "overage_limit").ok().flatten(),
            overage_price: self.fixed(table, key, "overage_price").ok().flatten(),
        };
        kind?;
        // Keys already reported (wrong type, unknown) are not reported again as "missing".
        let reported: HashSet<String> = self.errors[before..]
            .iter()
            .map(|e| e.key.clone())
            .collect();
        let lookup = |name: &str| {
            self.credit_type_index
                .get(name)
                .map(|&id| (id, self.credit_types[id.0 as usize].scale))
        };
        match compile_policy_with(&lookup, &spec, key) {
            Ok(policy) => Some(policy),
            Err(errors) => {
                self.errors
                    .extend(errors.into_iter().filter(|e| !reported.contains(&e.key)));
                None
            }
        }
    }

    /// One alert rule, and its (credit type, name) even when something else is wrong (so
    /// duplicates are still found).
    pub(super) fn alert(
        &mut self,
        table: &Table,
        key: &str,
    ) -> (Option<(CreditTypeId, String)>, Option<AlertRule>) {
        let before = self.errors.len();
        self.keys(table, key, &["credit_type", "name", "amount", "percent"]);
        let credit_type = self.credit_type_ref(table, key);
        let name = self.name(table, key);
        if name.as_deref() == Some("depleted") {
            self.error(
                at(key, "name"),
                "\"depleted\" is the built-in alert at balance <= 0; choose another name",
            );
        }
        if name.as_deref() == Some("runway") {
            self.error(
                at(key, "name"),
                "\"runway\" is the built-in alert of the plan's runway_alert; choose another name",
            );
        }
        let scale = credit_type.and_then(|(_, scale)| scale);
        let amount = self.credits(table, key, "amount", scale, false);
        let percent = match self.decimal_sign(table, key, "percent", true) {
            Ok(Some(percent)) if percent > Dec::from_int(100) => {
                self.error(at(key, "percent"), "must be at most 100");
                Err(Reported)
            }
            other => other,
        };
        let threshold = match (amount, percent) {
            (Ok(Some(amount)), Ok(None)) => Some(Threshold::Amount(amount)),
            (Ok(None), Ok(Some(percent))) => Some(Threshold::Percent(percent)),
            (Ok(Some(_)), Ok(Some(_))) => {
                self.error(at(key, "percent"), "give exactly one of amount and percent");
                None
            }
            (Ok(None), Ok(None)) => {
                self.error(
                    at(key, "amount"),
                    "missing required key (give exactly one of amount and percent)",
                );
                None
            }
            _ => None,
        };
        let identity = credit_type.map(|(id, _)| id).zip(name);
        if self.errors.len() != before {
            return (identity, None);
        }
        let alert = identity
            .clone()
            .zip(threshold)
            .map(|((credit_type, name), threshold)| AlertRule {
                credit_type,
                name,
                threshold,
            });
        (identity, alert)
    }
}
