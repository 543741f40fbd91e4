//! why502: explains HTTP 502 spikes from kernel evidence.
//!
//! The data's way through the agent, one module per stage: [`probes`] (loading the kernel
//! programs) → [`events`] (decoding their records) → [`enrich`] (procfs details) →
//! [`pipeline`] (the bus later stages subscribe to). [`agent`] wires them together.

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod correlate;
pub mod enrich;
pub mod events;
pub mod host;
pub mod metrics;
pub mod pipeline;
pub mod probes;
pub mod responses;
pub mod sampling;
pub mod store;
pub mod timefmt;
