//! `why502_upstream_connect_duration_seconds`: a histogram built from the kernel's log2
//! buckets rather than from observations, so it is exported by a collector of its own.

use std::{collections::HashMap, sync::Mutex};

use agent_common::connect::LATENCY_BUCKETS;
use prometheus::{
    core::{Collector, Desc},
    proto,
};

const NAME: &str = "why502_upstream_connect_duration_seconds";
const HELP: &str = "Time from SYN to ESTABLISHED of successful upstream connects.";

#[derive(Debug, Clone, Default)]
struct Hist {
    /// Kernel buckets: `[2^i, 2^(i+1))` µs; the last one also takes everything above.
    buckets: [u64; LATENCY_BUCKETS],
    sum_ns: u64,
}

pub struct LatencyHistograms {
    desc: Desc,
    series: Mutex<HashMap<(String, String), Hist>>,
}

impl LatencyHistograms {
    pub fn new() -> Self {
        Self {
            desc: Desc::new(
                NAME.into(),
                HELP.into(),
                vec!["proxy".into(), "upstream".into()],
                HashMap::new(),
            )
            .expect("valid metric description"),
            series: Mutex::new(HashMap::new()),
        }
    }

    pub fn add(
        &self,
        proxy: String,
        upstream: String,
        buckets: &[u64; LATENCY_BUCKETS],
        sum_ns: u64,
    ) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let hist = series.entry((proxy, upstream)).or_default();
        for (total, add) in hist.buckets.iter_mut().zip(buckets) {
            *total += add;
        }
        hist.sum_ns += sum_ns;
    }
}

impl Default for LatencyHistograms {
    fn default() -> Self {
        Self::new()
    }
}

/// Upper bound of kernel bucket `i`, in seconds.
pub fn upper_bound(i: usize) -> f64 {
    (1u64 << (i + 1)) as f64 / 1e6
}

impl Collector for LatencyHistograms {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut family = proto::MetricFamily {
            name: Some(NAME.into()),
            help: Some(HELP.into()),
            ..Default::default()
        };
        family.set_field_type(proto::MetricType::HISTOGRAM);
        let mut keys: Vec<_> = series.keys().collect();
        keys.sort();
        for key in keys {
            let hist = &series[key];
            let mut h = proto::Histogram::default();
            let mut cumulative = 0;
            // The last kernel bucket is open-ended: it only counts towards +Inf.
            for (i, count) in hist.buckets.iter().enumerate().take(LATENCY_BUCKETS - 1) {
                cumulative += count;
                h.bucket.push(proto::Bucket {
                    cumulative_count: Some(cumulative),
                    upper_bound: Some(upper_bound(i)),
                    ..Default::default()
                });
            }
            h.sample_count = Some(hist.buckets.iter().sum());
            h.sample_sum = Some(hist.sum_ns as f64 / 1e9);
            let mut metric =
                proto::Metric::from_label(vec![label("proxy", &key.0), label("upstream", &key.1)]);
            metric.set_histogram(h);
            family.mut_metric().push(metric);
        }
        // Even without series: its type is how the catalog of metrics knows it is a
        // histogram (`Registry::gather` leaves empty families out of the exposition).
        vec![family]
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    proto::LabelPair {
        name: Some(name.into()),
        value: Some(value.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounded_in_seconds() {
        let h = LatencyHistograms::new();
        let mut buckets = [0; LATENCY_BUCKETS];
        buckets[0] = 2; // < 2 µs
        buckets[19] = 1; // ~1 s (SYN retransmitted once)
        buckets[LATENCY_BUCKETS - 1] = 1; // beyond 8.4 s
        h.add(
            "nginx".into(),
            "127.0.0.1:9000".into(),
            &buckets,
            9_000_000_000,
        );
        let families = h.collect();
        let m = &families[0].get_metric()[0];
        let hist = m.get_histogram();
        assert_eq!(hist.get_sample_count(), 4);
        assert_eq!(hist.bucket[0].upper_bound, Some(2e-6));
        assert_eq!(hist.bucket[0].cumulative_count, Some(2));
        assert_eq!(hist.bucket[19].cumulative_count, Some(3));
        let last = hist.bucket.last().unwrap();
        assert_eq!(last.upper_bound, Some(8.388608));
        assert_eq!(
            last.cumulative_count,
            Some(3),
            "the open-ended bucket is only in +Inf"
        );
        // 1 s and 3 s land in different buckets.
        assert!(upper_bound(19) < 1.1 && upper_bound(20) > 2.0 && upper_bound(21) > 4.0);
    }
}
