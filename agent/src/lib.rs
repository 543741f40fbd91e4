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

/// An error with its sources, on one line, each said once: a library whose error repeats
/// its source's text (rusqlite: "file is not a database: Error code 26: file is not a
/// database") is shown with the fuller of the two.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        let last = parts.last_mut().expect("never empty");
        if text.contains(last.as_str()) {
            *last = text;
        } else if !last.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Plain(&'static str, #[source] Option<Box<Plain>>);

    fn chain(texts: &[&'static str]) -> Plain {
        texts
            .iter()
            .rev()
            .fold(None, |inner, t| Some(Plain(t, inner.map(Box::new))))
            .unwrap()
    }

    #[test]
    fn each_cause_once() {
        assert_eq!(
            super::error_chain(&chain(&["cannot open x", "no such file"])),
            "cannot open x: no such file"
        );
        assert_eq!(
            super::error_chain(&chain(&[
                "cannot open x",
                "file is not a database",
                "Error code 26: file is not a database"
            ])),
            "cannot open x: Error code 26: file is not a database"
        );
        assert_eq!(
            super::error_chain(&chain(&["cannot open x: denied", "denied"])),
            "cannot open x: denied"
        );
    }
}
