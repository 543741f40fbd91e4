//! What the host is known to be, learned from events: who listens where ([`ListenerTable`])
//! and what happened to processes lately ([`ProcessHistory`]). Explanations read it; only
//! events change it.

use std::{net::IpAddr, time::SystemTime};

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

pub struct Knowledge {
    pub listeners: ListenerTable,
    pub history: ProcessHistory,
    /// Addresses of this host's interfaces (loopback included).
    pub local_ips: Vec<IpAddr>,
    /// When the agent started watching, for "never listened since".
    pub watching_since: SystemTime,
    /// How far back before the first failure evidence counts.
    pub lookback_ns: u64,
}

impl Knowledge {
    pub fn new(local_ips: Vec<IpAddr>, watching_since: SystemTime, lookback_ns: u64) -> Self {
        Self {
            listeners: ListenerTable::new(LISTENER_CAPACITY),
            history: ProcessHistory::default(),
            local_ips,
            watching_since,
            lookback_ns,
        }
    }

    /// Learns what `event` says about listeners and processes. True when it changed what
    /// open incidents' explanations may say.
    pub fn learn(&mut self, event: &Event) -> bool {
        let mono = event.mono_ns;
        let time = event.time;
        match &event.detail {
            EventDetail::ListenerOpened(l) => {
                let owner = owner_of(event.process.as_ref(), mono, time, l.source);
                self.listeners.opened(Endpoint::Tcp(l.endpoint), owner);
                true
            }
            EventDetail::UnixListenerOpened(l) => {
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
                            process: summary(p),
                            exit: exit.clone(),
                        },
                    });
                    self.listeners.owner_exited(p.pid, mono, time);
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
