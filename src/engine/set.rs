//! [`Engine`]: a set of partitions applied in log order on one thread, for `replay`,
//! `simulate`, the model test and the benchmarks (the processor's shards hold their partitions
//! themselves). Routes each input by its subject, as the processor's reader does.

use std::sync::Arc;

use super::account::Account;
use super::explain::{Explanation, Tally};
use super::{apply_ahead, partition_of, view, Envelope, Hashes, Partition, Stats};
use crate::catalog::Catalog;
use crate::wire::input::{self, DeadLetter, Message};
use crate::wire::output::Output;
use crate::wire::subject::{self, Route};

/// A set of partitions applied in log order: the single-threaded engine that `replay`,
/// `simulate`, the model test and the benchmarks drive.
pub struct Engine {
    catalog: Arc<Catalog>,
    partitions: Vec<Partition>,
    /// Prefix of partition subjects (`creditflow.in`): a subject `<prefix>.<n>.<kind>` routes
    /// to partition `n` and is checked against the account's hash and the message's type
    /// ([`subject::route`]).
    subject_prefix: String,
}

/// One input of [`Engine::apply_batch`]: its route, its decoded message (`None` for an
/// unroutable subject) and the partition that will apply it, when known before applying.
type BatchInput<'a> = (
    Route,
    Option<Result<Message<'a>, DeadLetter>>,
    Option<(u32, Hashes)>,
);

impl Engine {
    pub fn new(catalog: Arc<Catalog>, partition_count: u32) -> Engine {
        let count = partition_count.max(1);
        Engine {
            catalog,
            partitions: (0..count).map(|n| Partition::new(n, count)).collect(),
            subject_prefix: "creditflow.in".to_string(),
        }
    }

    pub fn from_partitions(catalog: Arc<Catalog>, partitions: Vec<Partition>) -> Engine {
        Engine {
            catalog,
            partitions,
            subject_prefix: "creditflow.in".to_string(),
        }
    }

    pub fn with_subject_prefix(mut self, prefix: &str) -> Engine {
        self.subject_prefix = prefix.to_string();
        self
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The partitions, to take snapshots or deltas of (`tests/snapshot_deltas.rs`).
    pub fn partitions_mut(&mut self) -> &mut [Partition] {
        &mut self.partitions
    }

    pub fn into_partitions(self) -> Vec<Partition> {
        self.partitions
    }

    /// How a subject routes ([`subject::route`]).
    fn subject_route(&self, subject: &str) -> Route {
        subject::route(&self.subject_prefix, subject, self.partitions.len() as u32)
    }

    /// Applies one raw message.
    pub fn apply(&mut self, envelope: &Envelope<'_>, out: &mut Vec<Output>) {
        let route = self.subject_route(envelope.subject);
        let decoded = match route {
            Route::Unroutable(_) => None,
            _ => Some(input::decode(envelope.payload, &self.catalog)),
        };
        self.apply_routed(route, decoded.as_ref(), envelope, None, out);
    }

    /// Applies raw messages in order, fetching ahead ([`apply_ahead`]): the same state and
    /// outputs as applying each with [`Engine::apply`].
    pub fn apply_batch(&mut self, envelopes: &[Envelope<'_>], out: &mut Vec<Output>) {
        let catalog = Arc::clone(&self.catalog);
        let inputs: Vec<BatchInput<'_>> = envelopes
            .iter()
            .map(|envelope| {
                let route = self.subject_route(envelope.subject);
                let decoded = match route {
                    Route::Unroutable(_) => None,
                    _ => Some(input::decode(envelope.payload, &catalog)),
                };
                let message = match &decoded {
                    Some(Ok(message)) => Some(message),
                    _ => None,
                };
                let target = message.and_then(|message| self.target_hashed(route, message));
                (route, decoded, target)
            })
            .collect();
        // Payload hashes once per batch and partition, found again by sequence.
        let increasing = envelopes.windows(2).all(|pair| pair[0].seq < pair[1].seq);
        if increasing {
            for partition in &mut self.partitions {
                partition.defer_payload_hashes();
            }
        }
        apply_ahead(inputs.len(), |i, stage| match stage {
            Some(stage) => {
                if let (_, Some(Ok(message)), Some((n, hashes))) = &inputs[i] {
                    self.partitions[*n as usize].prefetch(stage, message, hashes);
                }
            }
            None => {
                let (route, decoded, target) = &inputs[i];
                self.apply_routed(
                    *route,
                    decoded.as_ref(),
                    &envelopes[i],
                    target.as_ref(),
                    out,
                );
            }
        });
        if increasing {
            let payload_of = |seq: u64| {
                envelopes
                    .binary_search_by_key(&seq, |envelope| envelope.seq)
                    .ok()
                    .map(|i| envelopes[i].payload)
            };
            for partition in &mut self.partitions {
                partition.finish_batch(payload_of);
            }
        }
    }

    /// Applies already decoded messages in order with fetching ahead: the same state and
    /// outputs as [`Engine::apply_message`] on each (`envelopes[i]` is `messages[i]`'s).
    pub fn apply_messages(
        &mut self,
        messages: &[Message<'_>],
        envelopes: &[Envelope<'_>],
        out: &mut Vec<Output>,
    ) {
        assert_eq!(messages.len(), envelopes.len(), "one envelope per message");
        let targets: Vec<Option<(u32, Hashes)>> = messages
            .iter()
            .zip(envelopes)
            .map(|(message, envelope)| {
                self.target_hashed(self.subject_route(envelope.subject), message)
            })
            .collect();
        apply_ahead(messages.len(), |i, stage| match (stage, &targets[i]) {
            (Some(stage), Some((n, hashes))) => {
                self.partitions[*n as usize].prefetch(stage, &messages[i], hashes)
            }
            (Some(_), None) => {}
            (None, target) => {
                self.apply_message_routed(&messages[i], &envelopes[i], target.as_ref(), out)
            }
        });
    }

    /// The partition that will apply `message` (when it decoded) arriving by `route`, if one
    /// does: what fetching ahead needs to know before applying.
    fn target(&self, route: Route, message: Option<&Message<'_>>) -> Option<u32> {
        match route {
            Route::Partition { number, .. } => Some(number),
            Route::Log => message?
                .account()
                .map(|account| partition_of(account, self.partitions.len() as u32)),
            Route::Unroutable(_) => None,
        }
    }

    /// [`Engine::target`] of a decoded message with its [`Hashes`]: what fetching ahead and
    /// the apply of a batch share.
    fn target_hashed(&self, route: Route, message: &Message<'_>) -> Option<(u32, Hashes)> {
        self.target(route, Some(message)).zip(Hashes::of(message))
    }

    /// Applies a routed message; `decoded` is `None` only for an unroutable subject. `target`
    /// is what [`Engine::target`] and [`Hashes::of`] give for it, if the caller has them.
    fn apply_routed(
        &mut self,
        route: Route,
        decoded: Option<&Result<Message<'_>, DeadLetter>>,
        envelope: &Envelope<'_>,
        target: Option<&(u32, Hashes)>,
        out: &mut Vec<Output>,
    ) {
        let decoded = match (route, decoded) {
            (Route::Unroutable(why), _) => {
                // As the pipeline does: partition 0 dead-letters what no partition may apply.
                self.partitions[0].dead_letter_unrouted(envelope, why, out);
                return;
            }
            (_, Some(decoded)) => decoded,
            (_, None) => unreachable!("a routable message is decoded"),
        };
        match decoded {
            Err(dead) => {
                let n = route.partition().unwrap_or_else(|| match &dead.account {
                    Some(account) => partition_of(account, self.partitions.len() as u32),
                    None => 0,
                });
                let partition = &mut self.partitions[n as usize];
                partition.record(envelope);
                partition.dead_letter(dead.clone(), envelope, out);
            }
            Ok(message) => self.route(message, envelope, route, target, out),
        }
    }

    /// Applies an already decoded message.
    pub fn apply_message(
        &mut self,
        message: &Message<'_>,
        envelope: &Envelope<'_>,
        out: &mut Vec<Output>,
    ) {
        self.apply_message_routed(message, envelope, None, out);
    }

    /// [`Engine::apply_message`]; `target`: as for [`Engine::apply_routed`].
    fn apply_message_routed(
        &mut self,
        message: &Message<'_>,
        envelope: &Envelope<'_>,
        target: Option<&(u32, Hashes)>,
        out: &mut Vec<Output>,
    ) {
        let route = self.subject_route(envelope.subject);
        if let Route::Unroutable(why) = route {
            self.partitions[0].dead_letter_unrouted(envelope, why, out);
            return;
        }
        self.route(message, envelope, route, target, out);
    }

    /// `target`: as for [`Engine::apply_routed`].
    fn route(
        &mut self,
        message: &Message<'_>,
        envelope: &Envelope<'_>,
        route: Route,
        target: Option<&(u32, Hashes)>,
        out: &mut Vec<Output>,
    ) {
        let catalog = &*self.catalog;
        let count = self.partitions.len() as u32;
        let hashes = target.map(|(_, hashes)| hashes);
        match (message.account(), route.partition()) {
            (_, Some(n)) => self.partitions[n as usize]
                .apply_message(catalog, message, envelope, route, hashes, out),
            (Some(account), None) => {
                let n = match target {
                    Some(&(n, _)) => {
                        debug_assert_eq!(n, partition_of(account, count), "another partition");
                        n
                    }
                    None => partition_of(account, count),
                };
                self.partitions[n as usize]
                    .apply_message(catalog, message, envelope, route, hashes, out);
            }
            // A tick in a plain log reaches every partition.
            (None, None) => {
                for partition in &mut self.partitions {
                    partition.apply_message(catalog, message, envelope, route, None, out);
                }
            }
        }
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        let n = partition_of(id, self.partitions.len() as u32);
        self.partitions[n as usize].account(id)
    }

    /// Every account's state view (SEMANTICS §16), sorted by account id.
    pub fn state_view(&self) -> Vec<String> {
        let mut accounts: Vec<&Account> =
            self.partitions.iter().flat_map(|p| p.accounts()).collect();
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        accounts
            .iter()
            .map(|a| view::account_json(&self.catalog, a))
            .collect()
    }

    pub fn check_invariants(&self) -> Result<(), String> {
        self.partitions
            .iter()
            .try_for_each(Partition::check_invariants)
    }

    /// Records what each input does to `account` (see [`Explanation`]).
    pub fn set_explain(&mut self, account: Option<&str>) {
        for partition in &mut self.partitions {
            partition.explain = account.map(str::to_string);
        }
    }

    /// Starts keeping per (account, meter) charge totals (see [`Tally`]).
    pub fn enable_tally(&mut self) {
        for partition in &mut self.partitions {
            partition.tally = Some(Default::default());
        }
    }

    /// The totals kept since `enable_tally`, merged across partitions.
    pub fn tally(&self) -> std::collections::BTreeMap<(String, crate::catalog::MeterId), Tally> {
        self.partitions
            .iter()
            .filter_map(|p| p.tally.as_ref())
            .flat_map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    pub fn take_explanations(&mut self) -> Vec<Explanation> {
        let mut all: Vec<Explanation> = self
            .partitions
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.explanations))
            .collect();
        all.sort_by_key(|e| e.seq);
        all
    }

    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for p in &self.partitions {
            total.messages += p.stats.messages;
            total.usage_applied += p.stats.usage_applied;
            total.commands_applied += p.stats.commands_applied;
            total.ticks += p.stats.ticks;
            total.duplicates += p.stats.duplicates;
            total.dead_letters += p.stats.dead_letters;
        }
        total
    }
}
