//! Writes the seed corpora of the fuzz targets into `fuzz/seeds/<target>/` (committed; run
//! again after a change to the sample log, the tests' inputs or the snapshot format):
//!
//! - `input_decode`: every fifth line of the shipped sample log's first 500 and one of each
//!   message type in it, and every one-line JSON literal (`r#"{…}"#`) in the tests and the
//!   wire module's unit tests;
//! - `catalog_load`: the example catalog and the catalogs of the engine scenarios and the
//!   pricing tests;
//! - `snapshot_decode`: the states after the first 0, 10, 60 and 300 messages of the sample
//!   log, each as a whole file (first byte 0) and as a payload alone (first byte 1).
//!
//! Run from `fuzz/`: `cargo run --example seeds`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use creditflow::engine::{Engine, Envelope};
use creditflow::snapshot::{self, Header};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("seed directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

/// The one-line raw string literals of `text` that open a JSON object.
fn json_literals(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("r#\"{") {
        let body = &rest[start + 3..];
        let Some(end) = body.find("\"#") else { break };
        let literal = &body[..end];
        if !literal.contains('\n') && !literal.contains("{{") {
            found.push(literal.to_string());
        }
        rest = &body[end..];
    }
    found
}

/// The text of `const CATALOG: &str = r#"…"#;` in a source file.
fn catalog_constant(text: &str) -> Option<String> {
    let start = text.find("const CATALOG: &str = r#\"")? + "const CATALOG: &str = r#\"".len();
    let end = text[start..].find("\"#")?;
    Some(text[start..start + end].to_string())
}

fn main() {
    let root = Path::new("..");
    let read = |path: &str| std::fs::read_to_string(root.join(path)).expect(path);

    let sample = read("config/sample-events.jsonl");
    let lines: Vec<&str> = sample.lines().collect();
    let mut inputs: BTreeSet<String> = BTreeSet::new();
    inputs.extend(lines.iter().take(500).step_by(5).map(|l| l.to_string()));
    let mut types = BTreeSet::new();
    for line in &lines {
        let kind = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_else(|| "usage".into());
        if types.insert(kind) {
            inputs.insert(line.to_string());
        }
    }
    for source in [
        "tests/engine_scenarios.rs",
        "tests/pipeline_nats.rs",
        "tests/model_test.rs",
        "tests/cli_replay.rs",
        "src/wire/input/tests.rs",
        "src/service/request.rs",
    ] {
        inputs.extend(json_literals(&read(source)));
    }
    for (index, input) in inputs.iter().enumerate() {
        write(
            "input_decode",
            &format!("{index:04}.json"),
            input.as_bytes(),
        );
    }

    write(
        "catalog_load",
        "example.toml",
        read("config/catalog.toml").as_bytes(),
    );
    for (name, source) in [
        ("engine_scenarios.toml", "tests/engine_scenarios.rs"),
        ("pricing.toml", "src/catalog/pricing.rs"),
    ] {
        let text = catalog_constant(&read(source)).expect("a catalog constant");
        write("catalog_load", name, text.as_bytes());
    }

    let catalog = Arc::new(
        creditflow::catalog::load::from_str(&read("config/catalog.toml")).expect("catalog"),
    );
    for count in [0, 10, 60, 300] {
        let mut engine = Engine::new(catalog.clone(), 1);
        let mut out = Vec::new();
        for (seq, line) in lines.iter().take(count).enumerate() {
            let envelope = Envelope {
                payload: line.as_bytes(),
                seq: seq as u64 + 1,
                subject: "creditflow.in",
                received: None,
            };
            engine.apply(&envelope, &mut out);
        }
        let partition = engine.into_partitions().remove(0);
        let payload = creditflow::codec::encode(&partition).expect("the state encodes");
        let header = Header {
            partition: partition.number,
            partition_count: 1,
            applied_through: partition.applied_through,
            last_seq: partition.applied_through,
            last_payload_hash: 0,
            output_seq_floor: 0,
            clock: partition.clock(),
            fingerprints: Vec::new(),
            settings: Vec::new(),
            order: Default::default(),
            previous: None,
        };
        let file = snapshot::encode(&header, &payload).expect("a file encodes");
        snapshot::decode_file(Path::new("seed"), &file).expect("the seed decodes");
        write(
            "snapshot_decode",
            &format!("file-{count:03}"),
            &[&[0u8][..], &file].concat(),
        );
        write(
            "snapshot_decode",
            &format!("payload-{count:03}"),
            &[&[1u8][..], &payload].concat(),
        );
    }
    println!("seeds written under fuzz/seeds/");
}
