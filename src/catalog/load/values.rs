//! Reading one value of the walk: strings, numbers, decimals, credits, spans, instants, zones, names.

use super::*;

impl Loader {
    pub(super) fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(CatalogError::new(key, message));
    }

    pub(super) fn wrong_type(&mut self, key: &str, expected: &str, found: &Value) -> Reported {
        self.error(
            key,
            format!("expected {expected}, found {}", type_name(found)),
        );
        Reported
    }

    /// Reports every key of `table` not in `allowed`.
    pub(super) fn keys(&mut self, table: &Table, key: &str, allowed: &[&str]) {
        for name in table.keys() {
            if !allowed.contains(&name.as_str()) {
                self.error(
                    at(key, name),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    pub(super) fn required<T>(&mut self, key: &str, name: &str, got: Got<T>) -> Option<T> {
        match got {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                self.error(at(key, name), "missing required key");
                None
            }
            Err(Reported) => None,
        }
    }

    pub(super) fn string<'t>(&mut self, table: &'t Table, key: &str, name: &str) -> Got<&'t str> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.wrong_type(&at(key, name), "a string", other)),
        }
    }

    pub(super) fn integer(&mut self, table: &Table, key: &str, name: &str) -> Got<i64> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Integer(value)) => Ok(Some(*value)),
            Some(other) => Err(self.wrong_type(&at(key, name), "an integer", other)),
        }
    }

    /// An integer in `min..=max`.
    pub(super) fn integer_in(
        &mut self,
        table: &Table,
        key: &str,
        name: &str,
        min: i64,
        max: i64,
    ) -> Got<i64> {
        match self.integer(table, key, name)? {
            Some(value) if value < min || value > max => {
                self.error(at(key, name), format!("must be between {min} and {max}"));
                Err(Reported)
            }
            other => Ok(other),
        }
    }

    pub(super) fn boolean(&mut self, table: &Table, key: &str, name: &str) -> Got<bool> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Boolean(value)) => Ok(Some(*value)),
            Some(other) => Err(self.wrong_type(&at(key, name), "a boolean", other)),
        }
    }

    pub(super) fn table<'t>(&mut self, table: &'t Table, key: &str, name: &str) -> Got<&'t Table> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Table(inner)) => Ok(Some(inner)),
            Some(other) => Err(self.wrong_type(&at(key, name), "a table", other)),
        }
    }

    pub(super) fn array<'t>(
        &mut self,
        table: &'t Table,
        key: &str,
        name: &str,
    ) -> Got<&'t [Value]> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Array(values)) => Ok(Some(values)),
            Some(other) => Err(self.wrong_type(&at(key, name), "an array", other)),
        }
    }

    /// An array of tables (`[[name]]`), each with its key; entries that are not tables are
    /// reported and skipped.
    pub(super) fn tables<'t>(
        &mut self,
        table: &'t Table,
        key: &str,
        name: &str,
    ) -> Got<Vec<(String, &'t Table)>> {
        let Some(values) = self.array(table, key, name)? else {
            return Ok(None);
        };
        let base = at(key, name);
        if values.len() > ENTRIES_MAX {
            self.error(&base, format!("more than {ENTRIES_MAX} entries"));
            return Err(Reported);
        }
        let mut out = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let entry_key = item(&base, index);
            match value {
                Value::Table(inner) => out.push((entry_key, inner)),
                other => {
                    self.wrong_type(&entry_key, "a table", other);
                }
            }
        }
        Ok(Some(out))
    }

    /// A decimal written as a string (`"0.01"`) or an integer, with at most 9 decimal places.
    /// Returned normalized.
    pub(super) fn decimal_value(&mut self, key: &str, value: &Value) -> Result<Dec, Reported> {
        let dec = match value {
            Value::String(text) => match text.parse::<Dec>() {
                Ok(dec) => dec,
                Err(error) => {
                    self.error(key, format!("not a decimal number ({error}): {text:?}"));
                    return Err(Reported);
                }
            },
            Value::Integer(value) => Dec::from_int(i128::from(*value)),
            Value::Float(_) => {
                self.error(
                    key,
                    "a TOML float is inexact: write the number as a string, e.g. \"0.01\"",
                );
                return Err(Reported);
            }
            other => {
                return Err(self.wrong_type(
                    key,
                    "a decimal string (e.g. \"0.01\") or an integer",
                    other,
                ))
            }
        };
        let dec = dec.normalized();
        if dec.scale() > DECIMAL_PLACES_MAX {
            self.error(
                key,
                format!("more than {DECIMAL_PLACES_MAX} decimal places"),
            );
            return Err(Reported);
        }
        Ok(dec)
    }

    pub(super) fn decimal(&mut self, table: &Table, key: &str, name: &str) -> Got<Dec> {
        match table.get(name) {
            None => Ok(None),
            Some(value) => self.decimal_value(&at(key, name), value).map(Some),
        }
    }

    /// A decimal that must be ≥ 0 (or > 0 when `positive`).
    pub(super) fn decimal_sign(
        &mut self,
        table: &Table,
        key: &str,
        name: &str,
        positive: bool,
    ) -> Got<Dec> {
        match self.decimal(table, key, name)? {
            Some(value) if positive && value <= Dec::ZERO => {
                self.error(at(key, name), "must be > 0");
                Err(Reported)
            }
            Some(value) if value < Dec::ZERO => {
                self.error(at(key, name), "must be >= 0");
                Err(Reported)
            }
            other => Ok(other),
        }
    }

    /// A decimal as `Fixed<9>` credits or money (sign unchecked).
    pub(super) fn fixed(&mut self, table: &Table, key: &str, name: &str) -> Got<Credits> {
        match self.decimal(table, key, name)? {
            None => Ok(None),
            Some(value) => match value.to_fixed::<9>() {
                Some(fixed) => Ok(Some(fixed)),
                None => {
                    self.error(at(key, name), "too large");
                    Err(Reported)
                }
            },
        }
    }

    /// An amount of credits of a credit type: ≥ 0 (or > 0), fitting the type's scale.
    pub(super) fn credits(
        &mut self,
        table: &Table,
        key: &str,
        name: &str,
        scale: Option<u8>,
        positive: bool,
    ) -> Got<Credits> {
        match self.fixed(table, key, name)? {
            None => Ok(None),
            Some(value) => {
                let mut errors = Vec::new();
                let checked = check_amount(&mut errors, &at(key, name), value, scale, positive);
                self.errors.append(&mut errors);
                checked.map(Some).ok_or(Reported)
            }
        }
    }

    pub(super) fn span(&mut self, table: &Table, key: &str, name: &str) -> Got<Span> {
        match self.string(table, key, name)? {
            None => Ok(None),
            Some(text) => match text.parse::<Span>() {
                Ok(span) => Ok(Some(span)),
                Err(error) => {
                    self.error(at(key, name), format!("{error}; found {text:?}"));
                    Err(Reported)
                }
            },
        }
    }

    /// An RFC 3339 timestamp with an offset, as a string or a TOML offset datetime.
    pub(super) fn instant(&mut self, table: &Table, key: &str, name: &str) -> Got<Instant> {
        let text = match table.get(name) {
            None => return Ok(None),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Datetime(datetime)) => datetime.to_string(),
            Some(other) => {
                return Err(self.wrong_type(&at(key, name), "an RFC 3339 timestamp", other))
            }
        };
        match text.parse::<Instant>() {
            Ok(instant) => Ok(Some(instant)),
            Err(error) => {
                self.error(at(key, name), format!("{error}; found {text:?}"));
                Err(Reported)
            }
        }
    }

    pub(super) fn zone(&mut self, table: &Table, key: &str) -> Option<Zone> {
        match self.string(table, key, "time_zone") {
            Ok(None) => Some(Zone::utc()),
            Ok(Some(name)) => {
                let zone = Zone::named(name);
                if zone.is_none() {
                    self.error(
                        at(key, "time_zone"),
                        format!("unknown time zone {name:?} (an IANA name like \"Europe/Paris\")"),
                    );
                }
                zone
            }
            Err(Reported) => None,
        }
    }

    pub(super) fn rounding(
        &mut self,
        table: &Table,
        key: &str,
        default: Rounding,
    ) -> Option<Rounding> {
        match self.string(table, key, "rounding") {
            Ok(None) => Some(default),
            Ok(Some(name)) => {
                let rule = Rounding::parse(name);
                if rule.is_none() {
                    self.error(
                        at(key, "rounding"),
                        format!("unknown rounding {name:?} (half_even, half_up, up or down)"),
                    );
                }
                rule
            }
            Err(Reported) => None,
        }
    }

    /// A required `name` key holding a valid name.
    pub(super) fn name(&mut self, table: &Table, key: &str) -> Option<String> {
        let got = self.string(table, key, "name");
        let name = self.required(key, "name", got)?;
        if !valid_name(name) {
            self.error(
                at(key, "name"),
                format!("{name:?} is not a name: 1 to {NAME_BYTES_MAX} of a-z, 0-9, _"),
            );
            return None;
        }
        Some(name.to_string())
    }

    /// The `credit_type` key (default `credit`), resolved. Returns the id and its scale.
    pub(super) fn credit_type_ref(
        &mut self,
        table: &Table,
        key: &str,
    ) -> Option<(CreditTypeId, Option<u8>)> {
        let (name, defaulted) = match self.string(table, key, "credit_type") {
            Ok(None) => (DEFAULT_CREDIT_TYPE, true),
            Ok(Some(name)) => (name, false),
            Err(Reported) => return None,
        };
        match self.credit_type_index.get(name) {
            Some(&id) => Some((id, self.credit_types[id.0 as usize].scale)),
            None => {
                let error = unknown_credit_type(&at(key, "credit_type"), name, defaulted);
                self.errors.push(error);
                None
            }
        }
    }

    // -- the document --------------------------------------------------------------------------
}
