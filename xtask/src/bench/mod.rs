//! `cargo xtask bench`: measures what the agent costs and how it holds up, and reports it.
//!
//! Sections, each side by side in one run: start-up; the cost of a syscall with the agent's
//! syscall tracepoints attached and without; overhead on proxied traffic (nginx, wrk) with
//! the agent off, on, and a bpftrace reference; a storm of refused connects; memory through
//! a churn of endpoints and processes. Results go to
//! `target/bench/results.json` (and a timestamped copy). Missed targets are reported, not
//! failed: this is a measurement, not a test.

mod agent;
mod bpfstats;
mod bpftrace;
mod http;
mod memory;
mod nginx;
mod overhead;
mod process;
mod profile;
mod report;
mod storm;
mod syscalls;
mod wrk;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bootstrap::{self, Level};
use crate::cmd;
use agent::{Agent, Setup};
use memory::mib;
use nginx::{Nginx, Variant};
use overhead::Mode;
use report::Row;

/// The parts of the benchmark, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Startup,
    Syscalls,
    Overhead,
    Profile,
    Storm,
}

pub struct Options {
    pub quick: bool,
    pub only: Vec<Section>,
}

/// How long and how much: full (~10 minutes after the build) or quick (~3 minutes).
pub struct Plan {
    pub name: &'static str,
    /// Interleaved repetitions of each overhead mode (off, why502, bpftrace) per variant.
    pub reps: usize,
    pub wrk_seconds: u32,
    /// Interleaved repetitions of each syscall-cost mode, and each getppid loop's length.
    pub syscall_reps: usize,
    pub syscall_seconds: f64,
    pub storm_seconds: f64,
    /// Distinct endpoints: this many addresses × [`memory::ENDPOINT_PORTS`] ports.
    pub endpoint_hosts: u32,
    pub forks: u64,
    pub startup_runs: usize,
    pub min_latency_samples: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                name: "quick",
                reps: 2,
                wrk_seconds: 5,
                syscall_reps: 5,
                syscall_seconds: 0.5,
                storm_seconds: 7.0,
                endpoint_hosts: 200,
                forks: 20_000,
                startup_runs: 3,
                min_latency_samples: 15,
            }
        } else {
            // The overhead runs are most of the time: 2 variants × 3 modes × `reps` runs of
            // `wrk_seconds`, plus ~2 s each to start and stop the tracer. On this 2-vCPU VM
            // the off runs alone spread by 10–20 % between repetitions, so repetitions buy
            // more than length: 8 × 6 s (was 4 × 8 s; 6 s still gives wrk ~10⁵ samples for
            // its p99) is ~6.5 minutes, and the whole plan ~10 minutes after the build
            // (≤ 15 with a slower machine, or 18 on a fresh one that builds bpf-linker).
            Self {
                name: "full",
                reps: 8,
                wrk_seconds: 6,
                syscall_reps: 7,
                syscall_seconds: 1.5,
                storm_seconds: 10.0,
                endpoint_hosts: 1000,
                forks: 100_000,
                startup_runs: 5,
                min_latency_samples: 20,
            }
        }
    }
}

/// What every section needs.
pub struct Ctx {
    pub plan: Plan,
    /// The temporary directory everything lives in.
    pub dir: PathBuf,
    pub generator: PathBuf,
    pub agent: Setup,
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("why502-bench-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the benchmark loads eBPF programs and attaches bpftrace: run it as root \
             (sudo -E cargo xtask bench)"
        );
    }
    let started = Instant::now();
    bootstrap::run(Level::Bench)?;
    cmd::run(
        "building why502 and the load generator (release)",
        cmd::cargo(root).args(["build", "--release", "-p", "why502", "-p", "why502-bench"]),
    )?;
    process::catch_interrupts();

    let target = root.join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()));
    let release = target.join("release");
    let out_dir = target.join("bench");
    let plan = Plan::new(options.quick);
    let mut machine = report::machine(root);
    machine["other_why502_agents_at_start"] = json!(preflight()?);

    let tmp = TempDir::new()?;
    let [backend, keepalive, no_keepalive, metrics] = free_ports()?;
    let ctx = Ctx {
        agent: Setup::new(
            &release.join("why502"),
            &tmp.0.join("agent"),
            metrics,
            &out_dir.join("logs"),
        )?,
        generator: release.join("why502-bench"),
        dir: tmp.0.clone(),
        plan,
    };
    let wanted = |s: Section| options.only.is_empty() || options.only.contains(&s);
    println!(
        "==> benchmark ({} plan) in {}; agent logs in {}",
        ctx.plan.name,
        ctx.dir.display(),
        ctx.agent.log_dir.display()
    );

    let mut rows = Vec::new();
    let mut results = json!({
        "machine": machine,
        "plan": {
            "name": ctx.plan.name,
            "repetitions": ctx.plan.reps,
            "wrk": format!("wrk -t2 -c64 -d{}s --latency", ctx.plan.wrk_seconds),
            "syscall_repetitions": ctx.plan.syscall_reps,
            "syscall_loop_seconds": ctx.plan.syscall_seconds,
            "storm_seconds": ctx.plan.storm_seconds,
            "distinct_endpoints": u64::from(ctx.plan.endpoint_hosts) * u64::from(memory::ENDPOINT_PORTS),
            "processes": ctx.plan.forks,
        },
    });
    let mut failures = Vec::new();
    let mut section = |name: &str, f: &mut dyn FnMut(&mut Vec<Row>) -> Result<Value>| {
        match f(&mut rows) {
            Ok(value) => results[name] = value,
            Err(err) => {
                eprintln!("xtask: bench {name} failed: {err:#}");
                results[name] = json!({ "error": format!("{err:#}") });
                failures.push(name.to_string());
            }
        }
        process::check_interrupted()
    };

    if wanted(Section::Startup) {
        section("startup", &mut |rows| startup(&ctx, rows))?;
    }
    if wanted(Section::Syscalls) {
        // Before nginx starts: the loop's CPU should be as idle as the machine allows.
        section("syscalls", &mut |rows| syscalls::run(&ctx, rows))?;
    }
    if wanted(Section::Overhead) || wanted(Section::Profile) {
        let nginx = Nginx::start(&ctx.dir.join("nginx"), [backend, keepalive, no_keepalive]);
        match nginx {
            Ok(nginx) => {
                if wanted(Section::Overhead) {
                    section("overhead", &mut |rows| {
                        let runs = overhead::measure(&ctx, &nginx)?;
                        overhead_rows(&runs, rows);
                        Ok(overhead::to_json(&runs))
                    })?;
                }
                if wanted(Section::Profile) {
                    section("profile", &mut |rows| profile::run(&ctx, &nginx, rows))?;
                }
            }
            Err(err) => section("overhead", &mut |_| Err(anyhow::anyhow!("nginx: {err:#}")))?,
        }
    }
    if wanted(Section::Storm) {
        section("load", &mut |rows| load(&ctx, rows))?;
    }

    results["machine"]["loadavg_at_end"] = json!(process::loadavg());
    results["table"] = report::rows_json(&rows);
    results["elapsed_s"] = json!(started.elapsed().as_secs());
    results["failed_sections"] = json!(failures);
    report::print_table(&rows);
    let (latest, copy) = report::write(&out_dir, &results)?;
    println!(
        "==> results in {} and {} ({} in all)",
        latest.display(),
        copy.display(),
        minutes_seconds(started.elapsed())
    );
    if !failures.is_empty() {
        bail!("benchmark sections failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Checks that the fixed port ranges are closed, and warns about what would skew numbers;
/// returns how many other agents are running.
fn preflight() -> Result<usize> {
    let listening = listening_ports();
    for (what, first, count) in [
        ("storm", storm::STORM_PORT, storm::STORM_PORTS),
        ("latency probe", storm::PROBE_PORT, storm::PROBE_PORTS),
        (
            "endpoint churn",
            memory::ENDPOINT_PORT,
            memory::ENDPOINT_PORTS,
        ),
    ] {
        if let Some(port) = (first..first + count).find(|p| listening.contains(p)) {
            bail!(
                "port {port} ({what} range {first}–{}) has a listener: it must be closed",
                first + count - 1
            );
        }
    }
    let others = process::pids_named("why502", &[]);
    if !others.is_empty() {
        eprintln!(
            "warning: other why502 agents are running (pids {others:?}): their probes fire too \
             and skew every number"
        );
    }
    let load = process::loadavg();
    if load > 0.5 {
        eprintln!(
            "warning: the load average is {load:.2}: other work on this machine skews the numbers"
        );
    }
    Ok(others.len())
}

/// Local TCP ports in LISTEN state, from /proc/net/tcp and tcp6.
fn listening_ports() -> Vec<u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local = fields.get(1)?;
                    (fields.get(3) == Some(&"0A"))
                        .then(|| u16::from_str_radix(local.rsplit(':').next()?, 16).ok())?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Four distinct free loopback ports (from the kernel's ephemeral range).
fn free_ports() -> Result<[u16; 4]> {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    Ok([ports[0], ports[1], ports[2], ports[3]])
}

fn startup(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<Value> {
    println!("==> start-up, {} times", ctx.plan.startup_runs);
    let mut attached = Vec::new();
    let mut running = Vec::new();
    let mut stops = Vec::new();
    let mut line = String::new();
    let mut probes = (0, 0);
    for i in 0..ctx.plan.startup_runs {
        process::sleep(Duration::from_millis(300))?;
        let agent = Agent::start(&ctx.agent, &format!("startup-{i}"))?;
        attached.push(agent.attached_after.as_secs_f64() * 1000.0);
        running.push(agent.running_after.as_secs_f64() * 1000.0);
        line.clone_from(&agent.attached_line);
        let status = agent.status()?;
        probes = (
            status.probes.values().filter(|s| *s == "attached").count(),
            status.probes.len(),
        );
        stops.push(agent.stop()?.as_secs_f64() * 1000.0);
        println!(
            "    {:.0} ms to \"probes attached\", {:.0} ms to \"running\"",
            attached[i], running[i]
        );
    }
    let json = json!({
        "attached_ms": attached.clone(),
        "running_ms": running.clone(),
        "stop_ms": stops.clone(),
        "attached_line": line,
        "probes_attached": probes.0,
        "probes": probes.1,
    });
    let attached = overhead::median(&mut attached);
    let running = overhead::median(&mut running);
    rows.push(Row::new(
        "start-up: spawn → \"probes attached\" (median)",
        format!("{attached:.0} ms ({}/{} probes)", probes.0, probes.1),
        "< 1 s",
        Some(attached < 1000.0),
    ));
    rows.push(Row::new(
        "start-up: spawn → \"agent running\" (median)",
        format!("{running:.0} ms"),
        "< 1 s",
        Some(running < 1000.0),
    ));
    rows.push(Row::new(
        "shut-down: SIGINT → exit (median)",
        format!("{:.0} ms", overhead::median(&mut stops)),
        "",
        None,
    ));
    Ok(json)
}

fn overhead_rows(runs: &[overhead::Run], rows: &mut Vec<Row>) {
    for variant in Variant::ALL {
        let off = overhead::summary(runs, variant, Mode::Off);
        let on = overhead::summary(runs, variant, Mode::Why502);
        let bt = overhead::summary(runs, variant, Mode::Bpftrace);
        let (loss, p99) = overhead::ratios(runs, variant, Mode::Why502);
        let (bt_loss, bt_p99) = overhead::ratios(runs, variant, Mode::Bpftrace);
        let (paired_loss, paired_p99) = overhead::paired_ratios(runs, variant, Mode::Why502);
        let (bt_paired_loss, bt_paired_p99) =
            overhead::paired_ratios(runs, variant, Mode::Bpftrace);
        let v = variant.name();
        // Every ratio carries the spread of the off runs it is measured against: a loss
        // within that spread is not told from the machine's own noise.
        let rps_noise = format!("off runs spread {:.0} %", off.rps_spread() * 100.0);
        let p99_noise = format!("off runs spread {:.0} %", off.p99_spread() * 100.0);
        rows.push(Row::new(
            &format!("{v}: throughput loss, why502"),
            format!(
                "{:.2} % ({:.0} → {:.0} req/s); paired {:.2} %; {rps_noise}",
                loss * 100.0,
                off.rps,
                on.rps,
                paired_loss * 100.0
            ),
            "≤ 1 %",
            Some(loss <= 0.01),
        ));
        rows.push(Row::new(
            &format!("{v}: p99 increase, why502"),
            format!(
                "{:.2} % ({:.3} → {:.3} ms); paired {:.2} %; {p99_noise}",
                p99 * 100.0,
                off.p99_ms,
                on.p99_ms,
                paired_p99 * 100.0
            ),
            "≤ 2 %",
            Some(p99 <= 0.02),
        ));
        rows.push(Row::new(
            &format!("{v}: throughput loss, bpftrace"),
            format!(
                "{:.2} % ({:.0} req/s); paired {:.2} %; {rps_noise}",
                bt_loss * 100.0,
                bt.rps,
                bt_paired_loss * 100.0
            ),
            "",
            None,
        ));
        rows.push(Row::new(
            &format!("{v}: p99 increase, bpftrace"),
            format!(
                "{:.2} % ({:.3} ms); paired {:.2} %; {p99_noise}",
                bt_p99 * 100.0,
                bt.p99_ms,
                bt_paired_p99 * 100.0
            ),
            "",
            None,
        ));
        rows.push(Row::new(
            &format!("{v}: tracer CPU per run, why502 vs bpftrace"),
            format!("{:.2} s vs {:.2} s", on.tracer_cpu_s, bt.tracer_cpu_s),
            "",
            None,
        ));
        rows.push(Row::new(
            &format!("{v}: why502 costs less than bpftrace"),
            format!("{:.2} % vs {:.2} % loss", loss * 100.0, bt_loss * 100.0),
            "why502 < bpftrace",
            Some(loss < bt_loss),
        ));
    }
}

/// One agent through rest, the storm and the churn.
fn load(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<Value> {
    let baseline = storm::baseline(ctx)?;
    println!("==> memory at rest, then the storm, then the churn (one agent)");
    let mut agent = Agent::start(&ctx.agent, "load")?;
    let rest = memory::at_rest(&agent)?;
    let storm = storm::run(ctx, &mut agent)?;
    let churn = memory::churn(ctx, &mut agent)?;
    agent.stop()?;

    let rate = storm.generated.rate();
    rows.push(Row::new(
        "storm: refused connects/s",
        format!("{rate:.0}"),
        "≥ 100,000",
        Some(rate >= storm::TARGET_RATE),
    ));
    rows.push(Row::new(
        "storm: refused connects/s without the agent",
        format!("{:.0}", baseline.rate()),
        "",
        None,
    ));
    rows.push(Row::new(
        "storm: events/s processed by the agent",
        format!("{:.0}", storm.events_per_s),
        "",
        None,
    ));
    let lost_ok = match &storm.paced {
        Some((_, dropped)) => *dropped == 0,
        None => storm.dropped_all == 0 || rate > storm::TARGET_RATE,
    };
    let mut lost = format!(
        "{} of {} at {rate:.0}/s",
        storm.dropped_all,
        storm.records + storm.dropped_all
    );
    if let Some((g, dropped)) = &storm.paced {
        lost += &format!("; {dropped} at {:.0}/s", g.rate());
    }
    rows.push(Row::new(
        "storm: events lost (ring buffer full)",
        lost,
        "0 up to 100,000/s",
        Some(lost_ok),
    ));
    rows.push(Row::new(
        "storm: generated = delivered + dropped",
        format!(
            "{} = {} + {} ({:+})",
            storm.generated.refused,
            storm.delivered_connect_failure,
            storm.dropped_connect_failure,
            -storm.unaccounted()
        ),
        "exact",
        Some(storm.unaccounted() == 0),
    ));
    let skipped: u64 = storm.lagged.values().sum();
    rows.push(Row::new(
        "storm: events skipped by the agent's bus subscribers",
        format!("{skipped} {:?}", storm.lagged),
        "0",
        Some(skipped == 0),
    ));
    let cpu = storm.cpu_pct_per_10k();
    rows.push(Row::new(
        "storm: agent CPU per 10,000 events/s",
        format!(
            "{cpu:.1} % of a core ({:.0} % while storming)",
            storm.cpu_s / storm.wall_s * 100.0
        ),
        "< 5 %",
        Some(cpu < 5.0),
    ));
    let (p50, p99, max) = storm.latency();
    let samples = storm.latencies_ms.len();
    rows.push(Row::new(
        "storm: failure → incident queryable p50/p99/max",
        format!(
            "{p50:.0}/{p99:.0}/{max:.0} ms ({samples} samples, {} missed)",
            storm.probes_missed
        ),
        "p99 < 1 s",
        Some(p99 < 1000.0 && storm.probes_missed == 0 && samples >= ctx.plan.min_latency_samples),
    ));
    let limit = 64.0;
    rows.push(Row::new(
        "memory: agent RSS at rest",
        format!("{:.1} MiB", mib(rest.rss)),
        "< 64 MiB",
        Some(mib(rest.rss) < limit),
    ));
    rows.push(Row::new(
        "memory: agent RSS peak under the storm",
        format!("{:.1} MiB", mib(storm.rss_peak)),
        "< 64 MiB",
        Some(mib(storm.rss_peak) < limit),
    ));
    rows.push(Row::new(
        "memory: agent RSS after the churn",
        format!(
            "{:.1} MiB ({} endpoints, {} processes)",
            mib(churn.rss_max()),
            churn.endpoints(),
            churn.processes()
        ),
        "< 64 MiB",
        Some(mib(churn.rss_max()) < limit),
    ));
    rows.push(Row::new(
        "churn: events skipped by the agent's bus subscribers",
        format!(
            "{} (endpoints paced at {}/s)",
            churn.lagged(),
            memory::ENDPOINT_RATE
        ),
        "0",
        Some(churn.lagged() == 0),
    ));
    let growth = churn.second_round_growth();
    rows.push(Row::new(
        "memory: RSS growth over the second churn half",
        format!(
            "{:+.1} % ({:.1} → {:.1} MiB)",
            growth * 100.0,
            mib(churn.rounds.first().map_or(0, |r| r.rss)),
            mib(churn.rss_later)
        ),
        "flat (≤ 5 %)",
        Some(growth <= 0.05),
    ));
    rows.push(Row::new(
        "memory: kernel BPF maps (memlock)",
        format!(
            "{:.1} MiB in {} maps",
            mib(rest.bpf.map_memlock),
            rest.bpf.maps
        ),
        "",
        None,
    ));
    Ok(json!({
        "rest": {
            "rss_bytes": rest.rss,
            "bpf": memory::bpf_json(&rest.bpf),
        },
        "storm": storm.to_json(),
        "storm_without_agent": baseline.raw,
        "churn": churn.to_json(),
    }))
}

fn minutes_seconds(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}
