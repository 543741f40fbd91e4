//! Kernel integration test: accept queues are sampled in network namespaces other than
//! the agent's, through a process in each (`/proc/<pid>/net/{tcp,netstat}`, no setns).
//!
//! Two namespaces of the test's own, each with a test backend on the same
//! `127.0.0.1:PORT`, both `--no-accept` with backlog 1. The test fills one of them from a
//! thread in that namespace (two connections queued, then SYNs the full queue drops):
//! `listen_queue_full` must name that namespace and that listener, never the other one
//! with the same address. The namespace's own `ListenOverflows` is the oracle that the
//! kernel did drop handshakes there.

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use common::harness;
use why502::model::event::{Event, EventDetail, ListenQueueFull};
use why502_e2e::netns::Netns;

/// The harness samples every 200 ms; the first reading of a namespace is its base, and
/// a dropped SYN is resent after 1 s, 3 s…: several rounds fit.
const WAIT: Duration = Duration::from_secs(10);

/// A backend child, killed and reaped on drop (also when the test fails).
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backend(ns: &Netns, addr: SocketAddr) -> Backend {
    let child = ns
        .command(
            why502_e2e::sibling_binary("why502-test-backend")
                .to_str()
                .unwrap(),
        )
        .args(["--backlog", "1", "--no-accept", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the test backend in its namespace");
    Backend(child)
}

fn inode_of(ns: &Netns) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.name))
        .unwrap()
        .ino();
    u32::try_from(ino).unwrap()
}

/// Runs `f` on a thread that entered `ns`: its sockets belong to that namespace.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a namespace file we hold open; it moves only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread in the namespace")
}

/// A connect that stays pending: a non-blocking socket whose SYN the full queue drops
/// (the kernel resends it, and each drop counts as a ListenOverflow).
fn pending_connect(addr: SocketAddr) -> OwnedFd {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: socket() has no preconditions; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in of the given length, on our socket.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(
        rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
        "connect: {err}"
    );
    fd
}

/// `TcpExt: ListenOverflows` of the namespace, read from inside it.
fn listen_overflows(ns: &Netns) -> u64 {
    let out = ns.command("cat").arg("/proc/net/netstat").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    why502::sources::host::netstat::parse(&text)
        .unwrap()
        .overflows
}

#[test]
fn a_full_accept_queue_in_another_namespace_is_reported_with_it() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let full_ns = Netns::new("qfull");
    let calm_ns = Netns::new("qcalm");
    let (full_inode, calm_inode) = (inode_of(&full_ns), inode_of(&calm_ns));
    let addr: SocketAddr = format!("127.0.0.1:{}", why502_e2e::free_port())
        .parse()
        .unwrap();
    let _full = backend(&full_ns, addr);
    let _calm = backend(&calm_ns, addr);

    // The kernel reports each listener with its socket's namespace: the sampler's cue.
    let listener_in = |inode: u32| {
        move |e: &Event| {
            matches!(&e.detail, EventDetail::ListenerOpened(l)
                if l.endpoint == addr && l.netns.0 == inode)
        }
    };
    let (full_listener, calm_listener) = (listener_in(full_inode), listener_in(calm_inode));
    h.wait_for_each(
        &mut events,
        WAIT,
        [
            ("full namespace's listener", &full_listener),
            ("calm namespace's listener", &calm_listener),
        ],
    );

    // Two connections fill backlog 1 (a queue is full past its backlog); the SYNs after
    // are dropped, and resent, while the sockets stay open.
    let (_queued, _pending) = in_netns(&full_ns, move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        let queued: Vec<TcpStream> = (0..2)
            .map(|_| loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    // The backend may not listen yet when its event is out: retry briefly.
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("connect {addr}: {e}, retrying");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("connect {addr}: {e}"),
                }
            })
            .collect();
        let pending: Vec<OwnedFd> = (0..3).map(|_| pending_connect(addr)).collect();
        (queued, pending)
    });

    let mut seen: Vec<ListenQueueFull> = Vec::new();
    let deadline = Instant::now() + WAIT;
    let full = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = h
            .runtime
            .block_on(async { tokio::time::timeout(left, events.recv()).await });
        let event = match event {
            Ok(Ok(event)) => event,
            // Host noise: whatever was missed, the edge stays and the sampler repeats.
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            _ => panic!(
                "no listen_queue_full for {addr} in netns {full_inode} within {WAIT:?} \
                 (the namespace's ListenOverflows: {}); seen: {seen:?}",
                listen_overflows(&full_ns)
            ),
        };
        if let EventDetail::ListenQueueFull(q) = &event.detail {
            seen.push(q.clone());
            if q.netns.0 == full_inode && q.endpoint == addr {
                break q.clone();
            }
        }
    };
    assert!(
        listen_overflows(&full_ns) > 0,
        "the kernel dropped handshakes there"
    );
    assert_eq!(full.queued, 2, "{full:?}");
    assert_eq!(full.backlog, None, "procfs shows no backlog: {full:?}");
    assert!(full.overflows.is_some_and(|n| n > 0), "{full:?}");
    assert_eq!(
        full.service.as_deref(),
        Some("why502-test-bac"),
        "the listener's process names it: {full:?}"
    );
    // Another round or two: the calm namespace, same address, never reported full.
    let quiet_until = Instant::now() + Duration::from_millis(600);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        let event = h
            .runtime
            .block_on(async { tokio::time::timeout(left, events.recv()).await });
        if let Ok(Ok(event)) = event {
            if let EventDetail::ListenQueueFull(q) = &event.detail {
                seen.push(q.clone());
            }
        }
    }
    assert_eq!(listen_overflows(&calm_ns), 0);
    assert!(
        !seen.iter().any(|q| q.netns.0 == calm_inode),
        "the calm namespace's listener on the same address was never full: {seen:?}"
    );
}
