//! creditflow: a stream processor for credit-based pricing.
//!
//! Codemap (see ARCHITECTURE.md): `decimal` and `time` are the exact scalars; `catalog` prices;
//! `wire` is the input and output format; `engine` is the pure, deterministic credit engine;
//! `config` is the processor's operational config; `metrics` exports metrics and health.
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod dashboard;
pub mod decimal;
pub mod demo;
pub mod engine;
pub mod http_api;
pub mod lease;
pub mod metrics;
pub mod parallel;
pub mod pipeline;
pub mod processor;
pub mod recovery;
pub mod refusals;
pub mod sample;
pub mod service;
pub mod snapshot;
pub mod testkit;
pub mod time;
pub mod wire;
