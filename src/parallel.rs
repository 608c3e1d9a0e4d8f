//! Work over independent items on up to one thread per core (start-up work on whole
//! partitions: loading their snapshots, copying them for the snapshot writer).
//!
//! Owns: [`per_core`], [`per_core_with`]. Must never: change the order of the results, or
//! swallow a worker's panic (it is resumed on the caller's thread).

use std::sync::atomic::{AtomicUsize, Ordering};

/// `work` applied to each of `items`, on up to one scoped thread per core (each takes the next
/// item not yet taken); the results in the items' order.
pub fn per_core<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    per_core_with(items, || (), |(), item| work(item))
}

/// [`per_core`] where each thread keeps state of its own across its items (made by `state`
/// when the thread starts, dropped when it ends): a buffer reused from one item to the next.
pub fn per_core_with<T: Sync, S, R: Send>(
    items: &[T],
    state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    let mut own = state();
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(at) else {
                            return mine;
                        };
                        mine.push((at, work(&mut own, item)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(mine) => mine,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    done.sort_by_key(|(at, _)| *at);
    done.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::per_core;

    #[test]
    fn results_come_in_the_items_order() {
        let items: Vec<u64> = (0..1000).collect();
        assert_eq!(
            per_core(&items, |x| x * 3),
            (0..1000).map(|x| x * 3).collect::<Vec<_>>()
        );
        assert!(per_core(&[] as &[u64], |x| *x).is_empty());
    }

    /// Each thread's state is made on that thread and lives across its items: per thread, the
    /// items it took see 0, 1, 2, ... items taken before them.
    #[test]
    fn each_thread_keeps_its_state_across_its_items() {
        let items: Vec<u64> = (0..1000).collect();
        let results = super::per_core_with(
            &items,
            || (std::thread::current().id(), 0usize),
            |(made_on, taken), x| {
                assert_eq!(*made_on, std::thread::current().id());
                *taken += 1;
                (x * 3, *made_on, *taken - 1)
            },
        );
        let values: Vec<u64> = results.iter().map(|r| r.0).collect();
        assert_eq!(values, (0..1000).map(|x| x * 3).collect::<Vec<_>>());
        let mut by_thread = std::collections::HashMap::<_, Vec<usize>>::new();
        for (_, thread, before) in results {
            by_thread.entry(thread).or_default().push(before);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!((1..=cores).contains(&by_thread.len()));
        for mut seen in by_thread.into_values() {
            seen.sort_unstable();
            assert_eq!(seen, (0..seen.len()).collect::<Vec<_>>());
        }
    }
}
