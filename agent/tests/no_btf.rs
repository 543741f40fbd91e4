//! The agent as on a kernel without BTF (`probes.kernel_btf = false`, which ignores
//! `/sys/kernel/btf/vmlinux`): what still works and what degrades, as the README says.
//! Its own test binary: the shared agent of a binary takes the first configuration.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use agent_common::config::Probe;
use common::{closed_port, harness_with, pid_of, Harness, TEST_LABEL_CAP};
use why502::{
    model::event::{Event, EventDetail},
    sources::probes::{Attachment, ProbeStatus},
};

const WAIT: Duration = Duration::from_secs(5);
/// How long a second report of the same failure would take to follow the first at most.
const STRAGGLERS: Duration = Duration::from_secs(1);

fn harness() -> Option<&'static Harness> {
    harness_with(|config| {
        config.probes.kernel_btf = false;
        config.metrics.max_upstreams = TEST_LABEL_CAP;
        config.metrics.max_proxies = TEST_LABEL_CAP;
        config.metrics.max_services = TEST_LABEL_CAP;
    })
}

/// Every probe is a classic tracepoint; `tcp_sendmsg_locked`, which exists only as
/// `tp_btf`, is off as unavailable, and the write-syscall probes count responses instead.
/// `why502 status` says so.
#[test]
fn every_probe_is_classic_and_tcp_sendmsg_locked_is_unavailable() {
    let Some(h) = harness() else { return };
    let status = h.agent.probe_status();
    for (probe, s) in status {
        assert_ne!(
            *s,
            ProbeStatus::Attached(Attachment::TpBtf),
            "{} attached as tp_btf without BTF",
            probe.name()
        );
    }
    assert!(
        matches!(
            &status[&Probe::TcpSendmsgLocked],
            ProbeStatus::Unavailable(_)
        ),
        "{:?}",
        status[&Probe::TcpSendmsgLocked]
    );
    for probe in Probe::WRITE_SYSCALLS {
        assert_eq!(
            status[&probe],
            ProbeStatus::Attached(Attachment::Tracepoint),
            "{}",
            probe.name()
        );
    }
    assert_eq!(
        status[&Probe::InetSockSetState],
        ProbeStatus::Attached(Attachment::Tracepoint)
    );

    let json = h.status_json();
    let probe = &json["probes"]["tcp_sendmsg_locked"];
    assert_eq!(probe["status"], "unavailable", "{json:#}");
    assert!(probe["reason"].as_str().is_some_and(|r| !r.is_empty()));
    for p in Probe::WRITE_SYSCALLS {
        assert_eq!(json["probes"][p.name()]["status"], "attached", "{json:#}");
        assert_eq!(json["probes"][p.name()]["attachment"], "tracepoint");
    }
    let text = h.status_text();
    assert!(
        text.lines().any(|l| l
            .trim_start()
            .starts_with("off: tcp_sendmsg_locked: unavailable")),
        "{text}"
    );
}

/// A refused connect is still seen, with its errno. Without the `sk_err` offset the
/// state machine does not know the errno when the socket moves to CLOSE (the kernel
/// reports the socket error after that), so a blocking connect's failure is reported from
/// the syscall's return, whatever the errno: not lost, not twice.
#[test]
fn refused_connect_is_reported_once_with_its_errno() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let port = closed_port();
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let to_port = |e: &Event| match &e.detail {
        EventDetail::TcpConnectFailure(f) => f.dst.port() == port,
        EventDetail::ConnectSyscallError(f) => f.dst.to_string().ends_with(&format!(":{port}")),
        _ => false,
    };
    let event = h.wait_for(&mut events, WAIT, "refused connect", to_port);
    assert_eq!(pid_of(&event), Some(std::process::id()));
    let EventDetail::ConnectSyscallError(f) = &event.detail else {
        panic!("expected the syscall's report, got {event:?}");
    };
    assert_eq!(f.errno.0, libc::ECONNREFUSED);
    // Not reported a second time by the state machine.
    let again = h.collect(&mut events, STRAGGLERS, 1, &to_port);
    assert!(again.is_empty(), "reported twice: {again:?}");
}

/// Execs are still reported, without the parent (read through BTF's `task_struct`
/// offsets).
#[test]
fn execs_without_parents() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let exec = h.wait_for(&mut events, WAIT, "exec", |e| {
        matches!(e.detail, EventDetail::ProcessExec(_)) && pid_of(e) == Some(pid)
    });
    let _ = child.kill();
    child.wait().unwrap();
    let EventDetail::ProcessExec(exec) = &exec.detail else {
        unreachable!()
    };
    assert_eq!(exec.filename, "/usr/bin/sleep");
    assert_eq!(exec.ppid, 0, "no parent without BTF");
}

/// Deaths are still reported, with neither an exit code nor a parent.
#[test]
fn exits_without_codes_or_parents() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSEGV) }, 0);
    child.wait().unwrap();
    let exit = h.wait_for(&mut events, WAIT, "exit", |e| {
        matches!(e.detail, EventDetail::ProcessExit(_)) && pid_of(e) == Some(pid)
    });
    let EventDetail::ProcessExit(exit) = &exit.detail else {
        unreachable!()
    };
    assert_eq!(exit.code, None, "{exit:?}");
    assert_eq!(exit.signal, None, "{exit:?}");
    assert_eq!(exit.ppid, None, "{exit:?}");
}

/// A proxy's upstream connection that the upstream closes before answering: with BTF an
/// `upstream_end`; without, nothing (no `tcp_sock` byte counters to read).
#[test]
fn upstream_connections_are_not_followed() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    // A refused connect marks this process as a proxy.
    let marker = closed_port();
    assert!(TcpStream::connect(("127.0.0.1", marker)).is_err());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let src = client.local_addr().unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let _ = server.read(&mut buf).unwrap();
    drop(server);
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "EOF: the upstream closed"
    );
    drop(client);
    // Events arrive in the order the kernel wrote them: once a listener opened after the
    // close has been seen, an upstream_end would have been too.
    let after = TcpListener::bind("127.0.0.1:0").unwrap();
    let after = after.local_addr().unwrap();
    let ends = std::cell::RefCell::new(Vec::new());
    h.wait_for(&mut events, WAIT, "the listener opened after", |e| {
        if let EventDetail::UpstreamEnd(end) = &e.detail {
            if end.src == src {
                ends.borrow_mut().push(end.clone());
            }
        }
        matches!(&e.detail, EventDetail::ListenerOpened(l) if l.endpoint == after)
    });
    let ends = ends.into_inner();
    assert!(ends.is_empty(), "followed without BTF: {ends:?}");
}
