//! creditflow: a stream processor for credit-based pricing.
pub mod decimal;
pub mod time;
pub mod catalog;
