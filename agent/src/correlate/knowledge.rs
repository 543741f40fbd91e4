//! What the host is known to be, learned from events: who listens where ([`ListenerTable`])
//! and what happened to processes lately ([`ProcessHistory`]). Explanations read it; only
//! events change it.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use super::{
    history::{Dated, ExitRecord, ProcessHistory, SignalRecord},
    listeners::{ListenerTable, Owner},
};
use crate::model::{
    event::{Endpoint, Event, EventDetail, ProcessRef, Source},
    incident::ProcessSummary,
};

/// Endpoints the listener table remembers.
const LISTENER_CAPACITY: usize = 8192;

/// Processes remembered as having listened (they serve clients: a proxy connecting
/// upstream is one of them).
const LISTENER_OWNER_CAPACITY: usize = 16384;

/// A worker death this close before a failure is evidence enough to open an incident on
/// that failure alone (the worker's connections end right after it dies).
pub const WORKER_DEATH_WINDOW: Duration = Duration::from_secs(5);

pub struct Knowledge {
    pub listeners: ListenerTable,
    pub history: ProcessHistory,
    /// Addresses of this host's interfaces (loopback included).
    pub local_ips: Vec<IpAddr>,
    /// When the agent started watching, for "never listened since".
    pub watching_since: SystemTime,
    /// How far back before the first failure evidence counts.
    pub lookback_ns: u64,
    /// Processes that opened a listener, and when they last did.
    listener_owners: HashMap<u32, u64>,
}

impl Knowledge {
    pub fn new(local_ips: Vec<IpAddr>, watching_since: SystemTime, lookback_ns: u64) -> Self {
        Self {
            listeners: ListenerTable::new(LISTENER_CAPACITY),
            history: ProcessHistory::default(),
            local_ips,
            watching_since,
            lookback_ns,
            listener_owners: HashMap::new(),
        }
    }

    /// Whether `process` is a proxy: a known one, or one that serves clients (it or its
    /// parent listens) and connects upstream. Other processes' failures (a CLI probing a
    /// closed port, a script, `runuser` missing `/dev/log`) are nobody's 502.
    pub fn is_proxy(&self, process: &ProcessRef) -> bool {
        let exe = process.info.as_deref().and_then(|i| i.exe.as_deref());
        let known = crate::model::proxy::known_proxy(&process.comm, exe).is_some();
        let ppid = process.info.as_deref().and_then(|i| i.ppid);
        known
            || self.listener_owners.contains_key(&process.pid)
            || ppid.is_some_and(|ppid| ppid > 1 && self.listener_owners.contains_key(&ppid))
    }

    /// Whether what is known about `upstream` makes a single failure an incident: its
    /// listener went away, or a worker of its owner just died.
    pub fn strong_evidence(&self, upstream: &Endpoint, mono: u64) -> bool {
        let Some((_, record)) = self.listeners.lookup(upstream) else {
            return false;
        };
        match &record.current {
            None => record
                .last_past_before(mono + WORKER_DEATH_WINDOW.as_nanos() as u64)
                .is_some_and(|past| past.closed_mono + self.lookback_ns >= mono),
            Some(owner) => self.worker_death(owner.process.pid, mono).is_some(),
        }
    }

    /// The latest abnormal death of a child of `owner_pid` (its worker) shortly before
    /// `mono` (or just after: the death and the failure travel apart).
    pub fn worker_death(&self, owner_pid: u32, mono: u64) -> Option<&Dated<ExitRecord>> {
        let window = WORKER_DEATH_WINDOW.as_nanos() as u64;
        self.history
            .deaths_between(mono.saturating_sub(window), mono + 1_000_000_000)
            .find(|d| d.value.ppid == Some(owner_pid) && d.value.pid != owner_pid)
    }

    /// How many workers of `owner_pid` died abnormally from shortly before `mono` on.
    pub fn worker_deaths_since(&self, owner_pid: u32, mono: u64) -> u64 {
        let window = WORKER_DEATH_WINDOW.as_nanos() as u64;
        self.history
            .deaths_between(mono.saturating_sub(window), u64::MAX)
            .filter(|d| d.value.ppid == Some(owner_pid) && d.value.pid != owner_pid)
            .count() as u64
    }

    /// A unix socket whose owner lost a worker (or died) around `mono`: where a proxy's
    /// 5xx with no failed connect most likely went (the kernel sees no end of a unix
    /// connection).
    pub fn unix_worker_death(&self, mono: u64) -> Option<Endpoint> {
        let window = WORKER_DEATH_WINDOW.as_nanos() as u64;
        self.history
            .deaths_between(mono.saturating_sub(window), mono + 1_000_000_000)
            .find_map(|d| {
                self.listeners
                    .unix_endpoint_of(|owner| Some(owner) == d.value.ppid || owner == d.value.pid)
            })
    }

    /// Learns what `event` says about listeners and processes. True when it changed what
    /// open incidents' explanations may say.
    pub fn learn(&mut self, event: &Event) -> bool {
        let mono = event.mono_ns;
        let time = event.time;
        match &event.detail {
            EventDetail::ListenerOpened(l) => {
                self.owner_listens(event.process.as_ref(), mono);
                let owner = owner_of(event.process.as_ref(), mono, time, l.source);
                self.listeners.opened(Endpoint::Tcp(l.endpoint), owner);
                true
            }
            EventDetail::UnixListenerOpened(l) => {
                self.owner_listens(event.process.as_ref(), mono);
                let owner = owner_of(event.process.as_ref(), mono, time, l.source);
                self.listeners.opened(Endpoint::Unix(l.path.clone()), owner);
                true
            }
            EventDetail::ListenerClosed(l) => {
                self.listeners
                    .closed(&Endpoint::Tcp(l.endpoint), mono, time);
                true
            }
            EventDetail::ProcessExit(exit) => {
                if let Some(p) = &event.process {
                    self.history.exited(Dated {
                        mono,
                        time,
                        value: ExitRecord {
                            pid: p.pid,
                            ppid: exit.ppid.or_else(|| p.info.as_deref().and_then(|i| i.ppid)),
                            process: summary(p),
                            exit: exit.clone(),
                        },
                    });
                    self.listeners.owner_exited(p.pid, mono, time);
                    self.listener_owners.remove(&p.pid);
                }
                false
            }
            EventDetail::OomKill(kill) => {
                self.history.oom_killed(Dated {
                    mono,
                    time,
                    value: kill.clone(),
                });
                false
            }
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
                false
            }
            EventDetail::MemoryPressure(p) => {
                self.history.memory_pressure(Dated {
                    mono,
                    time,
                    value: p.clone(),
                });
                false
            }
            EventDetail::ListenQueueFull(q) => {
                self.history.queue_full(Dated {
                    mono,
                    time,
                    value: q.clone(),
                });
                true
            }
            EventDetail::TcpConnectFailure(_)
            | EventDetail::ConnectSyscallError(_)
            | EventDetail::TcpResetReceived(_)
            | EventDetail::HttpResponses(_)
            | EventDetail::UpstreamEnd(_)
            | EventDetail::TcpResetSent(_)
            | EventDetail::TcpSynRetransmit(_)
            | EventDetail::TcpSynackRetransmit(_)
            | EventDetail::ProcessExec(_) => false,
        }
    }

    /// Forgets what happened before `horizon`.
    pub fn prune(&mut self, horizon: u64) {
        self.history.prune(horizon);
    }

    fn owner_listens(&mut self, process: Option<&ProcessRef>, mono: u64) {
        let Some(p) = process else { return };
        if self.listener_owners.len() >= LISTENER_OWNER_CAPACITY
            && !self.listener_owners.contains_key(&p.pid)
        {
            // The oldest half goes: owners that listened long ago and never exited are
            // the least likely to be serving now.
            let mut by_age: Vec<(u64, u32)> = self
                .listener_owners
                .iter()
                .map(|(pid, m)| (*m, *pid))
                .collect();
            by_age.sort_unstable();
            for (_, pid) in by_age.into_iter().take(LISTENER_OWNER_CAPACITY / 2) {
                self.listener_owners.remove(&pid);
            }
        }
        self.listener_owners.insert(p.pid, mono);
    }
}

/// A process as incidents name it.
pub fn summary(p: &ProcessRef) -> ProcessSummary {
    let info = p.info.as_deref();
    let exe = info.and_then(|i| i.exe.clone());
    ProcessSummary {
        pid: p.pid,
        comm: p.comm.clone(),
        known_proxy: crate::model::proxy::known_proxy(&p.comm, exe.as_deref()).map(String::from),
        exe,
        uid: info.and_then(|i| i.uid),
        unit: info.and_then(|i| i.unit.clone()),
        cgroup: info.and_then(|i| i.cgroup.clone()),
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
