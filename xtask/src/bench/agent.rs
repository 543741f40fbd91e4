//! The agent under test: `why502 agent --config <temp toml>` with its own store, API socket
//! and metrics port, and readers for its status (unix socket) and metrics (HTTP).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::http::{self, Sample};
use super::process::{self, Guard};

/// The log lines that mark the agent's start-up milestones.
const ATTACHED: &str = "probes attached";
const RUNNING: &str = "why502 agent running";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where one agent lives: its config, store, socket and metrics port.
#[derive(Debug, Clone)]
pub struct Setup {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub log_dir: PathBuf,
    store: PathBuf,
}

impl Setup {
    /// Writes the configuration into `dir`; logs go to `log_dir`.
    pub fn new(binary: &Path, dir: &Path, metrics_port: u16, log_dir: &Path) -> Result<Self> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store)?;
        std::fs::create_dir_all(log_dir)?;
        let setup = Self {
            binary: binary.to_path_buf(),
            config: dir.join("why502.toml"),
            socket: dir.join("run").join("why502.sock"),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            log_dir: log_dir.to_path_buf(),
            store: store.join("why502.db"),
        };
        setup.write_config(&[])?;
        Ok(setup)
    }

    /// The same agent (store, socket, port) with `probes` disabled, its config written next
    /// to this one's as `why502-{label}.toml`. Only one of them may run at a time.
    pub fn with_disabled(&self, label: &str, probes: &[&str]) -> Result<Self> {
        let mut setup = self.clone();
        setup.config = self.config.with_file_name(format!("why502-{label}.toml"));
        setup.write_config(probes)?;
        Ok(setup)
    }

    fn write_config(&self, disable: &[&str]) -> Result<()> {
        let disable: Vec<String> = disable.iter().map(|p| format!("{p:?}")).collect();
        std::fs::write(
            &self.config,
            format!(
                "# written by cargo xtask bench\n\
                 [agent]\nlog_level = \"info\"\n\n\
                 [probes]\ndisable = [{}]\n\n\
                 [store]\npath = \"{}\"\n\n\
                 [api]\nsocket = \"{}\"\n\n\
                 [metrics]\nlisten = \"{}\"\nsample_interval_ms = 5000\n",
                disable.join(", "),
                self.store.display(),
                self.socket.display(),
                self.metrics,
            ),
        )
        .with_context(|| format!("cannot write {}", self.config.display()))
    }
}

/// A running agent; stopped (SIGINT, then SIGKILL) when dropped.
pub struct Agent {
    guard: Guard,
    pub pid: u32,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    /// Spawn → "N of N probes attached".
    pub attached_after: Duration,
    /// Spawn → "why502 agent running".
    pub running_after: Duration,
    /// The "probes attached" line, e.g. "19 of 19 probes attached: …".
    pub attached_line: String,
    lagged: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Agent {
    /// Starts the agent and waits until it logs that it is running; `label` names its log.
    pub fn start(setup: &Setup, label: &str) -> Result<Self> {
        let log_path = setup.log_dir.join(format!("agent-{label}.log"));
        let mut log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(&setup.binary);
        cmd.arg("agent")
            .arg("--config")
            .arg(&setup.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut guard = Guard::spawn("why502 agent", &mut cmd, libc::SIGINT)?;
        let pid = guard.pid();
        let stderr = guard.child_mut().stderr.take().context("agent stderr")?;
        let (tx, rx) = mpsc::channel::<(Instant, String)>();
        let lagged = Arc::new(Mutex::new(BTreeMap::new()));
        let counts = lagged.clone();
        // Copies the log to a file for the whole life of the agent, reporting milestones
        // and counting the events that subscribers of the event bus skipped.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some((who, n)) = lag(&line) {
                    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                    *counts.entry(who).or_insert(0) += n;
                }
                if line.contains(ATTACHED) || line.contains(RUNNING) {
                    let _ = tx.send((Instant::now(), line));
                }
            }
        });
        let (mut attached, mut running) = (None, None);
        while running.is_none() {
            process::check_interrupted()?;
            if spawned.elapsed() > START_TIMEOUT {
                bail!(
                    "the agent did not start within {START_TIMEOUT:?}; see {}",
                    log_path.display()
                );
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((at, line)) if line.contains(ATTACHED) => attached = Some((at, line)),
                Ok((at, _)) => running = Some(at),
                Err(mpsc::RecvTimeoutError::Timeout) => guard
                    .check_running()
                    .with_context(|| format!("see {}", log_path.display()))?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    guard.check_running()?;
                    bail!("the agent closed its stderr; see {}", log_path.display());
                }
            }
        }
        let running = running.expect("loop ends when running");
        let (attached_at, attached_line) = attached.unwrap_or((running, String::new()));
        let attached_line = attached_line
            .split_once("] ")
            .map_or(attached_line.as_str(), |(_, l)| l)
            .chars()
            .take(40)
            .collect::<String>();
        Ok(Self {
            guard,
            pid,
            socket: setup.socket.clone(),
            metrics: setup.metrics,
            attached_after: attached_at - spawned,
            running_after: running - spawned,
            attached_line,
            lagged,
        })
    }

    /// Events skipped so far by each bus subscriber that fell behind (from the agent's
    /// "… fell behind: N events …" warnings), e.g. `correlation`, `metrics`.
    pub fn lagged(&self) -> BTreeMap<String, u64> {
        self.lagged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the agent (SIGINT: it detaches its probes) and returns how long that took.
    pub fn stop(self) -> Result<Duration> {
        self.guard.stop()
    }

    pub fn check_running(&mut self) -> Result<()> {
        self.guard.check_running()
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Status> {
        let (code, body) = http::get_unix(&self.socket, "/v1/status")?;
        if code != 200 {
            bail!("GET /v1/status answered {code}: {body}");
        }
        Status::parse(&body)
    }

    /// `GET /v1/incidents?…`: the number of incidents listed.
    pub fn incidents(&self, query: &str) -> Result<usize> {
        let (code, body) = http::get_unix(&self.socket, &format!("/v1/incidents?{query}"))?;
        if code != 200 {
            bail!("GET /v1/incidents answered {code}: {body}");
        }
        let value: Value = serde_json::from_str(&body).context("incidents JSON")?;
        Ok(value["incidents"].as_array().map_or(0, Vec::len))
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> Result<Vec<Sample>> {
        let (code, body) = http::get_tcp(self.metrics, "/metrics")?;
        if code != 200 {
            bail!("GET /metrics answered {code}");
        }
        Ok(http::parse_metrics(&body))
    }
}

/// `… correlation fell behind: 60 events not correlated` → ("correlation", 60).
fn lag(line: &str) -> Option<(String, u64)> {
    let (before, after) = line.split_once(" fell behind: ")?;
    let who = before.rsplit(' ').next()?.to_string();
    let n = after.split_whitespace().next()?.parse().ok()?;
    Some((who, n))
}

/// Growth of each counter from `before` to `after`.
pub fn lag_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The parts of `GET /v1/status` the benchmark reads.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// `events.records`: records read from the ring buffer.
    pub records: u64,
    /// `kernel.dropped`, by event kind.
    pub dropped: BTreeMap<String, u64>,
    /// Probes by status (`attached`, `failed`, …).
    pub probes: BTreeMap<String, String>,
}

impl Status {
    fn parse(body: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(body).context("status JSON")?;
        let records = v["events"]["records"]
            .as_u64()
            .context("no events.records in the status")?;
        let dropped = v["kernel"]["dropped"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let probes = v["probes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v["status"].as_str().unwrap_or("?").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            records,
            dropped,
            probes,
        })
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// Sums the samples named `name` whose labels pass `keep`.
pub fn sum(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && keep(s))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_lines() {
        assert_eq!(
            lag("[2026-11-21T19:46:43.693Z WARN  why502::correlate::task] correlation fell behind: 60 events not correlated"),
            Some(("correlation".into(), 60))
        );
        assert_eq!(
            lag("[t WARN  why502::agent] metrics fell behind: 7 events not counted"),
            Some(("metrics".into(), 7))
        );
        assert_eq!(lag("[t INFO why502] why502 agent running"), None);
    }
}
