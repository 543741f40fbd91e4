//! Enrichment: adds what procfs knows to the kernel's events (executable, redacted command
//! line, systemd unit, container), resolves `listen(2)` calls to unix socket paths, and
//! reads the listeners that exist at start-up.
//!
//! Process details are cached (LRU, bounded) because the process may be gone by the time
//! an event about it is read: an exit, or the victim of an OOM kill.

pub mod cgroup;
pub mod interfaces;
pub mod listeners;
pub mod process;
pub mod redact;

use std::{
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use lru::LruCache;

use crate::events::{
    clock, decode::Decoded, Event, EventDetail, Listener, ProcessInfo, ProcessRef, Source,
    UnixListener,
};

/// How long an exited process's details keep serving events about it: the kernel reports
/// the exit before the process's sockets close, so a listener's close arrives just after.
const EXITED_GRACE: Duration = Duration::from_secs(2);

struct Cached {
    info: Arc<ProcessInfo>,
    /// When the process exited; past the grace period the pid may belong to a new process.
    exited: Option<Instant>,
}

pub struct Enricher {
    cache: LruCache<u32, Cached>,
    redactor: redact::Redactor,
}

impl Enricher {
    pub fn new(cache_entries: usize, redact_keys: &[String]) -> Self {
        Self {
            cache: LruCache::new(NonZeroUsize::new(cache_entries.max(1)).expect("max(1)")),
            redactor: redact::Redactor::new(redact_keys),
        }
    }

    /// Cached details of `pid`, read from procfs on a miss.
    pub fn lookup(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        if let Some(cached) = self.cache.get(&pid) {
            if cached.exited.is_none_or(|at| at.elapsed() < EXITED_GRACE) {
                return Some(cached.info.clone());
            }
            self.cache.pop(&pid);
        }
        let info = Arc::new(process::read(pid, &self.redactor)?);
        self.cache.put(
            pid,
            Cached {
                info: info.clone(),
                exited: None,
            },
        );
        Some(info)
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
            } => {
                let path = listeners::unix_path_of_fd(process.pid, fd)?;
                Event {
                    time: clock::wall_time(mono_ns),
                    mono_ns,
                    process: Some(process),
                    detail: EventDetail::UnixListenerOpened(UnixListener {
                        path,
                        source: Source::Kernel,
                    }),
                }
            }
        };
        let pid = event.process.as_ref().map(|p| p.pid);
        if let (Some(pid), EventDetail::ProcessExec(_)) = (pid, &event.detail) {
            // A new program in the same pid: the cached exe and command line are stale.
            self.cache.pop(&pid);
        }
        if let Some(process) = event.process.as_mut() {
            process.info = self.lookup(process.pid);
            name_after_process(process);
        }
        match &mut event.detail {
            EventDetail::ProcessExit(_) => {
                if let Some(cached) = pid.and_then(|pid| self.cache.get_mut(&pid)) {
                    cached.exited = Some(Instant::now());
                }
            }
            EventDetail::OomKill(kill) => kill.victim = self.lookup(kill.victim_pid),
            EventDetail::Signal(signal) if signal.target_pid > 0 => {
                signal.target = self.lookup(signal.target_pid as u32)
            }
            _ => {}
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
                    source: Source::Snapshot,
                }),
            )
        });
        let unix = snapshot.unix.iter().map(|l| {
            (
                l.pid,
                EventDetail::UnixListenerOpened(UnixListener {
                    path: l.address.clone(),
                    source: Source::Snapshot,
                }),
            )
        });
        for (pid, detail) in tcp.chain(unix) {
            let process = pid.map(|pid| {
                let info = self.lookup(pid);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_itself_with_a_redacted_cmdline() {
        let mut enricher = Enricher::new(4, &["password".to_string()]);
        let me = std::process::id();
        let info = enricher.lookup(me).expect("own process is visible");
        assert!(info.exe.as_deref().is_some_and(|e| !e.is_empty()));
        assert!(info.cmdline.is_some());
        assert!(info.cgroup.is_some());
        // Cached: the same Arc comes back.
        assert!(Arc::ptr_eq(&info, &enricher.lookup(me).unwrap()));
        // Past the grace period after an exit, the cached details are not trusted: the
        // pid is read afresh (here: still this process, so a new Arc).
        enricher.cache.get_mut(&me).unwrap().exited = Some(Instant::now() - EXITED_GRACE);
        let fresh = enricher.lookup(me).unwrap();
        assert!(!Arc::ptr_eq(&info, &fresh));
        assert_eq!(*info, *fresh);
        assert!(enricher.lookup(u32::MAX - 1).is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let mut enricher = Enricher::new(2, &[]);
        for pid in [1, std::process::id()] {
            enricher.lookup(pid);
        }
        enricher.lookup(std::process::id());
        assert!(enricher.cache.len() <= 2);
    }
}
