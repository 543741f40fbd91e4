//! Who serves what: each TCP endpoint and unix socket path with its current listener and
//! the owners it had before, so that a refused connect can be tied to the process that
//! listened there until a moment ago.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::SystemTime,
};

use crate::model::{event::Endpoint, incident::ProcessSummary};

/// Owners remembered per endpoint after they stopped listening.
const HISTORY: usize = 8;

/// A process listening on an endpoint, from `since`.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub process: ProcessSummary,
    pub ppid: Option<u32>,
    pub since_mono: u64,
    pub since: SystemTime,
    /// Seen in the start-up snapshot rather than as it happened.
    pub from_snapshot: bool,
}

/// An owner that stopped listening.
#[derive(Debug, Clone, PartialEq)]
pub struct PastOwner {
    pub owner: Owner,
    pub closed_mono: u64,
    pub closed: SystemTime,
}

#[derive(Debug, Default)]
pub struct ListenerRecord {
    pub current: Option<Owner>,
    pub past: VecDeque<PastOwner>,
    last_change_mono: u64,
}

impl ListenerRecord {
    /// The owner that listened at `mono`, or the last one to stop before it.
    pub fn last_past_before(&self, mono: u64) -> Option<&PastOwner> {
        self.past.iter().rev().find(|p| p.closed_mono <= mono)
    }

    /// The listener that appeared after `mono`, if the current one did.
    pub fn reopened_after(&self, mono: u64) -> Option<&Owner> {
        self.current.as_ref().filter(|o| o.since_mono >= mono)
    }
}

/// Bounded map of endpoints to their listeners.
pub struct ListenerTable {
    records: HashMap<Endpoint, ListenerRecord>,
    capacity: usize,
}

impl ListenerTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: HashMap::new(),
            capacity,
        }
    }

    pub fn opened(&mut self, endpoint: Endpoint, owner: Owner) {
        self.make_room();
        let record = self.records.entry(endpoint).or_default();
        record.last_change_mono = owner.since_mono;
        if let Some(previous) = record.current.take() {
            // A second listen on the same endpoint (SO_REUSEPORT, or a close we missed):
            // the previous owner is history from now.
            push_past(record, previous, owner.since_mono, owner.since);
        }
        record.current = Some(owner);
    }

    pub fn closed(&mut self, endpoint: &Endpoint, mono: u64, time: SystemTime) {
        if let Some(record) = self.records.get_mut(endpoint) {
            if let Some(owner) = record.current.take() {
                push_past(record, owner, mono, time);
                record.last_change_mono = mono;
            }
        }
    }

    /// Closes the unix listeners of a process that exited: unix sockets have no close
    /// tracepoint, the owner's death is when they stop being served.
    pub fn owner_exited(&mut self, pid: u32, mono: u64, time: SystemTime) {
        let endpoints: Vec<Endpoint> = self
            .records
            .iter()
            .filter(|(e, r)| {
                matches!(e, Endpoint::Unix(_))
                    && r.current.as_ref().is_some_and(|o| o.process.pid == pid)
            })
            .map(|(e, _)| e.clone())
            .collect();
        for endpoint in endpoints {
            self.closed(&endpoint, mono, time);
        }
    }

    /// The record serving a connect to `target`: the exact address, else a wildcard
    /// listener on the same port (`0.0.0.0`, `[::]`).
    pub fn lookup(&self, target: &Endpoint) -> Option<(&Endpoint, &ListenerRecord)> {
        if let Some(found) = self.records.get_key_value(target) {
            return Some(found);
        }
        let Endpoint::Tcp(addr) = target else {
            return None;
        };
        let wildcards = [
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port()),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port()),
        ];
        wildcards
            .iter()
            .find_map(|w| self.records.get_key_value(&Endpoint::Tcp(*w)))
    }

    /// A unix socket path currently listened on by a process `owned_by` accepts.
    pub fn unix_endpoint_of(&self, owned_by: impl Fn(u32) -> bool) -> Option<Endpoint> {
        self.records.iter().find_map(|(endpoint, record)| {
            let owner = record.current.as_ref()?;
            (matches!(endpoint, Endpoint::Unix(_)) && owned_by(owner.process.pid))
                .then(|| endpoint.clone())
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Evicts the endpoint with no current listener that changed longest ago.
    fn make_room(&mut self) {
        if self.records.len() < self.capacity {
            return;
        }
        let victim = self
            .records
            .iter()
            .filter(|(_, r)| r.current.is_none())
            .min_by_key(|(_, r)| r.last_change_mono)
            .or_else(|| self.records.iter().min_by_key(|(_, r)| r.last_change_mono))
            .map(|(e, _)| e.clone());
        if let Some(victim) = victim {
            self.records.remove(&victim);
        }
    }
}

fn push_past(record: &mut ListenerRecord, owner: Owner, mono: u64, time: SystemTime) {
    if record.past.len() == HISTORY {
        record.past.pop_front();
    }
    record.past.push_back(PastOwner {
        owner,
        closed_mono: mono,
        closed: time,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn owner(pid: u32, mono: u64) -> Owner {
        Owner {
            process: ProcessSummary {
                pid,
                comm: "php-fpm".into(),
                ..Default::default()
            },
            ppid: Some(1),
            since_mono: mono,
            since: UNIX_EPOCH + Duration::from_nanos(mono),
            from_snapshot: false,
        }
    }

    fn tcp(s: &str) -> Endpoint {
        Endpoint::Tcp(s.parse().unwrap())
    }

    #[test]
    fn remembers_past_owners_and_finds_wildcards() {
        let mut table = ListenerTable::new(16);
        table.opened(tcp("0.0.0.0:9000"), owner(10, 100));
        let (found, record) = table.lookup(&tcp("127.0.0.1:9000")).unwrap();
        assert_eq!(found, &tcp("0.0.0.0:9000"));
        assert_eq!(record.current.as_ref().unwrap().process.pid, 10);

        table.closed(&tcp("0.0.0.0:9000"), 200, UNIX_EPOCH);
        table.opened(tcp("0.0.0.0:9000"), owner(11, 300));
        let (_, record) = table.lookup(&tcp("127.0.0.1:9000")).unwrap();
        assert_eq!(record.last_past_before(250).unwrap().owner.process.pid, 10);
        assert_eq!(record.reopened_after(250).unwrap().process.pid, 11);
        assert!(record.reopened_after(350).is_none());
        assert!(table.lookup(&tcp("127.0.0.1:9001")).is_none());
    }

    #[test]
    fn unix_listeners_close_when_their_owner_exits() {
        let mut table = ListenerTable::new(16);
        let sock = Endpoint::Unix("/run/php/fpm.sock".into());
        table.opened(sock.clone(), owner(42, 100));
        table.owner_exited(41, 150, UNIX_EPOCH);
        assert!(table.lookup(&sock).unwrap().1.current.is_some());
        table.owner_exited(42, 200, UNIX_EPOCH);
        let (_, record) = table.lookup(&sock).unwrap();
        assert!(record.current.is_none());
        assert_eq!(record.past.back().unwrap().closed_mono, 200);
    }

    #[test]
    fn bounded() {
        let mut table = ListenerTable::new(4);
        for port in 0..100u16 {
            let e = tcp(&format!("127.0.0.1:{}", 1000 + port));
            table.opened(e.clone(), owner(port.into(), port.into()));
            table.closed(&e, u64::from(port) + 1, UNIX_EPOCH);
        }
        assert!(table.len() <= 4);
        // The newest endpoints survive.
        assert!(table.lookup(&tcp("127.0.0.1:1099")).is_some());
    }
}
