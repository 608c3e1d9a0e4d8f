//! Verify: the processor's outputs must equal what `creditflow::engine::Engine` emits when it
//! replays the input stream's contents in stream order (the oracle of the wire contract).
//!
//! Owns: the fence (one `release` of a never-opened hold per partition, whose `command.result`
//! proves the processor has applied that partition up to the fence), the replay, and the diff.
//!
//! Must never: replay only what loadgen sent. The processor also writes `tick`s into the input
//! stream, so the oracle reads the stream back and replays exactly what is there, with each
//! message's stream sequence and the stream's receive time.
//!
//! Invariants: a partition is compared only up to its fence's sequence (the processor may be
//! further along in some partitions than in others); outputs are compared by id, byte for byte,
//! and each must have arrived on `<output prefix>.<partition>.<type>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use creditflow::catalog::Catalog;
use creditflow::engine::{partition_of, Engine, Envelope};
use creditflow::time::Instant;
use futures::StreamExt;

use crate::nats::{self, Stored};
use crate::run::output_id;
use crate::workload::{probe_accounts, release_payload};

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub partitions: u32,
    pub input_stream: String,
    pub input_prefix: String,
    pub output_stream: String,
    pub output_prefix: String,
    /// Distinguishes this verify's fences from any other's.
    pub fence_id: String,
    /// How long the processor has to answer every fence.
    pub fence_timeout: Duration,
    /// Differences printed at most (all are counted).
    pub diff_max: usize,
    /// When set: messages whose `Nats-Msg-Id` contains `-<run>-` that the input stream must
    /// hold (what loadgen had stored), to check that what it sent is what is replayed.
    pub expect_run: Option<(String, u64)>,
}

/// One difference between the oracle and the processor.
#[derive(Clone, Debug, PartialEq)]
pub enum Difference {
    /// The oracle emits it; the output stream does not have it.
    Missing { id: String, expected: String },
    /// The output stream has it; the oracle does not emit it.
    Unexpected { id: String, actual: String },
    /// Same id, different bytes.
    Different {
        id: String,
        expected: String,
        actual: String,
    },
    /// Right bytes on the wrong subject.
    WrongSubject {
        id: String,
        expected: String,
        actual: String,
    },
}

impl Difference {
    pub fn id(&self) -> &str {
        match self {
            Difference::Missing { id, .. }
            | Difference::Unexpected { id, .. }
            | Difference::Different { id, .. }
            | Difference::WrongSubject { id, .. } => id,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyOutcome {
    /// Fence sequence per partition: the cut compared.
    pub cut: Vec<u64>,
    pub input_messages: u64,
    pub outputs_expected: u64,
    pub outputs_actual: u64,
    /// Outputs published twice with identical bytes (harmless re-emission).
    pub repeated_identical: u64,
    pub accounts: u64,
    pub differences: Vec<Difference>,
    /// Expected balances of the accounts named in differences: account → "type=balance …".
    pub balances: BTreeMap<String, String>,
    /// Input messages of loadgen's run found in the stream, and how many it had stored.
    pub run_messages: Option<(u64, u64)>,
    pub diff_max: usize,
}

impl VerifyOutcome {
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
            && self
                .run_messages
                .is_none_or(|(found, stored)| found == stored)
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "{}: {} input messages replayed, {} outputs expected, {} seen, {} accounts, {} differences",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.input_messages,
            self.outputs_expected,
            self.outputs_actual,
            self.accounts,
            self.differences.len()
        );
        if let Some((found, stored)) = self.run_messages {
            text.push_str(&format!(
                "; this run's messages in the input stream: {found} of {stored} stored"
            ));
        }
        text
    }

    /// The summary and the first `diff_max` differences, each with both texts.
    pub fn render(&self) -> String {
        let mut text = self.summary();
        text.push('\n');
        for difference in self.differences.iter().take(self.diff_max) {
            match difference {
                Difference::Missing { id, expected } => {
                    text.push_str(&format!("  missing {id}\n    expected {expected}\n"))
                }
                Difference::Unexpected { id, actual } => {
                    text.push_str(&format!("  unexpected {id}\n    actual   {actual}\n"))
                }
                Difference::Different {
                    id,
                    expected,
                    actual,
                } => text.push_str(&format!(
                    "  different {id}\n    expected {expected}\n    actual   {actual}\n"
                )),
                Difference::WrongSubject {
                    id,
                    expected,
                    actual,
                } => text.push_str(&format!(
                    "  wrong subject {id}: expected {expected}, actual {actual}\n"
                )),
            }
        }
        if self.differences.len() > self.diff_max {
            text.push_str(&format!(
                "  … and {} more\n",
                self.differences.len() - self.diff_max
            ));
        }
        for (account, balances) in &self.balances {
            text.push_str(&format!("  oracle balance of {account}: {balances}\n"));
        }
        text
    }
}

#[derive(serde::Deserialize)]
struct OutputHead {
    id: String,
    #[serde(default)]
    account: Option<String>,
}

/// Fences the processor, replays the input stream and compares outputs.
pub async fn verify(
    client: &async_nats::Client,
    catalog: Arc<Catalog>,
    options: &VerifyOptions,
) -> anyhow::Result<VerifyOutcome> {
    let js = nats::jetstream(client.clone(), 64);
    let partitions = options.partitions;

    // 1. Fences: subscribe first, then one release per partition.
    let mut results = client
        .subscribe(format!("{}.*.command.result", options.output_prefix))
        .await
        .context("subscribing to command results")?;
    client.flush().await?;
    let accounts = probe_accounts(partitions);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut waiting: HashMap<String, u32> = HashMap::new();
    let mut cut = vec![0u64; partitions as usize];
    for p in 0..partitions {
        let id = format!("fence-{}-{p}", options.fence_id);
        let account = &accounts[p as usize];
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = js
            .publish_with_headers(
                creditflow::wire::subject::subject(
                    &options.input_prefix,
                    p,
                    creditflow::wire::subject::SubjectKind::Command,
                ),
                headers,
                release_payload(&id, account, Instant(now_ms)),
            )
            .await
            .context("publishing a fence")?
            .await
            .context("a fence was not acknowledged")?;
        cut[p as usize] = ack.sequence;
        waiting.insert(format!("result:{account}:{id}"), p);
    }
    let fence_ids: BTreeSet<String> = waiting.keys().cloned().collect();
    let deadline = tokio::time::Instant::now() + options.fence_timeout;
    while !waiting.is_empty() {
        let message = match tokio::time::timeout_at(deadline, results.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => bail!("the result subscription ended"),
            Err(_) => {
                let mut open: Vec<u32> = waiting.values().copied().collect();
                open.sort_unstable();
                bail!(
                    "the processor did not answer the fences of partitions {open:?} within {:?}: \
                     is it running and caught up?",
                    options.fence_timeout
                );
            }
        };
        if let Some(id) = output_id(&message.payload) {
            waiting.remove(crate::run::result_key(id));
        }
    }
    drop(results);

    // 2. The oracle: replay the input stream up to the last fence.
    let last_fence = cut.iter().copied().max().unwrap_or(0);
    let mut engine =
        Engine::new(catalog.clone(), partitions).with_subject_prefix(&options.input_prefix);
    let mut expected: HashMap<String, (String, String)> = HashMap::new();
    let mut outputs = Vec::new();
    let mut input_messages = 0;
    let mut run_found = 0u64;
    let run_marker = options
        .expect_run
        .as_ref()
        .map(|(run, _)| format!("-{run}-"));
    let input_prefix = options.input_prefix.clone();
    nats::read_stream(&js, &options.input_stream, last_fence, |m: Stored| {
        input_messages += 1;
        if let (Some(marker), Some(id)) = (&run_marker, &m.msg_id) {
            if id.contains(marker.as_str()) {
                run_found += 1;
            }
        }
        let envelope = Envelope {
            payload: &m.payload,
            seq: m.sequence,
            subject: &m.subject,
            received: Some(Instant(m.received_ms)),
        };
        outputs.clear();
        engine.apply(&envelope, &mut outputs);
        let partition =
            partition_of_subject(&m.subject, &input_prefix).filter(|p| (*p as usize) < cut.len());
        for output in &outputs {
            // A message on a partition subject is that partition's; a tick on a subject that
            // names none reaches every partition, and each output belongs to its account's.
            let p = match (partition, &output.account) {
                (Some(p), _) => p,
                (None, Some(account)) => partition_of(account, partitions),
                (None, None) => 0,
            };
            if m.sequence > cut[p as usize] {
                continue;
            }
            let subject = format!("{}.{p}.{}", options.output_prefix, output.body.type_name());
            expected.insert(output.id.clone(), (subject, output.to_json()));
        }
    })
    .await
    .context("reading the input stream")?;

    // 3. The processor's outputs, once every fence result is stored.
    let mut actual: HashMap<String, (String, String)> = HashMap::new();
    let mut repeated_identical;
    let mut differences = Vec::new();
    let mut outputs_actual;
    let read_deadline = tokio::time::Instant::now() + options.fence_timeout;
    loop {
        actual.clear();
        differences.clear();
        repeated_identical = 0;
        outputs_actual = 0;
        let last = nats::last_sequence(&js, &options.output_stream).await?;
        let output_prefix = options.output_prefix.clone();
        nats::read_stream(&js, &options.output_stream, last, |m: Stored| {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            let Some(p) = partition_of_subject(&m.subject, &output_prefix) else {
                return;
            };
            let Some(sequence) = crate::run::output_sequence(&m.payload) else {
                differences.push(Difference::Unexpected {
                    id: format!("(unreadable at output seq {})", m.sequence),
                    actual: text,
                });
                return;
            };
            if (p as usize) >= cut.len() || sequence > cut[p as usize] {
                return;
            }
            let id = match serde_json::from_slice::<OutputHead>(&m.payload) {
                Ok(head) => head.id,
                Err(_) => format!("(unparsable at output seq {})", m.sequence),
            };
            outputs_actual += 1;
            match actual.get(&id) {
                Some((_, earlier)) if *earlier == text => repeated_identical += 1,
                Some((_, earlier)) => differences.push(Difference::Different {
                    id: id.clone(),
                    expected: expected
                        .get(&id)
                        .map_or_else(|| earlier.clone(), |e| e.1.clone()),
                    actual: if expected.get(&id).is_some_and(|e| e.1 == *earlier) {
                        text
                    } else {
                        earlier.clone()
                    },
                }),
                None => {
                    actual.insert(id, (m.subject.clone(), text));
                }
            }
        })
        .await
        .context("reading the output stream")?;
        if fence_ids
            .iter()
            .all(|key| actual.keys().any(|id| crate::run::result_key(id) == key))
        {
            break;
        }
        if tokio::time::Instant::now() >= read_deadline {
            bail!(
                "the fences' results were seen but are not in {}",
                options.output_stream
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. Compare.
    let mut ids: BTreeSet<&String> = expected.keys().collect();
    ids.extend(actual.keys());
    for id in ids {
        match (expected.get(id), actual.get(id)) {
            (Some((_, e)), None) => differences.push(Difference::Missing {
                id: id.clone(),
                expected: e.clone(),
            }),
            (None, Some((_, a))) => differences.push(Difference::Unexpected {
                id: id.clone(),
                actual: a.clone(),
            }),
            (Some((es, e)), Some((as_, a))) => {
                if e != a {
                    differences.push(Difference::Different {
                        id: id.clone(),
                        expected: e.clone(),
                        actual: a.clone(),
                    });
                } else if es != as_ {
                    differences.push(Difference::WrongSubject {
                        id: id.clone(),
                        expected: es.clone(),
                        actual: as_.clone(),
                    });
                }
            }
            (None, None) => unreachable!("the id came from one of the maps"),
        }
    }
    differences.sort_by(|a, b| a.id().cmp(b.id()));
    differences.dedup();

    // Balances the oracle holds for every account a difference names.
    let mut balances = BTreeMap::new();
    for difference in &differences {
        let text = match difference {
            Difference::Missing { expected, .. } => expected,
            Difference::Unexpected { actual, .. } => actual,
            Difference::Different { expected, .. } => expected,
            Difference::WrongSubject { .. } => continue,
        };
        let Some(account) = serde_json::from_str::<OutputHead>(text)
            .ok()
            .and_then(|h| h.account)
        else {
            continue;
        };
        if let Some(state) = engine.account(&account) {
            let text: Vec<String> = catalog
                .credit_types
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    state
                        .types
                        .iter()
                        .any(|t| usize::from(t.credit_type.0) == *i)
                })
                .map(|(i, ct)| {
                    let id = creditflow::catalog::CreditTypeId(i as u16);
                    format!("{}={}", ct.name, state.balance(id))
                })
                .collect();
            balances.insert(account, text.join(" "));
        }
    }

    let accounts = engine
        .partitions()
        .iter()
        .map(|p| p.accounts().len() as u64)
        .sum();
    Ok(VerifyOutcome {
        cut,
        input_messages,
        outputs_expected: expected.len() as u64,
        outputs_actual,
        repeated_identical,
        accounts,
        differences,
        balances,
        run_messages: options
            .expect_run
            .as_ref()
            .map(|(_, stored)| (run_found, *stored)),
        diff_max: options.diff_max,
    })
}

/// `<prefix>.<p>` or `<prefix>.<p>.<anything>` → p.
pub fn partition_of_subject(subject: &str, prefix: &str) -> Option<u32> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    rest.split('.').next()?.parse().ok()
}
