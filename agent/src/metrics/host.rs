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
    /// memory.events `oom` and `oom_kill` per service.
    service_events: HashMap<String, (u64, u64)>,
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
            let events = (
                memory.oom_events.unwrap_or(0),
                memory.oom_kill_events.unwrap_or(0),
            );
            // The first reading of a service is its base: events before are history.
            let before = *st
                .host
                .service_events
                .entry(service.clone())
                .or_insert(events);
            for (name, now, was) in [
                ("oom", events.0, before.0),
                ("oom_kill", events.1, before.1),
            ] {
                self.service_memory_events
                    .with_label_values(&[&service, name])
                    .inc_by(now.saturating_sub(was));
            }
            st.host.service_events.insert(service.clone(), events);
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

#[cfg(test)]
mod tests {
    use crate::{
        config::MetricsConfig,
        host::{
            cgroup_memory::CgroupMemory,
            psi::{Pressure, PressureLine},
            sock_diag::ListenQueue,
        },
        metrics::Metrics,
        sampling::{Sample, ServiceMemory},
    };

    fn sample(oom_kills: u64, psi_us: u64, queued: u32) -> Sample {
        let endpoint = "127.0.0.1:9000".parse().unwrap();
        let line = PressureLine {
            total_us: psi_us,
            ..Default::default()
        };
        let mut sample = Sample::default();
        sample.host.memory_pressure = Some(Pressure {
            some: line,
            full: Some(line),
        });
        sample.host.queues = vec![ListenQueue {
            local: endpoint,
            inode: 7,
            queued,
            backlog: 128,
        }];
        sample
            .listener_services
            .insert(endpoint, "php-fpm.service".into());
        sample.services = vec![ServiceMemory {
            service: "php-fpm.service".into(),
            pid: 42,
            memory: CgroupMemory {
                path: "/system.slice/php-fpm.service".into(),
                version: 2,
                usage_bytes: 1 << 30,
                limit_bytes: Some(2 << 30),
                oom_events: Some(oom_kills),
                oom_kill_events: Some(oom_kills),
                pressure: None,
            },
        }];
        sample
    }

    #[test]
    fn samples_become_counters_and_gauges() {
        let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
        metrics.apply_host(&sample(3, 2_000_000, 5));
        metrics.apply_host(&sample(5, 3_500_000, 129));
        let text = metrics.render().unwrap();
        // Two OOM kills since the first reading; the three before it are history.
        assert!(text.contains(
            "why502_service_memory_events_total{event=\"oom_kill\",service=\"php-fpm.service\"} 2"
        ), "{text}");
        // PSI: the whole total since boot, then its growth (3.5 s in all).
        assert!(
            text.contains("why502_memory_pressure_stall_seconds_total{kind=\"some\"} 3.5"),
            "{text}"
        );
        assert!(text.contains(
            "why502_listener_queue_depth{endpoint=\"127.0.0.1:9000\",service=\"php-fpm.service\"} 129"
        ), "{text}");
        assert!(
            text.contains(
                "why502_service_memory_limit_bytes{service=\"php-fpm.service\"} 2147483648"
            ),
            "{text}"
        );
        // A listener gone from the next sample takes its gauge series with it.
        let mut gone = sample(5, 3_500_000, 0);
        gone.host.queues.clear();
        metrics.apply_host(&gone);
        assert!(!metrics
            .render()
            .unwrap()
            .contains("why502_listener_queue_depth{"));
    }
}
