//! `lock-unfenced`: the lock as flash-sale write-ups first show it, kept as a
//! control group for fencing. `SET lock <token> NX PX <ttl>`, read, check,
//! write stock − 1, compare-and-delete; no fencing token and no watchdog.
//!
//! While every holder finishes inside the lock's TTL it is as exact as
//! [`super::lock`]. A holder that stalls past the TTL (a GC pause, a
//! SIGSTOP, a slow network) loses the lock without knowing it; the next
//! buyer takes it, reads the same stock, and both write: a unit sold twice.
//! `lock` refuses the stale holder's write by its fencing token; this one
//! cannot. That difference is what the lab shows with it (the test
//! `without_fencing_a_holder_stalled_past_the_ttl_oversells`).
//!
//! The TTL is `LOCK_TTL_MS` (the seeds' `EX` is in seconds; the setting is
//! in milliseconds, so `PX`). Like every read-check-write strategy, its write
//! goes through `write.lua` without a token: a restock still fences it (the
//! generation), and an Idempotency-Key is still checked where it commits.
//! Waiting for the lock is bounded by `LOCK_WAIT_MS` with jittered backoff,
//! as in `lock`; a waiter that reads sold out or its limit leaves at once.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Attempt, Outcome, Purchase, Returns, Snapshot, Strategy, StrategyError, StrategyKind};
use crate::infra::redis_conn::RedisConn;
use crate::infra::token_lock::{self, Backoff};

pub struct LockUnfenced {
    redis: RedisConn,
    ttl: Duration,
    wait: Duration,
    /// Lab knob: sleep between read and write while holding the lock.
    race_window: Duration,
}

impl LockUnfenced {
    pub fn new(redis: RedisConn, ttl: Duration, wait: Duration, race_window: Duration) -> Self {
        Self {
            redis,
            ttl,
            wait,
            race_window,
        }
    }
}

#[async_trait]
impl Strategy for LockUnfenced {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LockUnfenced
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let keys = &purchase.keys;
        let mut redis = self.redis.clone();
        let token = token_lock::new_token();
        let mut backoff = Backoff::new(self.wait);
        let acquired_at = loop {
            if token_lock::try_take(&mut redis, keys.lock(), &token, self.ttl).await? {
                break Instant::now();
            }
            let mut read = redis::pipe();
            Snapshot::read(&mut read, purchase);
            let waiting = Snapshot::from_replies(read.query_async(&mut redis).await?);
            if let Some(rejection) = waiting.rejection(purchase.strategy) {
                return Ok(Attempt::new(rejection).with_retries(backoff.waits()));
            }
            if !backoff.wait().await {
                return Ok(Attempt::new(Outcome::Contended {
                    detail: format!("lock not acquired within {:?}", self.wait),
                })
                .with_retries(backoff.waits()));
            }
        };

        let section = async {
            let snapshot = Snapshot::fetch(&mut redis, purchase).await?;
            if let Some(rejection) = snapshot.rejection(purchase.strategy) {
                return Ok::<_, StrategyError>(rejection);
            }
            // The value computed under a lock that may have expired: nothing
            // checks that it is still ours.
            purchase
                .write_as_read(&mut redis, &snapshot, self.race_window, Returns::Kept)
                .await
        };
        let outcome = section.await;
        let released = token_lock::unlock(&mut redis, keys.lock(), &token).await;
        let lock_expired = matches!(released, Ok(false));
        if lock_expired {
            tracing::warn!(
                item = %purchase.item,
                held_ms = acquired_at.elapsed().as_millis() as u64,
                ttl_ms = self.ttl.as_millis() as u64,
                "unfenced lock expired before release: its write may have overwritten another holder's"
            );
        }
        Ok(Attempt {
            outcome: outcome?,
            retries: backoff.waits(),
            lock_expired,
            fenced: false,
        })
    }
}
