//! The correlation engine: consumes events in time order, keeps who serves what and what
//! happened to processes, detects failure spikes per (proxy, upstream) and turns each into
//! an [`Incident`] with its explanation.
//!
//! Deterministic: time is the events' own (`mono_ns`/`time`) and the caller's `tick`, so
//! recorded or synthetic streams give the same incidents every time.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    time::SystemTime,
};

use super::{
    explain::{self, Failures, Knowledge},
    history::{Dated, ExitRecord, ProcessHistory, SignalRecord},
    incident::{Incident, IncidentState, ProcessSummary, NO_UPSTREAM},
    listeners::{ListenerTable, Owner},
    proxy,
};
use crate::{
    config::IncidentConfig,
    events::{Endpoint, Event, EventDetail, ProcessRef, Source},
};

/// Endpoints the listener table remembers.
const LISTENER_CAPACITY: usize = 8192;
/// (proxy, upstream) pairs followed at once; idle ones are forgotten first.
const FLOW_CAPACITY: usize = 4096;
/// Seconds of failure history that make up a flow's baseline.
const BASELINE_SECONDS: usize = 60;
/// A spike must exceed this multiple of the baseline failure rate.
const BASELINE_FACTOR: f64 = 3.0;
/// The responses a proxy gives when it could not get one from its upstream.
const BAD_GATEWAY_CODES: [u16; 3] = [502, 503, 504];
/// How long 5xx responses wait for the failures behind them before they may count as a
/// spike of their own (the failures travel a different, streamed, path).
const RESPONSE_GRACE_NS: u64 = 500_000_000;
/// Responses counted one by one in a flow's window, at most (a window only has to reach
/// the threshold).
const WINDOW_CAP: usize = 10_000;

/// What an event or a tick changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Opened(Incident),
    Updated(Incident),
    Closed(Incident),
}

impl Update {
    pub fn incident(&self) -> &Incident {
        match self {
            Update::Opened(i) | Update::Updated(i) | Update::Closed(i) => i,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    /// The proxy's unit when it has one (all its workers are one proxy), else its name.
    proxy: String,
    /// `None`: 5xx responses of the proxy with no upstream failure to blame.
    upstream: Option<Endpoint>,
}

#[derive(Debug, Clone)]
struct Failure {
    mono: u64,
    time: SystemTime,
    kind: String,
    /// How many (responses arrive counted; failures one by one).
    count: u64,
}

/// 5xx responses not yet tied to an incident.
#[derive(Debug, Clone)]
struct PendingResponses {
    mono: u64,
    time: SystemTime,
    code: u16,
    count: u64,
    process: ProcessRef,
    /// Already judged (opened or counted on a response-only incident).
    used: bool,
}

struct OpenIncident {
    incident: Incident,
    first_mono: u64,
    last_mono: u64,
    dirty: bool,
}

struct Flow {
    proxy: ProcessSummary,
    /// Failures inside the current window, oldest first.
    window: VecDeque<Failure>,
    /// Failures per second over the last minute (outside incidents), for the baseline.
    /// u16: a second with more failures than that is a spike anyway.
    per_second: [u16; BASELINE_SECONDS],
    baseline_second: u64,
    /// Boxed: most flows never open one, and an incident is large.
    open: Option<Box<OpenIncident>>,
    last_mono: u64,
}

pub struct Engine {
    /// Flows with an open incident (kept, not counted per event: that was a scan).
    open_count: usize,
    /// 5xx responses of proxies whose failures have not (yet) made an incident, by proxy:
    /// an incident that opens takes those of its window, the rest age out.
    pending_responses: HashMap<String, VecDeque<PendingResponses>>,
    config: IncidentConfig,
    listeners: ListenerTable,
    history: ProcessHistory,
    flows: HashMap<FlowKey, Flow>,
    next_id: u64,
    local_ips: Vec<IpAddr>,
    watching_since: SystemTime,
}

impl Engine {
    /// `next_id`: the first incident id to hand out (one past the store's highest).
    pub fn new(
        config: IncidentConfig,
        next_id: u64,
        local_ips: Vec<IpAddr>,
        watching_since: SystemTime,
    ) -> Self {
        Self {
            open_count: 0,
            pending_responses: HashMap::new(),
            config,
            listeners: ListenerTable::new(LISTENER_CAPACITY),
            history: ProcessHistory::default(),
            flows: HashMap::new(),
            next_id: next_id.max(1),
            local_ips,
            watching_since,
        }
    }

    pub fn open_incidents(&self) -> usize {
        self.open_count
    }

    /// Takes one event; returns the incidents it opened.
    pub fn observe(&mut self, event: &Event) -> Vec<Update> {
        let mono = event.mono_ns;
        let time = event.time;
        match &event.detail {
            EventDetail::TcpConnectFailure(f) => {
                return self.failure(event, Some(Endpoint::Tcp(f.dst)), f.kind(), 1);
            }
            EventDetail::ConnectSyscallError(e) => {
                if e.is_benign() {
                    return Vec::new();
                }
                return self.failure(event, Some(e.dst.clone()), e.errno.name().to_string(), 1);
            }
            EventDetail::TcpResetReceived(r) => {
                return self.failure(event, Some(Endpoint::Tcp(r.dst)), "reset".into(), 1);
            }
            EventDetail::HttpResponses(r) if BAD_GATEWAY_CODES.contains(&r.code) => {
                return self.bad_responses(event, r.code, r.count);
            }
            EventDetail::ListenerOpened(l) => {
                let owner = owner_of(event.process.as_ref(), mono, time, l.source);
                self.listeners.opened(Endpoint::Tcp(l.endpoint), owner);
                self.mark_open_dirty();
            }
            EventDetail::UnixListenerOpened(l) => {
                let owner = owner_of(event.process.as_ref(), mono, time, l.source);
                self.listeners.opened(Endpoint::Unix(l.path.clone()), owner);
                self.mark_open_dirty();
            }
            EventDetail::ListenerClosed(l) => {
                self.listeners
                    .closed(&Endpoint::Tcp(l.endpoint), mono, time);
                self.mark_open_dirty();
            }
            EventDetail::ProcessExit(exit) => {
                if let Some(p) = &event.process {
                    self.history.exited(Dated {
                        mono,
                        time,
                        value: ExitRecord {
                            pid: p.pid,
                            process: summary(p),
                            exit: exit.clone(),
                        },
                    });
                    self.listeners.owner_exited(p.pid, mono, time);
                }
            }
            EventDetail::OomKill(kill) => self.history.oom_killed(Dated {
                mono,
                time,
                value: kill.clone(),
            }),
            EventDetail::Signal(signal) => {
                if let (Some(sender), Ok(target)) =
                    (&event.process, u32::try_from(signal.target_pid))
                {
                    self.history.signalled(Dated {
                        mono,
                        time,
                        value: SignalRecord {
                            target_pid: target,
                            sender: summary(sender),
                            signal: signal.clone(),
                        },
                    });
                }
            }
            EventDetail::MemoryPressure(p) => self.history.memory_pressure(Dated {
                mono,
                time,
                value: p.clone(),
            }),
            EventDetail::ListenQueueFull(q) => {
                self.history.queue_full(Dated {
                    mono,
                    time,
                    value: q.clone(),
                });
                self.mark_open_dirty();
            }
            EventDetail::HttpResponses(_)
            | EventDetail::TcpResetSent(_)
            | EventDetail::TcpSynRetransmit(_)
            | EventDetail::TcpSynackRetransmit(_)
            | EventDetail::ProcessExec(_) => {}
        }
        Vec::new()
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
                self.open_count -= 1;
                flow.window.clear();
                open.incident.state = IncidentState::Closed;
                open.incident.closed_at = Some(now);
                let causes = self.explain(&key, &open);
                open.incident.causes = causes;
                updates.push(Update::Closed(open.incident));
            } else if dirty {
                let causes = {
                    let open = self.flows[&key].open.as_ref().expect("checked open");
                    self.explain(&key, open)
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
        self.history.prune(horizon);
        self.flows
            .retain(|_, f| f.open.is_some() || f.last_mono >= horizon);
        self.pending_responses.retain(|_, pending| {
            pending.retain(|r| r.mono >= horizon);
            !pending.is_empty()
        });
        updates
    }

    /// 5xx responses of a proxy: counted on its open incident when it has one (they are
    /// what its upstream failures became), else a flow of their own, which opens an
    /// incident of 5xx responses with no upstream failure to blame.
    fn bad_responses(&mut self, event: &Event, code: u16, count: u64) -> Vec<Update> {
        let Some(process) = &event.process else {
            return Vec::new();
        };
        let proxy_key = summary(process)
            .unit
            .unwrap_or_else(|| process.comm.clone());
        let open = self
            .flows
            .iter_mut()
            .filter(|(k, f)| k.proxy == proxy_key && f.open.is_some())
            .max_by_key(|(_, f)| f.open.as_ref().map_or(0, |o| o.last_mono));
        if let Some((_, flow)) = open {
            let open = flow.open.as_mut().expect("filtered on open");
            *open.incident.responses.entry(code.to_string()).or_default() += count;
            open.dirty = true;
            return Vec::new();
        }
        // Not (yet) tied to an incident: the failures behind them may still be on their
        // way through the ring buffer (responses are polled, failures streamed). An
        // incident that opens takes them; `tick` decides about the rest after a grace.
        let window_ns = self.config.window_ms * 1_000_000;
        let pending = self.pending_responses.entry(proxy_key).or_default();
        while pending
            .front()
            .is_some_and(|p| p.mono + window_ns + 2 * RESPONSE_GRACE_NS < event.mono_ns)
            || pending.len() >= WINDOW_CAP
        {
            pending.pop_front();
        }
        pending.push_back(PendingResponses {
            mono: event.mono_ns,
            time: event.time,
            code,
            count,
            process: process.clone(),
            used: false,
        });
        Vec::new()
    }

    /// 5xx responses pending past their grace with no failure of their proxy around them
    /// open an incident of their own when they are a spike.
    fn responses_without_failures(&mut self, now_mono: u64) -> Vec<Update> {
        let window_ns = self.config.window_ms * 1_000_000;
        let ready: Vec<String> = self
            .pending_responses
            .iter()
            .filter(|(_, p)| {
                p.iter()
                    .any(|r| !r.used && r.mono + RESPONSE_GRACE_NS <= now_mono)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut updates = Vec::new();
        for proxy in ready {
            let Some(pending) = self.pending_responses.get(&proxy) else {
                continue;
            };
            let due: Vec<PendingResponses> = pending
                .iter()
                .filter(|r| !r.used && r.mono + RESPONSE_GRACE_NS <= now_mono)
                .cloned()
                .collect();
            let Some(first) = due.first() else { continue };
            // Failures of this proxy around them: the responses are theirs, waiting for an
            // incident to open (or to age out below the threshold).
            let failing = self.flows.iter().any(|(k, f)| {
                k.proxy == proxy
                    && k.upstream.is_some()
                    && f.last_mono + window_ns + RESPONSE_GRACE_NS >= first.mono
            });
            if failing {
                continue;
            }
            if let Some(pending) = self.pending_responses.get_mut(&proxy) {
                for r in pending.iter_mut().filter(|r| r.mono <= now_mono) {
                    r.used = true;
                }
            }
            for r in due {
                let event = Event {
                    time: r.time,
                    mono_ns: r.mono,
                    process: Some(r.process),
                    detail: EventDetail::HttpResponses(crate::events::HttpResponses {
                        code: r.code,
                        count: r.count,
                    }),
                };
                updates.extend(self.failure(&event, None, r.code.to_string(), r.count));
            }
        }
        updates
    }

    fn failure(
        &mut self,
        event: &Event,
        upstream: Option<Endpoint>,
        kind: String,
        count: u64,
    ) -> Vec<Update> {
        let Some(process) = &event.process else {
            // The kernel did not know who connected: no proxy to tie the failure to.
            return Vec::new();
        };
        let proxy = summary(process);
        let key = FlowKey {
            proxy: proxy.unit.clone().unwrap_or_else(|| proxy.comm.clone()),
            upstream,
        };
        if !self.flows.contains_key(&key) && self.flows.len() >= FLOW_CAPACITY {
            self.evict_idle_flows();
        }
        let window_ns = self.config.window_ms * 1_000_000;
        let threshold = self.config.open_threshold;
        let flow = self.flows.entry(key.clone()).or_insert_with(|| Flow {
            proxy: proxy.clone(),
            window: VecDeque::new(),
            per_second: [0; BASELINE_SECONDS],
            baseline_second: event.mono_ns / 1_000_000_000,
            open: None,
            last_mono: event.mono_ns,
        });
        flow.last_mono = event.mono_ns;
        if let Some(open) = flow.open.as_mut() {
            let incident = &mut open.incident;
            if key.upstream.is_some() {
                incident.failures += count;
                *incident.failure_kinds.entry(kind).or_default() += count;
            } else {
                *incident.responses.entry(kind).or_default() += count;
            }
            incident.last_failure_at = event.time;
            open.last_mono = event.mono_ns;
            open.dirty = true;
            return Vec::new();
        }

        let required = flow.required(threshold, window_ns, event.mono_ns);
        flow.count_for_baseline(event.mono_ns, count);
        flow.window.push_back(Failure {
            mono: event.mono_ns,
            time: event.time,
            kind,
            count,
        });
        while flow
            .window
            .front()
            .is_some_and(|f| f.mono + window_ns < event.mono_ns)
            || flow.window.len() > WINDOW_CAP
        {
            flow.window.pop_front();
        }
        let in_window: u64 = flow.window.iter().map(|f| f.count).sum();
        if in_window < required {
            return Vec::new();
        }

        let first = flow.window.front().cloned().expect("window is not empty");
        let mut kinds = BTreeMap::new();
        for f in &flow.window {
            *kinds.entry(f.kind.clone()).or_default() += f.count;
        }
        let (failures, failure_kinds, responses) = match key.upstream {
            Some(_) => (in_window, kinds, BTreeMap::new()),
            None => (0, BTreeMap::new(), kinds),
        };
        let incident = Incident {
            id: self.next_id,
            state: IncidentState::Open,
            started_at: first.time,
            last_failure_at: event.time,
            closed_at: None,
            proxy: flow.proxy.clone(),
            upstream: key
                .upstream
                .as_ref()
                .map_or_else(|| NO_UPSTREAM.to_string(), ToString::to_string),
            failures,
            failure_kinds,
            responses,
            causes: Vec::new(),
        };
        self.next_id += 1;
        flow.window.clear();
        let mut open = OpenIncident {
            incident,
            first_mono: first.mono,
            last_mono: event.mono_ns,
            dirty: false,
        };
        if key.upstream.is_some() {
            // The 5xx responses its first failures already caused.
            if let Some(pending) = self.pending_responses.remove(&key.proxy) {
                for r in pending {
                    if !r.used && r.mono + window_ns >= first.mono {
                        *open
                            .incident
                            .responses
                            .entry(r.code.to_string())
                            .or_default() += r.count;
                    }
                }
            }
        }
        open.incident.causes = self.explain(&key, &open);
        let opened = open.incident.clone();
        self.flows.get_mut(&key).expect("just inserted").open = Some(Box::new(open));
        self.open_count += 1;
        vec![Update::Opened(opened)]
    }

    fn explain(&self, key: &FlowKey, open: &OpenIncident) -> Vec<super::incident::Candidate> {
        let Some(upstream) = &key.upstream else {
            return vec![explain::no_upstream_connect(&open.incident)];
        };
        explain::explain(
            &Failures {
                upstream,
                proxy: &open.incident.proxy,
                first_mono: open.first_mono,
                first_time: open.incident.started_at,
                count: open.incident.failures,
                kinds: &open.incident.failure_kinds,
            },
            &Knowledge {
                listeners: &self.listeners,
                history: &self.history,
                local_ips: &self.local_ips,
                watching_since: self.watching_since,
                lookback_ns: self.config.lookback_seconds * 1_000_000_000,
            },
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

impl Flow {
    /// Failures needed in one window to call it a spike: the configured threshold, or more
    /// when this flow already fails steadily (its baseline).
    fn required(&mut self, threshold: u32, window_ns: u64, mono: u64) -> u64 {
        self.advance_baseline(mono / 1_000_000_000);
        let per_minute: u32 = self.per_second.iter().map(|&n| u32::from(n)).sum();
        let per_window = f64::from(per_minute) / BASELINE_SECONDS as f64 * window_ns as f64 / 1e9;
        u64::from(threshold).max((per_window * BASELINE_FACTOR).ceil() as u64)
    }

    fn count_for_baseline(&mut self, mono: u64, count: u64) {
        let second = mono / 1_000_000_000;
        self.advance_baseline(second);
        let slot = &mut self.per_second[(second % BASELINE_SECONDS as u64) as usize];
        *slot = slot.saturating_add(u16::try_from(count).unwrap_or(u16::MAX));
    }

    fn advance_baseline(&mut self, second: u64) {
        if second <= self.baseline_second {
            return;
        }
        let steps = (second - self.baseline_second).min(BASELINE_SECONDS as u64);
        for s in 1..=steps {
            self.per_second[((self.baseline_second + s) % BASELINE_SECONDS as u64) as usize] = 0;
        }
        self.baseline_second = second;
    }
}

pub fn summary(p: &ProcessRef) -> ProcessSummary {
    let info = p.info.as_deref();
    let exe = info.and_then(|i| i.exe.clone());
    ProcessSummary {
        pid: p.pid,
        comm: p.comm.clone(),
        known_proxy: proxy::known_proxy(&p.comm, exe.as_deref()).map(String::from),
        exe,
        unit: info.and_then(|i| i.unit.clone()),
        container: info.and_then(|i| i.container.clone()),
    }
}

fn owner_of(process: Option<&ProcessRef>, mono: u64, time: SystemTime, source: Source) -> Owner {
    Owner {
        process: process.map(summary).unwrap_or_else(|| ProcessSummary {
            comm: "unknown process".into(),
            ..Default::default()
        }),
        ppid: process.and_then(|p| p.info.as_ref()).and_then(|i| i.ppid),
        since_mono: mono,
        since: time,
        from_snapshot: source == Source::Snapshot,
    }
}
