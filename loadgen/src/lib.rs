//! loadgen: the load generator for creditflow deployments.
//!
//! Codemap:
//! - `schedule`: rate shapes and the open-loop schedule (pure).
//! - `workload`: the seeded message generator (pure: same spec, same bytes).
//! - `measure`: HDR latency histograms, probes, coordinated-omission-correct recording.
//!
//! Must never: use the wall clock or OS randomness inside `schedule` and `workload`; those two
//! are pure so every run can be reproduced from its seed.

pub mod measure;
pub mod schedule;
pub mod workload;
