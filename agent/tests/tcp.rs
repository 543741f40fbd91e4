//! Kernel integration tests: resets, listeners and SYN retransmits.

mod common;

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use common::{harness, pid_of};
use why502::model::event::EventDetail;
use why502_e2e::netns::Netns;

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn reset_received_on_an_established_connection() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    // SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setting a socket option on our own socket with a valid struct.
    let rc = unsafe {
        libc::setsockopt(
            server.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(server);
    let mut buf = [0u8; 1];
    let err = client.read(&mut buf).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));

    // The RST as the client received it and as the server sent it, in whichever order
    // they arrive (on loopback the receiving side usually runs first).
    let [event, sent] = h.wait_for_each(
        &mut events,
        WAIT,
        [
            (
                "RST received",
                &|e| matches!(&e.detail, EventDetail::TcpResetReceived(r) if r.dst.port() == port),
            ),
            (
                "RST sent",
                &|e| matches!(&e.detail, EventDetail::TcpResetSent(r) if r.src.port() == port),
            ),
        ],
    );
    let EventDetail::TcpResetReceived(reset) = &event.detail else {
        unreachable!()
    };
    assert_eq!(reset.state, "ESTABLISHED");
    assert_eq!(reset.src, client.local_addr().unwrap());
    assert_eq!(
        pid_of(&event),
        Some(std::process::id()),
        "owner from connect time"
    );

    let EventDetail::TcpResetSent(sent) = &sent.detail else {
        unreachable!()
    };
    assert_eq!(sent.dst, client.local_addr().unwrap());
}

#[test]
fn listener_opening_and_closing() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = h.wait_for(
        &mut events,
        WAIT,
        "listener opened",
        |e| matches!(&e.detail, EventDetail::ListenerOpened(l) if l.endpoint == addr),
    );
    assert_eq!(pid_of(&opened), Some(std::process::id()));
    drop(listener);
    let closed = h.wait_for(
        &mut events,
        WAIT,
        "listener closed",
        |e| matches!(&e.detail, EventDetail::ListenerClosed(l) if l.endpoint == addr),
    );
    // The last close is the kernel's to attribute: a child forked by a concurrent test
    // holds a copy of the fd until its exec closes it, and may be the one that does.
    let closer = closed.process.as_ref().expect("the closing process");
    let me = std::process::id();
    assert!(
        closer.pid == me || closer.info.as_ref().and_then(|i| i.ppid) == Some(me),
        "closed by {closer:?}"
    );
}

#[test]
fn unix_listener_is_resolved_to_its_path() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fpm.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let expected = path.display().to_string();
    let event = h.wait_for(
        &mut events,
        WAIT,
        "unix listener",
        |e| matches!(&e.detail, EventDetail::UnixListenerOpened(l) if l.path == expected),
    );
    assert_eq!(pid_of(&event), Some(std::process::id()));
}

/// iptables DROP inside a namespace of our own: the SYN is never answered, the kernel
/// retransmits it after ~1 s, and the client (curl's connect timeout) gives up.
#[test]
fn syn_retransmits_to_a_dropped_port() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let ns = Netns::new("drop");
    let port = "9";
    ns.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", port, "-j", "DROP",
    ]);
    let out = ns
        .command("curl")
        .args(["-s", "--connect-timeout", "2.5"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl should time out connecting"
    );

    // Both happened before curl returned: the retransmit, then the connect it gave up.
    let [retransmit, failure] = h.wait_for_each(
        &mut events,
        WAIT,
        [
            ("SYN retransmit", &|e| {
                matches!(&e.detail, EventDetail::TcpSynRetransmit(r) if r.dst.port() == 9)
                    && e.process.as_ref().is_some_and(|p| p.comm == "curl")
            }),
            ("abandoned connect", &|e| {
                matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == 9)
                    && e.process.as_ref().is_some_and(|p| p.comm == "curl")
            }),
        ],
    );
    let EventDetail::TcpSynRetransmit(r) = &retransmit.detail else {
        unreachable!()
    };
    assert_eq!(r.count, 1);

    let EventDetail::TcpConnectFailure(f) = &failure.detail else {
        unreachable!()
    };
    assert_eq!(f.errno.0, 0, "curl gave up; the kernel had no error yet");
    assert_eq!(f.errno_source, "none");
    assert!(f.syn_retransmits >= 1);
    assert!(f.duration >= Duration::from_secs(2), "{:?}", f.duration);
}
