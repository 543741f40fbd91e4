//! The incident store's health: whether incidents survive a restart, and saves lost. The
//! store's writer counts them itself (it has no bus to publish on); they are read at
//! scrape time from what [`Metrics::set_store_source`](super::Metrics::set_store_source)
//! gave.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntGauge, Opts, Registry};

use super::{registry::registered, MetricsError};

/// The store's counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounts {
    /// Incidents are kept in the file (false: in memory, lost at stop).
    pub persistent: bool,
    /// Saves the store refused (a full disk, an I/O error).
    pub write_errors: u64,
    /// Saves dropped before reaching the store (it could not keep up).
    pub dropped_writes: u64,
}

pub type StoreSource = Box<dyn Fn() -> StoreCounts + Send + Sync>;

pub struct StoreMetrics {
    source: OnceLock<StoreSource>,
    persistent: IntGauge,
    write_errors: IntCounter,
    dropped_writes: IntCounter,
}

impl StoreMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricsError> {
        Ok(Self {
            source: OnceLock::new(),
            persistent: registered(
                r,
                IntGauge::with_opts(Opts::new(
                    "why502_store_persistent",
                    "1 when incidents are kept in the store's file, 0 when only in memory \
                     (the file could not be used; see why502 status).",
                ))?,
            )?,
            write_errors: registered(
                r,
                IntCounter::with_opts(Opts::new(
                    "why502_store_write_errors_total",
                    "Incident saves the store refused (a full disk, an I/O error).",
                ))?,
            )?,
            dropped_writes: registered(
                r,
                IntCounter::with_opts(Opts::new(
                    "why502_store_dropped_writes_total",
                    "Incident saves dropped because the store could not keep up.",
                ))?,
            )?,
        })
    }

    /// Later calls are ignored: the agent has one store.
    pub fn set_source(&self, source: StoreSource) {
        if self.source.set(source).is_err() {
            log::warn!("metrics: a second incident store source ignored");
        }
    }

    /// Brings the series to the source's counts (before each render).
    pub fn refresh(&self) {
        let Some(source) = self.source.get() else {
            return;
        };
        let counts = source();
        self.persistent.set(i64::from(counts.persistent));
        // The store's counts only grow: the counters catch up by the difference.
        let catch_up = |counter: &IntCounter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.write_errors, counts.write_errors);
        catch_up(&self.dropped_writes, counts.dropped_writes);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };

    use super::StoreCounts;
    use crate::{config::MetricsConfig, sinks::metrics::Metrics};

    fn series(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(str::to_owned)
    }

    #[test]
    fn the_store_s_counts_are_read_at_each_render() {
        let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
        let failed = Arc::new(AtomicU64::new(3));
        let source = failed.clone();
        metrics.set_store_source(Box::new(move || StoreCounts {
            persistent: true,
            write_errors: source.load(Ordering::Relaxed),
            dropped_writes: 7,
        }));
        let text = metrics.render().unwrap();
        assert_eq!(
            series(&text, "why502_store_persistent").as_deref(),
            Some("1")
        );
        assert_eq!(
            series(&text, "why502_store_write_errors_total").as_deref(),
            Some("3")
        );
        assert_eq!(
            series(&text, "why502_store_dropped_writes_total").as_deref(),
            Some("7")
        );
        failed.store(5, Ordering::Relaxed);
        let text = metrics.render().unwrap();
        assert_eq!(
            series(&text, "why502_store_write_errors_total").as_deref(),
            Some("5")
        );
        assert_eq!(
            series(&text, "why502_store_dropped_writes_total").as_deref(),
            Some("7")
        );
    }
}
