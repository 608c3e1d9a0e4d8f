//! Fingerprints of price versions, and the history checks snapshots make with them.

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
