//! Samples become events on rising edges only: memory pressure above the threshold, an
//! accept queue found full. A state, not a stream of repeats.
//!
//! A queue is full:
//! - in the agent's own network namespace, when sock_diag shows it at its backlog;
//! - in another namespace, whose backlogs procfs does not show
//!   ([`super::proc_net`]), when the namespace's `ListenOverflows` grew since the round
//!   before (the kernel dropped a handshake at a full queue there) — the listener with
//!   the longest queue is the one (an overflowing queue holds its backlog + 1; a pod
//!   listens on a port or two). The first reading of a namespace is its base.

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use super::sample::{ListenerKey, Sample};
use crate::model::{
    event::{Event, EventDetail, ListenQueueFull, MemoryPressure, HOST_SCOPE},
    namespace::NetNs,
};

#[derive(Debug)]
pub struct EdgeDetector {
    pressure_percent: f64,
    high: HashSet<String>,
    full: HashSet<ListenerKey>,
    /// Each other namespace's `ListenOverflows` at its last reading.
    overflows: HashMap<NetNs, u64>,
}

impl EdgeDetector {
    pub fn new(pressure_percent: f64) -> Self {
        Self {
            pressure_percent,
            high: HashSet::new(),
            full: HashSet::new(),
            overflows: HashMap::new(),
        }
    }

    pub fn events(&mut self, sample: &Sample, mono_ns: u64, time: SystemTime) -> Vec<Event> {
        let mut out = Vec::new();
        self.pressure(sample, &mut out);
        self.own_queues(sample, &mut out);
        self.other_queues(sample, &mut out);
        for event in &mut out {
            event.time = time;
            event.mono_ns = mono_ns;
        }
        out
    }

    fn pressure(&mut self, sample: &Sample, out: &mut Vec<Event>) {
        let scopes = sample
            .host
            .memory_pressure
            .map(|p| (HOST_SCOPE.to_string(), None, p))
            .into_iter()
            .chain(sample.services.iter().filter_map(|s| {
                s.memory
                    .pressure
                    .map(|p| (s.service.clone(), Some(s.pid), p))
            }));
        let mut now_high = HashSet::new();
        for (scope, pid, pressure) in scopes {
            if pressure.some.avg10 < self.pressure_percent {
                continue;
            }
            if !self.high.contains(&scope) {
                out.push(event(EventDetail::MemoryPressure(MemoryPressure {
                    scope: scope.clone(),
                    pid,
                    some_avg10: pressure.some.avg10,
                    full_avg10: pressure.full.map(|f| f.avg10),
                })));
            }
            now_high.insert(scope);
        }
        self.high = now_high;
    }

    /// The agent's own namespace: sock_diag's queues against their backlogs.
    fn own_queues(&mut self, sample: &Sample, out: &mut Vec<Event>) {
        let own = NetNs::own();
        let mut now_full: HashSet<ListenerKey> = self
            .full
            .iter()
            .filter(|(ns, _)| *ns != own)
            .copied()
            .collect();
        for queue in &sample.host.queues {
            if queue.backlog == 0 || queue.queued < queue.backlog {
                continue;
            }
            let key = (own, queue.local);
            if !self.full.contains(&key) {
                out.push(event(EventDetail::ListenQueueFull(ListenQueueFull {
                    endpoint: queue.local,
                    netns: own,
                    service: sample.listener_services.get(&key).cloned(),
                    queued: queue.queued,
                    backlog: Some(queue.backlog),
                    overflows: None,
                })));
            }
            now_full.insert(key);
        }
        self.full = now_full;
    }

    /// Other namespaces: an overflow since the last reading, on the longest queue.
    fn other_queues(&mut self, sample: &Sample, out: &mut Vec<Event>) {
        let read: HashSet<NetNs> = sample
            .host
            .namespaces
            .iter()
            .map(|n| n.netns)
            .filter(|ns| !ns.is_own())
            .collect();
        // Namespaces not read this round (over the bound) keep their state until they are.
        let was_full: HashSet<ListenerKey> = self
            .full
            .iter()
            .filter(|(ns, _)| read.contains(ns))
            .copied()
            .collect();
        self.full.retain(|(ns, _)| !read.contains(ns));
        for ns in &sample.host.namespaces {
            if !read.contains(&ns.netns) {
                continue;
            }
            let Some(listen) = ns.listen else { continue };
            let before = self.overflows.insert(ns.netns, listen.overflows);
            let grown = before.map_or(0, |b| listen.overflows.saturating_sub(b));
            if grown == 0 {
                continue;
            }
            let Some(fullest) = ns
                .queues
                .iter()
                .filter(|q| q.queued > 0)
                .max_by_key(|q| q.queued)
            else {
                continue;
            };
            let key = (ns.netns, fullest.local);
            self.full.insert(key);
            if !was_full.contains(&key) {
                out.push(event(EventDetail::ListenQueueFull(ListenQueueFull {
                    endpoint: fullest.local,
                    netns: ns.netns,
                    service: sample.listener_services.get(&key).cloned(),
                    queued: fullest.queued,
                    backlog: None,
                    overflows: Some(grown),
                })));
            }
        }
        // Baselines of namespaces with no known listener left go with them.
        self.overflows.retain(|ns, _| {
            sample
                .listener_services
                .keys()
                .any(|(listener_ns, _)| listener_ns == ns)
        });
    }
}

/// An event of the sampler's: no process; the time is set by [`EdgeDetector::events`].
fn event(detail: EventDetail) -> Event {
    Event {
        time: SystemTime::UNIX_EPOCH,
        mono_ns: 0,
        process: None,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::host::{
        namespaces::NamespaceSample,
        netstat::ListenStats,
        proc_net::ProcListenQueue,
        psi::{Pressure, PressureLine},
        sock_diag::ListenQueue,
    };

    fn pressure(avg10: f64) -> Pressure {
        Pressure {
            some: PressureLine {
                avg10,
                ..Default::default()
            },
            full: None,
        }
    }

    fn full_queues(events: &[Event]) -> Vec<&ListenQueueFull> {
        events
            .iter()
            .filter_map(|e| match &e.detail {
                EventDetail::ListenQueueFull(q) => Some(q),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_rising_edges_become_events() {
        let mut edges = EdgeDetector::new(10.0);
        let endpoint: std::net::SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let mut sample = Sample::default();
        sample.host.memory_pressure = Some(pressure(43.0));
        sample.host.queues = vec![ListenQueue {
            local: endpoint,
            inode: 1,
            queued: 129,
            backlog: 128,
        }];
        let first = edges.events(&sample, 1, SystemTime::UNIX_EPOCH);
        assert_eq!(first.len(), 2);
        assert!(
            matches!(&first[0].detail, EventDetail::MemoryPressure(p) if p.scope == "host" && p.some_avg10 == 43.0)
        );
        assert!(matches!(&first[1].detail, EventDetail::ListenQueueFull(q)
            if q.endpoint == endpoint && q.netns == NetNs::own() && q.backlog == Some(128)));
        assert_eq!(first[1].mono_ns, 1);
        assert!(
            edges.events(&sample, 2, SystemTime::UNIX_EPOCH).is_empty(),
            "still high: no repeat"
        );
        sample.host.memory_pressure = Some(pressure(2.0));
        sample.host.queues[0].queued = 3;
        assert!(edges.events(&sample, 3, SystemTime::UNIX_EPOCH).is_empty());
        sample.host.memory_pressure = Some(pressure(50.0));
        assert_eq!(
            edges.events(&sample, 4, SystemTime::UNIX_EPOCH).len(),
            1,
            "high again"
        );
    }

    fn pod(netns: u32, overflows: u64, queues: &[(&str, u32)]) -> NamespaceSample {
        NamespaceSample {
            netns: NetNs(netns),
            pid: netns,
            listen: Some(ListenStats {
                overflows,
                drops: overflows,
            }),
            queues: queues
                .iter()
                .map(|&(local, queued)| ProcListenQueue {
                    local: local.parse().unwrap(),
                    inode: 1,
                    queued,
                })
                .collect(),
            addresses: Default::default(),
        }
    }

    /// Two pods on the same 0.0.0.0:8080: only the one whose namespace overflowed is
    /// full, on its longest queue, named with its namespace and service.
    #[test]
    fn another_namespace_is_full_when_its_overflows_grow() {
        let (a, b) = (4026532001, 4026532002);
        let wildcard: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let mut edges = EdgeDetector::new(10.0);
        let mut sample = Sample::default();
        sample
            .listener_services
            .insert((NetNs(a), wildcard), "pod-a".into());
        sample
            .listener_services
            .insert((NetNs(b), wildcard), "pod-b".into());
        let round = |a_overflows, b_overflows| {
            vec![
                pod(
                    a,
                    a_overflows,
                    &[("0.0.0.0:8080", 2), ("127.0.0.1:15000", 1)],
                ),
                pod(b, b_overflows, &[("0.0.0.0:8080", 2)]),
            ]
        };
        // The first reading is the base, however high the counters already are.
        sample.host.namespaces = round(40, 7);
        assert!(edges.events(&sample, 1, SystemTime::UNIX_EPOCH).is_empty());
        sample.host.namespaces = round(43, 7);
        let events = edges.events(&sample, 2, SystemTime::UNIX_EPOCH);
        let full = full_queues(&events);
        assert_eq!(full.len(), 1, "{events:?}");
        assert_eq!(
            (full[0].netns, full[0].endpoint, full[0].queued),
            (NetNs(a), wildcard, 2)
        );
        assert_eq!(full[0].service.as_deref(), Some("pod-a"));
        assert_eq!((full[0].backlog, full[0].overflows), (None, Some(3)));
        // Still overflowing: no repeat; a quiet round ends it, the next overflow is new.
        sample.host.namespaces = round(50, 7);
        assert!(edges.events(&sample, 3, SystemTime::UNIX_EPOCH).is_empty());
        sample.host.namespaces = round(50, 7);
        assert!(edges.events(&sample, 4, SystemTime::UNIX_EPOCH).is_empty());
        sample.host.namespaces = round(51, 7);
        assert_eq!(
            full_queues(&edges.events(&sample, 5, SystemTime::UNIX_EPOCH)).len(),
            1
        );
        // A namespace left out of a round keeps its state: no second event when it is
        // read again still overflowing.
        sample.host.namespaces = vec![pod(b, 7, &[("0.0.0.0:8080", 0)])];
        assert!(edges.events(&sample, 6, SystemTime::UNIX_EPOCH).is_empty());
        sample.host.namespaces = round(52, 7);
        assert!(edges.events(&sample, 7, SystemTime::UNIX_EPOCH).is_empty());
        // Overflows with every queue empty name no listener.
        sample.host.namespaces = vec![pod(b, 9, &[("0.0.0.0:8080", 0)])];
        assert!(edges.events(&sample, 8, SystemTime::UNIX_EPOCH).is_empty());
    }

    #[test]
    fn baselines_go_with_the_namespaces_listeners() {
        let mut edges = EdgeDetector::new(10.0);
        let mut sample = Sample::default();
        let key = (NetNs(77), "0.0.0.0:80".parse().unwrap());
        sample.listener_services.insert(key, "web".into());
        sample.host.namespaces = vec![pod(77, 5, &[("0.0.0.0:80", 1)])];
        edges.events(&sample, 1, SystemTime::UNIX_EPOCH);
        assert!(edges.overflows.contains_key(&NetNs(77)));
        sample.listener_services.clear();
        sample.host.namespaces.clear();
        edges.events(&sample, 2, SystemTime::UNIX_EPOCH);
        assert!(edges.overflows.is_empty());
    }
}
