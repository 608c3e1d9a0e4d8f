//! The message contracts (`docs/schemas/creditflow.schema.json`) as validators, for the tests
//! that check what creditflow writes against them.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

pub struct Contracts {
    defs: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Contracts {
    pub fn load() -> Contracts {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas/creditflow.schema.json");
        let text = std::fs::read_to_string(&path).expect("docs/schemas/creditflow.schema.json");
        let schema: Value = serde_json::from_str(&text).expect("the schema file is JSON");
        Contracts {
            defs: schema["$defs"].clone(),
            validators: Mutex::default(),
        }
    }

    /// The contracts, loaded once per test binary.
    pub fn shared() -> &'static Contracts {
        static CONTRACTS: OnceLock<Contracts> = OnceLock::new();
        CONTRACTS.get_or_init(Contracts::load)
    }

    pub fn has(&self, name: &str) -> bool {
        self.defs.get(name).is_some()
    }

    /// The schemas of whole messages (inputs, outputs, requests, replies), not their parts.
    pub fn message_names(&self) -> Vec<String> {
        self.defs
            .as_object()
            .expect("$defs")
            .keys()
            .filter(|k| {
                ["input.", "output.", "request.", "reply."]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .cloned()
            .collect()
    }

    /// Validates `value` against the schema `name` (a key of `$defs`); every error, joined.
    pub fn check(&self, name: &str, value: &Value) -> Result<(), String> {
        assert!(
            self.has(name),
            "no schema {name} in docs/schemas/creditflow.schema.json"
        );
        let validator = {
            let mut validators = self.validators.lock().unwrap();
            validators
                .entry(name.to_string())
                .or_insert_with(|| {
                    let schema = json!({
                        "$schema": "https://json-schema.org/draft/2020-12/schema",
                        "$defs": self.defs,
                        "$ref": format!("#/$defs/{name}"),
                    });
                    Arc::new(
                        jsonschema::validator_for(&schema)
                            .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}")),
                    )
                })
                .clone()
        };
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Which schema a service reply on `subject` must match (`<prefix>.query.<name>` or
/// `<prefix>.command.<name>`).
pub fn reply_schema(subject: &str) -> Option<String> {
    let mut parts = subject.rsplit('.');
    let name = parts.next()?;
    match parts.next()? {
        "query" => Some(format!("reply.{name}")),
        "command" => Some("reply.command".to_string()),
        _ => None,
    }
}

/// The schema names `docs/asyncapi.yaml` references (`...creditflow.schema.json#/$defs/<name>`).
pub fn asyncapi_refs(text: &str) -> BTreeSet<String> {
    let marker = "creditflow.schema.json#/$defs/";
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let tail = &rest[at + marker.len()..];
        let end = tail
            .find(|c: char| c == '\'' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
