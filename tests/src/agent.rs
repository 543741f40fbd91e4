//! The `why502` agent as a child process with `--print-events`; its JSON lines collected.
//! Its store and API socket live in a directory of the test's own, which outlives a
//! restart so that persistence can be checked.
//!
//! Faults of the harness fail the test rather than hide: a stdout line that is not JSON is
//! kept and makes [`Agent::events`] (and the agent's stop) panic with it, and the agent is
//! stopped within [`STOP_LIMIT`] (SIGTERM, then SIGKILL and a loud failure).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long the agent gets to detach its probes and exit after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);

pub struct Agent {
    child: Child,
    dir: Arc<tempfile::TempDir>,
    extra: Vec<(String, String)>,
    events: Arc<Mutex<Vec<Value>>>,
    /// Lines of stdout that were not JSON events: a broken `--print-events`.
    not_json: Arc<Mutex<Vec<String>>>,
    /// Set once the stdout reader reached the end of the pipe.
    stdout_done: Arc<AtomicBool>,
    stderr: Arc<Mutex<Vec<String>>>,
    stopped: bool,
}

impl Agent {
    /// Starts the agent and waits until its probes are attached.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts the agent with extra configuration: `(section, "key = value")` pairs, added
    /// to the sections the harness writes itself (`store`, `api`, `metrics`, `probes`) or
    /// to sections of their own. They are kept for [`Agent::restart`].
    pub fn start_with(extra: &[(&str, &str)]) -> Self {
        let extra = extra
            .iter()
            .map(|(section, line)| (section.to_string(), line.to_string()))
            .collect();
        Self::start_in(
            Arc::new(tempfile::tempdir().expect("temporary directory")),
            extra,
        )
    }

    /// Stops this agent (see [`Agent::stop`]) and starts a new one on the same store,
    /// socket and configuration.
    pub fn restart(self) -> Self {
        let dir = self.dir.clone();
        let extra = self.extra.clone();
        self.stop();
        Self::start_in(dir, extra)
    }

    /// Stops the agent: SIGTERM, at most [`STOP_LIMIT`] for it to exit, then SIGKILL and a
    /// panic. Panics too if it exited with an error or printed a line that is not JSON.
    pub fn stop(mut self) {
        let result = self.shut_down();
        self.stopped = true;
        if let Err(problem) = result {
            panic!("{problem}");
        }
    }

    /// Where this agent serves `GET /metrics`.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        metrics_addr(&self.dir)
    }

    /// The agent's process id (to signal it other than [`Agent::stop`] does).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("why502.sock")
    }

    /// The agent's SQLite store: the harness's, or the `[store] path` of the extra
    /// configuration.
    pub fn store_path(&self) -> PathBuf {
        let configured = self.extra.iter().find_map(|(section, line)| {
            let (key, value) = line.split_once('=')?;
            (section == "store" && key.trim() == "path")
                .then(|| PathBuf::from(value.trim().trim_matches('"')))
        });
        configured.unwrap_or_else(|| self.dir.path().join("why502.db"))
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

    /// Runs `why502 ARGS --json` and parses its output; panics unless it succeeded with
    /// JSON (a dead agent is a failure, not an empty answer).
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(&[args, &["--json"]].concat());
        assert!(
            out.status.success(),
            "why502 {args:?} --json: {}\n{}\nagent log: {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "why502 {args:?} --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `GET path` on the agent's API socket: the status and the body.
    pub fn api_get(&self, path: &str) -> (u16, String) {
        crate::http::unix_get(&self.socket(), path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.socket().display()))
    }

    /// `GET path` on the API socket; panics unless it answers 200 with JSON.
    pub fn api_json(&self, path: &str) -> Value {
        let (status, body) = self.api_get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    fn start_in(dir: Arc<tempfile::TempDir>, extra: Vec<(String, String)>) -> Self {
        let config = dir.path().join("why502.toml");
        std::fs::write(&config, config_text(&dir, &extra)).expect("write the agent's config");
        let mut child = Command::new(crate::sibling_binary("why502"))
            .args(["agent", "--print-events", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start why502");
        let events = Arc::new(Mutex::new(Vec::new()));
        let not_json = Arc::new(Mutex::new(Vec::new()));
        let stdout_done = Arc::new(AtomicBool::new(false));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let (sink, rejects, done) = (events.clone(), not_json.clone(), stdout_done.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // A panic here would end this thread only, and the test would go on: the
                // line is kept for the test's own thread to fail on.
                match serde_json::from_str::<Value>(&line) {
                    Ok(event) => sink.lock().unwrap().push(event),
                    Err(e) => rejects.lock().unwrap().push(format!("{e}: {line}")),
                }
            }
            done.store(true, Ordering::SeqCst);
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
            extra,
            events,
            not_json,
            stdout_done,
            stderr,
            stopped: false,
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
                agent.stopped = true;
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

    /// Panics with the stdout lines that were not JSON, if any.
    fn assert_stdout_is_json(&self) {
        let not_json = self.not_json.lock().unwrap().clone();
        assert!(
            not_json.is_empty(),
            "the agent printed lines that are not JSON events: {not_json:#?}"
        );
    }

    /// The events printed so far that satisfy `matches`; panics if a line printed was not
    /// a JSON event.
    pub fn events(&self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.assert_stdout_is_json();
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

    /// SIGTERM, bounded wait, SIGKILL past it; then what went wrong, if anything.
    fn shut_down(&mut self) -> Result<(), String> {
        if crate::signal_and_wait(&mut self.child, libc::SIGTERM, STOP_LIMIT) {
            let status = self.child.wait().expect("reap the agent");
            // Every line printed before the exit, read, before judging them.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.stdout_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let not_json = self.not_json.lock().unwrap().clone();
            if !not_json.is_empty() {
                return Err(format!(
                    "the agent printed lines that are not JSON events: {not_json:#?}"
                ));
            }
            return exited_cleanly(status).map_err(|s| format!("{s}; log: {:?}", self.log()));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "why502 did not exit within {STOP_LIMIT:?} of SIGTERM (killed); log: {:?}",
            self.log()
        ))
    }
}

/// Ok for the agent's normal end after SIGTERM: exit code 0.
fn exited_cleanly(status: ExitStatus) -> Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("why502 ended with {status} after SIGTERM"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let result = self.shut_down();
        // A second panic while unwinding would abort the whole test binary: the first
        // failure is the one to see.
        if let Err(problem) = result {
            if std::thread::panicking() {
                eprintln!("{problem}");
            } else {
                panic!("{problem}");
            }
        }
    }
}

/// The agent's configuration: the harness's own keys, then `extra`, by section.
fn config_text(dir: &tempfile::TempDir, extra: &[(String, String)]) -> String {
    let mut sections: Vec<(String, Vec<String>)> = vec![
        (
            "store".into(),
            vec![format!(
                "path = \"{}\"",
                dir.path().join("why502.db").display()
            )],
        ),
        (
            "api".into(),
            vec![format!(
                "socket = \"{}\"",
                dir.path().join("why502.sock").display()
            )],
        ),
        (
            "metrics".into(),
            vec![
                format!("listen = \"{}\"", metrics_addr(dir)),
                "sample_interval_ms = 500".into(),
            ],
        ),
        (
            "probes".into(),
            vec![format!(
                "btf_tracepoints = {}",
                !crate::classic_tracepoints_only()
            )],
        ),
    ];
    for (section, line) in extra {
        match sections.iter_mut().find(|(name, _)| name == section) {
            Some((_, lines)) => {
                // A key the harness sets too is the extra's (a store elsewhere, say).
                lines.retain(|own| config_key(own) != config_key(line));
                lines.push(line.clone());
            }
            None => sections.push((section.clone(), vec![line.clone()])),
        }
    }
    sections
        .iter()
        .map(|(name, lines)| format!("[{name}]\n{}\n", lines.join("\n")))
        .collect()
}

/// The key of a `key = value` line.
fn config_key(line: &str) -> &str {
    line.split('=').next().unwrap_or_default().trim()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_configuration_joins_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            &dir,
            &[
                ("metrics".into(), "max_proxies = 2".into()),
                ("incidents".into(), "quiet_seconds = 1".into()),
            ],
        );
        let metrics = text.split("[metrics]\n").nth(1).unwrap();
        let metrics = metrics.split("\n[").next().unwrap();
        assert!(metrics.contains("max_proxies = 2"), "{text}");
        assert!(metrics.contains("sample_interval_ms = 500"), "{text}");
        assert_eq!(text.matches("[metrics]").count(), 1, "{text}");
        assert!(text.contains("[incidents]\nquiet_seconds = 1\n"), "{text}");
    }

    #[test]
    fn an_extra_key_replaces_the_harness_s_own() {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(&dir, &[("store".into(), "path = \"/x/y.db\"".into())]);
        let store = text.split("[store]\n").nth(1).unwrap();
        let store = store.split("\n[").next().unwrap();
        assert_eq!(store.trim(), "path = \"/x/y.db\"", "{text}");
    }
}
