//! loadgen: the load generator for creditflow deployments.
//!
//! Codemap:
//! - `schedule`: rate shapes and the open-loop schedule (pure).
//! - `workload`: the seeded message generator (pure: same spec, same bytes).
//! - `measure`: HDR latency histograms, probes, coordinated-omission-correct recording.
//! - `nats`: the wire contract's names, publishing with a bounded ack window, reading streams.
//! - `run`: a workload against NATS with an observer (`run`, `raw`, `fill`) and the live line.
//! - `verify`: the processor's outputs against the engine replaying the input stream.
//! - `baseline`: the same debits in PostgreSQL and Redis, one round trip per event.
//! - `query`: request load against the service (open or closed loop) and the echo responder.
//! - `report`: text, JSON and the SVG percentile plot.
//! - `svg`: the charts' page, frame, curves and legend (drawn by hand).
//! - `sweep`: latency against offered load, broker alone and processor, as a table and an SVG.
//! - `cli`: the subcommands (the binary only parses and calls these).
//!
//! Must never: use the wall clock or OS randomness inside `schedule` and `workload`; those two
//! are pure so every run can be reproduced from its seed.

pub mod baseline;
pub mod cli;
pub mod measure;
pub mod nats;
pub mod query;
pub mod report;
pub mod run;
pub mod schedule;
pub mod svg;
pub mod sweep;
pub mod verify;
pub mod workload;
