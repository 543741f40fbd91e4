//! The client commands of the `why502` binary against a real API socket served from a
//! temporary store (no root, no probes): output, `--json`, and exit codes.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::{json, Value};
use why502::{
    model::incident::Incident,
    sinks::{
        api::{self, ApiState, RecentEvents, StatusReport},
        store::Store,
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_why502");

/// An API served on its own runtime for as long as this lives.
struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

fn time(ago: Duration) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() - ago).to_string()
}

fn incident(id: u64, minutes_ago: u64, open: bool, upstream: &str) -> Incident {
    let started = Duration::from_secs(60 * minutes_ago);
    let mut value = json!({
        "id": id,
        "state": if open { "open" } else { "closed" },
        "started_at": time(started),
        "last_failure_at": time(started - Duration::from_secs(6)),
        "proxy": { "pid": 812, "comm": "nginx", "unit": "nginx.service" },
        "upstream": upstream,
        "failures": 312,
        "failure_kinds": { "ECONNREFUSED": 312 },
        "causes": [{
            "cause": "crash",
            "confidence": "high",
            "summary": "backend (pid 1234), listener of 127.0.0.1:9000, died of SIGSEGV",
            "hint": "look for the backend's core dump.",
            "evidence": [
                { "time": time(started + Duration::from_millis(5)), "kind": "process_exit",
                  "text": "SIGSEGV pid 1234" },
                { "time": time(started), "kind": "tcp_connect_failure",
                  "text": "first refused connect" }
            ]
        }]
    });
    if !open {
        value["closed_at"] = json!(time(started - Duration::from_secs(16)));
    }
    serde_json::from_value(value).unwrap()
}

fn status_report() -> StatusReport {
    StatusReport {
        version: api::VERSION.into(),
        started_at: SystemTime::now() - Duration::from_secs(90),
        uptime_seconds: 90,
        probes: [(
            "oom_mark_victim".to_string(),
            api::ProbeStatusReport {
                status: "unavailable".into(),
                reason: Some("no such tracepoint".into()),
                attachment: None,
            },
        )]
        .into(),
        events: api::EventCounts::default(),
        kernel: api::KernelReport::default(),
        incidents_open: 1,
        correlation_lagged_events: 0,
        listener_table_refused: 0,
        store_dropped_writes: 0,
        store: Default::default(),
    }
}

fn start(incidents: &[Incident]) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("why502.db")).unwrap();
    for incident in incidents {
        store.upsert(incident).unwrap();
    }
    let socket = dir.path().join("why502.sock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = ApiState {
        store: Arc::new(store),
        recent: Arc::new(RecentEvents::default()),
        status: Arc::new(status_report),
    };
    // The server task runs on the runtime's threads; the test thread only starts it.
    {
        let _inside = runtime.enter();
        api::serve(&socket, None, state).unwrap();
    }
    Agent {
        _dir: dir,
        socket,
        _runtime: runtime,
    }
}

fn sample() -> Agent {
    start(&[
        incident(17, 180, false, "127.0.0.1:9000"),
        incident(18, 2, true, "unix:/run/app.sock"),
    ])
}

fn why502(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn incidents_prints_a_table_or_json() {
    let agent = sample();
    let out = why502(&agent.socket, &["incidents"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("ID  STARTED"), "{text}");
    assert!(lines[1].starts_with("18  "), "{text}");
    assert!(lines[1].contains("nginx → unix:/run/app.sock"), "{text}");
    assert!(
        lines[1].contains("crash (high)") && lines[1].ends_with("open"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colors when not a terminal: {text:?}"
    );

    let out = why502(&agent.socket, &["incidents", "--since", "1h", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<_> = json["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(ids, [json!(18)]);

    let out = why502(&agent.socket, &["incidents", "--proxy", "envoy"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "No incidents of envoy recorded.\n");
}

#[test]
fn explain_by_id_and_last() {
    let agent = sample();
    let out = why502(&agent.socket, &["explain", "17"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("Incident 17 · "), "{text}");
    assert!(
        text.contains("312 connect failures: ECONNREFUSED ×312\n"),
        "{text}"
    );
    assert!(text.contains("Cause (high): backend (pid 1234)"), "{text}");
    assert!(
        text.contains("Hint: look for the backend's core dump."),
        "{text}"
    );

    let out = why502(&agent.socket, &["explain", "--last", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["id"], 18);

    let out = why502(&agent.socket, &["explain", "99"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stderr(&out), "why502: no incident 99\n");

    let empty = start(&[]);
    let out = why502(&empty.socket, &["explain", "--last"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stderr(&out), "why502: no incidents recorded yet\n");
}

#[test]
fn status_reports_probes_off_with_the_reason() {
    let agent = sample();
    let out = why502(&agent.socket, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Probes: 0 of 1 attached"), "{text}");
    assert!(
        text.contains("off: oom_mark_victim: unavailable (no such tracepoint)"),
        "{text}"
    );
    let out = why502(&agent.socket, &["status", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["uptime_seconds"], 90);
}

#[test]
fn no_agent_exits_3_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("why502.sock");
    for command in ["incidents", "status", "watch"] {
        let out = why502(&socket, &[command]);
        assert_eq!(out.status.code(), Some(3), "{command}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{command}: {err}");
        assert!(
            err.starts_with("why502 agent is not running (no API socket at "),
            "{err}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let socket = Path::new("/nonexistent/why502.sock");
    for args in [
        &["explain"][..],
        &["explain", "3", "--last"],
        &["explain", "three"],
        &["incidents", "--since", "yesterday"],
        &["incidents", "--limit", "0"],
    ] {
        let out = why502(socket, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn watch_prints_open_incidents_and_stops_on_ctrl_c() {
    let agent = sample();
    let mut watch = Command::new(BIN)
        .args(["watch", "--json", "--socket"])
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["change"], "opened");
    assert_eq!(first["incident"]["id"], 18);

    // Let it poll at least once more before the interrupt.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(watch.id() as i32, libc::SIGINT) }, 0);
    let status = watch.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        lines.next().is_none(),
        "nothing changed, so nothing more is printed"
    );
}

/// A process's name, socket path and the sentences made of them reach the terminal
/// escaped through the real binary, in text and in `--json` (which reads back exact).
#[test]
fn process_text_is_printed_escaped() {
    const HOSTILE: &str = "\x1b]0;pwned\x07\u{9b}31m\n";
    let mut hostile = incident(19, 1, true, &format!("unix:/tmp/{HOSTILE}.sock"));
    hostile.proxy.comm = format!("nginx{HOSTILE}");
    hostile.causes[0].summary.push_str(HOSTILE);
    let agent = start(std::slice::from_ref(&hostile));
    let raw = |text: &str| -> Vec<char> {
        text.chars()
            .filter(|&c| c.is_control() && c != '\n')
            .collect()
    };
    for args in [&["incidents"][..], &["explain", "19"]] {
        let out = why502(&agent.socket, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let text = stdout(&out);
        // Without a terminal there are no colors: no escape sequence is the CLI's own.
        assert!(
            raw(&text).is_empty(),
            "{args:?}: raw {:?} in\n{text}",
            raw(&text)
        );
        assert!(
            text.contains(r"nginx\x1b]0;pwned\x07\u{9b}31m\n"),
            "{args:?}:\n{text}"
        );
    }
    let out = why502(&agent.socket, &["explain", "19", "--json"]);
    let text = stdout(&out);
    assert!(raw(&text).is_empty(), "raw {:?} in\n{text}", raw(&text));
    let read: Incident = serde_json::from_str(&text).unwrap();
    assert_eq!(read.proxy.comm, hostile.proxy.comm);
    assert_eq!(read.upstream, hostile.upstream);
    assert_eq!(read.causes[0].summary, hostile.causes[0].summary);
}
