//! The `why502` agent as a child process with `--print-events`; its JSON lines collected.
//! Its store and API socket live in a directory of the test's own, which outlives a
//! restart so that persistence can be checked.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct Agent {
    child: Child,
    dir: Arc<tempfile::TempDir>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts the agent and waits until its probes are attached.
    pub fn start() -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().expect("temporary directory")))
    }

    /// Stops this agent and starts a new one on the same store and socket.
    pub fn restart(self) -> Self {
        let dir = self.dir.clone();
        drop(self);
        Self::start_in(dir)
    }

    /// Where this agent serves `GET /metrics`.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        metrics_addr(&self.dir)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("why502.sock")
    }

    /// Runs `why502 ARGS --socket <this agent's socket>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(crate::sibling_binary("why502"))
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .env("NO_COLOR", "1")
            .output()
            .expect("run the why502 CLI")
    }

    fn start_in(dir: Arc<tempfile::TempDir>) -> Self {
        let config = dir.path().join("why502.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"{}\"\n[api]\nsocket = \"{}\"\n[metrics]\nlisten = \"{}\"\nsample_interval_ms = 500\n[probes]\nbtf_tracepoints = {}\n",
                dir.path().join("why502.db").display(),
                dir.path().join("why502.sock").display(),
                metrics_addr(&dir),
                !crate::classic_tracepoints_only(),
            ),
        )
        .expect("write the agent's config");
        let mut child = Command::new(crate::sibling_binary("why502"))
            .args(["agent", "--print-events", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start why502");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                sink.lock().unwrap().push(event);
            }
        });
        let err = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        let mut agent = Self {
            child,
            dir,
            events,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = agent.log();
            if log.iter().any(|l| l.contains("why502 agent running")) {
                let attached = log.iter().find(|l| l.contains("probes attached"));
                crate::assert_tracepoint_mode(attached.map_or("", |l| l.as_str()));
                return agent;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("why502 exited ({status}): {:?}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "why502 did not start: {:?}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The events printed so far that satisfy `matches`.
    pub fn events(&self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches(e))
            .cloned()
            .collect()
    }

    /// Waits until `count(matching events)` reaches `n` (or `timeout` passes); returns them.
    pub fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.events(&matches);
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The metrics address of the agent using `dir`: chosen once, kept across restarts.
fn metrics_addr(dir: &tempfile::TempDir) -> std::net::SocketAddr {
    let file = dir.path().join("metrics-port");
    let port = match std::fs::read_to_string(&file) {
        Ok(port) => port.trim().parse().expect("a port number"),
        Err(_) => {
            let port = crate::free_port();
            std::fs::write(&file, port.to_string()).expect("remember the metrics port");
            port
        }
    };
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}
