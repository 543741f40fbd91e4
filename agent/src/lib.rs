//! why502: explains HTTP 502 spikes from kernel evidence.
//!
//! The data's way through the agent is the module tree, each layer importing only the
//! layers below it:
//!
//! 1. [`model`]: the vocabulary every stage shares (events, failure kinds, incidents).
//! 2. [`bus`]: typed topics that stages publish to and subscribe to.
//! 3. [`sources`]: what publishes: the kernel programs' ring buffer (decoded, enriched),
//!    pollers of the kernel's aggregate maps, and host sampling.
//! 4. [`correlate`]: events in, incidents out.
//! 5. [`sinks`]: what subscribes: the incident store, the local API, the metrics.
//! 6. [`agent`]: wires one to the other; [`client`] and [`cli`] sit on top.
//!
//! [`config`], [`timefmt`] and [`error_chain`] are leaves every layer may use.

pub mod agent;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod correlate;
pub mod model;
pub mod sinks;
pub mod sources;
pub mod timefmt;

/// An error with its sources, on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
