//! Host signals, sampled on an interval: memory pressure (host and each listening
//! service's cgroup), listen queues and cgroup memory. Every [`Sample`] is published (the
//! metrics take them), and their rising edges (pressure above a threshold, an accept queue
//! full) become events, so that the correlation engine can cite them.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};

use super::cgroup_memory::{self, CgroupMemory};
use crate::{
    bus::{EventBus, Topic},
    model::{
        clock,
        event::{Event, EventDetail, ListenQueueFull, MemoryPressure, HOST_SCOPE},
    },
};

/// A listening service's memory cgroup.
#[derive(Debug, Clone)]
pub struct ServiceMemory {
    pub service: String,
    pub pid: u32,
    pub memory: CgroupMemory,
}

/// One sampling round.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub host: super::HostSample,
    pub services: Vec<ServiceMemory>,
    /// Listening endpoints → their service, for labelling queues.
    pub listener_services: BTreeMap<SocketAddr, String>,
}

/// Who listens where (from listener events): the services whose cgroups are sampled.
#[derive(Debug, Default)]
struct Owners {
    by_endpoint: BTreeMap<SocketAddr, (String, u32)>,
}

impl Owners {
    fn observe(&mut self, event: &Event) {
        match (&event.detail, &event.process) {
            (EventDetail::ListenerOpened(l), Some(p)) => {
                let service = p
                    .info
                    .as_ref()
                    .and_then(|i| i.unit.clone())
                    .unwrap_or_else(|| p.comm.clone());
                self.by_endpoint.insert(l.endpoint, (service, p.pid));
            }
            (EventDetail::ListenerClosed(l), _) => {
                self.by_endpoint.remove(&l.endpoint);
            }
            (EventDetail::ProcessExit(_), Some(p)) => {
                self.by_endpoint.retain(|_, (_, pid)| *pid != p.pid);
            }
            _ => {}
        }
    }
}

/// Reads the host and the owners' cgroups (blocking: procfs, sysfs, netlink).
fn sample(owners: BTreeMap<SocketAddr, (String, u32)>) -> Sample {
    let services: BTreeMap<String, u32> = owners.values().cloned().collect();
    let services = services
        .into_iter()
        .filter_map(|(service, pid)| match cgroup_memory::read_for_pid(pid) {
            Ok(Some(memory)) => Some(ServiceMemory {
                service,
                pid,
                memory,
            }),
            Ok(None) => None,
            Err(err) => {
                log::debug!(
                    "cgroup memory of {service} (pid {pid}): {}",
                    crate::error_chain(&err)
                );
                None
            }
        })
        .collect();
    Sample {
        host: super::sample(),
        services,
        listener_services: owners.into_iter().map(|(e, (s, _))| (e, s)).collect(),
    }
}

/// Turns samples into events on rising edges only: a state, not a stream of repeats.
#[derive(Debug)]
pub struct EdgeDetector {
    pressure_percent: f64,
    high: HashSet<String>,
    full: HashSet<SocketAddr>,
}

impl EdgeDetector {
    pub fn new(pressure_percent: f64) -> Self {
        Self {
            pressure_percent,
            high: HashSet::new(),
            full: HashSet::new(),
        }
    }

    pub fn events(&mut self, sample: &Sample, mono_ns: u64, time: SystemTime) -> Vec<Event> {
        let mut out = Vec::new();
        let event = |detail| Event {
            time,
            mono_ns,
            process: None,
            detail,
        };
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

        let mut now_full = HashSet::new();
        for queue in &sample.host.queues {
            if queue.backlog == 0 || queue.queued < queue.backlog {
                continue;
            }
            if !self.full.contains(&queue.local) {
                out.push(event(EventDetail::ListenQueueFull(ListenQueueFull {
                    endpoint: queue.local,
                    service: sample.listener_services.get(&queue.local).cloned(),
                    queued: queue.queued,
                    backlog: queue.backlog,
                })));
            }
            now_full.insert(queue.local);
        }
        self.full = now_full;
        out
    }
}

/// Samples every `interval`: every sample on `samples`, events from the edges on `bus`.
pub fn spawn(
    bus: EventBus,
    samples: Topic<Sample>,
    interval: Duration,
    pressure_percent: f64,
) -> JoinHandle<()> {
    let mut events = bus.subscribe();
    tokio::spawn(async move {
        let mut owners = Owners::default();
        let mut edges = EdgeDetector::new(pressure_percent);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => owners.observe(&event),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    let snapshot = owners.by_endpoint.clone();
                    let sampled = match tokio::task::spawn_blocking(move || sample(snapshot)).await {
                        Ok(sampled) => sampled,
                        Err(err) => {
                            log::warn!("host sampling failed: {err}");
                            continue;
                        }
                    };
                    for event in edges.events(&sampled, clock::monotonic_ns(), SystemTime::now()) {
                        bus.publish(event);
                    }
                    samples.publish(sampled);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::host::{
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

    #[test]
    fn only_rising_edges_become_events() {
        let mut edges = EdgeDetector::new(10.0);
        let endpoint: SocketAddr = "127.0.0.1:9000".parse().unwrap();
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
        assert!(
            matches!(&first[1].detail, EventDetail::ListenQueueFull(q) if q.endpoint == endpoint)
        );
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
}
