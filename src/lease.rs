//! Snowflake worker numbers leased in Redis, so instances sharing a Redis never
//! mint ids with the same worker number (which could collide).
//!
//! Acquire: `SET seckill:worker:<n> <token> NX PX <ttl>` for the first free `n`,
//! starting at a random one. Renew: a compare-and-`PEXPIRE` script every third
//! of the TTL. If the lease is gone when renewing (Redis restarted, or we were
//! paused past the TTL), take it back with `SET NX`; if someone else holds it
//! now, the lease is *lost*: purchases are refused (503) rather than risk a
//! duplicate id. On shutdown the lease is released (compare-and-delete).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::keys;
use crate::snowflake::MAX_WORKER;
use crate::strategy::lock::{RENEW_LUA, UNLOCK_LUA};

/// Long enough that a renewal missed to a Redis hiccup does not lose the lease;
/// short enough that a crashed instance's number is free again soon.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// Three renewals per TTL: two may fail before the lease lapses.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// A held worker lease, renewed in the background until [`WorkerLease::release`].
pub struct WorkerLease {
    worker: u16,
    lost: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WorkerLease {
    /// Leases the first free worker number.
    pub async fn acquire(redis: ConnectionManager) -> anyhow::Result<Self> {
        let mut conn = redis.clone();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let count = u32::from(MAX_WORKER) + 1;
        let start = rand::rng().random_range(0..count);
        let mut worker = None;
        for i in 0..count {
            let n = ((start + i) % count) as u16;
            let taken: Option<String> = redis::cmd("SET")
                .arg(keys::worker_lease(n))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LEASE_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .context("cannot lease a snowflake worker number")?;
            if taken.is_some() {
                worker = Some(n);
                break;
            }
        }
        let Some(worker) = worker else {
            bail!("all {count} snowflake worker numbers are leased; set WORKER_ID explicitly");
        };
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(renew(redis, worker, token, Arc::clone(&lost), stopped));
        Ok(Self {
            worker,
            lost,
            stop,
            task,
        })
    }

    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// Set when the lease was taken over: ids must not be minted any more.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.lost)
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
    lost: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let key = keys::worker_lease(worker);
    let renew = Script::new(RENEW_LUA);
    let release = Script::new(UNLOCK_LUA);
    let mut conn = redis;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let renewed: redis::RedisResult<i64> = renew
            .key(&key)
            .arg(&token)
            .arg(LEASE_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                let retaken: redis::RedisResult<Option<String>> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE_TTL.as_millis() as u64)
                    .query_async(&mut conn)
                    .await;
                match retaken {
                    Ok(Some(_)) => {
                        tracing::warn!(worker, "worker lease had lapsed; taken back");
                        lost.store(false, Ordering::SeqCst);
                    }
                    Ok(None) => {
                        tracing::error!(
                            worker,
                            "worker lease taken by another instance: refusing purchases"
                        );
                        lost.store(true, Ordering::SeqCst);
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
