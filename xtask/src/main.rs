//! Development tasks for why502: `cargo xtask bootstrap | run | test`.

mod bootstrap;
mod cmd;
mod run;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use bootstrap::Level;

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "why502 development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Rust toolchain pieces and Debian packages needed to run and test (idempotent).
    Bootstrap,
    /// Build the agent and run it in the foreground (as root).
    Run {
        /// Build with the release profile (the default).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Build with the dev profile.
        #[arg(long)]
        debug: bool,
        /// Arguments passed to `why502 agent`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check formatting, run clippy, then run unit, kernel and end-to-end tests.
    Test {
        /// Arguments passed to the test binaries (after `cargo test ... --`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.task {
        Task::Bootstrap => bootstrap::run(Level::Test),
        Task::Run { debug, args, .. } => run::run(&root, debug, &args),
        Task::Test { args } => test::run(&root, &args),
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

/// Whether we run with an effective uid of 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
