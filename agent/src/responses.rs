//! HTTP responses of proxies: the kernel's per-(process, status) counts turned into metrics
//! and, for 5xx, into events the correlation engine links to the upstream failures behind
//! them. The kernel marks proxies itself as they show themselves (exec of a known proxy, a
//! failed or reset upstream connection, a fork of a proxy); the agent only marks those
//! already running when it starts.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::{
    agent::lock,
    correlate::proxy::known_proxy,
    enrich::{process, redact::Redactor},
    events::{clock, Event, EventDetail, HttpResponses, ProcessRef},
    metrics::{kernel::CounterDeltas, Metrics},
    pipeline::EventBus,
    probes::ProbeSet,
};

/// How often the kernel's counts are read: fast enough for an incident within a second.
pub const POLL: Duration = Duration::from_millis(250);

/// Running processes that are known proxies (and their workers, which share the name).
pub fn running_proxies() -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter(|p| {
            let comm = p.stat().map(|s| s.comm).unwrap_or_default();
            let exe = p.exe().ok().map(|e| e.display().to_string());
            known_proxy(&comm, exe.as_deref()).is_some()
        })
        .map(|p| p.pid as u32)
        .collect()
}

pub fn spawn(
    probes: Arc<Mutex<ProbeSet>>,
    bus: EventBus,
    metrics: Option<Arc<Metrics>>,
    redact_keys: Vec<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let redactor = Redactor::new(&redact_keys);
        let mut deltas = CounterDeltas::default();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let counts = match lock(&probes).response_counts() {
                Ok(counts) => counts,
                Err(err) => {
                    log::debug!("cannot read response counts: {err}");
                    continue;
                }
            };
            let mono_ns = clock::monotonic_ns();
            for (key, count) in deltas.advance(&counts) {
                let proxy = proxy_ref(key.tgid, &redactor);
                if let Some(metrics) = &metrics {
                    metrics.http_responses(&proxy.comm, key.code, count);
                }
                if (500..600).contains(&key.code) {
                    bus.publish(Event {
                        time: clock::wall_time(mono_ns),
                        mono_ns,
                        process: Some(proxy),
                        detail: EventDetail::HttpResponses(HttpResponses {
                            code: key.code,
                            count,
                        }),
                    });
                }
            }
        }
    })
}

/// The writing process as events name it; a process gone since keeps its pid.
fn proxy_ref(tgid: u32, redactor: &Redactor) -> ProcessRef {
    let info = process::read(tgid, redactor);
    ProcessRef {
        pid: tgid,
        tid: tgid,
        comm: info
            .as_ref()
            .and_then(|i| i.name.clone())
            .unwrap_or_else(|| "unknown".into()),
        thread: None,
        cgroup_id: 0,
        info: info.map(Arc::new),
    }
}
