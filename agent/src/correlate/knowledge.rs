//! What the host is known to be, learned from events: who listens where ([`ListenerTable`])
//! and what happened to processes lately ([`ProcessHistory`]). Explanations read it; only
//! events change it.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use super::{
    history::{Dated, ExitRecord, Holder, ProcessHistory, SignalRecord},
    listeners::{ListenerTable, Owner},
};
use crate::model::{
    event::{Endpoint, Event, EventDetail, ProcessRef, Source},
    incident::ProcessSummary,
    namespace::NetNs,
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
    listener_owners: ListenerOwners,
}

impl Knowledge {
    pub fn new(local_ips: Vec<IpAddr>, watching_since: SystemTime, lookback_ns: u64) -> Self {
        let mut listeners = ListenerTable::new(LISTENER_CAPACITY);
        listeners
            .addresses
            .replace(NetNs::own(), local_ips.iter().copied());
        Self {
            listeners,
            history: ProcessHistory::default(),
            local_ips,
            watching_since,
            lookback_ns,
            listener_owners: ListenerOwners::new(LISTENER_OWNER_CAPACITY),
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
            || self.listener_owners.contains(process.pid)
            || ppid.is_some_and(|ppid| ppid > 1 && self.listener_owners.contains(ppid))
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
                // A listener bound to one address says whose address it is.
                self.listeners.addresses.learn(l.netns, l.endpoint.ip());
                self.owner_listens(event.process.as_ref(), mono);
                let owner = owner_of(event.process.as_ref(), mono, time, l.source);
                self.listeners
                    .opened(Endpoint::Tcp(l.netns, l.endpoint), owner);
                true
            }
            EventDetail::UnixListenerOpened(l) => {
                self.owner_listens(event.process.as_ref(), mono);
                let owner = owner_of(event.process.as_ref(), mono, time, l.source);
                self.listeners
                    .opened(Endpoint::Unix(l.mntns, l.path.clone()), owner);
                true
            }
            EventDetail::ListenerClosed(l) => {
                self.listeners
                    .closed(&Endpoint::Tcp(l.netns, l.endpoint), mono, time);
                true
            }
            EventDetail::ProcessExit(exit) => {
                if let Some(p) = &event.process {
                    let ppid = exit.ppid.or_else(|| p.info.as_deref().and_then(|i| i.ppid));
                    let holder = Holder {
                        uid: uid_of(p),
                        serves: self.serves(Some(p), p.pid, ppid),
                    };
                    self.history.exited(
                        holder,
                        Dated {
                            mono,
                            time,
                            value: ExitRecord {
                                pid: p.pid,
                                ppid,
                                process: summary(p),
                                exit: exit.clone(),
                            },
                        },
                    );
                    self.listeners.owner_exited(p.pid, mono, time);
                    self.listener_owners.remove(p.pid);
                }
                false
            }
            EventDetail::OomKill(kill) => {
                let ppid = kill.victim.as_deref().and_then(|i| i.ppid);
                let holder = Holder {
                    uid: Some(kill.uid),
                    serves: self.serves(None, kill.victim_pid, ppid),
                };
                self.history.oom_killed(
                    holder,
                    Dated {
                        mono,
                        time,
                        value: kill.clone(),
                    },
                );
                false
            }
            EventDetail::Signal(signal) => {
                if let (Some(sender), Ok(target)) =
                    (&event.process, u32::try_from(signal.target_pid))
                {
                    // The sender's records: a user signalling its own processes in a loop
                    // fills its own share.
                    let ppid = signal.target.as_deref().and_then(|i| i.ppid);
                    let holder = Holder {
                        uid: uid_of(sender),
                        serves: self.serves(None, target, ppid),
                    };
                    self.history.signalled(
                        holder,
                        Dated {
                            mono,
                            time,
                            value: SignalRecord {
                                target_pid: target,
                                sender: summary(sender),
                                signal: signal.clone(),
                            },
                        },
                    );
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

    /// Whether `upstream` is served on this host: an address of one of its network
    /// namespaces (the agent's own or a pod's), or a unix socket.
    pub fn is_local(&self, upstream: &Endpoint) -> bool {
        match upstream {
            Endpoint::Unix(..) => true,
            Endpoint::Tcp(_, addr) => {
                addr.ip().is_loopback()
                    || self.local_ips.contains(&addr.ip())
                    || self.listeners.addresses.namespace_of(addr.ip()).is_some()
            }
        }
    }

    /// Forgets what happened before `horizon`.
    pub fn prune(&mut self, horizon: u64) {
        self.history.prune(horizon);
    }

    fn owner_listens(&mut self, process: Option<&ProcessRef>, mono: u64) {
        let Some(p) = process else { return };
        self.listener_owners.insert(p.pid, uid_of(p), mono);
    }

    /// Whether records about `pid` (of parent `ppid`) are about a process that serves
    /// clients: a known proxy, a listener, or a listener's worker. Those are kept longest.
    fn serves(&self, process: Option<&ProcessRef>, pid: u32, ppid: Option<u32>) -> bool {
        let known = process.is_some_and(|p| {
            let exe = p.info.as_deref().and_then(|i| i.exe.as_deref());
            crate::model::proxy::known_proxy(&p.comm, exe).is_some()
        });
        known
            || self.listener_owners.contains(pid)
            || ppid.is_some_and(|ppid| ppid > 1 && self.listener_owners.contains(ppid))
    }
}

/// Processes remembered as having listened, bounded and shared fairly between users: when
/// full, the user with the most entries loses its oldest, so that one user forking
/// listeners in a loop cannot push a real proxy out (it would stop being one).
struct ListenerOwners {
    /// When each pid last listened, and its uid.
    by_pid: HashMap<u32, (u64, Option<u32>)>,
    /// Each uid's pids, oldest listen first.
    by_uid: HashMap<Option<u32>, BTreeSet<(u64, u32)>>,
    capacity: usize,
}

impl ListenerOwners {
    fn new(capacity: usize) -> Self {
        Self {
            by_pid: HashMap::new(),
            by_uid: HashMap::new(),
            capacity,
        }
    }

    fn contains(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    fn insert(&mut self, pid: u32, uid: Option<u32>, mono: u64) {
        if !self.remove(pid) && self.by_pid.len() >= self.capacity {
            let oldest_of_richest = self
                .by_uid
                .values()
                .max_by_key(|pids| pids.len())
                .and_then(|pids| pids.first().copied());
            if let Some((_, victim)) = oldest_of_richest {
                self.remove(victim);
            }
        }
        self.by_pid.insert(pid, (mono, uid));
        self.by_uid.entry(uid).or_default().insert((mono, pid));
    }

    /// Forgets `pid`; whether it was there.
    fn remove(&mut self, pid: u32) -> bool {
        let Some((mono, uid)) = self.by_pid.remove(&pid) else {
            return false;
        };
        if let Some(pids) = self.by_uid.get_mut(&uid) {
            pids.remove(&(mono, pid));
            if pids.is_empty() {
                self.by_uid.remove(&uid);
            }
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_pid.len()
    }
}

fn uid_of(p: &ProcessRef) -> Option<u32> {
    p.info.as_deref().and_then(|i| i.uid)
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
        runtime: info.and_then(|i| i.runtime).map(|r| r.name().to_string()),
        // Named now if the API listed the pod since the process was first read.
        pod: info
            .and_then(|i| i.pod.clone())
            .map(crate::sources::kubernetes::named),
    }
}

fn owner_of(process: Option<&ProcessRef>, mono: u64, time: SystemTime, source: Source) -> Owner {
    Owner {
        process: process.map(summary).unwrap_or_else(|| ProcessSummary {
            comm: "unknown process".into(),
            ..Default::default()
        }),
        ppid: process.and_then(|p| p.info.as_ref()).and_then(|i| i.ppid),
        uid: process.and_then(|p| p.info.as_ref()).and_then(|i| i.uid),
        since_mono: mono,
        since: time,
        from_snapshot: source == Source::Snapshot,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::Arc,
        time::{Duration, UNIX_EPOCH},
    };

    use super::*;
    use crate::{
        correlate::explain::{explain, Failures},
        model::{
            event::{Exit, Listener, OomKill, ProcessInfo, SignalSent},
            failure::FailureKind,
            incident::Cause,
            namespace::NetNs,
        },
    };

    const SEC: u64 = 1_000_000_000;
    const NOBODY: u32 = 65534;
    const WWW_DATA: u32 = 33;
    const BACKEND: &str = "127.0.0.1:9000";

    fn process(pid: u32, comm: &str, ppid: u32, uid: u32) -> ProcessRef {
        ProcessRef {
            pid,
            tid: pid,
            comm: comm.into(),
            thread: None,
            cgroup_id: 7,
            info: Some(Arc::new(ProcessInfo {
                ppid: Some(ppid),
                uid: Some(uid),
                exe: Some(format!("/usr/bin/{comm}")),
                ..Default::default()
            })),
        }
    }

    fn event(mono: u64, process: Option<ProcessRef>, detail: EventDetail) -> Event {
        Event {
            time: UNIX_EPOCH + Duration::from_nanos(mono),
            mono_ns: mono,
            process,
            detail,
        }
    }

    fn listening(mono: u64, owner: &ProcessRef, addr: &str) -> Event {
        event(
            mono,
            Some(owner.clone()),
            EventDetail::ListenerOpened(Listener {
                netns: NetNs::own(),
                endpoint: addr.parse().unwrap(),
                source: Source::Kernel,
            }),
        )
    }

    fn oom_kill(mono: u64, victim: &ProcessRef, uid: u32) -> Event {
        event(
            mono,
            None,
            EventDetail::OomKill(OomKill {
                victim_pid: victim.pid,
                victim_comm: victim.comm.clone(),
                total_vm_kb: 3 << 20,
                anon_rss_kb: 1 << 20,
                file_rss_kb: 0,
                shmem_rss_kb: 0,
                pgtables_kb: 0,
                uid,
                oom_score_adj: 0,
                victim: victim.info.clone(),
            }),
        )
    }

    fn killed(mono: u64, who: &ProcessRef) -> Event {
        let mut exit = Exit::from_wait_status(libc::SIGKILL);
        exit.ppid = who.info.as_deref().and_then(|i| i.ppid);
        event(mono, Some(who.clone()), EventDetail::ProcessExit(exit))
    }

    fn signal(mono: u64, sender: &ProcessRef, target: u32) -> Event {
        event(
            mono,
            Some(sender.clone()),
            EventDetail::Signal(SignalSent {
                signal: "SIGKILL".into(),
                signal_number: libc::SIGKILL,
                target_pid: target as i32,
                target_tid: None,
                target_comm: "junk".into(),
                origin: "user",
                group: true,
                result: "delivered",
                target: None,
            }),
        )
    }

    /// The top cause explaining failures to [`BACKEND`] from `first_mono` on.
    fn top_cause(k: &Knowledge, first_mono: u64) -> Cause {
        let kinds = BTreeMap::from([(FailureKind::ECONNREFUSED, 3)]);
        let upstream = Endpoint::own_tcp(BACKEND.parse().unwrap());
        let proxy = summary(&process(500, "nginx", 1, 0));
        let candidates = explain(
            &Failures {
                upstream: &upstream,
                nat_destination: None,
                proxy: &proxy,
                first_mono,
                first_time: UNIX_EPOCH + Duration::from_nanos(first_mono),
                count: 3,
                kinds: &kinds,
                responses: &BTreeMap::new(),
            },
            k,
        );
        candidates[0].cause
    }

    /// 100,000 deaths of user nobody's processes in the minute after a real backend was
    /// OOM-killed (nobody's own processes OOM-killed in a cgroup of its own, SIGKILLed by
    /// their parent, which listens too, so that its records count as a server's): the
    /// backend's OOM kill still explains the refused connects, and a worker's death
    /// still makes one failure strong evidence.
    #[test]
    fn a_flood_of_one_users_deaths_keeps_a_backends_oom_kill() {
        let mut k = Knowledge::new(vec!["127.0.0.1".parse().unwrap()], UNIX_EPOCH, 300 * SEC);
        let backend = process(100, "backend", 1, WWW_DATA);
        let fpm = process(200, "php-fpm", 1, WWW_DATA);
        let fpm_worker = process(201, "php-fpm", 200, WWW_DATA);
        k.learn(&listening(SEC, &backend, BACKEND));
        k.learn(&listening(SEC, &fpm, "127.0.0.1:9001"));
        k.learn(&oom_kill(10 * SEC, &backend, WWW_DATA));
        k.learn(&killed(10 * SEC + 1000, &backend));
        k.learn(&event(
            10 * SEC + 2000,
            Some(backend.clone()),
            EventDetail::ListenerClosed(Listener {
                netns: NetNs::own(),
                endpoint: BACKEND.parse().unwrap(),
                source: Source::Kernel,
            }),
        ));
        let first_failure = 70 * SEC;
        assert_eq!(top_cause(&k, first_failure), Cause::OomKill, "before");

        let parent = process(1000, "junk", 1, NOBODY);
        k.learn(&listening(11 * SEC, &parent, "127.0.0.1:40000"));
        const FLOOD: u64 = 100_000;
        for n in 0..FLOOD {
            let mono = 11 * SEC + n * (first_failure - 11 * SEC) / FLOOD;
            let child = process(2000 + (n % 30_000) as u32, "junk", 1000, NOBODY);
            k.learn(&signal(mono, &parent, child.pid));
            if n % 4 == 0 {
                k.learn(&oom_kill(mono, &child, NOBODY));
            }
            k.learn(&killed(mono + 1, &child));
        }
        // The worker dies in the thick of the flood, just before the failure.
        k.learn(&killed(first_failure - SEC, &fpm_worker));

        assert_eq!(top_cause(&k, first_failure), Cause::OomKill);
        assert_eq!(
            k.history.oom_kill_of(100, u64::MAX).map(|d| d.mono),
            Some(10 * SEC)
        );
        assert!(k.history.exit_of(100, u64::MAX).is_some());
        let death = k
            .worker_death(200, first_failure)
            .expect("the worker's death");
        assert_eq!(death.value.pid, 201);
        assert!(k.strong_evidence(
            &Endpoint::own_tcp("127.0.0.1:9001".parse().unwrap()),
            first_failure
        ));
        // Nobody's records are still there, within their share.
        let newest = 2000 + ((FLOOD - 1) % 30_000) as u32;
        assert!(k.history.exit_of(newest, u64::MAX).is_some());
    }

    /// A server whose workers die often (php-fpm recycling them: 3,000 in a minute) holds
    /// more records than a flooding user whose processes serve nobody: its workers'
    /// deaths are kept over the junk, every one of them.
    #[test]
    fn a_servers_worker_deaths_outlive_a_flood_of_junk_deaths() {
        let mut k = Knowledge::new(vec![], UNIX_EPOCH, 300 * SEC);
        let fpm = process(200, "php-fpm", 1, WWW_DATA);
        k.learn(&listening(SEC, &fpm, "127.0.0.1:9001"));
        const WORKERS: u32 = 3_000;
        for n in 0..WORKERS {
            let worker = process(10_000 + n, "php-fpm", 200, WWW_DATA);
            k.learn(&killed(2 * SEC + u64::from(n), &worker));
        }
        let junk_parent = process(1000, "junk", 1, NOBODY);
        for n in 0..100_000u32 {
            let child = process(100_000 + n, "junk", junk_parent.pid, NOBODY);
            k.learn(&killed(10 * SEC + u64::from(n), &child));
        }
        assert!((0..WORKERS).all(|n| k.history.exit_of(10_000 + n, u64::MAX).is_some()));
    }

    /// One user forking listeners in a loop (each stays alive) fills its share of the
    /// listener owners, not the table: the proxy that listened first is still one.
    #[test]
    fn a_flood_of_one_users_listeners_keeps_other_listener_owners() {
        let mut k = Knowledge::new(vec![], UNIX_EPOCH, 300 * SEC);
        // Not a known proxy: a proxy only because it listens.
        let proxy = process(300, "gateway", 1, WWW_DATA);
        let worker = process(301, "gateway", 300, WWW_DATA);
        k.learn(&listening(SEC, &proxy, "0.0.0.0:8080"));
        assert!(k.is_proxy(&worker));
        for n in 0..(2 * LISTENER_OWNER_CAPACITY as u32) {
            let junk = process(10_000 + n, "junk", 1, NOBODY);
            k.learn(&listening(2 * SEC + u64::from(n), &junk, "127.0.0.1:40000"));
        }
        assert!(k.listener_owners.len() <= LISTENER_OWNER_CAPACITY);
        assert!(k.is_proxy(&proxy));
        assert!(k.is_proxy(&worker));
        // Nobody keeps its newest.
        let newest = 10_000 + 2 * LISTENER_OWNER_CAPACITY as u32 - 1;
        assert!(k.is_proxy(&process(newest, "junk", 1, NOBODY)));
        assert!(!k.is_proxy(&process(10_000, "junk", 1, NOBODY)));
    }

    /// The listener table through `learn`: one user's current listeners fill its share,
    /// another user's current listener opened before is still looked up, and the refused
    /// ones are counted.
    #[test]
    fn a_flood_of_one_users_listeners_keeps_the_listener_table_for_others() {
        let mut k = Knowledge::new(vec![], UNIX_EPOCH, 300 * SEC);
        let backend = process(100, "backend", 1, WWW_DATA);
        k.learn(&listening(SEC, &backend, BACKEND));
        for n in 0..(2 * LISTENER_CAPACITY as u32) {
            let junk = process(10_000 + n, "junk", 1, NOBODY);
            let port = 10_000 + n % 50_000;
            k.learn(&listening(
                2 * SEC + u64::from(n),
                &junk,
                &format!("127.0.0.2:{port}"),
            ));
        }
        let (_, record) = k
            .listeners
            .lookup(&Endpoint::own_tcp(BACKEND.parse().unwrap()))
            .expect("the backend");
        assert_eq!(record.current.as_ref().map(|o| o.process.pid), Some(100));
        assert!(k.listeners.refused() > 0);
        assert!(k.listeners.len() < LISTENER_CAPACITY);
    }
}
