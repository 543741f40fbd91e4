//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_SOCKET;

/// The client commands' exit codes, for `--help` (and [`crate::client::Exit`]).
pub const EXIT_CODES: &str = "Exit codes: 0 success, 1 error, 2 usage, 3 agent not running, \
                              4 no such incident (or none for --last).";

/// `why502 --version`: the release and the commit it was built from (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WHY502_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "why502",
    version = VERSION,
    about = "Explains HTTP 502 spikes from kernel evidence",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load the kernel probes and watch (needs root or the capabilities in
    /// deploy/why502.service).
    Agent(AgentArgs),
    #[command(flatten)]
    Client(ClientCommand),
    /// Write the man pages and shell completions into DIR (for packaging: hidden, so
    /// neither the pages nor the completions list it).
    #[command(hide = true)]
    GenerateAssets {
        /// Where to write man/ and completions/.
        dir: PathBuf,
    },
}

/// The commands that ask a running agent, over its API socket.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// List incidents, newest first.
    #[command(after_help = EXIT_CODES)]
    Incidents(IncidentsArgs),
    /// Explain one incident: what failed, the likely cause and its evidence, what to do.
    #[command(after_help = EXIT_CODES)]
    Explain(ExplainArgs),
    /// Print a line when an incident opens, changes or closes, until Ctrl-C.
    #[command(after_help = EXIT_CODES)]
    Watch(WatchArgs),
    /// Show what the agent watches and what it lost: probes, events, drops, uptime.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
}

/// How to reach the agent, and how to answer.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The agent's API socket (api.socket in its configuration).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "WHY502_SOCKET")]
    pub socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct IncidentsArgs {
    /// Only incidents active since then: a duration back from now (1h, 30m, 2d) or an
    /// RFC 3339 time (2026-11-21T14:00:00Z).
    #[arg(long, value_name = "WHEN", value_parser = since_arg)]
    pub since: Option<String>,
    /// Only incidents of this upstream, as shown (127.0.0.1:9000, unix:/run/php/fpm.sock):
    /// an address in every network namespace; with its "[netns N]" only in that one.
    #[arg(long, value_name = "UPSTREAM")]
    pub upstream: Option<String>,
    /// Only incidents of this proxy: its command name (nginx) or systemd unit.
    #[arg(long, value_name = "NAME")]
    pub proxy: Option<String>,
    /// At most this many incidents (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "last"])))]
pub struct ExplainArgs {
    /// The incident's id, as `why502 incidents` shows it.
    #[arg(value_name = "ID")]
    pub id: Option<u64>,
    /// Explain the most recent incident.
    #[arg(long)]
    pub last: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Checks `--since` before asking the agent, and passes it on as written: the agent
/// resolves durations against its own clock.
fn since_arg(text: &str) -> Result<String, crate::sinks::api::SinceError> {
    crate::sinks::api::parse_since(text, std::time::SystemTime::now())?;
    Ok(text.to_string())
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file [default: /etc/why502/why502.toml, if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Check the configuration (syntax, keys, values, bounds) and exit: 0 and one line
    /// when it is valid, 1 and the first problem when not. Loads no probes.
    #[arg(long)]
    pub check_config: bool,
    /// Print every event as one JSON line on standard output.
    #[arg(long)]
    pub print_events: bool,
    /// Print every metric family the agent registers (name and type, one a line) and
    /// exit: for the tests that hold the dashboard and alert rules to them.
    #[arg(long, hide = true)]
    pub list_metrics: bool,
    /// Override agent.log_level (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,
}
