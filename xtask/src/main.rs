//! Development tasks for why502: `cargo xtask bootstrap | run | test | bench | lab | fuzz`,
//! and its packaging: `deb | install | uninstall`.

mod bench;
mod bootstrap;
mod cmd;
mod deb;
mod fuzz;
mod install;
mod lab;
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
    /// Check formatting, run clippy, fuzz briefly, then run unit, kernel and end-to-end tests.
    Test {
        /// Arguments passed to the test binaries (after `cargo test ... --`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run one scenario of the 502 lab (a real nginx, backends, one injected fault) and
    /// show what the agent made of it (as root).
    Lab {
        /// List the scenarios.
        #[arg(long)]
        list: bool,
        /// The scenario to run (see --list).
        #[arg(required_unless_present = "list")]
        scenario: Option<String>,
    },
    /// Measure the agent's overhead, throughput, latency, memory and start-up (as root);
    /// writes target/bench/results.json.
    Bench {
        /// A ~3-minute smoke run instead of the full ~10-minute one (8 repetitions).
        #[arg(long)]
        quick: bool,
        /// Run only these sections (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Section>,
    },
    /// Fuzz the ring-record decoder, the config loader and the API's query parsing for
    /// longer than `cargo xtask test` does, adding what is new to `fuzz/corpus/` and
    /// minimising it (review and commit it).
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 300)]
        seconds: u32,
        /// Run as `cargo xtask test` does: new inputs to a scratch directory, the corpus
        /// left as it is.
        #[arg(long)]
        check: bool,
        /// The targets to fuzz (default: all of them).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        targets: Vec<String>,
    },
    /// Build the Debian package: target/debian/why502_<version>-<rev>_<arch>.deb.
    Deb,
    /// Install what the .deb installs, in the same places (as root), for hosts that are not
    /// Debian-based; enables and starts the service when systemd runs.
    Install(InstallArgs),
    /// Remove exactly what `install` put there (a configuration edited since stays).
    Uninstall(InstallArgs),
}

#[derive(clap::Args)]
struct InstallArgs {
    /// Replaces /usr in the package's paths (/etc stays /etc).
    #[arg(long, default_value = "/usr", value_name = "DIR")]
    prefix: PathBuf,
    /// Install under this directory instead of / (staging; no systemctl).
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
    /// Use the release binary already built instead of building it.
    #[arg(long)]
    no_build: bool,
}

impl InstallArgs {
    fn options(self) -> install::Options {
        install::Options {
            prefix: self.prefix,
            destdir: self.destdir,
            no_build: self.no_build,
        }
    }
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
        Task::Lab { list, scenario } => lab::run(&root, list, scenario.as_deref()),
        Task::Bench { quick, only } => bench::run(&root, &bench::Options { quick, only }),
        Task::Fuzz {
            seconds,
            check,
            targets,
        } => {
            bootstrap::cargo_fuzz()?;
            let targets = if targets.is_empty() {
                fuzz::TARGETS.iter().map(|t| t.to_string()).collect()
            } else {
                targets
            };
            let mode = if check {
                fuzz::Mode::Check
            } else {
                fuzz::Mode::Grow
            };
            fuzz::run(&root, &targets, seconds, mode)
        }
        Task::Deb => deb::run(&root),
        Task::Install(args) => install::install(&root, &args.options()),
        Task::Uninstall(args) => install::uninstall(&args.options()),
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
