//! Baselines: the workload's debits done the way teams do them without creditflow, one
//! round trip per event: a PostgreSQL transaction (idempotency row + conditional balance
//! update) or a Redis Lua script (SET NX + conditional DECRBY).
//!
//! Owns: turning a workload into [`Op`]s (same accounts, same ids, same prices as the engine:
//! every usage priced by `creditflow::catalog::pricing::price`), the driver that runs them over
//! several connections ([`drive`]), the two real stores and an in-memory one with the same
//! semantics ([`MemoryStore`]) that the tests check against the engine.
//!
//! Must never: batch or pipeline events (the point is the per-event cost a DIY design pays), or
//! split one account's events over two connections (its order would change, and so would its
//! rejections).
//!
//! Semantics per event, identical in every store: if the event id was seen, `Duplicate`;
//! otherwise remember it, then a debit succeeds only when the (account, credit type) row exists
//! with `balance >= amount` (`Applied`, balance decremented) and is `Rejected` otherwise; a
//! credit (grant or top-up) adds to the balance, creating the row. Amounts are integers in
//! 10^-9 credits (the engine's fixed point), so both stores compute exactly. The period's
//! cumulative quantity (tiered meters) is tracked while planning, before knowing whether the
//! event is rejected: exact for unit-priced meters, an approximation for tiered ones.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context as _};
use creditflow::catalog::pricing::{price, PriceRequest};
use creditflow::catalog::Catalog;
use creditflow::decimal::Quantity;
use creditflow::engine::partition_of;
use creditflow::wire::input::{decode, CommandKind, Message};
use serde::Serialize;

use crate::measure::{rate, Latency, Percentiles};
use crate::workload::{Kind, Workload, WorkloadSpec};

/// One database operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Debit {
        event_id: String,
        account: String,
        credit_type: String,
        /// 10^-9 credits.
        amount: i64,
    },
    Credit {
        event_id: String,
        account: String,
        credit_type: String,
        amount: i64,
    },
}

impl Op {
    pub fn account(&self) -> &str {
        match self {
            Op::Debit { account, .. } | Op::Credit { account, .. } => account,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected,
    Duplicate,
}

/// The operations of a workload, and what was left out (malformed or unpriceable messages,
/// which a service refuses before touching its database).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub refused: u64,
}

/// Plans a workload (its probes are ignored).
pub fn plan(catalog: &Catalog, mut spec: WorkloadSpec) -> Plan {
    spec.probe_interval = None;
    let mut plan = Plan::default();
    let mut cumulative: HashMap<(String, u16), Quantity> = HashMap::new();
    for planned in Workload::new(spec) {
        if matches!(planned.kind, Kind::Probe(_)) {
            continue;
        }
        let Ok(message) = decode(&planned.payload, catalog) else {
            plan.refused += 1;
            continue;
        };
        match message {
            Message::Usage(usage) => {
                let key = (usage.account.to_string(), usage.meter.0);
                let so_far = cumulative.get(&key).copied().unwrap_or(Quantity::ZERO);
                let request = PriceRequest {
                    meter: usage.meter,
                    quantity: usage.quantity,
                    dims: &usage.dims,
                    ts: usage.ts,
                    cumulative: so_far,
                };
                let Ok(priced) = price(catalog, &request) else {
                    plan.refused += 1;
                    continue;
                };
                cumulative.insert(key, so_far + priced.billed_quantity);
                let meter = catalog.meter(usage.meter);
                plan.ops.push(Op::Debit {
                    event_id: usage.id.to_string(),
                    account: usage.account.to_string(),
                    credit_type: catalog.credit_type(meter.credit_type).name.clone(),
                    amount: nano(priced.cost.0),
                });
            }
            Message::Command(command) => match command.kind {
                CommandKind::Grant(grant) => plan.ops.push(Op::Credit {
                    event_id: command.id.to_string(),
                    account: command.account.to_string(),
                    credit_type: catalog.credit_type(grant.credit_type).name.clone(),
                    amount: nano(grant.amount.0),
                }),
                _ => plan.refused += 1,
            },
            Message::Tick { .. } => plan.refused += 1,
        }
    }
    plan
}

fn nano(value: i128) -> i64 {
    i64::try_from(value).expect("an amount of a workload fits in i64 at 10^-9")
}

/// A database that applies one operation per round trip.
pub trait Store: Send + 'static {
    fn apply(&mut self, op: &Op) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BaselineResult {
    pub store: String,
    pub connections: usize,
    pub operations: u64,
    pub applied: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub refused_before_store: u64,
    pub elapsed_s: f64,
    pub per_s: f64,
    /// Per operation, as each connection saw it (closed loop: each waits for its answer).
    pub latency: Percentiles,
}

/// Runs `plan` over `stores` (one per connection), each account always on the same one.
pub async fn drive<S: Store>(
    name: &str,
    stores: Vec<S>,
    plan: &Plan,
) -> anyhow::Result<(BaselineResult, Vec<S>)> {
    assert!(!stores.is_empty());
    let connections = stores.len();
    let mut shares: Vec<Vec<Op>> = vec![Vec::new(); connections];
    for op in &plan.ops {
        shares[partition_of(op.account(), connections as u32) as usize].push(op.clone());
    }
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (mut store, ops) in stores.into_iter().zip(shares) {
        tasks.push(tokio::spawn(async move {
            let mut latency = Latency::new();
            let mut counts = [0u64; 3];
            for op in &ops {
                let began = std::time::Instant::now();
                let outcome = store.apply(op).await?;
                latency.record_scheduled(0, began.elapsed().as_nanos() as u64);
                counts[outcome as usize] += 1;
            }
            anyhow::Ok((store, latency, counts))
        }));
    }
    let mut result = BaselineResult {
        store: name.to_string(),
        connections,
        operations: plan.ops.len() as u64,
        refused_before_store: plan.refused,
        ..Default::default()
    };
    let mut latency = Latency::new();
    let mut stores = Vec::new();
    for task in tasks {
        let (store, l, counts) = task.await.context("a baseline worker panicked")??;
        latency.add(&l);
        result.applied += counts[Outcome::Applied as usize];
        result.rejected += counts[Outcome::Rejected as usize];
        result.duplicates += counts[Outcome::Duplicate as usize];
        stores.push(store);
    }
    let elapsed = start.elapsed();
    result.elapsed_s = elapsed.as_secs_f64();
    result.per_s = rate(result.operations, elapsed.as_nanos() as u64);
    result.latency = latency.percentiles();
    Ok((result, stores))
}

/// The reference semantics in memory (for tests; shares state between connections).
#[derive(Clone, Default)]
pub struct MemoryStore {
    pub state: std::sync::Arc<std::sync::Mutex<MemoryState>>,
}

#[derive(Default)]
pub struct MemoryState {
    pub seen: HashSet<String>,
    /// (account, credit type) → balance in 10^-9 credits.
    pub balances: HashMap<(String, String), i64>,
}

impl Store for MemoryStore {
    fn apply(&mut self, op: &Op) -> impl Future<Output = anyhow::Result<Outcome>> + Send {
        let state = self.state.clone();
        let op = op.clone();
        async move {
            let mut state = state.lock().expect("memory store lock");
            let (event_id, account, credit_type, amount, debit) = match &op {
                Op::Debit {
                    event_id,
                    account,
                    credit_type,
                    amount,
                } => (event_id, account, credit_type, *amount, true),
                Op::Credit {
                    event_id,
                    account,
                    credit_type,
                    amount,
                } => (event_id, account, credit_type, *amount, false),
            };
            if !state.seen.insert(event_id.clone()) {
                return Ok(Outcome::Duplicate);
            }
            let key = (account.clone(), credit_type.clone());
            if debit {
                match state.balances.get_mut(&key) {
                    Some(balance) if *balance >= amount => {
                        *balance -= amount;
                        Ok(Outcome::Applied)
                    }
                    _ => Ok(Outcome::Rejected),
                }
            } else {
                *state.balances.entry(key).or_insert(0) += amount;
                Ok(Outcome::Applied)
            }
        }
    }
}

/// Removes the PostgreSQL baseline's tables.
pub const POSTGRES_DROP: &str = "
DROP TABLE IF EXISTS loadgen_events;
DROP TABLE IF EXISTS loadgen_balances;";
/// Tables of the PostgreSQL baseline (dropped and created by [`PostgresStore::prepare`]).
pub const POSTGRES_SCHEMA: &str = "
DROP TABLE IF EXISTS loadgen_events;
DROP TABLE IF EXISTS loadgen_balances;
CREATE TABLE loadgen_events (id text PRIMARY KEY);
CREATE TABLE loadgen_balances (
    account text NOT NULL,
    credit_type text NOT NULL,
    balance bigint NOT NULL,
    PRIMARY KEY (account, credit_type)
);";
pub const POSTGRES_REMEMBER: &str =
    "INSERT INTO loadgen_events (id) VALUES ($1) ON CONFLICT DO NOTHING";
pub const POSTGRES_DEBIT: &str = "UPDATE loadgen_balances SET balance = balance - $1 \
     WHERE account = $2 AND credit_type = $3 AND balance >= $1";
pub const POSTGRES_CREDIT: &str = "INSERT INTO loadgen_balances (account, credit_type, balance) \
     VALUES ($2, $3, $1) ON CONFLICT (account, credit_type) \
     DO UPDATE SET balance = loadgen_balances.balance + EXCLUDED.balance";

/// One PostgreSQL connection: one transaction per event.
pub struct PostgresStore {
    client: tokio_postgres::Client,
    remember: tokio_postgres::Statement,
    debit: tokio_postgres::Statement,
    credit: tokio_postgres::Statement,
}

impl PostgresStore {
    pub async fn connect(config: &str) -> anyhow::Result<PostgresStore> {
        let (client, connection) = tokio_postgres::connect(config, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL ({config})"))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                eprintln!("loadgen: PostgreSQL connection: {err}");
            }
        });
        let remember = client.prepare(POSTGRES_REMEMBER).await?;
        let debit = client.prepare(POSTGRES_DEBIT).await?;
        let credit = client.prepare(POSTGRES_CREDIT).await?;
        Ok(PostgresStore {
            client,
            remember,
            debit,
            credit,
        })
    }

    /// Creates the baseline's tables afresh.
    pub async fn prepare(config: &str) -> anyhow::Result<()> {
        PostgresStore::batch(config, POSTGRES_SCHEMA).await
    }

    /// Drops the baseline's tables (outside the timed part).
    pub async fn cleanup(config: &str) -> anyhow::Result<()> {
        PostgresStore::batch(config, POSTGRES_DROP).await
    }

    async fn batch(config: &str, statements: &str) -> anyhow::Result<()> {
        let (client, connection) = tokio_postgres::connect(config, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL ({config})"))?;
        let handle = tokio::spawn(connection);
        client
            .batch_execute(statements)
            .await
            .context("creating or dropping the baseline tables")?;
        drop(client);
        let _ = handle.await;
        Ok(())
    }
}

impl Store for PostgresStore {
    fn apply(&mut self, op: &Op) -> impl Future<Output = anyhow::Result<Outcome>> + Send {
        let op = op.clone();
        async move {
            let transaction = self.client.transaction().await?;
            let (event_id, account, credit_type, amount, debit) = match &op {
                Op::Debit {
                    event_id,
                    account,
                    credit_type,
                    amount,
                } => (event_id, account, credit_type, *amount, true),
                Op::Credit {
                    event_id,
                    account,
                    credit_type,
                    amount,
                } => (event_id, account, credit_type, *amount, false),
            };
            if transaction.execute(&self.remember, &[event_id]).await? == 0 {
                transaction.rollback().await?;
                return Ok(Outcome::Duplicate);
            }
            let outcome = if debit {
                let rows = transaction
                    .execute(&self.debit, &[&amount, account, credit_type])
                    .await?;
                if rows == 1 {
                    Outcome::Applied
                } else {
                    Outcome::Rejected
                }
            } else {
                transaction
                    .execute(&self.credit, &[&amount, account, credit_type])
                    .await?;
                Outcome::Applied
            };
            // A rejected event is remembered too, as the engine does.
            transaction.commit().await?;
            Ok(outcome)
        }
    }
}

/// The Redis baseline's script: 0 applied, 1 rejected, 2 duplicate. Balances are integers in
/// 10^-9 credits; Lua numbers are doubles, exact up to 2^53 (9·10^6 credits), far above any
/// workload's balance.
pub const REDIS_SCRIPT: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 2 end
if ARGV[2] == 'credit' then
  redis.call('INCRBY', KEYS[2], ARGV[1])
  return 0
end
local balance = redis.call('GET', KEYS[2])
if balance and tonumber(balance) >= tonumber(ARGV[1]) then
  redis.call('DECRBY', KEYS[2], ARGV[1])
  return 0
end
return 1
"#;
/// How long an event id is remembered, like the engine's dedupe window (24 h).
pub const REDIS_DEDUPE_TTL: Duration = Duration::from_secs(86_400);

/// One Redis connection: one `EVALSHA` per event.
pub struct RedisStore {
    connection: redis::aio::MultiplexedConnection,
    script: redis::Script,
    /// Keys are `<namespace>:e:<event id>` and `<namespace>:b:<account>:<credit type>`.
    pub namespace: String,
}

impl RedisStore {
    pub async fn connect(url: &str, namespace: &str) -> anyhow::Result<RedisStore> {
        let client = redis::Client::open(url).with_context(|| format!("Redis URL {url}"))?;
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to Redis at {url}"))?;
        Ok(RedisStore {
            connection,
            script: redis::Script::new(REDIS_SCRIPT),
            namespace: namespace.to_string(),
        })
    }

    /// Deletes this run's keys (outside the timed part).
    pub async fn cleanup(&mut self, plan: &Plan) -> anyhow::Result<()> {
        let mut keys: HashSet<String> = HashSet::new();
        for op in &plan.ops {
            let (Op::Debit {
                event_id,
                account,
                credit_type,
                ..
            }
            | Op::Credit {
                event_id,
                account,
                credit_type,
                ..
            }) = op;
            keys.insert(format!("{}:e:{event_id}", self.namespace));
            keys.insert(format!("{}:b:{account}:{credit_type}", self.namespace));
        }
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(1000) {
            let _: () = redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut self.connection)
                .await?;
        }
        Ok(())
    }
}

impl Store for RedisStore {
    fn apply(&mut self, op: &Op) -> impl Future<Output = anyhow::Result<Outcome>> + Send {
        let (event_id, account, credit_type, amount, mode) = match op {
            Op::Debit {
                event_id,
                account,
                credit_type,
                amount,
            } => (event_id, account, credit_type, *amount, "debit"),
            Op::Credit {
                event_id,
                account,
                credit_type,
                amount,
            } => (event_id, account, credit_type, *amount, "credit"),
        };
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{}:e:{event_id}", self.namespace))
            .key(format!("{}:b:{account}:{credit_type}", self.namespace))
            .arg(amount)
            .arg(mode)
            .arg(REDIS_DEDUPE_TTL.as_secs());
        let mut connection = self.connection.clone();
        async move {
            let code: i64 = invocation.invoke_async(&mut connection).await?;
            Ok(match code {
                0 => Outcome::Applied,
                1 => Outcome::Rejected,
                2 => Outcome::Duplicate,
                other => bail!("the baseline script returned {other}"),
            })
        }
    }
}
