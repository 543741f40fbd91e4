//! HTTP responses of proxies: which processes to watch (the kernel inspects only those),
//! and the kernel's per-(process, status) counts turned into metrics and, for 502/503/504,
//! into events the correlation engine links to the upstream failures behind them.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};

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

/// Processes marked so far, so that each is marked once (bounded like the kernel's map).
const MARKED_CAPACITY: usize = 8192;

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

/// Whether an event makes its process a proxy to watch: a known proxy starting, or any
/// process whose upstream connects fail.
fn proxy_of(event: &Event) -> Option<u32> {
    let process = event.process.as_ref()?;
    match &event.detail {
        EventDetail::ProcessExec(_) => {
            let exe = process.info.as_ref().and_then(|i| i.exe.as_deref());
            known_proxy(&process.comm, exe).map(|_| process.pid)
        }
        EventDetail::TcpConnectFailure(_)
        | EventDetail::ConnectSyscallError(_)
        | EventDetail::TcpResetReceived(_) => Some(process.pid),
        _ => None,
    }
}

pub fn spawn(
    probes: Arc<Mutex<ProbeSet>>,
    bus: EventBus,
    metrics: Option<Arc<Metrics>>,
    redact_keys: Vec<String>,
) -> JoinHandle<()> {
    let mut events = bus.subscribe();
    tokio::spawn(async move {
        let redactor = Redactor::new(&redact_keys);
        let mut marked: HashSet<u32> = HashSet::new();
        let mut deltas = CounterDeltas::default();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => {
                        if let Some(tgid) = proxy_of(&event) {
                            if marked.len() >= MARKED_CAPACITY {
                                marked.clear();
                            }
                            if marked.insert(tgid) {
                                if let Err(err) = lock(&probes).mark_proxies([tgid]) {
                                    log::debug!("cannot mark pid {tgid} as a proxy: {err}");
                                }
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
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
