//! The failure storm: as many refused connects per second as the machine allows, the
//! agent's throughput, losses and CPU meanwhile, and how soon a fresh failure burst
//! becomes a queryable incident.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::agent::{self, Agent, Status};
use super::process::{self, Guard};
use super::Ctx;

/// The generator's comm, and so its `proxy` label in the agent's metrics.
pub const GENERATOR_COMM: &str = "why502-bench";
/// Closed ports the storm cycles through (above the ephemeral range, checked closed).
pub const STORM_PORT: u16 = 61000;
pub const STORM_PORTS: u16 = 64;
/// Fresh closed ports, one per latency probe.
pub const PROBE_PORT: u16 = 62000;
pub const PROBE_PORTS: u16 = 500;
/// Failures per probe burst, and the interval between bursts.
const BURST: usize = 10;
const PROBE_INTERVAL: Duration = Duration::from_millis(300);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connects/s the storm should reach, and below which no event may be lost.
pub const TARGET_RATE: f64 = 100_000.0;

/// What `why502-bench refuse` printed.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub refused: u64,
    pub elapsed_s: f64,
    pub raw: Value,
}

impl Generated {
    pub fn rate(&self) -> f64 {
        self.refused as f64 / self.elapsed_s.max(1e-9)
    }
}

pub struct StormResult {
    pub generated: Generated,
    pub events_per_s: f64,
    pub records: u64,
    pub drain_s: f64,
    pub dropped_all: u64,
    pub dropped_connect_failure: u64,
    pub delivered_connect_failure: u64,
    pub cpu_s: f64,
    pub wall_s: f64,
    pub latencies_ms: Vec<f64>,
    pub probes_missed: usize,
    pub rss_peak: u64,
    /// Events skipped by bus subscribers that fell behind (correlation, metrics).
    pub lagged: BTreeMap<String, u64>,
    /// The same storm paced at [`TARGET_RATE`], run when the free-running one lost events.
    pub paced: Option<(Generated, u64)>,
}

impl StormResult {
    /// Agent CPU at 10,000 events/s, in percent of one core.
    pub fn cpu_pct_per_10k(&self) -> f64 {
        self.cpu_s / self.records.max(1) as f64 * 10_000.0 * 100.0
    }

    /// generated − (delivered + dropped) for the generator's connect failures.
    pub fn unaccounted(&self) -> i64 {
        self.generated.refused as i64
            - (self.delivered_connect_failure + self.dropped_connect_failure) as i64
    }
}

/// Runs `why502-bench refuse` with `args`, bounded in time.
pub fn spawn_refuse(ctx: &Ctx, args: &[String]) -> Result<Guard> {
    let mut cmd = Command::new(&ctx.generator);
    cmd.arg("refuse")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Guard::spawn("why502-bench refuse", &mut cmd, libc::SIGKILL)
}

/// Waits for a generator and parses its JSON line.
pub fn finish(guard: Guard, timeout: Duration) -> Result<Generated> {
    let out = process::wait_stdout(guard, timeout)?;
    let raw: Value = serde_json::from_str(out.trim()).context("generator output")?;
    Ok(Generated {
        refused: raw["refused"].as_u64().unwrap_or(0),
        elapsed_s: raw["elapsed_s"].as_f64().unwrap_or(0.0),
        raw,
    })
}

pub fn storm_args(seconds: f64, rate: f64) -> Vec<String> {
    [
        "--addr",
        "127.0.0.1",
        "--port",
        &STORM_PORT.to_string(),
        "--ports",
        &STORM_PORTS.to_string(),
        "--duration",
        &seconds.to_string(),
        "--rate",
        &(rate as u64).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The connect failures of the generator as the agent's metrics count them, and the
/// ring-buffer drops of their kind.
fn connect_failure_counts(agent: &Agent) -> Result<(u64, u64)> {
    let samples = agent.metrics()?;
    let delivered = agent::sum(&samples, "why502_upstream_connect_errors_total", |s| {
        s.label("proxy") == Some(GENERATOR_COMM)
    });
    let dropped = agent::sum(&samples, "why502_ringbuf_dropped_events_total", |s| {
        s.label("kind") == Some("tcp_connect_failure")
    });
    Ok((delivered as u64, dropped as u64))
}

/// The same storm with no agent running: what the machine allows by itself.
pub fn baseline(ctx: &Ctx) -> Result<Generated> {
    println!("==> failure storm without the agent (3 s): the machine's own limit");
    finish(
        spawn_refuse(ctx, &storm_args(3.0, 0.0))?,
        Duration::from_secs(40),
    )
}

/// Polls the status until the record count stops moving (the agent caught up).
fn drained(agent: &Agent, limit: Duration) -> Result<Status> {
    let start = Instant::now();
    let mut last = agent.status()?;
    let mut still_since = Instant::now();
    loop {
        process::sleep(Duration::from_millis(100))?;
        let now = agent.status()?;
        if now.records != last.records {
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_millis(500) {
            return Ok(now);
        }
        if start.elapsed() > limit {
            return Ok(now);
        }
        last = now;
    }
}

pub fn run(ctx: &Ctx, agent: &mut Agent) -> Result<StormResult> {
    let seconds = ctx.plan.storm_seconds;
    println!("==> failure storm: {seconds} s of refused connects, probing incident latency");
    let (delivered0, dropped0) = connect_failure_counts(agent)?;
    let lag0 = agent.lagged();
    let s0 = agent.status()?;
    let cpu0 = process::cpu_time(agent.pid)?;
    let t0 = Instant::now();
    let generator = spawn_refuse(ctx, &storm_args(seconds, 0.0))?;

    let stop = AtomicBool::new(false);
    let pid = agent.pid;
    let (probes, rss_peak) = std::thread::scope(|scope| -> Result<_> {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(process::rss(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        let probes = probe_loop(agent, seconds);
        stop.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(0);
        Ok((probes?, peak))
    })?;
    let generated = finish(generator, Duration::from_secs_f64(seconds + 30.0))?;
    let t1 = Instant::now();
    let s1 = agent.status()?;
    let s2 = drained(agent, Duration::from_secs(20))?;
    let t2 = Instant::now();
    let cpu2 = process::cpu_time(agent.pid)?;
    let (delivered2, dropped2) = connect_failure_counts(agent)?;
    agent.check_running()?;

    let (latencies_ms, probes_missed) = probes;
    let mut result = StormResult {
        events_per_s: (s1.records - s0.records) as f64 / (t1 - t0).as_secs_f64(),
        records: s2.records - s0.records,
        drain_s: (t2 - t1).as_secs_f64(),
        dropped_all: s2.dropped_total() - s0.dropped_total(),
        dropped_connect_failure: dropped2 - dropped0,
        delivered_connect_failure: delivered2 - delivered0,
        cpu_s: (cpu2 - cpu0).as_secs_f64(),
        wall_s: (t2 - t0).as_secs_f64(),
        latencies_ms,
        probes_missed,
        rss_peak: rss_peak.max(process::status_kib(pid, "VmHWM").unwrap_or(0)),
        lagged: agent::lag_delta(&lag0, &agent.lagged()),
        generated,
        paced: None,
    };
    println!(
        "    {:.0} refused connects/s, agent {:.0} events/s, {} dropped, {} unaccounted",
        result.generated.rate(),
        result.events_per_s,
        result.dropped_all,
        result.unaccounted()
    );
    if result.dropped_all > 0 && result.generated.rate() > TARGET_RATE {
        result.paced = Some(paced(ctx, agent)?);
    }
    Ok(result)
}

/// The storm again at exactly [`TARGET_RATE`]: how many events are lost there.
fn paced(ctx: &Ctx, agent: &Agent) -> Result<(Generated, u64)> {
    let seconds = (ctx.plan.storm_seconds / 2.0).max(3.0);
    println!("==> failure storm paced at {TARGET_RATE} connects/s for {seconds} s");
    let s0 = agent.status()?;
    let generated = finish(
        spawn_refuse(ctx, &storm_args(seconds, TARGET_RATE))?,
        Duration::from_secs_f64(seconds + 30.0),
    )?;
    let s1 = drained(agent, Duration::from_secs(20))?;
    Ok((generated, s1.dropped_total() - s0.dropped_total()))
}

/// Every [`PROBE_INTERVAL`] while the storm lasts: a burst of refused connects to a fresh
/// port, then the time until `GET /v1/incidents?upstream=` lists it.
fn probe_loop(agent: &Agent, seconds: f64) -> Result<(Vec<f64>, usize)> {
    let mut latencies = Vec::new();
    let mut missed = 0;
    // The agent opens incidents for proxies only: a known proxy, or a process that owns a
    // listener (an upstream's failures matter to whoever serves clients). Listening makes
    // this process one, as a proxy of a kind the agent does not know by name.
    let _listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    // Let the storm reach full speed first.
    process::sleep(Duration::from_millis(500))?;
    let end = Instant::now() + Duration::from_secs_f64(seconds - 0.5);
    let mut next = Instant::now();
    for i in 0..PROBE_PORTS {
        if Instant::now() >= end {
            break;
        }
        process::sleep(next.saturating_duration_since(Instant::now()))?;
        next = Instant::now() + PROBE_INTERVAL;
        let port = PROBE_PORT + i;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        for _ in 0..BURST {
            // Refused at once on loopback; a success would mean the port is not closed.
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                anyhow::bail!("{addr} accepted a connection: the probe ports must be closed");
            }
        }
        let query = format!("upstream=127.0.0.1:{port}");
        loop {
            if agent.incidents(&query)? > 0 {
                latencies.push(start.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if start.elapsed() > PROBE_TIMEOUT {
                missed += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok((latencies, missed))
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl StormResult {
    pub fn latency(&self) -> (f64, f64, f64) {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        (
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            sorted.last().copied().unwrap_or(f64::NAN),
        )
    }

    pub fn to_json(&self) -> Value {
        let (p50, p99, max) = self.latency();
        json!({
            "generator": self.generated.raw,
            "connects_per_s": self.generated.rate(),
            "agent_events_per_s": self.events_per_s,
            "agent_records": self.records,
            "drain_s": self.drain_s,
            "dropped_all_kinds": self.dropped_all,
            "dropped_tcp_connect_failure": self.dropped_connect_failure,
            "delivered_tcp_connect_failure": self.delivered_connect_failure,
            "unaccounted": self.unaccounted(),
            "agent_cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "agent_cpu_pct_of_core": self.cpu_s / self.wall_s * 100.0,
            "agent_cpu_pct_per_10k_events_per_s": self.cpu_pct_per_10k(),
            "incident_latency_ms": {
                "samples": self.latencies_ms,
                "missed": self.probes_missed,
                "p50": p50, "p99": p99, "max": max,
            },
            "rss_peak_bytes": self.rss_peak,
            "events_skipped_by_bus_subscribers": self.lagged,
            "paced_at_target": self.paced.as_ref().map(|(g, dropped)| json!({
                "generator": g.raw,
                "connects_per_s": g.rate(),
                "dropped": dropped,
            })),
        })
    }
}
