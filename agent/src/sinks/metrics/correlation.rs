//! What the correlation engine's own tables refused (`why502_listener_table_refused_total`):
//! new listeners the listener table had no room for without evicting a current one (a
//! user opening listeners in a loop, or more listeners than the table holds). Read at
//! scrape time from the engine's [`CorrelationStats`].

use std::sync::{Arc, OnceLock};

use prometheus::{IntCounter, Registry};

use super::{registry::registered, MetricsError};
use crate::correlate::task::CorrelationStats;

pub struct CorrelationMetrics {
    stats: OnceLock<Arc<CorrelationStats>>,
    listener_table_refused: IntCounter,
}

impl CorrelationMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            stats: OnceLock::new(),
            listener_table_refused: registered(
                r,
                IntCounter::new(
                    "why502_listener_table_refused_total",
                    "New listeners the correlation's listener table refused: it was full of \
                     current listeners (or the listener's user held its share), so failures \
                     to them are not tied to their process.",
                )?,
            )?,
        })
    }

    /// Later calls are ignored: the agent has one engine.
    pub fn set_stats(&self, stats: Arc<CorrelationStats>) {
        if self.stats.set(stats).is_err() {
            log::warn!("metrics: a second correlation engine ignored");
        }
    }

    /// Brings the counter to the engine's count (before each render).
    pub fn refresh(&self) {
        let Some(stats) = self.stats.get() else {
            return;
        };
        let refused = stats
            .listener_table_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        let counter = &self.listener_table_refused;
        counter.inc_by(refused.saturating_sub(counter.get()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::Ordering, Arc};

    use crate::{
        config::MetricsConfig, correlate::task::CorrelationStats, sinks::metrics::Metrics,
    };

    #[test]
    fn the_engines_refusals_are_counted() {
        let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
        assert!(metrics
            .render()
            .unwrap()
            .contains("why502_listener_table_refused_total 0"));
        let stats = Arc::new(CorrelationStats::default());
        metrics.set_correlation_stats(stats.clone());
        stats.listener_table_refused.store(7, Ordering::Relaxed);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("why502_listener_table_refused_total 7"),
            "{text}"
        );
        stats.listener_table_refused.store(9, Ordering::Relaxed);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("why502_listener_table_refused_total 9"),
            "{text}"
        );
    }
}
