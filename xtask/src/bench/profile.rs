//! Where the kernel-side time goes: extra runs with BPF statistics on (which costs a
//! little itself, so these runs are kept apart from the overhead comparison), per program,
//! for why502 and for the bpftrace reference.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::agent::Agent;
use super::bpfstats::{self, StatsEnabled};
use super::bpftrace::Bpftrace;
use super::nginx::{Nginx, Variant};
use super::process;
use super::report::Row;
use super::storm;
use super::wrk::{self, Load};
use super::Ctx;

pub fn run(ctx: &Ctx, nginx: &Nginx, rows: &mut Vec<Row>) -> Result<Value> {
    let _stats = StatsEnabled::new()?;
    let seconds = if ctx.plan.name == "quick" { 3 } else { 5 };
    let load = Load {
        threads: 2,
        connections: 64,
        seconds,
    };
    let mut out = serde_json::Map::new();
    for variant in Variant::ALL {
        let mut per_request = Vec::new();
        let mut entry = serde_json::Map::new();
        for tracer in ["why502", "bpftrace"] {
            println!(
                "==> profile, {}: {tracer} with BPF statistics on",
                variant.name()
            );
            let (pid, stop): (u32, Box<dyn FnOnce() -> Result<Duration>>) = if tracer == "why502" {
                let agent = Agent::start(&ctx.agent, &format!("profile-{}", variant.name()))?;
                (agent.pid, Box::new(move || agent.stop()))
            } else {
                let bt = Bpftrace::start(&ctx.dir.join("reference.bt"))?;
                (bt.pid, Box::new(move || bt.stop()))
            };
            let before = bpfstats::snapshot(pid)?;
            let cpu = process::cpu_time(pid)?;
            let start = Instant::now();
            let result = wrk::run(nginx.addr(variant), load)?;
            let wall = start.elapsed().as_secs_f64();
            let user_cpu = (process::cpu_time(pid)? - cpu).as_secs_f64();
            let costs = bpfstats::delta(&before, &bpfstats::snapshot(pid)?);
            stop()?;
            let total = bpfstats::total_ns(&costs);
            let ns_per_request = total as f64 / result.requests.max(1) as f64;
            per_request.push(ns_per_request);
            if tracer == "why502" {
                print_programs(&costs, result.requests);
            }
            entry.insert(
                tracer.into(),
                json!({
                    "requests": result.requests,
                    "requests_per_s": result.requests_per_s,
                    "kernel_ns_total": total,
                    "kernel_ns_per_request": ns_per_request,
                    "kernel_pct_of_core": total as f64 / wall / 1e9 * 100.0,
                    "user_cpu_s": user_cpu,
                    "user_cpu_pct_of_core": user_cpu / wall * 100.0,
                    "programs": bpfstats::to_json(&costs, "request", result.requests),
                }),
            );
        }
        rows.push(Row::new(
            &format!(
                "{}: kernel programs per request, why502 vs bpftrace",
                variant.name()
            ),
            format!("{:.0} ns vs {:.0} ns", per_request[0], per_request[1]),
            "",
            None,
        ));
        out.insert(variant.name().into(), Value::Object(entry));
    }

    println!("==> profile, storm: why502 with BPF statistics on");
    let mut agent = Agent::start(&ctx.agent, "profile-storm")?;
    let before = bpfstats::snapshot(agent.pid)?;
    let s0 = agent.status()?;
    let generated = storm::finish(
        storm::spawn_refuse(ctx, &storm::storm_args(3.0, 0.0))?,
        Duration::from_secs(40),
    )?;
    let costs = bpfstats::delta(&before, &bpfstats::snapshot(agent.pid)?);
    let s1 = agent.status()?;
    agent.check_running()?;
    agent.stop()?;
    let total = bpfstats::total_ns(&costs);
    let per_connect = total as f64 / generated.refused.max(1) as f64;
    rows.push(Row::new(
        "storm: kernel programs per refused connect",
        format!("{per_connect:.0} ns ({:.0} connects/s)", generated.rate()),
        "",
        None,
    ));
    out.insert(
        "storm".into(),
        json!({
            "generator": generated.raw,
            "agent_records": s1.records - s0.records,
            "kernel_ns_total": total,
            "kernel_ns_per_connect": per_connect,
            "programs": bpfstats::to_json(&costs, "connect", generated.refused),
        }),
    );
    Ok(Value::Object(out))
}

/// The programs that ran, most expensive first: runs and ns per proxied request, with
/// their type, so that classic and `tp_btf` programs are told apart.
fn print_programs(costs: &[bpfstats::ProgCost], requests: u64) {
    let n = requests.max(1) as f64;
    for c in costs.iter().filter(|c| c.runs > 0) {
        println!(
            "    {:<26} {:<11} {:>6.2} runs/request × {:>5.0} ns = {:>6.0} ns/request",
            c.name,
            c.kind,
            c.runs as f64 / n,
            c.ns_per_run(),
            c.time_ns as f64 / n
        );
    }
}
