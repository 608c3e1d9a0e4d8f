//! The field checks of SEMANTICS §2.1 check 4, on fields either reader has read: a message
//! becomes a [`Message`] only here, every field well-formed and resolved against the catalog.
//!
//! Owns: `Checker` (one message's fields in a fixed order, remembering the account and `ts`
//! it has read so a dead letter can carry them), each field's rule (ids, accounts, timestamps,
//! meters, plans, credit types, policies, amounts and quantities within the precision limits,
//! dims, reasons, a grant's and a reservation's fields), and the dead letters `missing_field`
//! and `invalid_field` ([`invalid`]).
//!
//! Must never: read bytes (a usage event gets the same checks whichever reader took it), look
//! at engine state, or round: a value with more decimal places than allowed is refused.
//!
//! Invariants: the checks stop at the first failure, in SEMANTICS' order; a value accepted
//! here is within the limits in `mod.rs` (`ID_LENGTH_MAX`, `DIGITS_MAX`, `DIMS_MAX`, ...).

use std::borrow::Cow;

use super::serde_path::{NumberText, Raw};
use super::{
    fast, truncate, Command, CommandKind, DeadLetter, DeadReason, GrantCommand, Message,
    ReserveCommand, Source, Usage, ACCOUNT_LENGTH_MAX, DECIMALS_MAX, DIGITS_MAX, DIMS_MAX,
    DIM_KEY_LENGTH_MAX, DIM_VALUE_LENGTH_MAX, ID_LENGTH_MAX, REASON_LENGTH_MAX,
};
use crate::catalog::{Catalog, CreditTypeId, MeterId};
use crate::decimal::{Credits, Dec, Price, Quantity};
use crate::time::{Instant, Span};

pub fn account_is_valid(account: &str) -> bool {
    !account.is_empty()
        && account.len() <= ACCOUNT_LENGTH_MAX
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn id_is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= ID_LENGTH_MAX && id.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// Validates fields of one message in a fixed order, remembering the account and ts it has
/// read so a dead letter can carry them.
pub(super) struct Checker<'c> {
    catalog: &'c Catalog,
    account: Option<String>,
    ts: Option<Instant>,
}

type Checked<T> = Result<T, DeadLetter>;

/// A required field absent or `null` (SEMANTICS §2.1: `missing_field`, whichever the field).
fn missing(field: &str) -> DeadLetter {
    DeadLetter::new(DeadReason::MissingField, format!("{field}: required"))
}

pub(crate) fn invalid(field: &str, what: impl std::fmt::Display) -> DeadLetter {
    DeadLetter::new(DeadReason::InvalidField, format!("{field}: {what}"))
}

impl<'c> Checker<'c> {
    /// Runs `check` with a fresh checker; a dead letter carries the account and `ts` it read.
    pub(super) fn run<T>(
        catalog: &'c Catalog,
        check: impl FnOnce(&mut Self) -> Checked<T>,
    ) -> Checked<T> {
        let mut checker = Checker {
            catalog,
            account: None,
            ts: None,
        };
        check(&mut checker).map_err(|mut dead| {
            dead.account = checker.account.take();
            dead.ts = checker.ts;
            dead
        })
    }

    pub(super) fn message<'a>(&mut self, kind: &str, mut raw: Raw<'a>) -> Checked<Message<'a>> {
        if kind == "tick" {
            let id = self.id(raw.id)?;
            let ts = self.ts(raw.ts)?;
            return Ok(Message::Tick { id, ts });
        }
        if kind == "usage" {
            return self.usage(fast::UsageFields {
                id: raw.id,
                account: raw.account,
                ts: raw.ts,
                meter: raw.meter,
                quantity: raw.quantity,
                dims: raw.dims,
            });
        }
        let id = self.id(raw.id.take())?;
        let account = self.account(raw.account.take())?;
        let ts = self.ts(raw.ts.take())?;
        let kind = match kind {
            "grant" => self.grant(&id, ts, raw)?,
            "void_grant" => CommandKind::VoidGrant {
                grant_id: self.other_id("grant_id", raw.grant_id)?,
                reason: self.reason(raw.reason, false)?,
            },
            "set_plan" => {
                let name = raw.plan.ok_or_else(|| missing("plan"))?;
                let plan = self.catalog.plan_id(&name).ok_or_else(|| {
                    DeadLetter::new(
                        DeadReason::UnknownPlan,
                        format!("plan: {:?} is not in the catalog", truncate(&name, 64)),
                    )
                })?;
                CommandKind::SetPlan { plan }
            }
            "set_policy" => {
                let spec = raw.policy.ok_or_else(|| missing("policy"))?;
                match spec {
                    None => CommandKind::SetPolicy(None),
                    Some(spec) => {
                        let policy =
                            crate::catalog::load::compile_policy(self.catalog, &spec, "policy")
                                .map_err(|errors| {
                                    let text: Vec<String> = errors
                                        .iter()
                                        .map(|e| format!("{}: {}", e.key, e.message))
                                        .collect();
                                    DeadLetter::new(DeadReason::InvalidField, text.join("; "))
                                })?;
                        CommandKind::SetPolicy(Some(Box::new((
                            serde_json::to_string(&spec).unwrap_or_default(),
                            policy,
                        ))))
                    }
                }
            }
            "adjust" => {
                let credit_type = self.credit_type(raw.credit_type)?;
                let amount = self.amount("amount", raw.amount, credit_type)?;
                if amount.is_zero() {
                    return Err(invalid("amount", "must not be 0"));
                }
                CommandKind::Adjust {
                    credit_type,
                    amount,
                    reason: self.reason(raw.reason, true)?,
                }
            }
            "reverse" => CommandKind::Reverse {
                event_id: self.other_id("event_id", raw.event_id)?,
                event_ts: self.instant("event_ts", raw.event_ts)?,
                reason: self.reason(raw.reason, false)?,
            },
            "reserve" => {
                let meter = self.meter(raw.meter.as_deref())?;
                let quantity = self.quantity(raw.quantity, true)?;
                let ttl_text = raw.ttl.ok_or_else(|| missing("ttl"))?;
                let ttl: Span = ttl_text.parse().map_err(|e| invalid("ttl", e))?;
                if ttl.millis() <= 0 {
                    return Err(invalid("ttl", "must be > 0"));
                }
                let hold_id = match raw.hold_id {
                    Some(hold) => self.other_id("hold_id", Some(hold))?,
                    None => id.to_string(),
                };
                CommandKind::Reserve(ReserveCommand {
                    hold_id,
                    meter,
                    quantity,
                    ttl,
                    dims: self.dims(raw.dims)?,
                })
            }
            "commit" => CommandKind::Commit {
                hold_id: self.other_id("hold_id", raw.hold_id)?,
                quantity: self.quantity(raw.quantity, false)?,
            },
            "release" => CommandKind::Release {
                hold_id: self.other_id("hold_id", raw.hold_id)?,
            },
            other => unreachable!("message type {other} is listed in MESSAGE_TYPES"),
        };
        Ok(Message::Command(Command {
            id,
            account,
            ts,
            kind,
        }))
    }

    /// A usage event's fields, checked in SEMANTICS' order.
    pub(super) fn usage<'a>(&mut self, fields: fast::UsageFields<'a>) -> Checked<Message<'a>> {
        let id = self.id(fields.id)?;
        let account = self.account(fields.account)?;
        let ts = self.ts(fields.ts)?;
        let meter = self.meter(fields.meter.as_deref())?;
        let quantity = self.quantity(fields.quantity, false)?;
        let dims = self.dims(fields.dims)?;
        Ok(Message::Usage(Usage {
            id,
            account,
            meter,
            quantity,
            ts,
            dims: dims.into(),
        }))
    }

    fn id<'a>(&mut self, id: Option<Cow<'a, str>>) -> Checked<Cow<'a, str>> {
        let id = id.ok_or_else(|| missing("id"))?;
        if !id_is_valid(&id) {
            return Err(DeadLetter::new(
                DeadReason::BadId,
                "id: must be 1-128 bytes of printable ASCII",
            ));
        }
        Ok(id)
    }

    fn other_id(&mut self, field: &str, id: Option<String>) -> Checked<String> {
        let id = id.ok_or_else(|| missing(field))?;
        if !id_is_valid(&id) {
            return Err(invalid(field, "must be 1-128 bytes of printable ASCII"));
        }
        Ok(id)
    }

    fn account<'a>(&mut self, account: Option<Cow<'a, str>>) -> Checked<Cow<'a, str>> {
        let account = account.ok_or_else(|| missing("account"))?;
        if !account_is_valid(&account) {
            return Err(DeadLetter::new(
                DeadReason::BadAccount,
                "account: must be 1-64 characters of A-Z a-z 0-9 _ -",
            ));
        }
        self.account = Some(account.to_string());
        Ok(account)
    }

    fn ts(&mut self, ts: Option<Cow<'_, str>>) -> Checked<Instant> {
        let text = ts.ok_or_else(|| missing("ts"))?;
        let ts = text
            .parse()
            .map_err(|e| DeadLetter::new(DeadReason::BadTimestamp, format!("ts: {e}")))?;
        self.ts = Some(ts);
        Ok(ts)
    }

    fn instant(&self, field: &str, text: Option<String>) -> Checked<Option<Instant>> {
        text.map(|text| {
            text.parse()
                .map_err(|e| DeadLetter::new(DeadReason::BadTimestamp, format!("{field}: {e}")))
        })
        .transpose()
    }

    fn meter(&self, name: Option<&str>) -> Checked<MeterId> {
        let name = name.ok_or_else(|| missing("meter"))?;
        self.catalog.meter_id(name).ok_or_else(|| {
            DeadLetter::new(
                DeadReason::UnknownMeter,
                format!("meter: {:?} is not in the catalog", truncate(name, 64)),
            )
        })
    }

    fn credit_type(&self, name: Option<String>) -> Checked<CreditTypeId> {
        let name = name.as_deref().unwrap_or("credit");
        self.catalog.credit_type_id(name).ok_or_else(|| {
            DeadLetter::new(
                DeadReason::UnknownCreditType,
                format!(
                    "credit_type: {:?} is not in the catalog",
                    truncate(name, 64)
                ),
            )
        })
    }

    /// Parses a decimal within the precision limits (18 significant digits, 9 decimals).
    fn decimal(field: &str, text: &NumberText<'_>) -> Result<Dec, String> {
        let value: Dec = text.0.parse().map_err(|e| format!("{field}: {e}"))?;
        let value = value.normalized();
        if value.digits() > DIGITS_MAX {
            return Err(format!(
                "{field}: more than {DIGITS_MAX} significant digits"
            ));
        }
        if value.scale() > DECIMALS_MAX {
            return Err(format!("{field}: more than {DECIMALS_MAX} decimal places"));
        }
        Ok(value)
    }

    fn quantity(&self, text: Option<NumberText<'_>>, positive: bool) -> Checked<Quantity> {
        let text = text.ok_or_else(|| missing("quantity"))?;
        let value = Self::decimal("quantity", &text)
            .map_err(|detail| DeadLetter::new(DeadReason::BadQuantity, detail))?;
        if value.is_negative() || (positive && value.is_zero()) {
            let rule = if positive { "> 0" } else { ">= 0" };
            return Err(DeadLetter::new(
                DeadReason::BadQuantity,
                format!("quantity: must be {rule}"),
            ));
        }
        value
            .to_fixed()
            .ok_or_else(|| DeadLetter::new(DeadReason::BadQuantity, "quantity: out of range"))
    }

    /// A credit amount of `credit_type`: within its scale. Sign is checked by the caller.
    fn amount(
        &self,
        field: &str,
        text: Option<NumberText<'_>>,
        credit_type: CreditTypeId,
    ) -> Checked<Credits> {
        let text = text.ok_or_else(|| missing(field))?;
        let value = Self::decimal(field, &text)
            .map_err(|d| DeadLetter::new(DeadReason::InvalidField, d))?;
        let credit = self.catalog.credit_type(credit_type);
        if value.scale() > credit.scale {
            return Err(invalid(
                field,
                format!(
                    "more decimal places than credit type {} allows ({})",
                    credit.name, credit.scale
                ),
            ));
        }
        value
            .to_fixed()
            .ok_or_else(|| invalid(field, "out of range"))
    }

    fn reason(&self, reason: Option<String>, required: bool) -> Checked<String> {
        match reason {
            None if required => Err(missing("reason")),
            None => Ok(String::new()),
            Some(text) if required && text.trim().is_empty() => {
                Err(invalid("reason", "must not be empty"))
            }
            Some(text) if text.len() > REASON_LENGTH_MAX => Err(invalid(
                "reason",
                format!("longer than {REASON_LENGTH_MAX} bytes"),
            )),
            Some(text) => Ok(text),
        }
    }

    fn dims(&self, dims: Option<Vec<(String, String)>>) -> Checked<Vec<(String, String)>> {
        let Some(mut dims) = dims else {
            return Ok(Vec::new());
        };
        if dims.len() > DIMS_MAX {
            return Err(invalid("dims", format!("more than {DIMS_MAX} entries")));
        }
        dims.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in dims.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(invalid(
                    "dims",
                    format!("key {:?} repeated", truncate(&pair[0].0, 64)),
                ));
            }
        }
        for (key, value) in &dims {
            if key.is_empty() || key.len() > DIM_KEY_LENGTH_MAX {
                return Err(invalid(
                    "dims",
                    format!("keys must be 1-{DIM_KEY_LENGTH_MAX} bytes"),
                ));
            }
            if value.len() > DIM_VALUE_LENGTH_MAX {
                return Err(invalid(
                    "dims",
                    format!("values must be at most {DIM_VALUE_LENGTH_MAX} bytes"),
                ));
            }
        }
        Ok(dims)
    }

    fn grant(&mut self, id: &str, ts: Instant, raw: Raw<'_>) -> Checked<CommandKind> {
        let credit_type = self.credit_type(raw.credit_type)?;
        let amount = self.amount("amount", raw.amount, credit_type)?;
        if !amount.is_positive() {
            return Err(invalid("amount", "must be > 0"));
        }
        let grant_id = match raw.grant_id {
            Some(grant_id) => self.other_id("grant_id", Some(grant_id))?,
            None => id.to_string(),
        };
        let priority = match raw.priority {
            None => 100,
            Some(p) => i32::try_from(p).map_err(|_| invalid("priority", "out of range"))?,
        };
        let effective_at = self
            .instant("effective_at", raw.effective_at)?
            .unwrap_or(ts);
        let expires_at = self.instant("expires_at", raw.expires_at)?;
        if let Some(expires_at) = expires_at {
            if expires_at <= effective_at {
                // The rule of the field `expires_at`: its specific reason (SEMANTICS §2.1).
                return Err(DeadLetter::new(
                    DeadReason::BadTimestamp,
                    "expires_at: must be after effective_at",
                ));
            }
        }
        let scope = match raw.scope {
            None => None,
            Some(names) => {
                if names.is_empty() {
                    return Err(invalid("scope", "must list at least one meter"));
                }
                let mut meters = Vec::with_capacity(names.len());
                for name in &names {
                    let meter = self.meter(Some(name))?;
                    if self.catalog.meter(meter).credit_type != credit_type {
                        return Err(invalid(
                            "scope",
                            format!("meter {name} is not priced in the grant's credit type"),
                        ));
                    }
                    meters.push(meter);
                }
                meters.sort();
                meters.dedup();
                Some(meters)
            }
        };
        let source = match raw.source {
            None => Source::Purchase,
            Some(name) => Source::parse(&name).ok_or_else(|| {
                invalid(
                    "source",
                    "must be purchase, allowance, promotion, rollover, topup or adjustment",
                )
            })?,
        };
        let cost_basis = match raw.cost_basis {
            None => Price::ZERO,
            Some(text) => {
                let value = Self::decimal("cost_basis", &text)
                    .map_err(|d| DeadLetter::new(DeadReason::InvalidField, d))?;
                if value.is_negative() {
                    return Err(invalid("cost_basis", "must be >= 0"));
                }
                value
                    .to_fixed()
                    .ok_or_else(|| invalid("cost_basis", "out of range"))?
            }
        };
        Ok(CommandKind::Grant(GrantCommand {
            grant_id,
            credit_type,
            amount,
            priority,
            effective_at,
            expires_at,
            scope,
            source,
            cost_basis,
        }))
    }
}
