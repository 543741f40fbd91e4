//! Prometheus metrics, a sink of the bus: counters of events ([`events`]), of what the
//! kernel aggregated ([`kernel`]), host signals ([`host`]) and incidents ([`incidents`]),
//! all fed by one subscriber task ([`feed`]) and rendered by [`server`] at scrape time.
//!
//! Names follow Prometheus conventions (`why502_` prefix, base units, `_total` counters);
//! no pid or 4-tuple labels, and the open-ended label values (`proxy`, `upstream`,
//! `service`, `endpoint`) are capped, the rest folded into `other` ([`labels`]).

pub mod conntrack;
pub mod correlation;
pub mod events;
pub mod feed;
pub mod host;
pub mod incidents;
pub mod kernel;
pub mod labels;
pub mod latency;
pub mod registry;
pub mod server;
pub mod store;

use std::{
    collections::BTreeMap,
    sync::{Mutex, RwLock},
};

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    config::MetricsConfig,
    model::{event::Event, incident::Update},
    sources::{host::sampling::Sample, kernel_maps::KernelReading, probes::ProbeStatus},
};
use labels::Labels;
use registry::{gauge, registered};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register a metric")]
    Register(#[from] prometheus::Error),
    #[error("cannot encode the metrics: {0}")]
    Encode(String),
}

pub struct Metrics {
    registry: Registry,
    labels: Mutex<Labels>,
    /// Held to write by the updates that reset gauges and set them again (a host sample,
    /// a kernel reading), to read by a render: a scrape never sees half an update (a
    /// listener's queue depth without its backlog).
    consistent: RwLock<()>,
    events: events::EventMetrics,
    kernel: kernel::KernelMetrics,
    host: host::HostMetrics,
    incidents: incidents::IncidentMetrics,
    store: store::StoreMetrics,
    conntrack: conntrack::ConntrackMetrics,
    correlation: correlation::CorrelationMetrics,
    probe_attached: IntGaugeVec,
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Result<Self, MetricsError> {
        let r = Registry::new();
        let build_info = gauge(
            &r,
            "why502_build_info",
            "Always 1; the agent's version.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let connects = registered(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "why502_upstream_connects_total",
                    "Connect attempts to an upstream (successes from kernel aggregates, plus failures).",
                ),
                &["proxy", "upstream"],
            )?,
        )?;
        Ok(Self {
            labels: Mutex::new(Labels::new(config, &r)?),
            consistent: RwLock::new(()),
            events: events::EventMetrics::new(&r, connects.clone())?,
            kernel: kernel::KernelMetrics::new(&r, connects)?,
            host: host::HostMetrics::new(&r)?,
            incidents: incidents::IncidentMetrics::new(&r)?,
            store: store::StoreMetrics::new(&r)?,
            conntrack: conntrack::ConntrackMetrics::new(&r)?,
            correlation: correlation::CorrelationMetrics::new(&r)?,
            probe_attached: gauge(
                &r,
                "why502_probe_attached",
                "1 when the probe is attached, 0 when it is off.",
                &["probe"],
            )?,
            registry: r,
        })
    }

    fn labels(&self) -> std::sync::MutexGuard<'_, Labels> {
        self.labels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Probes turned off in the configuration, or not needed on this kernel, export no
    /// series: only a probe that should run and does not is a 0 worth alerting on.
    pub fn set_probe_status(&self, status: &BTreeMap<agent_common::config::Probe, ProbeStatus>) {
        let needed =
            |s: &ProbeStatus| !matches!(s, ProbeStatus::Disabled | ProbeStatus::Superseded(_));
        for (probe, s) in status.iter().filter(|(_, s)| needed(s)) {
            self.probe_attached
                .with_label_values(&[probe.name()])
                .set(i64::from(matches!(s, ProbeStatus::Attached(_))));
        }
    }

    /// Where the store's health is read at each scrape.
    pub fn set_store_source(&self, source: store::StoreSource) {
        self.store.set_source(source);
    }

    /// Where the conntrack lookups are counted.
    pub fn set_conntrack_stats(
        &self,
        stats: std::sync::Arc<crate::sources::conntrack::ConntrackStats>,
    ) {
        self.conntrack.set_stats(stats);
    }

    /// Where the correlation engine's refusals are counted.
    pub fn set_correlation_stats(
        &self,
        stats: std::sync::Arc<crate::correlate::task::CorrelationStats>,
    ) {
        self.correlation.set_stats(stats);
    }

    /// Counts one event.
    pub fn event(&self, event: &Event) {
        self.events.observe(event, &mut self.labels());
    }

    /// Follows one incident update.
    pub fn incident(&self, update: &Update) {
        self.incidents.update(update, &mut self.labels());
    }

    /// Adds one reading of the kernel's maps.
    pub fn kernel(&self, reading: &KernelReading) {
        let _whole = self.consistent.write().unwrap_or_else(|e| e.into_inner());
        self.kernel.reading(reading, &mut self.labels());
    }

    /// Takes one host sampling round.
    pub fn host(&self, sample: &Sample) {
        let _whole = self.consistent.write().unwrap_or_else(|e| e.into_inner());
        self.host.sample(sample, &mut self.labels());
    }

    /// Every metric family the agent registers, by name, with its type (`counter`,
    /// `gauge`, `histogram`), series or not: what dashboards and alert rules may use.
    pub fn families() -> Result<BTreeMap<String, &'static str>, MetricsError> {
        // Creating the metrics registers every family.
        Self::new(&MetricsConfig::default())?;
        Ok(registry::catalog()
            .into_iter()
            .map(|(name, kind)| {
                let kind = match kind {
                    prometheus::proto::MetricType::COUNTER => "counter",
                    prometheus::proto::MetricType::GAUGE => "gauge",
                    prometheus::proto::MetricType::HISTOGRAM => "histogram",
                    prometheus::proto::MetricType::SUMMARY => "summary",
                    prometheus::proto::MetricType::UNTYPED => "untyped",
                };
                (name, kind)
            })
            .collect())
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        self.store.refresh();
        self.conntrack.refresh();
        self.correlation.refresh();
        let families = {
            let _whole = self.consistent.read().unwrap_or_else(|e| e.into_inner());
            self.registry.gather()
        };
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| MetricsError::Encode(e.to_string()))?;
        String::from_utf8(out).map_err(|e| MetricsError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_list_every_registered_metric_with_or_without_series() {
        let families = Metrics::families().unwrap();
        // One of each way in: a Vec helper, a single counter, the histogram's own
        // collector, and the families only `Metrics::new` registers.
        assert_eq!(
            families.get("why502_metric_label_values_folded_total"),
            Some(&"counter")
        );
        assert_eq!(families.get("why502_listen_drops_total"), Some(&"counter"));
        assert_eq!(
            families.get("why502_upstream_connect_duration_seconds"),
            Some(&"histogram")
        );
        assert_eq!(families.get("why502_probe_attached"), Some(&"gauge"));
        assert_eq!(families.get("why502_build_info"), Some(&"gauge"));
        // And only the agent's.
        assert!(
            families.keys().all(|n| n.starts_with("why502_")),
            "{families:?}"
        );
        // Families without series still stay out of the exposition.
        let text = Metrics::new(&MetricsConfig::default())
            .unwrap()
            .render()
            .unwrap();
        assert!(
            !text.contains("why502_upstream_connect_duration_seconds"),
            "{text}"
        );
    }
}
