//! Kernel integration tests: a proxy's upstream connections followed to their end.
//!
//! The test process is no proxy, so each test first has the kernel mark it the way it marks
//! one: a refused connect (`agent-ebpf/src/connect.rs`, `failed` → `mark_proxy`). Its
//! connects from then on are followed. Each upstream is a local listener with a thread
//! playing the backend's part.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{closed_port, harness, pid_of, Harness};
use why502::{
    config::Config,
    model::event::{EndHow, Event, EventDetail, TcpReset, UpstreamEnd},
    sources::probes::{maps::ConnectStatsMap, ProbeSet},
};

const WAIT: Duration = Duration::from_secs(5);
/// How long an event that must not come is waited for, once the connection has ended.
const QUIET: Duration = Duration::from_millis(1000);
const REQUEST: &[u8] = b"GET /slow HTTP/1.1\r\nHost: upstream\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Has the kernel mark this process as a proxy: a connect refused by a closed loopback
/// port. The kernel marks the connecting process before `connect(2)` returns.
fn mark_as_proxy() {
    let err = TcpStream::connect(("127.0.0.1", closed_port())).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
}

/// [`mark_as_proxy`], then waits until the shared agent has seen that refused connect:
/// its programs ran for this process.
fn marked(h: &Harness) {
    let mut events = h.subscribe();
    let port = closed_port();
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    h.wait_for(&mut events, WAIT, "the marking refused connect", |e| {
        matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == port)
            && pid_of(e) == Some(std::process::id())
    });
}

/// A backend on 127.0.0.1: `serve` runs on each of `connections` accepted connections,
/// in a thread of its own.
fn upstream(
    connections: usize,
    serve: impl Fn(usize, TcpStream) + Send + 'static,
) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        for i in 0..connections {
            let (stream, _) = listener.accept().unwrap();
            serve(i, stream);
        }
    });
    (port, thread)
}

fn read_request(stream: &mut TcpStream) {
    let mut request = vec![0u8; REQUEST.len()];
    stream.read_exact(&mut request).unwrap();
    assert_eq!(request, REQUEST);
}

/// Reads until the peer's FIN (or an error: the peer may reset).
fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// How an answered connection ends.
#[derive(Clone, Copy)]
enum Answered {
    /// The client closes first, once it has the response.
    ClientCloses,
    /// The backend closes right after its response (a keepalive connection it let go).
    BackendCloses,
}

/// The backend's side of an answered connection.
fn answer(mut stream: TcpStream, how: Answered) {
    read_request(&mut stream);
    stream.write_all(RESPONSE).unwrap();
    if let Answered::ClientCloses = how {
        drain(&mut stream);
    }
}

/// The client's side of an answered connection; returns its address once it is closed.
fn answered(port: u16, how: Answered) -> SocketAddr {
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(REQUEST).unwrap();
    let mut response = vec![0u8; RESPONSE.len()];
    client.read_exact(&mut response).unwrap();
    assert_eq!(response, RESPONSE);
    if let Answered::BackendCloses = how {
        let mut buf = [0u8; 16];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF after the response");
    }
    client.local_addr().unwrap()
}

fn set_linger_zero(stream: &TcpStream) {
    // SO_LINGER with a zero timeout: close() sends RST instead of FIN.
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

fn upstream_end_of(e: &Event, src: SocketAddr) -> Option<&UpstreamEnd> {
    match &e.detail {
        EventDetail::UpstreamEnd(end) if end.src == src => Some(end),
        _ => None,
    }
}

fn reset_received_on(e: &Event, src: SocketAddr) -> Option<&TcpReset> {
    match &e.detail {
        EventDetail::TcpResetReceived(reset) if reset.src == src => Some(reset),
        _ => None,
    }
}

/// Every `upstream_end` of the connection from `src` within [`QUIET`].
fn upstream_ends(
    h: &Harness,
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
    src: SocketAddr,
) -> Vec<std::sync::Arc<Event>> {
    h.collect(events, QUIET, 10, &|e| upstream_end_of(e, src).is_some())
}

#[test]
fn upstream_closing_before_answering() {
    let Some(h) = harness() else { return };
    marked(h);
    let mut events = h.subscribe();
    // The backend reads the request and closes: FIN, no response byte.
    let (port, backend) = upstream(1, |_, mut stream| read_request(&mut stream));
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let src = client.local_addr().unwrap();
    client.write_all(REQUEST).unwrap();
    backend.join().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "EOF: the upstream closed"
    );

    let event = h.wait_for(&mut events, WAIT, "upstream_end", |e| {
        upstream_end_of(e, src).is_some()
    });
    let end = upstream_end_of(&event, src).unwrap();
    assert_eq!(end.how, EndHow::ClosedByUpstream);
    assert_eq!(end.dst, SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(end.traffic.bytes_sent, REQUEST.len() as u64);
    assert_eq!(end.traffic.bytes_received, 0);
    assert!(end.traffic.duration < WAIT, "{:?}", end.traffic.duration);
    assert_eq!(
        pid_of(&event),
        Some(std::process::id()),
        "owner from connect time"
    );

    // Our own close (CLOSE_WAIT→LAST_ACK→CLOSE) reports nothing more.
    drop(client);
    let more = upstream_ends(h, &mut events, src);
    assert!(more.is_empty(), "reported twice: {more:?}");
}

#[test]
fn proxy_giving_up_after_the_response_timeout() {
    let Some(h) = harness() else { return };
    marked(h);
    let mut events = h.subscribe();
    // The backend reads the request and never answers; it closes once the client has.
    let (port, backend) = upstream(1, |_, mut stream| {
        read_request(&mut stream);
        drain(&mut stream);
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let src = client.local_addr().unwrap();
    client.write_all(REQUEST).unwrap();
    // Past the harness's probes.response_timeout_ms (the default).
    let timeout = Duration::from_millis(Config::default().probes.response_timeout_ms);
    std::thread::sleep(timeout + Duration::from_millis(300));
    drop(client);

    let event = h.wait_for(&mut events, WAIT, "upstream_end", |e| {
        upstream_end_of(e, src).is_some()
    });
    let end = upstream_end_of(&event, src).unwrap();
    assert_eq!(end.how, EndHow::ProxyGaveUp);
    assert_eq!(end.dst.port(), port);
    assert_eq!(end.traffic.bytes_sent, REQUEST.len() as u64);
    assert_eq!(end.traffic.bytes_received, 0);
    assert!(
        end.traffic.duration >= timeout && end.traffic.duration < WAIT,
        "{:?}",
        end.traffic.duration
    );
    assert_eq!(pid_of(&event), Some(std::process::id()));
    backend.join().unwrap();
    let more = upstream_ends(h, &mut events, src);
    assert!(more.is_empty(), "reported twice: {more:?}");
}

#[test]
fn proxy_closing_before_the_response_timeout_is_not_reported() {
    let Some(h) = harness() else { return };
    marked(h);
    let mut events = h.subscribe();
    let (port, backend) = upstream(1, |_, mut stream| {
        read_request(&mut stream);
        drain(&mut stream);
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let src = client.local_addr().unwrap();
    client.write_all(REQUEST).unwrap();
    // Well within the response timeout: a client that went away, not a slow upstream.
    std::thread::sleep(Duration::from_millis(100));
    drop(client);
    backend.join().unwrap();
    let ends = upstream_ends(h, &mut events, src);
    assert!(ends.is_empty(), "{ends:?}");
}

#[test]
fn answered_connections_end_without_a_report() {
    let Some(h) = harness() else { return };
    marked(h);
    let mut events = h.subscribe();
    // One closed by the client after its response, one by the backend after the response
    // (keepalive-style: the FIN comes after the answer).
    const HOW: [Answered; 2] = [Answered::ClientCloses, Answered::BackendCloses];
    let (port, backend) = upstream(HOW.len(), |i, stream| answer(stream, HOW[i]));
    let sources: Vec<SocketAddr> = HOW.iter().map(|&how| answered(port, how)).collect();
    backend.join().unwrap();
    let ends = h.collect(&mut events, QUIET, 10, &|e| {
        sources.iter().any(|&src| upstream_end_of(e, src).is_some())
    });
    assert!(ends.is_empty(), "{ends:?}");
}

/// A backend that resets the connection once the client says so, after reading the
/// request and, when `respond`, writing the response.
///
/// The client says so through a channel, not the connection, once the kernel has its
/// request acknowledged: the reset is then processed before any ACK it carries, so an
/// acknowledgement still delayed at the backend would never count.
fn resetting_backend(respond: bool) -> (u16, JoinHandle<()>, std::sync::mpsc::Sender<()>) {
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (port, backend) = upstream(1, move |_, mut stream| {
        read_request(&mut stream);
        if respond {
            stream.write_all(RESPONSE).unwrap();
        }
        wait.recv().unwrap();
        set_linger_zero(&stream);
    });
    (port, backend, go)
}

/// Waits until everything `client` sent is acknowledged (`SIOCOUTQ` is 0).
fn wait_until_acknowledged(client: &TcpStream) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
        let rc = unsafe { libc::ioctl(client.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
        assert_eq!(rc, 0);
        if unacked == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unacked} bytes never acknowledged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn reset_after_the_request_carries_the_traffic() {
    let Some(h) = harness() else { return };
    marked(h);
    let mut events = h.subscribe();
    let (port, backend, go) = resetting_backend(false);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let src = client.local_addr().unwrap();
    client.write_all(REQUEST).unwrap();
    wait_until_acknowledged(&client);
    go.send(()).unwrap();
    backend.join().unwrap();
    let mut buf = [0u8; 16];
    let err = client.read(&mut buf).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET));

    let event = h.wait_for(&mut events, WAIT, "RST received", |e| {
        reset_received_on(e, src).is_some()
    });
    let reset = reset_received_on(&event, src).unwrap();
    assert_eq!(reset.state, "ESTABLISHED");
    let traffic = reset
        .traffic
        .expect("a followed connection has its traffic");
    assert_eq!(traffic.bytes_sent, REQUEST.len() as u64);
    assert_eq!(traffic.bytes_received, 0, "the upstream had not answered");
    assert!(traffic.duration < WAIT, "{:?}", traffic.duration);
    assert_eq!(pid_of(&event), Some(std::process::id()));
    // A reset is its own report: no upstream_end besides.
    let ends = upstream_ends(h, &mut events, src);
    assert!(ends.is_empty(), "{ends:?}");
}

#[test]
fn reset_after_the_response_says_it_was_answered() {
    let Some(h) = harness() else { return };
    marked(h);
    let mut events = h.subscribe();
    let (port, backend, go) = resetting_backend(true);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let src = client.local_addr().unwrap();
    client.write_all(REQUEST).unwrap();
    let mut response = vec![0u8; RESPONSE.len()];
    client.read_exact(&mut response).unwrap();
    wait_until_acknowledged(&client);
    go.send(()).unwrap();
    backend.join().unwrap();

    let event = h.wait_for(&mut events, WAIT, "RST received", |e| {
        reset_received_on(e, src).is_some()
    });
    let traffic = reset_received_on(&event, src)
        .unwrap()
        .traffic
        .expect("a followed connection has its traffic");
    assert_eq!(traffic.bytes_sent, REQUEST.len() as u64);
    assert_eq!(traffic.bytes_received, RESPONSE.len() as u64);
}

/// The kernel's per-(process, destination) counts of normal ends, read from a program set
/// of the test's own (the shared agent's aggregates report growth of successes only).
#[test]
fn normal_ends_are_counted_in_the_kernel() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root: kernel tests need root to load eBPF programs");
        return;
    }
    let mut config = Config::default();
    // Nobody reads this set's ring: keep it small.
    config.probes.ring_buffer_bytes = 65536;
    let mut probes = ProbeSet::load(&config).expect("probes load");
    let maps = probes.take_maps().unwrap();

    // Two connections answered (each way of closing), a third closed by the backend before
    // answering.
    const HOW: [Answered; 2] = [Answered::ClientCloses, Answered::BackendCloses];
    const ANSWERED: u64 = HOW.len() as u64;
    let (port, backend) = upstream(HOW.len() + 1, |i, mut stream| match HOW.get(i) {
        Some(&how) => answer(stream, how),
        None => read_request(&mut stream),
    });
    // Marked in this set's PROXIES map too: it was loaded after any earlier marking. Only
    // a process that serves clients is marked by a failure: the upstream's listener, just
    // opened, makes this one a listener owner in this set too.
    mark_as_proxy();
    for how in HOW {
        answered(port, how);
    }
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(REQUEST).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "closed before answering");
    drop(client);
    backend.join().unwrap();

    let me = std::process::id();
    let counts = |connects: &ConnectStatsMap| {
        connects
            .read_with_ends()
            .into_iter()
            .filter(|(agg, _)| agg.key.tgid == me && agg.key.dport == port)
            .fold((0, 0), |(established, closed_ok), (agg, ends)| {
                (established + agg.established, closed_ok + ends.closed_ok)
            })
    };
    let deadline = Instant::now() + WAIT;
    while counts(&maps.connects).1 < ANSWERED && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every connection has ended by now (loopback); the bad end must not be counted late.
    std::thread::sleep(Duration::from_millis(300));
    let (established, closed_ok) = counts(&maps.connects);
    assert_eq!(established, ANSWERED + 1);
    assert_eq!(
        closed_ok, ANSWERED,
        "the answered connections, not the prematurely closed one"
    );
    drop(probes);
}
