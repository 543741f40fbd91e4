//! `why502-bench`: the load generator `cargo xtask bench` drives.
//!
//! - `refuse`: refused TCP connects to closed loopback ports, as fast as the machine allows
//!   (or at a set rate), from several threads with non-blocking sockets.
//! - `fork`: short-lived processes that `_exit(1)`, so that every exit is reported.
//! - `syscalls`: a tight `getppid` loop on one thread, timed per call: what the syscall
//!   tracing slow path adds to every syscall.
//!
//! Each subcommand is bounded in count and in time, and prints one JSON line with what it
//! did. Only loopback (127.0.0.0/8) is ever a target.

mod fork;
mod refuse;
mod syscalls;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "why502-bench",
    about = "Load generator for `cargo xtask bench`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Refused connects to closed loopback ports.
    Refuse(refuse::Args),
    /// Processes that fork and `_exit(1)` at once.
    Fork(fork::Args),
    /// A tight loop of `getppid` calls, timed: ns per syscall.
    Syscalls(syscalls::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Refuse(args) => refuse::run(&args),
        Command::Fork(args) => fork::run(&args),
        Command::Syscalls(args) => syscalls::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("why502-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a duration given in seconds, fractions allowed (`10`, `0.5`).
fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=3600.0).contains(&secs) {
        return Err("must be between 0 and 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Refuses any address outside 127.0.0.0/8: this tool only ever targets loopback.
fn loopback(addr: Ipv4Addr) -> Result<Ipv4Addr> {
    if !addr.is_loopback() {
        bail!("{addr} is not a loopback address (127.0.0.0/8)");
    }
    Ok(addr)
}

/// The thread count to use: `requested`, or one per CPU.
fn threads(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
