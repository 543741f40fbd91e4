//! Host signals, sampled on an interval: memory pressure (host and each listening
//! service's cgroup), listen queues and cgroup memory. Every [`Sample`] is published (the
//! metrics take them), and their rising edges (pressure above a threshold, an accept queue
//! full) become events, so that the correlation engine can cite them.
//!
//! Accept queues are read in every network namespace that holds a TCP listener the agent
//! knows of: its own through sock_diag (with each listener's backlog), the others through
//! one of the listener's processes ([`super::namespaces`]).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};

use super::{
    cgroup_memory,
    edges::EdgeDetector,
    namespaces::{self, Rotation, Targets},
};
use crate::{
    bus::{EventBus, Topic},
    model::{
        clock,
        event::{Event, EventDetail},
        namespace::NetNs,
    },
};

pub use super::sample::{ListenerKey, Sample, ServiceMemory};

/// Who listens where (from listener events): the services whose cgroups are sampled, and
/// the processes other namespaces are read through.
#[derive(Debug, Default)]
struct Owners {
    by_endpoint: BTreeMap<ListenerKey, (String, u32)>,
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
                self.by_endpoint
                    .insert((l.netns, l.endpoint), (service, p.pid));
            }
            (EventDetail::ListenerClosed(l), _) => {
                self.by_endpoint.remove(&(l.netns, l.endpoint));
            }
            (EventDetail::ProcessExit(_), Some(p)) => {
                self.by_endpoint.retain(|_, (_, pid)| *pid != p.pid);
            }
            _ => {}
        }
    }

    /// The other namespaces with a listener, each with its listeners' processes.
    fn other_namespaces(&self) -> Targets {
        let mut targets = Targets::new();
        for ((netns, _), (_, pid)) in &self.by_endpoint {
            if netns.is_own() {
                continue;
            }
            let pids = targets.entry(*netns).or_default();
            if !pids.contains(pid) {
                pids.push(*pid);
            }
        }
        targets
    }
}

/// Reads the host, this round's other namespaces and the owners' cgroups (blocking:
/// procfs, sysfs, netlink).
fn sample(owners: BTreeMap<ListenerKey, (String, u32)>, others: Targets, skipped: usize) -> Sample {
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
    let others: Vec<(NetNs, &[u32])> = others
        .iter()
        .map(|(ns, pids)| (*ns, pids.as_slice()))
        .collect();
    Sample {
        host: super::sample(&others, skipped),
        services,
        listener_services: owners.into_iter().map(|(e, (s, _))| (e, s)).collect(),
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
        let mut rotation = Rotation::default();
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
                    let targets = owners.other_namespaces();
                    let (chosen, skipped) =
                        rotation.select(&targets, namespaces::MAX_NAMESPACES);
                    let chosen: Targets = chosen
                        .into_iter()
                        .map(|(ns, pids)| (ns, pids.to_vec()))
                        .collect();
                    let sampled = match tokio::task::spawn_blocking(move || {
                        sample(snapshot, chosen, skipped)
                    })
                    .await
                    {
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
    use crate::model::event::{Listener, ProcessRef, Source};

    fn listener(opened: bool, netns: NetNs, endpoint: &str, pid: u32) -> Event {
        let listener = Listener {
            endpoint: endpoint.parse().unwrap(),
            netns,
            source: Source::Kernel,
        };
        Event {
            time: SystemTime::UNIX_EPOCH,
            mono_ns: 0,
            process: Some(ProcessRef {
                pid,
                tid: pid,
                comm: format!("backend-{pid}"),
                thread: None,
                cgroup_id: 0,
                info: None,
            }),
            detail: if opened {
                EventDetail::ListenerOpened(listener)
            } else {
                EventDetail::ListenerClosed(listener)
            },
        }
    }

    /// Two pods on the same address are two listeners, and each namespace is read
    /// through its own processes; the agent's own namespace is sock_diag's, not a target.
    #[test]
    fn owners_are_kept_per_namespace() {
        let (a, b) = (NetNs(4026532001), NetNs(4026532002));
        let mut owners = Owners::default();
        for event in [
            listener(true, a, "0.0.0.0:8080", 10),
            listener(true, a, "127.0.0.1:15000", 11),
            listener(true, b, "0.0.0.0:8080", 20),
            listener(true, NetNs::own(), "127.0.0.1:9000", 30),
        ] {
            owners.observe(&event);
        }
        assert_eq!(owners.by_endpoint.len(), 4);
        let targets = owners.other_namespaces();
        assert_eq!(
            targets.into_iter().collect::<Vec<_>>(),
            [(a, vec![10, 11]), (b, vec![20])]
        );
        owners.observe(&listener(false, b, "0.0.0.0:8080", 20));
        assert_eq!(
            owners.other_namespaces().into_keys().collect::<Vec<_>>(),
            [a],
            "b's listener closed; a's on the same address stays"
        );
        let key = (a, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(owners.by_endpoint[&key], ("backend-10".into(), 10));
    }
}
