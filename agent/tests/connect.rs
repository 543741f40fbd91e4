//! Kernel integration tests: TCP and unix-socket connects, provoked for real.

mod common;

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use common::{closed_port, harness, is_kind, matcher, pid_of};
use why502::model::event::{Endpoint, EventDetail};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn refused_connect_on_a_closed_port() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let port = closed_port();
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));

    // Every report of this connect, the failure and any duplicate, in whichever order they
    // arrive: from the first one on, then for a while longer.
    let report = matcher(|e| {
        matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == port)
            || matches!(&e.detail, EventDetail::ConnectSyscallError(s)
                if matches!(&s.dst, Endpoint::Tcp(_, dst)
                    if dst.port() == port && dst.ip() == Ipv4Addr::LOCALHOST))
    });
    let mut reports = h.collect(&mut events, WAIT, 1, &report);
    reports.extend(h.collect(&mut events, Duration::from_millis(500), 10, &report));
    let failures: Vec<_> = reports
        .iter()
        .filter(|e| matches!(e.detail, EventDetail::TcpConnectFailure(_)))
        .collect();
    let [event] = failures[..] else {
        panic!("expected one refused connect, got {reports:?}");
    };
    let EventDetail::TcpConnectFailure(failure) = &event.detail else {
        unreachable!()
    };
    assert_eq!(failure.errno.0, libc::ECONNREFUSED);
    assert_eq!(failure.errno_source, "sk_err");
    assert_eq!(failure.dst.ip().to_string(), "127.0.0.1");
    let process = event
        .process
        .as_ref()
        .expect("the connecting process is known");
    assert_eq!(process.pid, std::process::id());
    assert!(process.info.as_ref().and_then(|i| i.exe.as_ref()).is_some());

    // The blocking connect(2) also returned ECONNREFUSED; that is the same failure and must
    // not be reported twice.
    assert_eq!(reports.len(), 1, "reported twice: {reports:?}");
}

/// A non-blocking connect asked for its outcome with a second connect(2), as HAProxy
/// does: the refusal is one failure, not two.
#[test]
fn a_non_blocking_refused_connect_asked_again_is_one_failure() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let port = closed_port();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let connect = |fd: i32| {
        // SAFETY: a valid sockaddr_in and its length.
        let r = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        }
    };
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    assert!(fd >= 0);
    assert_eq!(connect(fd), libc::EINPROGRESS);
    // The RST from loopback comes at once; ask until the outcome is there.
    let deadline = std::time::Instant::now() + WAIT;
    let outcome = loop {
        let errno = connect(fd);
        if errno != libc::EALREADY && errno != libc::EINPROGRESS {
            break errno;
        }
        assert!(std::time::Instant::now() < deadline, "no outcome");
        std::thread::sleep(Duration::from_millis(1));
    };
    // SAFETY: the socket made above.
    unsafe { libc::close(fd) };
    assert_eq!(outcome, libc::ECONNREFUSED);

    let report = matcher(|e| {
        matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == port)
            || matches!(&e.detail, EventDetail::ConnectSyscallError(s)
                if matches!(&s.dst, Endpoint::Tcp(_, dst) if dst.port() == port))
    });
    let mut reports = h.collect(&mut events, WAIT, 1, &report);
    reports.extend(h.collect(&mut events, Duration::from_millis(500), 10, &report));
    assert!(
        matches!(&reports[..], [e] if matches!(&e.detail, EventDetail::TcpConnectFailure(f)
            if f.errno.0 == libc::ECONNREFUSED)),
        "expected one refused connect, got {reports:?}"
    );
}

#[test]
fn successful_connects_are_counted_in_the_kernel() {
    let Some(h) = harness() else { return };
    // The poller reports growth: subscribed before the connects, it adds up to them.
    let mut readings = h.agent.kernel.subscribe();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    let me = std::process::id();
    let mut aggregate = None::<(u64, u64, u64, [u8; 4])>;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while aggregate.is_none_or(|(established, ..)| established < 3) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let reading = h
            .runtime
            .block_on(async { tokio::time::timeout(left, readings.recv()).await })
            .expect("a kernel reading before the deadline")
            .expect("the reading topic is open");
        for c in reading.connects.iter().map(|c| &c.growth) {
            if c.key.tgid == me && c.key.dport == port {
                // Keyed by the socket's namespace: the test's own, the agent's.
                assert_eq!(c.key.netns, why502::model::namespace::own().net.0);
                let a = aggregate.get_or_insert((0, 0, 0, [0; 4]));
                a.0 += c.established;
                a.1 += c.latency_sum_ns;
                a.2 += c.hist.iter().sum::<u64>();
                a.3.copy_from_slice(&c.key.daddr[..4]);
            }
        }
    }
    let (established, latency_sum_ns, in_histogram, daddr) = aggregate.expect("an aggregate");
    assert_eq!(established, 3);
    assert!(latency_sum_ns > 0);
    assert_eq!(in_histogram, 3);
    assert_eq!(daddr, [127, 0, 0, 1]);
    drop(streams);
}
#[test]
fn unix_connect_to_a_missing_path() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    let err = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let expected = Endpoint::own_unix(path.display().to_string());
    let event = h.wait_for(
        &mut events,
        WAIT,
        "unix ENOENT",
        |e| matches!(&e.detail, EventDetail::ConnectSyscallError(s) if s.dst == expected),
    );
    let EventDetail::ConnectSyscallError(error) = &event.detail else {
        unreachable!()
    };
    assert_eq!(error.errno.name(), "ENOENT");
    assert_eq!(pid_of(&event), Some(std::process::id()));
}

/// A unix listener that never accepts, with a backlog of 1: non-blocking clients get
/// EAGAIN once the queue is full, which is what nginx sees from a saturated php-fpm.
#[test]
fn unix_connect_to_a_full_backlog() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // SAFETY: re-listening on our own socket with a smaller backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 1) }, 0);

    let mut clients = Vec::new();
    let mut saw_eagain = false;
    for _ in 0..16 {
        let client = nonblocking_unix_connect(&path);
        match client {
            Ok(fd) => clients.push(fd),
            Err(errno) => {
                assert_eq!(errno, libc::EAGAIN, "unexpected connect error");
                saw_eagain = true;
                break;
            }
        }
    }
    assert!(saw_eagain, "the backlog never filled");
    let expected = Endpoint::own_unix(path.display().to_string());
    let event = h.wait_for(
        &mut events,
        WAIT,
        "unix EAGAIN",
        |e| matches!(&e.detail, EventDetail::ConnectSyscallError(s) if s.dst == expected),
    );
    let EventDetail::ConnectSyscallError(error) = &event.detail else {
        unreachable!()
    };
    assert_eq!(error.errno.name(), "EAGAIN");
    for fd in clients {
        // SAFETY: closing fds we opened.
        unsafe { libc::close(fd) };
    }
}

fn nonblocking_unix_connect(path: &std::path::Path) -> Result<i32, i32> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain socket calls on a sockaddr_un we fill ourselves.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *dst = *src as libc::c_char;
        }
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        if rc == 0 {
            Ok(fd)
        } else {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap();
            libc::close(fd);
            Err(errno)
        }
    }
}

#[test]
fn nothing_is_reported_for_a_healthy_connect() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let reported = h.collect(&mut events, Duration::from_millis(500), 10, &|e| {
        (is_kind(e, "tcp_connect_failure") || is_kind(e, "connect_syscall_error"))
            && pid_of(e) == Some(std::process::id())
            && serde_json::to_string(e)
                .unwrap()
                .contains(&format!(":{port}\""))
    });
    assert!(reported.is_empty(), "{reported:?}");
}
