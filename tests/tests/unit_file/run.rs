//! A real agent started as the unit would start it, as far as that goes without systemd
//! (see `sandbox`), optionally under strace: its own configuration, store, socket and
//! metrics port in a temporary directory, stopped on drop (SIGTERM, then SIGKILL) so that
//! a failing test leaves no agent behind.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use why502_e2e::{free_port, sibling_binary};

use crate::sandbox::Sandbox;

/// Start-up under strace is several times slower than without (every procfs read of the
/// start-up snapshot is traced).
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(15);

pub struct RunningAgent {
    /// The agent itself, or strace running it.
    child: Child,
    /// The agent's pid when `child` is strace (the first traced process).
    traced_pid: Option<i32>,
    pub dir: tempfile::TempDir,
    pub metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stopped: bool,
}

impl RunningAgent {
    /// Starts the agent under `sandbox`, straced into `<dir>/trace` when `strace` is set,
    /// with `api` added to its `[api]` section, and waits until it says it is running.
    pub fn start(sandbox: Sandbox, strace: bool, api: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.path().join("why502.toml");
        std::fs::write(&config, config_text(dir.path(), metrics, api)).expect("write the config");
        let agent = sibling_binary("why502");
        let mut command = if strace {
            let mut command = Command::new("strace");
            // -f: every thread; -qq: no attach/exit chatter in the trace.
            command
                .args(["-f", "-qq", "-o"])
                .arg(dir.path().join("trace"))
                .arg("--")
                .arg(&agent);
            command
        } else {
            Command::new(&agent)
        };
        command
            .args(["agent", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        sandbox.apply(&mut command);
        let mut child = command.spawn().expect("start the agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (err, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut agent = Self {
            child,
            traced_pid: None,
            dir,
            metrics,
            log,
            stopped: false,
        };
        let deadline = Instant::now() + START_LIMIT;
        while !agent
            .log()
            .iter()
            .any(|l| l.contains("why502 agent running"))
        {
            if let Ok(Some(status)) = agent.child.try_wait() {
                agent.stopped = true;
                panic!(
                    "the agent exited ({status}) before running: {:#?}",
                    agent.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start within {START_LIMIT:?}: {:#?}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if strace {
            agent.traced_pid = Some(first_traced_pid(&agent.trace_path()));
        }
        agent
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("why502.sock")
    }

    pub fn trace_path(&self) -> PathBuf {
        self.dir.path().join("trace")
    }

    /// `why502 ARGS --socket <this agent's socket>`: its exit status and stdout.
    pub fn cli(&self, args: &[&str]) -> (ExitStatus, String) {
        let out = Command::new(sibling_binary("why502"))
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .env("NO_COLOR", "1")
            .output()
            .expect("run the why502 CLI");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// A connect to a loopback port nobody listens on, and the agent's event for it (or
    /// `None` after `limit`): the probes fire and their events come through.
    pub fn refused_connect_seen(&self, limit: Duration) -> Option<Value> {
        let port = free_port();
        let refused = TcpStream::connect(("127.0.0.1", port));
        assert!(refused.is_err(), "nothing should listen on {port}");
        let dst = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok((200, body)) =
                why502_e2e::http::unix_get(&self.socket(), "/v1/events?since=5m")
            {
                let events: Value = serde_json::from_str(&body).expect("events are JSON");
                let found = events["events"].as_array().into_iter().flatten().find(|e| {
                    e["kind"] == "tcp_connect_failure" && e["dst"].as_str() == Some(dst.as_str())
                });
                if let Some(event) = found {
                    return Some(event.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGTERM to the agent: its exit status (strace exits with its tracee's) and the
    /// whole trace, shutdown included (empty without strace).
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.stopped = true;
        let status = self.terminate().unwrap_or_else(|| {
            panic!(
                "the agent did not exit within {STOP_LIMIT:?} of SIGTERM (killed): {:#?}",
                self.log()
            )
        });
        let trace = std::fs::read_to_string(self.trace_path()).unwrap_or_default();
        (status, trace)
    }

    /// SIGTERM (to the traced agent, not to strace, which would detach and leave it
    /// running), a bounded wait, SIGKILL to both past it.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let target = self.traced_pid.unwrap_or(self.child.id() as i32);
        if self.is_ours(target) {
            // SAFETY: a process this test started, checked just above.
            unsafe { libc::kill(target, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = self.traced_pid.filter(|&pid| self.is_ours(pid)) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Whether `pid` is still the child this test started, or that child's own child (the
    /// agent under strace): never signal a recycled pid.
    fn is_ours(&self, pid: i32) -> bool {
        let own = self.child.id() as i32;
        pid == own || parent_of(pid) == Some(own)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if !self.stopped && self.terminate().is_none() {
            eprintln!("the agent had to be killed: {:#?}", self.log());
        }
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …: comm may hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pid on the trace's first line: the process strace started.
fn first_traced_pid(trace: &Path) -> i32 {
    let text = std::fs::read_to_string(trace).expect("read the trace");
    text.split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid at the start of {}", trace.display()))
}

/// Store, socket and metrics of the test's own; the metrics sampled often so that a short
/// run makes its sampling calls (sock_diag, procfs, cgroups) too.
fn config_text(dir: &Path, metrics: SocketAddr, api: &str) -> String {
    format!(
        "[store]\npath = \"{}\"\n\n[api]\nsocket = \"{}\"\n{api}\n\n[metrics]\nlisten = \"{metrics}\"\nsample_interval_ms = 200\n\n[probes]\nbtf_tracepoints = {}\n",
        dir.join("why502.db").display(),
        dir.join("why502.sock").display(),
        !why502_e2e::classic_tracepoints_only(),
    )
}
