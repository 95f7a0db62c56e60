//! `seckill bench`: races the strategies under load and reports the truth.
//!
//! By default it starts its own server (this binary, `serve`, on a free
//! loopback port, with a private Redis and a fresh SQLite file) so one command
//! gives a complete, comparable run; `--url` points it at a running server
//! instead. Settings for the spawned server come from the environment as usual
//! (`LOCK_TTL_MS=500 seckill bench`). The load itself is [`crate::lab::loadgen`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::infra::redis_cluster::{RedisCluster, RedisClusterOptions};
use crate::infra::redis_conn::RedisTarget;
use crate::infra::redis_server::{RedisServer, RedisServerOptions};
use crate::lab::cpu::{self, Pids};
use crate::lab::loadgen::{self, Payments, Progress, RacePlan, Rate, Target};
use crate::lab::report;
use crate::lab::scratch::{TempDir, stop_child, wait_ready};
use crate::sale::MAX_STOCK;
use crate::strategy::StrategyKind;

/// `seckill bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A running server (`http://host:port`). Unset: start one on embedded defaults.
    #[arg(long)]
    pub url: Option<String>,

    /// Redis for the server this command starts (unset: a private one). With
    /// `--url`, the server's Redis, to check that every 201 is in the order log.
    #[arg(long)]
    pub redis_url: Option<String>,

    /// A Redis Cluster instead, by seed nodes (comma-separated `redis://`
    /// URLs): for the server this command starts (`REDIS_CLUSTER_URLS`), or
    /// with `--url` the server's, for the order-log check. Each strategy's
    /// item lands on the master of its slot.
    #[arg(long, value_delimiter = ',', conflicts_with = "redis_url")]
    pub redis_cluster_urls: Vec<String>,

    /// Start a private Redis Cluster (3 masters, 3 replicas, on loopback)
    /// for the server this command starts.
    #[arg(long, conflicts_with_all = ["redis_url", "redis_cluster_urls", "url"])]
    pub redis_cluster: bool,

    /// Database for the server this command starts (unset: a fresh SQLite file).
    #[arg(long)]
    pub database_url: Option<String>,

    /// Bearer token for creating the items, if the server wants one.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Strategies to race, comma-separated (default: every strategy in the
    /// catalogue, in its order).
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<String>,

    /// `sell-out`: each strategy sells a fresh item's stock and the run ends
    /// at the first `sold_out`. `throughput`: the stock never runs out and
    /// every strategy runs for `--duration` (default 10 s), each request a
    /// new buyer: what a purchase costs, not how fast a sale ends.
    #[arg(long, value_enum, default_value_t = Mode::SellOut)]
    pub mode: Mode,

    /// Units per item (each strategy gets a fresh item with this stock).
    /// Ignored in throughput mode.
    #[arg(long, default_value_t = 20_000)]
    pub stock: u64,

    /// Units one user may buy.
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: u64,

    /// Distinct buyers per strategy (default: four per unit).
    #[arg(long)]
    pub users: Option<u64>,

    /// Connections (one request in flight each). In the closed loop (no
    /// `--rate`) each sends its next request when the last is answered; with
    /// `--rate` they take the scheduled requests as they come free.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,

    /// Open loop: start this many requests a second on a fixed schedule,
    /// whatever the answers, and report latency from each request's
    /// scheduled start (corrected for coordinated omission) beside the
    /// latency from its actual send, with late and dropped sends counted.
    #[arg(long)]
    pub rate: Option<f64>,

    /// With `--rate`: ramp linearly from this rate to `--rate` over each
    /// strategy's run.
    #[arg(long, requires = "rate")]
    pub ramp_from: Option<f64>,

    /// Longest run per strategy (e.g. `30s`, `2m`); sell-out mode: 30 s,
    /// throughput mode: 10 s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Stop a strategy's run at its first `sold_out` (else run for
    /// `--duration`). Sell-out mode only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub until_sold_out: bool,

    /// With `--url`: the server's pid, if it runs on this machine, for its
    /// CPU per request. (Redis's is asked of Redis itself.)
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Buyers come back at random instead of each buying once.
    #[arg(long)]
    pub repeat_buyers: bool,

    /// Sell reserved units (sell-out mode): each sale is restocked with
    /// this payment window (e.g. `2s`); a buyer answered 201 pays at once
    /// with probability `--pay-ratio`, and the other orders expire, their
    /// units back on sale. The run then lasts `--duration` (a sale sells out
    /// and refills), and the history check follows each order's lifecycle.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub payment_window: Option<Duration>,

    /// With `--payment-window`: the share of buyers who pay, 0 to 1.
    #[arg(long, default_value_t = 0.5, requires = "payment_window")]
    pub pay_ratio: f64,

    /// How long to measure the HTTP ceiling (`/healthz`), before every run.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub ceiling_duration: Duration,

    /// Runs per strategy, interleaved (every strategy once, then again),
    /// the ceiling measured before each; the report gives the median and
    /// the range of every figure.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,

    /// Write results.json, results.md and chart.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Print every column (about 400 characters wide), as results.md has
    /// them; by default the terminal gets the ones that decide, within 120.
    #[arg(long)]
    pub wide: bool,
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// How each strategy sells a stock out: oversell, undersell, time.
    SellOut,
    /// What a purchase costs when the stock never runs out.
    Throughput,
}

/// Runs the bench and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let strategies = StrategyKind::named_or_all(&args.strategies).map_err(anyhow::Error::msg)?;
    if args.concurrency == 0 || args.stock == 0 || args.runs == 0 {
        bail!("--concurrency, --stock and --runs must be at least 1");
    }
    let rate = args
        .rate
        .map(|per_s| Rate::new(per_s, args.ramp_from))
        .transpose()?;
    let payments = args
        .payment_window
        .map(|window| Payments::new(window, args.pay_ratio))
        .transpose()?;
    if payments.is_some() && args.mode == Mode::Throughput {
        bail!("--payment-window is a sell-out mode setting: throughput mode never sells out");
    }
    let plan = match args.mode {
        Mode::SellOut => RacePlan {
            strategies,
            stock: args.stock,
            per_user_limit: args.per_user_limit.max(1),
            users: args.users.unwrap_or(args.stock.saturating_mul(4)),
            concurrency: args.concurrency,
            duration: args.duration.unwrap_or(Duration::from_secs(30)),
            // A sale with a payment window sells out and refills: it runs
            // for its duration.
            until_sold_out: args.until_sold_out && payments.is_none(),
            repeat_buyers: args.repeat_buyers,
            ceiling_duration: args.ceiling_duration,
            item_prefix: "bench".into(),
            rate,
            runs: args.runs,
            payments,
        },
        Mode::Throughput => RacePlan {
            strategies,
            // More than any run sells: the stock never runs out.
            stock: MAX_STOCK,
            per_user_limit: 1,
            users: u64::MAX,
            concurrency: args.concurrency,
            duration: args.duration.unwrap_or(Duration::from_secs(10)),
            until_sold_out: false,
            repeat_buyers: false,
            ceiling_duration: args.ceiling_duration,
            item_prefix: "bench".into(),
            rate,
            runs: args.runs,
            payments: None,
        },
    };

    let (mut target, server) = match &args.url {
        Some(url) => (
            Target::from_url(url, args.admin_token.clone(), given_redis(&args)).await?,
            None,
        ),
        None => {
            let server = SpawnedServer::start(&args).await?;
            (server.target.clone(), Some(server))
        }
    };
    target.pids = Pids {
        server: server.as_ref().map(|s| s.child.id()).or(args.server_pid),
        redis: match &target.redis {
            Some(redis) => cpu::redis_pids(redis).await,
            None => Vec::new(),
        },
    };
    let pid = target.pids.server;
    eprintln!(
        "seckill bench: {} at concurrency {}, stock {}, {} ({} cores; load generator, server and Redis share them)",
        target.host,
        plan.concurrency,
        plan.stock,
        if server.is_some() {
            "server started by this command"
        } else {
            "existing server"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let peaks: Arc<Mutex<BTreeMap<StrategyKind, f64>>> = Arc::default();
    let observer = progress_observer(&plan, pid, Arc::clone(&peaks));
    let started = Instant::now();
    let report = loadgen::race(&target, &plan, observer).await?;
    let rss = peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let machine = report::Machine::here();

    println!();
    println!("{}", report::table(&report, &rss, args.wide));
    if let Some(ceiling) = report.ceiling_spread() {
        println!(
            "HTTP ceiling (/healthz, c={}, before each run): median {:.0} req/s ({:.0}-{:.0}). Total {:.1} s.",
            plan.concurrency,
            ceiling.median,
            ceiling.min,
            ceiling.max,
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(dir) = &args.out {
        report::write_files(dir, &report, &rss, &machine)?;
        println!(
            "wrote {0}/results.json, {0}/results.md, {0}/chart.svg",
            dir.display()
        );
    }
    drop(server);
    Ok(())
}

/// Progress bars on the terminal, and per-strategy peak server memory.
fn progress_observer(
    plan: &RacePlan,
    server_pid: Option<u32>,
    peaks: Arc<Mutex<BTreeMap<StrategyKind, f64>>>,
) -> loadgen::Observer {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    // A spinner per ceiling measurement (one before every run).
    let ceiling: Arc<Mutex<Option<ProgressBar>>> = Arc::default();
    let current: Arc<Mutex<Option<ProgressBar>>> = Arc::default();
    let stock = plan.stock;
    let sells_out = plan.until_sold_out;
    Arc::new(move |event| match event {
        Progress::Ceiling {
            requests,
            elapsed_s,
        } => {
            let mut ceiling = ceiling.lock().unwrap_or_else(|e| e.into_inner());
            let bar = ceiling.get_or_insert_with(|| {
                bars.add(ProgressBar::new_spinner().with_prefix("/healthz"))
            });
            bar.set_message(format!(
                "{:.0} req/s",
                requests as f64 / elapsed_s.max(1e-3)
            ));
            bar.tick();
        }
        Progress::Started { strategy, .. } => {
            if let Some(bar) = ceiling.lock().unwrap_or_else(|e| e.into_inner()).take() {
                bar.finish();
            }
            if let Some(pid) = server_pid {
                reset_peak_rss(pid);
            }
            // A bar when the run ends at the sell-out; else a spinner (the
            // stock is out of reach by design).
            let bar = if sells_out {
                ProgressBar::new(stock).with_style(style.clone())
            } else {
                ProgressBar::new_spinner()
            };
            let bar = bars.add(bar.with_prefix(strategy.to_string()));
            *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
        }
        Progress::Running {
            requests,
            purchased,
            elapsed_s,
            ..
        } => {
            if let Some(bar) = &*current.lock().unwrap_or_else(|e| e.into_inner()) {
                bar.set_position(purchased);
                bar.set_message(format!(
                    "{:.0} req/s",
                    requests as f64 / elapsed_s.max(1e-3)
                ));
            }
        }
        Progress::Verifying { strategy } => {
            if let Some(pid) = server_pid
                && let Some(peak) = peak_rss_mib(pid)
            {
                // The highest over the strategy's runs.
                let mut peaks = peaks.lock().unwrap_or_else(|e| e.into_inner());
                let highest = peaks.entry(strategy).or_insert(peak);
                *highest = highest.max(peak);
            }
            if let Some(bar) = &*current.lock().unwrap_or_else(|e| e.into_inner()) {
                bar.set_message("checking the truths...");
            }
        }
        Progress::Finished(result) => {
            if let Some(bar) = current.lock().unwrap_or_else(|e| e.into_inner()).take() {
                bar.finish_with_message(format!(
                    "{:.0} req/s, p99 {:.1} ms, oversold {}",
                    result.requests_per_s, result.latency.p99_ms, result.oversold
                ));
            }
        }
    })
}

/// Resets the kernel's peak-RSS mark (VmHWM) so the next reading is this
/// strategy's own peak. Best effort: without it the peak covers the whole run.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Peak resident memory (VmHWM) of `pid` in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The Redis (or cluster) the options name, if any.
fn given_redis(args: &BenchArgs) -> Option<RedisTarget> {
    if !args.redis_cluster_urls.is_empty() {
        return Some(RedisTarget::Cluster(args.redis_cluster_urls.clone()));
    }
    args.redis_url.clone().map(RedisTarget::Single)
}

/// A `seckill serve` child started for the run, with its Redis.
struct SpawnedServer {
    child: Child,
    target: Target,
    /// A private Redis or cluster started for the run; stopped when dropped.
    _redis: (Option<RedisServer>, Option<RedisCluster>),
    _dir: TempDir,
}

impl SpawnedServer {
    async fn start(args: &BenchArgs) -> anyhow::Result<Self> {
        let dir = TempDir::new("bench")?;
        let (redis, private) = match given_redis(args) {
            Some(redis) => (redis, (None, None)),
            None if args.redis_cluster => {
                let cluster = tokio::task::spawn_blocking(|| {
                    RedisCluster::start(RedisClusterOptions::default())
                })
                .await??;
                let redis = RedisTarget::Cluster(cluster.urls());
                (redis, (None, Some(cluster)))
            }
            None => {
                let server = RedisServer::start(RedisServerOptions::default())?;
                (RedisTarget::Single(server.url()), (Some(server), None))
            }
        };
        if !matches!(private, (None, None)) {
            // Started empty just now, for this run alone: known fresh, so
            // the server takes its worker number without waiting.
            let conn = redis
                .connect(crate::infra::redis_conn::Timeouts {
                    response: Duration::from_secs(5),
                    connect: Duration::from_secs(5),
                })
                .await?;
            crate::orders::lease::seed_fresh_horizons(&conn).await?;
        }
        let (redis_var, redis_value) = match &redis {
            RedisTarget::Single(url) => ("REDIS_URL", url.clone()),
            RedisTarget::Cluster(urls) => ("REDIS_CLUSTER_URLS", urls.join(",")),
        };
        let database_url = args
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.0.join("bench.db").display()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.0.join("server.log"))?;
        let child = Command::new(std::env::current_exe().context("cannot find this binary")?)
            .arg("serve")
            .env("LISTEN", format!("127.0.0.1:{port}"))
            // One of the two, whatever this shell exports: the server
            // refuses both.
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS")
            .env(redis_var, &redis_value)
            .env("DATABASE_URL", &database_url)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the server")?;
        let target = Target::from_url(
            &format!("http://127.0.0.1:{port}"),
            args.admin_token.clone(),
            Some(redis),
        )
        .await?;
        let mut server = Self {
            child,
            target,
            _redis: private,
            _dir: dir,
        };
        wait_ready(
            &mut server.child,
            &server.target,
            Duration::from_secs(30),
            "the server",
        )
        .await
        .context("starting the server for the run")?;
        Ok(server)
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // A graceful stop (the persister drains), then SIGKILL.
        stop_child(&mut self.child);
    }
}
