//! Liveness and readiness: the [`Health`] flags the pipeline sets, read by `/healthz` and
//! `/readyz`, and by the service and the HTTP API on every request.
//!
//! Owns: live, ready and the reason why not, and the problems that hold readiness off until
//! cleared whatever the pipeline says (snapshots failing, say).
//!
//! Must never: take its lock per event or per request (whether ready is one atomic load,
//! [`Health::is_ready`]; the lock is taken only on state changes and probes), or fail on a
//! poisoned lock (no call that panics runs between the fields' updates, so the state under it
//! is sound).
//!
//! Invariants: `ready_now` is the state's `ready` with no problem raised, stored under the
//! lock on every change; a reader of the reason never pairs a flag with another state's reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Liveness and readiness, set by the pipeline and read by `/healthz` and `/readyz`. Cheap to
/// clone (one `Arc`). Starts live and not ready (reason `"starting"`).
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    live: AtomicBool,
    /// Whether ready now, readable without the lock (the service asks on every request).
    ready_now: AtomicBool,
    /// Ready, and why not: one lock so a reader never pairs a flag with another state's reason.
    /// Taken only on state changes and probes, never per event.
    ready: Mutex<Readiness>,
}

#[derive(Debug)]
struct Readiness {
    /// What the pipeline last said (caught up, disconnected, stopping...).
    ready: bool,
    reason: String,
    /// Problems that hold readiness off whatever the pipeline says, until cleared (snapshots
    /// failing, say), by kind, in the order raised.
    problems: Vec<(&'static str, String)>,
}

impl Readiness {
    fn now(&self) -> bool {
        self.ready && self.problems.is_empty()
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            inner: Arc::new(HealthState {
                live: AtomicBool::new(true),
                ready_now: AtomicBool::new(false),
                ready: Mutex::new(Readiness {
                    ready: false,
                    reason: "starting".to_string(),
                    problems: Vec::new(),
                }),
            }),
        }
    }

    /// False makes `/healthz` answer 503: the process is wedged and should be restarted.
    pub fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::Relaxed);
    }

    fn update(&self, change: impl FnOnce(&mut Readiness)) {
        // A panic while holding this lock cannot leave the state half-written (no call that
        // panics runs between the fields' updates), so a poisoned lock is still sound.
        let mut state = self
            .inner
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut state);
        self.inner.ready_now.store(state.now(), Ordering::Release);
    }

    /// False makes `/readyz` answer 503 with `reason` (e.g. "restoring snapshots", "NATS
    /// disconnected"); the reason is kept but not shown while ready. A problem raised with
    /// [`Health::set_problem`] keeps `/readyz` at 503 even when this says ready.
    pub fn set_ready(&self, ready: bool, reason: &str) {
        self.update(|state| {
            state.ready = ready;
            state.reason.clear();
            state.reason.push_str(reason);
        });
    }

    /// Raises (`Some`) or clears (`None`) a problem of `kind` that holds readiness off until
    /// cleared, whatever [`Health::set_ready`] says meanwhile; `/readyz` names it.
    pub fn set_problem(&self, kind: &'static str, problem: Option<String>) {
        self.update(|state| {
            let at = state.problems.iter().position(|(k, _)| *k == kind);
            match (at, problem) {
                (Some(at), Some(text)) => state.problems[at].1 = text,
                (None, Some(text)) => state.problems.push((kind, text)),
                (Some(at), None) => {
                    state.problems.remove(at);
                }
                (None, None) => {}
            }
        });
    }

    /// Whether ready (one atomic load; the reason needs [`Health::readiness`]).
    pub fn is_ready(&self) -> bool {
        self.inner.ready_now.load(Ordering::Acquire)
    }

    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Whether ready, and why not: the first problem raised, else the reason last given.
    pub fn readiness(&self) -> (bool, String) {
        let state = self
            .inner
            .ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let reason = match state.problems.first() {
            Some((_, problem)) => problem.clone(),
            None => state.reason.clone(),
        };
        (state.now(), reason)
    }
}
