//! Who already listens where when the agent starts: TCP listeners from
//! `/proc/<pid>/net/tcp{,6}` and unix listeners from `/proc/<pid>/net/unix`, one reading per
//! network namespace, tied to their processes through the socket inodes in `/proc/<pid>/fd`.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

/// A listening socket and the process holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotListener<A> {
    pub address: A,
    /// The holder that started first (the master of a master/worker server), if found.
    pub pid: Option<u32>,
}

#[derive(Debug, Default)]
pub struct ListenerSnapshot {
    pub tcp: Vec<SnapshotListener<SocketAddr>>,
    pub unix: Vec<SnapshotListener<String>>,
}

/// `SOCK_STREAM`: a stream unix socket bound to a path and not connected is a listener
/// (clients do not bind; accepted sockets show as connected).
const SOCK_STREAM: u16 = 1;

/// Reads the listeners of every network namespace that has a process in it.
pub fn snapshot() -> ListenerSnapshot {
    // socket inode → (process start time, pid): the oldest holder wins.
    let mut holders: HashMap<u64, (u64, u32)> = HashMap::new();
    // network namespace → one process in it, to read its /proc/<pid>/net/* through.
    let mut namespaces: BTreeMap<u64, Process> = BTreeMap::new();
    let Ok(processes) = procfs::process::all_processes() else {
        return ListenerSnapshot::default();
    };
    for process in processes.flatten() {
        let pid = process.pid as u32;
        let start = process.stat().map(|s| s.starttime).unwrap_or(u64::MAX);
        if let Ok(fds) = process.fd() {
            for fd in fds.flatten() {
                if let FDTarget::Socket(inode) = fd.target {
                    let entry = holders.entry(inode).or_insert((start, pid));
                    if start < entry.0 {
                        *entry = (start, pid);
                    }
                }
            }
        }
        if let Some(ns) = net_namespace(&process) {
            namespaces.entry(ns).or_insert(process);
        }
    }
    let holder = |inode: u64| holders.get(&inode).map(|&(_, pid)| pid);

    let mut snapshot = ListenerSnapshot::default();
    for process in namespaces.values() {
        let tcp = process.tcp().unwrap_or_default();
        let tcp6 = process.tcp6().unwrap_or_default();
        for entry in tcp.into_iter().chain(tcp6) {
            if entry.state == TcpState::Listen {
                snapshot.tcp.push(SnapshotListener {
                    address: entry.local_address,
                    pid: holder(entry.inode),
                });
            }
        }
        for entry in process.unix().unwrap_or_default() {
            let Some(path) = entry.path else { continue };
            if entry.socket_type == SOCK_STREAM
                && entry.state == procfs::net::UnixState::UNCONNECTED
            {
                snapshot.unix.push(SnapshotListener {
                    address: path.display().to_string(),
                    pid: holder(entry.inode),
                });
            }
        }
    }
    snapshot
}

fn net_namespace(process: &Process) -> Option<u64> {
    let namespaces = process.namespaces().ok()?;
    namespaces
        .0
        .get(std::ffi::OsStr::new("net"))
        .map(|ns| ns.identifier)
}

/// The unix socket path that `fd` of `pid` is bound to, if it is a unix socket.
pub fn unix_path_of_fd(pid: u32, fd: i32) -> Option<String> {
    let process = Process::new(pid as i32).ok()?;
    let FDTarget::Socket(inode) = process.fd_from_fd(fd).ok()?.target else {
        return None;
    };
    process
        .unix()
        .ok()?
        .into_iter()
        .find(|entry| entry.inode == inode)
        .and_then(|entry| entry.path)
        .map(|path| path.display().to_string())
}
