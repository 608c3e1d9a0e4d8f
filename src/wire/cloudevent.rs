//! CloudEvents 1.0 in structured JSON mode on the usage subjects (SEMANTICS §2.3).
//!
//! Owns: telling a CloudEvent from a native message (a top-level `specversion` key), checking
//! its context attributes, and reading the account, quantity, dimensions and time a catalog
//! `[[cloudevents]]` entry names. What it reads becomes a native usage event's fields, checked by
//! the same code as a native event's (`input/check.rs`), so a mapped CloudEvent is charged
//! exactly like the native event with the same fields.
//!
//! Must never: panic on any bytes, read a float (numbers keep their text: serde_json's
//! `arbitrary_precision`), or accept an event whose `type` no entry maps.

use serde_json::{Map, Value};

use crate::catalog::{Catalog, CloudEventMapping, EventField, EventQuantity};
use crate::wire::input::{invalid, truncate, DeadLetter, DeadReason};
use crate::wire::outline::Entry;

/// The CloudEvents version this reader takes.
pub const SPEC_VERSION: &str = "1.0";

/// A CloudEvent's usage fields as its mapping reads them, not yet checked.
#[derive(Debug, PartialEq)]
pub(crate) struct Mapped {
    pub id: String,
    pub account: String,
    pub ts: String,
    pub meter: String,
    pub quantity: String,
    pub dims: Vec<(String, String)>,
}

/// Whether a message (its top-level entries) is a CloudEvent: it has a `specversion` key.
pub(crate) fn is_cloudevent(entries: &[Entry<'_>]) -> bool {
    entries.iter().any(|entry| entry.key == "specversion")
}

fn missing(field: &str, why: &str) -> DeadLetter {
    DeadLetter::new(DeadReason::MissingField, format!("{field}: required{why}"))
}

/// Reads a CloudEvent (`entries` are its top-level entries, already read from `payload`).
pub(crate) fn read(
    payload: &[u8],
    entries: &[Entry<'_>],
    catalog: &Catalog,
) -> Result<Mapped, DeadLetter> {
    for (index, entry) in entries.iter().enumerate() {
        if entries[..index].iter().any(|e| e.key == entry.key) {
            return Err(invalid(&entry.key, "repeated"));
        }
    }
    let event: Map<String, Value> = serde_json::from_slice(payload).map_err(|error| {
        DeadLetter::new(
            DeadReason::MalformedJson,
            format!("CloudEvent: {}", error.to_string().replace('\n', " ")),
        )
    })?;
    let attribute = |name: &str| -> Result<Option<&str>, DeadLetter> {
        match event.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(invalid(name, "must be a string")),
        }
    };
    let required = |name: &str| -> Result<&str, DeadLetter> {
        match attribute(name)? {
            None => Err(missing(name, " (a CloudEvents context attribute)")),
            Some("") => Err(invalid(name, "must not be empty")),
            Some(text) => Ok(text),
        }
    };
    let version = attribute("specversion")?.unwrap_or_default();
    if version != SPEC_VERSION {
        return Err(invalid(
            "specversion",
            format!("{version:?} is not {SPEC_VERSION:?}, the version creditflow reads"),
        ));
    }
    let id = required("id")?;
    let source = required("source")?;
    let event_type = required("type")?;
    if let Some(content_type) = attribute("datacontenttype")? {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(invalid(
                "datacontenttype",
                format!("{content_type:?}: only JSON data is read"),
            ));
        }
    }
    if event.contains_key("data_base64") {
        return Err(invalid(
            "data_base64",
            "binary data is not read; send the data as a JSON object in `data`",
        ));
    }
    let Some(mapping) = catalog.cloudevent(event_type) else {
        return Err(DeadLetter::new(
            DeadReason::UnmappedCloudevent,
            format!(
                "type {:?} (source {:?}): no [[cloudevents]] entry of the catalog maps it",
                truncate(event_type, 64),
                truncate(source, 64)
            ),
        ));
    };
    let why = format!(
        " (the catalog's [[cloudevents]] entry for type {:?} reads it)",
        mapping.event_type
    );
    let account = match field(&event, &mapping.account)? {
        Some(Value::String(text)) => text.clone(),
        Some(_) => return Err(invalid(&mapping.account.path(), "must be a string")),
        None => return Err(missing(&mapping.account.path(), &why)),
    };
    let ts = match attribute("time")? {
        Some(time) => time.to_string(),
        None => return Err(missing("time", " (usage is priced at its event time)")),
    };
    let quantity = quantity(&event, mapping, &why)?;
    let mut dims = Vec::with_capacity(mapping.dims.len());
    for (name, place) in &mapping.dims {
        let value = match field(&event, place)? {
            None => continue,
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            Some(Value::Bool(flag)) => flag.to_string(),
            Some(_) => {
                return Err(invalid(
                    &place.path(),
                    format!("dimension {name:?} must be a string, a number or a boolean"),
                ))
            }
        };
        dims.push((name.clone(), value));
    }
    Ok(Mapped {
        id: id.to_string(),
        account,
        ts,
        meter: catalog.meter(mapping.meter).name.clone(),
        quantity,
        dims,
    })
}

fn quantity(
    event: &Map<String, Value>,
    mapping: &CloudEventMapping,
    why: &str,
) -> Result<String, DeadLetter> {
    let place = match &mapping.quantity {
        EventQuantity::Constant(text) => return Ok(text.clone()),
        EventQuantity::Field(place) => place,
    };
    match field(event, place)? {
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(DeadLetter::new(
            DeadReason::BadQuantity,
            format!("{}: must be a number or a decimal string", place.path()),
        )),
        None => Err(missing(&place.path(), why)),
    }
}

/// The value at `place`, `None` when it (or an object on the way) is absent or `null`.
fn field<'e>(
    event: &'e Map<String, Value>,
    place: &EventField,
) -> Result<Option<&'e Value>, DeadLetter> {
    let keys = match place {
        EventField::Subject => return Ok(event.get("subject").filter(|v| !v.is_null())),
        EventField::Source => return Ok(event.get("source").filter(|v| !v.is_null())),
        EventField::Data(keys) => keys,
    };
    let mut at = match event.get("data") {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    for (depth, key) in keys.iter().enumerate() {
        let Value::Object(object) = at else {
            let path = if depth == 0 {
                "data".to_string()
            } else {
                format!("data.{}", keys[..depth].join("."))
            };
            return Err(invalid(&path, "must be an object"));
        };
        match object.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(value) => at = value,
        }
    }
    Ok(Some(at))
}
