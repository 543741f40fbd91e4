//! Bounded label values: the first `max` distinct values of a label are kept as they are,
//! later ones are folded into `other`, so that a port scan or a storm of short-lived
//! processes cannot grow the number of series without bound. First come, first kept:
//! series never change names under a dashboard once they exist.

use std::collections::HashSet;

use prometheus::{IntCounterVec, Registry};

use super::{registry::counter, MetricsError};
use crate::{config::MetricsConfig, model::event::ProcessRef};

pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct LabelCap {
    admitted: HashSet<String>,
    max: usize,
    folded: u64,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        Self {
            admitted: HashSet::new(),
            max,
            folded: 0,
        }
    }

    /// The value to use for `value`: itself if admitted (or room is left), else `other`.
    pub fn admit(&mut self, value: &str) -> String {
        if self.admitted.contains(value) {
            return value.to_string();
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(value.to_string());
            return value.to_string();
        }
        self.folded += 1;
        OTHER.to_string()
    }

    /// Values folded into `other` so far.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

/// The capped labels every part of the metrics shares: one upstream is one value, whatever
/// series it appears in.
pub struct Labels {
    upstreams: LabelCap,
    proxies: LabelCap,
    services: LabelCap,
    endpoints: LabelCap,
    folds: IntCounterVec,
}

impl Labels {
    pub fn new(config: &MetricsConfig, r: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            upstreams: LabelCap::new(config.max_upstreams),
            proxies: LabelCap::new(config.max_proxies),
            services: LabelCap::new(config.max_services),
            endpoints: LabelCap::new(config.max_upstreams),
            folds: counter(
                r,
                "why502_metric_label_values_folded_total",
                "Label values folded into `other` because of the configured caps.",
                &["label"],
            )?,
        })
    }

    pub fn upstream(&mut self, value: &str) -> String {
        capped(&mut self.upstreams, value, "upstream", &self.folds)
    }

    pub fn proxy(&mut self, value: &str) -> String {
        capped(&mut self.proxies, value, "proxy", &self.folds)
    }

    /// The proxy label of an event's process (`unknown` when the kernel did not know it).
    pub fn proxy_of(&mut self, process: Option<&ProcessRef>) -> String {
        match process {
            Some(p) => self.proxy(&p.comm),
            None => "unknown".to_string(),
        }
    }

    pub fn service(&mut self, value: &str) -> String {
        capped(&mut self.services, value, "service", &self.folds)
    }

    /// A process's service label: its systemd unit, else its name.
    pub fn service_of(&mut self, process: Option<&ProcessRef>) -> String {
        let name = process
            .map(|p| {
                p.info
                    .as_ref()
                    .and_then(|i| i.unit.clone())
                    .unwrap_or_else(|| p.comm.clone())
            })
            .unwrap_or_else(|| "unknown".into());
        self.service(&name)
    }

    pub fn endpoint(&mut self, value: &str) -> String {
        capped(&mut self.endpoints, value, "endpoint", &self.folds)
    }
}

fn capped(cap: &mut LabelCap, value: &str, label: &str, folds: &IntCounterVec) -> String {
    let admitted = cap.admit(value);
    if admitted == OTHER && value != OTHER {
        folds.with_label_values(&[label]).inc();
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_beyond_the_cap() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.admit("c"), OTHER);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.folded(), 1);
    }
}
