//! The model's catalog: a restricted, hand-built description of credit types, meters (unit
//! rate only), plans and rules, and its rendering in the project's TOML catalog format.
//!
//! Owns: [`ModelCatalog`] and [`ModelCatalog::to_toml`]. Must never: depend on
//! `creditflow::catalog` (the model is an independent reading of the contract).

use rust_decimal::Decimal;

use super::time::{format_span, format_ts};

/// A rounding rule, named as in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    HalfEven,
    HalfUp,
    Up,
    Down,
}

impl Rounding {
    pub fn name(self) -> &'static str {
        match self {
            Rounding::HalfEven => "half_even",
            Rounding::HalfUp => "half_up",
            Rounding::Up => "up",
            Rounding::Down => "down",
        }
    }

    /// Rounds `value` to `scale` places with this rule (the only rounding in the model).
    pub fn round(self, value: Decimal, scale: u32) -> Decimal {
        use rust_decimal::RoundingStrategy as S;
        let strategy = match self {
            Rounding::HalfEven => S::MidpointNearestEven,
            Rounding::HalfUp => S::MidpointAwayFromZero,
            Rounding::Up => S::AwayFromZero,
            Rounding::Down => S::ToZero,
        };
        value.round_dp_with_strategy(scale, strategy)
    }
}

#[derive(Clone, Debug)]
pub struct Currency {
    pub code: String,
    pub scale: u32,
    pub rounding: Rounding,
}

/// The `[rules]` the model honours. `dedupe_entries_max` and `accounts_per_partition_max` are
/// left at their (huge) defaults and never reached by the model.
#[derive(Clone, Debug)]
pub struct Rules {
    pub payload_max: usize,
    pub future_max_ms: i64,
    pub backdate_max_ms: i64,
    pub dedupe_window_ms: i64,
    pub reversal_window_ms: i64,
    pub flush_interval_ms: i64,
    /// The burn rate's window (§5.6).
    pub runway_window_ms: i64,
    pub grants_per_account_max: usize,
    pub holds_per_account_max: usize,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            payload_max: 16_384,
            future_max_ms: 5 * 60_000,
            backdate_max_ms: 35 * 86_400_000,
            dedupe_window_ms: 86_400_000,
            reversal_window_ms: 35 * 86_400_000,
            flush_interval_ms: 3_600_000,
            runway_window_ms: 3_600_000,
            grants_per_account_max: 1_000,
            holds_per_account_max: 64,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CreditType {
    pub name: String,
    pub scale: u32,
}

#[derive(Clone, Debug)]
pub struct PriceVersion {
    pub effective_from_ms: i64,
    /// Credits per unit.
    pub rate: Decimal,
    pub increment: Option<Decimal>,
    pub minimum: Option<Decimal>,
}

#[derive(Clone, Debug)]
pub struct Meter {
    pub name: String,
    pub credit_type: String,
    pub rounding: Rounding,
    /// Sorted by `effective_from_ms`, strictly increasing.
    pub versions: Vec<PriceVersion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// UTC calendar days.
    Day,
    /// Calendar months starting on `anchor_day` (1–28) at UTC midnight.
    Month { anchor_day: u8 },
}

#[derive(Clone, Debug)]
pub struct Allowance {
    pub credit_type: String,
    pub amount: Decimal,
    pub priority: i64,
    pub scope: Option<Vec<String>>,
    /// Zero disables rollover.
    pub rollover_cap: Decimal,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TopupAmount {
    Fixed(Decimal),
    Target(Decimal),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Fallback {
    Reject,
    Overage { limit: Decimal, price: Decimal },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopupRule {
    pub credit_type: String,
    pub threshold: Decimal,
    pub amount: TopupAmount,
    pub price: Decimal,
    pub max_per_period: u64,
    pub cooldown_ms: i64,
    pub priority: i64,
    pub fallback: Fallback,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    Reject,
    Overage { limit: Decimal, price: Decimal },
    AutoTopup(TopupRule),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Threshold {
    Amount(Decimal),
    Percent(Decimal),
}

#[derive(Clone, Debug)]
pub struct Alert {
    pub credit_type: String,
    pub name: String,
    pub threshold: Threshold,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub period: Period,
    /// Money per period, on the `allowance` invoice line.
    pub price: Decimal,
    /// At most one entry per credit type (the allowance grant id names only the credit type).
    pub allowances: Vec<Allowance>,
    pub policy: Policy,
    pub alerts: Vec<Alert>,
    pub expiring_lead_ms: Option<i64>,
    /// `balance.runway_low` below this runway (§10.5).
    pub runway_alert_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct ModelCatalog {
    pub default_plan: String,
    pub currency: Currency,
    pub rules: Rules,
    pub credit_types: Vec<CreditType>,
    pub meters: Vec<Meter>,
    pub plans: Vec<Plan>,
}

/// Shorthand for a decimal literal in hand-built catalogs and tests.
pub fn dec(text: &str) -> Decimal {
    text.parse()
        .unwrap_or_else(|_| panic!("bad decimal literal {text:?}"))
}

impl ModelCatalog {
    pub fn credit_type(&self, name: &str) -> Option<&CreditType> {
        self.credit_types.iter().find(|c| c.name == name)
    }

    pub fn meter(&self, name: &str) -> Option<&Meter> {
        self.meters.iter().find(|m| m.name == name)
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }

    /// Position of a credit type in catalog order (balances are listed in this order).
    pub fn credit_type_index(&self, name: &str) -> usize {
        self.credit_types
            .iter()
            .position(|c| c.name == name)
            .unwrap_or(usize::MAX)
    }

    pub fn meter_index(&self, name: &str) -> usize {
        self.meters
            .iter()
            .position(|m| m.name == name)
            .unwrap_or(usize::MAX)
    }

    /// Panics on a catalog the model cannot represent faithfully (a test-writing error).
    pub fn assert_valid(&self) {
        assert!(
            self.plan(&self.default_plan).is_some(),
            "default plan missing"
        );
        for meter in &self.meters {
            assert!(
                self.credit_type(&meter.credit_type).is_some(),
                "{}",
                meter.name
            );
            assert!(!meter.versions.is_empty(), "{} has no version", meter.name);
            for pair in meter.versions.windows(2) {
                assert!(pair[0].effective_from_ms < pair[1].effective_from_ms);
            }
        }
        for plan in &self.plans {
            for (i, a) in plan.allowances.iter().enumerate() {
                assert!(a.amount > Decimal::ZERO, "allowance amounts are > 0");
                assert!(
                    plan.allowances[..i]
                        .iter()
                        .all(|b| b.credit_type != a.credit_type),
                    "plan {}: one allowance per credit type",
                    plan.name
                );
            }
            if let Period::Month { anchor_day } = plan.period {
                assert!((1..=28).contains(&anchor_day));
            }
        }
    }

    /// A catalog that exercises everything the model supports: two credit types, five meters
    /// (increments, a minimum, two price versions, one priced only from 2026-11-26), daily and monthly plans
    /// with every policy kind, alerts of both kinds, rollover and expiry warnings.
    pub fn standard() -> ModelCatalog {
        let from_2020 = super::time::parse_ts("2020-01-01T00:00:00Z").unwrap_or(0);
        let from_late = super::time::parse_ts("2026-11-25T12:00:00Z").unwrap_or(0);
        let from_beta = super::time::parse_ts("2026-11-26T00:00:00Z").unwrap_or(0);
        let unit = |rate: &str| PriceVersion {
            effective_from_ms: from_2020,
            rate: dec(rate),
            increment: None,
            minimum: None,
        };
        ModelCatalog {
            default_plan: "payg".into(),
            currency: Currency {
                code: "USD".into(),
                scale: 2,
                rounding: Rounding::HalfUp,
            },
            rules: Rules {
                payload_max: 2_048,
                future_max_ms: 5 * 60_000,
                backdate_max_ms: 35 * 86_400_000,
                dedupe_window_ms: 86_400_000,
                // Short enough that generated logs reverse events past it and between the
                // two windows.
                reversal_window_ms: 3 * 86_400_000,
                flush_interval_ms: 3_600_000,
                // Shorter than the generated logs' spread of event time between an
                // account's events, so windows roll, are skipped and decay.
                runway_window_ms: 20 * 60_000,
                grants_per_account_max: 40,
                holds_per_account_max: 4,
            },
            credit_types: vec![
                CreditType {
                    name: "credit".into(),
                    scale: 6,
                },
                CreditType {
                    name: "storage_credit".into(),
                    scale: 2,
                },
            ],
            meters: vec![
                Meter {
                    name: "api_call".into(),
                    credit_type: "credit".into(),
                    rounding: Rounding::HalfEven,
                    versions: vec![unit("0.002")],
                },
                Meter {
                    name: "gpu_second".into(),
                    credit_type: "credit".into(),
                    rounding: Rounding::Up,
                    versions: vec![PriceVersion {
                        effective_from_ms: from_2020,
                        rate: dec("0.05"),
                        increment: Some(dec("60")),
                        minimum: Some(dec("0.5")),
                    }],
                },
                Meter {
                    name: "export".into(),
                    credit_type: "credit".into(),
                    rounding: Rounding::HalfUp,
                    versions: vec![
                        unit("1"),
                        PriceVersion {
                            effective_from_ms: from_late,
                            rate: dec("1.25"),
                            increment: None,
                            minimum: None,
                        },
                    ],
                },
                Meter {
                    name: "beta_call".into(),
                    credit_type: "credit".into(),
                    rounding: Rounding::HalfEven,
                    versions: vec![PriceVersion {
                        effective_from_ms: from_beta,
                        rate: dec("0.0125"),
                        increment: Some(dec("0.5")),
                        minimum: None,
                    }],
                },
                Meter {
                    name: "storage_gb".into(),
                    credit_type: "storage_credit".into(),
                    rounding: Rounding::Down,
                    versions: vec![unit("0.333")],
                },
            ],
            plans: vec![
                Plan {
                    name: "payg".into(),
                    period: Period::Day,
                    price: Decimal::ZERO,
                    allowances: vec![],
                    policy: Policy::Overage {
                        limit: dec("50"),
                        price: dec("0.012"),
                    },
                    alerts: vec![Alert {
                        credit_type: "credit".into(),
                        name: "low".into(),
                        threshold: Threshold::Amount(dec("10")),
                    }],
                    expiring_lead_ms: None,
                    runway_alert_ms: Some(6 * 3_600_000),
                },
                Plan {
                    name: "pro".into(),
                    period: Period::Day,
                    price: dec("49"),
                    allowances: vec![Allowance {
                        credit_type: "credit".into(),
                        amount: dec("100"),
                        priority: 10,
                        scope: None,
                        rollover_cap: dec("50"),
                    }],
                    policy: Policy::AutoTopup(TopupRule {
                        credit_type: "credit".into(),
                        threshold: dec("20"),
                        amount: TopupAmount::Fixed(dec("100")),
                        price: dec("0.01"),
                        max_per_period: 2,
                        cooldown_ms: 3_600_000,
                        priority: 50,
                        fallback: Fallback::Overage {
                            limit: dec("30"),
                            price: dec("0.02"),
                        },
                    }),
                    alerts: vec![
                        Alert {
                            credit_type: "credit".into(),
                            name: "low".into(),
                            threshold: Threshold::Amount(dec("25")),
                        },
                        Alert {
                            credit_type: "credit".into(),
                            name: "ten_percent".into(),
                            threshold: Threshold::Percent(dec("10")),
                        },
                    ],
                    expiring_lead_ms: Some(3 * 3_600_000),
                    runway_alert_ms: Some(2 * 3_600_000),
                },
                Plan {
                    name: "team".into(),
                    period: Period::Month { anchor_day: 1 },
                    price: dec("199"),
                    allowances: vec![
                        Allowance {
                            credit_type: "credit".into(),
                            amount: dec("1000"),
                            priority: 10,
                            scope: Some(vec!["api_call".into(), "export".into()]),
                            rollover_cap: dec("500"),
                        },
                        Allowance {
                            credit_type: "storage_credit".into(),
                            amount: dec("50"),
                            priority: 10,
                            scope: None,
                            rollover_cap: Decimal::ZERO,
                        },
                    ],
                    policy: Policy::Reject,
                    alerts: vec![Alert {
                        credit_type: "storage_credit".into(),
                        name: "storage_low".into(),
                        threshold: Threshold::Amount(dec("5")),
                    }],
                    expiring_lead_ms: Some(2 * 86_400_000),
                    runway_alert_ms: None,
                },
                Plan {
                    name: "topup_target".into(),
                    period: Period::Day,
                    price: dec("5"),
                    allowances: vec![],
                    policy: Policy::AutoTopup(TopupRule {
                        credit_type: "credit".into(),
                        threshold: dec("5"),
                        amount: TopupAmount::Target(dec("40")),
                        price: dec("0.015"),
                        max_per_period: 3,
                        cooldown_ms: 0,
                        priority: 100,
                        fallback: Fallback::Reject,
                    }),
                    alerts: vec![],
                    expiring_lead_ms: Some(30 * 60_000),
                    runway_alert_ms: None,
                },
            ],
        }
    }

    /// The same catalog in the project's TOML catalog format.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let q = |text: &str| format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
        let d = |value: &Decimal| q(&super::json::format_decimal(*value));
        out.push_str(&format!("default_plan = {}\n\n", q(&self.default_plan)));
        out.push_str("[currency]\n");
        out.push_str(&format!("code = {}\n", q(&self.currency.code)));
        out.push_str(&format!("scale = {}\n", self.currency.scale));
        out.push_str(&format!(
            "rounding = {}\n\n",
            q(self.currency.rounding.name())
        ));
        let r = &self.rules;
        out.push_str("[rules]\n");
        out.push_str(&format!("payload_max = {}\n", r.payload_max));
        out.push_str(&format!(
            "future_max = {}\n",
            q(&format_span(r.future_max_ms))
        ));
        out.push_str(&format!(
            "backdate_max = {}\n",
            q(&format_span(r.backdate_max_ms))
        ));
        out.push_str(&format!(
            "dedupe_window = {}\n",
            q(&format_span(r.dedupe_window_ms))
        ));
        out.push_str(&format!(
            "reversal_window = {}\n",
            q(&format_span(r.reversal_window_ms))
        ));
        out.push_str(&format!(
            "flush_interval = {}\n",
            q(&format_span(r.flush_interval_ms))
        ));
        out.push_str(&format!(
            "runway_window = {}\n",
            q(&format_span(r.runway_window_ms))
        ));
        out.push_str(&format!(
            "grants_per_account_max = {}\n",
            r.grants_per_account_max
        ));
        out.push_str(&format!(
            "holds_per_account_max = {}\n",
            r.holds_per_account_max
        ));
        for credit_type in &self.credit_types {
            out.push_str("\n[[credit_types]]\n");
            out.push_str(&format!("name = {}\n", q(&credit_type.name)));
            out.push_str(&format!("scale = {}\n", credit_type.scale));
        }
        for meter in &self.meters {
            out.push_str("\n[[meters]]\n");
            out.push_str(&format!("name = {}\n", q(&meter.name)));
            out.push_str(&format!("credit_type = {}\n", q(&meter.credit_type)));
            out.push_str(&format!("rounding = {}\n", q(meter.rounding.name())));
            for version in &meter.versions {
                out.push_str("  [[meters.versions]]\n");
                out.push_str(&format!(
                    "  effective_from = {}\n",
                    q(&format_ts(version.effective_from_ms))
                ));
                out.push_str("  model = \"unit\"\n");
                out.push_str(&format!("  rate = {}\n", d(&version.rate)));
                if let Some(increment) = &version.increment {
                    out.push_str(&format!("  increment = {}\n", d(increment)));
                }
                if let Some(minimum) = &version.minimum {
                    out.push_str(&format!("  minimum = {}\n", d(minimum)));
                }
            }
        }
        for plan in &self.plans {
            out.push_str("\n[[plans]]\n");
            out.push_str(&format!("name = {}\n", q(&plan.name)));
            match plan.period {
                Period::Day => out.push_str("period = \"day\"\n"),
                Period::Month { anchor_day } => {
                    out.push_str("period = \"month\"\n");
                    out.push_str(&format!("anchor_day = {anchor_day}\n"));
                }
            }
            out.push_str("time_zone = \"UTC\"\n");
            out.push_str(&format!("price = {}\n", d(&plan.price)));
            if let Some(lead) = plan.expiring_lead_ms {
                out.push_str(&format!("expiring_lead = {}\n", q(&format_span(lead))));
            }
            if let Some(alert) = plan.runway_alert_ms {
                out.push_str(&format!("runway_alert = {}\n", q(&format_span(alert))));
            }
            for allowance in &plan.allowances {
                out.push_str("  [[plans.allowances]]\n");
                out.push_str(&format!("  credit_type = {}\n", q(&allowance.credit_type)));
                out.push_str(&format!("  amount = {}\n", d(&allowance.amount)));
                out.push_str(&format!("  priority = {}\n", allowance.priority));
                if let Some(scope) = &allowance.scope {
                    let names: Vec<String> = scope.iter().map(|m| q(m)).collect();
                    out.push_str(&format!("  scope = [{}]\n", names.join(", ")));
                }
                out.push_str(&format!(
                    "  rollover_cap = {}\n",
                    d(&allowance.rollover_cap)
                ));
            }
            out.push_str("  [plans.policy]\n");
            match &plan.policy {
                Policy::Reject => out.push_str("  kind = \"reject\"\n"),
                Policy::Overage { limit, price } => {
                    out.push_str("  kind = \"overage\"\n");
                    out.push_str(&format!("  overage_limit = {}\n", d(limit)));
                    out.push_str(&format!("  overage_price = {}\n", d(price)));
                }
                Policy::AutoTopup(rule) => {
                    out.push_str("  kind = \"auto_topup\"\n");
                    out.push_str(&format!("  credit_type = {}\n", q(&rule.credit_type)));
                    out.push_str(&format!("  threshold = {}\n", d(&rule.threshold)));
                    match &rule.amount {
                        TopupAmount::Fixed(amount) => {
                            out.push_str(&format!("  amount = {}\n", d(amount)))
                        }
                        TopupAmount::Target(target) => {
                            out.push_str(&format!("  target = {}\n", d(target)))
                        }
                    }
                    out.push_str(&format!("  price = {}\n", d(&rule.price)));
                    out.push_str(&format!("  max_per_period = {}\n", rule.max_per_period));
                    out.push_str(&format!(
                        "  cooldown = {}\n",
                        q(&format_span(rule.cooldown_ms))
                    ));
                    out.push_str(&format!("  priority = {}\n", rule.priority));
                    match &rule.fallback {
                        Fallback::Reject => out.push_str("  fallback = \"reject\"\n"),
                        Fallback::Overage { limit, price } => {
                            out.push_str("  fallback = \"overage\"\n");
                            out.push_str(&format!("  overage_limit = {}\n", d(limit)));
                            out.push_str(&format!("  overage_price = {}\n", d(price)));
                        }
                    }
                }
            }
            for alert in &plan.alerts {
                out.push_str("  [[plans.alerts]]\n");
                out.push_str(&format!("  credit_type = {}\n", q(&alert.credit_type)));
                out.push_str(&format!("  name = {}\n", q(&alert.name)));
                match &alert.threshold {
                    Threshold::Amount(amount) => {
                        out.push_str(&format!("  amount = {}\n", d(amount)))
                    }
                    Threshold::Percent(percent) => {
                        out.push_str(&format!("  percent = {}\n", d(percent)))
                    }
                }
            }
        }
        out
    }
}
