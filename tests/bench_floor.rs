//! The engine bench's floor (benches/support/floor.rs), the baseline the engine's figures are
//! stated against, checked here so a wrong floor cannot flatter or shame the engine: its
//! self-check, and random batches against a reference written separately (a `HashSet` and a
//! `VecDeque` for the remembered ids, a `HashMap` of balances).

#[path = "../benches/support/floor.rs"]
mod floor;

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;

#[test]
fn the_floor_passes_its_self_check() {
    floor::self_check();
}

const RATES: [i64; 3] = [1, 2, 3];

#[derive(Default)]
struct Reference {
    balances: HashMap<String, i64>,
    remembered: HashSet<String>,
    order: VecDeque<String>,
    bound: usize,
    applied: u64,
    rejected: u64,
    duplicates: u64,
}

impl Reference {
    fn apply(&mut self, account: &str, id: &str, meter: u8, quantity: i64) {
        // The engine keys its dedupe index by account and id; so does the floor.
        let key = format!("{account}\u{ff}{id}");
        if self.remembered.contains(&key) {
            self.duplicates += 1;
            return;
        }
        self.remembered.insert(key.clone());
        self.order.push_back(key);
        if self.order.len() > self.bound {
            let oldest = self.order.pop_front().expect("longer than the bound");
            self.remembered.remove(&oldest);
        }
        let cost = quantity * RATES[usize::from(meter % 3)];
        match self.balances.get_mut(account) {
            Some(balance) if *balance >= cost => {
                *balance -= cost;
                self.applied += 1;
            }
            _ => self.rejected += 1,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_floor_matches_a_reference(
        accounts in 1usize..12,
        balance in 0i64..40,
        bound in 1usize..24,
        events in prop::collection::vec((0usize..14, 0usize..40, 0u8..3, 0i64..5), 0..300),
        batch in 1usize..40,
    ) {
        let ids: Vec<String> = (0..accounts).map(|i| format!("a{i}")).collect();
        let mut ledger = floor::Floor::new(&ids, balance, bound, RATES);
        let mut reference = Reference {
            balances: ids.iter().map(|id| (id.clone(), balance)).collect(),
            bound,
            ..Reference::default()
        };
        // Account numbers past the last are unknown accounts.
        let names: Vec<String> = events.iter().map(|e| format!("a{}", e.0)).collect();
        let event_ids: Vec<String> = events.iter().map(|e| format!("e{}", e.1)).collect();
        let inputs: Vec<floor::Input> = events
            .iter()
            .enumerate()
            .map(|(k, e)| floor::Input {
                account: &names[k],
                id: &event_ids[k],
                meter: e.2,
                quantity: e.3,
            })
            .collect();
        for chunk in inputs.chunks(batch) {
            ledger.apply_batch(chunk);
        }
        for input in &inputs {
            reference.apply(input.account, input.id, input.meter, input.quantity);
        }
        prop_assert_eq!(
            (ledger.applied, ledger.rejected, ledger.duplicates),
            (reference.applied, reference.rejected, reference.duplicates)
        );
        let (balances, drawn) = ledger.totals();
        prop_assert_eq!(balances, reference.balances.values().sum::<i64>());
        prop_assert_eq!(balances + drawn, balance * accounts as i64);
    }
}
