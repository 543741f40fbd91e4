//! Host sampling against the running kernel: a listener's accept queue over sock_diag.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    time::{Duration, Instant},
};

use why502::sources::host::sock_diag::{listen_queues, ListenQueue};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A listener whose backlog is `backlog` instead of std's 128.
fn listener(addr: &str, backlog: i32) -> Option<TcpListener> {
    let listener = TcpListener::bind(addr).ok()?;
    // SAFETY: listen() on a socket we own; calling it again only changes the backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    Some(listener)
}

/// Waits for the kernel to show `addr` with at least `queued` connections waiting: a
/// client's connect() can return before the server side has queued the connection.
fn wait_for(addr: SocketAddr, queued: u32) -> ListenQueue {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let found = listen_queues()
            .unwrap()
            .into_iter()
            .find(|q| q.local == addr);
        match found {
            Some(q) if q.queued >= queued || Instant::now() > deadline => return q,
            None if Instant::now() > deadline => panic!("{addr} is not among the listeners"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn inode_of(listener: &TcpListener) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
        .unwrap()
        .ino()
}

#[test]
fn accept_queue_of_a_listener_nobody_accepts_on() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let listener = listener("127.0.0.1:0", 2).unwrap();
    let addr = listener.local_addr().unwrap();
    // Three clients, never accepted: the kernel queues backlog + 1 of them (a queue is
    // full when it holds more than the backlog), so all three complete.
    let _clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap())
        .collect();

    let q = wait_for(addr, 3);
    assert_eq!(q.backlog, 2, "{q:?}");
    assert_eq!(q.queued, 3, "{q:?}");
    assert_eq!(q.inode, inode_of(&listener), "{q:?}");
}

#[test]
fn ipv6_listeners_are_listed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(listener) = listener("[::1]:0", 7) else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    let q = wait_for(listener.local_addr().unwrap(), 0);
    assert_eq!(q.backlog, 7, "{q:?}");
    assert_eq!(q.queued, 0, "{q:?}");
}
