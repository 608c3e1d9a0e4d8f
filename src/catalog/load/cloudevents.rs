//! `[[cloudevents]]`: how a CloudEvent of one `type` becomes a usage event (SEMANTICS §2.3).

use super::*;
use crate::catalog::{CloudEventMapping, EventField, EventQuantity};
use crate::wire::input::{DIMS_MAX, DIM_KEY_LENGTH_MAX};

/// Longest CloudEvent `type` an entry may name, in bytes.
pub const CLOUDEVENT_TYPE_BYTES_MAX: usize = 256;

impl Loader {
    /// Every `[[cloudevents]]` entry, in file order; the meters are already read.
    pub(super) fn cloudevents(&mut self, root: &Table) -> Vec<CloudEventMapping> {
        let mut out: Vec<CloudEventMapping> = Vec::new();
        let Ok(Some(entries)) = self.tables(root, "", "cloudevents") else {
            return out;
        };
        let mut seen: HashMap<String, String> = HashMap::new();
        for (key, table) in entries {
            let before = self.errors.len();
            self.keys(
                table,
                &key,
                &["type", "meter", "account", "quantity", "dims"],
            );
            let event_type = match self.string(table, &key, "type") {
                Ok(Some(name)) if name.is_empty() || name.len() > CLOUDEVENT_TYPE_BYTES_MAX => {
                    self.error(
                        at(&key, "type"),
                        format!("must be 1 to {CLOUDEVENT_TYPE_BYTES_MAX} bytes"),
                    );
                    None
                }
                Ok(Some(name)) => match seen.get(name) {
                    Some(first) => {
                        self.error(
                            at(&key, "type"),
                            format!("type {name:?} is already mapped by {first}"),
                        );
                        None
                    }
                    None => {
                        seen.insert(name.to_string(), key.clone());
                        Some(name.to_string())
                    }
                },
                other => {
                    self.required(&key, "type", other);
                    None
                }
            };
            let meter = match self.string(table, &key, "meter") {
                Ok(Some(name)) => match self.meter_index.get(name) {
                    Some(&id) => Some(id),
                    None => {
                        self.error(at(&key, "meter"), format!("no meter named {name:?}"));
                        None
                    }
                },
                other => {
                    self.required(&key, "meter", other);
                    None
                }
            };
            let account = match self.string(table, &key, "account") {
                Ok(None) => Some(EventField::Subject),
                Ok(Some(text)) => self.event_field(&at(&key, "account"), text),
                Err(Reported) => None,
            };
            let quantity = match self.string(table, &key, "quantity") {
                Ok(Some(text)) if text.starts_with("data") => self
                    .event_field(&at(&key, "quantity"), text)
                    .map(EventQuantity::Field),
                Ok(Some(text)) => match text.parse::<Dec>() {
                    Ok(value) if !value.is_negative() => Some(EventQuantity::Constant(text.into())),
                    _ => {
                        self.error(
                            at(&key, "quantity"),
                            format!(
                                "{text:?} is neither a data field (\"data.<key>\") nor a decimal \
                                 ≥ 0 (\"1\" counts events)"
                            ),
                        );
                        None
                    }
                },
                Ok(None) => {
                    self.error(
                        at(&key, "quantity"),
                        "missing required key (a data field such as \"data.tokens\", or \"1\" to \
                         count events)",
                    );
                    None
                }
                Err(Reported) => None,
            };
            let mut dims = Vec::new();
            if let Ok(Some(table)) = self.table(table, &key, "dims") {
                let dims_key = at(&key, "dims");
                if table.len() > DIMS_MAX {
                    self.error(&dims_key, format!("more than {DIMS_MAX} dimensions"));
                }
                for (name, value) in table {
                    let name_key = at(&dims_key, name);
                    if name.is_empty() || name.len() > DIM_KEY_LENGTH_MAX {
                        self.error(
                            &name_key,
                            format!("a dimension name is 1 to {DIM_KEY_LENGTH_MAX} bytes"),
                        );
                        continue;
                    }
                    match value {
                        Value::String(text) => {
                            if let Some(field) = self.event_field(&name_key, text) {
                                dims.push((name.clone(), field));
                            }
                        }
                        other => {
                            self.wrong_type(&name_key, "a string (\"data.<key>\")", other);
                        }
                    }
                }
                dims.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if self.errors.len() != before {
                continue;
            }
            if let (Some(event_type), Some(meter), Some(account), Some(quantity)) =
                (event_type, meter, account, quantity)
            {
                out.push(CloudEventMapping {
                    event_type,
                    meter,
                    account,
                    quantity,
                    dims,
                });
            }
        }
        out
    }

    /// `subject`, `source` or `data.<key>[.<key>…]`.
    fn event_field(&mut self, key: &str, text: &str) -> Option<EventField> {
        match text {
            "subject" => return Some(EventField::Subject),
            "source" => return Some(EventField::Source),
            _ => {}
        }
        if let Some(rest) = text.strip_prefix("data.") {
            let keys: Vec<String> = rest.split('.').map(str::to_string).collect();
            if keys.iter().all(|k| !k.is_empty()) {
                return Some(EventField::Data(keys));
            }
        }
        self.error(
            key,
            format!(
                "{text:?} is not a CloudEvent field: \"subject\", \"source\" or \
                 \"data.<key>[.<key>…]\""
            ),
        );
        None
    }
}
