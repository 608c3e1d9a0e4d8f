//! Price versions: models, tiers, dimension rules, time windows.

use super::*;

impl Loader {
    /// One price version. Returns its `effective_from` even when something else is wrong, so the
    /// ordering of versions is still checked.
    pub(super) fn version(
        &mut self,
        table: &Table,
        key: &str,
    ) -> (Option<Instant>, Option<PriceVersion>) {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &[
                "effective_from",
                "model",
                "rate",
                "increment",
                "minimum",
                "time_zone",
                "dimension_required",
                "tiers",
                "dimensions",
                "windows",
            ],
        );
        let got = self.instant(table, key, "effective_from");
        let effective_from = self.required(key, "effective_from", got);
        let got = self.string(table, key, "model");
        let model_name = self.required(key, "model", got);
        let unit = match model_name {
            Some("unit") => Some(true),
            Some("graduated" | "volume") => Some(false),
            Some(other) => {
                self.error(
                    at(key, "model"),
                    format!("unknown model {other:?} (unit, graduated or volume)"),
                );
                None
            }
            None => None,
        };
        let rate = self.decimal_sign(table, key, "rate", false);
        let rate = match (unit, rate) {
            (Some(true), got) => self.required(key, "rate", got),
            (Some(false), Ok(Some(_))) => {
                self.error(
                    at(key, "rate"),
                    "only the unit model has a version rate (graduated and volume use tiers)",
                );
                None
            }
            _ => None,
        };
        let tiers = match (unit, self.tables(table, key, "tiers")) {
            (Some(true), Ok(Some(_))) => {
                self.error(
                    at(key, "tiers"),
                    "tiers belong to the graduated and volume models, not unit",
                );
                None
            }
            (Some(false), Ok(None)) => {
                self.error(at(key, "tiers"), "missing required key (at least one tier)");
                None
            }
            (_, Ok(Some(entries))) => self.tiers(&entries, &at(key, "tiers")),
            _ => None,
        };
        let increment = self
            .decimal_sign(table, key, "increment", true)
            .ok()
            .flatten();
        let minimum = self
            .decimal_sign(table, key, "minimum", false)
            .ok()
            .flatten();
        let time_zone = self.zone(table, key);
        let dimension_required = self
            .boolean(table, key, "dimension_required")
            .ok()
            .flatten()
            .unwrap_or(false);
        let mut dimensions = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "dimensions") {
            for (rule_key, rule_table) in entries {
                if let Some(rule) = self.dimension_rule(rule_table, &rule_key, unit) {
                    if let Some(index) = dimensions
                        .iter()
                        .position(|r: &DimensionRule| r.matches == rule.matches)
                    {
                        self.error(
                            at(&rule_key, "match"),
                            format!(
                                "same match as {}[{index}], which always wins: this rule could \
                                 never apply",
                                at(key, "dimensions")
                            ),
                        );
                    }
                    dimensions.push(rule);
                }
            }
        }
        let no_rules = match table.get("dimensions") {
            None => true,
            Some(Value::Array(rules)) => rules.is_empty(),
            Some(_) => false, // a wrong type, already reported
        };
        if dimension_required && no_rules {
            self.error(
                at(key, "dimension_required"),
                "is true but there are no dimensions rules: every event would be refused",
            );
        }
        let mut windows = Vec::new();
        if let Ok(Some(entries)) = self.tables(table, key, "windows") {
            for (window_key, window_table) in entries {
                if let Some(window) = self.window(window_table, &window_key, unit) {
                    if windows.iter().any(|w: &TimeWindow| w.name == window.name) {
                        self.error(
                            at(&window_key, "name"),
                            format!("duplicate window name {:?} in this version", window.name),
                        );
                    }
                    windows.push(window);
                }
            }
        }
        if self.errors.len() != before {
            return (effective_from, None);
        }
        let model = match (model_name, rate, tiers) {
            (Some("unit"), Some(rate), _) => PriceModel::Unit { rate },
            (Some("graduated"), _, Some(tiers)) => PriceModel::Graduated { tiers },
            (Some("volume"), _, Some(tiers)) => PriceModel::Volume { tiers },
            _ => return (effective_from, None),
        };
        let version = effective_from
            .zip(time_zone)
            .map(|(effective_from, time_zone)| PriceVersion {
                effective_from,
                model,
                increment,
                minimum,
                dimensions,
                dimension_required,
                windows,
                time_zone,
                // Set by `meter` once the meter's name, credit type and rounding are known.
                fingerprint: 0,
            });
        (effective_from, version)
    }

    pub(super) fn tiers(&mut self, entries: &[(String, &Table)], key: &str) -> Option<Vec<Tier>> {
        let before = self.errors.len();
        if entries.is_empty() {
            self.error(key, "at least one tier is required");
            return None;
        }
        let mut tiers = Vec::with_capacity(entries.len());
        let mut previous: Option<Dec> = None;
        for (index, (tier_key, table)) in entries.iter().enumerate() {
            let last = index + 1 == entries.len();
            self.keys(table, tier_key, &["up_to", "rate"]);
            let got = self.decimal_sign(table, tier_key, "rate", false);
            let rate = self.required(tier_key, "rate", got);
            let up_to = match self.decimal_sign(table, tier_key, "up_to", true) {
                Ok(Some(up_to)) if last => {
                    self.error(
                        at(tier_key, "up_to"),
                        format!("the last tier is unbounded: remove up_to (it was {up_to})"),
                    );
                    None
                }
                Ok(Some(up_to)) => {
                    if let Some(previous) = previous {
                        if up_to <= previous {
                            self.error(
                                at(tier_key, "up_to"),
                                format!("must be above the previous tier's up_to ({previous})"),
                            );
                        }
                    }
                    previous = Some(up_to);
                    Some(up_to)
                }
                Ok(None) if !last => {
                    self.error(
                        at(tier_key, "up_to"),
                        "missing required key (only the last tier is unbounded)",
                    );
                    None
                }
                _ => None,
            };
            if let Some(rate) = rate {
                tiers.push(Tier { up_to, rate });
            }
        }
        (self.errors.len() == before).then_some(tiers)
    }

    /// `rate` and `multiplier` shared by dimension rules and windows. `unit` is the version's
    /// model when known: a replacement rate only makes sense for the unit model.
    pub(super) fn rate_and_multiplier(
        &mut self,
        table: &Table,
        key: &str,
        unit: Option<bool>,
    ) -> (Option<Dec>, Option<Dec>) {
        let rate = self.decimal_sign(table, key, "rate", false).ok().flatten();
        if rate.is_some() && unit == Some(false) {
            self.error(
                at(key, "rate"),
                "a replacement rate needs the unit model (use multiplier with tiers)",
            );
        }
        let multiplier = self.decimal_sign(table, key, "multiplier", false);
        if rate.is_none() && matches!(multiplier, Ok(None)) && table.get("rate").is_none() {
            self.error(key, "needs rate or multiplier (or both)");
        }
        (rate, multiplier.ok().flatten())
    }

    pub(super) fn dimension_rule(
        &mut self,
        table: &Table,
        key: &str,
        unit: Option<bool>,
    ) -> Option<DimensionRule> {
        let before = self.errors.len();
        self.keys(table, key, &["match", "rate", "multiplier"]);
        let got = self.table(table, key, "match");
        let matches = self.required(key, "match", got).map(|pairs| {
            if pairs.is_empty() {
                self.error(at(key, "match"), "must name at least one dim");
            }
            let mut out = Vec::with_capacity(pairs.len());
            for (dim, value) in pairs {
                match value {
                    // A `toml::Table` iterates in key order, so `matches` is sorted by dim name.
                    Value::String(text) => out.push((dim.clone(), text.clone())),
                    other => {
                        self.wrong_type(&at(&at(key, "match"), dim), "a string", other);
                    }
                }
            }
            out
        });
        let (rate, multiplier) = self.rate_and_multiplier(table, key, unit);
        if self.errors.len() != before {
            return None;
        }
        Some(DimensionRule {
            matches: matches?,
            rate,
            multiplier,
        })
    }

    pub(super) fn window(
        &mut self,
        table: &Table,
        key: &str,
        unit: Option<bool>,
    ) -> Option<TimeWindow> {
        let before = self.errors.len();
        self.keys(
            table,
            key,
            &["name", "days", "from", "to", "rate", "multiplier"],
        );
        let name = self.name(table, key);
        let got = self.array(table, key, "days");
        let days = self.required(key, "days", got).map(|values| {
            let days_key = at(key, "days");
            if values.is_empty() {
                self.error(&days_key, "must name at least one day (mon .. sun)");
            }
            let mut mask = 0u8;
            for (index, value) in values.iter().enumerate() {
                let day_key = item(&days_key, index);
                match value {
                    Value::String(text) => match weekday_index(text) {
                        Some(day) if mask & (1 << day) != 0 => {
                            self.error(day_key, format!("{text:?} is listed twice"));
                        }
                        Some(day) => mask |= 1 << day,
                        None => self.error(
                            day_key,
                            format!("{text:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                        ),
                    },
                    other => {
                        self.wrong_type(&day_key, "a day name", other);
                    }
                }
            }
            mask
        });
        let time = |loader: &mut Loader, name: &str, end: bool| {
            let got = loader.string(table, key, name);
            let text = loader.required(key, name, got)?;
            let ms = parse_time_of_day(text, end);
            if ms.is_none() {
                let range = if end {
                    "00:00 to 24:00"
                } else {
                    "00:00 to 23:59"
                };
                loader.error(
                    at(key, name),
                    format!("{text:?} is not a local time HH:MM ({range})"),
                );
            }
            ms
        };
        let from_ms = time(self, "from", false);
        let to_ms = time(self, "to", true);
        if let (Some(from), Some(to)) = (from_ms, to_ms) {
            if from >= to {
                self.error(
                    at(key, "to"),
                    "must be after from (a window is [from, to) within one day; split one that \
                     crosses midnight in two)",
                );
            }
        }
        let (rate, multiplier) = self.rate_and_multiplier(table, key, unit);
        if self.errors.len() != before {
            return None;
        }
        debug_assert!(to_ms.unwrap_or(0) <= DAY_MS);
        Some(TimeWindow {
            name: name?,
            days: days?,
            from_ms: from_ms?,
            to_ms: to_ms?,
            rate,
            multiplier,
        })
    }
}
