//! The syscall tracing slow path: while any `syscalls:` tracepoint is attached, every
//! syscall of every process takes the kernel's tracing entry and exit path, whether a
//! program runs for that syscall or not. BPF run-time statistics only count the programs,
//! so this measures it from the caller's side: `why502-bench syscalls` times a `getppid`
//! loop with nothing attached, with the agent as configured by default, and with the agent
//! minus its `syscalls:` probes, interleaved.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use agent_common::config::Probe;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::agent::{Agent, Setup};
use super::overhead::{median, spread};
use super::process;
use super::report::Row;
use super::Ctx;

/// The tracefs category whose tracepoints switch the slow path on.
const CATEGORY: &str = "syscalls";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing of ours attached.
    Off,
    /// The agent with its default configuration.
    Why502,
    /// The agent with every `syscalls:` probe disabled.
    NoSyscallProbes,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Off, Mode::Why502, Mode::NoSyscallProbes];

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Why502 => "why502",
            Mode::NoSyscallProbes => "why502_no_syscall_probes",
        }
    }
}

struct Run {
    mode: Mode,
    rep: usize,
    /// The median over the loop's batches.
    ns_per_call: f64,
    /// The agent's `syscalls:` probes that were attached (none when off).
    attached: Vec<String>,
    /// Each `syscalls:` probe's status in the agent (`attached`, `disabled`,
    /// `superseded`, …); empty when off.
    statuses: BTreeMap<String, String>,
    raw: Value,
}

/// The agent's probes on `syscalls:` tracepoints, from the agent's own list.
fn syscall_probes() -> Vec<&'static str> {
    Probe::ALL
        .iter()
        .filter(|p| p.category() == CATEGORY)
        .map(|p| p.name())
        .collect()
}

pub fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<Value> {
    let probes = syscall_probes();
    let without = ctx.agent.with_disabled("no-syscall-probes", &probes)?;
    // The last CPU: the agent's threads and everything else are as likely on any other.
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let (reps, seconds) = (ctx.plan.syscall_reps, ctx.plan.syscall_seconds);
    println!(
        "==> syscalls: getppid loop on CPU {cpu}, {seconds} s × {reps} per mode: nothing \
         attached, why502, why502 without its {} syscalls: probes",
        probes.len()
    );
    let mut runs = Vec::new();
    let mut others = Vec::new();
    for rep in 0..reps {
        for mode in Mode::ALL {
            process::check_interrupted()?;
            if mode == Mode::Off {
                others.extend(other_tracers());
            }
            let setup = if mode == Mode::NoSyscallProbes {
                &without
            } else {
                &ctx.agent
            };
            let run = one_run(ctx, setup, mode, rep, cpu, &probes)?;
            println!(
                "    rep {}/{reps} {:<24} {:>7.1} ns/call  ({})",
                rep + 1,
                mode.name(),
                run.ns_per_call,
                match mode {
                    Mode::Off => "nothing attached".to_string(),
                    _ => format!("{} syscalls: probes attached", run.attached.len()),
                }
            );
            runs.push(run);
        }
    }
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        eprintln!(
            "warning: other tracers were running during the runs with nothing attached (pids \
             {others:?}): if they attach syscalls: tracepoints, the baseline is slow too"
        );
    }
    let s = Summaries::new(&runs);
    push_rows(&s, &runs, rows);
    Ok(to_json(&s, &runs, &probes, cpu, &others))
}

fn one_run(
    ctx: &Ctx,
    setup: &Setup,
    mode: Mode,
    rep: usize,
    cpu: usize,
    probes: &[&str],
) -> Result<Run> {
    if mode == Mode::Off {
        process::sleep(Duration::from_millis(300))?;
        let raw = getppid_loop(ctx, cpu)?;
        return Ok(Run::new(mode, rep, raw, BTreeMap::new()));
    }
    let mut agent = Agent::start(setup, &format!("syscalls-{}-{rep}", mode.name()))?;
    // Past the start-up scan of procfs, which makes syscalls of its own.
    process::sleep(Duration::from_millis(500))?;
    let status = agent.status()?;
    let statuses: BTreeMap<String, String> = probes
        .iter()
        .map(|p| {
            let s = status.probes.get(*p).map_or("absent", String::as_str);
            (p.to_string(), s.to_string())
        })
        .collect();
    if mode == Mode::NoSyscallProbes && !attached(&statuses).is_empty() {
        bail!(
            "the agent attached {:?} although its config disables them",
            attached(&statuses)
        );
    }
    let raw = getppid_loop(ctx, cpu)?;
    agent.check_running()?;
    agent.stop()?;
    Ok(Run::new(mode, rep, raw, statuses))
}

/// The probes among `statuses` that are attached.
fn attached(statuses: &BTreeMap<String, String>) -> Vec<String> {
    statuses
        .iter()
        .filter(|(_, s)| *s == "attached")
        .map(|(p, _)| p.clone())
        .collect()
}

impl Run {
    fn new(mode: Mode, rep: usize, raw: Value, statuses: BTreeMap<String, String>) -> Self {
        Self {
            mode,
            rep,
            ns_per_call: raw["ns_per_call"].as_f64().unwrap_or(f64::NAN),
            attached: attached(&statuses),
            statuses,
            raw,
        }
    }
}

/// `why502-bench syscalls` pinned to `cpu`: its JSON line.
fn getppid_loop(ctx: &Ctx, cpu: usize) -> Result<Value> {
    let seconds = ctx.plan.syscall_seconds;
    let output = process::run_bounded(
        "why502-bench syscalls",
        Command::new(&ctx.generator).args([
            "syscalls".to_string(),
            format!("--duration={seconds}"),
            format!("--cpu={cpu}"),
        ]),
        Duration::from_secs_f64(seconds + 30.0),
    )?;
    let raw: Value = serde_json::from_str(output.stdout.trim())
        .with_context(|| format!("unexpected generator output: {}", output.stdout))?;
    if raw["ns_per_call"].as_f64().is_none() {
        bail!("no ns_per_call in the generator's output: {raw}");
    }
    Ok(raw)
}

/// Tracers other than the ones this section starts: they may attach syscall tracepoints
/// and slow down the baseline as well.
fn other_tracers() -> Vec<u32> {
    ["why502", "bpftrace", "perf"]
        .iter()
        .flat_map(|comm| process::pids_named(comm, &[]))
        .collect()
}

/// Medians per mode and their differences to `off`.
struct Summaries {
    off: f64,
    why502: f64,
    without: f64,
    off_spread: f64,
    /// Medians of each repetition's difference to the `off` run just before it.
    why502_paired: f64,
    without_paired: f64,
}

impl Summaries {
    fn new(runs: &[Run]) -> Self {
        let of = |mode: Mode| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.mode == mode)
                .map(|r| r.ns_per_call)
                .collect()
        };
        let paired = |mode: Mode| -> f64 {
            let mut diffs: Vec<f64> = of(Mode::Off)
                .iter()
                .zip(of(mode))
                .map(|(off, on)| on - off)
                .collect();
            median(&mut diffs)
        };
        let off = of(Mode::Off);
        Self {
            off_spread: spread(&off),
            off: median(&mut off.clone()),
            why502: median(&mut of(Mode::Why502)),
            without: median(&mut of(Mode::NoSyscallProbes)),
            why502_paired: paired(Mode::Why502),
            without_paired: paired(Mode::NoSyscallProbes),
        }
    }
}

fn push_rows(s: &Summaries, runs: &[Run], rows: &mut Vec<Row>) {
    let attached = runs
        .iter()
        .find(|r| r.mode == Mode::Why502)
        .map_or(0, |r| r.attached.len());
    let versus_off = |ns: f64, paired: f64| {
        format!(
            "{ns:.1} ns/call: {:+.1} ns ({:+.1} %; paired {paired:+.1} ns; off runs spread {:.0} %)",
            ns - s.off,
            (ns / s.off - 1.0) * 100.0,
            s.off_spread * 100.0
        )
    };
    rows.push(Row::new(
        "syscalls: getppid, nothing attached (median)",
        format!(
            "{:.1} ns/call (off runs spread {:.0} %)",
            s.off,
            s.off_spread * 100.0
        ),
        "",
        None,
    ));
    rows.push(Row::new(
        &format!("syscalls: getppid, why502 ({attached} syscalls: probes attached)"),
        versus_off(s.why502, s.why502_paired),
        "",
        None,
    ));
    rows.push(Row::new(
        "syscalls: getppid, why502 without its syscalls: probes",
        versus_off(s.without, s.without_paired),
        "",
        None,
    ));
}

fn to_json(s: &Summaries, runs: &[Run], probes: &[&str], cpu: usize, others: &[u32]) -> Value {
    let raw: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "mode": r.mode.name(),
                "rep": r.rep,
                "ns_per_call": r.ns_per_call,
                "syscall_probes_attached": r.attached,
                "syscall_probes": r.statuses,
                "generator": r.raw,
            })
        })
        .collect();
    json!({
        "syscall": "getppid",
        "cpu": cpu,
        "disabled_probes": probes,
        "other_tracers_during_off_runs": others,
        "runs": raw,
        "summary": {
            "off_ns_per_call_median": s.off,
            "off_ns_per_call_spread": s.off_spread,
            "why502_ns_per_call_median": s.why502,
            "why502_no_syscall_probes_ns_per_call_median": s.without,
            "why502_minus_off_ns": s.why502 - s.off,
            "why502_no_syscall_probes_minus_off_ns": s.without - s.off,
            "why502_minus_off_ns_paired": s.why502_paired,
            "why502_no_syscall_probes_minus_off_ns_paired": s.without_paired,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_probes_come_from_the_agents_list() {
        let probes = syscall_probes();
        assert!(probes.contains(&"sys_enter_connect"), "{probes:?}");
        assert!(probes.iter().all(|p| p.starts_with("sys_")), "{probes:?}");
    }

    #[test]
    fn spread_is_relative_to_the_median() {
        assert_eq!(spread(&[90.0, 100.0, 110.0]), 0.2);
    }
}
