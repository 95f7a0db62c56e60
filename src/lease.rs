//! Snowflake worker numbers leased in Redis, so instances sharing a Redis never
//! mint ids with the same worker number (which could collide).
//!
//! Acquire: `SET seckill:worker:<n> <token> NX PX <ttl>` for the first free `n`,
//! starting at a random one. Renew: a compare-and-`PEXPIRE` script every third
//! of the TTL. If the lease is gone when renewing (Redis restarted, or we were
//! paused past the TTL), take it back with `SET NX`; if someone else holds it
//! now, the lease is *lost*: purchases are refused (503) rather than risk a
//! duplicate id. On shutdown the lease is released (compare-and-delete).
//!
//! The lease is also only trusted for as long as it is known to be valid: a
//! TTL from the start of the last confirmed renewal. A process that was paused
//! (stopped, swapped out, a long GC in another language) wakes up past that
//! point and refuses to mint ids until a renewal confirms the lease again,
//! instead of minting from a number another instance may hold by now.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::keys;
use crate::snowflake::MAX_WORKER;
use crate::strategy::lock::{RENEW_LUA, UNLOCK_LUA};

/// Renewals per TTL: two may fail before the lease lapses.
const RENEWALS_PER_TTL: u32 = 3;

/// Until when the lease is known to be ours, as seen by this process.
#[derive(Debug)]
pub struct LeaseValidity {
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

    /// Records a confirmation (acquire or renew) that started at `at`.
    fn confirm(&self, at: Instant, ttl: Duration) {
        let until = at.duration_since(self.epoch) + ttl;
        self.valid_until_ms
            .store(until.as_millis() as u64, Ordering::SeqCst);
    }

    fn lose(&self) {
        self.valid_until_ms.store(0, Ordering::SeqCst);
    }

    /// True while ids may be minted with this lease's worker number.
    pub fn is_valid(&self) -> bool {
        (self.epoch.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::SeqCst)
    }
}

/// A held worker lease, renewed in the background until [`WorkerLease::release`].
pub struct WorkerLease {
    worker: u16,
    validity: Arc<LeaseValidity>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WorkerLease {
    /// Leases the first free worker number for `ttl` (`WORKER_LEASE_TTL_MS`,
    /// 30 s by default: long enough that a renewal missed to a Redis hiccup
    /// does not lose the lease, short enough that a crashed instance's number
    /// is free again soon).
    pub async fn acquire(redis: ConnectionManager, ttl: Duration) -> anyhow::Result<Self> {
        let mut conn = redis.clone();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let count = u32::from(MAX_WORKER) + 1;
        let start = rand::rng().random_range(0..count);
        let validity = Arc::new(LeaseValidity::new());
        let mut worker = None;
        for i in 0..count {
            let attempt = Instant::now();
            let n = ((start + i) % count) as u16;
            let taken: Option<String> = redis::cmd("SET")
                .arg(keys::worker_lease(n))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .context("cannot lease a snowflake worker number")?;
            if taken.is_some() {
                validity.confirm(attempt, ttl);
                worker = Some(n);
                break;
            }
        }
        let Some(worker) = worker else {
            bail!("all {count} snowflake worker numbers are leased; set WORKER_ID explicitly");
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(renew(
            redis,
            worker,
            token,
            ttl,
            Arc::clone(&validity),
            stopped,
        ));
        Ok(Self {
            worker,
            validity,
            stop,
            task,
        })
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// Whether ids may be minted right now; shared with the id minter.
    pub fn validity(&self) -> Arc<LeaseValidity> {
        Arc::clone(&self.validity)
    }

    /// Stops renewing and releases the lease.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn renew(
    redis: ConnectionManager,
    worker: u16,
    token: String,
    ttl: Duration,
    validity: Arc<LeaseValidity>,
    mut stopped: watch::Receiver<bool>,
) {
    let key = keys::worker_lease(worker);
    let renew = Script::new(RENEW_LUA);
    let release = Script::new(UNLOCK_LUA);
    let mut conn = redis;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            () = tokio::time::sleep(ttl / RENEWALS_PER_TTL) => {}
        }
        let attempt = Instant::now();
        let renewed: redis::RedisResult<i64> = renew
            .key(&key)
            .arg(&token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => validity.confirm(attempt, ttl),
            Ok(_) => {
                let retaken: redis::RedisResult<Option<String>> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut conn)
                    .await;
                match retaken {
                    Ok(Some(_)) => {
                        tracing::warn!(worker, "worker lease had lapsed; taken back");
                        validity.confirm(attempt, ttl);
                    }
                    Ok(None) => {
                        tracing::error!(
                            worker,
                            "worker lease taken by another instance: refusing purchases"
                        );
                        validity.lose();
                    }
                    Err(err) => tracing::warn!(worker, %err, "cannot retake worker lease"),
                }
            }
            Err(err) => tracing::warn!(worker, %err, "cannot renew worker lease; will retry"),
        }
    }
    let released: redis::RedisResult<i64> =
        release.key(&key).arg(&token).invoke_async(&mut conn).await;
    if let Err(err) = released {
        tracing::warn!(worker, %err, "cannot release worker lease; it expires by itself");
    }
}
