//! The correlation engine: consumes events in time order, feeds what they say about the
//! host into [`Knowledge`], counts failures per (proxy, upstream) flow until a [`spike`]
//! opens an [`Incident`], pairs the proxy's 5xx [`responses`] with it, and keeps each open
//! incident's explanation current.
//!
//! Deterministic: time is the events' own (`mono_ns`/`time`) and the caller's `tick`, so
//! recorded or synthetic streams give the same incidents every time.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use super::{
    explain::{self, Failures},
    knowledge::{summary, Knowledge},
    proxy_key::ProxyKey,
    responses::{PendingResponses, BAD_GATEWAY_CODES, RESPONSE_GRACE_NS},
    spike::{Observed, Rule, Window},
};
use crate::{
    config::IncidentConfig,
    model::{
        event::{EndHow, Endpoint, Event, EventDetail},
        failure::FailureKind,
        incident::{Candidate, Incident, IncidentState, ProcessSummary, Update, NO_UPSTREAM},
        namespace::NetNs,
    },
    sources::{
        host::sampling::Sample,
        kernel_maps::{connects::upstream, KernelReading},
    },
};

/// (proxy, upstream) pairs followed at once; idle ones are forgotten first.
const FLOW_CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    proxy: ProxyKey,
    /// `None`: 5xx responses of the proxy with no upstream failure to blame.
    upstream: Option<Endpoint>,
}

struct OpenIncident {
    incident: Incident,
    first_mono: u64,
    last_mono: u64,
    dirty: bool,
}

struct Flow {
    proxy: ProcessSummary,
    /// Where a DNAT last sent the flow's connections (conntrack): its real listener.
    nat_destination: Option<Endpoint>,
    window: Window,
    /// The last failure (0: none yet; a flow may start from its successes).
    last_failure_mono: u64,
    /// Boxed: most flows never open one, and an incident is large.
    open: Option<Box<OpenIncident>>,
    last_mono: u64,
}

pub struct Engine {
    /// Flows with an open incident (kept, not counted per event: that was a scan).
    open_count: usize,
    /// 5xx responses of proxies whose failures have not (yet) made an incident: an
    /// incident that opens takes those of its window, the rest age out.
    pending: PendingResponses,
    config: IncidentConfig,
    knowledge: Knowledge,
    flows: HashMap<FlowKey, Flow>,
    next_id: u64,
}

impl Flow {
    fn new(proxy: ProcessSummary, mono: u64) -> Self {
        Self {
            proxy,
            nat_destination: None,
            window: Window::new(mono),
            last_failure_mono: 0,
            open: None,
            last_mono: mono,
        }
    }
}

impl Engine {
    /// `next_id`: the first incident id to hand out (one past the store's highest).
    pub fn new(
        config: IncidentConfig,
        next_id: u64,
        local_ips: Vec<IpAddr>,
        watching_since: SystemTime,
    ) -> Self {
        let lookback_ns = config.lookback_seconds * 1_000_000_000;
        Self {
            open_count: 0,
            pending: PendingResponses::default(),
            config,
            knowledge: Knowledge::new(local_ips, watching_since, lookback_ns),
            flows: HashMap::new(),
            next_id: next_id.max(1),
        }
    }

    pub fn open_incidents(&self) -> usize {
        self.open_count
    }

    /// New listeners the listener table refused (full of current listeners).
    pub fn listener_table_refused(&self) -> u64 {
        self.knowledge.listeners.refused()
    }

    /// Takes one event; returns the incidents it opened.
    pub fn observe(&mut self, event: &Event) -> Vec<Update> {
        if let Some((netns, src)) = socket_source(event) {
            // A connecting socket's own address is its namespace's.
            self.knowledge.listeners.addresses.learn(netns, src.ip());
        }
        match &event.detail {
            EventDetail::TcpConnectFailure(f) => {
                let kind = FailureKind::of_connect(f);
                return self.failure(
                    event,
                    Some(Endpoint::Tcp(f.netns, f.dst)),
                    Observed::Failure(kind),
                    1,
                );
            }
            EventDetail::ConnectSyscallError(e) => {
                if e.is_benign() {
                    return Vec::new();
                }
                let kind = Observed::Failure(FailureKind::Errno(e.errno));
                return self.failure(event, Some(e.dst.clone()), kind, 1);
            }
            EventDetail::TcpResetReceived(r) => {
                let kind = Observed::Failure(FailureKind::Reset);
                return self.failure(event, Some(Endpoint::Tcp(r.netns, r.dst)), kind, 1);
            }
            EventDetail::UpstreamEnd(end) => {
                let kind = match end.how {
                    EndHow::ClosedByUpstream => FailureKind::ClosedBeforeResponse,
                    EndHow::ProxyGaveUp => FailureKind::ResponseTimeout,
                };
                let upstream = Some(Endpoint::Tcp(end.netns, end.dst));
                return self.failure(event, upstream, Observed::Failure(kind), 1);
            }
            EventDetail::HttpResponses(r) if BAD_GATEWAY_CODES.contains(&r.code) => {
                return self.bad_responses(event, r.code, r.count);
            }
            _ => {}
        }
        if self.knowledge.learn(event) {
            self.mark_open_dirty();
        }
        Vec::new()
    }

    /// Takes a host sampling round: the addresses of the other network namespaces read,
    /// where connects across namespaces arrive.
    pub fn observe_sample(&mut self, sample: &Sample) {
        for ns in &sample.host.namespaces {
            self.knowledge
                .listeners
                .addresses
                .replace(ns.netns, ns.addresses.iter().copied());
        }
    }

    /// Takes the kernel's successful connects since the last reading: the attempts that
    /// put a flow's failures in proportion.
    pub fn observe_reading(&mut self, reading: &KernelReading) {
        let mono = reading.mono_ns;
        for c in &reading.connects {
            if !self.knowledge.is_proxy(&c.process) {
                continue;
            }
            let proxy = summary(&c.process);
            let key = FlowKey {
                proxy: ProxyKey::of(&proxy),
                upstream: Some(upstream(&c.growth.key)),
            };
            if !self.flows.contains_key(&key) && self.flows.len() >= FLOW_CAPACITY {
                continue;
            }
            self.flows
                .entry(key)
                .or_insert_with(|| Flow::new(proxy, mono))
                .window
                .succeeded(mono, c.growth.established);
        }
    }

    /// Advances time: closes incidents quiet for `quiet_seconds`, re-explains the ones
    /// that changed, forgets what is older than the look-back.
    pub fn tick(&mut self, now_mono: u64, now: SystemTime) -> Vec<Update> {
        let quiet = self.config.quiet_seconds * 1_000_000_000;
        let mut updates = self.responses_without_failures(now_mono);
        let keys: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| f.open.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let closing = self.flows[&key]
                .open
                .as_ref()
                .is_some_and(|o| now_mono.saturating_sub(o.last_mono) >= quiet);
            let dirty = self.flows[&key].open.as_ref().is_some_and(|o| o.dirty);
            if closing {
                let flow = self.flows.get_mut(&key).expect("key from the map");
                let mut open = flow.open.take().expect("checked open");
                let nat = flow.nat_destination.clone();
                self.open_count -= 1;
                flow.window.clear();
                open.incident.state = IncidentState::Closed;
                open.incident.closed_at = Some(now);
                let causes = self.explain(&key, nat.as_ref(), &open);
                open.incident.causes = causes;
                updates.push(Update::Closed(open.incident));
            } else if dirty {
                let causes = {
                    let flow = &self.flows[&key];
                    let open = flow.open.as_ref().expect("checked open");
                    self.explain(&key, flow.nat_destination.as_ref(), open)
                };
                let open = self
                    .flows
                    .get_mut(&key)
                    .and_then(|f| f.open.as_mut())
                    .expect("checked open");
                open.dirty = false;
                open.incident.causes = causes;
                updates.push(Update::Updated(open.incident.clone()));
            }
        }
        let lookback = self.config.lookback_seconds * 1_000_000_000;
        let horizon = now_mono.saturating_sub(lookback);
        self.knowledge.prune(horizon);
        self.flows
            .retain(|_, f| f.open.is_some() || f.last_mono >= horizon);
        self.pending.prune(horizon);
        updates
    }

    /// 5xx responses of a proxy: counted on its open incident when it has one (they are
    /// what its upstream failures became), else a flow of their own, which opens an
    /// incident of 5xx responses with no upstream failure to blame.
    fn bad_responses(&mut self, event: &Event, code: u16, count: u64) -> Vec<Update> {
        let Some(process) = &event.process else {
            return Vec::new();
        };
        if !self.knowledge.is_proxy(process) {
            return Vec::new();
        }
        let proxy_key = ProxyKey::of(&summary(process));
        let open = self
            .flows
            .iter_mut()
            .filter(|(k, f)| k.proxy == proxy_key && f.open.is_some())
            .max_by_key(|(_, f)| f.open.as_ref().map_or(0, |o| o.last_mono));
        if let Some((_, flow)) = open {
            let open = flow.open.as_mut().expect("filtered on open");
            *open.incident.responses.entry(code).or_default() += count;
            open.dirty = true;
            return Vec::new();
        }
        // Not (yet) tied to an incident: the failures behind them may still be on their
        // way through the ring buffer (responses are polled, failures streamed). An
        // incident that opens takes them; `tick` decides about the rest after a grace.
        let window_ns = self.config.window_ms * 1_000_000;
        self.pending
            .hold(proxy_key, event, process, (code, count), window_ns);
        Vec::new()
    }

    /// 5xx responses pending past their grace with no failure of their proxy around them
    /// open an incident of their own when they are a spike.
    fn responses_without_failures(&mut self, now_mono: u64) -> Vec<Update> {
        let window_ns = self.config.window_ms * 1_000_000;
        let mut updates = Vec::new();
        for (proxy, due) in self.pending.due(now_mono) {
            let first = &due[0];
            // Failures of this proxy around them: the responses are theirs, waiting for an
            // incident to open (or to age out below the threshold).
            let failing = self.flows.iter().any(|(k, f)| {
                k.proxy == proxy
                    && k.upstream.is_some()
                    && f.last_failure_mono > 0
                    && f.last_failure_mono + window_ns + RESPONSE_GRACE_NS >= first.mono
            });
            if failing {
                continue;
            }
            self.pending.judged(&proxy, now_mono);
            // A unix upstream whose worker just died: the kernel sees no end of a unix
            // connection, but the death and the 5xx together say where they went.
            let upstream = self.knowledge.unix_worker_death(first.mono);
            for r in due {
                let event = Event {
                    time: r.time,
                    mono_ns: r.mono,
                    process: Some(r.process),
                    detail: EventDetail::HttpResponses(crate::model::event::HttpResponses {
                        code: r.code,
                        count: r.count,
                    }),
                };
                let what = Observed::Response(r.code);
                updates.extend(self.failure(&event, upstream.clone(), what, r.count));
            }
        }
        updates
    }

    fn failure(
        &mut self,
        event: &Event,
        upstream: Option<Endpoint>,
        what: Observed,
        count: u64,
    ) -> Vec<Update> {
        let Some(process) = &event.process else {
            // The kernel did not know who connected: no proxy to tie the failure to.
            return Vec::new();
        };
        if !self.knowledge.is_proxy(process) {
            // Nobody's 502: still counted in the metrics, never an incident.
            return Vec::new();
        }
        let proxy = summary(process);
        let key = FlowKey {
            proxy: ProxyKey::of(&proxy),
            upstream,
        };
        if !self.flows.contains_key(&key) && self.flows.len() >= FLOW_CAPACITY {
            self.evict_idle_flows();
        }
        let window_ns = self.config.window_ms * 1_000_000;
        let rule = Rule {
            threshold: self.config.open_threshold,
            window_ns,
            min_failure_ratio: self.config.min_failure_ratio,
        };
        let flow = self
            .flows
            .entry(key.clone())
            .or_insert_with(|| Flow::new(proxy.clone(), event.mono_ns));
        flow.last_mono = event.mono_ns;
        flow.last_failure_mono = event.mono_ns;
        if let Some(nat) = nat_destination(event) {
            flow.nat_destination = Some(nat.clone());
        }
        if let Some(open) = flow.open.as_mut() {
            let incident = &mut open.incident;
            match what {
                Observed::Failure(kind) => {
                    incident.failures += count;
                    *incident.failure_kinds.entry(kind).or_default() += count;
                }
                Observed::Response(code) => *incident.responses.entry(code).or_default() += count,
            }
            incident.last_failure_at = event.time;
            open.last_mono = event.mono_ns;
            open.dirty = true;
            return Vec::new();
        }

        // Only outside incidents: an open one takes every failure anyway.
        let strong = flow
            .nat_destination
            .as_ref()
            .or(key.upstream.as_ref())
            .is_some_and(|u| self.knowledge.strong_evidence(u, event.mono_ns));
        let Some(spike) = flow
            .window
            .push((event.mono_ns, event.time), what, count, rule, strong)
        else {
            return Vec::new();
        };
        let failures = spike.kinds.values().sum();
        let incident = Incident {
            id: self.next_id,
            state: IncidentState::Open,
            started_at: spike.first_time,
            last_failure_at: event.time,
            closed_at: None,
            proxy: flow.proxy.clone(),
            upstream: key
                .upstream
                .as_ref()
                .map_or_else(|| NO_UPSTREAM.to_string(), ToString::to_string),
            failures,
            failure_kinds: spike.kinds,
            responses: spike.responses,
            causes: Vec::new(),
        };
        self.next_id += 1;
        let mut open = OpenIncident {
            incident,
            first_mono: spike.first_mono,
            last_mono: event.mono_ns,
            dirty: false,
        };
        if key.upstream.is_some() {
            // The 5xx responses its first failures already caused.
            let since = spike.first_mono.saturating_sub(window_ns);
            for (code, n) in self.pending.take(&key.proxy, since) {
                *open.incident.responses.entry(code).or_default() += n;
            }
        }
        let nat = flow.nat_destination.clone();
        open.incident.causes = self.explain(&key, nat.as_ref(), &open);
        let opened = open.incident.clone();
        self.flows.get_mut(&key).expect("just inserted").open = Some(Box::new(open));
        self.open_count += 1;
        vec![Update::Opened(opened)]
    }

    fn explain(
        &self,
        key: &FlowKey,
        nat_destination: Option<&Endpoint>,
        open: &OpenIncident,
    ) -> Vec<Candidate> {
        let Some(upstream) = &key.upstream else {
            return vec![explain::no_upstream_connect(&open.incident)];
        };
        explain::explain(
            &Failures {
                upstream,
                nat_destination,
                proxy: &open.incident.proxy,
                first_mono: open.first_mono,
                first_time: open.incident.started_at,
                count: open.incident.failures,
                kinds: &open.incident.failure_kinds,
                responses: &open.incident.responses,
            },
            &self.knowledge,
        )
    }

    fn mark_open_dirty(&mut self) {
        for open in self.flows.values_mut().filter_map(|f| f.open.as_mut()) {
            open.dirty = true;
        }
    }

    /// Forgets the least recently failing tenth of the idle flows at once: one sort per
    /// thousands of new flows, so that a storm of distinct upstreams stays cheap.
    fn evict_idle_flows(&mut self) {
        let mut idle: Vec<(u64, FlowKey)> = self
            .flows
            .iter()
            .filter(|(_, f)| f.open.is_none())
            .map(|(k, f)| (f.last_mono, k.clone()))
            .collect();
        idle.sort_unstable_by_key(|(mono, _)| *mono);
        for (_, key) in idle.into_iter().take(FLOW_CAPACITY / 10) {
            self.flows.remove(&key);
        }
    }
}

/// The local address and namespace of the socket a failure event is about.
fn socket_source(event: &Event) -> Option<(NetNs, SocketAddr)> {
    match &event.detail {
        EventDetail::TcpConnectFailure(f) => Some((f.netns, f.src)),
        EventDetail::TcpResetReceived(r) => Some((r.netns, r.src)),
        EventDetail::UpstreamEnd(end) => Some((end.netns, end.src)),
        _ => None,
    }
}

/// Where conntrack says a DNAT sent the failed connection.
fn nat_destination(event: &Event) -> Option<&Endpoint> {
    match &event.detail {
        EventDetail::TcpConnectFailure(f) => f.nat_destination.as_ref(),
        EventDetail::ConnectSyscallError(e) => e.nat_destination.as_ref(),
        EventDetail::TcpResetReceived(r) => r.nat_destination.as_ref(),
        EventDetail::UpstreamEnd(end) => end.nat_destination.as_ref(),
        _ => None,
    }
}
