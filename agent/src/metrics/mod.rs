//! Prometheus metrics: counters fed by the event bus and incident updates, success counts
//! and latencies from the kernel's per-CPU aggregates read at scrape time, and host
//! signals (memory pressure, listen queues, cgroup memory) sampled on an interval.
//!
//! Names follow Prometheus conventions (`why502_` prefix, base units, `_total` counters);
//! no pid or 4-tuple labels, and the open-ended label values (`proxy`, `upstream`,
//! `service`, `endpoint`) are capped, the rest folded into `other`.

pub mod host;
pub mod kernel;
pub mod labels;
pub mod latency;
pub mod server;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use lru::LruCache;
use prometheus::{
    CounterVec, Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    config::MetricsConfig,
    correlate::engine::Update,
    events::{Endpoint, Event, EventDetail, ProcessRef},
    probes::{KernelCounters, ProbeSet, ProbeStatus},
};
use kernel::KernelDeltas;
use labels::LabelCap;
use latency::LatencyHistograms;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric: {0}")]
    Register(#[from] prometheus::Error),
    #[error("cannot encode metrics: {0}")]
    Encode(String),
}

/// Label values and the last kernel readings, behind one lock.
struct State {
    upstreams: LabelCap,
    proxies: LabelCap,
    services: LabelCap,
    endpoints: LabelCap,
    kernel: KernelDeltas,
    counters: KernelCounters,
    /// tgid → proxy label, for kernel aggregates of processes no event named.
    proxy_names: LruCache<u32, String>,
    /// Open incidents' (proxy, upstream) labels, to remove the gauge when they close.
    open: BTreeMap<u64, (String, String)>,
    host: host::HostTotals,
}

pub struct Metrics {
    registry: Registry,
    connects: IntCounterVec,
    connect_errors: IntCounterVec,
    latency: Arc<LatencyHistograms>,
    resets_received: IntCounterVec,
    resets_sent: IntCounterVec,
    syn_retransmits: IntCounterVec,
    process_exits: IntCounterVec,
    oom_kills: IntCounterVec,
    listen_overflows: IntCounter,
    listen_drops: IntCounter,
    memory_stall: CounterVec,
    service_memory_stall: CounterVec,
    service_memory_usage: IntGaugeVec,
    service_memory_limit: IntGaugeVec,
    service_memory_events: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_backlog: IntGaugeVec,
    incidents: IntCounterVec,
    incident_open: IntGaugeVec,
    http_responses: IntCounterVec,
    events: IntCounterVec,
    ringbuf_dropped: IntCounterVec,
    probe_errors: IntCounterVec,
    probe_attached: IntGaugeVec,
    label_folds: IntCounterVec,
    state: Mutex<State>,
}

/// Registers `metric` and hands it back.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: C,
) -> Result<C, MetricsError> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn seconds(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<CounterVec, MetricsError> {
    registered(r, CounterVec::new(Opts::new(name, help), labels)?)
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Result<Self, MetricsError> {
        let r = Registry::new();
        let latency = Arc::new(LatencyHistograms::new());
        r.register(Box::new(ArcCollector(latency.clone())))?;
        let single = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            registered(&r, IntCounter::new(name, help)?)
        };
        let build_info = gauge(
            &r,
            "why502_build_info",
            "Always 1; the agent's version.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Self {
            connects: counter(&r, "why502_upstream_connects_total", "Connect attempts to an upstream (successes from kernel aggregates, plus failures).", &["proxy", "upstream"])?,
            connect_errors: counter(&r, "why502_upstream_connect_errors_total", "Failed connects to an upstream, by errno (timeout: the proxy gave up during the handshake).", &["proxy", "upstream", "errno"])?,
            latency,
            resets_received: counter(&r, "why502_tcp_resets_received_total", "RSTs received on connections past the handshake.", &["proxy", "upstream", "state"])?,
            resets_sent: counter(&r, "why502_tcp_resets_sent_total", "RSTs sent on full sockets.", &["proxy", "upstream", "state"])?,
            syn_retransmits: counter(&r, "why502_tcp_syn_retransmits_total", "SYNs retransmitted by connecting proxies.", &["proxy", "upstream"])?,
            process_exits: counter(&r, "why502_process_exits_total", "Process exits: clean (of listeners), exit_code (non-zero), or the fatal signal's name.", &["service", "reason"])?,
            oom_kills: counter(&r, "why502_oom_kills_total", "Processes chosen by the OOM killer.", &["service"])?,
            listen_overflows: single("why502_listen_overflows_total", "Connections dropped because a listener's accept queue was full (TcpExt ListenOverflows).")?,
            listen_drops: single("why502_listen_drops_total", "SYNs dropped by listeners for any reason (TcpExt ListenDrops).")?,
            memory_stall: seconds(&r, "why502_memory_pressure_stall_seconds_total", "Time tasks stalled on memory, host-wide (PSI; some: at least one task, full: all).", &["kind"])?,
            service_memory_stall: seconds(&r, "why502_service_memory_pressure_stall_seconds_total", "Time a listening service's tasks stalled on memory (cgroup v2 memory.pressure).", &["service", "kind"])?,
            service_memory_usage: gauge(&r, "why502_service_memory_usage_bytes", "Memory charged to a listening service's cgroup.", &["service"])?,
            service_memory_limit: gauge(&r, "why502_service_memory_limit_bytes", "Memory limit of a listening service's cgroup (absent when unlimited).", &["service"])?,
            service_memory_events: counter(
                &r,
                "why502_service_memory_events_total",
                "A listening service's cgroup memory events (memory.events: oom = the limit was hit, oom_kill = a task was killed for it).",
                &["service", "event"],
            )?,
            queue_depth: gauge(&r, "why502_listener_queue_depth", "Connections waiting in a listener's accept queue.", &["service", "endpoint"])?,
            queue_backlog: gauge(&r, "why502_listener_queue_backlog", "A listener's accept queue size (its backlog).", &["service", "endpoint"])?,
            incidents: counter(&r, "why502_incidents_total", "Incidents opened, by their top cause when they opened.", &["cause", "confidence"])?,
            incident_open: gauge(&r, "why502_incident_open", "1 while an incident is open for this proxy and upstream.", &["proxy", "upstream"])?,
            http_responses: counter(
                &r,
                "why502_http_responses_total",
                "HTTP/1.x responses proxies wrote to their clients, by status code (plain-text HTTP only).",
                &["proxy", "code"],
            )?,
            events: counter(&r, "why502_events_total", "Events received from the kernel, by kind.", &["kind"])?,
            ringbuf_dropped: counter(&r, "why502_ringbuf_dropped_events_total", "Events lost because the ring buffer was full, by kind.", &["kind"])?,
            probe_errors: counter(&r, "why502_probe_errors_total", "Failed reads of kernel or user memory in a probe.", &["probe"])?,
            probe_attached: gauge(&r, "why502_probe_attached", "1 when the probe is attached, 0 when it is off.", &["probe"])?,
            label_folds: counter(&r, "why502_metric_label_values_folded_total", "Label values folded into `other` because of the configured caps.", &["label"])?,
            registry: r,
            state: Mutex::new(State {
                upstreams: LabelCap::new(config.max_upstreams),
                proxies: LabelCap::new(config.max_proxies),
                services: LabelCap::new(config.max_services),
                endpoints: LabelCap::new(config.max_upstreams),
                kernel: KernelDeltas::default(),
                counters: KernelCounters::default(),
                proxy_names: LruCache::new(NonZeroUsize::new(4096).expect("non-zero")),
                open: BTreeMap::new(),
                host: host::HostTotals::default(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Probes turned off in the configuration export no series: only a probe that should
    /// run and does not is a 0 worth alerting on.
    pub fn set_probe_status(&self, status: &BTreeMap<agent_common::config::Probe, ProbeStatus>) {
        for (probe, s) in status.iter().filter(|(_, s)| **s != ProbeStatus::Disabled) {
            self.probe_attached
                .with_label_values(&[probe.name()])
                .set(i64::from(*s == ProbeStatus::Attached));
        }
    }

    /// Counts one event.
    pub fn observe(&self, event: &Event) {
        self.events.with_label_values(&[event.detail.kind()]).inc();
        let mut st = self.state();
        let proxy = |st: &mut State, p: Option<&ProcessRef>| match p {
            Some(p) => {
                st.proxy_names.put(p.pid, p.comm.clone());
                capped(&mut st.proxies, &p.comm, "proxy", &self.label_folds)
            }
            None => "unknown".to_string(),
        };
        match &event.detail {
            EventDetail::TcpConnectFailure(f) => {
                let proxy = proxy(&mut st, event.process.as_ref());
                let upstream = capped(
                    &mut st.upstreams,
                    &f.dst.to_string(),
                    "upstream",
                    &self.label_folds,
                );
                self.connects.with_label_values(&[&proxy, &upstream]).inc();
                self.connect_errors
                    .with_label_values(&[&proxy, &upstream, &f.kind()])
                    .inc();
            }
            EventDetail::ConnectSyscallError(e) if !e.is_benign() => {
                let proxy = proxy(&mut st, event.process.as_ref());
                let upstream = capped(
                    &mut st.upstreams,
                    &e.dst.to_string(),
                    "upstream",
                    &self.label_folds,
                );
                self.connects.with_label_values(&[&proxy, &upstream]).inc();
                self.connect_errors
                    .with_label_values(&[&proxy, &upstream, e.errno.name()])
                    .inc();
            }
            EventDetail::TcpResetReceived(r) | EventDetail::TcpResetSent(r) => {
                let proxy = proxy(&mut st, event.process.as_ref());
                let upstream = capped(
                    &mut st.upstreams,
                    &r.dst.to_string(),
                    "upstream",
                    &self.label_folds,
                );
                let vec = match event.detail {
                    EventDetail::TcpResetReceived(_) => &self.resets_received,
                    _ => &self.resets_sent,
                };
                vec.with_label_values(&[&proxy, &upstream, r.state]).inc();
            }
            EventDetail::TcpSynRetransmit(r) => {
                let proxy = proxy(&mut st, event.process.as_ref());
                let upstream = capped(
                    &mut st.upstreams,
                    &r.dst.to_string(),
                    "upstream",
                    &self.label_folds,
                );
                self.syn_retransmits
                    .with_label_values(&[&proxy, &upstream])
                    .inc();
            }
            EventDetail::ProcessExit(exit) => {
                let service = service(&mut st, event.process.as_ref(), &self.label_folds);
                let reason = match (&exit.signal, exit.code) {
                    (Some(signal), _) => signal.clone(),
                    (None, Some(0)) => "clean".into(),
                    _ => "exit_code".into(),
                };
                self.process_exits
                    .with_label_values(&[&service, &reason])
                    .inc();
            }
            EventDetail::OomKill(kill) => {
                let name = kill
                    .victim
                    .as_ref()
                    .and_then(|i| i.unit.clone())
                    .unwrap_or_else(|| kill.victim_comm.clone());
                let service = capped(&mut st.services, &name, "service", &self.label_folds);
                self.oom_kills.with_label_values(&[&service]).inc();
            }
            _ => {}
        }
    }

    /// Follows incidents: counted when they open, a gauge while they are open.
    pub fn incident(&self, update: &Update) {
        let incident = update.incident();
        let mut st = self.state();
        match update {
            Update::Opened(_) => {
                if let Some(top) = incident.top_cause() {
                    self.incidents
                        .with_label_values(&[top.cause.name(), top.confidence.name()])
                        .inc();
                }
                let proxy = capped(
                    &mut st.proxies,
                    &incident.proxy.comm,
                    "proxy",
                    &self.label_folds,
                );
                let upstream = capped(
                    &mut st.upstreams,
                    &incident.upstream,
                    "upstream",
                    &self.label_folds,
                );
                self.incident_open
                    .with_label_values(&[&proxy, &upstream])
                    .set(1);
                st.open.insert(incident.id, (proxy, upstream));
            }
            Update::Closed(_) => {
                if let Some((proxy, upstream)) = st.open.remove(&incident.id) {
                    // Another open incident may share folded labels ("other").
                    if !st
                        .open
                        .values()
                        .any(|v| *v == (proxy.clone(), upstream.clone()))
                    {
                        let _ = self.incident_open.remove_label_values(&[&proxy, &upstream]);
                    }
                }
            }
            Update::Updated(_) => {}
        }
    }

    /// Counts responses a proxy wrote.
    pub fn http_responses(&self, proxy: &str, code: u16, count: u64) {
        let proxy = capped(&mut self.state().proxies, proxy, "proxy", &self.label_folds);
        self.http_responses
            .with_label_values(&[&proxy, &code.to_string()])
            .inc_by(count);
    }

    /// Reads the kernel's aggregates and counters (done at every scrape).
    pub fn refresh_kernel(&self, probes: &ProbeSet) {
        let mut st = self.state();
        match probes.connect_aggregates() {
            Ok(aggregates) => {
                for growth in st.kernel.advance(&aggregates) {
                    let tgid = growth.key.tgid;
                    let name = match st.proxy_names.get(&tgid) {
                        Some(name) => name.clone(),
                        None => {
                            let name = crate::enrich::process::comm(tgid)
                                .unwrap_or_else(|| "unknown".into());
                            st.proxy_names.put(tgid, name.clone());
                            name
                        }
                    };
                    let proxy = capped(&mut st.proxies, &name, "proxy", &self.label_folds);
                    let upstream = capped(
                        &mut st.upstreams,
                        &key_upstream(&growth.key),
                        "upstream",
                        &self.label_folds,
                    );
                    self.connects
                        .with_label_values(&[&proxy, &upstream])
                        .inc_by(growth.established);
                    self.latency
                        .add(proxy, upstream, &growth.hist, growth.latency_sum_ns);
                }
            }
            Err(err) => log::debug!("cannot read connect aggregates: {err}"),
        }
        if let Ok(counters) = probes.counters() {
            for (kind, n) in &counters.dropped {
                let before = st.counters.dropped.get(kind).copied().unwrap_or(0);
                self.ringbuf_dropped
                    .with_label_values(&[kind])
                    .inc_by(n.saturating_sub(before));
            }
            for (probe, n) in &counters.probe_errors {
                let before = st.counters.probe_errors.get(probe).copied().unwrap_or(0);
                self.probe_errors
                    .with_label_values(&[probe])
                    .inc_by(n.saturating_sub(before));
            }
            st.counters = counters;
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| MetricsError::Encode(e.to_string()))?;
        String::from_utf8(out).map_err(|e| MetricsError::Encode(e.to_string()))
    }
}

/// Registers a shared collector.
struct ArcCollector<C>(Arc<C>);

impl<C: prometheus::core::Collector> prometheus::core::Collector for ArcCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

fn capped(cap: &mut LabelCap, value: &str, label: &str, folds: &IntCounterVec) -> String {
    let admitted = cap.admit(value);
    if admitted == labels::OTHER && value != labels::OTHER {
        folds.with_label_values(&[label]).inc();
    }
    admitted
}

/// A process's service label: its systemd unit, else its name.
fn service(st: &mut State, process: Option<&ProcessRef>, folds: &IntCounterVec) -> String {
    let name = process
        .map(|p| {
            p.info
                .as_ref()
                .and_then(|i| i.unit.clone())
                .unwrap_or_else(|| p.comm.clone())
        })
        .unwrap_or_else(|| "unknown".into());
    capped(&mut st.services, &name, "service", folds)
}

fn key_upstream(key: &agent_common::connect::ConnectKey) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = if key.family == agent_common::net::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(key.daddr))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            key.daddr[0],
            key.daddr[1],
            key.daddr[2],
            key.daddr[3],
        ))
    };
    Endpoint::Tcp(SocketAddr::new(ip, key.dport)).to_string()
}
