//! The command line: one binary, clap subcommands. With no subcommand the
//! binary serves, so `cargo run --release` starts the service.

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::lab::bench::BenchArgs;
use crate::lab::faults::FaultArgs;

/// seckill: a flash-sale service and concurrency lab.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings for serving when no subcommand is given.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and status page (what `cargo run --release` does).
    /// Boxed: the settings are far larger than the other commands' arguments.
    Serve(Box<Config>),
    /// Race the strategies under load and report requests/s, latency, and the
    /// truths of each sale (oversold, undersold, lost orders), with the HTTP
    /// ceiling measured in the same run. Starts its own server unless `--url`.
    Bench(BenchArgs),
    /// The fault lab: each strategy under each fault (a paused lock holder,
    /// a paused or restarted Redis, a failover, a partition, a slow link, a
    /// clock jump, a killed instance) on a private topology, every cell
    /// history-checked and judged. Exits non-zero if a fault did not happen.
    Faults(FaultArgs),
}

/// Runs the chosen subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Serve(config)) => crate::startup::serve(*config).await,
        Some(Command::Bench(args)) => crate::lab::bench::run(args).await,
        Some(Command::Faults(args)) => crate::lab::faults::run(args).await,
        None => crate::startup::serve(cli.serve).await,
    }
}
