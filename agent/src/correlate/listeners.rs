//! Who serves what: each TCP endpoint and unix socket path with its current listener and
//! the owners it had before, so that a refused connect can be tied to the process that
//! listened there until a moment ago.
//!
//! Which listener a connect reaches, on a node of network namespaces (pods) where many
//! listen on the same `0.0.0.0:8080` ([`ListenerTable::lookup`]):
//! 1. A destination address local to another namespace B than the connecting socket's A
//!    (an IP address is local to one namespace of a node: B's pod IP, reached through a
//!    veth or a bridge, or where a DNAT sent the connection): the connection left A, and
//!    the listener is looked up in B as in 2 ([`NamespaceAddresses`] says whose address
//!    it is).
//! 2. Otherwise in A itself: the exact address, else a wildcard listener (`0.0.0.0`,
//!    `[::]`) on the port. Loopback is always this: every namespace has its own
//!    `127.0.0.1`, so a wildcard in A serves `127.0.0.1:8080` and A's pod IP in A, never
//!    in B.
//! 3. Nothing in A, and the address is nobody's known one (not loopback): a listener
//!    bound to exactly that address in another namespace.
//!
//! Unix sockets are keyed by (mount namespace, path) and only ever found that way: the
//! same path in two containers is two sockets.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::SystemTime,
};

use super::addresses::NamespaceAddresses;
use crate::model::{event::Endpoint, incident::ProcessSummary, namespace::NetNs};

/// Owners remembered per endpoint after they stopped listening.
const HISTORY: usize = 8;

/// The share of the table one user's records may take: a user opening listeners in a loop
/// fills its share, never the table, so that other users' listeners still find room.
const USER_SHARE_DIVISOR: usize = 4;

/// A process listening on an endpoint, from `since`.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub process: ProcessSummary,
    pub ppid: Option<u32>,
    /// Its real uid, when procfs knew it: whose share of the table the record takes.
    pub uid: Option<u32>,
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
    /// The uid of its latest owner (current, else the last past one): whose share it takes.
    holder: Option<u32>,
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
///
/// A record with a current owner is never evicted: that listener is serving, and a
/// refused connect to it must find it. Room is made from records with past owners only,
/// taken from the user holding the most records, oldest first; a user at its share gives up
/// its own oldest. When only current listeners are left the newcomer is refused, and
/// counted ([`ListenerTable::refused`]).
pub struct ListenerTable {
    records: HashMap<Endpoint, ListenerRecord>,
    /// Records with no current owner, by holder, oldest change first: what may be evicted.
    idle: HashMap<Option<u32>, BTreeSet<(u64, Endpoint)>>,
    /// How many records each holder has.
    held: HashMap<Option<u32>, usize>,
    /// The unix endpoints each pid currently listens on: an exit finds them without a scan
    /// of the table (exits come in floods).
    unix_by_pid: HashMap<u32, BTreeSet<Endpoint>>,
    /// The namespaces each TCP address is listened on in: lookups across namespaces.
    by_addr: HashMap<SocketAddr, BTreeSet<NetNs>>,
    /// Which namespace an IP address is local to: where a connect across namespaces goes.
    pub addresses: NamespaceAddresses,
    capacity: usize,
    user_share: usize,
    refused: u64,
}

impl ListenerTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: HashMap::new(),
            idle: HashMap::new(),
            held: HashMap::new(),
            unix_by_pid: HashMap::new(),
            by_addr: HashMap::new(),
            addresses: NamespaceAddresses::default(),
            capacity,
            user_share: (capacity / USER_SHARE_DIVISOR).max(1),
            refused: 0,
        }
    }

    /// Records `owner` listening on `endpoint`. False when the table had no room for a new
    /// endpoint (counted in [`ListenerTable::refused`]).
    pub fn opened(&mut self, endpoint: Endpoint, owner: Owner) -> bool {
        let Some(mut record) = self.detach(&endpoint) else {
            if !self.make_room(owner.uid) {
                // One line per thousand: a user's loop of listeners would flood the log.
                if self.refused.is_multiple_of(1000) {
                    log::warn!(
                        "listener table: no room for {endpoint} of {} (pid {}) without \
                         evicting a current listener: not tracked ({} refused so far)",
                        owner.process.comm,
                        owner.process.pid,
                        self.refused + 1
                    );
                }
                self.refused += 1;
                return false;
            }
            let record = ListenerRecord {
                last_change_mono: owner.since_mono,
                holder: owner.uid,
                current: Some(owner),
                past: VecDeque::new(),
            };
            self.attach(endpoint, record);
            return true;
        };
        record.last_change_mono = owner.since_mono;
        record.holder = owner.uid;
        if let Some(previous) = record.current.take() {
            // A second listen on the same endpoint (SO_REUSEPORT, or a close we missed):
            // the previous owner is history from now.
            push_past(&mut record, previous, owner.since_mono, owner.since);
        }
        record.current = Some(owner);
        self.attach(endpoint, record);
        true
    }

    pub fn closed(&mut self, endpoint: &Endpoint, mono: u64, time: SystemTime) {
        if self
            .records
            .get(endpoint)
            .is_none_or(|r| r.current.is_none())
        {
            return;
        }
        let Some(mut record) = self.detach(endpoint) else {
            return;
        };
        if let Some(owner) = record.current.take() {
            push_past(&mut record, owner, mono, time);
            record.last_change_mono = mono;
        }
        self.attach(endpoint.clone(), record);
    }

    /// Closes the unix listeners of a process that exited: unix sockets have no close
    /// tracepoint, the owner's death is when they stop being served.
    pub fn owner_exited(&mut self, pid: u32, mono: u64, time: SystemTime) {
        let endpoints = self.unix_by_pid.get(&pid).cloned().unwrap_or_default();
        for endpoint in endpoints {
            self.closed(&endpoint, mono, time);
        }
    }

    /// The record serving a connect to `target`, by the rules of the module's doc: in its
    /// own namespace, else (an address that left it) where the address is local.
    pub fn lookup(&self, target: &Endpoint) -> Option<(&Endpoint, &ListenerRecord)> {
        let Endpoint::Tcp(netns, addr) = target else {
            return self.records.get_key_value(target);
        };
        let ip = addr.ip();
        let owner = if ip.is_loopback() || ip.is_unspecified() {
            None
        } else {
            self.addresses.namespace_of(ip)
        };
        match owner {
            // Another namespace's address: the connection left this one, and only that
            // namespace's listeners (its wildcards too) accept it.
            Some(owner) if owner != *netns => self.in_namespace(&Endpoint::Tcp(owner, *addr)),
            Some(_) => self.in_namespace(target),
            None => self.in_namespace(target).or_else(|| {
                if ip.is_loopback() || ip.is_unspecified() {
                    return None;
                }
                // Whose address it is is not known: a listener bound to exactly it.
                self.by_addr.get(addr)?.iter().find_map(|other| {
                    self.records
                        .get_key_value(&Endpoint::Tcp(*other, *addr))
                        .filter(|_| other != netns)
                })
            }),
        }
    }

    /// The exact endpoint, else a wildcard listener on its port (`0.0.0.0`, `[::]`) in
    /// the same network namespace.
    fn in_namespace(&self, target: &Endpoint) -> Option<(&Endpoint, &ListenerRecord)> {
        if let Some(found) = self.records.get_key_value(target) {
            return Some(found);
        }
        let Endpoint::Tcp(netns, addr) = target else {
            return None;
        };
        let wildcards = [
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port()),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port()),
        ];
        wildcards
            .iter()
            .find_map(|w| self.records.get_key_value(&Endpoint::Tcp(*netns, *w)))
    }

    /// A unix socket path currently listened on by a process `owned_by` accepts.
    pub fn unix_endpoint_of(&self, owned_by: impl Fn(u32) -> bool) -> Option<Endpoint> {
        self.unix_by_pid
            .iter()
            .filter(|(pid, _)| owned_by(**pid))
            .find_map(|(_, endpoints)| endpoints.first().cloned())
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// New endpoints refused since the start because every record left was a current
    /// listener (of the table, or of the newcomer's user at its share).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Makes room for a new record of `holder`: false when none can be made without
    /// evicting a current listener.
    fn make_room(&mut self, holder: Option<u32>) -> bool {
        if self.held.get(&holder).copied().unwrap_or(0) >= self.user_share {
            // At its share a user pays with its own records only.
            return self.evict_oldest_idle_of(holder);
        }
        if self.records.len() < self.capacity {
            return true;
        }
        let richest = self
            .idle
            .iter()
            .filter(|(_, idle)| !idle.is_empty())
            .max_by_key(|(h, _)| self.held.get(*h).copied().unwrap_or(0))
            .map(|(h, _)| *h);
        richest.is_some_and(|h| self.evict_oldest_idle_of(h))
    }

    fn evict_oldest_idle_of(&mut self, holder: Option<u32>) -> bool {
        let Some(oldest) = self
            .idle
            .get(&holder)
            .and_then(|idle| idle.first().cloned())
        else {
            return false;
        };
        self.detach(&oldest.1);
        true
    }

    /// Takes `endpoint`'s record out of the table and its indexes.
    fn detach(&mut self, endpoint: &Endpoint) -> Option<ListenerRecord> {
        let record = self.records.remove(endpoint)?;
        if let Endpoint::Tcp(netns, addr) = endpoint {
            if let Some(namespaces) = self.by_addr.get_mut(addr) {
                namespaces.remove(netns);
                if namespaces.is_empty() {
                    self.by_addr.remove(addr);
                }
            }
        }
        if let Some(held) = self.held.get_mut(&record.holder) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&record.holder);
            }
        }
        match &record.current {
            None => {
                if let Some(idle) = self.idle.get_mut(&record.holder) {
                    idle.remove(&(record.last_change_mono, endpoint.clone()));
                    if idle.is_empty() {
                        self.idle.remove(&record.holder);
                    }
                }
            }
            Some(owner) if matches!(endpoint, Endpoint::Unix(..)) => {
                if let Some(endpoints) = self.unix_by_pid.get_mut(&owner.process.pid) {
                    endpoints.remove(endpoint);
                    if endpoints.is_empty() {
                        self.unix_by_pid.remove(&owner.process.pid);
                    }
                }
            }
            Some(_) => {}
        }
        Some(record)
    }

    /// Puts a record into the table and its indexes.
    fn attach(&mut self, endpoint: Endpoint, record: ListenerRecord) {
        *self.held.entry(record.holder).or_default() += 1;
        if let Endpoint::Tcp(netns, addr) = &endpoint {
            self.by_addr.entry(*addr).or_default().insert(*netns);
        }
        match &record.current {
            None => {
                self.idle
                    .entry(record.holder)
                    .or_default()
                    .insert((record.last_change_mono, endpoint.clone()));
            }
            Some(owner) if matches!(endpoint, Endpoint::Unix(..)) => {
                self.unix_by_pid
                    .entry(owner.process.pid)
                    .or_default()
                    .insert(endpoint.clone());
            }
            Some(_) => {}
        }
        self.records.insert(endpoint, record);
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
        owned_by(pid, None, mono)
    }

    fn owned_by(pid: u32, uid: Option<u32>, mono: u64) -> Owner {
        Owner {
            process: ProcessSummary {
                pid,
                comm: "php-fpm".into(),
                ..Default::default()
            },
            ppid: Some(1),
            uid,
            since_mono: mono,
            since: UNIX_EPOCH + Duration::from_nanos(mono),
            from_snapshot: false,
        }
    }

    fn tcp(s: &str) -> Endpoint {
        Endpoint::own_tcp(s.parse().unwrap())
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
        let sock = Endpoint::own_unix("/run/php/fpm.sock");
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
            // Four users, so that their shares (a quarter each) fill the table.
            let uid = Some(u32::from(port % 4));
            table.opened(e.clone(), owned_by(port.into(), uid, port.into()));
            table.closed(&e, u64::from(port) + 1, UNIX_EPOCH);
        }
        assert_eq!(table.len(), 4);
        // The newest endpoints survive.
        assert!(table.lookup(&tcp("127.0.0.1:1099")).is_some());
        assert!(table.lookup(&tcp("127.0.0.1:1096")).is_some());
        assert_eq!(table.refused(), 0, "past records always make room");
    }

    const NOBODY: Option<u32> = Some(65534);
    const WWW_DATA: Option<u32> = Some(33);

    fn current_pid(table: &ListenerTable, endpoint: &Endpoint) -> Option<u32> {
        let (_, record) = table.lookup(endpoint)?;
        record.current.as_ref().map(|o| o.process.pid)
    }

    /// One user opening listeners in a loop (and keeping them open) fills its share and is
    /// refused beyond it, counted; another user's listener still finds room, and the
    /// first one's current listener opened before the flood is still looked up.
    #[test]
    fn one_user_cannot_fill_the_table_with_current_listeners() {
        let mut table = ListenerTable::new(64);
        let backend = tcp("127.0.0.1:9000");
        assert!(table.opened(backend.clone(), owned_by(10, WWW_DATA, 1)));
        for port in 0..10_000u32 {
            let junk = tcp(&format!("127.0.0.1:{}", 20_000 + port));
            table.opened(junk, owned_by(50_000 + port, NOBODY, 10 + u64::from(port)));
        }
        let share = 64 / USER_SHARE_DIVISOR;
        assert_eq!(table.len(), 1 + share, "nobody holds its share, no more");
        assert_eq!(table.refused(), 10_000 - share as u64);
        assert_eq!(current_pid(&table, &backend), Some(10));

        let late = tcp("127.0.0.1:9001");
        assert!(table.opened(late.clone(), owned_by(11, WWW_DATA, 20_000)));
        assert_eq!(current_pid(&table, &late), Some(11));
    }

    /// A table full of current listeners (many users, each within its share) evicts none
    /// of them for a newcomer: the newcomer is refused and counted.
    #[test]
    fn a_current_listener_is_never_evicted_to_make_room() {
        let mut table = ListenerTable::new(8);
        for k in 0..8u32 {
            let e = tcp(&format!("127.0.0.1:{}", 9000 + k));
            assert!(table.opened(e, owned_by(100 + k, Some(k % 4), u64::from(k))));
        }
        assert!(!table.opened(tcp("127.0.0.1:10000"), owned_by(200, Some(7), 100)));
        assert_eq!(table.refused(), 1);
        for k in 0..8u32 {
            let e = tcp(&format!("127.0.0.1:{}", 9000 + k));
            assert_eq!(current_pid(&table, &e), Some(100 + k), "{e}");
        }
        // Once one closes, its past record makes room.
        table.closed(&tcp("127.0.0.1:9003"), 200, UNIX_EPOCH);
        assert!(table.opened(tcp("127.0.0.1:10000"), owned_by(200, Some(7), 300)));
        assert_eq!(current_pid(&table, &tcp("127.0.0.1:10000")), Some(200));
        assert!(table.lookup(&tcp("127.0.0.1:9003")).is_none());
    }

    /// A user opening and closing listeners in a loop evicts its own past records, not the
    /// backend's that died before the flood: the evidence a refused connect needs ("the
    /// listener went away").
    #[test]
    fn a_flood_of_closed_listeners_keeps_other_users_past_owners() {
        let mut table = ListenerTable::new(64);
        let backend = tcp("127.0.0.1:9000");
        let unix_backend = Endpoint::own_unix("/run/php/fpm.sock");
        table.opened(backend.clone(), owned_by(10, WWW_DATA, 1));
        table.opened(unix_backend.clone(), owned_by(12, WWW_DATA, 1));
        table.closed(&backend, 2, UNIX_EPOCH);
        table.owner_exited(12, 2, UNIX_EPOCH);
        for port in 0..10_000u32 {
            let junk = tcp(&format!("127.0.0.1:{}", 20_000 + port));
            let mono = 10 + 2 * u64::from(port);
            table.opened(junk.clone(), owned_by(50_000 + port, NOBODY, mono));
            table.closed(&junk, mono + 1, UNIX_EPOCH);
        }
        for endpoint in [&backend, &unix_backend] {
            let (_, record) = table.lookup(endpoint).expect("the backend's record");
            assert!(record.current.is_none());
            assert_eq!(record.last_past_before(u64::MAX).unwrap().closed_mono, 2);
        }
        assert_eq!(table.refused(), 0);
        // Nobody's newest endpoints are the ones it kept.
        assert!(table.lookup(&tcp("127.0.0.1:29999")).is_some());
        assert!(table.len() <= 64);
    }

    /// A full table of users within their shares makes room from the user holding the
    /// most records, not from the oldest record: a backend's one past owner outlives the
    /// churn of users with more.
    #[test]
    fn a_full_table_makes_room_from_the_user_holding_the_most() {
        let mut table = ListenerTable::new(8);
        let backend = tcp("127.0.0.1:9000");
        table.opened(backend.clone(), owned_by(10, WWW_DATA, 1));
        table.closed(&backend, 2, UNIX_EPOCH);
        let mut mono = 10;
        let mut churn = |table: &mut ListenerTable, uid: u32, port: u32| {
            let e = tcp(&format!("127.0.0.1:{}", 20_000 + port));
            table.opened(e.clone(), owned_by(1000 + port, Some(uid), mono));
            table.closed(&e, mono + 1, UNIX_EPOCH);
            mono += 2;
        };
        for port in 0..100u32 {
            // Users 1 to 4 take turns: each within its share of two, together more than
            // the table holds.
            churn(&mut table, 1 + port % 4, port);
        }
        assert_eq!(table.len(), 8);
        let (_, record) = table.lookup(&backend).expect("the backend's past owner");
        assert_eq!(record.past.back().unwrap().owner.process.pid, 10);
        assert_eq!(table.refused(), 0);
    }

    /// Unix listeners are found by owner without a scan, and leave that index when they
    /// close or change hands.
    #[test]
    fn unix_listeners_are_indexed_by_owner() {
        let mut table = ListenerTable::new(16);
        let sock = Endpoint::own_unix("/run/app.sock");
        table.opened(sock.clone(), owner(42, 100));
        assert_eq!(table.unix_endpoint_of(|pid| pid == 42), Some(sock.clone()));
        // Taken over by another process (a close we missed): the old owner's exit does not
        // close the new owner's listener.
        table.opened(sock.clone(), owner(43, 200));
        assert_eq!(table.unix_endpoint_of(|pid| pid == 42), None);
        table.owner_exited(42, 300, UNIX_EPOCH);
        assert_eq!(current_pid(&table, &sock), Some(43));
        table.owner_exited(43, 400, UNIX_EPOCH);
        assert_eq!(current_pid(&table, &sock), None);
        assert_eq!(table.unix_endpoint_of(|_| true), None);
    }
}
