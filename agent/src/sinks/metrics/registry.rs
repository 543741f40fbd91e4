//! Registering metrics: one helper per metric type, so that each part declares its series
//! in a line each.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus::{proto::MetricType, CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::MetricsError;

/// Registers `metric` and hands it back; notes its families in [`catalog`].
pub fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: C,
) -> Result<C, MetricsError> {
    registry.register(Box::new(metric.clone()))?;
    let mut catalog = CATALOG.lock().unwrap_or_else(|p| p.into_inner());
    for family in metric.collect() {
        catalog.insert(family.name().to_owned(), family.get_field_type());
    }
    Ok(metric)
}

/// Every metric family ever registered through [`registered`], by name, with its type.
/// Process-wide because `prometheus::Registry` cannot list its collectors (and `gather`
/// leaves out the families without series yet); names and types are the code's own
/// constants, so every `Metrics` adds the same.
static CATALOG: Mutex<BTreeMap<String, MetricType>> = Mutex::new(BTreeMap::new());

/// The families noted by [`registered`] so far: every one, once a `Metrics` exists.
pub fn catalog() -> BTreeMap<String, MetricType> {
    CATALOG.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

impl<C> Clone for ArcCollector<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C: prometheus::core::Collector> prometheus::core::Collector for ArcCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}
