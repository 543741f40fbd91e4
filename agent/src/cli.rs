//! Command-line interface.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "why502",
    version,
    about = "Explains HTTP 502 spikes from kernel evidence"
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
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Configuration file [default: /etc/why502/why502.toml, if it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print every event as one JSON line on standard output.
    #[arg(long)]
    pub print_events: bool,
    /// Override agent.log_level (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,
}
