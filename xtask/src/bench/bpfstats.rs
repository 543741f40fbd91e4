//! The kernel programs' own cost: `kernel.bpf_stats_enabled=1` makes the kernel account
//! each program's run count and run time, which `/proc/<pid>/fdinfo` shows per program fd;
//! bpftool names them.
//!
//! Every program the process holds counts, whatever its type: classic tracepoints
//! (`tracepoint`) and BTF raw tracepoints (`tp_btf`, which bpftool shows as `tracing`)
//! alike. Link fds name a program too but carry no counters, so each program counts once.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cmd;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Statistics on while this lives; the previous setting is restored when dropped.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn new() -> Result<Self> {
        let previous = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("cannot read {SYSCTL}"))?
            .trim()
            .to_string();
        std::fs::write(SYSCTL, "1").with_context(|| format!("cannot write {SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(SYSCTL, &self.previous) {
            eprintln!(
                "warning: cannot restore {SYSCTL} to {}: {err}",
                self.previous
            );
        }
    }
}

/// Per program id: (run_time_ns, run_cnt).
pub type Snapshot = BTreeMap<u32, (u64, u64)>;

/// What bpftool says about a program.
struct Info {
    name: String,
    /// `tracepoint`, `tracing` (`tp_btf`, fentry…), `raw_tracepoint`, …
    kind: String,
}

/// The programs `pid` holds, with their counters.
pub fn snapshot(pid: u32) -> Result<Snapshot> {
    let mut progs = Snapshot::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        };
        if let (Some(id), Some(time), Some(count)) =
            (field("prog_id"), field("run_time_ns"), field("run_cnt"))
        {
            progs.insert(id as u32, (time, count));
        }
    }
    Ok(progs)
}

/// Program names and types by id, from `bpftool prog show --json` (empty without
/// bpftool). bpftool gives the full name from BTF where the kernel's is cut at 15 bytes.
fn names() -> BTreeMap<u32, Info> {
    let Some(text) = cmd::stdout(Command::new("bpftool").args(["prog", "show", "--json"])) else {
        return BTreeMap::new();
    };
    let Ok(Value::Array(progs)) = serde_json::from_str::<Value>(&text) else {
        return BTreeMap::new();
    };
    progs
        .iter()
        .filter_map(|p| {
            let info = Info {
                name: p["name"].as_str()?.to_string(),
                kind: p["type"].as_str().unwrap_or("?").to_string(),
            };
            Some((p["id"].as_u64()? as u32, info))
        })
        .collect()
}

/// One program's cost between two snapshots.
pub struct ProgCost {
    pub name: String,
    /// The program type, as bpftool names it.
    pub kind: String,
    pub runs: u64,
    pub time_ns: u64,
}

/// Costs between `before` and `after`, most expensive first.
pub fn delta(before: &Snapshot, after: &Snapshot) -> Vec<ProgCost> {
    let names = names();
    let mut costs: Vec<ProgCost> = after
        .iter()
        .map(|(id, (time, runs))| {
            let (t0, r0) = before.get(id).copied().unwrap_or((0, 0));
            let info = names.get(id);
            ProgCost {
                name: info.map_or_else(|| format!("prog {id}"), |i| i.name.clone()),
                kind: info.map_or_else(|| "?".into(), |i| i.kind.clone()),
                runs: runs - r0,
                time_ns: time - t0,
            }
        })
        .collect();
    costs.sort_by_key(|c| std::cmp::Reverse(c.time_ns));
    costs
}

pub fn total_ns(costs: &[ProgCost]) -> u64 {
    costs.iter().map(|c| c.time_ns).sum()
}

impl ProgCost {
    pub fn ns_per_run(&self) -> f64 {
        if self.runs > 0 {
            self.time_ns as f64 / self.runs as f64
        } else {
            0.0
        }
    }
}

/// Per program, with its runs and time per `unit` (`request`, `connect`) of which there
/// were `count`.
pub fn to_json(costs: &[ProgCost], unit: &str, count: u64) -> Value {
    let count = count.max(1) as f64;
    costs
        .iter()
        .map(|c| {
            json!({
                "program": c.name,
                "type": c.kind,
                "run_cnt": c.runs,
                "run_time_ns": c.time_ns,
                "ns_per_run": c.ns_per_run(),
                format!("runs_per_{unit}"): c.runs as f64 / count,
                format!("ns_per_{unit}"): c.time_ns as f64 / count,
            })
        })
        .collect()
}
