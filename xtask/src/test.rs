//! `cargo xtask test`: formatting, lints, then every test suite, stopping at the first failure.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bootstrap::{self, Level};
use crate::cmd;

/// The host crates; agent-ebpf only builds for the BPF target, via agent/build.rs.
const CLIPPY_PACKAGES: &[&str] = &[
    "why502",
    "agent-common",
    "xtask",
    "why502-e2e",
    "why502-bench",
];
const TEST_PACKAGES: &[&str] = &["why502", "agent-common", "why502-e2e", "why502-bench"];

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let start = Instant::now();
    let result = steps(root, args);
    let elapsed = minutes_seconds(start.elapsed());
    match result {
        Ok(()) => println!("==> all checks passed in {elapsed}"),
        Err(_) => println!("==> stopped after {elapsed}"),
    }
    result
}

fn steps(root: &Path, args: &[String]) -> Result<()> {
    bootstrap::run(Level::Test)?;

    cmd::run(
        "step 1/3: checking formatting (cargo fmt)",
        cmd::cargo(root).args(["fmt", "--all", "--check"]),
    )?;

    let mut clippy = cmd::cargo(root);
    clippy.arg("clippy");
    for package in CLIPPY_PACKAGES {
        clippy.args(["-p", package]);
    }
    clippy.args(["--all-targets", "--", "-D", "warnings"]);
    cmd::run("step 2/3: linting (cargo clippy)", &mut clippy)?;

    if !crate::is_root() {
        println!("warning: not running as root: kernel integration and end-to-end tests will skip");
    }
    let mut test = cmd::cargo(root);
    test.arg("test");
    for package in TEST_PACKAGES {
        test.args(["-p", package]);
    }
    if !args.is_empty() {
        test.arg("--").args(args);
    }
    cmd::run("step 3/3: testing (cargo test)", &mut test)
}

fn minutes_seconds(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}
