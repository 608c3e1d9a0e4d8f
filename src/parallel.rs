//! Work over independent items on up to one thread per core (start-up work on whole
//! partitions: loading their snapshots, copying them for the snapshot writer).
//!
//! Owns: [`per_core`]. Must never: change the order of the results, or swallow a worker's
//! panic (it is resumed on the caller's thread).

use std::sync::atomic::{AtomicUsize, Ordering};

/// `work` applied to each of `items`, on up to one scoped thread per core (each takes the next
/// item not yet taken); the results in the items' order.
pub fn per_core<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
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
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(at) else {
                            return mine;
                        };
                        mine.push((at, work(item)));
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
}
