//! `creditflow publish`: what a producer does, from the command line: usage events (and, for an
//! operator, commands) published into the input stream on their account's subject.
//!
//! Owns: turning JSON lines (a file, standard input, or one `--usage ACCOUNT METER QUANTITY`)
//! into publishes on `<prefix>.<partition>.usage` or `.cmd` with `Nats-Msg-Id: <account>:<id>`,
//! and waiting for every acknowledgement.
//!
//! Must never: publish a tick (the processor's own), or a line without an account and an id
//! (it could not be routed or deduplicated): those are refused before anything is sent.

use std::io::BufRead;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::service::Connection;
use crate::wire::subject::{subject, SubjectKind};

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// JSON lines to publish ("-" for standard input); or use --usage.
    pub file: Option<std::path::PathBuf>,
    /// One usage event now: ACCOUNT METER QUANTITY (its id is fresh, printed).
    #[arg(long, num_args = 3, value_names = ["ACCOUNT", "METER", "QUANTITY"], conflicts_with = "file")]
    pub usage: Option<Vec<String>>,
    /// The deployment's partition count (`engine.partitions`), 1..=4096.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::PARTITIONS_MAX)))]
    pub partitions: u32,
    /// The input subject prefix (`input.subject_prefix`).
    #[arg(long, default_value = "creditflow.in")]
    pub input_prefix: String,
    #[command(flatten)]
    pub connection: Connection,
}

/// The subject and message id of one line, or why it cannot be published.
fn route(line: &str, partitions: u32, prefix: &str) -> anyhow::Result<(String, String)> {
    let value: Value = serde_json::from_str(line).context("not JSON")?;
    let account = value["account"]
        .as_str()
        .filter(|a| crate::wire::input::account_is_valid(a))
        .context("no valid account")?;
    let id = value["id"].as_str().context("no id")?;
    let kind = match value["type"].as_str() {
        None | Some("usage") => SubjectKind::Usage,
        Some("tick") => bail!("ticks are the processor's to publish"),
        Some(_) => SubjectKind::Command,
    };
    let partition = crate::engine::partition_of(account, partitions);
    Ok((subject(prefix, partition, kind), format!("{account}:{id}")))
}

pub fn run(args: PublishArgs) -> anyhow::Result<()> {
    let mut lines: Vec<String> = match (&args.usage, &args.file) {
        (Some(usage), _) => {
            let now = crate::pipeline::ticks::wall_clock();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            vec![json!({
                "id": format!("cli-{nanos:x}"),
                "account": usage[0],
                "meter": usage[1],
                "quantity": usage[2],
                "ts": now.to_string(),
            })
            .to_string()]
        }
        (None, Some(path)) if path.as_os_str() == "-" => std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("reading standard input")?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        (None, None) => bail!("give a file of JSON lines, - for standard input, or --usage"),
    };
    // A UTF-8 byte order mark at the start of the file is not part of its first line.
    if let Some(first) = lines.first_mut() {
        if let Some(rest) = first.strip_prefix('\u{feff}') {
            *first = rest.to_string();
        }
    }
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let mut routed = Vec::with_capacity(lines.len());
    for (number, line) in lines.iter().enumerate() {
        let (subject, id) = route(line, args.partitions, &args.input_prefix)
            .with_context(|| format!("line {}: {line}", number + 1))?;
        routed.push((subject, id, line.to_string()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let last = runtime.block_on(async {
        let client = super::service::connect(&args.connection).await?;
        let js = async_nats::jetstream::new(client);
        let mut acks = Vec::new();
        for (subject, id, line) in routed {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(line.into())
                .message_id(id);
            acks.push(js.send_publish(subject, message).await?);
        }
        let mut last = 0;
        let count = acks.len();
        for ack in acks {
            let ack = tokio::time::timeout(args.connection.timeout, ack)
                .await
                .context("no acknowledgement in time")?
                .context("the input stream refused a message")?;
            last = last.max(ack.sequence);
        }
        anyhow::Ok((count, last))
    })?;
    if args.usage.is_some() {
        println!("{}", lines[0]);
    }
    println!(
        "published {} message(s); last input sequence {} (ask with --min-seq {} to see them applied)",
        last.0, last.1, last.1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_their_kind_of_subject() {
        let usage = r#"{"id":"e1","account":"acct_42","meter":"api_call","quantity":"3","ts":"2026-11-24T10:00:00Z"}"#;
        let p = crate::engine::partition_of("acct_42", 16);
        assert_eq!(
            route(usage, 16, "creditflow.in").unwrap(),
            (format!("creditflow.in.{p}.usage"), "acct_42:e1".to_string())
        );
        let grant = r#"{"type":"grant","id":"g","account":"acct_42","ts":"2026-11-24T10:00:00Z","amount":"5"}"#;
        assert_eq!(
            route(grant, 16, "creditflow.in").unwrap().0,
            format!("creditflow.in.{p}.cmd")
        );
        assert!(route(
            r#"{"type":"tick","id":"t","ts":"2026-11-24T10:00:00Z"}"#,
            16,
            "x"
        )
        .is_err());
        assert!(route(r#"{"id":"e1","meter":"m"}"#, 16, "x").is_err());
        assert!(route("nope", 16, "x").is_err());
    }
}
