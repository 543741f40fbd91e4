//! The agent's client surfaces against a running agent: `why502 status`, `why502 watch`
//! and `GET /v1/events` show what the test provoked (a backend behind nginx killed by
//! SIGSEGV), and a secret on the backend's command line is redacted in everything the
//! agent shows of it: `--print-events`, `/v1/events`, the incidents.

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
