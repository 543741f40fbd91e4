//! Overhead on proxied traffic: wrk through nginx with nothing attached, with why502, and
//! with the bpftrace reference, interleaved, for both upstream variants.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::agent::Agent;
use super::bpftrace::Bpftrace;
use super::nginx::{Nginx, Variant};
use super::process;
use super::wrk::{self, Load, WrkResult};
use super::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Why502,
    Bpftrace,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Off, Mode::Why502, Mode::Bpftrace];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Why502 => "why502",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

pub struct Run {
    pub variant: Variant,
    pub mode: Mode,
    pub rep: usize,
    pub wrk: WrkResult,
    /// CPU the tracer (agent or bpftrace) used during the wrk run, in seconds.
    pub tracer_cpu_s: f64,
    /// Ring-buffer records the agent read during the run.
    pub agent_records: u64,
    pub agent_dropped: u64,
}

/// Medians of one (variant, mode) over its repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p99_ms: f64,
    pub p99_min: f64,
    pub p99_max: f64,
    pub tracer_cpu_s: f64,
}

impl Summary {
    /// [`spread`] of the requests/s.
    pub fn rps_spread(&self) -> f64 {
        (self.rps_max - self.rps_min) / self.rps
    }

    /// [`spread`] of the p99s.
    pub fn p99_spread(&self) -> f64 {
        (self.p99_max - self.p99_min) / self.p99_ms
    }
}

pub fn measure(ctx: &Ctx, nginx: &Nginx) -> Result<Vec<Run>> {
    let load = Load {
        threads: 2,
        connections: 64,
        seconds: ctx.plan.wrk_seconds,
    };
    let mut runs = Vec::new();
    for variant in Variant::ALL {
        let addr = nginx.addr(variant);
        println!("==> overhead, {}: warm-up", variant.name());
        wrk::run(addr, Load { seconds: 3, ..load })?;
        for rep in 0..ctx.plan.reps {
            for mode in Mode::ALL {
                process::check_interrupted()?;
                let run = one_run(ctx, nginx, variant, mode, rep, load)?;
                println!(
                    "    {} rep {}/{} {:<8} {:>9.0} req/s  p99 {:>7.3} ms{}",
                    variant.name(),
                    rep + 1,
                    ctx.plan.reps,
                    mode.name(),
                    run.wrk.requests_per_s,
                    run.wrk.p99_ms,
                    match mode {
                        Mode::Off => String::new(),
                        _ => format!("  tracer CPU {:.2} s", run.tracer_cpu_s),
                    }
                );
                if run.wrk.errors > 0 {
                    eprintln!("warning: wrk saw {} errors", run.wrk.errors);
                }
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

fn one_run(
    ctx: &Ctx,
    nginx: &Nginx,
    variant: Variant,
    mode: Mode,
    rep: usize,
    load: Load,
) -> Result<Run> {
    let addr = nginx.addr(variant);
    let mut run = Run {
        variant,
        mode,
        rep,
        wrk: WrkResult::default(),
        tracer_cpu_s: 0.0,
        agent_records: 0,
        agent_dropped: 0,
    };
    match mode {
        Mode::Off => {
            process::sleep(Duration::from_millis(500))?;
            run.wrk = wrk::run(addr, load)?;
        }
        Mode::Why502 => {
            let label = format!("overhead-{}-{rep}", variant.name());
            let mut agent = Agent::start(&ctx.agent, &label)?;
            process::sleep(Duration::from_millis(500))?;
            let before = agent.status()?;
            let cpu = process::cpu_time(agent.pid)?;
            run.wrk = wrk::run(addr, load)?;
            run.tracer_cpu_s = (process::cpu_time(agent.pid)? - cpu).as_secs_f64();
            let after = agent.status()?;
            agent.check_running()?;
            run.agent_records = after.records - before.records;
            run.agent_dropped = after.dropped_total() - before.dropped_total();
            agent.stop()?;
        }
        Mode::Bpftrace => {
            let mut tracer = Bpftrace::start(&ctx.dir.join("reference.bt"))?;
            let cpu = process::cpu_time(tracer.pid)?;
            run.wrk = wrk::run(addr, load)?;
            run.tracer_cpu_s = (process::cpu_time(tracer.pid)? - cpu).as_secs_f64();
            tracer.check_running()?;
            tracer.stop()?;
        }
    }
    if run.wrk.requests == 0 {
        bail!("wrk made no requests through {addr}");
    }
    Ok(run)
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// (max − min) / median: how far apart repetitions of the same thing land, as a fraction.
/// A ratio against the `off` runs smaller than their spread is not told from noise.
pub fn spread(values: &[f64]) -> f64 {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max - min) / median(&mut values.to_vec())
}

pub fn summary(runs: &[Run], variant: Variant, mode: Mode) -> Summary {
    let of = |f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.variant == variant && r.mode == mode)
            .map(f)
            .collect()
    };
    let mut rps = of(&|r| r.wrk.requests_per_s);
    let mut p99 = of(&|r| r.wrk.p99_ms);
    let mut cpu = of(&|r| r.tracer_cpu_s);
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Summary {
        rps_min: min(&rps),
        rps_max: max(&rps),
        p99_min: min(&p99),
        p99_max: max(&p99),
        rps: median(&mut rps),
        p99_ms: median(&mut p99),
        tracer_cpu_s: median(&mut cpu),
    }
}

/// Throughput loss and p99 increase of `mode` against `off`, as fractions.
pub fn ratios(runs: &[Run], variant: Variant, mode: Mode) -> (f64, f64) {
    let off = summary(runs, variant, Mode::Off);
    let on = summary(runs, variant, mode);
    (1.0 - on.rps / off.rps, on.p99_ms / off.p99_ms - 1.0)
}

/// The same, as medians of the per-repetition ratios against the `off` run just before:
/// less sensitive to drift in the machine's load than the ratio of medians.
pub fn paired_ratios(runs: &[Run], variant: Variant, mode: Mode) -> (f64, f64) {
    let (mut loss, mut p99) = paired(runs, variant, mode);
    (median(&mut loss), median(&mut p99))
}

/// Each repetition's throughput loss and p99 increase against the `off` run just before.
fn paired(runs: &[Run], variant: Variant, mode: Mode) -> (Vec<f64>, Vec<f64>) {
    let of = |m: Mode| -> Vec<&Run> {
        runs.iter()
            .filter(|r| r.variant == variant && r.mode == m)
            .collect()
    };
    let (off, on) = (of(Mode::Off), of(mode));
    let loss: Vec<f64> = off
        .iter()
        .zip(&on)
        .map(|(a, b)| 1.0 - b.wrk.requests_per_s / a.wrk.requests_per_s)
        .collect();
    let p99: Vec<f64> = off
        .iter()
        .zip(&on)
        .map(|(a, b)| b.wrk.p99_ms / a.wrk.p99_ms - 1.0)
        .collect();
    (loss, p99)
}

pub fn to_json(runs: &[Run]) -> Value {
    let raw: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "variant": r.variant.name(),
                "mode": r.mode.name(),
                "rep": r.rep,
                "requests_per_s": r.wrk.requests_per_s,
                "p50_ms": r.wrk.p50_ms,
                "p99_ms": r.wrk.p99_ms,
                "requests": r.wrk.requests,
                "errors": r.wrk.errors,
                "tracer_cpu_s": r.tracer_cpu_s,
                "agent_records": r.agent_records,
                "agent_dropped": r.agent_dropped,
            })
        })
        .collect();
    let mut summaries = serde_json::Map::new();
    for variant in Variant::ALL {
        let mut modes = serde_json::Map::new();
        let off = summary(runs, variant, Mode::Off);
        for mode in Mode::ALL {
            let s = summary(runs, variant, mode);
            let mut entry = json!({
                "requests_per_s_median": s.rps,
                "requests_per_s_min": s.rps_min,
                "requests_per_s_max": s.rps_max,
                "p99_ms_median": s.p99_ms,
                "p99_ms_min": s.p99_min,
                "p99_ms_max": s.p99_max,
                "tracer_cpu_s_median": s.tracer_cpu_s,
            });
            if mode != Mode::Off {
                let (loss, p99) = ratios(runs, variant, mode);
                entry["throughput_loss"] = json!(loss);
                entry["p99_increase"] = json!(p99);
                let (loss, p99) = paired(runs, variant, mode);
                entry["throughput_loss_paired"] = json!(median(&mut loss.clone()));
                entry["p99_increase_paired"] = json!(median(&mut p99.clone()));
                entry["throughput_loss_paired_each"] = json!(loss);
                entry["p99_increase_paired_each"] = json!(p99);
                // Next to the ratios, so that each can be read against the noise.
                entry["off_requests_per_s_spread"] = json!(off.rps_spread());
                entry["off_p99_ms_spread"] = json!(off.p99_spread());
            } else {
                entry["requests_per_s_spread"] = json!(s.rps_spread());
                entry["p99_ms_spread"] = json!(s.p99_spread());
            }
            modes.insert(mode.name().into(), entry);
        }
        summaries.insert(variant.name().into(), Value::Object(modes));
    }
    json!({ "runs": raw, "summary": summaries })
}
