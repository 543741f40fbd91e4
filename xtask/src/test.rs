//! `cargo xtask test`: formatting, lints, then every test suite, stopping at the first failure.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bootstrap::{self, Level};
use crate::cmd;
use crate::deb;
use crate::fuzz;

/// The host crates; agent-ebpf only builds for the BPF target, via agent/build.rs.
const CLIPPY_PACKAGES: &[&str] = &[
    "why502",
    "agent-common",
    "xtask",
    "why502-e2e",
    "why502-bench",
];
/// Seconds of fuzzing per target in the suite: short enough for every run (about a minute
/// for the three), long enough to find a shallow panic; `cargo xtask fuzz` goes deeper.
const FUZZ_SECONDS: u32 = 20;
const TEST_PACKAGES: &[&str] = &[
    "why502",
    "agent-common",
    "why502-e2e",
    "why502-bench",
    "xtask",
];

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let start = Instant::now();
    let result = steps(root, args);
    // Each step's wall time was printed as it ended (see `step`); the total last.
    let elapsed = minutes_seconds(start.elapsed());
    match result {
        Ok(()) => println!("==> all checks passed in {elapsed}"),
        Err(_) => println!("==> stopped after {elapsed}"),
    }
    result
}

fn steps(root: &Path, args: &[String]) -> Result<()> {
    step("installing what the tests need (bootstrap)", || {
        bootstrap::run(Level::Test)
    })?;

    step("step 1/6: checking formatting (cargo fmt)", || {
        cmd::run(
            "step 1/6: checking formatting (cargo fmt)",
            cmd::cargo(root).args(["fmt", "--all", "--check"]),
        )
    })?;

    let mut clippy = cmd::cargo(root);
    clippy.arg("clippy");
    for package in CLIPPY_PACKAGES {
        clippy.args(["-p", package]);
    }
    clippy.args(["--all-targets", "--", "-D", "warnings"]);
    step("step 2/6: linting (cargo clippy)", || {
        cmd::run("step 2/6: linting (cargo clippy)", &mut clippy)
    })?;

    // Before the long suites: it needs no root and fails in about a minute.
    step(
        &format!("step 3/6: fuzzing each target for {FUZZ_SECONDS} s (cargo fuzz)"),
        || {
            let targets: Vec<String> = fuzz::TARGETS.iter().map(|t| t.to_string()).collect();
            fuzz::run(root, &targets, FUZZ_SECONDS, fuzz::Mode::Check)
        },
    )?;

    if crate::is_root() {
        // tests/tests/package.rs installs this package; built here, so that the test needs
        // no cargo of its own (a release build inside `cargo test` would wait on its lock).
        step(
            "step 4/6: building the Debian package (cargo xtask deb)",
            || deb::build(root).map(drop),
        )?;
    } else {
        println!("warning: not running as root: kernel integration and end-to-end tests will skip");
        println!("==> step 4/6: building the Debian package: skipped (its test needs root)");
    }
    let mut test = cmd::cargo(root);
    test.arg("test");
    for package in TEST_PACKAGES {
        test.args(["-p", package]);
    }
    if !args.is_empty() {
        test.arg("--").args(args);
    }
    step("step 5/6: testing (cargo test)", || {
        cmd::run("step 5/6: testing (cargo test)", &mut test)
    })?;
    if args.is_empty() {
        classic_tracepoints(root)?;
    }
    Ok(())
}

/// Runs one step and prints its wall time, whether it passed or not: where the suite's
/// time goes shows in every CI log.
fn step(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let start = Instant::now();
    let result = f();
    let outcome = if result.is_ok() { "done" } else { "failed" };
    println!(
        "==> {what}: {outcome} in {}",
        minutes_seconds(start.elapsed())
    );
    result
}

/// The kernel and end-to-end tests that decide detections, once more with the agent on
/// classic tracepoints only: the fallback for kernels without BTF (or without
/// `tcp_sendmsg_locked`) stays tested although this machine would use `tp_btf`.
fn classic_tracepoints(root: &Path) -> Result<()> {
    let suites: [(&str, &[&str]); 2] = [
        (
            "why502",
            &[
                "connect",
                "tcp",
                "netns",
                "upstream_end",
                "process",
                "proxy_marking",
                "threads",
                "synack",
            ],
        ),
        ("why502-e2e", &["incidents", "backend_killed"]),
    ];
    for (i, (package, tests)) in suites.iter().enumerate() {
        let mut test = cmd::cargo(root);
        test.env("WHY502_TEST_TRACEPOINTS", "classic")
            .args(["test", "-p", package]);
        for name in *tests {
            test.args(["--test", name]);
        }
        let what = format!(
            "step 6/6 ({}/{}): {package} tests {} again on classic tracepoints only",
            i + 1,
            suites.len(),
            tests.join(", ")
        );
        step(&what, || cmd::run(&what, &mut test))?;
    }
    Ok(())
}

fn minutes_seconds(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}
