//! What the kernel aggregated, as metrics: successful connects and their latency, the
//! proxies' HTTP responses by status, and the programs' own drops, throttled records and
//! errors.

use std::sync::Arc;

use agent_common::connect::ConnectKey;
use prometheus::{IntCounterVec, Registry};

use super::{
    labels::Labels,
    latency::LatencyHistograms,
    registry::{counter, registered, ArcCollector},
    MetricsError,
};
use crate::sources::kernel_maps::{connects::upstream, KernelReading};

pub struct KernelMetrics {
    connects: IntCounterVec,
    latency: Arc<LatencyHistograms>,
    http_responses: IntCounterVec,
    ringbuf_dropped: IntCounterVec,
    throttled: IntCounterVec,
    probe_errors: IntCounterVec,
    tables_full: IntCounterVec,
}

impl KernelMetrics {
    /// `connects` is shared with the failures counted from events.
    pub fn new(r: &Registry, connects: IntCounterVec) -> Result<Self, MetricsError> {
        let latency = Arc::new(LatencyHistograms::new());
        registered(r, ArcCollector(latency.clone()))?;
        Ok(Self {
            connects,
            latency,
            http_responses: counter(
                r,
                "why502_http_responses_total",
                "HTTP/1.x responses proxies wrote to their clients, by status code (plain-text HTTP only).",
                &["proxy", "code"],
            )?,
            ringbuf_dropped: counter(r, "why502_ringbuf_dropped_events_total", "Events lost because the ring buffer was full, by kind.", &["kind"])?,
            throttled: counter(
                r,
                "why502_kernel_events_throttled_total",
                "Events the kernel refused because their process sent more than its budget of that kind a second (a flood of listen calls, execs, exits or signals), by kind.",
                &["kind"],
            )?,
            probe_errors: counter(r, "why502_probe_errors_total", "Failed reads of kernel or user memory in a probe.", &["probe"])?,
            tables_full: counter(r, "why502_kernel_table_full_total", "Inserts a full kernel table refused (connections or calls that went untracked), by table.", &["table"])?,
        })
    }

    /// Adds one reading's growth.
    pub fn reading(&self, reading: &KernelReading, labels: &mut Labels) {
        for c in &reading.connects {
            let proxy = labels.proxy(&c.process.comm);
            let upstream = labels.upstream_of(&proxy, &key_upstream(&c.growth.key));
            self.connects
                .with_label_values(&[&proxy, &upstream])
                .inc_by(c.growth.established);
            self.latency
                .add(proxy, upstream, &c.growth.hist, c.growth.latency_sum_ns);
        }
        for r in &reading.responses {
            let proxy = labels.proxy(&r.proxy.comm);
            self.http_responses
                .with_label_values(&[&proxy, &r.code.to_string()])
                .inc_by(r.count);
        }
        if reading.counters.is_some() {
            // Every series from the first reading on, zeros included: a rate() needs them.
            for (kind, n) in &reading.counter_growth.dropped {
                self.ringbuf_dropped.with_label_values(&[kind]).inc_by(*n);
            }
            // Only the budgeted kinds: the others' slots never grow, and a series that is
            // always 0 would say they could be throttled.
            for kind in agent_common::budget::BUDGETED_KINDS {
                let n = reading.counter_growth.throttled.get(kind.name());
                self.throttled
                    .with_label_values(&[kind.name()])
                    .inc_by(n.copied().unwrap_or(0));
            }
            for (probe, n) in &reading.counter_growth.probe_errors {
                self.probe_errors.with_label_values(&[probe]).inc_by(*n);
            }
            for (table, n) in &reading.counter_growth.tables_full {
                self.tables_full.with_label_values(&[table]).inc_by(*n);
            }
        }
    }
}

fn key_upstream(key: &ConnectKey) -> String {
    upstream(key).to_string()
}

#[cfg(test)]
mod tests {
    use agent_common::event::EventKind;

    use crate::{
        config::MetricsConfig,
        sinks::metrics::Metrics,
        sources::{kernel_maps::KernelReading, probes::maps::KernelCounters},
    };

    fn series(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(String::from)
            .collect()
    }

    #[test]
    fn throttled_records_are_exported_for_the_budgeted_kinds_only() {
        let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
        // As the kernel counts them: every kind has a slot, only budgeted ones grow; one
        // that is not budgeted growing anyway (a future kernel) is still not exported.
        let growth = |listen: u64, exit: u64| {
            let mut counters = KernelCounters::default();
            for kind in EventKind::ALL {
                counters.throttled.insert(kind.name(), 0);
            }
            counters.throttled.insert("listen_call", listen);
            counters.throttled.insert("process_exit", exit);
            counters.throttled.insert("tcp_connect_failure", 5);
            KernelReading {
                counters: Some(counters.clone()),
                counter_growth: counters,
                ..Default::default()
            }
        };
        metrics.kernel(&growth(300, 2));
        metrics.kernel(&growth(44, 0));
        let text = metrics.render().unwrap();
        let mut throttled = series(&text, "why502_kernel_events_throttled_total");
        throttled.sort();
        assert_eq!(
            throttled,
            [
                "why502_kernel_events_throttled_total{kind=\"listen_call\"} 344",
                "why502_kernel_events_throttled_total{kind=\"process_exec\"} 0",
                "why502_kernel_events_throttled_total{kind=\"process_exit\"} 2",
                "why502_kernel_events_throttled_total{kind=\"signal\"} 0",
            ]
        );
        // A reading without the counters (a response-only poll) adds nothing.
        metrics.kernel(&KernelReading::default());
        let text = metrics.render().unwrap();
        assert!(
            text.contains("why502_kernel_events_throttled_total{kind=\"listen_call\"} 344"),
            "{text}"
        );
    }
}
