//! Host signals into metrics: PSI memory stall totals, TcpExt listen overflows/drops,
//! every listener's accept queue, and the memory cgroup of each listening service.

use std::collections::HashMap;

use super::{capped, Metrics};
use crate::{
    host::{netstat::ListenStats, psi::Pressure},
    sampling::Sample,
};

/// The last absolute readings, so that counters grow by the difference.
#[derive(Debug, Default)]
pub struct HostTotals {
    psi_some_us: u64,
    psi_full_us: u64,
    listen: Option<ListenStats>,
    service_psi: HashMap<String, (u64, u64)>,
}

impl Metrics {
    /// Takes one sampling round into the metrics.
    pub fn apply_host(&self, sample: &Sample) {
        let mut st = self.state();
        if let Some(pressure) = &sample.host.memory_pressure {
            let (some, full) = totals(pressure);
            let t = &mut st.host;
            // The first reading reports the whole total since boot, as node_exporter does:
            // a counter may start anywhere, rate() only looks at its growth.
            self.memory_stall
                .with_label_values(&["some"])
                .inc_by(secs(some.saturating_sub(t.psi_some_us)));
            self.memory_stall
                .with_label_values(&["full"])
                .inc_by(secs(full.saturating_sub(t.psi_full_us)));
            t.psi_some_us = some;
            t.psi_full_us = full;
        }
        if let Some(listen) = sample.host.listen {
            let before = st.host.listen.unwrap_or_default();
            self.listen_overflows
                .inc_by(listen.overflows.saturating_sub(before.overflows));
            self.listen_drops
                .inc_by(listen.drops.saturating_sub(before.drops));
            st.host.listen = Some(listen);
        }

        // Gauges describe now: series of listeners that went away must go too.
        self.queue_depth.reset();
        self.queue_backlog.reset();
        for queue in &sample.host.queues {
            let service = sample
                .listener_services
                .get(&queue.local)
                .map(|s| capped(&mut st.services, s, "service", &self.label_folds))
                .unwrap_or_else(|| "unknown".into());
            let endpoint = capped(
                &mut st.endpoints,
                &queue.local.to_string(),
                "endpoint",
                &self.label_folds,
            );
            self.queue_depth
                .with_label_values(&[&service, &endpoint])
                .set(i64::from(queue.queued));
            self.queue_backlog
                .with_label_values(&[&service, &endpoint])
                .set(i64::from(queue.backlog));
        }

        self.service_memory_usage.reset();
        self.service_memory_limit.reset();
        for s in &sample.services {
            let service = capped(&mut st.services, &s.service, "service", &self.label_folds);
            let memory = &s.memory;
            self.service_memory_usage
                .with_label_values(&[&service])
                .set(memory.usage_bytes.min(i64::MAX as u64) as i64);
            if let Some(limit) = memory.limit_bytes {
                self.service_memory_limit
                    .with_label_values(&[&service])
                    .set(limit.min(i64::MAX as u64) as i64);
            }
            if let Some(pressure) = &memory.pressure {
                let (some, full) = totals(pressure);
                let (before_some, before_full) =
                    st.host.service_psi.get(&service).copied().unwrap_or((0, 0));
                self.service_memory_stall
                    .with_label_values(&[&service, "some"])
                    .inc_by(secs(some.saturating_sub(before_some)));
                self.service_memory_stall
                    .with_label_values(&[&service, "full"])
                    .inc_by(secs(full.saturating_sub(before_full)));
                st.host.service_psi.insert(service, (some, full));
            }
        }
    }
}

fn totals(p: &Pressure) -> (u64, u64) {
    (p.some.total_us, p.full.map_or(0, |f| f.total_us))
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}
