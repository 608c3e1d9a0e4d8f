//! creditflow: a stream processor for credit-based pricing.
pub mod catalog;
pub mod decimal;
pub mod time;
