//! The final table, and the machine-readable results (with the machine they came from).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cmd;

/// One line of the table.
pub struct Row {
    pub measure: String,
    pub value: String,
    pub target: String,
    /// `None`: reported, no target.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(measure: &str, value: String, target: &str, met: Option<bool>) -> Self {
        Self {
            measure: measure.into(),
            value,
            target: target.into(),
            met,
        }
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        }
    }
}

pub fn print_table(rows: &[Row]) {
    let w0 = rows
        .iter()
        .map(|r| r.measure.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0).max(5);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!();
    println!(
        "{:<w0$}  {:<w1$}  {:<w2$}  result",
        "measure", "value", "target"
    );
    println!("{}", "-".repeat(w0 + w1 + w2 + 12));
    for r in rows {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r.measure,
            r.value,
            r.target,
            r.verdict()
        );
    }
    let missed = rows.iter().filter(|r| r.met == Some(false)).count();
    let met = rows.iter().filter(|r| r.met == Some(true)).count();
    println!("{}", "-".repeat(w0 + w1 + w2 + 12));
    println!("{met} targets met, {missed} missed");
}

pub fn rows_json(rows: &[Row]) -> Value {
    rows.iter()
        .map(|r| {
            json!({
                "measure": r.measure,
                "value": r.value,
                "target": r.target,
                "met": r.met,
            })
        })
        .collect()
}

/// The machine, the code and the command the numbers belong to.
pub fn machine(root: &Path) -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("")
        .trim()
        .to_string();
    let mem_total_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let git = |args: &[&str]| {
        cmd::stdout(Command::new("git").arg("-C").arg(root).args(args)).unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_bytes": mem_total_kib * 1024,
        "kernel": cmd::stdout(Command::new("uname").arg("-r")).unwrap_or_default(),
        "cpu_model": cpu_model,
        "date": now_utc(),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": dirty,
        "command": command_line(),
        "nginx": nginx_version(),
        "wrk": cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", "wrk"])).unwrap_or_default(),
        "bpftrace": cmd::stdout(Command::new("bpftrace").arg("--version")).unwrap_or_default(),
        "loadavg_at_start": super::process::loadavg(),
    })
}

/// `nginx -v` prints to stderr.
fn nginx_version() -> String {
    Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default()
}

/// The command as typed: `cargo xtask bench …`.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

/// `2026-11-21T19:30:00Z`, from `date` (no date library for one line).
pub fn now_utc() -> String {
    cmd::stdout(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).unwrap_or_default()
}

/// Writes `results` to `dir/results.json` and a timestamped copy; returns both paths.
pub fn write(dir: &Path, results: &Value) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = serde_json::to_string_pretty(results)? + "\n";
    let latest = dir.join("results.json");
    let stamp = now_utc().replace(':', "");
    let copy = dir.join(format!("results-{stamp}.json"));
    std::fs::write(&latest, &text)?;
    std::fs::write(&copy, &text)?;
    Ok((latest, copy))
}
