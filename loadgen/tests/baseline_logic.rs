//! The baselines' logic without the servers: a workload planned into debits and credits,
//! driven over several connections into the in-memory store (the semantics the PostgreSQL
//! transaction and the Redis script implement), ends with exactly the balances the engine
//! computes for the same messages.

use std::sync::Arc;

use creditflow::engine::{Engine, Envelope};
use creditflow::time::Instant;
use loadgen::baseline::{drive, plan, MemoryStore, Op};
use loadgen::schedule::RateShape;
use loadgen::workload::{parse_mix, Limit, Workload, WorkloadSpec};

const CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/catalog.toml");

fn spec(catalog: &creditflow::catalog::Catalog) -> WorkloadSpec {
    WorkloadSpec {
        seed: 21,
        run_id: "b1".into(),
        base_ts: "2026-11-24T10:00:00Z".parse::<Instant>().unwrap(),
        partitions: 16,
        subject_prefix: "creditflow.in".into(),
        accounts: 300,
        account_prefix: "lg".into(),
        zipf: 1.0,
        // Unit-priced meters (tiers depend on a cumulative quantity the baselines approximate).
        meters: parse_mix(catalog, "api_call=5,llm_token=3,export=2").unwrap(),
        quantity_max: 100,
        grant_amount: "10".into(),
        topup_fraction: 0.03,
        dup_fraction: 0.02,
        dup_late_fraction: 0.01,
        malformed_fraction: 0.01,
        // A late event cannot spend a grant made after its ts in the engine (effective_at);
        // a balance column knows nothing of that, so the comparison leaves late events out.
        late_fraction: 0.0,
        late_max_ms: 0,
        rate: RateShape::Constant { rate: 10_000.0 },
        limit: Limit::Events(20_000),
        probe_interval: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_semantics_end_with_the_engines_balances() {
    let catalog = Arc::new(creditflow::catalog::load::from_path(CATALOG.as_ref()).unwrap());
    let spec = spec(&catalog);
    let plan = plan(&catalog, spec.clone());
    assert_eq!(
        plan.refused,
        Workload::new(spec.clone())
            .filter(|p| p.kind == loadgen::workload::Kind::Malformed)
            .count() as u64
    );
    assert!(plan.ops.iter().any(|op| matches!(op, Op::Credit { .. })));

    let store = MemoryStore::default();
    let stores = vec![store.clone(), store.clone(), store.clone(), store.clone()];
    let (result, _) = drive("memory", stores, &plan).await.unwrap();
    assert_eq!(result.operations, plan.ops.len() as u64);
    assert_eq!(
        result.applied + result.rejected + result.duplicates,
        result.operations
    );
    assert!(
        result.rejected > 500,
        "hot accounts on 10 credits run out: {result:?}"
    );
    assert!(result.duplicates > 300, "{result:?}");
    assert!(result.per_s > 0.0);

    let mut engine = Engine::new(catalog.clone(), 16);
    let mut outputs = Vec::new();
    for (index, p) in Workload::new(spec).enumerate() {
        let subject =
            creditflow::wire::subject::subject("creditflow.in", p.partition, p.kind.subject_kind());
        engine.apply(
            &Envelope {
                payload: &p.payload,
                seq: index as u64 + 1,
                subject: &subject,
                received: None,
            },
            &mut outputs,
        );
    }
    let credit = catalog.credit_type_id("credit").unwrap();
    let state = store.state.lock().unwrap();
    assert!(state.balances.len() > 200);
    for ((account, credit_type), balance) in &state.balances {
        assert_eq!(credit_type, "credit");
        let expected = engine
            .account(account)
            .expect("the engine has the account")
            .balance(credit);
        assert_eq!(i128::from(*balance), expected.0, "balance of {account}");
    }
    assert_eq!(engine.stats().duplicates, result.duplicates);
}
