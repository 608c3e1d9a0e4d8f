//! A seeded generator of realistic message logs for the shipped sample catalog
//! (`config/catalog.toml`): the sample log the README replays, and test input.
//!
//! Owns: a scenario of a few dozen accounts over five weeks of event time that exercises every
//! feature: every plan and meter, dims, tiers, time windows, expiring and scoped grants, the
//! three policies and a policy override, holds committed, released and left to expire,
//! reversals, voids, adjustments, duplicates, backdated events, malformed messages and ticks.
//!
//! Must never: depend on anything but its seed (no clock, no OS randomness), or produce a log
//! for another catalog (meter and plan names are those of `config/catalog.toml`).

use std::fmt::Write as _;

use crate::time::Instant;

/// SplitMix64: tiny, fast, and good enough to pick workloads. Not for anything secret.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`; `bound` > 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        // Multiply-shift: unbiased enough for workloads, and branch-free.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

struct Account {
    id: String,
    plan: &'static str,
    /// Relative usage volume: 1 is light.
    intensity: u64,
    meters: &'static [&'static str],
    events: Vec<(String, Instant)>,
    next_event: u32,
    open_holds: Vec<(String, Instant)>,
    grants: Vec<String>,
}

/// The sample scenario: `accounts` accounts, about `messages` messages, starting
/// 2026-09-01T00:00:00Z and running five weeks (all in the past, so a broker that stamps receive
/// times never finds them too far ahead). Returns one JSON message per entry.
pub fn scenario(seed: u64, accounts: usize, messages: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let start: Instant = Instant(1_788_220_800_000); // 2026-09-01T00:00:00Z
    let end = Instant(start.0 + 35 * 86_400_000);
    let mut log: Vec<String> = Vec::with_capacity(messages + accounts * 4);
    let mut people: Vec<Account> = (0..accounts)
        .map(|i| {
            let (plan, meters): (&'static str, &'static [&'static str]) = match i % 6 {
                0 | 1 => ("payg", &["api_call", "llm_token", "export"]),
                2 => ("starter", &["api_call", "llm_token", "storage_gb_hour"]),
                3 => (
                    "pro",
                    &["api_call", "llm_token", "gpu_second", "storage_gb_hour"],
                ),
                4 => ("team_weekly", &["api_call", "export", "storage_gb_hour"]),
                _ => ("daily_test", &["api_call", "llm_token"]),
            };
            Account {
                id: format!("acct_{:02}", i + 1),
                plan,
                intensity: 1 + rng.below(6),
                meters,
                events: Vec::new(),
                next_event: 1,
                open_holds: Vec::new(),
                grants: Vec::new(),
            }
        })
        .collect();

    // Day zero: plans, opening grants, one overage and one auto top-up override.
    for (index, account) in people.iter_mut().enumerate() {
        let ts = start;
        if account.plan != "payg" {
            log.push(format!(
                r#"{{"type":"set_plan","id":"{}-plan","account":"{}","ts":"{ts}","plan":"{}"}}"#,
                account.id, account.id, account.plan
            ));
        }
        let amount = [25, 40, 60, 120][index % 4];
        let grant_id = format!("{}-g1", account.id);
        let expiry = if index % 3 == 0 {
            format!(
                r#","expires_at":"{}""#,
                Instant(start.0 + (10 + index as i64 % 12) * 86_400_000)
            )
        } else {
            String::new()
        };
        log.push(format!(
            r#"{{"type":"grant","id":"{grant_id}","account":"{}","ts":"{ts}","amount":"{amount}","cost_basis":"0.01"{expiry}}}"#,
            account.id
        ));
        account.grants.push(grant_id);
        if index % 5 == 1 {
            let promo = format!("{}-promo", account.id);
            log.push(format!(
                r#"{{"type":"grant","id":"{promo}","account":"{}","ts":"{ts}","amount":"10","source":"promotion","priority":5,"scope":["api_call"],"expires_at":"{}"}}"#,
                account.id,
                Instant(start.0 + 7 * 86_400_000)
            ));
            account.grants.push(promo);
        }
        if account.plan == "pro" {
            log.push(format!(
                r#"{{"type":"grant","id":"{}-gpu","account":"{}","ts":"{ts}","amount":"300.5","credit_type":"compute_credit","cost_basis":"0.02"}}"#,
                account.id, account.id
            ));
        }
        if index == 0 {
            log.push(format!(
                r#"{{"type":"set_policy","id":"{}-pol","account":"{}","ts":"{ts}","policy":{{"kind":"overage","overage_limit":"15","overage_price":"0.02"}}}}"#,
                account.id, account.id
            ));
        }
        if index == 6 {
            log.push(format!(
                r#"{{"type":"set_policy","id":"{}-pol","account":"{}","ts":"{ts}","policy":{{"kind":"auto_topup","threshold":"5","amount":"20","price":"0.011","max_per_period":2,"cooldown":"6h"}}}}"#,
                account.id, account.id
            ));
        }
    }

    let total_intensity: u64 = people.iter().map(|a| a.intensity).sum();
    let step_ms = (end.0 - start.0) / messages.max(1) as i64;
    let mut now = start;
    let mut next_tick = Instant(start.0 + 3_600_000);
    let mut tick_number = 0u32;
    let mut malformed = 0u32;
    while log.len() < messages && now < end {
        now = Instant(now.0 + step_ms / 2 + rng.below(step_ms as u64) as i64);
        while next_tick <= now {
            tick_number += 1;
            log.push(format!(
                r#"{{"type":"tick","id":"tick-{tick_number}","ts":"{next_tick}"}}"#
            ));
            next_tick = Instant(next_tick.0 + 3_600_000);
        }
        // Pick an account weighted by intensity.
        let mut pick = rng.below(total_intensity);
        let index = people
            .iter()
            .position(|a| {
                if pick < a.intensity {
                    true
                } else {
                    pick -= a.intensity;
                    false
                }
            })
            .unwrap_or(0);
        let roll = rng.below(1000);
        let account = &mut people[index];
        let id = &account.id;
        let message = match roll {
            // Malformed input of many kinds.
            0..=4 => {
                malformed += 1;
                match malformed % 8 {
                    0 => "{\"id\":\"broken".to_string(),
                    1 => format!(
                        r#"{{"id":"bad-{malformed}","account":"{id}","meter":"teleport","quantity":"1","ts":"{now}"}}"#
                    ),
                    2 => format!(
                        r#"{{"id":"bad-{malformed}","account":"{id}","meter":"api_call","quantity":"-3","ts":"{now}"}}"#
                    ),
                    3 => format!(
                        r#"{{"id":"bad-{malformed}","account":"acct 42!","meter":"api_call","quantity":"1","ts":"{now}"}}"#
                    ),
                    4 => format!(
                        r#"{{"type":"refund","id":"bad-{malformed}","account":"{id}","ts":"{now}"}}"#
                    ),
                    5 => format!(
                        r#"{{"id":"bad-{malformed}","account":"{id}","meter":"api_call","quantity":"1"}}"#
                    ),
                    6 => format!(
                        r#"{{"id":"bad-{malformed}","account":"{id}","meter":"api_call","quantity":"0.0000000001","ts":"{now}"}}"#
                    ),
                    _ => format!(
                        r#"{{"id":"bad-{malformed}","account":"{id}","meter":"api_call","quantity":"1","ts":"{}"}}"#,
                        Instant(now.0 - 40 * 86_400_000)
                    ),
                }
            }
            // A duplicate of an earlier event, published again.
            5..=24 if !account.events.is_empty() => {
                let (event_id, _) =
                    account.events[rng.below(account.events.len() as u64) as usize].clone();
                format!(
                    r#"{{"id":"{event_id}","account":"{id}","meter":"api_call","quantity":"1","ts":"{now}"}}"#
                )
            }
            // Reverse an earlier event.
            25..=29 if !account.events.is_empty() => {
                let (event_id, _) =
                    account.events[rng.below(account.events.len() as u64) as usize].clone();
                let n = account.next_event;
                account.next_event += 1;
                format!(
                    r#"{{"type":"reverse","id":"{id}-rev{n}","account":"{id}","ts":"{now}","event_id":"{event_id}","reason":"customer dispute"}}"#
                )
            }
            // Holds: reserve GPU time, later commit or release, or let the ttl expire.
            30..=49 if account.meters.contains(&"gpu_second") => {
                let n = account.next_event;
                account.next_event += 1;
                if let Some((hold, _)) = account.open_holds.pop() {
                    if rng.chance(700) {
                        let used = 30 + rng.below(1800);
                        format!(
                            r#"{{"type":"commit","id":"{id}-c{n}","account":"{id}","ts":"{now}","hold_id":"{hold}","quantity":"{used}"}}"#
                        )
                    } else {
                        format!(
                            r#"{{"type":"release","id":"{id}-r{n}","account":"{id}","ts":"{now}","hold_id":"{hold}"}}"#
                        )
                    }
                } else {
                    let hold = format!("{id}-h{n}");
                    let ttl = if rng.chance(200) { "10m" } else { "6h" };
                    account.open_holds.push((hold.clone(), now));
                    format!(
                        r#"{{"type":"reserve","id":"{hold}","account":"{id}","ts":"{now}","meter":"gpu_second","quantity":"{}","ttl":"{ttl}"}}"#,
                        600 + rng.below(3000)
                    )
                }
            }
            // Operator corrections and top-ups bought by hand.
            50..=52 => {
                let n = account.next_event;
                account.next_event += 1;
                match rng.below(3) {
                    0 => format!(
                        r#"{{"type":"adjust","id":"{id}-adj{n}","account":"{id}","ts":"{now}","amount":"5","reason":"goodwill credit"}}"#
                    ),
                    1 => format!(
                        r#"{{"type":"adjust","id":"{id}-adj{n}","account":"{id}","ts":"{now}","amount":"-2.5","reason":"billing correction"}}"#
                    ),
                    _ => {
                        let grant_id = format!("{id}-g{n}");
                        account.grants.push(grant_id.clone());
                        format!(
                            r#"{{"type":"grant","id":"{grant_id}","account":"{id}","ts":"{now}","amount":"50","cost_basis":"0.0095"}}"#
                        )
                    }
                }
            }
            53 if account.grants.len() > 1 => {
                let grant = account
                    .grants
                    .remove(rng.below(account.grants.len() as u64) as usize);
                let n = account.next_event;
                account.next_event += 1;
                format!(
                    r#"{{"type":"void_grant","id":"{id}-void{n}","account":"{id}","ts":"{now}","grant_id":"{grant}","reason":"chargeback"}}"#
                )
            }
            // Usage, the bulk of the log; a few backdated by up to a day.
            _ => {
                let n = account.next_event;
                account.next_event += 1;
                let event_id = format!("{id}-e{n}");
                let meter = *rng.pick(account.meters);
                let ts = if rng.chance(15) {
                    Instant(now.0 - rng.below(86_400_000) as i64)
                } else {
                    now
                };
                let scale = account.intensity;
                let (quantity, dims) = match meter {
                    "api_call" => ((1 + rng.below(40 * scale)).to_string(), String::new()),
                    "llm_token" => {
                        let model = if rng.chance(300) { "large" } else { "small" };
                        let region = if rng.chance(400) { "eu" } else { "us" };
                        (
                            (500 + rng.below(30_000 * scale)).to_string(),
                            format!(r#","dims":{{"model":"{model}","region":"{region}"}}"#),
                        )
                    }
                    "gpu_second" => ((10 + rng.below(900 * scale)).to_string(), String::new()),
                    "storage_gb_hour" => (
                        format!("{}.{}", rng.below(200 * scale), rng.below(10)),
                        String::new(),
                    ),
                    _ => (
                        format!("{}.{:02}", rng.below(6), rng.below(100)),
                        String::new(),
                    ),
                };
                account.events.push((event_id.clone(), ts));
                let mut line = String::new();
                let _ = write!(
                    line,
                    r#"{{"id":"{event_id}","account":"{id}","meter":"{meter}","quantity":"{quantity}","ts":"{ts}"{dims}}}"#
                );
                line
            }
        };
        log.push(message);
    }
    // Close the story: a last tick past every period end so final invoice lines appear.
    tick_number += 1;
    log.push(format!(
        r#"{{"type":"tick","id":"tick-{tick_number}","ts":"{end}"}}"#
    ));
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_is_deterministic_per_seed() {
        assert_eq!(scenario(7, 12, 800), scenario(7, 12, 800));
        assert_ne!(scenario(7, 12, 800), scenario(8, 12, 800));
        let log = scenario(7, 12, 800);
        assert!(log.len() >= 800 && log.len() < 900, "{}", log.len());
    }

    #[test]
    fn rng_below_stays_in_bounds() {
        let mut rng = Rng::new(1);
        for bound in [1u64, 2, 7, 1000] {
            for _ in 0..1000 {
                assert!(rng.below(bound) < bound);
            }
        }
    }
}
