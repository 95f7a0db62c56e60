//! `seckill faults`: the fault lab. Every chosen strategy under every chosen
//! fault, each cell on a topology of its own (private Redis or Cluster, two
//! or more instances, a fault proxy per instance; [`topology`]), with an
//! open-loop load before, during and after the fault, the sale
//! history-checked, and a verdict per cell ([`cell`]). The faults are in
//! [`fault`], the network's in [`proxy`], the reports in [`report`].
//!
//! Interrupted (ctrl-c) or failed, it undoes the fault under way and stops
//! everything it started before it returns: the topology's drop does it.

pub mod cell;
pub mod fault;
pub mod proxy;
pub mod report;
pub mod topology;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use self::cell::{Cell, Lab};
use self::fault::Fault;
use self::report::Matrix;
use crate::lab::loadgen::Progress;
use crate::strategy::StrategyKind;

/// The phases' lengths when none is given, in seconds: the command line's
/// and the status page's (`POST /api/faults`).
pub const BEFORE_S: u64 = 2;
pub const HOLD_S: u64 = 3;
pub const AFTER_S: u64 = 4;

fn seconds(n: u64) -> humantime::Duration {
    Duration::from_secs(n).into()
}

/// `seckill faults` options.
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// Strategies, comma-separated (default: every strategy in the catalogue).
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<String>,

    /// Faults, comma-separated (default: all of them): holder-pause,
    /// redis-pause, redis-restart-always, redis-restart-everysec,
    /// redis-restart-none (redis-restart: those three), failover,
    /// failover-wait, partition, slow-net, clock-jump, instance-kill.
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<String>,

    /// Requests a second, spread over the instances (open loop: sent on
    /// schedule whatever the answers, so a stalled server shows as waits).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,

    /// Connections, spread over the instances.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,

    /// `seckill serve` instances per cell.
    #[arg(long, default_value_t = 2)]
    pub instances: usize,

    /// Load before the fault.
    #[arg(long, default_value_t = seconds(BEFORE_S))]
    pub before: humantime::Duration,

    /// How long a fault lasts (a holder's pause: at least three lock TTLs).
    #[arg(long, default_value_t = seconds(HOLD_S))]
    pub hold: humantime::Duration,

    /// Load after the fault is undone.
    #[arg(long, default_value_t = seconds(AFTER_S))]
    pub after: humantime::Duration,

    /// The instances' `LOCK_TTL_MS`.
    #[arg(long, default_value_t = 500)]
    pub lock_ttl_ms: u64,

    /// Seeds every choice the lab makes (which instance, the jitter).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Write faults.json, faults.md and faults.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Progress on stdout: `ndjson` prints each finished cell as one JSON
    /// line (strategy, fault, judgement, words, figures, evidence, repro)
    /// and sends the final table to stderr, so stdout is the lines alone.
    /// The status page's fault control reads them.
    #[arg(long, value_enum, default_value = "none")]
    pub progress: ProgressFormat,

    /// The `seckill` binary the instances run (default: this one).
    #[arg(long, hide = true)]
    pub serve_bin: Option<PathBuf>,
}

/// What `--progress` prints on stdout as each cell finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressFormat {
    /// Nothing: the table at the end.
    None,
    /// One JSON line per cell ([`cell::CellLine`]); the table on stderr.
    Ndjson,
}

impl FaultArgs {
    fn faults(&self) -> anyhow::Result<Vec<Fault>> {
        if self.faults.is_empty() {
            return Ok(Fault::ALL.to_vec());
        }
        let mut faults = Vec::new();
        for name in &self.faults {
            for fault in Fault::parse(name).map_err(anyhow::Error::msg)? {
                if !faults.contains(&fault) {
                    faults.push(fault);
                }
            }
        }
        Ok(faults)
    }

    fn lab(&self) -> anyhow::Result<Lab> {
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.instances >= 2, "--instances must be at least 2");
        anyhow::ensure!(self.lock_ttl_ms > 0, "--lock-ttl-ms must be above 0");
        anyhow::ensure!(
            !self.hold.is_zero() && !self.after.is_zero(),
            "--hold and --after must be above 0"
        );
        let bin = match &self.serve_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe().context("cannot find this binary")?,
        };
        Ok(Lab {
            rate: crate::lab::loadgen::Rate::new(self.rate, None)?.per_s,
            concurrency: self.concurrency,
            instances: self.instances,
            before: *self.before,
            hold: *self.hold,
            after: *self.after,
            lock_ttl: Duration::from_millis(self.lock_ttl_ms),
            seed: self.seed,
            bin,
        })
    }

    /// The command that runs one cell again, with this run's settings.
    fn repro(&self, strategy: StrategyKind, fault: Fault) -> String {
        format!(
            "seckill faults --strategies {strategy} --faults {fault} --rate {} -c {} --instances {} \
             --before {}ms --hold {}ms --after {}ms --lock-ttl-ms {} --seed {}",
            self.rate,
            self.concurrency,
            self.instances,
            // In milliseconds: humantime's own form (`1s 500ms`) has a space
            // a shell would split.
            self.before.as_millis(),
            self.hold.as_millis(),
            self.after.as_millis(),
            self.lock_ttl_ms,
            self.seed
        )
    }
}

/// Runs the matrix and prints it; fails when a cell has no verdict.
pub async fn run(args: FaultArgs) -> anyhow::Result<()> {
    let strategies = StrategyKind::named_or_all(&args.strategies).map_err(anyhow::Error::msg)?;
    let faults = args.faults()?;
    let lab = args.lab()?;
    eprintln!(
        "seckill faults: {} strategies × {} faults, {} instances, {} req/s, stock {} a cell ({} cores; the load generator, the instances and Redis share them)",
        strategies.len(),
        faults.len(),
        lab.instances,
        lab.rate,
        lab.stock(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let ndjson = args.progress == ProgressFormat::Ndjson;
    let matrix = tokio::select! {
        matrix = run_matrix(&args, &lab, &strategies, &faults, |cell| {
            eprintln!("  {:<18} {:<24} {}", cell.strategy.as_str(), cell.fault, cell.words);
            if ndjson {
                print_line(cell);
            }
        }) => matrix,
        // Dropping the matrix's future drops the cell's topology, which
        // undoes the fault and stops every process it started.
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted: every fault undone, every process stopped"),
    };
    // With `--progress ndjson`, stdout is the cells' lines alone.
    let say = |text: String| {
        if ndjson {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    };
    say(format!("\n{}", report::table(&matrix)));
    if let Some(dir) = &args.out {
        report::write_files(dir, &matrix)?;
        say(format!(
            "wrote {0}/faults.json, {0}/faults.md, {0}/faults.svg",
            dir.display()
        ));
    }
    let errors = matrix.errors();
    anyhow::ensure!(
        errors == 0,
        "{errors} cells have no verdict (a fault that did not happen, or a cell that could not run): see above"
    );
    Ok(())
}

/// `cell` as one line on stdout, flushed at once: a reader acts on each
/// cell as it ends, not when a buffer fills. A stdout that is gone (the
/// reader stopped) is no reason to stop the lab, whose cleanup matters more.
fn print_line(cell: &Cell) {
    use std::io::Write;
    match serde_json::to_string(&cell.line()) {
        Ok(line) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
        Err(err) => eprintln!("cannot write the cell's progress line: {err}"),
    }
}

/// Every cell, faults outer (a column at a time), reported as each ends.
pub async fn run_matrix(
    args: &FaultArgs,
    lab: &Lab,
    strategies: &[StrategyKind],
    faults: &[Fault],
    on_cell: impl Fn(&Cell),
) -> Matrix {
    let observe: crate::lab::loadgen::Observer = Arc::new(|_: Progress| {});
    let mut cells = Vec::new();
    for &fault in faults {
        for &strategy in strategies {
            let cell = cell::run(lab, strategy, fault, &observe, args.repro(strategy, fault)).await;
            on_cell(&cell);
            cells.push(cell);
        }
    }
    Matrix {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: commit(),
        machine: crate::lab::report::Machine::here(),
        strategies: strategies.to_vec(),
        faults: faults.iter().map(|f| f.to_string()).collect(),
        cells,
    }
}

/// The checkout's commit, when run from one (`-dirty` with local changes).
fn commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> FaultArgs {
        match Cli::try_parse_from(args).map(|cli| cli.command) {
            Ok(Some(Command::Faults(args))) => args,
            other => panic!("not a faults command line: {other:?}"),
        }
    }

    #[test]
    fn a_cells_command_runs_that_cell_again_with_the_same_settings() {
        let args = parse([
            "seckill", "faults", "--hold", "1500ms", "--seed", "7", "--rate", "50",
        ]);
        let repro = args.repro(StrategyKind::Lock, Fault::HolderPause);
        let again = parse(repro.split_whitespace());
        assert_eq!(again.strategies, ["lock"]);
        assert_eq!(again.faults, ["holder-pause"]);
        assert_eq!(*again.hold, Duration::from_millis(1500));
        assert_eq!(*again.before, Duration::from_secs(BEFORE_S));
        assert_eq!((again.seed, again.rate), (7, 50.0));
    }
}
