//! Kernel integration test: a listener whose SYN-ACK goes unanswered retransmits it, and
//! the agent reports each retransmission as `tcp_synack_retransmit`.
//!
//! The listener and its client live in a network namespace of the test's own, where
//! iptables drops the client's final ACK of the handshake (a bare ACK to the listener's
//! port): the client's side is established, the listener's request stays in SYN_RECV and
//! the kernel resends its SYN-ACK after ~1 s. The namespace's own `TCPSynRetrans` counter
//! is the oracle: nothing else runs there, so it counts exactly these retransmissions.

mod common;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use common::harness;
use why502::model::event::{Event, EventDetail, HandshakeRetransmit};
use why502_e2e::netns::Netns;

/// The first SYN-ACK retransmission comes after the initial RTO (1 s).
const WAIT: Duration = Duration::from_secs(5);
/// How long a retransmission that must not come is waited for, once the kernel's count is
/// final (the agent reports within milliseconds).
const QUIET: Duration = Duration::from_millis(500);

/// Runs `f` on a thread that entered the network namespace `ns`: the sockets it creates
/// belong to that namespace for their whole life, whichever thread uses them later.
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

/// `TcpExt: TCPSynRetrans` of the namespace: SYN and SYN-ACK retransmissions.
fn syn_retransmits(ns: &Netns) -> u64 {
    let out = ns.command("cat").arg("/proc/net/netstat").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // Pairs of lines: `TcpExt: Name…` then `TcpExt: value…`.
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "TCPSynRetrans")
        .expect("TcpExt has TCPSynRetrans");
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Closes `stream` with an RST (SO_LINGER 0): the RST passes the firewall rule (it is no
/// bare ACK) and removes the listener's pending request, so no SYN-ACK is resent after.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setting a socket option on our own socket with a valid struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

fn synack_of(e: &Event, listener: SocketAddr, client: SocketAddr) -> Option<&HandshakeRetransmit> {
    match &e.detail {
        EventDetail::TcpSynackRetransmit(r) if r.src == listener && r.dst == client => Some(r),
        _ => None,
    }
}

#[test]
fn unacknowledged_synack_is_retransmitted() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let ns = Netns::new("synack");
    let listener = in_netns(&ns, || TcpListener::bind("127.0.0.1:0").unwrap());
    let listen_addr = listener.local_addr().unwrap();
    // A bare ACK (no SYN, FIN or RST) to the listener's port: the handshake's last step.
    let port = listen_addr.port().to_string();
    ns.exec(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "--tcp-flags",
        "SYN,ACK,FIN,RST",
        "ACK",
        "-j",
        "DROP",
    ]);
    assert_eq!(syn_retransmits(&ns), 0, "a fresh namespace");

    let client = in_netns(&ns, move || TcpStream::connect(listen_addr).unwrap());
    let client_addr = client.local_addr().unwrap();
    // The first retransmission, as the kernel counts it and as the agent reports it.
    let first = h.wait_for(&mut events, WAIT, "SYN-ACK retransmit", |e| {
        synack_of(e, listen_addr, client_addr).is_some()
    });
    reset(client);
    // The namespace's count is final once the request is gone; the first retransmission
    // is in it (the agent reported it), later ones only if the test was slow.
    let retransmits = syn_retransmits(&ns);
    assert!(retransmits >= 1, "the kernel counted {retransmits}");

    let mut reported = vec![first];
    let deadline = Instant::now() + WAIT;
    while reported.len() < retransmits as usize && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        reported.extend(h.collect(&mut events, left, 1, &|e| {
            synack_of(e, listen_addr, client_addr).is_some()
        }));
    }
    // None beyond the kernel's count.
    reported.extend(h.collect(&mut events, QUIET, usize::MAX, &|e| {
        synack_of(e, listen_addr, client_addr).is_some()
    }));
    assert_eq!(
        reported.len() as u64,
        retransmits,
        "one event per SYN-ACK the kernel resent: {reported:?}"
    );
    for event in &reported {
        let r = synack_of(event, listen_addr, client_addr).unwrap();
        // SYN-ACK retransmissions carry no running count (the field is the SYN's).
        assert_eq!(r.count, 0, "{event:?}");
    }
    assert_eq!(
        syn_retransmits(&ns),
        retransmits,
        "none resent after the RST"
    );
    drop(listener);
}
