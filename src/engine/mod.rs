//! The credit engine: pure, deterministic, replayable (SEMANTICS.md is its contract).
//!
//! Owns: partitions of accounts ([`Partition`]), the order of checks on every input, the dedupe
//! index, the timers that drive time-based transitions. Beside it: [`Engine`], a set of
//! partitions used by `replay`, `simulate` and the tests (`set.rs`); fetching ahead
//! (`ahead.rs`); what `simulate` and `replay --explain` are told (`explain.rs`); a partition's
//! heap by what holds it (`heap.rs`).
//!
//! Must never: do I/O, read a clock, spawn threads, use randomness, or iterate a hash map where
//! the order could reach an output. Time and stream sequences come in as arguments. One input in,
//! new state and outputs out; the same inputs give the same outputs, byte for byte.
//!
//! Invariants: every account with a pending transition has a timer entry at or before it; an
//! account's state depends only on its own messages and the ticks (never on its neighbours,
//! except through the two limits SEMANTICS §15 names); after every input, in debug builds, every
//! account touched passes [`Account::check`].

pub mod account;
mod ahead;
pub mod compact;
pub mod dedupe;
pub mod delta;
mod explain;
mod heap;
pub mod journal;
pub mod query;
pub mod reversals;
mod set;
pub mod shadow;
pub mod timers;
pub mod view;

pub use ahead::{apply_ahead, Ahead, Hashes, AHEAD_DISTANCES};
pub use explain::{Explanation, Tally};
pub use heap::HeapBreakdown;
pub use set::Engine;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::pricing::{self, PriceRequest, Priced};
use crate::catalog::Catalog;
use crate::time::Instant;
use crate::wire::input::{self, CommandKind, DeadLetter, DeadReason, Message};
use crate::wire::output::{Body, Output};
use crate::wire::subject::{self, Route, Unroutable};
use account::{Account, Context, NO_TIMER};
use compact::AccountIndex;
use dedupe::{dedupe_key, Dedupe, Entry};

/// The partition of an account: FNV-1a (64-bit) of its id's bytes, modulo the partition count.
/// Publishers in any language compute it the same way (README, "Partitions").
pub fn partition_of(account: &str, partition_count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in account.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partition_count.max(1))) as u32
}

/// One message as it came off the log: its bytes and where and when the stream had it.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    pub payload: &'a [u8],
    /// Stream sequence.
    pub seq: u64,
    pub subject: &'a str,
    /// When the stream received it (JetStream's timestamp); `None` for logs without one.
    pub received: Option<Instant>,
}

/// Counters a partition keeps for metrics; part of its state, so they survive restarts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub messages: u64,
    pub usage_applied: u64,
    pub commands_applied: u64,
    pub ticks: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
}

/// One partition: the unit of ownership, ordering and recovery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Partition {
    pub number: u32,
    pub partition_count: u32,
    /// Shared with a snapshot delta until the writer has encoded it: an account written
    /// meanwhile is copied then ([`Arc::make_mut`]), so taking a delta copies no account.
    accounts: Vec<Arc<Account>>,
    index: AccountIndex,
    dedupe: Dedupe,
    /// Charge records past the dedupe window, for reversals.
    reversals: reversals::Reversals,
    timers: timers::Timers,
    tick_clock: Option<Instant>,
    /// Stream sequence of the last message applied (0 before any).
    pub last_seq: u64,
    /// Every stream message at or before this sequence that belongs to this partition has been
    /// applied (the pipeline advances it past other partitions' messages too). A restart resumes
    /// after it and skips what is at or before it.
    pub applied_through: u64,
    /// xxh3-64 of the last applied message's payload: with `last_seq`, what a restart checks
    /// the stream against to detect rewritten history.
    pub last_payload_hash: u64,
    pub stats: Stats,
    /// The account whose inputs are recorded in `explanations` (replay `--explain`); never
    /// part of a snapshot.
    #[serde(skip)]
    pub explain: Option<String>,
    #[serde(skip)]
    pub explanations: Vec<Explanation>,
    /// Per (account, meter) totals of charges, kept only when asked (`simulate`); never part
    /// of a snapshot.
    #[serde(skip)]
    pub tally: Option<std::collections::BTreeMap<(String, crate::catalog::MeterId), Tally>>,
    /// The most recent charges, for the statement query, kept only when asked
    /// ([`Partition::keep_journal`]); never part of a snapshot.
    #[serde(skip)]
    journal: Option<journal::Journal>,
    /// Between [`Partition::defer_payload_hashes`] and [`Partition::finish_batch`]: applying a
    /// message records its sequence only, and the batch's last one is hashed at its end (a
    /// payload hash costs ~23 ns, and only the last one is ever kept).
    #[serde(skip)]
    hash_deferred: bool,
    /// `last_payload_hash` is not yet `last_seq`'s (deferred to the end of the batch).
    #[serde(skip)]
    unhashed: bool,
    /// Which accounts changed since the last snapshot's baseline (incremental snapshots,
    /// [`delta`]); never part of a snapshot.
    #[serde(skip)]
    changes: delta::Changes,
    /// The latest of the accounts' clocks, once known (`None`: not yet, as in a decoded
    /// state; [`Partition::clock_now`] finds it then), kept by every write to an account so a
    /// snapshot's header does not read every account; never part of a snapshot.
    #[serde(skip)]
    accounts_clock: Option<Option<Instant>>,
}

impl Partition {
    pub fn new(number: u32, partition_count: u32) -> Partition {
        assert!(
            number < partition_count,
            "partition {number} of {partition_count}"
        );
        Partition {
            number,
            partition_count,
            accounts: Vec::new(),
            index: AccountIndex::default(),
            dedupe: Dedupe::default(),
            reversals: reversals::Reversals::default(),
            timers: timers::Timers::default(),
            tick_clock: None,
            last_seq: 0,
            applied_through: 0,
            last_payload_hash: 0,
            stats: Stats::default(),
            explain: None,
            explanations: Vec::new(),
            tally: None,
            journal: None,
            hash_deferred: false,
            unhashed: false,
            changes: delta::Changes::default(),
            accounts_clock: Some(None),
        }
    }

    pub fn accounts(&self) -> impl ExactSizeIterator<Item = &Account> + '_ {
        self.accounts.iter().map(|account| &**account)
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        self.slot(id).map(|slot| &*self.accounts[slot as usize])
    }

    fn slot(&self, id: &str) -> Option<u32> {
        self.slot_hashed(id, AccountIndex::hash(id.as_bytes()))
    }

    /// [`Partition::slot`] with the id's index hash already computed.
    fn slot_hashed(&self, id: &str, hash: u64) -> Option<u32> {
        let accounts = &self.accounts;
        self.index.get_hashed(id.as_bytes(), hash, |slot| {
            accounts[slot as usize].id.as_bytes()
        })
    }

    pub fn tick_clock(&self) -> Option<Instant> {
        self.tick_clock
    }

    /// The latest event time this partition has seen (ticks and every account's clock).
    pub fn clock(&self) -> Option<Instant> {
        self.accounts_clock
            .unwrap_or_else(|| latest_clock(&self.accounts))
            .max(self.tick_clock)
    }

    /// [`Partition::clock`], reading every account only the first time after a decode (the
    /// writes keep it from then on).
    pub fn clock_now(&mut self) -> Option<Instant> {
        let accounts = &self.accounts;
        let latest = *self
            .accounts_clock
            .get_or_insert_with(|| latest_clock(accounts));
        latest.max(self.tick_clock)
    }

    /// Keeps the latest accounts' clock known after an account's clock moved to `clock`.
    #[inline]
    fn saw_clock(known: &mut Option<Option<Instant>>, clock: Instant) {
        if let Some(latest) = known {
            *latest = (*latest).max(Some(clock));
        }
    }

    pub fn dedupe_len(&self) -> usize {
        self.dedupe.len()
    }

    pub fn dedupe_heap_bytes(&self) -> usize {
        self.dedupe.heap_bytes()
    }

    /// Starts keeping the last `capacity` charges of this partition for the statement query
    /// ([`journal`]); 0 keeps none.
    pub fn keep_journal(&mut self, capacity: usize) {
        self.journal = (capacity > 0).then(|| journal::Journal::new(capacity));
    }

    pub fn dedupe_evicted_early(&self) -> u64 {
        self.dedupe.evicted_early
    }

    /// Charge records kept for reversals past the dedupe window.
    pub fn reversals_len(&self) -> usize {
        self.reversals.len()
    }

    /// Charge records forgotten before their reversal window ended.
    pub fn reversals_evicted_early(&self) -> u64 {
        self.reversals.evicted_early()
    }

    /// Fetching ahead, stage 1 of 3: starts loading the account-index bucket and the dedupe
    /// bucket of the message `hashes` belong to. Changes nothing.
    ///
    /// At a million accounts each input's account record, its grants and lines, and its dedupe
    /// bucket are cache misses, several hundred ns each on a virtual machine, and each depends on
    /// the one before (bucket → record → the record's vectors). A caller with several inputs in
    /// hand applies input i while running stage 3 for i+2, stage 2 for i+5 and stage 1 for
    /// i+8 ([`apply_ahead`], [`AHEAD_DISTANCES`]), so the misses of one input overlap the work
    /// of others.
    pub fn prefetch_buckets(&self, hashes: &Hashes) {
        self.index.prefetch(hashes.account);
        self.dedupe.prefetch(hashes.dedupe);
    }

    /// Fetching ahead, stage 2: the account record (its bucket loaded by stage 1).
    pub fn prefetch_account(&self, hashes: &Hashes) {
        if let Some(slot) = self.index.first_candidate(hashes.account) {
            if let Some(account) = self.accounts.get(slot as usize) {
                account.prefetch();
            }
        }
    }

    /// Fetching ahead, stage 3: the record's grants, per-type state and lines (the record
    /// loaded by stage 2).
    pub fn prefetch_account_data(&self, message: &Message<'_>, hashes: &Hashes) {
        if let Some(slot) = message
            .account()
            .and_then(|account| self.slot_hashed(account, hashes.account))
        {
            self.accounts[slot as usize].prefetch_data();
        }
    }

    /// Decodes and applies one message (SEMANTICS §2–§10). `route` is where its subject sends
    /// it ([`subject::route`]): a message whose subject does not carry its type is
    /// dead-lettered (`not_allowed_on_subject`), and one for an account of another partition
    /// too (`wrong_partition`).
    pub fn apply(
        &mut self,
        catalog: &Catalog,
        envelope: &Envelope<'_>,
        route: Route,
        out: &mut Vec<Output>,
    ) {
        let decoded = input::decode(envelope.payload, catalog);
        self.apply_decoded(catalog, &decoded, envelope, route, None, out);
    }

    /// Applies a message already decoded from `envelope` (by [`input::decode`]), or its dead
    /// letter: what [`Partition::apply`] does after decoding. `hashes` are the message's
    /// [`Hashes`] if the caller has them (from fetching ahead), else they are computed here.
    pub fn apply_decoded(
        &mut self,
        catalog: &Catalog,
        decoded: &Result<Message<'_>, DeadLetter>,
        envelope: &Envelope<'_>,
        route: Route,
        hashes: Option<&Hashes>,
        out: &mut Vec<Output>,
    ) {
        match decoded {
            Ok(message) => self.apply_message(catalog, message, envelope, route, hashes, out),
            Err(dead) => {
                self.record(envelope);
                self.dead_letter(dead.clone(), envelope, out);
            }
        }
    }

    /// Runs one stage of fetching ahead for `message`, whose [`Hashes`] are `hashes`.
    pub fn prefetch(&self, stage: Ahead, message: &Message<'_>, hashes: &Hashes) {
        hashes.debug_check(message);
        match stage {
            Ahead::Buckets => self.prefetch_buckets(hashes),
            Ahead::Account => self.prefetch_account(hashes),
            Ahead::AccountData => self.prefetch_account_data(message, hashes),
        }
    }

    fn record(&mut self, envelope: &Envelope<'_>) {
        self.last_seq = envelope.seq;
        self.unhashed = self.hash_deferred;
        if !self.hash_deferred {
            self.last_payload_hash = xxhash_rust::xxh3::xxh3_64(envelope.payload);
        }
        self.stats.messages += 1;
    }

    /// For a caller applying a batch whose sequences strictly increase: until
    /// [`Partition::finish_batch`], applying a message records its sequence but leaves hashing
    /// its payload to the end of the batch, where only the last one is hashed.
    pub fn defer_payload_hashes(&mut self) {
        self.hash_deferred = true;
    }

    /// Ends a batch begun with [`Partition::defer_payload_hashes`]: hashes the payload of the
    /// last message applied, which `payload_of` finds by its sequence in the batch. Before
    /// this, `last_payload_hash` may be an earlier message's (the partition is not lent or
    /// snapshotted mid-batch).
    pub fn finish_batch<'p>(&mut self, payload_of: impl Fn(u64) -> Option<&'p [u8]>) {
        self.hash_deferred = false;
        if std::mem::take(&mut self.unhashed) {
            let payload = payload_of(self.last_seq);
            debug_assert!(
                payload.is_some(),
                "seq {} is not in the batch",
                self.last_seq
            );
            if let Some(payload) = payload {
                self.last_payload_hash = xxhash_rust::xxh3::xxh3_64(payload);
            }
        }
    }

    /// Applies an already decoded message (the decode is the caller's, e.g. a benchmark's).
    /// `hashes`: as for [`Partition::apply_decoded`].
    pub fn apply_message(
        &mut self,
        catalog: &Catalog,
        message: &Message<'_>,
        envelope: &Envelope<'_>,
        route: Route,
        hashes: Option<&Hashes>,
        out: &mut Vec<Output>,
    ) {
        let kind = match route {
            Route::Unroutable(why) => return self.dead_letter_unrouted(envelope, why, out),
            Route::Partition { kind, .. } => Some(kind),
            Route::Log => None,
        };
        self.record(envelope);
        let seq = envelope.seq;
        if let Some(kind) = kind.filter(|kind| !kind.allows(message)) {
            let dead = DeadLetter {
                reason: DeadReason::NotAllowedOnSubject,
                detail: format!(
                    "a {} message on a {} subject ({}): {}",
                    message.type_name(),
                    kind.token(),
                    envelope.subject,
                    match kind {
                        subject::SubjectKind::Usage => "usage subjects carry usage events only",
                        subject::SubjectKind::Command => "cmd subjects carry commands only",
                        subject::SubjectKind::Tick => "tick subjects carry ticks only",
                    }
                ),
                account: message.account().map(str::to_string),
                ts: Some(message.ts()),
            };
            self.dead_letter(dead, envelope, out);
            return;
        }
        if let Err(dead) = check_future(catalog, message, envelope.received) {
            let dead = DeadLetter {
                account: message.account().map(str::to_string),
                ts: Some(message.ts()),
                ..dead
            };
            self.dead_letter(dead, envelope, out);
            return;
        }
        let account_id = match message {
            Message::Tick { ts, .. } => {
                self.tick(catalog, *ts, seq, out);
                return;
            }
            Message::Usage(usage) => &*usage.account,
            Message::Command(command) => &*command.account,
        };
        if let Some(expected) = route.partition() {
            let actual = partition_of(account_id, self.partition_count);
            if actual != expected || expected != self.number {
                let dead = DeadLetter {
                    reason: DeadReason::WrongPartition,
                    detail: format!(
                        "account {account_id} belongs to partition {actual} of {}, subject names {expected}",
                        self.partition_count
                    ),
                    account: Some(account_id.to_string()),
                    ts: Some(message.ts()),
                };
                self.dead_letter(dead, envelope, out);
                return;
            }
        }
        let hashes = match hashes {
            Some(hashes) => {
                hashes.debug_check(message);
                *hashes
            }
            None => Hashes::of(message).expect("a message with an account has hashes"),
        };
        if let Err(dead) =
            self.apply_account_message(catalog, message, account_id, seq, &hashes, out)
        {
            let dead = DeadLetter {
                account: Some(account_id.to_string()),
                ts: Some(message.ts()),
                ..dead
            };
            self.dead_letter(dead, envelope, out);
        }
    }

    /// Dead-letters a message whose subject is under the input prefix but routes nowhere
    /// ([`Route::Unroutable`]): no partition may apply it. Its dead letter keeps the subject it
    /// arrived on; the payload is not read (no account, no `ts`).
    pub fn dead_letter_unrouted(
        &mut self,
        envelope: &Envelope<'_>,
        why: Unroutable,
        out: &mut Vec<Output>,
    ) {
        self.record(envelope);
        let (reason, detail) = match why {
            Unroutable::NoPartition => (
                DeadReason::WrongPartition,
                format!(
                    "the subject {} names no partition of {}",
                    envelope.subject, self.partition_count
                ),
            ),
            Unroutable::NoKind => (
                DeadReason::NotAllowedOnSubject,
                format!(
                    "the subject {} names no kind (usage, cmd or tick)",
                    envelope.subject
                ),
            ),
        };
        let dead = DeadLetter {
            reason,
            detail,
            account: None,
            ts: None,
        };
        self.dead_letter(dead, envelope, out);
    }

    fn dead_letter(&mut self, dead: DeadLetter, envelope: &Envelope<'_>, out: &mut Vec<Output>) {
        self.stats.dead_letters += 1;
        // A payload over the limit is cut, so a dead letter never exceeds what it reports.
        const DEAD_PAYLOAD_MAX: usize = 1024;
        let payload = envelope.payload;
        let payload = if dead.reason == DeadReason::PayloadTooLarge {
            payload[..payload.len().min(DEAD_PAYLOAD_MAX)].to_vec()
        } else {
            payload.to_vec()
        };
        out.push(Output {
            id: format!("dead:{}", envelope.seq),
            account: dead.account,
            seq: envelope.seq,
            ts: dead.ts,
            body: Body::DeadLetter {
                reason: dead.reason.name(),
                detail: dead.detail,
                subject: envelope.subject.to_string(),
                payload,
            },
        });
    }

    fn tick(&mut self, catalog: &Catalog, ts: Instant, seq: u64, out: &mut Vec<Output>) {
        self.stats.ticks += 1;
        let clock = self.tick_clock.map_or(ts, |c| c.max(ts));
        self.tick_clock = Some(clock);
        let rules = &catalog.rules;
        let reversals = &mut self.reversals;
        self.dedupe
            .forget_expired_into(clock, rules.dedupe_window, &mut |key, entry| {
                reversals.keep(key, entry, Some(clock), rules)
            });
        self.reversals.forget_expired(clock, rules);
        let mut ctx = Context { catalog, seq, out };
        while let Some((due, slot)) = self.timers.peek() {
            if due > clock {
                break;
            }
            self.timers.pop();
            self.changes.touch(slot);
            let account = Arc::make_mut(&mut self.accounts[slot as usize]);
            if account.timer == due {
                account.timer = NO_TIMER;
            }
            // A timer entry can be stale (its transition already ran when a message advanced the
            // account): only an account with a transition due is advanced, so its clock stays its
            // own (SEMANTICS §3, §16).
            let mut next = account.next_due_time(catalog);
            if next <= clock {
                next = account.advance(&mut ctx, clock);
                Self::saw_clock(&mut self.accounts_clock, account.clock);
            }
            Self::schedule(&mut self.timers, catalog, account, slot, next);
            debug_check(account);
        }
    }

    /// Makes sure the account has a timer entry at or before `next`, its next transition's time
    /// ([`Account::next_due_time`], as computed by the caller).
    fn schedule(
        timers: &mut timers::Timers,
        catalog: &Catalog,
        account: &mut Account,
        slot: u32,
        next: Instant,
    ) {
        debug_assert_eq!(
            next,
            account.next_due_time(catalog),
            "stale next transition"
        );
        if next < account.timer {
            account.timer = next;
            timers.push((next, slot));
        }
    }

    /// Price of a usage, reserve or commit, judged before anything changes (SEMANTICS §2.1
    /// checks 6–8). `None` for other messages, or a commit whose hold does not exist.
    fn price_of(
        &self,
        catalog: &Catalog,
        message: &Message<'_>,
        slot: Option<u32>,
    ) -> Result<Option<Priced>, DeadLetter> {
        let account = slot.map(|s| &*self.accounts[s as usize]);
        let (meter, quantity, dims, ts) = match message {
            Message::Usage(usage) => (usage.meter, usage.quantity, &usage.dims[..], usage.ts),
            Message::Command(command) => match &command.kind {
                CommandKind::Reserve(reserve) => (
                    reserve.meter,
                    reserve.quantity,
                    &reserve.dims[..],
                    command.ts,
                ),
                CommandKind::Commit { hold_id, quantity } => {
                    match account.and_then(|a| a.hold(hold_id)) {
                        Some(hold) => (hold.meter, *quantity, &hold.dims[..], command.ts),
                        None => return Ok(None),
                    }
                }
                _ => return Ok(None),
            },
            Message::Tick { .. } => return Ok(None),
        };
        let cumulative = account.map_or(crate::decimal::Quantity::ZERO, |a| {
            a.cumulative_at(meter, ts)
        });
        let request = PriceRequest {
            meter,
            quantity,
            dims,
            ts,
            cumulative,
        };
        match pricing::price(catalog, &request) {
            Ok(priced) => Ok(Some(priced)),
            Err(error) => {
                let reason = match error {
                    pricing::PriceError::NoPriceInForce => DeadReason::NoPriceInForce,
                    pricing::PriceError::NoRateForDims => DeadReason::NoRateForDims,
                    pricing::PriceError::CostOverflow => DeadReason::CostOverflow,
                };
                Err(DeadLetter {
                    reason,
                    detail: format!("meter {}: {error}", catalog.meter(meter).name),
                    account: None,
                    ts: None,
                })
            }
        }
    }

    fn apply_account_message(
        &mut self,
        catalog: &Catalog,
        message: &Message<'_>,
        account_id: &str,
        seq: u64,
        hashes: &Hashes,
        out: &mut Vec<Output>,
    ) -> Result<(), DeadLetter> {
        let rules = &catalog.rules;
        let ts = message.ts();
        let slot = self.slot_hashed(account_id, hashes.account);
        let account_clock = slot.map(|s| self.accounts[s as usize].clock);
        let clock = match (account_clock, self.tick_clock) {
            (Some(a), Some(t)) => Some(a.max(t)),
            (a, t) => a.or(t),
        };
        if let Some(clock) = clock {
            if ts < clock.saturating_sub(rules.backdate_max) {
                return Err(DeadLetter {
                    reason: DeadReason::TsTooOld,
                    detail: format!(
                        "ts {ts} is more than {} before the account's clock {clock}",
                        rules.backdate_max
                    ),
                    account: None,
                    ts: None,
                });
            }
        }
        let priced = self.price_of(catalog, message, slot)?;
        let key = hashes.dedupe;
        if self
            .dedupe
            .contains(key, self.tick_clock, rules.dedupe_window)
        {
            self.stats.duplicates += 1;
            return Ok(());
        }
        let mut ctx = Context { catalog, seq, out };
        let slot = match slot {
            Some(slot) => slot,
            None => {
                if self.accounts.len() >= rules.accounts_per_partition_max {
                    return Err(DeadLetter {
                        reason: DeadReason::AccountLimit,
                        detail: format!(
                            "partition {} already holds {} accounts",
                            self.number, rules.accounts_per_partition_max
                        ),
                        account: None,
                        ts: None,
                    });
                }
                let plan = match message {
                    Message::Command(command) => match command.kind {
                        CommandKind::SetPlan { plan } => plan,
                        _ => catalog.default_plan,
                    },
                    _ => catalog.default_plan,
                };
                let start = self.tick_clock.map_or(ts, |t| t.max(ts));
                let account = Account::new(&mut ctx, account_id, plan, start);
                let slot = self.accounts.len() as u32;
                self.accounts.push(Arc::new(account));
                let accounts = &self.accounts;
                self.index.insert(account_id.as_bytes(), slot, |slot| {
                    accounts[slot as usize].id.as_bytes()
                });
                slot
            }
        };
        let tick_clock = self.tick_clock;
        self.changes.touch(slot);
        let account = Arc::make_mut(&mut self.accounts[slot as usize]);
        account.advance(&mut ctx, tick_clock.map_or(ts, |t| t.max(ts)));
        Self::saw_clock(&mut self.accounts_clock, account.clock);
        let remembered = match message {
            Message::Usage(usage) => {
                self.stats.usage_applied += 1;
                let priced = priced.as_ref().expect("usage is always priced");
                account.usage(&mut ctx, &usage.id, usage.meter, usage.quantity, priced, ts)
            }
            Message::Command(command) => {
                self.stats.commands_applied += 1;
                // The reversed event's record, copied out and written back after the command.
                let (reversed_key, event_ts) = match &command.kind {
                    CommandKind::Reverse {
                        event_id, event_ts, ..
                    } => (Some(dedupe_key(account_id, event_id)), *event_ts),
                    _ => (None, None),
                };
                let found = reversed_key
                    .and_then(|key| self.reversals.lookup(&self.dedupe, key, tick_clock, rules));
                let missing = match (reversed_key, &found) {
                    (Some(_), None) => self.reversals.missing_reason(event_ts, tick_clock, rules),
                    _ => "unknown_event",
                };
                let (mut reversed_event, found_in) = match found {
                    Some((entry, found_in)) => (Some(entry.what), Some(found_in)),
                    None => (None, None),
                };
                let reversible = match &reversed_event {
                    Some(dedupe::Remembered::Charged(charge)) if !charge.reversed => {
                        Some(charge.clone())
                    }
                    _ => None,
                };
                let remembered = account.command(
                    &mut ctx,
                    &command.id,
                    ts,
                    &command.kind,
                    priced.as_ref(),
                    reversed_event.as_mut().ok_or(missing),
                );
                let reversed_now = matches!(
                    &reversed_event,
                    Some(dedupe::Remembered::Charged(charge)) if charge.reversed
                );
                if let (Some(key), Some(what), Some(found_in)) =
                    (reversed_key, reversed_event, found_in)
                {
                    self.reversals.write_back(
                        &mut self.dedupe,
                        key,
                        tick_clock,
                        rules,
                        found_in,
                        what,
                    );
                }
                if let (Some(tally), Some(charge), true) =
                    (&mut self.tally, reversible, reversed_now)
                {
                    let entry = tally
                        .entry((account_id.to_string(), charge.meter))
                        .or_default();
                    entry.add(&charge, -1);
                    entry.reversed += 1;
                }
                remembered
            }
            Message::Tick { .. } => unreachable!("ticks are handled before"),
        };
        if let Some(tally) = &mut self.tally {
            match (&remembered, message) {
                (dedupe::Remembered::Charged(charge), _) => {
                    let entry = tally
                        .entry((account_id.to_string(), charge.meter))
                        .or_default();
                    entry.add(charge, 1);
                    entry.charged += 1;
                }
                (dedupe::Remembered::Rejected, Message::Usage(usage)) => {
                    tally
                        .entry((account_id.to_string(), usage.meter))
                        .or_default()
                        .rejected += 1;
                }
                _ => {}
            }
        }
        if self.explain.as_deref() == Some(account_id) {
            let explanation = explain::explain(catalog, account, message, seq, priced, &remembered);
            self.explanations.push(explanation);
        }
        if let (Some(journal), dedupe::Remembered::Charged(charge)) =
            (&mut self.journal, &remembered)
        {
            let grants = &account.grants;
            journal.push(journal::JournalEntry {
                seq,
                slot,
                event_id: message.id().into(),
                kind: message.type_name(),
                ts,
                charge: charge.clone(),
                grants: journal::GrantNames::of(&charge.draws, |serial| {
                    grants.iter().find(|g| g.serial == serial).map(|g| &*g.id)
                }),
            });
        }
        let reversals = &mut self.reversals;
        self.dedupe.insert_forgetting(
            key,
            Entry {
                ts,
                what: remembered,
            },
            rules.dedupe_entries_max,
            &mut |key, entry| reversals.keep(key, entry, tick_clock, rules),
        );
        let clock = account.clock;
        let next = account.advance(&mut ctx, clock);
        Self::saw_clock(&mut self.accounts_clock, account.clock);
        Self::schedule(&mut self.timers, catalog, account, slot, next);
        debug_check(account);
        Ok(())
    }

    /// Checks every account's invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.accounts
            .iter()
            .try_for_each(|account| account.check())?;
        let latest = latest_clock(&self.accounts);
        match self.accounts_clock {
            Some(kept) if kept != latest => Err(format!(
                "partition {} keeps {kept:?} as its accounts' latest clock, which is {latest:?}",
                self.number
            )),
            _ => Ok(()),
        }
    }
}

/// The latest of the accounts' clocks (a read of every account).
fn latest_clock(accounts: &[Arc<Account>]) -> Option<Instant> {
    accounts.iter().map(|a| a.clock).max()
}

/// SEMANTICS §2.1 check 5, the future bound: judged against the stream's receive time.
fn check_future(
    catalog: &Catalog,
    message: &Message<'_>,
    received: Option<Instant>,
) -> Result<(), DeadLetter> {
    let Some(received) = received else {
        return Ok(());
    };
    let ts = message.ts();
    let future_max = catalog.rules.future_max;
    if ts > received.saturating_add(future_max) {
        return Err(DeadLetter {
            reason: DeadReason::TsTooFarAhead,
            detail: format!(
                "ts {ts} is more than {future_max} after the stream received it ({received})"
            ),
            account: None,
            ts: None,
        });
    }
    Ok(())
}

/// Checks an account's invariants in debug builds (every test); compiled out of release builds,
/// where the check would cost as much as applying the message.
fn debug_check(account: &Account) {
    if cfg!(debug_assertions) {
        if let Err(broken) = account.check() {
            panic!("engine invariant broken: {broken}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_fnv1a_64() {
        // Reference values of FNV-1a 64 ("" and "a" are the published test vectors).
        assert_eq!(
            partition_of("", u32::MAX),
            (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(
            partition_of("a", u32::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(partition_of("acct_42", 1), 0);
        let spread: std::collections::BTreeSet<u32> = (0..1000)
            .map(|i| partition_of(&format!("acct_{i}"), 16))
            .collect();
        assert_eq!(spread.len(), 16);
    }
}
