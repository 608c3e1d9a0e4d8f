//! Outputs: what the engine emits for downstream billing (SEMANTICS §14) and their JSON form.
//!
//! Owns: the [`Output`] type, every output body, and the exact JSON text of each (field order,
//! number and time formats), which is what downstream systems and the model test see.
//!
//! Must never: produce two different texts for one output, or an id that depends on anything
//! but the output's cause (ids are the `Nats-Msg-Id` that makes re-emission harmless).
//!
//! Invariants: amounts are normalized decimal strings; instants are RFC 3339 UTC with three
//! fractional digits; absent values are `null`.

use std::fmt::Write as _;

use crate::decimal::{Credits, Dec, Price, Quantity, Revenue};
use crate::time::Instant;

/// One emitted output.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub id: String,
    /// `None` only for a dead letter without a readable account.
    pub account: Option<String>,
    /// Stream sequence of the input that caused it.
    pub seq: u64,
    /// Event time of the cause; `None` only for a dead letter without a readable `ts`.
    pub ts: Option<Instant>,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    UsageRejected {
        event_id: String,
        meter: String,
        quantity: Quantity,
        credit_type: String,
        needed: Credits,
        available: Credits,
        reason: &'static str,
    },
    BalanceLow {
        credit_type: String,
        threshold: String,
        /// Exact: a percent threshold can have more decimals than credits do.
        threshold_amount: Dec,
        balance: Credits,
    },
    BalanceDepleted {
        credit_type: String,
        balance: Credits,
    },
    /// The balance runs out within the plan's `runway_alert` at its burn rate (§10.5).
    RunwayLow {
        credit_type: String,
        runway_alert: crate::time::Span,
        /// Credits burned over the trailing `rules.runway_window`.
        burned: Credits,
        runs_out_at: Instant,
        balance: Credits,
    },
    BalanceRecovered {
        credit_type: String,
        threshold: String,
        balance: Credits,
    },
    GrantExpiring {
        grant_id: String,
        credit_type: String,
        remaining: Credits,
        expires_at: Instant,
    },
    GrantExpired {
        grant_id: String,
        credit_type: String,
        credits: Credits,
        breakage: Revenue,
    },
    TopupGranted {
        grant_id: String,
        credit_type: String,
        credits: Credits,
        price: Price,
        money: Dec,
    },
    InvoiceLine(InvoiceLine),
    RevenuePeriod(RevenuePeriod),
    HoldExpired {
        hold_id: String,
        credits_released: Credits,
    },
    CommandResult(CommandResult),
    DeadLetter {
        reason: &'static str,
        detail: String,
        subject: String,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct InvoiceLine {
    pub line_id: String,
    pub version: u32,
    pub is_final: bool,
    pub period_start: Instant,
    pub period_end: Instant,
    pub kind: &'static str,
    /// `-` for lines without a meter.
    pub meter: String,
    pub credit_type: String,
    pub quantity: Option<Quantity>,
    pub credits: Credits,
    /// Rounded once, at emission, to the currency's scale.
    pub money: Dec,
    pub currency: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RevenuePeriod {
    pub period_start: Instant,
    pub period_end: Instant,
    pub credit_type: String,
    pub opening_deferred: Revenue,
    pub granted: Revenue,
    pub recognized: Revenue,
    pub breakage: Revenue,
    pub removed: Revenue,
    pub closing_deferred: Revenue,
    pub lots: Vec<RevenueLot>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RevenueLot {
    pub grant_id: String,
    pub cost_basis: Price,
    pub recognized_credits: Credits,
    pub recognized: Revenue,
    pub breakage_credits: Credits,
    pub breakage: Revenue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CommandResult {
    pub command: &'static str,
    pub command_id: String,
    /// `None` when applied; the rejection reason otherwise.
    pub rejected: Option<&'static str>,
    pub detail: ResultDetail,
}

/// Per-command fields of a `command.result`.
#[derive(Clone, Debug, PartialEq)]
pub enum ResultDetail {
    None,
    Grant {
        grant_id: String,
    },
    Reserve {
        credits_requested: Credits,
        credits_reserved: Credits,
        quantity_reserved: Quantity,
    },
    Commit {
        credits_charged: Credits,
        credits_unpaid: Credits,
    },
    Release {
        credits_released: Credits,
    },
    Adjust {
        applied: Credits,
    },
}

impl Body {
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::UsageRejected { .. } => "usage.rejected",
            Body::BalanceLow { .. } => "balance.low",
            Body::BalanceDepleted { .. } => "balance.depleted",
            Body::RunwayLow { .. } => "balance.runway_low",
            Body::BalanceRecovered { .. } => "balance.recovered",
            Body::GrantExpiring { .. } => "grant.expiring",
            Body::GrantExpired { .. } => "grant.expired",
            Body::TopupGranted { .. } => "topup.granted",
            Body::InvoiceLine(_) => "invoice.line",
            Body::RevenuePeriod(_) => "revenue.period",
            Body::HoldExpired { .. } => "hold.expired",
            Body::CommandResult(_) => "command.result",
            Body::DeadLetter { .. } => "dead_letter",
        }
    }
}

/// Appends one JSON object's fields, in call order.
struct ObjectWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    fn new(out: &'a mut String) -> ObjectWriter<'a> {
        out.push('{');
        ObjectWriter { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        self.out
    }

    fn string(&mut self, key: &str, value: &str) {
        let out = self.key(key);
        push_json_string(out, value);
    }

    fn display(&mut self, key: &str, value: impl PlainText) {
        value.push_quoted(self.key(key));
    }

    fn optional_display(&mut self, key: &str, value: Option<impl PlainText>) {
        match value {
            Some(value) => self.display(key, value),
            None => self.null(key),
        }
    }

    fn number(&mut self, key: &str, value: impl std::fmt::Display) {
        let out = self.key(key);
        let _ = write!(out, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key).push_str(if value { "true" } else { "false" });
    }

    fn null(&mut self, key: &str) {
        self.key(key).push_str("null");
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.key(key).push_str(json);
    }

    fn end(self) {
        self.out.push('}');
    }
}

/// A value whose text never needs escaping inside a JSON string (amounts, instants), appended
/// directly: the same text as its `Display`, without the formatting machinery (outputs and
/// replies write many each).
pub trait PlainText {
    fn push_plain(&self, out: &mut String);

    /// The text as a JSON string (in quotes; it needs no escaping).
    fn push_quoted(&self, out: &mut String) {
        out.push('"');
        self.push_plain(out);
        out.push('"');
    }
}

impl<const S: u8> PlainText for crate::decimal::Fixed<S> {
    fn push_plain(&self, out: &mut String) {
        self.push_to(out);
    }
}

impl PlainText for crate::decimal::Dec {
    fn push_plain(&self, out: &mut String) {
        self.push_to(out);
    }
}

impl PlainText for crate::time::Instant {
    fn push_plain(&self, out: &mut String) {
        self.push_to(out);
    }
}

impl PlainText for crate::time::Span {
    fn push_plain(&self, out: &mut String) {
        // Digits and a unit: `35d`, `1500ms`.
        let _ = write!(out, "{self}");
    }
}

impl<T: PlainText> PlainText for &T {
    fn push_plain(&self, out: &mut String) {
        (*self).push_plain(out);
    }
}

/// Writes `value` as a JSON string literal.
pub fn push_json_string(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    // Runs of bytes that need no escape are copied whole. A byte below 0x80 is a character of
    // its own in UTF-8 (every byte of a longer one is 0x80 or above), so each slice below
    // starts and ends on a character boundary.
    let mut start = 0;
    for (at, &byte) in value.as_bytes().iter().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[start..at]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", byte);
        } else {
            out.push_str(escaped);
        }
        start = at + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

impl Output {
    /// The compact JSON text of this output.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_json(&mut out);
        out
    }

    pub fn write_json(&self, out: &mut String) {
        let mut w = ObjectWriter::new(out);
        w.string("type", self.body.type_name());
        w.string("id", &self.id);
        match &self.account {
            Some(account) => w.string("account", account),
            None => w.null("account"),
        }
        w.number("seq", self.seq);
        w.optional_display("ts", self.ts);
        match &self.body {
            Body::UsageRejected {
                event_id,
                meter,
                quantity,
                credit_type,
                needed,
                available,
                reason,
            } => {
                w.string("event_id", event_id);
                w.string("meter", meter);
                w.display("quantity", quantity);
                w.string("credit_type", credit_type);
                w.display("needed", needed);
                w.display("available", available);
                w.string("reason", reason);
            }
            Body::BalanceLow {
                credit_type,
                threshold,
                threshold_amount,
                balance,
            } => {
                w.string("credit_type", credit_type);
                w.string("threshold", threshold);
                w.display("threshold_amount", threshold_amount);
                w.display("balance", balance);
            }
            Body::BalanceDepleted {
                credit_type,
                balance,
            } => {
                w.string("credit_type", credit_type);
                w.display("balance", balance);
            }
            Body::RunwayLow {
                credit_type,
                runway_alert,
                burned,
                runs_out_at,
                balance,
            } => {
                w.string("credit_type", credit_type);
                w.string("threshold", "runway");
                w.display("runway_alert", runway_alert);
                w.display("burned", burned);
                w.display("runs_out_at", runs_out_at);
                w.display("balance", balance);
            }
            Body::BalanceRecovered {
                credit_type,
                threshold,
                balance,
            } => {
                w.string("credit_type", credit_type);
                w.string("threshold", threshold);
                w.display("balance", balance);
            }
            Body::GrantExpiring {
                grant_id,
                credit_type,
                remaining,
                expires_at,
            } => {
                w.string("grant_id", grant_id);
                w.string("credit_type", credit_type);
                w.display("remaining", remaining);
                w.display("expires_at", expires_at);
            }
            Body::GrantExpired {
                grant_id,
                credit_type,
                credits,
                breakage,
            } => {
                w.string("grant_id", grant_id);
                w.string("credit_type", credit_type);
                w.display("credits", credits);
                w.display("breakage", breakage);
            }
            Body::TopupGranted {
                grant_id,
                credit_type,
                credits,
                price,
                money,
            } => {
                w.string("grant_id", grant_id);
                w.string("credit_type", credit_type);
                w.display("credits", credits);
                w.display("price", price);
                w.display("money", money);
            }
            Body::InvoiceLine(line) => {
                w.string("line_id", &line.line_id);
                w.number("version", line.version);
                w.bool("final", line.is_final);
                w.display("period_start", line.period_start);
                w.display("period_end", line.period_end);
                w.string("kind", line.kind);
                w.string("meter", &line.meter);
                w.string("credit_type", &line.credit_type);
                w.optional_display("quantity", line.quantity);
                w.display("credits", line.credits);
                w.display("money", line.money);
                w.string("currency", &line.currency);
            }
            Body::RevenuePeriod(revenue) => {
                w.display("period_start", revenue.period_start);
                w.display("period_end", revenue.period_end);
                w.string("credit_type", &revenue.credit_type);
                w.display("opening_deferred", revenue.opening_deferred);
                w.display("granted", revenue.granted);
                w.display("recognized", revenue.recognized);
                w.display("breakage", revenue.breakage);
                w.display("removed", revenue.removed);
                w.display("closing_deferred", revenue.closing_deferred);
                let mut lots = String::from("[");
                for (index, lot) in revenue.lots.iter().enumerate() {
                    if index > 0 {
                        lots.push(',');
                    }
                    let mut l = ObjectWriter::new(&mut lots);
                    l.string("grant_id", &lot.grant_id);
                    l.display("cost_basis", lot.cost_basis);
                    l.display("recognized_credits", lot.recognized_credits);
                    l.display("recognized", lot.recognized);
                    l.display("breakage_credits", lot.breakage_credits);
                    l.display("breakage", lot.breakage);
                    l.end();
                }
                lots.push(']');
                w.raw("lots", &lots);
            }
            Body::HoldExpired {
                hold_id,
                credits_released,
            } => {
                w.string("hold_id", hold_id);
                w.display("credits_released", credits_released);
            }
            Body::CommandResult(result) => {
                w.string("command", result.command);
                w.string("command_id", &result.command_id);
                w.string(
                    "status",
                    if result.rejected.is_some() {
                        "rejected"
                    } else {
                        "applied"
                    },
                );
                match result.rejected {
                    Some(reason) => w.string("reason", reason),
                    None => w.null("reason"),
                }
                match &result.detail {
                    ResultDetail::None => {}
                    ResultDetail::Grant { grant_id } => w.string("grant_id", grant_id),
                    ResultDetail::Reserve {
                        credits_requested,
                        credits_reserved,
                        quantity_reserved,
                    } => {
                        w.display("credits_requested", credits_requested);
                        w.display("credits_reserved", credits_reserved);
                        w.display("quantity_reserved", quantity_reserved);
                    }
                    ResultDetail::Commit {
                        credits_charged,
                        credits_unpaid,
                    } => {
                        w.display("credits_charged", credits_charged);
                        w.display("credits_unpaid", credits_unpaid);
                    }
                    ResultDetail::Release { credits_released } => {
                        w.display("credits_released", credits_released);
                    }
                    ResultDetail::Adjust { applied } => w.display("applied", applied),
                }
            }
            Body::DeadLetter {
                reason,
                detail,
                subject,
                payload,
            } => {
                w.string("reason", reason);
                w.string("detail", detail);
                w.string("subject", subject);
                match std::str::from_utf8(payload) {
                    Ok(text) => w.string("payload", text),
                    Err(_) => {
                        w.null("payload");
                        w.string("payload_base64", &base64(payload));
                    }
                }
            }
        }
        w.end();
    }
}

/// Standard base64 with padding (RFC 4648), for dead-lettered payloads that are not UTF-8.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    proptest::proptest! {
        /// The escaping by runs writes what escaping character by character writes, for any
        /// text (control characters, quotes, backslashes, multi-byte characters), and it
        /// parses back to the text.
        #[test]
        fn json_strings_escape_as_character_by_character(value in "(?s).{0,40}") {
            let mut expected = String::from('"');
            for c in value.chars() {
                match c {
                    '"' => expected.push_str("\\\""),
                    '\\' => expected.push_str("\\\\"),
                    '\n' => expected.push_str("\\n"),
                    '\r' => expected.push_str("\\r"),
                    '\t' => expected.push_str("\\t"),
                    c if (c as u32) < 0x20 => {
                        let _ = write!(expected, "\\u{:04x}", c as u32);
                    }
                    c => expected.push(c),
                }
            }
            expected.push('"');
            let mut out = String::from("x");
            push_json_string(&mut out, &value);
            proptest::prop_assert_eq!(&out[1..], expected.as_str());
            let parsed: String = serde_json::from_str(&out[1..]).unwrap();
            proptest::prop_assert_eq!(parsed, value);
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn dead_letter_json_is_exact() {
        let output = Output {
            id: "dead:7".into(),
            account: None,
            seq: 7,
            ts: None,
            body: Body::DeadLetter {
                reason: "malformed_json",
                detail: "EOF".into(),
                subject: "creditflow.in.3".into(),
                payload: vec![0xff, 0x00],
            },
        };
        assert_eq!(
            output.to_json(),
            r#"{"type":"dead_letter","id":"dead:7","account":null,"seq":7,"ts":null,"reason":"malformed_json","detail":"EOF","subject":"creditflow.in.3","payload":null,"payload_base64":"/wA="}"#
        );
    }
}
