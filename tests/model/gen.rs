//! Seeded input generator: a realistic random message log for the model test.
//!
//! Owns: [`scenario`] (seed → log) and [`scenarios`] (a proptest strategy over seeds). The log
//! has a few accounts, grants with expiries, scopes and cost bases, usage on every meter,
//! duplicates, malformed messages (one defect each), holds, reversals of earlier ids, voids,
//! adjustments, plan and policy changes, and ticks advancing time by minutes to days so that
//! expiries, flushes and period closes happen. Timestamps mostly increase; some are backdated,
//! a few fall outside the window on purpose.
//!
//! Must never: depend on the model's state (the log is a pure function of seed, length and
//! catalog, so engine and model see exactly the same bytes).

use serde_json::{json, Map, Value};

use super::catalog::ModelCatalog;
use super::time::{format_ts, parse_ts, DAY, HOUR, MINUTE};

/// SplitMix64: tiny, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low + 1) as u64) as i64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Default)]
struct AccountLog {
    /// Ids of usage events and commits (reversal targets), with their `ts` when readable.
    charges: Vec<(String, Option<i64>)>,
    /// Ids of other commands (reversing them is `not_charged`).
    commands: Vec<String>,
    grant_ids: Vec<String>,
    /// Holds the generator believes open (the model decides).
    holds: Vec<String>,
}

struct Gen<'c> {
    rng: Rng,
    catalog: &'c ModelCatalog,
    now: i64,
    last_tick: Option<i64>,
    accounts: Vec<String>,
    logs: Vec<AccountLog>,
    counter: u64,
    /// Earlier account messages, for verbatim duplicates.
    history: Vec<Vec<u8>>,
    /// Each message with the instant the stream received it (the generator's `now`).
    out: Vec<(Vec<u8>, i64)>,
}

/// A message log of exactly `len` messages, a pure function of its arguments.
pub fn scenario(seed: u64, len: usize, catalog: &ModelCatalog) -> Vec<Vec<u8>> {
    scenario_received(seed, len, catalog)
        .into_iter()
        .map(|(payload, _)| payload)
        .collect()
}

/// [`scenario`] with the instant the stream received each message (for the future bound of
/// SEMANTICS §2.1 check 5): the generator's current time when it emitted the message. The
/// payloads are exactly those of [`scenario`], and a shorter log is a prefix of a longer one.
pub fn scenario_received(seed: u64, len: usize, catalog: &ModelCatalog) -> Vec<(Vec<u8>, i64)> {
    let mut rng = Rng::new(seed);
    let start = parse_ts("2026-11-24T09:00:00Z").expect("valid") + rng.range(0, DAY);
    let account_count = rng.range(2, 4) as usize;
    let mut g = Gen {
        rng,
        catalog,
        now: start,
        last_tick: None,
        accounts: (1..=account_count).map(|i| format!("acct_{i}")).collect(),
        logs: (0..account_count).map(|_| AccountLog::default()).collect(),
        counter: 0,
        history: Vec::new(),
        out: Vec::new(),
    };
    while g.out.len() < len {
        g.step();
    }
    g.out.truncate(len);
    g.out
}

/// A proptest strategy: `(seed, log)` with a length in `len`; print the seed on failure and
/// replay it with [`scenario`].
pub fn scenarios(
    catalog: ModelCatalog,
    len: std::ops::Range<usize>,
) -> impl proptest::strategy::Strategy<Value = (u64, Vec<Vec<u8>>)> {
    use proptest::prelude::*;
    (any::<u64>(), len).prop_map(move |(seed, len)| (seed, scenario(seed, len, &catalog)))
}

/// A JSON number with exactly this text (serde_json's `arbitrary_precision` keeps it).
fn number(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

const QUANTITIES: &[&str] = &[
    "1", "2", "3", "10", "0", "0.5", "2.25", "61", "120", "500", "1000", "5000", "0.000001",
];
const AMOUNTS: &[&str] = &[
    "5",
    "10",
    "20",
    "50",
    "100",
    "250",
    "1000",
    "0.75",
    "33.333333",
];
const BASES: &[&str] = &["0", "0.01", "0.008", "0.02"];

impl Gen<'_> {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    fn emit(&mut self, value: &Value) {
        let bytes = value.to_string().into_bytes();
        if value.get("account").is_some() {
            self.history.push(bytes.clone());
        }
        self.out.push((bytes, self.now));
    }

    fn tick(&mut self) {
        let id = self.fresh("tick-");
        let ts = format_ts(self.now);
        self.emit(&json!({"type": "tick", "id": id, "ts": ts}));
        self.last_tick = Some(self.now);
    }

    /// An amount as a string, or now and then as a JSON number.
    fn amount(&mut self, text: &str) -> Value {
        if self.rng.chance(10) {
            number(text)
        } else {
            Value::String(text.to_string())
        }
    }

    /// The `ts` of an account message: mostly near `now`, some backdated, a few out of window.
    fn message_ts(&mut self) -> i64 {
        let roll = self.rng.below(100);
        let ts = if roll < 85 {
            self.now + self.rng.range(-30_000, 60_000)
        } else if roll < 93 {
            self.now - self.rng.range(MINUTE, 6 * HOUR)
        } else if roll < 97 {
            self.now - self.rng.range(DAY, 3 * DAY)
        } else if roll < 98 {
            self.now + HOUR
        } else if roll < 99 {
            self.now - 40 * DAY
        } else {
            self.now + self.rng.range(0, 4 * MINUTE)
        };
        ts.max(0)
    }

    fn step(&mut self) {
        // Time passes; a tick keeps every account's clock close to `now`.
        if self.rng.chance(60) {
            self.now += self.rng.range(0, 120_000);
        }
        if self.last_tick.is_none_or(|t| self.now - t > 3 * MINUTE) {
            self.tick();
        }
        let account = self.rng.below(self.accounts.len() as u64) as usize;
        let roll = self.rng.below(100);
        match roll {
            0..=33 => self.usage(account),
            34..=43 => self.grant(account),
            44..=49 => self.reserve(account),
            50..=54 => self.commit(account),
            55..=56 => self.release(account),
            57..=61 => self.reverse(account),
            62..=64 => self.void(account),
            65..=68 => self.adjust(account),
            69..=70 => self.set_plan(account),
            71..=73 => self.set_policy(account),
            74..=79 => self.duplicate(),
            80..=83 => self.malformed(account),
            84..=87 => self.jump(),
            _ => self.usage(account),
        }
    }

    fn jump(&mut self) {
        let spans = [
            10 * MINUTE,
            45 * MINUTE,
            2 * HOUR,
            5 * HOUR,
            DAY,
            2 * DAY,
            7 * DAY,
        ];
        let weights = [35, 30, 15, 10, 6, 3, 1];
        let mut roll = self.rng.below(100);
        let mut span = spans[0];
        for (s, w) in spans.iter().zip(weights) {
            if roll < w {
                span = *s;
                break;
            }
            roll -= w;
        }
        self.now += span;
        self.tick();
    }

    fn base(&mut self, account: usize, kind: Option<&str>, prefix: &str) -> Map<String, Value> {
        let mut map = Map::new();
        if let Some(kind) = kind {
            map.insert("type".into(), json!(kind));
        }
        let id = self.fresh(prefix);
        map.insert("id".into(), json!(id));
        map.insert("account".into(), json!(self.accounts[account]));
        let ts = self.message_ts();
        map.insert("ts".into(), json!(format_ts(ts)));
        map
    }

    fn meter(&mut self) -> String {
        if self.rng.chance(2) {
            return "teleport".into();
        }
        let index = self.rng.below(self.catalog.meters.len() as u64) as usize;
        self.catalog.meters[index].name.clone()
    }

    fn usage(&mut self, account: usize) {
        let explicit_type = self.rng.chance(30);
        let mut map = self.base(account, explicit_type.then_some("usage"), "evt-");
        let meter = self.meter();
        map.insert("meter".into(), json!(meter));
        let quantity = *self.rng.pick(QUANTITIES);
        let quantity = self.amount(quantity);
        map.insert("quantity".into(), quantity);
        if self.rng.chance(20) {
            map.insert("dims".into(), json!({"region": "eu"}));
        }
        let id = map["id"].as_str().unwrap_or("").to_string();
        let ts = map.get("ts").and_then(Value::as_str).and_then(parse_ts);
        self.logs[account].charges.push((id, ts));
        self.emit(&Value::Object(map));
    }

    fn grant(&mut self, account: usize) {
        let mut map = self.base(account, Some("grant"), "cmd-");
        let ts = parse_ts(map["ts"].as_str().unwrap_or("")).unwrap_or(self.now);
        let amount = *self.rng.pick(AMOUNTS);
        let amount = self.amount(amount);
        map.insert("amount".into(), amount);
        let grant_id = if self.rng.chance(3) && !self.logs[account].grant_ids.is_empty() {
            Some(self.rng.pick(&self.logs[account].grant_ids).clone())
        } else if self.rng.chance(30) {
            Some(self.fresh("g-"))
        } else {
            None
        };
        if let Some(grant_id) = &grant_id {
            map.insert("grant_id".into(), json!(grant_id));
        }
        let id = map["id"].as_str().unwrap_or("").to_string();
        self.logs[account]
            .grant_ids
            .push(grant_id.unwrap_or(id.clone()));
        self.logs[account].commands.push(id);
        let credit_type = if self.rng.chance(80) {
            self.catalog.credit_types[0].name.clone()
        } else {
            let index = self.rng.below(self.catalog.credit_types.len() as u64) as usize;
            self.catalog.credit_types[index].name.clone()
        };
        if credit_type != "credit" || self.rng.chance(50) {
            map.insert("credit_type".into(), json!(credit_type));
        }
        if self.rng.chance(50) {
            map.insert("priority".into(), json!(*self.rng.pick(&[5, 50, 100, 200])));
        }
        let mut effective_at = ts;
        let roll = self.rng.below(100);
        if roll < 15 {
            effective_at = ts + *self.rng.pick(&[10 * MINUTE, HOUR]);
            map.insert("effective_at".into(), json!(format_ts(effective_at)));
        } else if roll < 20 {
            effective_at = ts - HOUR;
            map.insert("effective_at".into(), json!(format_ts(effective_at)));
        }
        if self.rng.chance(40) {
            let lifetime = *self
                .rng
                .pick(&[30 * MINUTE, 2 * HOUR, 6 * HOUR, DAY, 3 * DAY]);
            map.insert(
                "expires_at".into(),
                json!(format_ts(effective_at + lifetime)),
            );
        }
        if self.rng.chance(20) {
            let meters: Vec<String> = self
                .catalog
                .meters
                .iter()
                .filter(|m| m.credit_type == credit_type)
                .map(|m| m.name.clone())
                .collect();
            if !meters.is_empty() {
                let meter = self.rng.pick(&meters).clone();
                map.insert("scope".into(), json!([meter]));
            }
        }
        let basis = *self.rng.pick(BASES);
        if basis != "0" || self.rng.chance(20) {
            let basis = self.amount(basis);
            map.insert("cost_basis".into(), basis);
        }
        if self.rng.chance(20) {
            // Mostly sales; now and then an operator's import of an engine-made kind.
            let sources = [
                "purchase",
                "promotion",
                "purchase",
                "promotion",
                "rollover",
                "topup",
                "allowance",
                "adjustment",
            ];
            map.insert("source".into(), json!(*self.rng.pick(&sources)));
        }
        self.emit(&Value::Object(map));
    }

    fn reserve(&mut self, account: usize) {
        let mut map = self.base(account, Some("reserve"), "cmd-");
        let meter = self.meter();
        map.insert("meter".into(), json!(meter));
        let quantity = *self
            .rng
            .pick(&["1", "10", "60", "100", "250.5", "1000", "4000"]);
        let quantity = self.amount(quantity);
        map.insert("quantity".into(), quantity);
        map.insert(
            "ttl".into(),
            json!(*self.rng.pick(&["30s", "5m", "15m", "1h", "2h", "6h", "1d"])),
        );
        let id = map["id"].as_str().unwrap_or("").to_string();
        let hold_id = if self.rng.chance(5) && !self.logs[account].holds.is_empty() {
            self.rng.pick(&self.logs[account].holds).clone()
        } else if self.rng.chance(40) {
            self.fresh("h-")
        } else {
            id.clone()
        };
        if hold_id != id {
            map.insert("hold_id".into(), json!(hold_id));
        }
        self.logs[account].holds.push(hold_id);
        self.logs[account].commands.push(id);
        self.emit(&Value::Object(map));
    }

    fn take_hold(&mut self, account: usize) -> String {
        let holds = &mut self.logs[account].holds;
        if holds.is_empty() || self.rng.chance(10) {
            return "ghost-hold".into();
        }
        // Mostly the newest hold: products settle what they just reserved.
        let index = if self.rng.chance(70) {
            holds.len() - 1
        } else {
            self.rng.below(holds.len() as u64) as usize
        };
        holds.remove(index)
    }

    fn commit(&mut self, account: usize) {
        let mut map = self.base(account, Some("commit"), "cmd-");
        let hold_id = self.take_hold(account);
        map.insert("hold_id".into(), json!(hold_id));
        let quantity = *self
            .rng
            .pick(&["0", "1", "10", "60", "100", "1000", "3000"]);
        let quantity = self.amount(quantity);
        map.insert("quantity".into(), quantity);
        let id = map["id"].as_str().unwrap_or("").to_string();
        let ts = map.get("ts").and_then(Value::as_str).and_then(parse_ts);
        self.logs[account].charges.push((id, ts));
        self.emit(&Value::Object(map));
    }

    fn release(&mut self, account: usize) {
        let mut map = self.base(account, Some("release"), "cmd-");
        let hold_id = self.take_hold(account);
        map.insert("hold_id".into(), json!(hold_id));
        let id = map["id"].as_str().unwrap_or("").to_string();
        self.logs[account].commands.push(id);
        self.emit(&Value::Object(map));
    }

    fn reverse(&mut self, account: usize) {
        let mut map = self.base(account, Some("reverse"), "cmd-");
        let log = &self.logs[account];
        let roll = self.rng.below(100);
        let (event_id, event_ts) = if roll < 75 && !log.charges.is_empty() {
            // Mostly recent events, sometimes old ones.
            let recent = log.charges.len().saturating_sub(8);
            let from = if self.rng.chance(70) { recent } else { 0 };
            let index = self.rng.range(from as i64, log.charges.len() as i64 - 1) as usize;
            log.charges[index].clone()
        } else if roll < 90 && !log.commands.is_empty() {
            (self.rng.pick(&log.commands).clone(), None)
        } else {
            // A made-up id, sometimes with a ts long past (a window that has passed).
            let ts = self.now - self.rng.range(0, 10 * DAY);
            ("ghost-event".to_string(), Some(ts))
        };
        map.insert("event_id".into(), json!(event_id));
        if let Some(ts) = event_ts.filter(|_| self.rng.chance(60)) {
            map.insert("event_ts".into(), json!(format_ts(ts)));
        }
        if self.rng.chance(50) {
            map.insert("reason".into(), json!("customer complaint"));
        }
        let id = map["id"].as_str().unwrap_or("").to_string();
        self.logs[account].commands.push(id);
        self.emit(&Value::Object(map));
    }

    fn void(&mut self, account: usize) {
        let mut map = self.base(account, Some("void_grant"), "cmd-");
        let grant_id = if self.rng.chance(85) && !self.logs[account].grant_ids.is_empty() {
            self.rng.pick(&self.logs[account].grant_ids).clone()
        } else {
            "ghost-grant".to_string()
        };
        map.insert("grant_id".into(), json!(grant_id));
        let id = map["id"].as_str().unwrap_or("").to_string();
        self.logs[account].commands.push(id);
        self.emit(&Value::Object(map));
    }

    fn adjust(&mut self, account: usize) {
        let mut map = self.base(account, Some("adjust"), "cmd-");
        let amount = *self
            .rng
            .pick(&["5", "-3", "-50", "12.5", "-0.5", "100", "-1000"]);
        let amount = self.amount(amount);
        map.insert("amount".into(), amount);
        map.insert("reason".into(), json!("support credit"));
        if self.rng.chance(20) {
            let index = self.rng.below(self.catalog.credit_types.len() as u64) as usize;
            map.insert(
                "credit_type".into(),
                json!(self.catalog.credit_types[index].name),
            );
        }
        let id = map["id"].as_str().unwrap_or("").to_string();
        self.logs[account].commands.push(id);
        self.emit(&Value::Object(map));
    }

    fn set_plan(&mut self, account: usize) {
        let mut map = self.base(account, Some("set_plan"), "cmd-");
        let index = self.rng.below(self.catalog.plans.len() as u64) as usize;
        map.insert("plan".into(), json!(self.catalog.plans[index].name));
        let id = map["id"].as_str().unwrap_or("").to_string();
        self.logs[account].commands.push(id);
        self.emit(&Value::Object(map));
    }

    fn set_policy(&mut self, account: usize) {
        let mut map = self.base(account, Some("set_policy"), "cmd-");
        let credit_type = self.catalog.credit_types[0].name.clone();
        let policy = match self.rng.below(6) {
            0 => Value::Null,
            1 => json!({"kind": "reject"}),
            2 => json!({"kind": "overage",
                        "overage_limit": *self.rng.pick(&["0", "20", "100"]),
                        "overage_price": "0.015"}),
            3 => json!({"kind": "auto_topup", "credit_type": credit_type, "threshold": "10",
                        "amount": "50", "price": "0.01", "max_per_period": 2,
                        "cooldown": "0", "priority": 60, "fallback": "reject"}),
            4 => json!({"kind": "auto_topup", "credit_type": credit_type, "threshold": "15",
                        "target": "60", "price": "0.012", "max_per_period": 1,
                        "cooldown": "30m", "priority": 40, "fallback": "overage",
                        "overage_limit": "25", "overage_price": "0.03"}),
            _ => json!({"kind": "overage", "overage_limit": number("40"),
                        "overage_price": "0.0125"}),
        };
        map.insert("policy".into(), policy);
        let id = map["id"].as_str().unwrap_or("").to_string();
        self.logs[account].commands.push(id);
        self.emit(&Value::Object(map));
    }

    fn duplicate(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let index = self.rng.below(self.history.len() as u64) as usize;
        let bytes = self.history[index].clone();
        self.out.push((bytes, self.now));
    }

    /// One message with exactly one defect.
    fn malformed(&mut self, account: usize) {
        let ts = format_ts(self.now);
        let name = self.accounts[account].clone();
        let id = self.fresh("bad-");
        let usage = |extra: Value| {
            let mut v = json!({"id": id, "account": name, "meter": "api_call",
                               "quantity": "1", "ts": ts});
            if let (Value::Object(map), Value::Object(more)) = (&mut v, extra) {
                for (k, val) in more {
                    if val.is_null() {
                        map.remove(&k);
                    } else {
                        map.insert(k, val);
                    }
                }
            }
            v.to_string().into_bytes()
        };
        let bytes: Vec<u8> = match self.rng.below(28) {
            0 => b"not json at all".to_vec(),
            1 => b"[1,2,3]".to_vec(),
            2 => vec![b'{', 0xff, 0xfe, b'}'],
            3 => usage(json!({"type": "bogus"})),
            4 => usage(json!({"qty": "1"})),
            5 => usage(json!({"account": "acct 1"})),
            6 => usage(json!({"id": ""})),
            7 => usage(json!({"quantity": "-1"})),
            8 => usage(json!({"quantity": number("1e3")})),
            9 => usage(json!({"quantity": "0.0000000001"})),
            10 => usage(json!({"quantity": "1234567890123456789"})),
            11 => usage(json!({"ts": "yesterday"})),
            12 => usage(json!({"ts": null})),
            13 => usage(json!({"type": 5})),
            14 => usage(json!({"dims": {"pad": "x".repeat(self.catalog.rules.payload_max)}})),
            15 => usage(json!({"type": "grant", "meter": null, "quantity": null, "amount": "0"})),
            16 => usage(
                json!({"type": "grant", "meter": null, "quantity": null, "amount": "5",
                               "expires_at": "2020-01-01T00:00:00Z"}),
            ),
            17 => usage(
                json!({"type": "grant", "meter": null, "quantity": null, "amount": "5",
                               "scope": ["nope"]}),
            ),
            18 => usage(json!({"type": "adjust", "meter": null, "quantity": null,
                               "amount": "5"})),
            19 => usage(json!({"type": "reserve", "quantity": "5", "ttl": "5x"})),
            20 => usage(json!({"type": "set_plan", "meter": null, "quantity": null,
                               "plan": "platinum"})),
            21 => usage(json!({"quantity": "999999999999999999"})),
            22 => usage(json!({"ts": "2019-06-01T00:00:00Z"})),
            23 => usage(json!({"quantity": true})),
            24 => usage(json!({"id": 7})),
            25 => usage(json!({"meter": null})),
            26 => {
                // An unknown field nested past serde_json's 128 levels.
                let mut deep = json!(1);
                for _ in 0..200 {
                    deep = json!([deep]);
                }
                usage(json!({ "nested": deep }))
            }
            _ => json!({"type": "tick", "id": id, "ts": ts, "account": name})
                .to_string()
                .into_bytes(),
        };
        self.out.push((bytes, self.now));
    }
}
