//! The faults: each a real mechanism applied from outside the service (a
//! signal, a killed process, the proxy's link, libfaketime's clock file),
//! never a switch inside a strategy. Each injection checks that its fault
//! really happened, and says how it knows: a fault that did not happen
//! makes the cell an error, not a green one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;

use super::proxy::Link;
use super::topology::{self, Redis, Store, Topology, patient};
use crate::domain::ItemId;
use crate::infra::redis_server::Fsync;
use crate::infra::token_lock;
use crate::keys::ItemKeys;
use crate::lab::loadgen::Load;
use crate::strategy::StrategyKind;

/// A fault, by the name the command line and the reports use (and JSON:
/// its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
pub enum Fault {
    /// SIGSTOP the instance holding the item's lock, past its TTL.
    HolderPause,
    /// SIGSTOP Redis.
    RedisPause,
    /// kill -9 Redis, restart it on its own files (`None`: no files).
    RedisRestart(Option<Fsync>),
    /// kill -9 the cluster master of the item's slot; `wait`: with
    /// `REDIS_WAIT_REPLICAS=1`.
    Failover { wait: bool },
    /// Blackhole one instance's link to Redis, then heal it.
    Partition,
    /// Latency and jitter on one instance's link to Redis.
    SlowNet,
    /// One instance's wall clock steps back, then forward again.
    ClockJump,
    /// kill -9 an instance with purchases in flight, and restart it.
    InstanceKill,
}

/// What a failover's phase is planned to take.
const FAILOVER_SPAN: Duration = Duration::from_secs(10);

/// `RACE_WINDOW_MS` under `holder-pause`.
const HOLDER_WINDOW_MS: &str = "10";

impl Fault {
    /// Every fault, in the matrix's order.
    pub const ALL: [Fault; 11] = [
        Fault::HolderPause,
        Fault::RedisPause,
        Fault::RedisRestart(Some(Fsync::Always)),
        Fault::RedisRestart(Some(Fsync::Everysec)),
        Fault::RedisRestart(None),
        Fault::Failover { wait: false },
        Fault::Failover { wait: true },
        Fault::Partition,
        Fault::SlowNet,
        Fault::ClockJump,
        Fault::InstanceKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::HolderPause => "holder-pause",
            Fault::RedisPause => "redis-pause",
            Fault::RedisRestart(Some(Fsync::Always)) => "redis-restart-always",
            Fault::RedisRestart(Some(Fsync::Everysec)) => "redis-restart-everysec",
            Fault::RedisRestart(None) => "redis-restart-none",
            Fault::Failover { wait: false } => "failover",
            Fault::Failover { wait: true } => "failover-wait",
            Fault::Partition => "partition",
            Fault::SlowNet => "slow-net",
            Fault::ClockJump => "clock-jump",
            Fault::InstanceKill => "instance-kill",
        }
    }

    /// The faults a name stands for: its own, or `redis-restart` for its
    /// three persistence settings.
    pub fn parse(name: &str) -> Result<Vec<Fault>, String> {
        let name = name.trim();
        if name == "redis-restart" {
            return Ok(Self::ALL
                .into_iter()
                .filter(|f| matches!(f, Fault::RedisRestart(_)))
                .collect());
        }
        Self::named(name).map(|f| vec![f]).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
            format!(
                "unknown fault `{name}`: one of {}, or redis-restart for its three",
                names.join(", ")
            )
        })
    }

    /// The fault of this exact name, if any (no group names).
    pub fn named(name: &str) -> Option<Fault> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// What Redis the fault needs.
    pub fn store(self) -> Store {
        match self {
            Fault::RedisRestart(fsync) => Store::Single(fsync),
            Fault::Failover { .. } => Store::Cluster,
            _ => Store::Single(None),
        }
    }

    /// Settings the instances need for this fault, beyond the lab's own.
    pub fn env(self) -> Vec<(String, String)> {
        match self {
            // The seeds' stalled holder stalls between its read and its
            // write; a 10 ms window there (`RACE_WINDOW_MS`, the lab's
            // existing knob, not a fault switch) makes a SIGSTOP at a random
            // instant of the hold land in it most of the time. Every
            // strategy of the column gets the same.
            Fault::HolderPause => vec![("RACE_WINDOW_MS".into(), HOLDER_WINDOW_MS.into())],
            Fault::Failover { wait: true } => vec![("REDIS_WAIT_REPLICAS".into(), "1".into())],
            _ => Vec::new(),
        }
    }

    /// How long the fault phase is planned to last: `hold`, or for a
    /// failover the time a replica takes to be promoted (the cluster's 5 s
    /// node timeout, then an election), whichever is longer.
    pub fn span(self, hold: Duration) -> Duration {
        match self {
            Fault::Failover { .. } => hold.max(FAILOVER_SPAN),
            _ => hold,
        }
    }

    /// The instance whose clock libfaketime moves.
    pub fn fake_clock(self) -> Option<usize> {
        (self == Fault::ClockJump).then_some(0)
    }
}

impl From<Fault> for &'static str {
    fn from(fault: Fault) -> Self {
        fault.name()
    }
}

/// In the OpenAPI document a fault is its name, one of [`Fault::ALL`]'s.
impl utoipa::PartialSchema for Fault {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Self::ALL.map(Self::name)))
            .description(Some(
                "A fault of `seckill faults`, by name (docs/faults.md).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Fault {}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened when the fault was injected.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// Whether the fault really happened as meant.
    pub happened: bool,
    /// How the lab knows it happened, or why it did not.
    pub evidence: String,
    /// When it began and was undone, in milliseconds since the load's start.
    pub from_ms: f64,
    pub to_ms: f64,
}

/// How long the phases last.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Load before the fault.
    pub before: Duration,
    /// How long the fault lasts (a pause at least three lock TTLs).
    pub hold: Duration,
    pub lock_ttl: Duration,
}

/// Runs `fault` against `topology` beside the load: waits out the phase
/// before it, injects it, checks it took, undoes it. Never returns with the
/// fault still applied, unless the future is dropped (the topology's own
/// drop then undoes it).
pub async fn inject(
    fault: Fault,
    strategy: StrategyKind,
    topology: &mut Topology,
    load: Arc<Load>,
    timing: Timing,
    rng: &mut StdRng,
) -> Injected {
    let keys = match ItemId::parse(&load.item) {
        Ok(item) => ItemKeys::new(&item),
        Err(why) => {
            return Injected {
                happened: false,
                evidence: format!("the sale's item is not an item id: {why}"),
                from_ms: 0.0,
                to_ms: 0.0,
            };
        }
    };
    tokio::time::sleep_until((load.start + timing.before).into()).await;
    let at = |instant: Instant| instant.saturating_duration_since(load.start).as_secs_f64() * 1e3;
    // When the fault took hold: a fault that first looks for its target
    // (an instance mid-purchase, the lock's holder) moves it on.
    let mut began = Instant::now();
    let outcome = match fault {
        Fault::HolderPause => {
            let lock = lock_key(strategy, &keys);
            holder_pause(topology, &load, lock, timing, rng, &mut began).await
        }
        Fault::RedisPause => redis_pause(topology, timing.hold).await,
        Fault::RedisRestart(_) => redis_restart(topology).await,
        Fault::Failover { .. } => failover(topology, keys.stock(), timing.hold).await,
        Fault::Partition => partition(topology, &load, timing.hold, rng, &mut began).await,
        Fault::SlowNet => slow_net(topology, timing.hold, rng).await,
        Fault::ClockJump => clock_jump(topology, timing.hold).await,
        Fault::InstanceKill => instance_kill(topology, &load, timing.hold, rng, &mut began).await,
    };
    let mut record = Injected {
        happened: false,
        evidence: String::new(),
        from_ms: at(began),
        to_ms: at(Instant::now()),
    };
    match outcome {
        Ok(evidence) => {
            record.happened = true;
            record.evidence = evidence;
        }
        Err(why) => record.evidence = format!("{why:#}"),
    }
    record
}

/// The key of the lock `strategy` takes on the item, if it takes one on
/// the main Redis (`redlock` does when `REDLOCK_URLS` is unset, as here).
fn lock_key(strategy: StrategyKind, keys: &ItemKeys) -> Option<String> {
    match strategy {
        StrategyKind::Lock | StrategyKind::LockGated | StrategyKind::LockUnfenced => {
            Some(keys.lock().to_owned())
        }
        StrategyKind::Redlock => Some(keys.redlock().to_owned()),
        _ => None,
    }
}

/// An instance caught with purchases in flight, picked with the seed among
/// those that are; waits up to a second for one (a fast strategy is
/// between purchases most of the time).
async fn busy_instance(
    topology: &Topology,
    load: &Load,
    rng: &mut StdRng,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let busy: Vec<usize> = (0..topology.instances.len())
            .filter(|&n| load.in_flight(n) > 0)
            .collect();
        if !busy.is_empty() {
            return Ok(busy[rng.random_range(0..busy.len())]);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no instance had a purchase in flight within a second"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn holder_pause(
    topology: &mut Topology,
    load: &Load,
    lock_key: Option<String>,
    timing: Timing,
    rng: &mut StdRng,
    began: &mut Instant,
) -> anyhow::Result<String> {
    let pause = timing.hold.max(timing.lock_ttl * 3);
    let Some(key) = lock_key else {
        // No lock to hold: stop an instance in the middle of a purchase.
        let n = busy_instance(topology, load, rng).await?;
        let instance = &topology.instances[n];
        *began = Instant::now();
        let stopped = topology::stop(instance.pid()).await;
        // Still unanswered once it is stopped: caught mid-purchase.
        let in_flight = load.in_flight(n);
        tokio::time::sleep(pause).await;
        instance.signal(libc::SIGCONT);
        anyhow::ensure!(stopped, "instance {n} was not seen stopped");
        anyhow::ensure!(
            in_flight > 0,
            "instance {n} answered its purchases before it stopped"
        );
        return Ok(format!(
            "instance {n} (pid {}) stopped for {} ms with {in_flight} purchases in flight; this strategy holds no lock",
            instance.pid(),
            pause.as_millis()
        ));
    };
    // A stall lands between the holder's read and its write only some of
    // the time (the rest, before its read); stalls recur, as GC pauses do,
    // as many as fit in the fault's time.
    let stall = timing.lock_ttl * 3;
    let stalls = (timing.hold.as_millis() / (stall + STALL_GAP).as_millis()).max(1);
    let mut redis = topology.direct.connect(patient()).await?;
    let mut evidence = Vec::new();
    for _ in 0..stalls {
        let (stopped_at, what) = stall_holder(topology, &mut redis, &key, stall).await?;
        if evidence.is_empty() {
            *began = stopped_at;
        }
        evidence.push(what);
        tokio::time::sleep(STALL_GAP).await;
    }
    Ok(format!(
        "{} stalls: {}",
        evidence.len(),
        evidence.join("; ")
    ))
}

/// Between two stalls of the lab's: time for the lock to be taken again.
const STALL_GAP: Duration = Duration::from_millis(200);

/// Stops the instance holding `key`'s lock for `stall`, then resumes it:
/// when it was stopped, and how the lab knows it held the lock.
async fn stall_holder(
    topology: &Topology,
    redis: &mut crate::infra::redis_conn::RedisConn,
    key: &str,
    stall: Duration,
) -> anyhow::Result<(Instant, String)> {
    // Stop the holder, then read the lock again: the same token means the
    // lock was held across the stop, by the stopped process.
    for attempt in 1..=500 {
        let token: Option<String> = redis::cmd("GET").arg(key).query_async(redis).await?;
        let holder = token
            .as_deref()
            .and_then(token_lock::holder_pid)
            .and_then(|pid| topology.instances.iter().position(|i| i.pid() == pid));
        if let (Some(n), Some(token)) = (holder, token) {
            let instance = &topology.instances[n];
            if !topology::stop(instance.pid()).await {
                instance.signal(libc::SIGCONT);
                anyhow::bail!("instance {n} was not seen stopped");
            }
            let stopped_at = Instant::now();
            let again: redis::RedisResult<Option<String>> =
                redis::cmd("GET").arg(key).query_async(redis).await;
            if matches!(&again, Ok(Some(t)) if *t == token) {
                tokio::time::sleep(stall).await;
                let after: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(key).query_async(redis).await;
                instance.signal(libc::SIGCONT);
                let after = after?;
                anyhow::ensure!(
                    after.as_deref() != Some(token.as_str()),
                    "instance {n} held the lock, but it had not expired after {} ms",
                    stall.as_millis()
                );
                return Ok((
                    stopped_at,
                    format!(
                        "instance {n} (pid {}) stopped holding the lock (token {token}, try {attempt}) for {} ms, the lock expired meanwhile ({})",
                        instance.pid(),
                        stall.as_millis(),
                        if after.is_some() {
                            "taken by another"
                        } else {
                            "free"
                        }
                    ),
                ));
            }
            // Released between the read and the stop: try again.
            instance.signal(libc::SIGCONT);
            again?;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    anyhow::bail!("no instance was caught holding the lock in 500 tries")
}

async fn redis_pause(topology: &mut Topology, hold: Duration) -> anyhow::Result<String> {
    let pid = topology
        .redis_pid()
        .ok_or_else(|| anyhow::anyhow!("no single Redis"))?;
    let stopped = topology::stop(pid).await;
    tokio::time::sleep(hold).await;
    topology::signal(pid, libc::SIGCONT);
    anyhow::ensure!(stopped, "Redis (pid {pid}) was not seen stopped");
    Ok(format!(
        "Redis (pid {pid}) stopped for {} ms",
        hold.as_millis()
    ))
}

async fn redis_restart(topology: &mut Topology) -> anyhow::Result<String> {
    let before = topology
        .redis_pid()
        .ok_or_else(|| anyhow::anyhow!("no single Redis"))?;
    let keys_before = dbsize(topology).await?;
    let started = Instant::now();
    topology.restart_redis().await?;
    let after = topology
        .redis_pid()
        .ok_or_else(|| anyhow::anyhow!("Redis did not come back"))?;
    anyhow::ensure!(
        after != before,
        "Redis kept its pid {before}: it was not killed"
    );
    let keys_after = dbsize(topology).await?;
    Ok(format!(
        "Redis killed (kill -9, pid {before}) and restarted on its own files as pid {after} in {} ms; keys {keys_before} before, {keys_after} after",
        started.elapsed().as_millis()
    ))
}

async fn dbsize(topology: &Topology) -> anyhow::Result<u64> {
    let mut redis = topology.direct.connect(patient()).await?;
    Ok(redis::cmd("DBSIZE").query_async(&mut redis).await?)
}

async fn failover(topology: &mut Topology, key: &str, hold: Duration) -> anyhow::Result<String> {
    let Redis::Cluster(cluster) = &mut topology.redis else {
        anyhow::bail!("failover needs the cluster");
    };
    // The item's keys share a slot: its stock key names it.
    let master = cluster.master_of(key, None)?;
    let pid = cluster.pid_of(master).unwrap_or(0);
    if let Some(node) = cluster.node_mut(master) {
        node.kill();
    }
    let killed = Instant::now();
    // A replica takes over once the others mark the master failed (about
    // 5 s of node timeout); wait for it, at least `hold`.
    let mut promoted = None;
    while killed.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(now) = cluster.master_of(key, Some(master))
            && now != master
        {
            promoted = Some((now, killed.elapsed()));
            break;
        }
    }
    if killed.elapsed() < hold {
        tokio::time::sleep(hold - killed.elapsed()).await;
    }
    // The dead master stays dead: the cluster runs on, one replica short,
    // as it would until an operator replaced the node.
    let (now, after) = promoted
        .ok_or_else(|| anyhow::anyhow!("no replica took over from {master} within 30 s"))?;
    Ok(format!(
        "master on port {master} (pid {pid}) killed (kill -9); the replica on {now} took its slots after {} ms",
        after.as_millis()
    ))
}

async fn partition(
    topology: &mut Topology,
    load: &Load,
    hold: Duration,
    rng: &mut StdRng,
    began: &mut Instant,
) -> anyhow::Result<String> {
    let n = busy_instance(topology, load, rng).await?;
    let proxy = topology
        .proxies
        .get(n)
        .ok_or_else(|| anyhow::anyhow!("instance {n} has no proxy"))?;
    proxy.set(Link::Blackhole);
    *began = Instant::now();
    let ends = *began + hold;
    // The instance's own readiness check reaches Redis through the cut;
    // each probe bounded, so the cut ends on time.
    let mut saw_unready = false;
    while Instant::now() < ends {
        tokio::time::sleep(
            Duration::from_millis(250).min(ends.saturating_duration_since(Instant::now())),
        )
        .await;
        let target = &topology.instances[n].target;
        let probe = tokio::time::timeout(
            ends.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(50)),
            crate::lab::loadgen::probe(target, "/readyz"),
        );
        if !probe.await.unwrap_or(false) {
            saw_unready = true;
        }
    }
    proxy.set(Link::Up);
    anyhow::ensure!(
        saw_unready,
        "instance {n} stayed ready through the cut: the partition did not take"
    );
    Ok(format!(
        "instance {n}'s link to Redis blackholed for {} ms (its /readyz failed during it), then healed",
        hold.as_millis()
    ))
}

/// The slow link's delay each way.
const SLOW_LATENCY: Duration = Duration::from_millis(40);
const SLOW_JITTER: Duration = Duration::from_millis(20);

async fn slow_net(
    topology: &mut Topology,
    hold: Duration,
    rng: &mut StdRng,
) -> anyhow::Result<String> {
    let n = rng.random_range(0..topology.instances.len());
    let proxy = topology
        .proxies
        .get(n)
        .ok_or_else(|| anyhow::anyhow!("instance {n} has no proxy"))?;
    proxy.set(Link::Slow {
        latency: SLOW_LATENCY,
        jitter: SLOW_JITTER,
    });
    // A PING of the lab's own through the same proxy.
    let measured = async {
        let mut redis = crate::infra::redis_conn::RedisTarget::Single(proxy.url())
            .connect(patient())
            .await?;
        let sent = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok::<_, anyhow::Error>(sent.elapsed())
    }
    .await;
    tokio::time::sleep(hold).await;
    proxy.set(Link::Up);
    let ping = measured?;
    let least = (SLOW_LATENCY - SLOW_JITTER) * 2;
    anyhow::ensure!(
        ping >= least,
        "a PING through the slow link took {} ms, under {} ms",
        ping.as_millis(),
        least.as_millis()
    );
    Ok(format!(
        "instance {n}'s link to Redis slowed by {}±{} ms each way for {} ms (a PING through it: {} ms)",
        SLOW_LATENCY.as_millis(),
        SLOW_JITTER.as_millis(),
        hold.as_millis(),
        ping.as_millis()
    ))
}

/// How far the clock steps.
const CLOCK_STEP_S: i64 = 5;

async fn clock_jump(topology: &mut Topology, hold: Duration) -> anyhow::Result<String> {
    let file = topology
        .clock_file
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no instance runs on a fake clock"))?;
    std::fs::write(&file, format!("-{CLOCK_STEP_S}"))?;
    // libfaketime reads the file once a second.
    let settle = Duration::from_millis(1_200).min(hold);
    tokio::time::sleep(settle).await;
    let during = topology.fake_clock_offset().await;
    tokio::time::sleep(hold.saturating_sub(settle)).await;
    std::fs::write(&file, "+0")?;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let after = topology.fake_clock_offset().await?;
    let during = during?;
    // `date` reads whole seconds: ±1.
    anyhow::ensure!(
        (during + CLOCK_STEP_S).abs() <= 1,
        "a process on instance 0's fake clock read {during} s during the jump, not -{CLOCK_STEP_S} s"
    );
    anyhow::ensure!(
        after.abs() <= 1,
        "the fake clock read {after} s after the jump forward, not 0"
    );
    Ok(format!(
        "instance 0's wall clock (libfaketime) stepped back {CLOCK_STEP_S} s for {} ms, then forward again; a process on the same fake clock read {during} s, then {after} s",
        hold.as_millis()
    ))
}

async fn instance_kill(
    topology: &mut Topology,
    load: &Load,
    hold: Duration,
    rng: &mut StdRng,
    began: &mut Instant,
) -> anyhow::Result<String> {
    let n = busy_instance(topology, load, rng).await?;
    let instance = &mut topology.instances[n];
    let pid = instance.pid();
    let started = Instant::now();
    *began = started;
    instance.kill();
    // Still unanswered once it is dead: killed mid-purchase.
    let in_flight = load.in_flight(n);
    // Down for a third of the hold, as a supervisor's restart delay.
    tokio::time::sleep(hold / 3).await;
    instance.restart().await?;
    anyhow::ensure!(
        in_flight > 0,
        "instance {n} had answered its purchases before it was killed"
    );
    Ok(format!(
        "instance {n} (pid {pid}) killed (kill -9) with {in_flight} purchases in flight; restarted as pid {}, ready after {} ms",
        instance.pid(),
        started.elapsed().as_millis()
    ))
}
