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
