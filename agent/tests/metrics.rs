//! `GET /metrics` of a real agent: counts that match what the test did, Prometheus's own
//! checker accepting the output.

mod common;

use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{closed_port, harness, sample};

fn comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string()
}

/// Scrapes until `check` holds (events reach the metrics asynchronously).
fn scrape_until(h: &common::Harness, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = h.scrape();
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never showed:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connect_errors_and_successes_are_counted() {
    let Some(h) = harness() else { return };
    let port = closed_port();
    for _ in 0..7 {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
    let upstream = format!("127.0.0.1:{port}");
    let me = comm();
    let labels = [
        ("proxy", me.as_str()),
        ("upstream", upstream.as_str()),
        ("errno", "ECONNREFUSED"),
    ];
    // Both counters of each failure, whichever the scrape reads first.
    let text = scrape_until(h, "connect errors and attempts", |t| {
        sample(t, "why502_upstream_connect_errors_total", &labels) == Some(7.0)
            && sample(t, "why502_upstream_connects_total", &labels[..2]).is_some_and(|n| n >= 7.0)
    });
    assert_eq!(
        sample(&text, "why502_upstream_connects_total", &labels[..2]),
        Some(7.0)
    );

    // Successes come from the kernel's aggregates, with their latency.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ok = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let _streams: Vec<_> = (0..3).map(|_| TcpStream::connect(&ok).unwrap()).collect();
    let ok_labels = [("proxy", me.as_str()), ("upstream", ok.as_str())];
    let text = scrape_until(h, "successful connects", |t| {
        sample(t, "why502_upstream_connects_total", &ok_labels) == Some(3.0)
    });
    assert_eq!(
        sample(
            &text,
            "why502_upstream_connect_duration_seconds_count",
            &ok_labels
        ),
        Some(3.0)
    );
    let inf = [ok_labels[0], ok_labels[1], ("le", "+Inf")];
    assert_eq!(
        sample(
            &text,
            "why502_upstream_connect_duration_seconds_bucket",
            &inf
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "why502_upstream_connect_errors_total", &ok_labels),
        None,
        "no errors for a healthy upstream"
    );
    assert_eq!(
        sample(
            &text,
            "why502_probe_attached",
            &[("probe", "inet_sock_set_state")]
        ),
        Some(1.0)
    );
    assert!(sample(&text, "why502_build_info", &[]).is_some());
}

#[test]
fn host_signals_are_sampled() {
    let Some(h) = harness() else { return };
    // A listener with a full accept queue: backlog 2, never accepting. The kernel queues
    // backlog + 1 connections (full is `queued > backlog`), so all three clients complete.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: re-listening on our own socket with a smaller backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 2) }, 0);
    let endpoint = listener.local_addr().unwrap().to_string();
    let _clients: Vec<_> = (0..3)
        .map(|_| TcpStream::connect(&endpoint).unwrap())
        .collect();
    // A sample taken before the clients were queued shows the listener with a shorter
    // queue: wait for one taken after.
    let text = scrape_until(h, "the listener's full queue", |t| {
        sample(t, "why502_listener_queue_depth", &[("endpoint", &endpoint)]) == Some(3.0)
    });
    assert_eq!(
        sample(
            &text,
            "why502_listener_queue_backlog",
            &[("endpoint", &endpoint)],
        ),
        Some(2.0)
    );
    // PSI exists on this kernel; the counter is there even when nothing stalled.
    if std::path::Path::new("/proc/pressure/memory").exists() {
        assert!(sample(
            &text,
            "why502_memory_pressure_stall_seconds_total",
            &[("kind", "some")]
        )
        .is_some());
    }
    assert!(sample(&text, "why502_listen_overflows_total", &[]).is_some());
}

#[test]
fn promtool_accepts_the_exposition() {
    let Some(h) = harness() else { return };
    let port = closed_port();
    let _ = TcpStream::connect(("127.0.0.1", port));
    let text = h.scrape();
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            panic!("promtool is missing ({err}): `cargo xtask test` installs Debian's prometheus")
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a burst child does: more records of one budgeted kind, from one process, than
/// its budget lets through.
#[derive(Clone, Copy)]
enum Burst {
    /// New listeners (socket, autobind, listen, close): one `listen_call` record each.
    Listeners,
    /// Children that exit with code 1 at once: one `process_exit` each, all charged to
    /// their parent, a shell (a small process forks fast: a fork of this test process
    /// copies its whole address space, slow enough on a busy host to stay in budget).
    FailingChildren,
}

/// Records in a burst: several windows' budgets (256 a second) in well under a second.
const BURST: u64 = 1000;

/// Runs a burst in a child of its own (a fresh producer, not this test process, whose
/// listens other tests need) and reaps it; how long it took.
fn burst(kind: Burst) -> Duration {
    let started = Instant::now();
    if let Burst::FailingChildren = kind {
        // Each `( exit 1 )` is a subshell: a fork that exits with code 1.
        let script = format!("i=0; while [ $i -lt {BURST} ]; do ( exit 1 ); i=$((i+1)); done");
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .status()
            .expect("run /bin/sh");
        assert!(status.success(), "the burst shell failed: {status}");
        return started.elapsed();
    }
    // SAFETY: the child makes only raw syscalls (this process has threads: nothing that
    // allocates or locks after the fork) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: the child, as above; its own fds and children only.
        unsafe {
            // New listeners (`Burst::Listeners`: the only kind forked from here).
            for _ in 0..BURST {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let addr = libc::sockaddr_un {
                    sun_family: libc::AF_UNIX as libc::sa_family_t,
                    sun_path: [0; 108],
                };
                // Only the family: the kernel autobinds an abstract name.
                let len = std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t;
                if fd < 0
                    || libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0
                    || libc::listen(fd, 1) != 0
                {
                    libc::_exit(10);
                }
                libc::close(fd);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the burst child failed: status {status:#x}"
    );
    started.elapsed()
}

/// The least the kernel must have throttled of a burst of [`BURST`] that took `took`:
/// at most one budget per window the burst touched went through, and a record or two
/// more per CPU where two CPUs raced on the budget.
fn least_throttled(took: Duration) -> u64 {
    let windows = took.as_secs() + 1;
    let through = windows * agent_common::budget::RECORDS_PER_WINDOW + 8;
    BURST.saturating_sub(through)
}

/// Bursts of `kind` until they must have been throttled (a busy host can stretch one over
/// enough windows to stay in budget): the least throttled in all, at most 5 bursts.
fn bursts_over_budget(kind: Burst) -> (u64, Vec<Duration>) {
    let mut took = Vec::new();
    let mut least = 0;
    while least == 0 {
        assert!(
            took.len() < 5,
            "5 bursts of {BURST}, never over budget: {took:?}"
        );
        let t = burst(kind);
        least += least_throttled(t);
        took.push(t);
    }
    (least, took)
}

#[test]
fn a_burst_over_the_budget_is_counted_as_throttled_in_metrics_and_status() {
    let Some(h) = harness() else { return };
    let throttled = |text: &str, kind: &str| {
        sample(
            text,
            "why502_kernel_events_throttled_total",
            &[("kind", kind)],
        )
        .unwrap_or(0.0)
    };
    let status_throttled = |kind: &str| {
        h.status_json()["kernel"]["throttled"][kind]
            .as_u64()
            .unwrap_or_else(|| panic!("no kernel.throttled.{kind} in why502 status --json"))
    };
    // The series exist from the first reading, zeros included, for the budgeted kinds
    // only: a kind the kernel never budgets has none.
    let before = scrape_until(h, "the throttled counters", |t| {
        ["listen_call", "process_exec", "process_exit", "signal"]
            .iter()
            .all(|kind| {
                sample(t, "why502_kernel_events_throttled_total", &[("kind", kind)]).is_some()
            })
    });
    assert_eq!(
        sample(
            &before,
            "why502_kernel_events_throttled_total",
            &[("kind", "tcp_connect_failure")]
        ),
        None
    );
    let status_before = [
        status_throttled("listen_call"),
        status_throttled("process_exit"),
    ];

    let (listens, listen_took) = bursts_over_budget(Burst::Listeners);
    let (exits, exit_took) = bursts_over_budget(Burst::FailingChildren);
    let least = [listens, exits];
    let took = [listen_took, exit_took];
    // The whole host counts here (another test's flood only adds): at least ours.
    let text = scrape_until(h, "the bursts' throttled records", |t| {
        throttled(t, "listen_call") - throttled(&before, "listen_call") >= least[0] as f64
            && throttled(t, "process_exit") - throttled(&before, "process_exit") >= least[1] as f64
    });
    let status_after = [
        status_throttled("listen_call"),
        status_throttled("process_exit"),
    ];
    for (i, kind) in ["listen_call", "process_exit"].into_iter().enumerate() {
        assert!(
            status_after[i] - status_before[i] >= least[i],
            "why502 status: {kind} throttled {} → {}, bursts of {BURST} in {:?} must make \
             at least {}",
            status_before[i],
            status_after[i],
            took[i],
            least[i]
        );
        // Status and metric count the same kernel slot (read at different times).
        assert!(status_after[i] as f64 >= throttled(&text, kind), "{kind}");
    }
    let human = h.status_text();
    let line = human
        .lines()
        .find(|l| l.starts_with("Throttled (a process over its budget): "))
        .unwrap_or_else(|| panic!("no throttled line in why502 status:\n{human}"));
    assert!(
        line.contains("listen_call ") && line.contains("process_exit "),
        "{line}"
    );
}
