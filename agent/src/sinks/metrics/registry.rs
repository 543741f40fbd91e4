//! Registering metrics: one helper per metric type, so that each part declares its series
//! in a line each.

use std::sync::Arc;

use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::MetricsError;

/// Registers `metric` and hands it back.
pub fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: C,
) -> Result<C, MetricsError> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

pub fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

pub fn gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

pub fn seconds(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<CounterVec, MetricsError> {
    registered(r, CounterVec::new(Opts::new(name, help), labels)?)
}

/// Registers a shared collector.
pub struct ArcCollector<C>(pub Arc<C>);

impl<C: prometheus::core::Collector> prometheus::core::Collector for ArcCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}
