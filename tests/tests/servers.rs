//! A local user's idle connections cannot stop the agent. A thousand connections that send
//! nothing, to the metrics port and to the API socket, are held only up to the servers'
//! cap (the rest closed at once), and while they are open a scrape, `GET /v1/status`, the
//! store (`GET /v1/incidents`) and the event path with its procfs enrichment all still
//! work. A client that sends nothing or half a request head is dropped after the servers'
//! header-read timeout.
//!
//! The agent runs with a soft limit of 1024 file descriptors (systemd's default), as a
//! server without a cap would run out of them; the test process raises its own to hold its
//! 2000 client sockets.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::{fd::FromRawFd, unix::net::UnixStream},
    path::Path,
    time::{Duration, Instant},
};

use why502_e2e::{agent::Agent, can_load_ebpf, free_port, http, serial};

/// Idle connections opened to each server.
const IDLE: usize = 1000;
/// The servers' connection cap (`http_server::LIMITS.max_connections`).
const CAP: usize = 64;
/// The servers' header-read timeout (`http_server::LIMITS.header_read_timeout`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a real client may wait for its answer while the idle connections are open.
const ANSWER_BOUND: Duration = Duration::from_secs(2);

/// The soft `RLIMIT_NOFILE` of this process, set for as long as the guard lives.
struct SoftNofile {
    previous: libc::rlimit,
}

impl SoftNofile {
    /// Sets the soft limit to `soft` (at most the hard limit).
    fn set(soft: u64) -> Self {
        let mut previous = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut previous), 0);
            let wanted = libc::rlimit {
                rlim_cur: soft.min(previous.rlim_max),
                rlim_max: previous.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &wanted), 0);
        }
        Self { previous }
    }
}

impl Drop for SoftNofile {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.previous) };
    }
}

/// A unix stream connected without blocking on a full backlog: a server that stopped
/// accepting must fail the test, not hang it. `None` when `deadline` passed first.
fn unix_connect(path: &Path, deadline: Instant) -> Option<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied within its bounds (the
    // test's socket path is short) and the fd is owned by the UnixStream made from it.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(bytes.len() < addr.sun_path.len(), "{}", path.display());
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        loop {
            let fd = libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            if rc == 0 {
                return Some(UnixStream::from_raw_fd(fd));
            }
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            // EAGAIN: the backlog is full, the server is not accepting.
            assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "connect: {err}");
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Opens up to `IDLE` TCP connections to `addr` before `deadline`.
fn tcp_flood(addr: SocketAddr, deadline: Instant) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(IDLE);
    while streams.len() < IDLE && Instant::now() < deadline {
        // A server that stopped accepting leaves the SYN unanswered: bounded.
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            streams.push(stream);
        }
    }
    streams
}

/// Whether the server closed its side of the connection (EOF or reset); never blocks.
fn closed_by_server(stream: &mut impl Read) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) if err.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Polls until at most `CAP` of `streams` are held open by the server, or `limit` passes;
/// the number still open.
fn wait_for_cap<S: Read>(streams: &mut [S], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let open = streams
            .iter_mut()
            .filter_map(|s| (!closed_by_server(s)).then_some(()))
            .count();
        if open <= CAP || Instant::now() > deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `call` and checks it answered within [`ANSWER_BOUND`].
fn timed<T>(what: &str, call: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let answer = call();
    let took = started.elapsed();
    assert!(
        took < ANSWER_BOUND,
        "{what} took {took:?} (bound {ANSWER_BOUND:?})"
    );
    answer
}

#[test]
fn a_thousand_idle_connections_stop_neither_the_servers_nor_the_event_path() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = {
        let _agents_limit = SoftNofile::set(1024);
        Agent::start()
    };
    let _clients_limit = SoftNofile::set(4 * IDLE as u64 + 256);

    let opening = Instant::now() + Duration::from_secs(10);
    let mut tcp = tcp_flood(agent.metrics_addr(), opening);
    let mut unix: Vec<UnixStream> = Vec::with_capacity(IDLE);
    while unix.len() < IDLE {
        match unix_connect(&agent.socket(), opening) {
            Some(stream) => unix.push(stream),
            None => break,
        }
    }
    assert_eq!(
        tcp.len(),
        IDLE,
        "TCP connects to the metrics port completed"
    );
    assert_eq!(unix.len(), IDLE, "connects to the API socket completed");
    for stream in &tcp {
        stream.set_nonblocking(true).unwrap();
    }

    // Beyond the cap the servers close connections at once (well before the header-read
    // timeout would): the agent holds at most CAP of each.
    let open_tcp = wait_for_cap(&mut tcp, Duration::from_secs(2));
    assert!(
        open_tcp <= CAP,
        "{open_tcp} idle metrics connections held open"
    );
    let open_unix = wait_for_cap(&mut unix, Duration::from_secs(2));
    assert!(
        open_unix <= CAP,
        "{open_unix} idle API connections held open"
    );

    // Real clients still get their answers, while the flood's sockets are open.
    let port = agent.metrics_addr().port();
    let scrape = timed("a scrape", || http::get_status_of(port, "/metrics"));
    assert_eq!(scrape.ok(), Some(200), "GET /metrics during the flood");
    let status = timed("GET /v1/status", || {
        http::unix_get(&agent.socket(), "/v1/status")
    });
    let (code, body) = status.expect("GET /v1/status during the flood");
    assert_eq!(code, 200, "{body}");
    let incidents = timed("GET /v1/incidents", || {
        http::unix_get(&agent.socket(), "/v1/incidents")
    });
    let (code, body) = incidents.expect("GET /v1/incidents (the store) during the flood");
    assert_eq!(code, 200, "{body}");

    // And the event path: a refused connect is reported, with what procfs says of us.
    let refused = free_port();
    let err = TcpStream::connect(("127.0.0.1", refused)).expect_err("nothing listens there");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let dst = format!("127.0.0.1:{refused}");
    let events = agent.wait_for(1, Duration::from_secs(5), |e| {
        e["kind"] == "tcp_connect_failure" && e["dst"] == dst.as_str()
    });
    let event = events
        .first()
        .expect("the refused connect's event during the flood");
    let exe = std::env::current_exe().unwrap();
    assert_eq!(
        event["process"]["exe"].as_str(),
        exe.to_str(),
        "the event is enriched from procfs: {event}"
    );
    assert_eq!(event["errno"]["name"], "ECONNREFUSED", "{event}");
    drop(tcp);
    drop(unix);
    agent.stop();
}

#[test]
fn a_client_that_sends_nothing_or_half_a_request_is_dropped() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let half = b"GET /metrics HTTP/1.1\r\nHost: why502\r\n";
    let mut tcp_silent = TcpStream::connect(agent.metrics_addr()).unwrap();
    let mut tcp_half = TcpStream::connect(agent.metrics_addr()).unwrap();
    tcp_half.write_all(half).unwrap();
    let mut unix_silent = UnixStream::connect(agent.socket()).unwrap();
    let mut unix_half = UnixStream::connect(agent.socket()).unwrap();
    unix_half.write_all(half).unwrap();
    let started = Instant::now();
    let limit = HEADER_TIMEOUT + Duration::from_secs(3);
    for stream in [&tcp_silent, &tcp_half] {
        stream.set_read_timeout(Some(limit)).unwrap();
    }
    for stream in [&unix_silent, &unix_half] {
        stream.set_read_timeout(Some(limit)).unwrap();
    }
    let mut clients: [(&str, &mut dyn Read); 4] = [
        ("silent TCP", &mut tcp_silent),
        ("half-request TCP", &mut tcp_half),
        ("silent unix", &mut unix_silent),
        ("half-request unix", &mut unix_half),
    ];
    for (name, client) in &mut clients {
        let mut rest = Vec::new();
        // Blocking reads, bounded by the sockets' read timeouts.
        let result = client.read_to_end(&mut rest);
        let took = started.elapsed();
        assert!(
            !matches!(&result, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "{name}: still open after {took:?}"
        );
        assert!(took < limit, "{name}: dropped only after {took:?}");
        assert!(
            rest.is_empty(),
            "{name}: answered {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert!(
        started.elapsed() >= HEADER_TIMEOUT - Duration::from_millis(500),
        "dropped after {:?}: the timeout, not a refusal",
        started.elapsed()
    );
    agent.stop();
}

/// The unit's `LimitNOFILE`: set, room for both servers' caps with the agent's own files
/// (maps, links, procfs, the store), and valid to systemd where `systemd-analyze` exists.
#[test]
fn the_unit_sets_a_file_descriptor_limit_with_room_for_both_servers() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/why502.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read deploy/why502.service");
    let limits: Vec<&str> = unit
        .lines()
        .filter_map(|line| line.trim().strip_prefix("LimitNOFILE="))
        .collect();
    let [limit] = limits[..] else {
        panic!("LimitNOFILE= set once in the unit: {limits:?}");
    };
    let limit: usize = limit
        .parse()
        .unwrap_or_else(|_| panic!("LimitNOFILE={limit} is not one number (soft = hard)"));
    assert!(
        (2 * CAP + 512..=65536).contains(&limit),
        "LimitNOFILE={limit}: 2 × {CAP} connections and 512 files of the agent's own, bounded"
    );

    // systemd-analyze exits 0 on values it ignores, but says so on stderr.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("why502.service");
    let binary = why502_e2e::sibling_binary("why502");
    // Whatever ExecStart's path, the copy runs the binary under test.
    let text: String = unit
        .lines()
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(rest) => {
                let args = rest.split_once(' ').map_or("", |(_, args)| args);
                format!("ExecStart={} {args}\n", binary.display())
            }
            None => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&copy, text).unwrap();
    let verified = match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Ok(out) => out,
        Err(err) => {
            eprintln!("systemd-analyze verify skipped: {err}");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && !stderr.contains("why502.service"),
        "systemd-analyze verify: {}\n{stderr}",
        verified.status
    );
}
