//! Enrichment: adds what procfs knows to the kernel's events (executable, redacted command
//! line, systemd unit, container), resolves `listen(2)` calls to unix socket paths, and
//! reads the listeners that exist at start-up.
//!
//! Process details come from the shared [`cache::ProcessCache`].

pub mod cache;
pub mod cgroup;
pub mod cgroup_ns;
pub mod interfaces;
pub mod listeners;
pub mod process;
pub mod redact;

use std::time::SystemTime;

pub use cache::ProcessCache;

use super::{conntrack::Annotator, decode::Decoded};
use crate::model::{
    clock,
    event::{Event, EventDetail, Listener, ProcessRef, Source, UnixListener},
    namespace::{MntNs, NetNs},
};

pub struct Enricher {
    cache: ProcessCache,
    /// The real destination of failures behind a DNAT, when conntrack is asked.
    nat: Option<Annotator>,
}

impl Enricher {
    pub fn new(cache: ProcessCache) -> Self {
        Self { cache, nat: None }
    }

    /// Asks conntrack about failed connections (on this, the enrichment thread).
    pub fn with_nat(mut self, nat: Annotator) -> Self {
        self.nat = Some(nat);
        self
    }

    /// Turns a decoded record into an enriched event; `None` for records that describe
    /// nothing to report (a `listen(2)` on a TCP socket, already reported by the kernel).
    pub fn enrich(&mut self, decoded: Decoded) -> Option<Event> {
        let mut event = match decoded {
            Decoded::Event(event) => event,
            Decoded::ListenCall {
                process,
                mono_ns,
                fd,
                mntns,
            } => {
                let path = listeners::unix_path_of_fd(process.pid, fd)?;
                Event {
                    time: clock::wall_time(mono_ns),
                    mono_ns,
                    process: Some(process),
                    detail: EventDetail::UnixListenerOpened(UnixListener {
                        path,
                        mntns,
                        source: Source::Kernel,
                    }),
                }
            }
        };
        let pid = event.process.as_ref().map(|p| p.pid);
        if let (Some(pid), EventDetail::ProcessExec(_)) = (pid, &event.detail) {
            // A new program in the same pid: the cached exe and command line are stale.
            self.cache.forget(pid);
        }
        if let Some(process) = event.process.as_mut() {
            process.info = self.cache.lookup(process.pid);
            name_after_process(process);
        }
        match &mut event.detail {
            EventDetail::ProcessExit(_) => {
                if let Some(pid) = pid {
                    self.cache.exited(pid);
                }
            }
            EventDetail::OomKill(kill) => kill.victim = self.cache.lookup(kill.victim_pid),
            EventDetail::Signal(signal) if signal.target_pid > 0 => {
                signal.target = self.cache.lookup(signal.target_pid as u32)
            }
            _ => {}
        }
        if let Some(nat) = self.nat.as_mut() {
            nat.annotate(&mut event);
        }
        Some(event)
    }

    /// The listeners that exist now, as events, with their processes' details.
    pub fn snapshot_events(&mut self, snapshot: &listeners::ListenerSnapshot) -> Vec<Event> {
        let mono_ns = clock::monotonic_ns();
        let time = SystemTime::now();
        let mut events = Vec::new();
        let tcp = snapshot.tcp.iter().map(|l| {
            (
                l.pid,
                EventDetail::ListenerOpened(Listener {
                    endpoint: l.address,
                    netns: NetNs::from_kernel(l.namespace),
                    source: Source::Snapshot,
                }),
            )
        });
        let unix = snapshot.unix.iter().map(|l| {
            (
                l.pid,
                EventDetail::UnixListenerOpened(UnixListener {
                    path: l.address.clone(),
                    mntns: MntNs::from_kernel(l.namespace),
                    source: Source::Snapshot,
                }),
            )
        });
        for (pid, detail) in tcp.chain(unix) {
            let process = pid.map(|pid| {
                let info = self.cache.lookup(pid);
                ProcessRef {
                    pid,
                    tid: pid,
                    thread: None,
                    comm: process::comm(pid).unwrap_or_default(),
                    cgroup_id: info
                        .as_ref()
                        .and_then(|i| i.cgroup.as_deref())
                        .map_or(0, process::cgroup_id),
                    info,
                }
            });
            events.push(Event {
                time,
                mono_ns,
                process,
                detail,
            });
        }
        events
    }
}

/// Names the process by its main thread (what `ps` shows), keeping the thread's own name
/// aside: proxies name their worker threads, and labels must not multiply by thread.
fn name_after_process(process: &mut ProcessRef) {
    let Some(name) = process.info.as_ref().and_then(|i| i.name.clone()) else {
        return;
    };
    if name != process.comm {
        process.thread = Some(std::mem::replace(&mut process.comm, name));
    }
}
