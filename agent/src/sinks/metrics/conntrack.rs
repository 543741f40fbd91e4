//! Conntrack lookups by outcome (`why502_conntrack_lookups_total{result}`): the resolver
//! counts them on the enrichment thread; they are read at scrape time from what
//! [`Metrics::set_conntrack_stats`](super::Metrics::set_conntrack_stats) gave.

use std::sync::{Arc, OnceLock};

use prometheus::{IntCounterVec, Registry};

use super::{registry::counter, MetricsError};
use crate::sources::conntrack::{ConntrackStats, Outcome};

pub struct ConntrackMetrics {
    stats: OnceLock<Arc<ConntrackStats>>,
    lookups: IntCounterVec,
}

impl ConntrackMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            stats: OnceLock::new(),
            lookups: counter(
                r,
                "why502_conntrack_lookups_total",
                "Lookups of a failed connection's real destination in the host's conntrack \
                 (a DNAT'd service address), by result: dnat, no_dnat, \
                 dnat_of_other_connections, no_entry, error, cached, rate_limited, unavailable.",
                &["result"],
            )?,
        })
    }

    /// Later calls are ignored: the agent has one resolver.
    pub fn set_stats(&self, stats: Arc<ConntrackStats>) {
        if self.stats.set(stats).is_err() {
            log::warn!("metrics: a second conntrack resolver ignored");
        }
    }

    /// Brings the series to the resolver's counts (before each render). No series
    /// without a resolver: conntrack turned off exports nothing.
    pub fn refresh(&self) {
        let Some(stats) = self.stats.get() else {
            return;
        };
        for outcome in Outcome::ALL {
            let counter = self.lookups.with_label_values(&[outcome.label()]);
            counter.inc_by(stats.get(outcome).saturating_sub(counter.get()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{
        config::MetricsConfig,
        sinks::metrics::Metrics,
        sources::conntrack::{ConntrackStats, Outcome},
    };

    #[test]
    fn lookups_are_exported_by_result_at_each_render() {
        let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
        assert!(!metrics
            .render()
            .unwrap()
            .contains("why502_conntrack_lookups_total"));
        let stats = Arc::new(ConntrackStats::default());
        metrics.set_conntrack_stats(stats.clone());
        stats.count(Outcome::Dnat);
        stats.count(Outcome::Dnat);
        stats.count(Outcome::RateLimited);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("why502_conntrack_lookups_total{result=\"dnat\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("why502_conntrack_lookups_total{result=\"rate_limited\"} 1"),
            "{text}"
        );
        stats.count(Outcome::Dnat);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("why502_conntrack_lookups_total{result=\"dnat\"} 3"),
            "{text}"
        );
    }
}
