//! Policies: a plan's `[plans.policy]` or a `set_policy` command, checked and compiled.

use super::*;

/// Checks a policy (from a plan's `[plans.policy]` or a `set_policy` command) against the
/// catalog and compiles it. `key` prefixes every error's key, e.g. `"policy"` gives
/// `policy.threshold`.
pub fn compile_policy(
    catalog: &Catalog,
    spec: &PolicySpec,
    key: &str,
) -> Result<Policy, Vec<CatalogError>> {
    let lookup = |name: &str| {
        catalog
            .credit_type_id(name)
            .map(|id| (id, Some(catalog.credit_type(id).scale)))
    };
    compile_policy_with(&lookup, spec, key)
}

/// Resolves a credit type name to its id and scale (`None` when the scale itself was invalid,
/// so no "does not fit the scale" error is piled on top).
type CreditTypeLookup<'a> = &'a dyn Fn(&str) -> Option<(CreditTypeId, Option<u8>)>;

pub(super) fn compile_policy_with(
    lookup: CreditTypeLookup<'_>,
    spec: &PolicySpec,
    key: &str,
) -> Result<Policy, Vec<CatalogError>> {
    let mut errors = Vec::new();
    let kind = spec.kind.as_str();
    let overage_fallback = spec.fallback.as_deref() == Some("overage");
    let allowed: &[&str] = match kind {
        "reject" => &[],
        "overage" => &["overage_limit", "overage_price"],
        "auto_topup" if overage_fallback => &[
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
        "auto_topup" => &[
            "credit_type",
            "threshold",
            "amount",
            "target",
            "price",
            "max_per_period",
            "cooldown",
            "priority",
            "fallback",
        ],
        _ => {
            errors.push(CatalogError::new(
                at(key, "kind"),
                format!("unknown policy kind {kind:?} (reject, overage or auto_topup)"),
            ));
            return Err(errors);
        }
    };
    let present = [
        ("credit_type", spec.credit_type.is_some()),
        ("threshold", spec.threshold.is_some()),
        ("amount", spec.amount.is_some()),
        ("target", spec.target.is_some()),
        ("price", spec.price.is_some()),
        ("max_per_period", spec.max_per_period.is_some()),
        ("cooldown", spec.cooldown.is_some()),
        ("priority", spec.priority.is_some()),
        ("fallback", spec.fallback.is_some()),
        ("overage_limit", spec.overage_limit.is_some()),
        ("overage_price", spec.overage_price.is_some()),
    ];
    for (name, is_present) in present {
        if is_present && !allowed.contains(&name) {
            let message = if kind == "auto_topup" {
                "only with fallback = \"overage\"".to_string()
            } else {
                format!("not a key of a policy of kind {kind:?}")
            };
            errors.push(CatalogError::new(at(key, name), message));
        }
    }
    let policy = match kind {
        "reject" => Some(Policy::Reject),
        "overage" => compile_overage(&mut errors, key, spec, None).map(Policy::Overage),
        _ => compile_topup(&mut errors, lookup, key, spec).map(Policy::AutoTopup),
    };
    match policy {
        Some(policy) if errors.is_empty() => Ok(policy),
        _ => Err(errors),
    }
}

pub(super) fn compile_overage(
    errors: &mut Vec<CatalogError>,
    key: &str,
    spec: &PolicySpec,
    scale: Option<u8>,
) -> Option<Overage> {
    let limit = required_amount(
        errors,
        key,
        "overage_limit",
        spec.overage_limit,
        scale,
        false,
    );
    let price = required_amount(
        errors,
        key,
        "overage_price",
        spec.overage_price,
        None,
        false,
    );
    Some(Overage {
        limit: limit?,
        price: price?,
    })
}

/// A required amount that must be ≥ 0 (or > 0 when `positive`) and, given a credit type scale,
/// fit it.
pub(super) fn required_amount(
    errors: &mut Vec<CatalogError>,
    key: &str,
    name: &str,
    value: Option<Credits>,
    scale: Option<u8>,
    positive: bool,
) -> Option<Credits> {
    let Some(value) = value else {
        errors.push(CatalogError::new(at(key, name), "missing required key"));
        return None;
    };
    check_amount(errors, &at(key, name), value, scale, positive)
}

pub(super) fn check_amount(
    errors: &mut Vec<CatalogError>,
    key: &str,
    value: Credits,
    scale: Option<u8>,
    positive: bool,
) -> Option<Credits> {
    let before = errors.len();
    if positive && !value.is_positive() {
        errors.push(CatalogError::new(key, "must be > 0"));
    } else if value.is_negative() {
        errors.push(CatalogError::new(key, "must be >= 0"));
    }
    if let Some(scale) = scale {
        if !fits_scale(value, scale) {
            errors.push(CatalogError::new(
                key,
                format!("has more decimal places than its credit type's scale ({scale})"),
            ));
        }
    }
    (errors.len() == before).then_some(value)
}

pub(super) fn compile_topup(
    errors: &mut Vec<CatalogError>,
    lookup: CreditTypeLookup<'_>,
    key: &str,
    spec: &PolicySpec,
) -> Option<TopupRule> {
    let type_name = spec.credit_type.as_deref().unwrap_or(DEFAULT_CREDIT_TYPE);
    let credit_type = lookup(type_name);
    if credit_type.is_none() {
        errors.push(unknown_credit_type(
            &at(key, "credit_type"),
            type_name,
            spec.credit_type.is_none(),
        ));
    }
    let scale = credit_type.and_then(|(_, scale)| scale);
    let threshold = required_amount(errors, key, "threshold", spec.threshold, scale, false);
    let amount = match (spec.amount, spec.target) {
        (Some(amount), None) => {
            check_amount(errors, &at(key, "amount"), amount, scale, true).map(TopupAmount::Fixed)
        }
        (None, Some(target)) => {
            let target = check_amount(errors, &at(key, "target"), target, scale, true);
            if let (Some(target), Some(threshold)) = (target, threshold) {
                if target <= threshold {
                    // A top-up to a target at or below the threshold leaves the balance below
                    // it, so every following event would top up again until the cap.
                    errors.push(CatalogError::new(
                        at(key, "target"),
                        "must be above threshold",
                    ));
                }
            }
            target.map(TopupAmount::Target)
        }
        (Some(_), Some(_)) => {
            errors.push(CatalogError::new(
                at(key, "target"),
                "give exactly one of amount and target, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(CatalogError::new(
                at(key, "amount"),
                "missing required key (give exactly one of amount and target)",
            ));
            None
        }
    };
    let price = required_amount(errors, key, "price", spec.price, None, false);
    let max_per_period = match spec.max_per_period {
        None => {
            errors.push(CatalogError::new(
                at(key, "max_per_period"),
                "missing required key (the cap on automatic purchases per period)",
            ));
            None
        }
        Some(0) => {
            errors.push(CatalogError::new(
                at(key, "max_per_period"),
                "must be >= 1 (use the fallback policy itself to never top up)",
            ));
            None
        }
        Some(count) => Some(count),
    };
    let cooldown = spec.cooldown.unwrap_or(Span::ZERO);
    if cooldown < Span::ZERO {
        errors.push(CatalogError::new(at(key, "cooldown"), "must be >= 0"));
    }
    let fallback = match spec.fallback.as_deref() {
        None | Some("reject") => Some(Fallback::Reject),
        Some("overage") => compile_overage(errors, key, spec, scale).map(Fallback::Overage),
        Some(other) => {
            errors.push(CatalogError::new(
                at(key, "fallback"),
                format!("unknown fallback {other:?} (reject or overage)"),
            ));
            None
        }
    };
    Some(TopupRule {
        credit_type: credit_type?.0,
        threshold: threshold?,
        amount: amount?,
        price: price?,
        max_per_period: max_per_period?,
        cooldown,
        priority: spec.priority.unwrap_or(TOPUP_PRIORITY_DEFAULT),
        fallback: fallback?,
    })
}

pub(super) fn unknown_credit_type(key: &str, name: &str, defaulted: bool) -> CatalogError {
    let message = if defaulted {
        format!("no credit type named {name:?} (the default): name one with credit_type")
    } else {
        format!("unknown credit type {name:?}")
    };
    CatalogError::new(key, message)
}

/// True when `value` has no more decimal places than `scale`.
pub(super) fn fits_scale(value: Credits, scale: u8) -> bool {
    let unit = pow10(u32::from(Credits::SCALE.saturating_sub(scale))).unwrap_or(1);
    value.0 % unit == 0
}
