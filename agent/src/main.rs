//! The `why502` binary: parses the command line and hands over to the library.

mod generate;

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use why502::{
    agent::Agent,
    cli::{AgentArgs, Cli, Command},
    config::{self, Config},
    error_chain,
};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Client(command) => std::process::exit(why502::client::run(command).code()),
        Command::GenerateAssets { dir } => generate::write_assets(&dir).map(|written| {
            for path in written {
                println!("{}", dir.join(path).display());
            }
        }),
    };
    if let Err(err) = result {
        eprintln!("why502: {}", error_chain(err.as_ref()));
        std::process::exit(1);
    }
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    if args.list_metrics {
        for (name, kind) in why502::sinks::metrics::Metrics::families()? {
            println!("{name} {kind}");
        }
        return Ok(());
    }
    let mut config = Config::load(args.config.as_deref())?;
    if args.check_config {
        // Config::load has validated it all (an error exits 1 above, naming the key).
        match &args.config {
            Some(path) => println!("{}: the configuration is valid", path.display()),
            None if std::path::Path::new(config::DEFAULT_PATH).exists() => {
                println!("{}: the configuration is valid", config::DEFAULT_PATH)
            }
            None => println!(
                "no {}: the agent would run with the built-in defaults",
                config::DEFAULT_PATH
            ),
        }
        return Ok(());
    }
    if let Some(level) = args.log_level {
        config.agent.log_level = level;
    }
    env_logger::Builder::new()
        .filter_level(config::log_level(&config.agent.log_level).unwrap_or(log::LevelFilter::Info))
        .format_timestamp_millis()
        .init();
    // Before any other thread exists: setns changes only the calling thread's namespace.
    why502::sources::enrich::cgroup_ns::enter_host_and_log();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let print_events = args.print_events;
        let mut printer = None;
        let mut agent = Agent::start(&config, |bus| {
            if print_events {
                printer = Some(spawn_printer(bus.subscribe()));
            }
        })?;
        // Handlers first: once "running" is logged, a SIGTERM must find them in place.
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        log::info!("why502 agent running");
        tokio::select! {
            _ = sigint.recv() => log::info!("interrupted, detaching probes"),
            _ = sigterm.recv() => log::info!("terminated, detaching probes"),
            err = agent.wait() => return Err(anyhow::Error::new(err).context("agent failed")),
        }
        drop(printer);
        Ok(())
    })
}

/// Writes each event as a JSON line; a closed stdout (a pipe to `head`) ends the printer.
fn spawn_printer(
    mut events: tokio::sync::broadcast::Receiver<std::sync::Arc<why502::model::event::Event>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(n)) => {
                    log::warn!("event printer fell behind: {n} events not printed");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let mut stdout = std::io::stdout().lock();
            let written = serde_json::to_writer(&mut stdout, &*event)
                .map_err(std::io::Error::from)
                .and_then(|()| stdout.write_all(b"\n"))
                .and_then(|()| stdout.flush());
            if written.is_err() {
                return;
            }
        }
    })
}
