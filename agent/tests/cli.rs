//! The `why502` binary itself: bad input fails with one clear line, bad state does not stop it; `--print-events` prints
//! real kernel events as JSON lines.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_why502");

fn why502(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.toml");
    std::fs::write(&path, "[probes]\nring_buffer_bytes = 1000\n").unwrap();
    let out = why502(&["agent", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("probes.ring_buffer_bytes"), "{stderr}");
    assert!(!stderr.contains("panicked"));

    std::fs::write(&path, "[probes]\nfrobnicate = true\n").unwrap();
    let out = why502(&["agent", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

/// `--check-config` validates what the agent would load, without loading probes (so it
/// needs no root): the shipped example passes, a bad value fails naming its key.
#[test]
fn check_config_validates_and_exits() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/why502.toml");
    let out = why502(&["agent", "--check-config", "--config", example]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout, format!("{example}: the configuration is valid\n"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.toml");
    std::fs::write(&path, "[incidents]\nopen_threshold = 0\n").unwrap();
    let out = why502(&[
        "agent",
        "--check-config",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("incidents.open_threshold"), "{stderr}");
}

/// `--version` names the release and the commit it was built from.
#[test]
fn version_names_the_commit() {
    let out = why502(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    let expected = match head.trim() {
        // Built outside a git checkout (a source tarball): the commit is not known.
        "" => "unknown".to_string(),
        commit => commit.to_string(),
    };
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("why502 {} (commit {expected})\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Bad state is not bad input: a store that is not SQLite is moved aside with one warning
/// (its cause said once) and the agent runs on a fresh store.
#[test]
fn a_store_that_is_not_sqlite_is_one_warning_and_the_agent_runs() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root: the store is opened after the probes load");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("junk.db");
    std::fs::write(&store, "not a database, just text\n".repeat(100)).unwrap();
    let config = dir.path().join("why502.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = {store:?}\n[api]\nsocket = {:?}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("why502.sock")
        ),
    )
    .unwrap();
    let mut agent = Command::new(BIN)
        .args(["agent", "--log-level", "info", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = agent.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    // Up to "running" (signals are handled from then on), noting the store's warning.
    let mut warning = None;
    let mut running = false;
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("incident store") && warning.is_none() {
            warning = Some(line);
        } else if line.contains("why502 agent running") {
            running = agent.try_wait().unwrap().is_none();
            break;
        } else {
            lines.push(line);
        }
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let line = warning.unwrap_or_else(|| panic!("no warning about the store: {lines:?}"));
    assert!(running, "the agent stopped: {line}");
    assert_eq!(line.matches("file is not a database").count(), 1, "{line}");
    assert!(line.contains(".bad-"), "names where the file went: {line}");
    assert_eq!(status.code(), Some(0));
    // The bad file was kept (moved aside), and a fresh store took its place.
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("junk.db.bad-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
}

#[test]
fn missing_config_file_and_bad_flags_fail() {
    let out = why502(&["agent", "--config", "/nonexistent/why502.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/why502.toml"));
    let out = why502(&["agent", "--log-level", "loud"]);
    assert_eq!(out.status.code(), Some(2));
    let out = why502(&["agent", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn print_events_shows_a_refused_connect() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root: the agent needs root to load eBPF programs");
        return;
    }
    // The test's own store, socket and metrics port, not the system's.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("why502.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{0}/why502.db\"\n[api]\nsocket = \"{0}/why502.sock\"\n[metrics]\nenabled = false\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(BIN)
        .args(["agent", "--print-events", "--log-level", "info", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = lines_of(agent.stderr.take().unwrap());
    let mut seen = Vec::new();
    let started = loop {
        match log.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("why502 agent running") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    if !started {
        let _ = agent.kill();
        let _ = agent.wait();
        if seen.iter().any(|l| l.contains("Operation not permitted")) {
            eprintln!("skipped: bpf() refused: {seen:?}");
            return;
        }
        panic!("agent did not start: {seen:?}");
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    let rx = lines_of(agent.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let event: serde_json::Value = serde_json::from_str(&line).expect("each line is JSON");
        if event["kind"] == "tcp_connect_failure" && event["dst"] == format!("127.0.0.1:{port}") {
            found = Some(event);
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let event = found.expect("a tcp_connect_failure line for the closed port");
    assert_eq!(event["errno"]["name"], "ECONNREFUSED");
    assert_eq!(event["process"]["pid"], std::process::id());
    assert!(status.success(), "agent exit on SIGTERM: {status:?}");
}

/// The lines of a child's pipe, read on a thread of their own so the pipe never fills.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
