//! `loadgen baseline postgres|redis`: the same debits as a workload, done without creditflow,
//! in PostgreSQL transactions or Redis Lua, one round trip per event.
//!
//! Owns: preparing the store, opening `--connections` clients, driving the plan through them,
//! cleaning up, and printing the result (and `--report-json`).
//!
//! Must never: leave its tables or keys behind after a run that completed, or reach NATS.

use anyhow::Context as _;

use crate::baseline::{self, BaselineResult};
use crate::nats::INPUT_PREFIX;

use super::{load_catalog, BaselineArgs, StoreKind};

pub async fn baseline_command(
    args: BaselineArgs,
    command_line: &str,
) -> anyhow::Result<BaselineResult> {
    let catalog = load_catalog(&args.workload.catalog)?;
    let spec = args.workload.spec(&catalog, INPUT_PREFIX)?;
    let plan = baseline::plan(&catalog, spec.clone());
    let connections = args.connections.max(1);
    let result = match args.store {
        StoreKind::Postgres => {
            baseline::PostgresStore::prepare(&args.postgres).await?;
            let mut stores = Vec::new();
            for _ in 0..connections {
                stores.push(baseline::PostgresStore::connect(&args.postgres).await?);
            }
            let (result, stores) = baseline::drive("postgres", stores, &plan).await?;
            drop(stores);
            baseline::PostgresStore::cleanup(&args.postgres).await?;
            result
        }
        StoreKind::Redis => {
            let namespace = format!("loadgen:{}", spec.run_id);
            let mut stores = Vec::new();
            for _ in 0..connections {
                stores.push(baseline::RedisStore::connect(&args.redis, &namespace).await?);
            }
            let (result, mut stores) = baseline::drive("redis", stores, &plan).await?;
            stores[0].cleanup(&plan).await?;
            result
        }
    };
    println!("loadgen baseline {:?} — {command_line}", args.store);
    println!(
        "  {} operations ({} applied, {} rejected, {} duplicates; {} malformed refused before the store) over {} connections in {:.2} s",
        result.operations,
        result.applied,
        result.rejected,
        result.duplicates,
        result.refused_before_store,
        result.connections,
        result.elapsed_s
    );
    println!("  rate: {:.0} events/s", result.per_s);
    println!(
        "  per event (closed loop, each connection waits for its answer): {}",
        crate::report::percentiles_line(&result.latency)
    );
    if let Some(path) = &args.report_json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(result)
}
