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
//! `Contended` (503), counted as such.
//!
//! A lock can expire under a slow or paused holder (longer than `LOCK_TTL_MS`),
//! and the next buyer then reads the same stock. Two defences:
//! - a fencing token: each acquisition also takes `INCR fence` (in
//!   `acquire_fenced.lua`, see [`crate::infra::token_lock`]), and the write (`write.lua`) is refused unless the
//!   fence still holds our number, so a stale holder cannot write. Its buyer
//!   gets 503 `contention` (nothing bought), counted as `fenced`;
//! - an optional watchdog (`LOCK_WATCHDOG=true`) that extends the lock every
//!   third of the TTL while the holder runs, so a merely slow holder keeps it.
//!
//! A restock deletes the lock and starts a new sale; a holder from the old sale
//! then finds its write refused by `write.lua`'s generation check (409
//! `sale_restarted`), whether or not anyone took the lock since.
//!
//! A release that finds the lock gone (compare-and-delete returns 0) is counted
//! as `lock_expired` and logged, never ignored.

use std::time::{Duration, Instant};

use crate::infra::redis_conn::RedisConn;
use async_trait::async_trait;

use super::{
    Attempt, Outcome, Purchase, Snapshot, StockWrite, Strategy, StrategyError, StrategyKind,
    Written,
};
use crate::infra::token_lock::{self, Backoff};

pub struct Lock {
    redis: RedisConn,
    ttl: Duration,
    wait: Duration,
    /// Lab knob: sleep between read and write while holding the lock.
    race_window: Duration,
    watchdog: bool,
}

impl Lock {
    pub fn new(
        redis: RedisConn,
        ttl: Duration,
        wait: Duration,
        race_window: Duration,
        watchdog: bool,
    ) -> Self {
        Self {
            redis,
            ttl,
            wait,
            race_window,
            watchdog,
        }
    }

    /// Extends the lock every third of the TTL until aborted.
    fn spawn_watchdog(&self, key: String, token: String) -> tokio::task::JoinHandle<()> {
        let (mut redis, ttl) = (self.redis.clone(), self.ttl);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let extended = token_lock::renew(&mut redis, &key, &token, ttl).await;
                if !matches!(extended, Ok(true)) {
                    break;
                }
            }
        })
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
        let token = token_lock::new_token();
        let mut backoff = Backoff::new(self.wait);

        let (snapshot, fence, acquired_at) = loop {
            // One transaction: the holder writes the stock it read plus the
            // units returned since (`StockWrite::Set`), so the stock and the
            // `returned` count must be read at one instant. A return landing
            // between two reads of a plain pipeline would be counted twice.
            let mut pipe = redis::pipe();
            pipe.atomic();
            token_lock::add_acquire_fenced(&mut pipe, keys.lock(), keys.fence(), &token, self.ttl);
            Snapshot::read(&mut pipe, purchase);
            let (fence, meta, held, stock): (Option<i64>, _, _, _) =
                pipe.query_async(&mut redis).await?;
            let snapshot = Snapshot::from_replies((meta, held, stock));
            if let Some(fence) = fence {
                // The holder binds an unbound sale before deciding (once per
                // sale); waiters only read.
                let snapshot = snapshot.bound_for(&mut redis, purchase).await?;
                break (snapshot, fence, Instant::now());
            }
            if let Some(rejection) = snapshot.rejection(purchase.strategy) {
                return Ok(Attempt::new(rejection).with_retries(backoff.waits()));
            }
            if !backoff.wait().await {
                return Ok(Attempt::new(Outcome::Contended {
                    detail: format!("lock not acquired within {:?}", self.wait),
                })
                .with_retries(backoff.waits()));
            }
        };

        // Aborted on every way out, a cancelled request's included: a
        // watchdog left running would extend a dead holder's lock forever.
        let watchdog = self
            .watchdog
            .then(|| AbortOnDrop(self.spawn_watchdog(keys.lock().to_owned(), token.clone())));
        let mut pipe = redis::pipe();
        let outcome = match snapshot.rejection(purchase.strategy) {
            Some(rejection) => rejection,
            None => {
                if !self.race_window.is_zero() {
                    tokio::time::sleep(self.race_window).await;
                }
                let remaining = snapshot.stock - 1;
                purchase.add_guarded_write(
                    &mut pipe,
                    snapshot.generation,
                    Some(fence),
                    StockWrite::Set {
                        remaining,
                        returned: Some(snapshot.returned),
                    },
                );
                Outcome::Purchased { remaining }
            }
        };
        drop(watchdog);
        let wrote = matches!(outcome, Outcome::Purchased { .. });
        let (written, released): (Option<redis::Value>, i64) = if wrote {
            token_lock::add_unlock(&mut pipe, keys.lock(), &token);
            purchase.committing_in_steps();
            pipe.query_async(&mut redis).await?
        } else {
            token_lock::add_release_unused(&mut pipe, keys.lock(), keys.fence(), &token, fence);
            let (released,): (i64,) = pipe.query_async(&mut redis).await?;
            (None, released)
        };

        let written = written.as_ref().map(Written::from_reply).transpose()?;
        let restarted = written == Some(Written::SaleRestarted);
        // A restock deletes the lock: gone, but not expired under us.
        let lock_expired = released == 0 && !restarted;
        if lock_expired {
            tracing::warn!(
                item = %purchase.item,
                held_ms = acquired_at.elapsed().as_millis() as u64,
                ttl_ms = self.ttl.as_millis() as u64,
                "lock expired before release: the critical section ran partly unprotected"
            );
        }
        let fenced = written == Some(Written::Fenced);
        let outcome = if let Some(Written::KeyBought(bought)) = written {
            Outcome::KeyBought(bought)
        } else if restarted {
            tracing::info!(item = %purchase.item, "lock holder's write refused: the item was restocked");
            Outcome::SaleRestarted
        } else if fenced {
            tracing::warn!(item = %purchase.item, fence, "stale lock holder's write refused by the fencing token");
            Outcome::Contended {
                detail: format!(
                    "the lock expired before the write (fencing token {fence} superseded); nothing was bought"
                ),
            }
        } else {
            outcome
        };
        Ok(Attempt {
            outcome,
            retries: backoff.waits(),
            lock_expired,
            fenced,
        })
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
