//! `lock`: a Redis token lock around an ordinary read-check-write.
//!
//! Acquire with `SET lock <random token> NX PX <ttl>`; under the lock, read the
//! stock and the user's count, check, write stock − 1 with a plain `SET` (the
//! lock is what protects it: no atomic shortcut inside); release with a Lua
//! compare-and-delete so we never delete a lock someone else now holds.
//!
//! Round trips: two while holding the lock. The reads ride in the same pipeline
//! as the `SET NX` (Redis runs one connection's commands in order, and only a
//! lock holder writes the stock, so reads that follow a successful `SET NX` see
//! the state our write builds on); the writes ride with the release. A failed
//! acquisition's reads are not wasted: stock at 0, a user at the limit and a
//! missing item are final during a sale, so those buyers leave at once instead
//! of queueing for a lock they do not need.
//!
//! Waiting is bounded (`LOCK_WAIT_MS`) with exponential backoff and full jitter,
//! so waiters do not poll Redis in lockstep. A buyer whose wait runs out gets
//! `Contended` (503), counted as such. A lock that expired before its release
//! (the holder took longer than `LOCK_TTL_MS`) means the section ran partly
//! unprotected: the release notices (compare-and-delete returns 0), and it is
//! counted as `lock_expired` and logged, never ignored.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use redis::aio::ConnectionManager;

use super::{Attempt, Outcome, Purchase, Snapshot, Strategy, StrategyError, StrategyKind};

/// The release script, shared with the worker lease (same compare-and-delete).
pub const UNLOCK_LUA: &str = include_str!("unlock.lua");

/// First backoff after a failed acquisition: one timer tick.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// Backoff ceiling: a holder needs well under a millisecond, so waiting longer
/// than this only leaves the lock idle.
const MAX_BACKOFF: Duration = Duration::from_millis(16);

pub struct Lock {
    redis: ConnectionManager,
    ttl: Duration,
    wait: Duration,
    /// Lab knob: sleep between read and write while holding the lock.
    race_window: Duration,
}

impl Lock {
    pub fn new(
        redis: ConnectionManager,
        ttl: Duration,
        wait: Duration,
        race_window: Duration,
    ) -> Self {
        Self {
            redis,
            ttl,
            wait,
            race_window,
        }
    }
}

#[async_trait]
impl Strategy for Lock {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Lock
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let keys = &purchase.keys;
        let mut redis = self.redis.clone();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl_ms = self.ttl.as_millis() as u64;
        let deadline = Instant::now() + self.wait;
        let mut backoff = FIRST_BACKOFF;
        let mut waits = 0u32;

        let (snapshot, acquired_at) = loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&keys.lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms);
            Snapshot::read(&mut pipe, purchase);
            let (acquired, meta, held, stock): (Option<String>, _, _, _) =
                pipe.query_async(&mut redis).await?;
            let snapshot = Snapshot::from_replies((meta, held, stock));
            if acquired.is_some() {
                break (snapshot, Instant::now());
            }
            if let Some(rejection) = snapshot.rejection() {
                return Ok(Attempt::new(rejection).with_retries(waits));
            }
            let now = Instant::now();
            if now + backoff > deadline {
                return Ok(Attempt::new(Outcome::Contended {
                    detail: format!("lock not acquired within {:?}", self.wait),
                })
                .with_retries(waits));
            }
            let jittered = rand::rng().random_range(backoff / 2..=backoff);
            tokio::time::sleep(jittered).await;
            waits += 1;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };

        let mut pipe = redis::pipe();
        let outcome = match snapshot.rejection() {
            Some(rejection) => rejection,
            None => {
                if !self.race_window.is_zero() {
                    tokio::time::sleep(self.race_window).await;
                }
                let remaining = snapshot.stock - 1;
                pipe.cmd("SET")
                    .arg(&keys.stock)
                    .arg(remaining)
                    .ignore()
                    .cmd("HINCRBY")
                    .arg(&keys.buyers)
                    .arg(purchase.user.as_str())
                    .arg(1)
                    .ignore()
                    .cmd("XADD")
                    .arg(&keys.orders)
                    .arg("*")
                    .arg(&purchase.order_fields(snapshot.generation))
                    .ignore();
                Outcome::Purchased { remaining }
            }
        };
        // EVAL rather than EVALSHA: inside a pipeline a NOSCRIPT reply could not
        // be retried, and Redis caches the compiled script by its hash anyway.
        pipe.cmd("EVAL")
            .arg(UNLOCK_LUA)
            .arg(1)
            .arg(&keys.lock)
            .arg(&token);
        let (released,): (i64,) = pipe.query_async(&mut redis).await?;

        let lock_expired = released == 0;
        if lock_expired {
            tracing::warn!(
                item = %purchase.item,
                held_ms = acquired_at.elapsed().as_millis() as u64,
                ttl_ms,
                "lock expired before release: the critical section ran partly unprotected"
            );
        }
        Ok(Attempt {
            outcome,
            retries: waits,
            lock_expired,
        })
    }
}
