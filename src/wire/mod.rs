//! The wire formats: input messages (JSON usage events and commands) and outputs.
pub mod ack_subject;
pub mod cloudevent;
pub mod input;
pub mod outline;
pub mod output;
pub mod subject;
