//! The accept queues and listen-overflow counters of the other network namespaces (pods,
//! containers) that hold a listener the agent knows of, read through one of the
//! listener's processes: `/proc/<pid>/net/{tcp,tcp6,netstat}` are that process's
//! namespace's tables ([`super::proc_net`]). No `setns`, no socket in the namespace.
//!
//! Bounded: at most [`MAX_NAMESPACES`] namespaces a round, taken in turn ([`Rotation`]),
//! so that a node with more pods than that still has each read every few rounds; the
//! ones left out are counted.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::unix::fs::MetadataExt,
};

use procfs::process::Process;

use super::{addresses, netstat, proc_net};
use crate::model::namespace::NetNs;

/// The most namespaces read in one round (a node's pods, usually far fewer).
pub const MAX_NAMESPACES: usize = 256;

/// The most processes tried for one namespace: the first live one in it is enough, and
/// a namespace whose known processes are all gone is left for the listener events to
/// drop.
const MAX_PIDS_TRIED: usize = 4;

/// One other namespace's reading.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceSample {
    pub netns: NetNs,
    /// The process whose `/proc/<pid>/net` was read.
    pub pid: u32,
    /// `ListenOverflows`/`ListenDrops` of the namespace, since it was created.
    pub listen: Option<netstat::ListenStats>,
    /// Its TCP listeners, IPv4 then IPv6.
    pub queues: Vec<proc_net::ProcListenQueue>,
    /// Its interfaces' addresses, loopback aside: where a connect from another namespace
    /// to one of them arrives.
    pub addresses: BTreeSet<IpAddr>,
}

/// The namespaces to read, each with processes known to be in it (its listeners' owners).
pub type Targets = BTreeMap<NetNs, Vec<u32>>;

/// Which namespaces a round reads: the [`MAX_NAMESPACES`] after the last one read the
/// round before, wrapping around.
#[derive(Debug, Default)]
pub struct Rotation {
    last: Option<NetNs>,
}

impl Rotation {
    /// This round's share of `targets` (at most `max`), and how many were left out.
    pub fn select<'a>(
        &mut self,
        targets: &'a Targets,
        max: usize,
    ) -> (Vec<(NetNs, &'a [u32])>, usize) {
        let after = self.last.map_or(0, |ns| ns.0.checked_add(1).unwrap_or(0));
        let ordered = targets
            .range(NetNs(after)..)
            .chain(targets.range(..NetNs(after)));
        let chosen: Vec<(NetNs, &[u32])> = ordered
            .take(max)
            .map(|(ns, pids)| (*ns, pids.as_slice()))
            .collect();
        if let Some((last, _)) = chosen.last() {
            self.last = Some(*last);
        }
        let skipped = targets.len() - chosen.len();
        (chosen, skipped)
    }
}

/// Reads `netns` through the first of `pids` that is still in it; `None` when none is
/// (all gone, or moved on: a pid now naming a process elsewhere is never read).
///
/// `Process` holds `/proc/<pid>` open, and what is opened through it belongs to that
/// process even if its pid is reused meanwhile (the kernel then refuses the open).
pub fn read(netns: NetNs, pids: &[u32]) -> Option<NamespaceSample> {
    pids.iter().take(MAX_PIDS_TRIED).find_map(|&pid| {
        let process = Process::new(i32::try_from(pid).ok()?).ok()?;
        if !in_namespace(&process, netns) {
            return None;
        }
        let mut queues = Vec::new();
        for (table, v6) in [("net/tcp", false), ("net/tcp6", true)] {
            // A namespace without IPv6 has no tcp6: its IPv4 listeners still count.
            if let Ok(file) = process.open_relative(table) {
                queues.extend(proc_net::listeners(file, v6).unwrap_or_default());
            }
        }
        let listen = process
            .open_relative("net/netstat")
            .ok()
            .and_then(|file| netstat::read_from(file, "/proc/<pid>/net/netstat").ok());
        let mut addresses = BTreeSet::new();
        if let Ok(file) = process.open_relative("net/fib_trie") {
            addresses.extend(addresses::ipv4_from_fib_trie(file).unwrap_or_default());
        }
        if let Ok(file) = process.open_relative("net/if_inet6") {
            addresses.extend(addresses::ipv6_from_if_inet6(file).unwrap_or_default());
        }
        // Checked again after: a process that entered another namespace meanwhile
        // (setns) would have shown that one's tables.
        in_namespace(&process, netns).then_some(NamespaceSample {
            netns,
            pid,
            listen,
            queues,
            addresses,
        })
    })
}

/// Whether `process` is in `netns`: the inode of its `ns/net`.
fn in_namespace(process: &Process, netns: NetNs) -> bool {
    process
        .open_relative("ns/net")
        .and_then(|f| Ok(f.metadata()?.ino()))
        .is_ok_and(|ino| ino == u64::from(netns.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(namespaces: &[u32]) -> Targets {
        namespaces.iter().map(|&n| (NetNs(n), vec![n])).collect()
    }

    #[test]
    fn rounds_take_the_namespaces_in_turn() {
        let all = targets(&[10, 20, 30, 40, 50]);
        let mut rotation = Rotation::default();
        let names = |chosen: Vec<(NetNs, &[u32])>| -> Vec<u32> {
            chosen.into_iter().map(|(ns, _)| ns.0).collect()
        };
        let (first, skipped) = rotation.select(&all, 2);
        assert_eq!((names(first), skipped), (vec![10, 20], 3));
        let (second, skipped) = rotation.select(&all, 2);
        assert_eq!((names(second), skipped), (vec![30, 40], 3));
        let (third, _) = rotation.select(&all, 2);
        assert_eq!(names(third), [50, 10], "wraps around");
        // All fit: all read, none skipped.
        let (every, skipped) = rotation.select(&all, MAX_NAMESPACES);
        assert_eq!(every.len(), 5);
        assert_eq!(skipped, 0);
        // A namespace gone since the last round does not stop the turn.
        let fewer = targets(&[10, 50]);
        let mut rotation = Rotation {
            last: Some(NetNs(30)),
        };
        let (next, _) = rotation.select(&fewer, 1);
        assert_eq!(names(next), [50]);
        assert!(rotation.select(&Targets::new(), 1).0.is_empty());
    }

    /// The agent's own namespace, read the way another's is: through this process.
    #[test]
    fn a_namespace_is_read_through_a_process_in_it() {
        let own = crate::model::namespace::own().net;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let me = std::process::id();
        let read = read(own, &[u32::MAX, me]).expect("read through this process");
        assert_eq!(read.pid, me, "a pid that is no process is passed over");
        assert!(read.listen.is_some());
        assert!(read.queues.iter().any(|q| q.local == local), "{read:?}");
        // Not the namespace this process is in: never read through it.
        assert_eq!(super::read(NetNs(own.0.wrapping_add(1)), &[me]), None);
    }
}
