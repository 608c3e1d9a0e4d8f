//! Requests to the service: JSON objects, read into what each endpoint needs, every refusal a
//! 400 naming the field.
//!
//! Owns: the request fields of every endpoint and their checks. Usage-like requests
//! (`authorize`, `price`) and commands are turned into the very input message they describe
//! and checked by the input decoder itself ([`crate::wire::input::decode`]), so a request is
//! refused exactly when that message would be dead-lettered for its fields, with the same
//! reason and detail.
//!
//! Must never: accept an unknown field (a typo would silently mean something else), or panic
//! on any bytes.

use serde_json::{Map, Value};

use super::error::ServiceError;
use crate::catalog::Catalog;
use crate::time::Instant;
use crate::wire::input::{self, Command, DeadLetter, Message, Usage};

/// The fields of one request object.
pub struct Fields(Map<String, Value>);

/// A request of an `account` and an optional `min_seq` and nothing else (`balance`'s fields),
/// read without building a JSON tree: `(account, min_seq)`, or `None` for anything else (an
/// unknown or repeated field, a wrong type, an invalid account), which [`Fields`] then reads
/// and refuses with its errors. Where it answers, [`Fields`] reads the same.
pub fn account_query(payload: &[u8]) -> Option<(String, u64)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AccountQuery<'a> {
        #[serde(borrow)]
        account: std::borrow::Cow<'a, str>,
        #[serde(default)]
        min_seq: Option<u64>,
    }
    let query: AccountQuery<'_> = serde_json::from_slice(payload).ok()?;
    input::account_is_valid(&query.account)
        .then(|| (query.account.into_owned(), query.min_seq.unwrap_or(0)))
}

/// An `authorize` request of the usual fields (`account`, `meter`, `quantity`, and optional
/// `dims`, `ts`, `min_seq`), read without building a JSON tree: `(account, min_seq, usage)`,
/// the usage checked by the input decoder as [`usage_request`] does. `None` for anything else
/// (an unknown or repeated field, a wrong type, an invalid account, a `null`, a usage the
/// decoder refuses), which [`Fields`] and [`usage_request`] then read, with their errors.
/// Where it answers, they read the same.
pub fn authorize_query(
    payload: &[u8],
    now: Instant,
    catalog: &Catalog,
) -> Option<(String, u64, Usage<'static>)> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AuthorizeQuery<'a> {
        #[serde(borrow)]
        account: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        meter: &'a RawValue,
        #[serde(borrow)]
        quantity: &'a RawValue,
        #[serde(borrow, default)]
        dims: Option<&'a RawValue>,
        #[serde(borrow, default)]
        ts: Option<&'a RawValue>,
        #[serde(default)]
        min_seq: Option<u64>,
    }
    let query: AuthorizeQuery<'_> = serde_json::from_slice(payload).ok()?;
    let raws = [
        Some(query.meter),
        Some(query.quantity),
        query.dims,
        query.ts,
    ];
    if !input::account_is_valid(&query.account)
        || raws.iter().flatten().any(|raw| raw.get() == "null")
    {
        return None;
    }
    // The input message `usage_request` would write (the same fields, in another order).
    let mut text = String::with_capacity(payload.len() + 64);
    text.push_str(r#"{"id":"request","account":"#);
    crate::wire::output::push_json_string(&mut text, &query.account);
    for (name, raw) in [
        ("meter", Some(query.meter)),
        ("quantity", Some(query.quantity)),
        ("dims", query.dims),
        ("ts", query.ts),
    ] {
        if let Some(raw) = raw {
            text.push_str(",\"");
            text.push_str(name);
            text.push_str("\":");
            text.push_str(raw.get());
        }
    }
    if query.ts.is_none() {
        text.push_str(r#","ts":""#);
        text.push_str(&now.to_string());
        text.push('"');
    }
    text.push('}');
    match input::decode(text.as_bytes(), catalog) {
        Ok(Message::Usage(usage)) => Some((
            query.account.into_owned(),
            query.min_seq.unwrap_or(0),
            into_owned_usage(usage),
        )),
        _ => None,
    }
}

impl Fields {
    /// Parses `payload` as a JSON object whose fields are all in `allowed`. An empty payload is
    /// an empty object.
    pub fn parse(payload: &[u8], allowed: &[&str]) -> Result<Fields, ServiceError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields(Map::new()));
        }
        let map = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(ServiceError::bad_request(
                    "malformed_json",
                    "the request must be a JSON object",
                ))
            }
            Err(error) => {
                return Err(ServiceError::bad_request(
                    "malformed_json",
                    format!("the request is not JSON: {error}"),
                ))
            }
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ServiceError::bad_request(
                "invalid_field",
                format!(
                    "{unknown}: unknown field (this endpoint takes {})",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(Fields(map))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A required, well-formed account id.
    pub fn account(&self) -> Result<String, ServiceError> {
        match self.get("account") {
            None => Err(ServiceError::bad_request(
                "missing_field",
                "account: required",
            )),
            Some(Value::String(account)) if input::account_is_valid(account) => Ok(account.clone()),
            Some(Value::String(_)) => Err(ServiceError::bad_request(
                "bad_account",
                "account: 1-64 characters of A-Z a-z 0-9 _ -",
            )),
            Some(other) => Err(ServiceError::bad_request(
                "invalid_field",
                format!("account: must be a string, not {}", json_type(other)),
            )),
        }
    }

    /// An optional string field.
    pub fn string(&self, name: &str) -> Result<Option<String>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(ServiceError::bad_request(
                "invalid_field",
                format!("{name}: must be a string, not {}", json_type(other)),
            )),
        }
    }

    /// An optional non-negative integer field, at most `max`.
    pub fn integer(&self, name: &str, max: u64) -> Result<Option<u64>, ServiceError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.to_string().parse::<u64>() {
                Ok(value) if value <= max => Ok(Some(value)),
                _ => Err(ServiceError::bad_request(
                    "invalid_field",
                    format!("{name}: must be a whole number from 0 to {max}"),
                )),
            },
            Some(other) => Err(ServiceError::bad_request(
                "invalid_field",
                format!("{name}: must be a number, not {}", json_type(other)),
            )),
        }
    }

    /// `min_seq`: answer once the account's partition has applied through it (0: now).
    pub fn min_seq(&self) -> Result<u64, ServiceError> {
        Ok(self.integer("min_seq", u64::MAX)?.unwrap_or(0))
    }

    /// The input message these fields describe, of `kind` (`usage` or a command), with the
    /// given fields replaced or added, `ts` defaulting to `now`; as JSON text.
    fn message_text(
        &self,
        kind: &str,
        skip: &[&str],
        extra: &[(&str, Value)],
        now: Instant,
    ) -> String {
        let mut map = self.0.clone();
        for name in skip {
            map.remove(*name);
        }
        if kind != "usage" {
            map.insert("type".into(), Value::String(kind.into()));
        }
        for (name, value) in extra {
            map.insert((*name).into(), value.clone());
        }
        if !map.contains_key("ts") || map.get("ts").is_some_and(Value::is_null) {
            map.insert("ts".into(), Value::String(now.to_string()));
        }
        Value::Object(map).to_string()
    }
}

/// The usage event an `authorize` or `price` request describes, as decoded by the input
/// decoder. Its id is a placeholder: these ask about an event, not about one sent.
pub fn usage_request(
    fields: &Fields,
    account: &str,
    skip: &[&str],
    now: Instant,
    catalog: &Catalog,
) -> Result<(String, Usage<'static>), ServiceError> {
    let text = fields.message_text(
        "usage",
        skip,
        &[
            ("id", Value::String("request".into())),
            ("account", Value::String(account.into())),
        ],
        now,
    );
    match input::decode(text.as_bytes(), catalog) {
        Ok(Message::Usage(usage)) => Ok((text.clone(), into_owned_usage(usage))),
        Ok(_) => Err(ServiceError::bad_request(
            "invalid_field",
            "not a usage event",
        )),
        Err(dead) => Err(refused(dead)),
    }
}

/// A command request (`kind` is the endpoint's command): the input message to publish, and
/// its account and id. `ts` defaults to `now`.
pub fn command_request(
    fields: &Fields,
    kind: &str,
    now: Instant,
    catalog: &Catalog,
) -> Result<(String, Command<'static>), ServiceError> {
    if fields.get("type").is_some() {
        return Err(ServiceError::bad_request(
            "invalid_field",
            "type: given by the endpoint, not by the request",
        ));
    }
    let text = fields.message_text(kind, &[], &[], now);
    match input::decode(text.as_bytes(), catalog) {
        Ok(Message::Command(command)) => {
            let owned = Command {
                id: command.id.into_owned().into(),
                account: command.account.into_owned().into(),
                ts: command.ts,
                kind: command.kind,
            };
            Ok((text, owned))
        }
        Ok(_) => Err(ServiceError::bad_request("invalid_field", "not a command")),
        Err(dead) => Err(refused(dead)),
    }
}

/// A message the decoder refuses: 400 with its reason and detail.
fn refused(dead: DeadLetter) -> ServiceError {
    ServiceError::bad_request(dead.reason.name(), dead.detail)
}

fn into_owned_usage(usage: Usage<'_>) -> Usage<'static> {
    Usage {
        id: usage.id.into_owned().into(),
        account: usage.account.into_owned().into(),
        meter: usage.meter,
        quantity: usage.quantity,
        ts: usage.ts,
        dims: usage.dims.into_owned().into(),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Where the direct read of an account query answers, the general one reads the same
        /// account and min_seq; where the general one accepts a plain account query, so does
        /// the direct one.
        #[test]
        fn the_direct_account_query_agrees_with_fields(
            fields in proptest::collection::vec(
                (
                    prop_oneof![Just("account"), Just("min_seq"), Just("limit"), Just("Account")],
                    prop_oneof![
                        Just("\"acct_1\"".to_string()),
                        Just("\"bad account\"".to_string()),
                        Just("\"\"".to_string()),
                        Just("null".to_string()),
                        Just("7".to_string()),
                        Just("-1".to_string()),
                        Just("1.5".to_string()),
                        Just("18446744073709551615".to_string()),
                        Just("18446744073709551616".to_string()),
                        Just("[1]".to_string()),
                        Just("\"7\"".to_string()),
                    ],
                ),
                0..4,
            ),
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let payload = format!("{{{}}}", body.join(","));
            let general = Fields::parse(payload.as_bytes(), &["account", "min_seq"])
                .and_then(|f| Ok((f.account()?, f.min_seq()?)));
            match account_query(payload.as_bytes()) {
                Some(direct) => prop_assert_eq!(Some(direct), general.ok(), "{}", payload),
                None => {
                    let mut names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
                    names.sort_unstable();
                    let repeated = names.windows(2).any(|w| w[0] == w[1]);
                    // Only a repeated field (the general read keeps the last) is accepted by
                    // the general read alone.
                    prop_assert!(general.is_err() || repeated, "{}", payload);
                }
            }
        }
    }

    proptest! {
        /// Where the direct read of an authorize request answers, the general one (the fields,
        /// then the usage message checked by the decoder) reads the same account, min_seq and
        /// usage; and a plain request is read directly.
        #[test]
        fn the_direct_authorize_query_agrees_with_fields(
            fields in proptest::collection::vec(
                prop_oneof![
                    Just(("account", "\"acct_1\"")),
                    Just(("account", "\"bad account\"")),
                    Just(("account", "7")),
                    Just(("meter", "\"api_call\"")),
                    Just(("meter", "\"gpu_second\"")),
                    Just(("meter", "\"nope\"")),
                    Just(("meter", "null")),
                    Just(("quantity", "\"3\"")),
                    Just(("quantity", "2.5")),
                    Just(("quantity", "\"-1\"")),
                    Just(("quantity", "null")),
                    Just(("quantity", "true")),
                    Just(("dims", r#"{"region":"eu","model":"small"}"#)),
                    Just(("dims", "{}")),
                    Just(("dims", "null")),
                    Just(("dims", "[1]")),
                    Just(("ts", "\"2026-09-01T10:00:00Z\"")),
                    Just(("ts", "\"noon\"")),
                    Just(("ts", "null")),
                    Just(("min_seq", "12")),
                    Just(("min_seq", "-1")),
                    Just(("min_seq", "null")),
                    Just(("id", "\"x\"")),
                    Just(("colour", "1")),
                ],
                0..7,
            ),
        ) {
            let catalog = catalog();
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let payload = format!("{{{}}}", body.join(","));
            let general = Fields::parse(
                payload.as_bytes(),
                &["account", "meter", "quantity", "dims", "ts", "min_seq"],
            )
            .and_then(|f| {
                let account = f.account()?;
                let min_seq = f.min_seq()?;
                let (_, usage) = usage_request(&f, &account, &["min_seq"], NOW, &catalog)?;
                Ok((account, min_seq, usage))
            });
            match authorize_query(payload.as_bytes(), NOW, &catalog) {
                Some(direct) => prop_assert_eq!(Some(direct), general.ok(), "{}", payload),
                None => {
                    let mut names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
                    names.sort_unstable();
                    let repeated = names.windows(2).any(|w| w[0] == w[1]);
                    let null = fields.iter().any(|(_, v)| *v == "null");
                    prop_assert!(general.is_err() || repeated || null, "{}", payload);
                }
            }
        }
    }

    fn catalog() -> Catalog {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog.toml");
        crate::catalog::load::from_path(&path).unwrap()
    }

    const NOW: Instant = Instant(1_788_220_800_000);

    #[test]
    fn a_plain_authorize_request_is_read_directly() {
        let catalog = catalog();
        let (account, min_seq, usage) = authorize_query(
            br#"{"account":"a_1","meter":"api_call","quantity":"3","min_seq":9}"#,
            NOW,
            &catalog,
        )
        .expect("read directly");
        assert_eq!((account.as_str(), min_seq, usage.ts), ("a_1", 9, NOW));
        assert_eq!(catalog.meter(usage.meter).name, "api_call");
        assert_eq!(usage.quantity.to_dec().to_string(), "3");
        assert!(authorize_query(br#"{"account":"a_1","quantity":"3"}"#, NOW, &catalog).is_none());
    }

    #[test]
    fn every_refusal_names_its_field() {
        let catalog = catalog();
        let cases: &[(&str, &str, &str)] = &[
            ("", "missing_field", "account: required"),
            ("[1]", "malformed_json", "JSON object"),
            ("{", "malformed_json", "not JSON"),
            (r#"{"account":"a","colour":1}"#, "invalid_field", "colour"),
            (r#"{"account":"a b"}"#, "bad_account", "account"),
            (
                r#"{"account":5}"#,
                "invalid_field",
                "account: must be a string",
            ),
            (
                r#"{"account":"a","meter":"nope","quantity":"1"}"#,
                "unknown_meter",
                "",
            ),
            (
                r#"{"account":"a","meter":"api_call","quantity":"-1"}"#,
                "bad_quantity",
                "",
            ),
            (
                r#"{"account":"a","meter":"api_call","quantity":"1","ts":"noon"}"#,
                "bad_timestamp",
                "",
            ),
            (
                r#"{"account":"a","meter":"api_call"}"#,
                "missing_field",
                "quantity: required",
            ),
            (
                r#"{"account":"a","meter":"api_call","quantity":true}"#,
                "invalid_field",
                "quantity: invalid type: boolean",
            ),
        ];
        for (payload, reason, detail) in cases {
            let result = Fields::parse(
                payload.as_bytes(),
                &["account", "meter", "quantity", "ts", "dims"],
            )
            .and_then(|fields| {
                let account = fields.account()?;
                usage_request(&fields, &account, &[], NOW, &catalog)
            });
            let error = result
                .err()
                .unwrap_or_else(|| panic!("{payload} was accepted"));
            assert_eq!(error.code, 400, "{payload}");
            if !reason.is_empty() {
                assert_eq!(error.reason, *reason, "{payload}: {error}");
            }
            assert!(error.detail.contains(detail), "{payload}: {error}");
        }
    }

    #[test]
    fn a_command_is_the_input_message_it_describes() {
        let catalog = catalog();
        let fields = Fields::parse(
            br#"{"account":"a","id":"g1","amount":"5"}"#,
            &["account", "id", "amount", "ts"],
        )
        .unwrap();
        let (text, command) = command_request(&fields, "grant", NOW, &catalog).unwrap();
        assert_eq!(command.kind.name(), "grant");
        assert_eq!(command.ts, NOW);
        assert!(text.contains(r#""type":"grant""#), "{text}");
        let fields = Fields::parse(
            br#"{"account":"a","id":"g1","type":"grant"}"#,
            &["account", "id", "type"],
        )
        .unwrap();
        assert!(command_request(&fields, "grant", NOW, &catalog).is_err());
        let fields = Fields::parse(
            br#"{"account":"a","id":"g1"}"#,
            &["account", "id", "amount"],
        )
        .unwrap();
        let error = command_request(&fields, "grant", NOW, &catalog).unwrap_err();
        assert!(error.detail.contains("amount"), "{error}");
    }
}
