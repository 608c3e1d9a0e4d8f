//! The document's sections: the catalog root, currency, rules, credit types, meters.

use super::*;

impl Loader {
    pub(super) fn catalog(&mut self, root: &Table) -> Option<Catalog> {
        self.keys(
            root,
            "",
            &[
                "default_plan",
                "currency",
                "rules",
                "credit_types",
                "meters",
                "plans",
                "cloudevents",
            ],
        );
        let currency = match self.table(root, "", "currency") {
            Ok(Some(table)) => self.currency(table, "currency"),
            Ok(None) => {
                self.error("currency", "missing required table");
                None
            }
            Err(Reported) => None,
        };
        let rules = match self.table(root, "", "rules") {
            Ok(Some(table)) => self.rules(table, "rules"),
            Ok(None) => Some(Rules::default()),
            Err(Reported) => None,
        };
        match self.tables(root, "", "credit_types") {
            Ok(Some(entries)) if entries.is_empty() => {
                self.error("credit_types", "at least one credit type is required")
            }
            Ok(Some(entries)) => {
                for (key, table) in entries {
                    self.credit_type(table, &key);
                }
            }
            Ok(None) => self.error(
                "credit_types",
                "missing required key (at least one credit type)",
            ),
            Err(Reported) => {}
        }
        match self.tables(root, "", "meters") {
            Ok(Some(entries)) => {
                for (key, table) in entries {
                    self.meter(table, &key);
                }
            }
            Ok(None) => {}
            Err(Reported) => {}
        }
        let cloudevents = self.cloudevents(root);
        match self.tables(root, "", "plans") {
            Ok(Some(entries)) => {
                for (key, table) in entries {
                    self.plan(table, &key);
                }
            }
            Ok(None) => {}
            Err(Reported) => {}
        }
        let default_plan = match self.string(root, "", "default_plan") {
            Ok(Some(name)) => {
                let id = self.plan_index.get(name).copied();
                if id.is_none() {
                    self.error("default_plan", format!("no plan named {name:?}"));
                }
                id
            }
            Ok(None) => {
                self.error(
                    "default_plan",
                    "missing required key (the plan new accounts start on)",
                );
                None
            }
            Err(Reported) => None,
        };
        if !self.errors.is_empty() {
            return None;
        }
        let credit_types = self
            .credit_types
            .iter()
            .map(|draft| {
                Some(CreditType {
                    name: draft.name.clone(),
                    scale: draft.scale?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let meters = self
            .meters
            .iter_mut()
            .map(|draft| draft.meter.take())
            .collect::<Option<Vec<_>>>()?;
        let plans = self
            .plans
            .iter_mut()
            .map(Option::take)
            .collect::<Option<Vec<_>>>()?;
        Some(Catalog {
            currency: currency?,
            credit_types,
            meters,
            plans,
            default_plan: default_plan?,
            rules: rules?,
            cloudevents,
            credit_type_index: std::mem::take(&mut self.credit_type_index),
            meter_index: std::mem::take(&mut self.meter_index),
            plan_index: std::mem::take(&mut self.plan_index),
        })
    }

    pub(super) fn currency(&mut self, table: &Table, key: &str) -> Option<Currency> {
        self.keys(table, key, &["code", "scale", "rounding"]);
        let got = self.string(table, key, "code");
        let code = self.required(key, "code", got);
        if let Some(code) = code {
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                self.error(
                    at(key, "code"),
                    format!(
                        "{code:?} is not an ISO 4217 code (three capital letters, e.g. \"USD\")"
                    ),
                );
            }
        }
        let scale = self.integer_in(table, key, "scale", 0, i64::from(SCALE_MAX));
        let rounding = self.rounding(table, key, Rounding::HalfUp);
        Some(Currency {
            code: code?.to_string(),
            scale: scale.ok()?.map_or(2, |s| s as u8),
            rounding: rounding?,
        })
    }

    pub(super) fn rules(&mut self, table: &Table, key: &str) -> Option<Rules> {
        self.keys(
            table,
            key,
            &[
                "payload_max",
                "future_max",
                "backdate_max",
                "dedupe_window",
                "dedupe_entries_max",
                "reversal_window",
                "reversal_entries_max",
                "flush_interval",
                "runway_window",
                "grants_per_account_max",
                "holds_per_account_max",
                "accounts_per_partition_max",
            ],
        );
        let defaults = Rules::default();
        let before = self.errors.len();
        let count = |loader: &mut Loader, name: &str, default: usize| -> usize {
            match loader.integer_in(table, key, name, 1, i64::MAX) {
                Ok(Some(value)) => usize::try_from(value).unwrap_or(usize::MAX),
                _ => default,
            }
        };
        let payload_max = match self.integer_in(table, key, "payload_max", 1, PAYLOAD_BYTES_MAX) {
            Ok(Some(value)) => usize::try_from(value).unwrap_or(usize::MAX),
            _ => defaults.payload_max,
        };
        let dedupe_entries_max = count(self, "dedupe_entries_max", defaults.dedupe_entries_max);
        let reversal_entries_max =
            count(self, "reversal_entries_max", defaults.reversal_entries_max);
        let grants_per_account_max = count(
            self,
            "grants_per_account_max",
            defaults.grants_per_account_max,
        );
        let holds_per_account_max = count(
            self,
            "holds_per_account_max",
            defaults.holds_per_account_max,
        );
        let accounts_per_partition_max = count(
            self,
            "accounts_per_partition_max",
            defaults.accounts_per_partition_max,
        );
        // `future_max` and `backdate_max` may be 0 (no clock skew, no backdating tolerated); a
        // zero dedupe window would forget ids at once and a zero flush interval has no
        // multiples, so those two must be positive.
        let duration = |loader: &mut Loader, name: &str, default: Span, positive: bool| match loader
            .span(table, key, name)
        {
            Ok(Some(span)) if positive && span <= Span::ZERO => {
                loader.error(at(key, name), "must be > 0");
                default
            }
            Ok(Some(span)) => span,
            _ => default,
        };
        let future_max = duration(self, "future_max", defaults.future_max, false);
        let backdate_max = duration(self, "backdate_max", defaults.backdate_max, false);
        let dedupe_window = duration(self, "dedupe_window", defaults.dedupe_window, true);
        let flush_interval = duration(self, "flush_interval", defaults.flush_interval, true);
        let runway_window = match self.span(table, key, "runway_window") {
            Ok(Some(span)) if span < RUNWAY_WINDOW_MIN || span > RUNWAY_WINDOW_MAX => {
                self.error(
                    at(key, "runway_window"),
                    format!("must be between {RUNWAY_WINDOW_MIN} and {RUNWAY_WINDOW_MAX}"),
                );
                defaults.runway_window
            }
            Ok(Some(span)) => span,
            _ => defaults.runway_window,
        };
        // A reversal needs the charge record, which the dedupe index keeps for its window: a
        // shorter reversal window would make a remembered event unreversible.
        let reversal_window = match self.span(table, key, "reversal_window") {
            Ok(Some(span)) if span < dedupe_window => {
                self.error(
                    at(key, "reversal_window"),
                    format!("must be at least dedupe_window ({dedupe_window})"),
                );
                defaults.reversal_window
            }
            Ok(Some(span)) => span,
            // Unset: the default, or the dedupe window when that is longer.
            _ => defaults.reversal_window.max(dedupe_window),
        };
        (self.errors.len() == before).then_some(Rules {
            payload_max,
            future_max,
            backdate_max,
            dedupe_window,
            dedupe_entries_max,
            reversal_window,
            reversal_entries_max,
            flush_interval,
            runway_window,
            grants_per_account_max,
            holds_per_account_max,
            accounts_per_partition_max,
        })
    }

    pub(super) fn credit_type(&mut self, table: &Table, key: &str) {
        self.keys(table, key, &["name", "scale"]);
        let name = self.name(table, key);
        let got = self.integer_in(table, key, "scale", 0, i64::from(SCALE_MAX));
        let scale = self.required(key, "scale", got).map(|s| s as u8);
        let Some(name) = name else { return };
        if self.credit_type_index.contains_key(&name) {
            self.error(at(key, "name"), format!("duplicate credit type {name:?}"));
            return;
        }
        let id = CreditTypeId(self.credit_types.len() as u16);
        self.credit_type_index.insert(name.clone(), id);
        self.credit_types.push(CreditTypeDraft { name, scale });
    }

    pub(super) fn meter(&mut self, table: &Table, key: &str) {
        let before = self.errors.len();
        self.keys(table, key, &["name", "credit_type", "rounding", "versions"]);
        let name = self.name(table, key);
        let credit_type = self.credit_type_ref(table, key);
        let rounding = self.rounding(table, key, Rounding::HalfEven);
        let mut versions = Vec::new();
        let mut previous: Option<(Instant, String)> = None;
        match self.tables(table, key, "versions") {
            Ok(Some(entries)) if entries.is_empty() => self.error(
                at(key, "versions"),
                "at least one price version is required",
            ),
            Ok(Some(entries)) => {
                for (version_key, version_table) in entries {
                    let (from, version) = self.version(version_table, &version_key);
                    if let Some(from) = from {
                        if let Some((last, last_key)) = &previous {
                            if from <= *last {
                                self.error(
                                    at(&version_key, "effective_from"),
                                    format!(
                                        "must be after {last_key}.effective_from ({last}): \
                                         versions are listed oldest first, all distinct"
                                    ),
                                );
                            }
                        }
                        previous = Some((from, version_key.clone()));
                    }
                    versions.extend(version);
                }
            }
            Ok(None) => self.error(
                at(key, "versions"),
                "missing required key (at least one price version)",
            ),
            Err(Reported) => {}
        }
        let Some(name) = name else { return };
        if self.meter_index.contains_key(&name) {
            self.error(at(key, "name"), format!("duplicate meter {name:?}"));
            return;
        }
        let id = MeterId(self.meters.len() as u16);
        self.meter_index.insert(name.clone(), id);
        let credit_type_id = credit_type.map(|(id, _)| id);
        let meter = match (credit_type_id, rounding) {
            (Some(credit_type), Some(rounding)) if self.errors.len() == before => {
                let draft = &self.credit_types[credit_type.0 as usize];
                let scale = draft.scale;
                let type_name = draft.name.clone();
                scale.map(|scale| {
                    let described = CreditType {
                        name: type_name,
                        scale,
                    };
                    for version in &mut versions {
                        version.fingerprint =
                            fingerprint_version(&name, &described, rounding, version);
                    }
                    Meter {
                        name: name.clone(),
                        credit_type,
                        rounding,
                        versions,
                    }
                })
            }
            _ => None,
        };
        self.meters.push(MeterDraft {
            credit_type: credit_type_id,
            meter,
        });
    }
}
