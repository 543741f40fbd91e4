//! Kernel integration tests: a proxy started after the agent is marked by the kernel at
//! exec (a known proxy's name), and its workers on fork; only marked processes have their
//! HTTP responses counted, so the exact count for the nginx process that answered is the
//! observable of the marking.
//!
//! Nothing else may mark nginx first, or the exec and fork paths would decide nothing. A
//! failed `connect(2)` of a process that listens marks it too, and nginx started as root
//! makes one: it
//! looks up its `user` (`nobody` by default) and glibc first probes nscd's socket, absent
//! here (`ENOENT`). So nginx runs as `nobody` from the start (uid and gid set before its
//! exec, by number: no lookup), which makes it skip the lookup, and answers by itself
//! (`return`), with no upstream to fail or reset; every test also checks that the agent saw
//! no failed connect of nginx's. The test process must never be marked either (its
//! children would inherit the mark on fork): nothing in this binary makes a connect fail,
//! and nginx's listening is awaited from the agent's events, not by connecting to it.

mod common;
mod marking;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{closed_port, harness, pid_of, Harness};
use marking::{ProcessSet, Script};
use tokio::sync::broadcast;
use why502::{
    model::event::{Event, EventDetail},
    sources::kernel_maps::KernelReading,
};

const NGINX: &str = "/usr/sbin/nginx";
/// `nobody`'s uid and gid on Debian, by number: naming it would make a lookup.
const NOBODY: u32 = 65534;
const WAIT: Duration = Duration::from_secs(5);
/// How long counts beyond the expected ones are waited for, once those have come:
/// a few response polls (250 ms).
const QUIET: Duration = Duration::from_millis(750);
/// The requests each test makes: (path, status nginx answers with, how many).
const REQUESTS: [(&str, u16, u64); 2] = [("/", 200, 3), ("/missing", 404, 2)];

/// Debian's nginx with a prefix and config of its own; stopped (and killed if it must be)
/// on drop.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free loopback port, answering `GET /` with 200 and
    /// `GET /missing` with 404 itself, as one process (`master_process off`) or a master
    /// and one worker.
    fn start(master_process: bool) -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: `cargo xtask test` installs Debian's nginx-light"
        );
        let dir = tempfile::tempdir().unwrap();
        // nobody writes its pid, logs and temporary files there.
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        let p = dir.path().display();
        let port = why502_e2e::free_port();
        let master = if master_process { "on" } else { "off" };
        let config = format!(
            "daemon off;
master_process {master};
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = / {{ return 200 \"ok\\n\"; }}
        location = /missing {{ return 404; }}
    }}
}}
"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            // Its own error log from the start, not the package's /var/log/nginx.
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .expect("start nginx");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn endpoint(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master and its workers.
        if !why502_e2e::signal_and_wait(&mut self.child, libc::SIGQUIT, WAIT) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `e` is an event whose cause marks its process as a proxy in the kernel: a
/// failed connect (in the handshake or in `connect(2)`) or a reset received.
fn marks_a_proxy(e: &Event) -> bool {
    matches!(
        e.detail,
        EventDetail::TcpConnectFailure(_)
            | EventDetail::ConnectSyscallError(_)
            | EventDetail::TcpResetReceived(_)
    )
}

/// Waits (bounded) until the agent has seen nginx listen: from then on it accepts. (The
/// port's own listener, which [`why502_e2e::free_port`] bound to find it, was the test's.)
/// Returns the events meanwhile that mark a process as a proxy, of any process.
fn wait_listening(
    h: &Harness,
    events: &mut broadcast::Receiver<Arc<Event>>,
    nginx: &Nginx,
) -> Vec<Arc<Event>> {
    let (endpoint, pid) = (nginx.endpoint(), nginx.pid());
    let listening = |e: &Event| {
        matches!(&e.detail, EventDetail::ListenerOpened(l) if l.endpoint == endpoint)
            && pid_of(e) == Some(pid)
    };
    let mut marking = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(event) = h
            .collect(events, left, 1, &|e| listening(e) || marks_a_proxy(e))
            .pop()
        else {
            panic!("nginx (pid {pid}) not seen listening on {endpoint} within {WAIT:?}");
        };
        if listening(&event) {
            return marking;
        }
        marking.push(event);
    }
}

/// Fails if any of `pids` was marked as a proxy by a failed connect or a reset, among
/// `marking` and the events still queued on `events`: then the marking under test would
/// not have been what decided the counts.
fn assert_not_marked_otherwise(
    mut marking: Vec<Arc<Event>>,
    events: &mut broadcast::Receiver<Arc<Event>>,
    pids: &[u32],
) {
    loop {
        match events.try_recv() {
            Ok(event) if marks_a_proxy(&event) => marking.push(event),
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                panic!("test subscriber lagged by {n} events")
            }
            Err(_) => break,
        }
    }
    let by_nginx: Vec<_> = marking
        .iter()
        .filter(|e| pid_of(e).is_some_and(|pid| pids.contains(&pid)))
        .collect();
    assert!(
        by_nginx.is_empty(),
        "nginx was marked as a proxy by another path: {by_nginx:?}"
    );
}

/// The children of `pid` (procfs), waited for (bounded) until there are `n`.
fn children(pid: u32, n: usize) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let pids: Vec<u32> = text
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        if pids.len() == n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} has children {pids:?}, not {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes [`REQUESTS`], each on a connection of its own, checking nginx's answers.
fn make_requests(port: u16) {
    for (path, status, n) in REQUESTS {
        for _ in 0..n {
            let got = why502_e2e::http::get_status_of(port, path).expect("nginx answers");
            assert_eq!(got, status, "GET {path}");
        }
    }
}

type Counts = BTreeMap<u32, BTreeMap<u16, u64>>;

/// The responses the kernel counted for each of `pids` (by code), read from the agent's
/// readings until they reach `expected` (bounded), then for [`QUIET`] more: none beyond.
fn counted(
    h: &Harness,
    readings: &mut broadcast::Receiver<Arc<KernelReading>>,
    pids: &[u32],
    expected: &Counts,
) -> Counts {
    let mut counts = Counts::new();
    let add = |reading: &KernelReading, counts: &mut Counts| {
        for r in reading
            .responses
            .iter()
            .filter(|r| pids.contains(&r.proxy.pid))
        {
            *counts
                .entry(r.proxy.pid)
                .or_default()
                .entry(r.code)
                .or_default() += r.count;
        }
    };
    h.runtime.block_on(async {
        let deadline = Instant::now() + WAIT;
        let mut quiet_until: Option<Instant> = None;
        loop {
            if quiet_until.is_none() && counts == *expected {
                quiet_until = Some(Instant::now() + QUIET);
            }
            let until = quiet_until.unwrap_or(deadline);
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, readings.recv()).await {
                Ok(Ok(reading)) => add(&reading, &mut counts),
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    panic!("test subscriber lagged by {n} readings")
                }
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
            }
        }
    });
    counts
}

fn expected_for(pid: u32) -> Counts {
    let codes = REQUESTS.iter().map(|&(_, code, n)| (code, n)).collect();
    Counts::from([(pid, codes)])
}

/// `master_process off`: the one nginx process answers, marked when it executed nginx.
#[test]
fn a_proxy_is_marked_at_exec() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut readings = h.agent.kernel.subscribe();
    let nginx = Nginx::start(false);
    let marking = wait_listening(h, &mut events, &nginx);
    make_requests(nginx.port);
    let pid = nginx.pid();
    let expected = expected_for(pid);
    assert_eq!(counted(h, &mut readings, &[pid], &expected), expected);
    assert_not_marked_otherwise(marking, &mut events, &[pid]);
}

/// A master and a worker: the worker, forked after the master's exec, answers; it is
/// marked on fork. The master answers nothing.
#[test]
fn a_proxys_worker_is_marked_on_fork() {
    let Some(h) = harness() else { return };
    let mut events = h.subscribe();
    let mut readings = h.agent.kernel.subscribe();
    let nginx = Nginx::start(true);
    let marking = wait_listening(h, &mut events, &nginx);
    let [worker] = children(nginx.pid(), 1)[..] else {
        unreachable!()
    };
    make_requests(nginx.port);
    let expected = expected_for(worker);
    assert_eq!(
        counted(h, &mut readings, &[nginx.pid(), worker], &expected),
        expected,
        "master {}, worker {worker}",
        nginx.pid()
    );
    assert_not_marked_otherwise(marking, &mut events, &[nginx.pid(), worker]);
}

/// Connects the way a process fails one upstream connect of each kind: TCP to `port`
/// (refused: the handshake's failure) and to a unix socket path that does not exist
/// (`connect(2)`'s own error, glibc's nscd probe).
const FAIL_BOTH: &str = r#"
def fail_both(port):
    for family, address in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_UNIX, "/nonexistent/why502.sock")):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.connect(address)
            raise SystemExit("connected to " + str(address))
        except OSError:
            pass
        s.close()
"#;

/// The TCP refusal to `port` and the unix `connect(2)` error of `pid`, both seen (bounded):
/// the failures whose marking is decided.
fn wait_failures(h: &Harness, events: &mut broadcast::Receiver<Arc<Event>>, pid: u32, port: u16) {
    h.wait_for_each(
        events,
        WAIT,
        [
            ("refused TCP connect", &|e: &Event| {
                pid_of(e) == Some(pid)
                    && matches!(&e.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == port)
            }),
            ("unix connect(2) error", &|e: &Event| {
                pid_of(e) == Some(pid)
                    && matches!(&e.detail, EventDetail::ConnectSyscallError(f)
                        if f.errno.name() == "ENOENT")
            }),
        ],
    );
}

/// A process that serves no client (it does not listen, nor does its parent) and fails
/// upstream connects of both kinds is not a proxy: not marked. (The test process listens:
/// the agent's servers. So the process under test is its grandchild, through a parent of
/// its own that does not listen.)
#[test]
fn a_process_that_only_connects_is_not_marked() {
    let Some(h) = harness() else { return };
    let proxies = ProcessSet::proxies();
    let me = std::process::id();
    assert!(
        !proxies.contains(me),
        "the test process is marked: its children would inherit it"
    );
    let mut events = h.subscribe();
    let port = closed_port();
    let script = Script::start(&format!(
        "import os, socket, sys{FAIL_BOTH}
pid = os.fork()
if pid == 0:
    fail_both({port})
    print(os.getpid(), os.getppid(), flush=True)
    sys.stdin.readline()
    os._exit(0)
os.waitpid(pid, 0)
"
    ));
    let [connecting, parent] = script.numbers()[..] else {
        panic!("expected two pids")
    };
    assert_eq!(parent, script.pid());
    wait_failures(h, &mut events, connecting, port);
    // The kernel decides before it sends the failure's record.
    assert!(
        !proxies.contains(connecting),
        "pid {connecting} was marked by failed connects without serving clients"
    );
    assert!(!proxies.contains(parent), "its parent {parent} was marked");
}

/// A process that listens and fails an upstream connect is a proxy: marked, and so are a
/// worker it forked before (whose own connect fails: its parent listens) and one it forks
/// after (inherited at fork).
#[test]
fn a_listener_owner_with_a_failed_connect_is_marked_with_its_workers() {
    let Some(h) = harness() else { return };
    let proxies = ProcessSet::proxies();
    let mut events = h.subscribe();
    let (master_port, worker_port) = (closed_port(), closed_port());
    let mut script = Script::start(&format!(
        "import os, signal, socket, sys{FAIL_BOTH}
listener = socket.socket()
listener.bind(('127.0.0.1', 0))
listener.listen(8)
go_read, go_write = os.pipe()
def worker(task):
    pid = os.fork()
    if pid == 0:
        task()
        signal.pause()
    return pid
before = worker(lambda: (os.read(go_read, 1), fail_both({worker_port})))
print(before, flush=True)
fail_both({master_port})
after = worker(lambda: None)
print(after, flush=True)
sys.stdin.readline()
os.write(go_write, b'x')
signal.pause()
"
    ));
    let master = script.pid();
    let [before] = script.numbers()[..] else {
        panic!("expected one pid")
    };
    wait_failures(h, &mut events, master, master_port);
    proxies.wait_contains(master, "the listener owner");
    let [after] = script.numbers()[..] else {
        panic!("expected one pid")
    };
    proxies.wait_contains(after, "the worker forked by the proxy");
    // Forked before the master was a proxy: its own failure marks it, its parent listens.
    assert!(
        !proxies.contains(before),
        "forked before the marking, not failed yet"
    );
    script.send("go");
    wait_failures(h, &mut events, before, worker_port);
    assert!(
        proxies.contains(before),
        "worker {before} of the listener {master} failed connects and is not marked"
    );
}
