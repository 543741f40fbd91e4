//! Host signals into metrics: PSI memory stall totals, TcpExt listen overflows/drops,
//! every listener's accept queue, and the memory cgroup of each listening service.

use std::{collections::HashMap, sync::Mutex};

use prometheus::{CounterVec, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use super::{
    labels::Labels,
    registry::{counter, gauge, registered, seconds},
    MetricsError,
};
use crate::{
    model::{event::Endpoint, namespace::NetNs},
    sources::host::{netstat::ListenStats, psi::Pressure, sampling::Sample},
};

pub struct HostMetrics {
    listen_overflows: IntCounter,
    listen_drops: IntCounter,
    memory_stall: CounterVec,
    service_memory_stall: CounterVec,
    service_memory_usage: IntGaugeVec,
    service_memory_limit: IntGaugeVec,
    service_memory_events: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_backlog: IntGaugeVec,
    totals: Mutex<HostTotals>,
}

/// The last absolute readings, so that counters grow by the difference.
#[derive(Debug, Default)]
struct HostTotals {
    psi_some_us: u64,
    psi_full_us: u64,
    listen: Option<ListenStats>,
    service_psi: HashMap<String, (u64, u64)>,
    /// memory.events `oom` and `oom_kill` per service.
    service_events: HashMap<String, (u64, u64)>,
}

impl HostMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricsError> {
        let single = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            registered(r, IntCounter::new(name, help)?)
        };
        Ok(Self {
            listen_overflows: single("why502_listen_overflows_total", "Connections dropped because a listener's accept queue was full (TcpExt ListenOverflows).")?,
            listen_drops: single("why502_listen_drops_total", "SYNs dropped by listeners for any reason (TcpExt ListenDrops).")?,
            memory_stall: seconds(r, "why502_memory_pressure_stall_seconds_total", "Time tasks stalled on memory, host-wide (PSI; some: at least one task, full: all).", &["kind"])?,
            service_memory_stall: seconds(r, "why502_service_memory_pressure_stall_seconds_total", "Time a listening service's tasks stalled on memory (cgroup v2 memory.pressure).", &["service", "kind"])?,
            service_memory_usage: gauge(r, "why502_service_memory_usage_bytes", "Memory charged to a listening service's cgroup.", &["service"])?,
            service_memory_limit: gauge(r, "why502_service_memory_limit_bytes", "Memory limit of a listening service's cgroup (absent when unlimited).", &["service"])?,
            service_memory_events: counter(
                r,
                "why502_service_memory_events_total",
                "A listening service's cgroup memory events (memory.events: oom = the limit was hit, oom_kill = a task was killed for it).",
                &["service", "event"],
            )?,
            queue_depth: gauge(r, "why502_listener_queue_depth", "Connections waiting in a listener's accept queue.", &["service", "endpoint"])?,
            queue_backlog: gauge(r, "why502_listener_queue_backlog", "A listener's accept queue size (its backlog).", &["service", "endpoint"])?,
            totals: Mutex::new(HostTotals::default()),
        })
    }

    /// Takes one sampling round into the metrics.
    pub fn sample(&self, sample: &Sample, labels: &mut Labels) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *totals;
        if let Some(pressure) = &sample.host.memory_pressure {
            let (some, full) = totals_of(pressure);
            let t = &mut *st;
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
            let before = st.listen.unwrap_or_default();
            self.listen_overflows
                .inc_by(listen.overflows.saturating_sub(before.overflows));
            self.listen_drops
                .inc_by(listen.drops.saturating_sub(before.drops));
            st.listen = Some(listen);
        }

        // Gauges describe now: series of listeners that went away must go too.
        self.queue_depth.reset();
        self.queue_backlog.reset();
        let own = NetNs::own();
        let service_of = |labels: &mut Labels, key: &(NetNs, std::net::SocketAddr)| {
            sample
                .listener_services
                .get(key)
                .map(|s| labels.listener_service(s))
                .unwrap_or_else(|| "unknown".into())
        };
        for queue in &sample.host.queues {
            let service = service_of(labels, &(own, queue.local));
            let endpoint = labels.endpoint(&queue.local.to_string());
            self.queue_depth
                .with_label_values(&[&service, &endpoint])
                .set(i64::from(queue.queued));
            self.queue_backlog
                .with_label_values(&[&service, &endpoint])
                .set(i64::from(queue.backlog));
        }
        // Other namespaces' (pods'): procfs shows their queues but not their backlogs.
        for ns in &sample.host.namespaces {
            for queue in &ns.queues {
                let service = service_of(labels, &(ns.netns, queue.local));
                let endpoint = Endpoint::Tcp(ns.netns, queue.local).to_string();
                let endpoint = labels.endpoint(&endpoint);
                self.queue_depth
                    .with_label_values(&[&service, &endpoint])
                    .set(i64::from(queue.queued));
            }
        }

        self.service_memory_usage.reset();
        self.service_memory_limit.reset();
        for s in &sample.services {
            let service = labels.listener_service(&s.service);
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
            let before = *st.service_events.entry(service.clone()).or_insert(events);
            for (name, now, was) in [
                ("oom", events.0, before.0),
                ("oom_kill", events.1, before.1),
            ] {
                self.service_memory_events
                    .with_label_values(&[&service, name])
                    .inc_by(now.saturating_sub(was));
            }
            st.service_events.insert(service.clone(), events);
            if let Some(pressure) = &memory.pressure {
                let (some, full) = totals_of(pressure);
                let (before_some, before_full) =
                    st.service_psi.get(&service).copied().unwrap_or((0, 0));
                self.service_memory_stall
                    .with_label_values(&[&service, "some"])
                    .inc_by(secs(some.saturating_sub(before_some)));
                self.service_memory_stall
                    .with_label_values(&[&service, "full"])
                    .inc_by(secs(full.saturating_sub(before_full)));
                st.service_psi.insert(service, (some, full));
            }
        }
    }
}

fn totals_of(p: &Pressure) -> (u64, u64) {
    (p.some.total_us, p.full.map_or(0, |f| f.total_us))
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use crate::model::namespace::NetNs;
    use crate::{
        config::MetricsConfig,
        sinks::metrics::Metrics,
        sources::host::{
            cgroup_memory::CgroupMemory,
            namespaces::NamespaceSample,
            proc_net::ProcListenQueue,
            psi::{Pressure, PressureLine},
            sampling::{Sample, ServiceMemory},
            sock_diag::ListenQueue,
        },
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
            .insert((NetNs::own(), endpoint), "php-fpm.service".into());
        let pod = NetNs(NetNs::own().0.wrapping_add(1));
        let wildcard = "0.0.0.0:8080".parse().unwrap();
        sample.host.namespaces = vec![NamespaceSample {
            netns: pod,
            pid: 43,
            listen: None,
            queues: vec![ProcListenQueue {
                local: wildcard,
                inode: 8,
                queued: 2,
            }],
            addresses: Default::default(),
        }];
        sample
            .listener_services
            .insert((pod, wildcard), "pod-backend".into());
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
        metrics.host(&sample(3, 2_000_000, 5));
        metrics.host(&sample(5, 3_500_000, 129));
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
        // A pod's listener on the same-looking address: its own series, no backlog.
        let pod_endpoint = format!("0.0.0.0:8080 [netns {}]", NetNs::own().0.wrapping_add(1));
        assert!(
            text.contains(&format!(
            "why502_listener_queue_depth{{endpoint=\"{pod_endpoint}\",service=\"pod-backend\"}} 2"
        )),
            "{text}"
        );
        assert!(
            !text.contains(&format!(
                "why502_listener_queue_backlog{{endpoint=\"{pod_endpoint}\""
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "why502_service_memory_limit_bytes{service=\"php-fpm.service\"} 2147483648"
            ),
            "{text}"
        );
        // A listener gone from the next sample takes its gauge series with it.
        let mut gone = sample(5, 3_500_000, 0);
        gone.host.queues.clear();
        gone.host.namespaces.clear();
        metrics.host(&gone);
        assert!(!metrics
            .render()
            .unwrap()
            .contains("why502_listener_queue_depth{"));
    }
}
