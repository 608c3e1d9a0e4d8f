//! Fingerprints of price versions and of every other setting that decides what applied
//! messages produced (rules, currency, credit types, meters, plans, their order), and the
//! history checks snapshots make with them.

use super::*;

/// xxh3-64 of a canonical text of `version` together with what else decides its prices: the
/// meter's name, its credit type's name and scale, and its rounding rule. Equal prices give equal
/// fingerprints whatever the TOML spelling (`"0.010"` and `"0.01"`, key order, comments).
pub fn fingerprint_version(
    meter_name: &str,
    credit_type: &CreditType,
    rounding: Rounding,
    version: &PriceVersion,
) -> u64 {
    let text = canonical_version(meter_name, credit_type, rounding, version);
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

pub(super) fn canonical_version(
    meter_name: &str,
    credit_type: &CreditType,
    rounding: Rounding,
    version: &PriceVersion,
) -> String {
    fn option(value: Option<Dec>) -> String {
        value.map_or_else(|| "none".to_string(), |v| v.to_string())
    }
    fn tiers(out: &mut String, tiers: &[Tier]) {
        for tier in tiers {
            let _ = write!(out, "(up_to={},rate={})", option(tier.up_to), tier.rate);
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        out,
        "v1;meter={meter_name:?};credit_type={:?};scale={};rounding={};effective_from={};",
        credit_type.name,
        credit_type.scale,
        rounding.name(),
        version.effective_from.millis()
    );
    match &version.model {
        PriceModel::Unit { rate } => {
            let _ = write!(out, "model=unit;rate={rate};");
        }
        PriceModel::Graduated { tiers: list } => {
            out.push_str("model=graduated;tiers=");
            tiers(&mut out, list);
            out.push(';');
        }
        PriceModel::Volume { tiers: list } => {
            out.push_str("model=volume;tiers=");
            tiers(&mut out, list);
            out.push(';');
        }
    }
    let _ = write!(
        out,
        "increment={};minimum={};time_zone={:?};dimension_required={};dimensions=",
        option(version.increment),
        option(version.minimum),
        version.time_zone.name(),
        version.dimension_required
    );
    for rule in &version.dimensions {
        out.push_str("(match=");
        for (k, v) in &rule.matches {
            let _ = write!(out, "{k:?}={v:?},");
        }
        let _ = write!(
            out,
            ";rate={};multiplier={})",
            option(rule.rate),
            option(rule.multiplier)
        );
    }
    out.push_str(";windows=");
    for window in &version.windows {
        let _ = write!(
            out,
            "(name={:?};days={};from={};to={};rate={};multiplier={})",
            window.name,
            window.days,
            window.from_ms,
            window.to_ms,
            option(window.rate),
            option(window.multiplier)
        );
    }
    out
}

impl Catalog {
    /// Every price version in force at `clock` (`effective_from <= clock`), in catalog order. A
    /// snapshot records this list so that a restart can check it with [`Catalog::check_history`].
    pub fn fingerprints_in_force(&self, clock: Instant) -> Vec<VersionFingerprint> {
        self.meters
            .iter()
            .flat_map(|meter| {
                meter
                    .versions
                    .iter()
                    .take_while(move |v| v.effective_from <= clock)
                    .map(|v| VersionFingerprint {
                        meter: meter.name.clone(),
                        effective_from: v.effective_from,
                        fingerprint: v.fingerprint,
                    })
            })
            .collect()
    }

    /// Checks that this catalog prices the past exactly as the one a snapshot was taken with.
    /// Reports every recorded version that is missing or changed, and every version inserted
    /// before the latest recorded version of its meter. Versions added after the latest recorded
    /// one of their meter are accepted (they are the future); so are new meters. To also refuse
    /// versions added between the last recorded one and the snapshot's clock, use
    /// [`Catalog::check_history_at`].
    pub fn check_history(&self, recorded: &[VersionFingerprint]) -> Result<(), Vec<String>> {
        self.check_history_inner(recorded, None)
    }

    /// [`Catalog::check_history`], and also refuses any version (of any meter, new or not) with
    /// `effective_from <= clock` that the snapshot did not record: it would reprice events the
    /// snapshot already accounted for.
    pub fn check_history_at(
        &self,
        recorded: &[VersionFingerprint],
        clock: Instant,
    ) -> Result<(), Vec<String>> {
        self.check_history_inner(recorded, Some(clock))
    }

    fn check_history_inner(
        &self,
        recorded: &[VersionFingerprint],
        clock: Option<Instant>,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut latest: HashMap<&str, Instant> = HashMap::new();
        let mut seen: HashSet<(&str, Instant)> = HashSet::new();
        for entry in recorded {
            seen.insert((entry.meter.as_str(), entry.effective_from));
            let last = latest
                .entry(entry.meter.as_str())
                .or_insert(entry.effective_from);
            *last = (*last).max(entry.effective_from);
            let Some(meter) = self.meter_id(&entry.meter).map(|id| self.meter(id)) else {
                problems.push(format!(
                    "meter {:?}: no longer in the catalog, but its version effective from {} was \
                     in force",
                    entry.meter, entry.effective_from
                ));
                continue;
            };
            match meter
                .versions
                .iter()
                .find(|v| v.effective_from == entry.effective_from)
            {
                None => problems.push(format!(
                    "meter {:?}: the version effective from {} is missing, but it was in force",
                    entry.meter, entry.effective_from
                )),
                Some(version) if version.fingerprint != entry.fingerprint => {
                    problems.push(format!(
                        "meter {:?}: the version effective from {} changed (fingerprint {:016x} \
                         recorded, {:016x} now)",
                        entry.meter, entry.effective_from, entry.fingerprint, version.fingerprint
                    ))
                }
                Some(_) => {}
            }
        }
        for meter in &self.meters {
            let horizon = match (latest.get(meter.name.as_str()), clock) {
                (Some(&last), Some(clock)) => Some(last.max(clock)),
                (Some(&last), None) => Some(last),
                (None, clock) => clock,
            };
            let Some(horizon) = horizon else { continue };
            for version in &meter.versions {
                if version.effective_from <= horizon
                    && !seen.contains(&(meter.name.as_str(), version.effective_from))
                {
                    problems.push(format!(
                        "meter {:?}: a version effective from {} was added, but that time is \
                         already history",
                        meter.name, version.effective_from
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl Catalog {
    /// Every setting besides prices that decides what applied messages produced, as (TOML key,
    /// canonical text of its value). Prices are versioned and checked by their own fingerprints
    /// ([`Catalog::fingerprints_in_force`]); the names' order by [`Catalog::order`]. The text is
    /// the value as this binary reads it (ids are indices, stable under the order check), so a
    /// release that changes how a value is represented says so with a new snapshot format.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |key: String, value: String| out.push((key, value));
        let currency = &self.currency;
        put("currency.code".into(), format!("{:?}", currency.code));
        put("currency.scale".into(), currency.scale.to_string());
        put("currency.rounding".into(), currency.rounding.name().into());
        let rules = &self.rules;
        put("rules.payload_max".into(), rules.payload_max.to_string());
        put("rules.future_max".into(), rules.future_max.0.to_string());
        put(
            "rules.backdate_max".into(),
            rules.backdate_max.0.to_string(),
        );
        put(
            "rules.dedupe_window".into(),
            rules.dedupe_window.0.to_string(),
        );
        put(
            "rules.dedupe_entries_max".into(),
            rules.dedupe_entries_max.to_string(),
        );
        put(
            "rules.reversal_window".into(),
            rules.reversal_window.0.to_string(),
        );
        put(
            "rules.reversal_entries_max".into(),
            rules.reversal_entries_max.to_string(),
        );
        put(
            "rules.flush_interval".into(),
            rules.flush_interval.0.to_string(),
        );
        put(
            "rules.runway_window".into(),
            rules.runway_window.0.to_string(),
        );
        put(
            "rules.grants_per_account_max".into(),
            rules.grants_per_account_max.to_string(),
        );
        put(
            "rules.holds_per_account_max".into(),
            rules.holds_per_account_max.to_string(),
        );
        put(
            "rules.accounts_per_partition_max".into(),
            rules.accounts_per_partition_max.to_string(),
        );
        put(
            "default_plan".into(),
            format!("{:?}", self.plan(self.default_plan).name),
        );
        for credit_type in &self.credit_types {
            put(
                format!("credit_types.{}.scale", credit_type.name),
                credit_type.scale.to_string(),
            );
        }
        for meter in &self.meters {
            put(
                format!("meters.{}.credit_type", meter.name),
                format!("{:?}", self.credit_type(meter.credit_type).name),
            );
            put(
                format!("meters.{}.rounding", meter.name),
                meter.rounding.name().into(),
            );
        }
        for plan in &self.plans {
            let name = &plan.name;
            put(format!("plans.{name}.period"), format!("{:?}", plan.period));
            put(
                format!("plans.{name}.time_zone"),
                format!("{:?}", plan.time_zone.name()),
            );
            put(format!("plans.{name}.price"), plan.price.to_string());
            put(
                format!("plans.{name}.allowances"),
                format!("{:?}", plan.allowances),
            );
            put(format!("plans.{name}.policy"), format!("{:?}", plan.policy));
            put(format!("plans.{name}.alerts"), format!("{:?}", plan.alerts));
            put(
                format!("plans.{name}.expiring_lead"),
                format!("{:?}", plan.expiring_lead),
            );
            if let Some(alert) = plan.runway_alert {
                put(format!("plans.{name}.runway_alert"), alert.0.to_string());
            }
        }
        for mapping in &self.cloudevents {
            put(
                format!("cloudevents.{:?}", mapping.event_type),
                format!(
                    "meter={:?};account={:?};quantity={:?};dims={:?}",
                    self.meter(mapping.meter).name,
                    mapping.account,
                    mapping.quantity,
                    mapping.dims
                ),
            );
        }
        out
    }

    /// [`Catalog::settings`] fingerprinted, as a snapshot records them.
    pub fn setting_fingerprints(&self) -> Vec<SettingFingerprint> {
        self.settings()
            .into_iter()
            .map(|(key, value)| SettingFingerprint {
                fingerprint: xxhash_rust::xxh3::xxh3_64(value.as_bytes()),
                key,
            })
            .collect()
    }

    /// The names in catalog order, as a snapshot records them.
    pub fn order(&self) -> CatalogOrder {
        CatalogOrder {
            credit_types: self.credit_types.iter().map(|c| c.name.clone()).collect(),
            meters: self.meters.iter().map(|m| m.name.clone()).collect(),
            plans: self.plans.iter().map(|p| p.name.clone()).collect(),
        }
    }

    /// Checks that this catalog decides the past as the one a snapshot was taken with: every
    /// recorded setting unchanged, and the recorded names still first, in the same order (new ones may follow:
    /// they are the future). Settings the snapshot did not record (a new plan) are accepted.
    /// Reports every problem, each starting with its key and a colon.
    pub fn check_settings(
        &self,
        recorded: &[SettingFingerprint],
        order: &CatalogOrder,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let now: HashMap<String, u64> = self
            .setting_fingerprints()
            .into_iter()
            .map(|s| (s.key, s.fingerprint))
            .collect();
        for entry in recorded {
            match now.get(&entry.key) {
                Some(&fingerprint) if fingerprint == entry.fingerprint => {}
                Some(_) => problems.push(format!(
                    "{}: changed, but the snapshot's state was produced with the old value",
                    entry.key
                )),
                None => problems.push(format!(
                    "{}: no longer in the catalog, but the snapshot's state was produced with it",
                    entry.key
                )),
            }
        }
        let current = self.order();
        for (kind, was, is) in [
            ("credit_types", &order.credit_types, &current.credit_types),
            ("meters", &order.meters, &current.meters),
            ("plans", &order.plans, &current.plans),
        ] {
            if is.len() < was.len() || is[..was.len()] != was[..] {
                problems.push(format!(
                    "{kind} (order): the snapshot's state refers to them by position, recorded as {was:?}, \
                     now {is:?}; keep these first and in this order (new ones go at the end)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
