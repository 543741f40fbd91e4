//! The agent's client surfaces against a running agent: `why502 status`, `why502 watch`
//! and `GET /v1/events` show what the test provoked (a backend behind nginx killed by
//! SIGSEGV), and a secret on the backend's command line is redacted in everything the
//! agent shows of it: `--print-events`, `/v1/events`, the incidents. And the API socket
//! itself: the configured group's, removed at a clean stop unless another took its path,
//! an unknown group a one-line error before anything starts.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use why502_e2e::{agent::Agent, can_load_ebpf, free_port, http, nginx::Nginx, serial};

/// The secret on the backend's command line, and where it is: a `token=` in a query
/// string (the ready-file's name), which the agent's default redaction covers.
const SECRET: &str = "hunter2";
const REQUESTS: usize = 5;

/// A child process killed and reaped on drop (the test's own backend and `why502 watch`).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `why502 watch --json` running, its lines collected by a thread.
struct Watch {
    _child: Reaped,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn start(agent: &Agent) -> Self {
        let mut child = Command::new(why502_e2e::sibling_binary("why502"))
            .args(["watch", "--json", "--socket"])
            .arg(agent.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start why502 watch");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            _child: Reaped(child),
            lines,
        }
    }

    /// Waits (bounded) for a line that `matches`; panics with every line seen.
    fn wait_for_line(&self, limit: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.lines.lock().unwrap().clone();
            let parsed: Vec<Value> = lines
                .iter()
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("watch printed a non-JSON line ({e}): {l}"))
                })
                .collect();
            if let Some(found) = parsed.into_iter().find(&matches) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "why502 watch printed nothing matching within {limit:?}: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn status_watch_events_and_redaction_on_a_running_agent() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let scratch = tempfile::tempdir().expect("temporary directory");

    // Before anything happens: watch must be running to see the incident open.
    let watch = Watch::start(&agent);
    let status = agent.cli_json(&["status"]);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status:#}");
    assert_eq!(
        status["probes"]["sched_process_exit"]["status"], "attached",
        "{status:#}"
    );

    let port = free_port();
    let upstream = format!("127.0.0.1:{port}");
    let ready = scratch.path().join(format!("ready?token={SECRET}"));
    let mut backend = Reaped(
        Command::new(why502_e2e::sibling_binary("why502-test-backend"))
            .arg("--ready-file")
            .arg(&ready)
            .arg(&upstream)
            .spawn()
            .expect("start the test backend"),
    );
    let backend_pid = backend.0.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the backend never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let nginx = Nginx::start(free_port(), &upstream);
    assert_eq!(http::get_status(nginx.port).unwrap(), 200);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(backend_pid as i32, libc::SIGSEGV) };
    let died = backend.0.wait().expect("reap the backend");
    assert!(!died.success());
    for _ in 0..REQUESTS {
        assert_eq!(http::get_status(nginx.port).unwrap(), 502);
    }

    // --print-events: the backend's death, its command line redacted.
    let is_exit = |e: &Value| e["kind"] == "process_exit" && e["process"]["pid"] == backend_pid;
    let exits = agent.wait_for(1, Duration::from_secs(5), is_exit);
    assert_eq!(exits.len(), 1, "{:?}", agent.log());
    assert_eq!(exits[0]["signal"], "SIGSEGV");
    let cmdline = exits[0]["process"]["cmdline"].as_str().unwrap_or_default();
    assert!(cmdline.contains("ready?token=***"), "{cmdline}");
    let printed: Vec<String> = agent
        .events(|_| true)
        .iter()
        .map(Value::to_string)
        .collect();
    let leaked: Vec<_> = printed.iter().filter(|e| e.contains(SECRET)).collect();
    assert!(
        leaked.is_empty(),
        "--print-events shows the secret: {leaked:#?}"
    );

    // The incident, as watch saw it open.
    let opened = watch.wait_for_line(Duration::from_secs(5), |line| {
        line["change"] == "opened" && line["incident"]["upstream"] == upstream
    });
    assert_eq!(opened["incident"]["proxy"]["comm"], "nginx", "{opened:#}");
    let id = opened["incident"]["id"].as_u64().expect("an incident id");

    // GET /v1/events: the same death and nginx's refused connects, exactly.
    let (code, body) = agent.api_get("/v1/events?since=5m&limit=10000");
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(SECRET), "/v1/events shows the secret");
    let events: Value = serde_json::from_str(&body).expect("JSON");
    let events = events["events"].as_array().expect("events");
    let api_exit: Vec<_> = events.iter().filter(|e| is_exit(e)).collect();
    assert_eq!(api_exit.len(), 1, "backend exits in /v1/events");
    assert_eq!(api_exit[0]["signal"], "SIGSEGV");
    assert!(
        api_exit[0]["process"]["cmdline"]
            .as_str()
            .unwrap_or_default()
            .contains("ready?token=***"),
        "{:#}",
        api_exit[0]
    );
    let refused = events
        .iter()
        .filter(|e| {
            e["kind"] == "tcp_connect_failure"
                && e["dst"] == upstream
                && e["process"]["comm"] == "nginx"
        })
        .count();
    assert_eq!(refused, REQUESTS, "nginx's refused connects in /v1/events");

    // status now counts what happened: events read, the open incident.
    let status = agent.cli_json(&["status"]);
    assert!(
        status["events"]["records"].as_u64() >= Some(1 + REQUESTS as u64),
        "{status:#}"
    );
    // The agent sees the whole host: other incidents may be open too, ours is.
    assert!(status["incidents_open"].as_u64() >= Some(1), "{status:#}");
    let human = agent.cli(&["status"]);
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("sched_process_exit"), "{text}");

    // The incidents, every way they are shown: no secret anywhere.
    let incident = agent.api_json(&format!("/v1/incidents/{id}"));
    assert_eq!(incident["upstream"], upstream);
    let shown = [
        incident.to_string(),
        agent.api_get("/v1/incidents?since=5m").1,
        String::from_utf8_lossy(&agent.cli(&["explain", &id.to_string()]).stdout).into_owned(),
        String::from_utf8_lossy(&agent.cli(&["incidents"]).stdout).into_owned(),
    ];
    for text in &shown {
        assert!(
            !text.contains(SECRET),
            "an incident shows the secret: {text}"
        );
    }
}

/// A group of the test's own (`groupadd`), deleted on drop however the test ends.
struct TestGroup {
    name: String,
}

impl TestGroup {
    fn new() -> Self {
        let name = format!("w502e{}", std::process::id());
        let out = Command::new("groupadd")
            .args(["--system", &name])
            .output()
            .expect("run groupadd");
        assert!(
            out.status.success(),
            "groupadd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    fn gid(&self) -> u32 {
        let out = Command::new("getent")
            .args(["group", &self.name])
            .output()
            .expect("run getent");
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        line.split(':')
            .nth(2)
            .and_then(|gid| gid.trim().parse().ok())
            .unwrap_or_else(|| panic!("getent group {}: {line:?}", self.name))
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

fn mode_and_gid(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.mode() & 0o7777, meta.gid())
}

/// Waits (bounded) until process `pid` has exited: a zombie its parent (this test) has
/// not reaped yet, or gone.
fn wait_until_exited(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, after_comm) = stat.rsplit_once(')')?;
                after_comm.split_whitespace().next().map(String::from)
            });
        if matches!(state.as_deref(), None | Some("Z")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_api_socket_has_the_configured_group_and_goes_with_a_clean_stop() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let group = TestGroup::new();
    // The socket in a directory of the test's own: it must outlive the agent's.
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("api.sock");
    let agent = Agent::start_with(&[
        ("api", &format!("socket = \"{}\"", socket.display())),
        ("api", &format!("socket_group = \"{}\"", group.name)),
    ]);
    assert_eq!(mode_and_gid(&socket), (0o660, group.gid()));
    let (code, _) = why502_e2e::http::unix_get(&socket, "/v1/status").expect("GET /v1/status");
    assert_eq!(code, 200);
    // SIGTERM, as systemd stops it; exit 0 (stop() holds it to that).
    agent.stop();
    assert!(!socket.exists(), "the socket outlived the agent");
}

#[test]
fn a_socket_that_is_no_longer_the_agent_s_is_left_at_its_stop() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("api.sock");
    let agent = Agent::start_with(&[("api", &format!("socket = \"{}\"", socket.display()))]);
    assert_eq!(
        mode_and_gid(&socket).0,
        0o600,
        "root's only without a group"
    );
    // Its file moved away and another listener in its place, as a second agent would be
    // after someone moved the first one's socket.
    let moved = dir.path().join("moved.sock");
    std::fs::rename(&socket, &moved).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // SIGINT (Ctrl-C), the other clean stop.
    // SAFETY: signalling the agent, our child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGINT) };
    wait_until_exited(agent.pid(), why502_e2e::agent::STOP_LIMIT);
    let log = agent.log();
    agent.stop();
    assert!(socket.exists(), "the other listener's socket was removed");
    assert!(
        moved.exists(),
        "only the path is checked, nothing else removed"
    );
    assert!(
        log.iter().any(|l| l.contains("interrupted")),
        "not stopped by SIGINT: {log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("is no longer this agent's socket: left in place")),
        "{log:?}"
    );
    drop(other);
}

#[test]
fn an_unknown_socket_group_stops_the_start_with_one_line() {
    // No kernel, no root needed: the configuration is checked before anything starts.
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("why502.toml");
    let socket = dir.path().join("api.sock");
    std::fs::write(
        &config,
        format!(
            "[api]\nsocket = \"{}\"\nsocket_group = \"why502-no-such-group\"\n\
             [store]\npath = \"{}\"\n",
            socket.display(),
            dir.path().join("why502.db").display()
        ),
    )
    .unwrap();
    let out = Command::new(why502_e2e::sibling_binary("why502"))
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .expect("run why502 agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, nothing started: {stderr:?}"
    );
    assert!(
        stderr.starts_with("why502: config file ")
            && stderr.contains("api.socket_group")
            && stderr.contains("\"why502-no-such-group\""),
        "{stderr}"
    );
    assert!(!socket.exists() && !dir.path().join("why502.db").exists());
}
