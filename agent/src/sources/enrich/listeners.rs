//! Who already listens where when the agent starts: TCP listeners from
//! `/proc/<pid>/net/tcp{,6}` and unix listeners from `/proc/<pid>/net/unix`, one reading per
//! network namespace, tied to their processes through the socket inodes in `/proc/<pid>/fd`.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
};

use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

use crate::sources::host::sock_diag::{self, UnixLookup};

/// A listening socket and the process holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotListener<A> {
    pub address: A,
    /// The holder that started first (the master of a master/worker server), if found.
    pub pid: Option<u32>,
    /// The namespace's inode number as the kernel's records give it: the network
    /// namespace of a TCP listener, the mount namespace (its holder's) of a unix one; 0
    /// where the kernel's records carry none ([`KnownNamespaces`]), so that a listener
    /// seen at start-up and its close seen later are one endpoint.
    pub namespace: u32,
}

/// Which namespaces the kernel's records carry: BTF gave the offsets to read them.
/// Where they do not, the kernel says 0 (the agent's own), and so must the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownNamespaces {
    pub net: bool,
    pub mnt: bool,
}

impl KnownNamespaces {
    /// From the kernel fields the probes could not resolve (`ProbeSet::
    /// missing_kernel_fields`): the socket's and the task's namespace chains.
    pub fn from_missing(missing: &[&str]) -> Self {
        let has = |fields: &[&str]| fields.iter().all(|f| !missing.contains(f));
        Self {
            net: has(&["sock.__sk_common.skc_net.net", "net.ns.inum"]),
            mnt: has(&[
                "task_struct.nsproxy",
                "nsproxy.mnt_ns",
                "mnt_namespace.ns.inum",
            ]),
        }
    }
}

#[derive(Debug, Default)]
pub struct ListenerSnapshot {
    pub tcp: Vec<SnapshotListener<SocketAddr>>,
    pub unix: Vec<SnapshotListener<String>>,
}

/// `SOCK_STREAM`: a stream unix socket bound to a path and not connected is a listener
/// (clients do not bind; accepted sockets show as connected).
const SOCK_STREAM: u16 = 1;

/// Reads the listeners of every network namespace that has a process in it, each with
/// its namespace where `known` says the kernel's records have it.
pub fn snapshot(known: KnownNamespaces) -> ListenerSnapshot {
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

    // A unix socket path resolves in its holder's mount namespace.
    let mount_namespace = |pid: Option<u32>, reader: &Process| -> u32 {
        if !known.mnt {
            return 0;
        }
        pid.and_then(|pid| Process::new(pid as i32).ok())
            .as_ref()
            .and_then(|p| namespace_inode(p, "mnt"))
            .or_else(|| namespace_inode(reader, "mnt"))
            .unwrap_or(0)
    };
    let mut snapshot = ListenerSnapshot::default();
    for (netns, process) in &namespaces {
        let netns = if known.net {
            u32::try_from(*netns).unwrap_or(0)
        } else {
            0
        };
        let tcp = process.tcp().unwrap_or_default();
        let tcp6 = process.tcp6().unwrap_or_default();
        for entry in tcp.into_iter().chain(tcp6) {
            if entry.state == TcpState::Listen {
                snapshot.tcp.push(SnapshotListener {
                    address: entry.local_address,
                    pid: holder(entry.inode),
                    namespace: netns,
                });
            }
        }
        for entry in process.unix().unwrap_or_default() {
            let Some(path) = entry.path else { continue };
            if entry.socket_type == SOCK_STREAM
                && entry.state == procfs::net::UnixState::UNCONNECTED
            {
                let pid = holder(entry.inode);
                snapshot.unix.push(SnapshotListener {
                    address: path.display().to_string(),
                    pid,
                    namespace: mount_namespace(pid, process),
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

/// The inode of `process`'s namespace of `kind` (`net`, `mnt`).
fn namespace_inode(process: &Process, kind: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let file = process.open_relative(format!("ns/{kind}")).ok()?;
    u32::try_from(file.metadata().ok()?.ino()).ok()
}

/// How a `listen(2)` on a unix socket was resolved to its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// sock_diag, asking for that one socket by inode: the cost does not grow with the
    /// number of sockets on the host.
    SockDiag,
    /// The namespace's `/proc/<pid>/net/unix`, read up to the socket's line: for
    /// processes in another network namespace (sock_diag answers for the agent's own),
    /// or where the kernel has no `unix_diag`.
    Procfs,
}

/// The most `/proc/<pid>/net/unix` lines read for one socket: far more unix sockets
/// than a host has; past it, the socket is not named rather than the reader held up.
const MAX_UNIX_LINES: usize = 200_000;

/// The unix socket name that `fd` of `pid` is bound to, if it is a unix socket: a path,
/// or `@` and an abstract name.
///
/// Both are the names as the process sees them: a path in the process's mount namespace
/// and an abstract name in its network namespace, which need not be the agent's
/// (containers); telling them apart is issue 13's.
pub fn unix_path_of_fd(pid: u32, fd: i32) -> Option<String> {
    resolve(pid, fd).map(|(name, _)| name)
}

/// [`unix_path_of_fd`], and how it was found.
pub fn resolve(pid: u32, fd: i32) -> Option<(String, Via)> {
    let inode = socket_inode(pid, fd)?;
    if same_network_namespace(pid) && sock_diag_unix_available() {
        match sock_diag::unix_socket_name(inode) {
            Ok(UnixLookup::Found(name)) => return name.map(|name| (name, Via::SockDiag)),
            // Closed since: there is nothing to name, and no table would have it either.
            Ok(UnixLookup::NoSuchSocket) => return None,
            Err(err) => {
                if SOCK_DIAG_ERRORS.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!(
                        "cannot ask sock_diag for a unix socket ({}): reading /proc/<pid>/net/unix \
                         instead (further errors are counted only)",
                        crate::error_chain(&err)
                    );
                }
            }
        }
    }
    PROCFS_READS.fetch_add(1, Ordering::Relaxed);
    name_from_proc_net_unix(pid, inode).map(|name| (name, Via::Procfs))
}

/// How many unix sockets were named from `/proc/<pid>/net/unix` (see [`Via::Procfs`]).
pub fn procfs_reads() -> u64 {
    PROCFS_READS.load(Ordering::Relaxed)
}

static PROCFS_READS: AtomicU64 = AtomicU64::new(0);
static SOCK_DIAG_ERRORS: AtomicU64 = AtomicU64::new(0);

/// The socket inode `fd` of `pid` refers to: its `/proc/<pid>/fd/<fd>` link reads
/// `socket:[<inode>]`.
fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn network_namespace(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Whether `pid` shares the agent's network namespace, the one sock_diag answers for.
fn same_network_namespace(pid: u32) -> bool {
    static OWN: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let own = OWN.get_or_init(|| network_namespace("self"));
    own.is_some() && *own == network_namespace(&pid.to_string())
}

/// Whether sock_diag names unix sockets here (the `unix_diag` module): tried once, on a
/// socket of the agent's own. Without it, a missing socket and a missing module give the
/// same answer, so the answer is not trusted.
fn sock_diag_unix_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        let probe = std::os::unix::net::UnixStream::pair()
            .ok()
            .and_then(|(own, _peer)| {
                let inode = std::fs::metadata(format!("/proc/self/fd/{}", own.as_raw_fd()))
                    .ok()?
                    .ino();
                Some(sock_diag::unix_socket_name(inode))
            });
        match probe {
            Some(Ok(UnixLookup::Found(_))) => true,
            other => {
                log::warn!(
                    "sock_diag does not name unix sockets here ({}): unix listeners are \
                     named from /proc/<pid>/net/unix, a read that grows with the number of \
                     unix sockets",
                    match other {
                        Some(Err(err)) => crate::error_chain(&err),
                        _ => "no unix_diag".into(),
                    }
                );
                false
            }
        }
    })
}

/// The name of the socket `inode` in the table of `pid`'s network namespace, read line
/// by line up to it (at most [`MAX_UNIX_LINES`]). A line is
/// `Num RefCount Protocol Flags Type St Inode [Path]`; the path is the rest of the line.
fn name_from_proc_net_unix(pid: u32, inode: u64) -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(format!("/proc/{pid}/net/unix")).ok()?;
    let wanted = inode.to_string();
    for line in std::io::BufReader::new(file)
        .split(b'\n')
        .skip(1)
        .take(MAX_UNIX_LINES)
    {
        let line = line.ok()?;
        let line = String::from_utf8_lossy(&line);
        let mut fields = line.splitn(8, ' ');
        if fields.nth(6) == Some(wanted.as_str()) {
            return fields.next().map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::{
        fd::AsRawFd,
        unix::net::{UnixListener, UnixStream},
    };

    use super::*;

    /// Raises this process's open-file limit to `want` if it is lower (within the hard
    /// limit, which root may raise too); the limit reached.
    fn raise_nofile(want: u64) -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct given, nothing else.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            if limit.rlim_cur < want {
                let raised = libc::rlimit {
                    rlim_cur: want,
                    rlim_max: limit.rlim_max.max(want),
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
        limit.rlim_cur
    }

    /// 10,000 other unix sockets open (5,000 pairs of the test's own, closed at the end):
    /// the listener is named by one sock_diag answer, not by reading the table they fill;
    /// the table, read as the fallback, names it the same.
    #[test]
    fn a_unix_listener_is_named_by_inode_among_10k_sockets() {
        const OTHERS: usize = 10_000;
        let limit = raise_nofile(OTHERS as u64 + 256);
        assert!(limit >= OTHERS as u64 + 256, "open-file limit {limit}");
        let others: Vec<(UnixStream, UnixStream)> = (0..OTHERS / 2)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("php-fpm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let me = std::process::id();
        let table = std::fs::read_to_string(format!("/proc/{me}/net/unix")).unwrap();
        assert!(table.lines().count() > OTHERS, "the table holds the others");

        let expected = path.display().to_string();
        assert_eq!(
            resolve(me, listener.as_raw_fd()),
            Some((expected.clone(), Via::SockDiag))
        );
        let inode = socket_inode(me, listener.as_raw_fd()).unwrap();
        assert_eq!(name_from_proc_net_unix(me, inode), Some(expected));
        // A socket with no name: nothing.
        assert_eq!(resolve(me, others[0].0.as_raw_fd()), None);
        drop(others);
    }

    /// A listener of the test's own in the snapshot carries this process's namespaces
    /// where the kernel's records would, and 0 (the agent's own) where they would not.
    #[test]
    fn snapshot_listeners_carry_their_namespaces() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.sock");
        let _unix = UnixListener::bind(&path).unwrap();
        let me = Process::myself().unwrap();
        let (net, mnt) = (
            namespace_inode(&me, "net").unwrap(),
            namespace_inode(&me, "mnt").unwrap(),
        );
        let path = path.display().to_string();
        for (known, want_net, want_mnt) in [
            (
                KnownNamespaces {
                    net: true,
                    mnt: true,
                },
                net,
                mnt,
            ),
            (
                KnownNamespaces {
                    net: false,
                    mnt: false,
                },
                0,
                0,
            ),
        ] {
            let s = snapshot(known);
            let ours = s
                .tcp
                .iter()
                .find(|l| l.address == addr)
                .expect("our TCP listener");
            assert_eq!(ours.namespace, want_net, "{known:?}");
            assert_eq!(ours.pid, Some(std::process::id()));
            let ours = s
                .unix
                .iter()
                .find(|l| l.address == path)
                .expect("our unix listener");
            assert_eq!(ours.namespace, want_mnt, "{known:?}");
        }
        assert_eq!(
            KnownNamespaces::from_missing(&["net.ns.inum"]),
            KnownNamespaces {
                net: false,
                mnt: true
            }
        );
        assert_eq!(
            KnownNamespaces::from_missing(&[]),
            KnownNamespaces {
                net: true,
                mnt: true
            }
        );
    }

    #[test]
    fn socket_inodes_come_from_the_fd_link() {
        use std::os::unix::fs::MetadataExt;
        let (socket, _peer) = UnixStream::pair().unwrap();
        let me = std::process::id();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .unwrap()
            .ino();
        assert_eq!(socket_inode(me, socket.as_raw_fd()), Some(ino));
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(socket_inode(me, file.as_raw_fd()), None);
        assert!(same_network_namespace(me));
    }
}
