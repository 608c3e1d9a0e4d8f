//! The workload: a pure, seeded sequence of input messages for the processor, each with its
//! scheduled send time, partition subject and `Nats-Msg-Id`.
//!
//! Owns: the choice of every message (account by uniform or Zipf skew, meter from the catalog
//! mix, dims, quantity, opening grants and top-ups, duplicates, malformed and late events, the
//! latency probes) and its exact bytes.
//!
//! Must never: read a clock, the network or OS randomness. Everything derives from the
//! [`WorkloadSpec`] (seed, run id and base time included): the same spec gives the same
//! messages, byte for byte, on every machine. Event time is *virtual*: `ts` = `base_ts` + the
//! message's scheduled offset (a live run sets `base_ts` to the wall clock at its start, so `ts`
//! is the time the message was due, never later than the time it is sent).
//!
//! Invariants: slots are yielded in scheduled order; every message of account `a` goes to
//! partition `partition_of(a, partitions)`, on its `usage` subject for usage events (and the
//! malformed messages a producer might send) and its `cmd` subject for commands (grants,
//! probes' releases); an account's opening grant precedes its first usage of that credit type;
//! probe `n` is scheduled at `n × probe_interval`.

use std::collections::VecDeque;
use std::fmt::Write as _;

use bytes::Bytes;
use creditflow::catalog::Catalog;
use creditflow::engine::partition_of;
use creditflow::sample::Rng;
use creditflow::time::Instant;
use creditflow::wire::output::push_json_string;
use creditflow::wire::subject::SubjectKind;

use crate::schedule::{Nanos, RateShape, Schedule};

/// Accounts at most (the Zipf table costs 8 bytes each).
pub const ACCOUNTS_MAX: u32 = 10_000_000;
/// Earlier messages remembered as candidates for duplicates.
pub const RECENT_MAX: usize = 4096;
/// Credit types a workload can open grants in (one bit each per account).
pub const CREDIT_TYPES_MAX: usize = 64;

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// After this many workload messages (probes not counted).
    Events(u64),
    /// When the next workload message would be scheduled at or after this offset.
    Duration(Nanos),
}

/// One meter of the mix.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterChoice {
    pub name: String,
    /// Relative weight in the mix (> 0).
    pub weight: u32,
    pub credit_type: String,
    /// Dims to pick from, uniformly (an empty set of pairs means "no dims").
    pub dims: Vec<Vec<(String, String)>>,
}

/// Everything that decides a workload.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub seed: u64,
    /// Part of every message id, so runs against the same stream do not collide.
    pub run_id: String,
    /// Event time of scheduled offset 0.
    pub base_ts: Instant,
    pub partitions: u32,
    /// Partition subjects are `<subject_prefix>.<partition>.<kind>`.
    pub subject_prefix: String,
    pub accounts: u32,
    /// Accounts are `<account_prefix>_<index>`.
    pub account_prefix: String,
    /// Zipf exponent of account popularity; 0 = uniform.
    pub zipf: f64,
    pub meters: Vec<MeterChoice>,
    /// Usage quantities are whole numbers in 1..=quantity_max.
    pub quantity_max: u32,
    /// Credits of each opening grant and each top-up (a decimal string).
    pub grant_amount: String,
    /// Fraction of slots that are top-up grants.
    pub topup_fraction: f64,
    /// Fraction of slots that re-send a recent message with the same id and `Nats-Msg-Id`
    /// (the broker's duplicate window catches these).
    pub dup_fraction: f64,
    /// Fraction of slots that re-send an earlier message with the same id but a `Nats-Msg-Id`
    /// the broker has not seen (`<id>#late`): what a duplicate outside the broker's window looks
    /// like to the broker, without waiting two minutes. The engine's own dedupe must catch it.
    pub dup_late_fraction: f64,
    /// Fraction of slots that are malformed (bad JSON, unknown meter, negative quantity, bad
    /// timestamp, unknown field), each a dead letter.
    pub malformed_fraction: f64,
    /// Fraction of usage events whose `ts` is up to `late_max_ms` before their scheduled time.
    pub late_fraction: f64,
    pub late_max_ms: i64,
    pub rate: RateShape,
    pub limit: Limit,
    /// One latency probe every this many ns; `None` for no probes.
    pub probe_interval: Option<Nanos>,
}

/// What a message is, for counting and for matching probe results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Usage,
    LateUsage,
    OpeningGrant,
    Topup,
    Duplicate,
    LateDuplicate,
    Malformed,
    /// Probe number.
    Probe(u64),
}

impl Kind {
    /// The kind of subject a message of this kind is published on.
    pub fn subject_kind(self) -> SubjectKind {
        match self {
            Kind::OpeningGrant | Kind::Topup | Kind::Probe(_) => SubjectKind::Command,
            Kind::Usage
            | Kind::LateUsage
            | Kind::Duplicate
            | Kind::LateDuplicate
            | Kind::Malformed => SubjectKind::Usage,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::LateUsage => "late_usage",
            Kind::OpeningGrant => "opening_grant",
            Kind::Topup => "topup",
            Kind::Duplicate => "duplicate",
            Kind::LateDuplicate => "late_duplicate",
            Kind::Malformed => "malformed",
            Kind::Probe(_) => "probe",
        }
    }
}

/// One message to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Scheduled offset from the run's start.
    pub at: Nanos,
    pub partition: u32,
    pub msg_id: String,
    pub payload: Bytes,
    pub kind: Kind,
}

/// Usage of one account, priced by the baselines: the decoded form of a usage message.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageFacts {
    pub account: u32,
    pub meter: usize,
    pub quantity: u32,
    pub dims: usize,
}

/// Zipf(s) over `[0, n)` by inversion of a cumulative table: obviously right, 8 bytes per rank.
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u32, exponent: f64) -> Zipf {
        assert!(n > 0 && exponent > 0.0);
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for rank in 0..n {
            sum += 1.0 / f64::from(rank + 1).powf(exponent);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let u = unit(rng);
        let rank = self.cdf.partition_point(|&c| c <= u);
        rank.min(self.cdf.len() - 1) as u32
    }
}

/// Uniform in [0, 1) with 53 bits.
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The mix of every meter in the catalog with weight 1, each with the dims its price versions
/// name (a meter whose dimension rules are optional may also come without dims).
pub fn catalog_mix(catalog: &Catalog) -> Vec<MeterChoice> {
    catalog
        .meters
        .iter()
        .map(|meter| meter_choice(catalog, &meter.name, 1).expect("a catalog meter"))
        .collect()
}

/// One meter of the catalog with `weight`; `None` if the catalog has no such meter.
pub fn meter_choice(catalog: &Catalog, name: &str, weight: u32) -> Option<MeterChoice> {
    let id = catalog.meter_id(name)?;
    let meter = catalog.meter(id);
    let version = meter.versions.last()?;
    let mut dims: Vec<Vec<(String, String)>> = version
        .dimensions
        .iter()
        .map(|rule| rule.matches.clone())
        .collect();
    if !version.dimension_required {
        dims.push(Vec::new());
    }
    Some(MeterChoice {
        name: meter.name.clone(),
        weight,
        credit_type: catalog.credit_type(meter.credit_type).name.clone(),
        dims,
    })
}

/// Parses `api_call=60,llm_token=30` against the catalog.
pub fn parse_mix(catalog: &Catalog, text: &str) -> Result<Vec<MeterChoice>, String> {
    let mut mix = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight of {name:?} is not a whole number"))?;
        if weight == 0 {
            return Err(format!("weight of {name:?} must be > 0"));
        }
        mix.push(
            meter_choice(catalog, name.trim(), weight)
                .ok_or_else(|| format!("the catalog has no meter {name:?}"))?,
        );
    }
    if mix.is_empty() {
        return Err("the meter mix is empty".into());
    }
    Ok(mix)
}

/// For each partition, an account `probe_<k>` that hashes to it (the smallest such k).
pub fn probe_accounts(partitions: u32) -> Vec<String> {
    let mut found: Vec<Option<String>> = vec![None; partitions as usize];
    let mut missing = partitions as usize;
    let mut k = 0u64;
    while missing > 0 {
        let name = format!("probe_{k}");
        let p = partition_of(&name, partitions) as usize;
        if found[p].is_none() {
            found[p] = Some(name);
            missing -= 1;
        }
        k += 1;
        assert!(
            k < 1_000_000 + u64::from(partitions) * 1000,
            "no probe account for some partition"
        );
    }
    found.into_iter().map(|a| a.expect("filled")).collect()
}

/// The id of probe `n` of run `run_id`, and back.
pub fn probe_id(run_id: &str, n: u64) -> String {
    format!("probe-{run_id}-{n}")
}

/// A release of the never-opened hold `probe`: the processor rejects it (`unknown_hold`) and
/// emits `command.result` `result:<account>:<id>`, in order with the partition's other messages.
pub fn release_payload(id: &str, account: &str, ts: Instant) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"release","id":"{id}","account":"{account}","ts":"{ts}","hold_id":"probe"}}"#
    ))
}

/// A generated workload: an iterator of [`Planned`] messages in scheduled order.
pub struct Workload {
    spec: WorkloadSpec,
    rng: Rng,
    zipf: Option<Zipf>,
    schedule: Schedule,
    /// Offset of the next workload slot, computed ahead.
    next_at: Nanos,
    slots: u64,
    /// Messages decided but not yet sent (a usage waiting behind its account's opening grant).
    pending: VecDeque<Pending>,
    /// Bit `t` set: the account has its opening grant in credit type `t` of `credit_types`.
    opened: Vec<u64>,
    credit_types: Vec<String>,
    /// Credit type index of each meter of the mix.
    meter_type: Vec<usize>,
    weight_total: u64,
    recent: VecDeque<(u32, String, Bytes)>,
    probe_accounts: Vec<String>,
    next_probe: u64,
    /// Running totals by kind.
    pub counts: Counts,
}

#[derive(Clone, Debug)]
enum Pending {
    Usage {
        account: u32,
        meter: usize,
        late: bool,
    },
}

/// Messages generated so far, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub usage: u64,
    pub late_usage: u64,
    pub opening_grants: u64,
    pub topups: u64,
    pub duplicates: u64,
    pub late_duplicates: u64,
    pub malformed: u64,
    pub probes: u64,
}

impl Counts {
    /// Workload messages (probes excluded).
    pub fn workload(&self) -> u64 {
        self.usage
            + self.late_usage
            + self.opening_grants
            + self.topups
            + self.duplicates
            + self.late_duplicates
            + self.malformed
    }
}

impl Workload {
    pub fn new(spec: WorkloadSpec) -> Workload {
        assert!(spec.partitions > 0, "partitions > 0");
        assert!(
            spec.accounts > 0 && spec.accounts <= ACCOUNTS_MAX,
            "accounts in 1..={ACCOUNTS_MAX}"
        );
        assert!(!spec.meters.is_empty(), "a non-empty meter mix");
        assert!(spec.quantity_max > 0, "quantity_max > 0");
        let mut credit_types: Vec<String> = Vec::new();
        let mut meter_type = Vec::new();
        for meter in &spec.meters {
            assert!(meter.weight > 0, "meter weights > 0");
            let index = match credit_types.iter().position(|t| *t == meter.credit_type) {
                Some(index) => index,
                None => {
                    credit_types.push(meter.credit_type.clone());
                    credit_types.len() - 1
                }
            };
            meter_type.push(index);
        }
        assert!(credit_types.len() <= CREDIT_TYPES_MAX);
        let zipf = (spec.zipf > 0.0).then(|| Zipf::new(spec.accounts, spec.zipf));
        let mut schedule = Schedule::new(spec.rate.clone());
        let next_at = schedule.next_offset();
        Workload {
            rng: Rng::new(spec.seed),
            zipf,
            schedule,
            next_at,
            slots: 0,
            pending: VecDeque::new(),
            opened: vec![0; spec.accounts as usize],
            weight_total: spec.meters.iter().map(|m| u64::from(m.weight)).sum(),
            credit_types,
            meter_type,
            recent: VecDeque::with_capacity(RECENT_MAX),
            probe_accounts: probe_accounts(spec.partitions),
            next_probe: 0,
            counts: Counts::default(),
            spec,
        }
    }

    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    pub fn probe_accounts(&self) -> &[String] {
        &self.probe_accounts
    }

    pub fn account_name(&self, index: u32) -> String {
        format!("{}_{}", self.spec.account_prefix, index)
    }

    /// True when the workload slot `slots` falls inside the limit.
    fn slot_in_limit(&self) -> bool {
        match self.spec.limit {
            Limit::Events(n) => self.slots < n,
            Limit::Duration(d) => self.next_at < d,
        }
    }

    fn ts_at(&self, at: Nanos) -> Instant {
        Instant(self.spec.base_ts.0 + (at / 1_000_000) as i64)
    }

    fn subject_partition(&self, account: &str) -> u32 {
        partition_of(account, self.spec.partitions)
    }

    fn pick_account(&mut self) -> u32 {
        match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng),
            None => self.rng.below(u64::from(self.spec.accounts)) as u32,
        }
    }

    fn pick_meter(&mut self) -> usize {
        let mut x = self.rng.below(self.weight_total);
        for (index, meter) in self.spec.meters.iter().enumerate() {
            let w = u64::from(meter.weight);
            if x < w {
                return index;
            }
            x -= w;
        }
        unreachable!("x < weight_total")
    }

    fn chance(&mut self, fraction: f64) -> bool {
        fraction > 0.0 && unit(&mut self.rng) < fraction
    }

    fn next_workload(&mut self, at: Nanos) -> Planned {
        let slot = self.slots;
        if let Some(Pending::Usage {
            account,
            meter,
            late,
        }) = self.pending.pop_front()
        {
            return self.usage(slot, at, account, meter, late);
        }
        let run = self.spec.run_id.clone();
        // One draw decides the kind, so changing one fraction does not shift the others' picks.
        let u = unit(&mut self.rng);
        let s = &self.spec;
        let malformed_to = s.malformed_fraction;
        let dup_to = malformed_to + s.dup_fraction;
        let late_dup_to = dup_to + s.dup_late_fraction;
        let topup_to = late_dup_to + s.topup_fraction;
        if u < malformed_to {
            return self.malformed(slot, at);
        }
        if u < late_dup_to && !self.recent.is_empty() {
            let pick = self.rng.below(self.recent.len() as u64) as usize;
            let (partition, msg_id, payload) = self.recent[pick].clone();
            return if u < dup_to {
                self.counts.duplicates += 1;
                Planned {
                    at,
                    partition,
                    msg_id,
                    payload,
                    kind: Kind::Duplicate,
                }
            } else {
                self.counts.late_duplicates += 1;
                Planned {
                    at,
                    partition,
                    msg_id: format!("{msg_id}#late"),
                    payload,
                    kind: Kind::LateDuplicate,
                }
            };
        }
        if u >= late_dup_to && u < topup_to {
            let account = self.pick_account();
            let credit_type = self.rng.below(self.credit_types.len() as u64) as usize;
            let id = format!("t-{run}-{slot}");
            self.counts.topups += 1;
            return self.grant(at, account, credit_type, id, Kind::Topup);
        }
        let account = self.pick_account();
        let meter = self.pick_meter();
        let late = self.chance(self.spec.late_fraction);
        let credit_type = self.meter_type[meter];
        if self.opened[account as usize] & (1 << credit_type) == 0 {
            self.opened[account as usize] |= 1 << credit_type;
            self.pending.push_back(Pending::Usage {
                account,
                meter,
                late,
            });
            let id = format!("g-{run}-{slot}");
            self.counts.opening_grants += 1;
            return self.grant(at, account, credit_type, id, Kind::OpeningGrant);
        }
        self.usage(slot, at, account, meter, late)
    }

    fn grant(
        &mut self,
        at: Nanos,
        account: u32,
        credit_type: usize,
        id: String,
        kind: Kind,
    ) -> Planned {
        let name = self.account_name(account);
        let mut json = format!(
            r#"{{"type":"grant","id":"{id}","account":"{name}","ts":"{}","amount":"{}""#,
            self.ts_at(at),
            self.spec.grant_amount
        );
        if self.credit_types[credit_type] != "credit" {
            json.push_str(r#","credit_type":"#);
            push_json_string(&mut json, &self.credit_types[credit_type]);
        }
        json.push('}');
        if kind == Kind::Topup {
            // A top-up for an account not yet opened in that type opens it.
            self.opened[account as usize] |= 1 << credit_type;
        }
        Planned {
            at,
            partition: self.subject_partition(&name),
            msg_id: id,
            payload: Bytes::from(json),
            kind,
        }
    }

    fn usage(&mut self, slot: u64, at: Nanos, account: u32, meter: usize, late: bool) -> Planned {
        let name = self.account_name(account);
        let id = format!("e-{}-{slot}", self.spec.run_id);
        let quantity = 1 + self.rng.below(u64::from(self.spec.quantity_max));
        let choice = &self.spec.meters[meter];
        let dims_index = if choice.dims.is_empty() {
            None
        } else {
            Some(self.rng.below(choice.dims.len() as u64) as usize)
        };
        let mut ts = self.ts_at(at);
        if late {
            ts = Instant(ts.0 - 1 - self.rng.below(self.spec.late_max_ms.max(1) as u64) as i64);
            self.counts.late_usage += 1;
        } else {
            self.counts.usage += 1;
        }
        let choice = &self.spec.meters[meter];
        let mut json = String::with_capacity(192);
        let _ = write!(
            json,
            r#"{{"id":"{id}","account":"{name}","meter":"{}","quantity":"{quantity}","ts":"{ts}""#,
            choice.name
        );
        if let Some(dims) = dims_index.map(|i| &choice.dims[i]) {
            if !dims.is_empty() {
                json.push_str(r#","dims":{"#);
                for (i, (key, value)) in dims.iter().enumerate() {
                    if i > 0 {
                        json.push(',');
                    }
                    push_json_string(&mut json, key);
                    json.push(':');
                    push_json_string(&mut json, value);
                }
                json.push('}');
            }
        }
        json.push('}');
        let planned = Planned {
            at,
            partition: self.subject_partition(&name),
            msg_id: id,
            payload: Bytes::from(json),
            kind: if late { Kind::LateUsage } else { Kind::Usage },
        };
        if self.recent.len() == RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back((
            planned.partition,
            planned.msg_id.clone(),
            planned.payload.clone(),
        ));
        planned
    }

    fn malformed(&mut self, slot: u64, at: Nanos) -> Planned {
        let account = self.pick_account();
        let name = self.account_name(account);
        let id = format!("m-{}-{slot}", self.spec.run_id);
        let ts = self.ts_at(at);
        let meter = &self.spec.meters[0].name;
        let json = match self.rng.below(5) {
            // Cut in the middle: malformed_json.
            0 => format!(r#"{{"id":"{id}","account":"{name}","meter":"{meter}","quan"#),
            1 => format!(
                r#"{{"id":"{id}","account":"{name}","meter":"no_such_meter","quantity":"1","ts":"{ts}"}}"#
            ),
            2 => format!(
                r#"{{"id":"{id}","account":"{name}","meter":"{meter}","quantity":"-1","ts":"{ts}"}}"#
            ),
            3 => format!(
                r#"{{"id":"{id}","account":"{name}","meter":"{meter}","quantity":"1","ts":"yesterday"}}"#
            ),
            _ => format!(
                r#"{{"id":"{id}","account":"{name}","meter":"{meter}","quantity":"1","ts":"{ts}","colour":"blue"}}"#
            ),
        };
        self.counts.malformed += 1;
        Planned {
            at,
            partition: self.subject_partition(&name),
            msg_id: id,
            payload: Bytes::from(json),
            kind: Kind::Malformed,
        }
    }

    fn probe(&mut self, n: u64, at: Nanos) -> Planned {
        let partition = (n % u64::from(self.spec.partitions)) as u32;
        let account = &self.probe_accounts[partition as usize];
        let id = probe_id(&self.spec.run_id, n);
        let payload = release_payload(&id, account, self.ts_at(at));
        self.counts.probes += 1;
        Planned {
            at,
            partition,
            msg_id: id,
            payload,
            kind: Kind::Probe(n),
        }
    }

    /// The subject a planned message is published on.
    pub fn subject(&self, planned: &Planned) -> String {
        creditflow::wire::subject::subject(
            &self.spec.subject_prefix,
            planned.partition,
            planned.kind.subject_kind(),
        )
    }
}

impl Iterator for Workload {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        // A usage waiting behind its opening grant is sent even past the limit, so every
        // opening grant is followed by the usage that caused it.
        let more = self.slot_in_limit() || !self.pending.is_empty();
        if let Some(interval) = self.spec.probe_interval {
            if !self.spec.rate.is_max() {
                let probe_at = self.next_probe * interval;
                if more && probe_at <= self.next_at {
                    let n = self.next_probe;
                    self.next_probe += 1;
                    return Some(self.probe(n, probe_at));
                }
            }
        }
        if !more {
            return None;
        }
        let at = self.next_at;
        let planned = self.next_workload(at);
        self.slots += 1;
        self.next_at = self.schedule.next_offset();
        Some(planned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_low_ranks() {
        let zipf = Zipf::new(1000, 1.1);
        let mut rng = Rng::new(1);
        let mut hits = [0u32; 1000];
        for _ in 0..100_000 {
            hits[zipf.sample(&mut rng) as usize] += 1;
        }
        assert!(hits[0] > hits[1] && hits[1] > hits[10] && hits[10] > hits[900]);
        // Rank 1 has about 1/H(1000, 1.1) ≈ 18% of the mass.
        assert!((15_000..22_000).contains(&hits[0]), "{}", hits[0]);
    }

    #[test]
    fn probe_accounts_cover_every_partition() {
        for partitions in [1, 2, 16, 64] {
            let accounts = probe_accounts(partitions);
            for (p, account) in accounts.iter().enumerate() {
                assert_eq!(partition_of(account, partitions) as usize, p);
            }
        }
    }
}
