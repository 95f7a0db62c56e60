//! Snowflake worker numbers leased in Redis, and the id minter that uses them:
//! two processes never mint with one worker number, and no number mints an id
//! that an earlier holder of it may have minted.
//!
//! # The lease
//! Take: `SET seckill:worker:<n> <token> NX PX <ttl>` (`take_with_horizon.lua`, see [`crate::infra::token_lock`]), for
//! the first free `n` from a random start, or for exactly `WORKER_ID` when one
//! is set: a fixed number is registered like a leased one, and a second
//! instance asking for a held number refuses to start, naming it. Renew: a
//! compare-and-`PEXPIRE` script every third of the TTL. Release on shutdown.
//!
//! The lease is trusted only for a TTL from the start of its last confirmed
//! renewal (by the monotonic clock): a process paused past that point (stopped,
//! swapped out) refuses to mint until a renewal confirms the lease again.
//!
//! A lease found gone or taken at renewal is *lost*: minting stops at once
//! (purchases and `/readyz` answer 503) and the instance leases again, any
//! free number (or its fixed one, once free). Purchases resume with the new
//! number.
//!
//! # The horizon
//! Each number has a horizon key, `{seckill:worker:<n>}:horizon` (in the
//! lease key's cluster slot, so one script takes both), with no TTL:
//! the Unix millisecond up to which its holders may have minted. Each renewal
//! raises it to the renewal's start plus the TTL, and the holder mints no id
//! past its own horizon (so a wall clock that jumps forward cannot carry ids
//! beyond it). A clean release lowers it to the last millisecond really used.
//! Whoever takes a number (after a restart, a takeover, or with a clock that
//! stepped back) waits until its clock is past the horizon plus
//! [`SKEW_MARGIN`] before minting, and its generator issues nothing at or
//! below that point. The wait is bounded by [`max_wait`] (the TTL plus twice
//! the margin: a number taken over after its lease expired needs about the
//! margin); a longer one is refused as a clock problem instead, the number
//! given back and another tried.
//!
//! # A missing horizon
//! A number whose horizon key is missing has an unknown past, not an unused
//! one: the keys may have been lost under a live holder (a Redis restarted
//! without persistence, a replica promoted before it received them, a
//! `FLUSHALL`), and that holder mints on until its next renewal finds the
//! lease gone. Every holder stops within a TTL of its last renewal, so a
//! taker treats the lost horizon as its own clock plus the TTL, and waits
//! the TTL plus [`SKEW_MARGIN`] before minting (logged at WARN, with the
//! number and the wait): at start-up, for a fixed `WORKER_ID` or a leased
//! number, and when a running instance leases again after a loss. (This
//! assumes the instances on one Redis share `WORKER_LEASE_TTL_MS`: a holder
//! with a longer TTL is not waited out.) The wait is within [`max_wait`].
//!
//! A brand-new Redis has no horizons either. Whoever knows a Redis is fresh
//! marks its numbers unused with [`seed_fresh_horizons`], so first starts do
//! not wait: the embedded Redis of `serve` (see [`crate::startup`]) and the
//! tests' and benchmark's private ones. Any other Redis (`REDIS_URL`,
//! `REDIS_CLUSTER_URLS`) is never seeded, so its first start on each number
//! waits once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::infra::redis_conn::{RedisConn, each};
use anyhow::{Context, bail};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::infra::token_lock;
use crate::keys;
use crate::orders::snowflake::{Clock, IdError, MAX_WORKER, OrderId, Snowflake, SystemClock};

/// Renewals per TTL: two may fail before the lease lapses.
const RENEWALS_PER_TTL: u32 = 3;
/// Allowance for clocks that disagree: between the machines of two holders of
/// one number, or across a step of one machine's clock. A taker waits this
/// long past the horizon; NTP keeps healthy clocks within milliseconds.
pub const SKEW_MARGIN: Duration = Duration::from_secs(1);
/// How often a lost lease is sought again.
const RELEASE_RETRY: Duration = Duration::from_millis(200);

/// How to lease.
#[derive(Clone)]
pub struct LeaseConfig {
    pub ttl: Duration,
    /// `WORKER_ID`: only this number; `None`: any free one.
    pub fixed: Option<u16>,
    /// The wall clock ids are minted by (a manual one in tests).
    pub clock: Arc<dyn Clock>,
}

impl LeaseConfig {
    pub fn new(ttl: Duration, fixed: Option<u16>) -> Self {
        Self {
            ttl,
            fixed,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Until when the lease is known to be ours, as seen by this process.
#[derive(Debug)]
struct LeaseValidity {
    epoch: Instant,
    /// Milliseconds after `epoch`; 0 when the lease is lost.
    valid_until_ms: AtomicU64,
}

impl LeaseValidity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
        }
    }

    /// Records a confirmation (take or renew) that started at `at`.
    fn confirm(&self, at: Instant, ttl: Duration) {
        let until = at.duration_since(self.epoch) + ttl;
        self.valid_until_ms
            .store(until.as_millis() as u64, Ordering::SeqCst);
    }

    fn lose(&self) {
        self.valid_until_ms.store(0, Ordering::SeqCst);
    }

    fn is_valid(&self) -> bool {
        (self.epoch.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::SeqCst)
    }
}

/// Why no id was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Clock(#[from] IdError),
    #[error("this instance's snowflake worker lease is lost or unconfirmed")]
    LeaseLost,
    #[error("the clock is past the worker lease's horizon; waiting for a renewal")]
    PastHorizon,
}

type Generator = Snowflake<Arc<dyn Clock>>;

/// One held number: its generator and the horizon Redis holds for it, kept
/// together so an id is always checked against its own number's horizon.
struct Minting {
    generator: Generator,
    /// Unix ms past which no id may be minted with this number.
    horizon_ms: AtomicU64,
}

/// Mints order ids, refusing while the worker lease is not known to be ours.
pub struct IdMinter {
    /// Replaced when the lease is lost and another number is taken.
    current: RwLock<Arc<Minting>>,
    validity: LeaseValidity,
}

impl std::fmt::Debug for IdMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdMinter")
            .field("worker", &self.worker())
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl IdMinter {
    fn current(&self) -> Arc<Minting> {
        // A poisoned lock still holds a whole Arc: writers only swap it.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn next(&self) -> Result<OrderId, MintError> {
        if !self.validity.is_valid() {
            return Err(MintError::LeaseLost);
        }
        let current = self.current();
        let id = current.generator.next_id()?;
        if id.parts().unix_ms > current.horizon_ms.load(Ordering::SeqCst) {
            return Err(MintError::PastHorizon);
        }
        Ok(id)
    }

    /// The worker number ids carry now.
    pub fn worker(&self) -> u16 {
        self.current().generator.worker()
    }

    /// Whether ids can be minted: the lease is held and confirmed.
    pub fn is_ready(&self) -> bool {
        self.validity.is_valid()
    }
}

/// A held worker lease, renewed in the background until
/// [`WorkerLease::release`]. Dropped without a release it is abandoned (no
/// more renewals; it lapses after its TTL), as a crash would leave it.
pub struct WorkerLease {
    minter: Arc<IdMinter>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl WorkerLease {
    /// Leases a worker number and returns once ids can be minted with it.
    pub async fn acquire(redis: RedisConn, config: LeaseConfig) -> anyhow::Result<Self> {
        let mut leaser = Leaser {
            redis,
            token: token_lock::new_token(),
            config,
        };
        let held = leaser.take_any(None, 0).await?;
        let minter = Arc::new(IdMinter {
            current: RwLock::new(Arc::new(held.minting)),
            validity: LeaseValidity::new(),
        });
        minter
            .validity
            .confirm(held.confirmed_at, leaser.config.ttl);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(renew(leaser, held.worker, Arc::clone(&minter), stopped));
        Ok(Self {
            minter,
            stop,
            task: Some(task),
        })
    }

    pub fn worker(&self) -> u16 {
        self.minter.worker()
    }

    /// The id minter, shared with the handlers.
    pub fn minter(&self) -> Arc<IdMinter> {
        Arc::clone(&self.minter)
    }

    /// Stops minting and renewing, and gives the number back.
    pub async fn release(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.minter.validity.lose();
            task.abort();
        }
    }
}

/// Marks every worker number that has no horizon as never used (`0`), so the
/// first takes on this Redis need no wait: ONLY for a Redis known to be fresh
/// (just started empty by whoever calls this, with no instance on it yet,
/// or one whose every earlier user is known to have exited). On any other
/// Redis a missing horizon may be one lost with its data while a holder
/// still mints: marking it unused would let a taker repeat that holder's
/// ids, the very thing the wait guards against. `SET NX`: a horizon Redis
/// kept (an append-only file reloaded) stays. One command per number, sent
/// all at once, so on a cluster each goes to its own slot's master.
pub async fn seed_fresh_horizons(redis: &RedisConn) -> anyhow::Result<()> {
    let seeds = (0..=MAX_WORKER).map(|n| {
        let mut set = redis::cmd("SET");
        set.arg(keys::worker_horizon(n)).arg(0).arg("NX");
        set
    });
    for seeded in each::<Option<String>>(redis, seeds).await {
        seeded.context("cannot seed the worker horizons of a fresh Redis")?;
    }
    Ok(())
}

/// The longest a taker waits for its clock to pass a number's horizon.
pub fn max_wait(ttl: Duration) -> Duration {
    ttl + 2 * SKEW_MARGIN
}

/// A number just taken, with a generator that may mint with it.
struct Held {
    worker: u16,
    minting: Minting,
    confirmed_at: Instant,
}

/// Takes, renews and releases numbers for one instance.
struct Leaser {
    redis: RedisConn,
    token: String,
    config: LeaseConfig,
}

impl Leaser {
    fn ttl_ms(&self) -> u64 {
        self.config.ttl.as_millis() as u64
    }

    /// The longest wait past a horizon this leaser accepts.
    fn max_wait(&self) -> Duration {
        max_wait(self.config.ttl)
    }

    /// Takes the fixed number, or any free one, starting with `prefer`. Its
    /// generator issues nothing at or before `not_before_ms` either: what this
    /// process minted already, in case the number's horizon key was lost with
    /// a Redis that kept no data.
    async fn take_any(&mut self, prefer: Option<u16>, not_before_ms: u64) -> anyhow::Result<Held> {
        if let Some(fixed) = self.config.fixed {
            return match self.take(fixed, not_before_ms).await? {
                Some(held) => Ok(held),
                None => {
                    let pttl: i64 = redis::cmd("PTTL")
                        .arg(keys::worker_lease(fixed))
                        .query_async(&mut self.redis)
                        .await
                        .unwrap_or(-2);
                    bail!(
                        "WORKER_ID {fixed} is held by another instance (lease key {}, expiring in {pttl} ms unless renewed); two instances with one worker number would mint duplicate order ids. Give each instance its own WORKER_ID, or unset it to lease a free number",
                        keys::worker_lease(fixed)
                    )
                }
            };
        }
        let count = u32::from(MAX_WORKER) + 1;
        let start = prefer.map_or_else(|| rand::rng().random_range(0..count), u32::from);
        for i in 0..count {
            let n = ((start + i) % count) as u16;
            if let Some(held) = self.take(n, not_before_ms).await? {
                return Ok(held);
            }
        }
        bail!("all {count} snowflake worker numbers are leased; set WORKER_ID explicitly")
    }

    /// Takes `n` if free, then waits past its horizon. `None` when someone
    /// holds it, or when the wait would be a clock problem (given back).
    async fn take(&mut self, n: u16, not_before_ms: u64) -> anyhow::Result<Option<Held>> {
        // Long enough to cover the wait below; the renewal after it sets
        // the usual TTL.
        let ttl = self.config.ttl + self.max_wait();
        let horizon = token_lock::take_with_horizon(
            &mut self.redis,
            &keys::worker_lease(n),
            &keys::worker_horizon(n),
            &self.token,
            ttl,
        )
        .await
        .context("cannot lease a snowflake worker number")?;
        let Some(stored) = horizon else {
            return Ok(None);
        };
        let now = self.config.clock.now_ms();
        // A missing horizon is unknown, not "never used": the key may have
        // been lost with Redis's data while a holder of `n` still mints (its
        // lease key went with it). That holder stops by its next renewal, and
        // mints nothing past its own horizon: at most a TTL from now. So that
        // bound stands in for the lost horizon, and the wait below runs a
        // TTL plus the skew margin.
        let horizon = stored.unwrap_or(now + self.ttl_ms());
        // The horizon an older version kept for `n`, in another slot (see
        // keys::legacy_worker_horizon); it too bounds what `n` has minted.
        let legacy: redis::RedisResult<Option<u64>> = redis::cmd("GET")
            .arg(keys::legacy_worker_horizon(n))
            .query_async(&mut self.redis)
            .await;
        let legacy = match legacy {
            Ok(legacy) => legacy.unwrap_or(0),
            Err(err) => {
                self.give_back(n, horizon).await;
                return Err(err).context("cannot read the worker number's legacy horizon");
            }
        };
        let horizon = horizon.max(legacy);
        let floor = if horizon == 0 {
            not_before_ms
        } else {
            (horizon + SKEW_MARGIN.as_millis() as u64).max(not_before_ms)
        };
        let wait = Duration::from_millis(floor.saturating_sub(now));
        if stored.is_none() {
            tracing::warn!(
                worker = n,
                wait_ms = wait.as_millis() as u64,
                "worker number {n} has no horizon in Redis (its data was lost, or this Redis was never seeded as fresh): waiting the lease TTL plus the skew margin, so any earlier holder has stopped minting"
            );
        }
        if wait > self.max_wait() {
            tracing::error!(
                worker = n,
                wait_ms = wait.as_millis() as u64,
                "this clock is behind the ids worker number {n} has issued; not using it"
            );
            self.give_back(n, horizon).await;
            if self.config.fixed.is_some() {
                bail!(
                    "WORKER_ID {n}: this clock is {} ms behind the last ids minted with it (plus the {} ms skew margin); fix the clock",
                    wait.as_millis(),
                    SKEW_MARGIN.as_millis()
                );
            }
            return Ok(None);
        }
        // Wait until the clock itself has passed the floor: a manual or
        // stepped clock does not move with the sleep.
        let deadline = Instant::now() + self.max_wait();
        while self.config.clock.now_ms() <= floor {
            if Instant::now() > deadline {
                self.give_back(n, horizon).await;
                return Ok(None);
            }
            tokio::time::sleep(
                Duration::from_millis(floor + 1 - self.config.clock.now_ms().min(floor))
                    .min(Duration::from_millis(50)),
            )
            .await;
        }
        if !wait.is_zero() {
            tracing::info!(
                worker = n,
                waited_ms = wait.as_millis() as u64,
                "waited past the worker number's horizon before minting"
            );
        }
        // Renewed once the wait is over, so the lease is trusted for a whole
        // TTL from here, and the horizon covers what we may now mint.
        let confirmed_at = Instant::now();
        let ours = self.config.clock.now_ms() + self.ttl_ms();
        if !self.renew_once(n, ours).await? {
            return Ok(None);
        }
        Ok(Some(Held {
            worker: n,
            minting: Minting {
                generator: Snowflake::with_floor(n, Arc::clone(&self.config.clock), floor),
                horizon_ms: AtomicU64::new(ours),
            },
            confirmed_at,
        }))
    }

    /// Extends the lease on `n` and raises its horizon to `horizon_ms`.
    async fn renew_once(&mut self, n: u16, horizon_ms: u64) -> anyhow::Result<bool> {
        let renewed = token_lock::renew_with_horizon(
            &mut self.redis,
            &keys::worker_lease(n),
            &keys::worker_horizon(n),
            &self.token,
            self.config.ttl,
            horizon_ms,
        )
        .await
        .context("cannot renew the snowflake worker lease")?;
        if renewed {
            self.write_legacy_horizon(n, horizon_ms).await;
        }
        Ok(renewed)
    }

    /// Raises the older versions' horizon key for `n` (see
    /// [`keys::legacy_worker_horizon`]), so an instance of an older version
    /// that takes `n` next waits past what we minted. Raise-only: written
    /// late, or after the lease was lost, it can only make that taker wait
    /// longer, never let it mint below someone's ids. A failure is logged:
    /// it matters only while older versions still run.
    async fn write_legacy_horizon(&mut self, n: u16, horizon_ms: u64) {
        let written =
            token_lock::raise_horizon(&mut self.redis, &keys::legacy_worker_horizon(n), horizon_ms)
                .await;
        if let Err(err) = written {
            tracing::warn!(worker = n, %err, "cannot raise the legacy worker horizon");
        }
    }

    /// Releases `n`, leaving `last_ms` as its horizon.
    async fn give_back(&mut self, n: u16, last_ms: u64) {
        self.write_legacy_horizon(n, last_ms).await;
        let released = token_lock::release_with_horizon(
            &mut self.redis,
            &keys::worker_lease(n),
            &keys::worker_horizon(n),
            &self.token,
            last_ms,
        )
        .await;
        if let Err(err) = released {
            tracing::warn!(worker = n, %err, "cannot release worker lease; it expires by itself");
        }
    }
}

/// Renews every third of the TTL; on loss, leases again and swaps the
/// generator; on stop, releases.
async fn renew(
    mut leaser: Leaser,
    mut worker: u16,
    minter: Arc<IdMinter>,
    mut stopped: watch::Receiver<bool>,
) {
    let ttl = leaser.config.ttl;
    loop {
        let pause = if minter.validity.is_valid() {
            ttl / RENEWALS_PER_TTL
        } else {
            RELEASE_RETRY
        };
        tokio::select! {
            _ = stopped.changed() => break,
            () = tokio::time::sleep(pause) => {}
        }
        // Renewed even when our validity has lapsed (a pause): if the key
        // still holds our token, nobody else has minted with the number.
        let attempt = Instant::now();
        let horizon = leaser.config.clock.now_ms() + leaser.ttl_ms();
        match leaser.renew_once(worker, horizon).await {
            Ok(true) => {
                minter.current().horizon_ms.store(horizon, Ordering::SeqCst);
                minter.validity.confirm(attempt, ttl);
                continue;
            }
            Ok(false) => {
                if minter.validity.is_valid() {
                    tracing::error!(
                        worker,
                        "worker lease lost (expired or taken): refusing purchases until a number is leased again"
                    );
                }
                minter.validity.lose();
            }
            Err(err) => {
                tracing::warn!(worker, error = %format!("{err:#}"), "cannot renew worker lease; will retry");
                continue;
            }
        }
        let minted = minter.current().generator.last_unix_ms();
        let taken = tokio::select! {
            _ = stopped.changed() => break,
            taken = leaser.take_any(Some(worker), minted) => taken,
        };
        match taken {
            Ok(held) => {
                tracing::warn!(
                    previous = worker,
                    worker = held.worker,
                    "worker number leased again; purchases resume"
                );
                worker = held.worker;
                *minter.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(held.minting);
                minter.validity.confirm(held.confirmed_at, ttl);
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "no worker number to lease yet; retrying")
            }
        }
    }
    minter.validity.lose();
    let last_ms = minter.current().generator.last_unix_ms();
    leaser.give_back(worker, last_ms).await;
}
