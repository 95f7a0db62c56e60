//! `optimistic`: WATCH/MULTI/EXEC. Watch the item's keys, read, decide, then
//! write in a transaction that Redis aborts if any watched key changed since the
//! WATCH. An aborted transaction is retried (bounded, counted).
//!
//! WATCH belongs to a connection, so this strategy takes a dedicated connection
//! from the pool for the whole attempt; a shared multiplexed connection would mix
//! up every buyer's watches. On a Redis Cluster the pooled connection is a
//! cluster connection of its own, and the WATCH, the reads, the `MULTI`
//! transaction and the `UNWATCH` all go to the master of the item's slot.
//! The WATCH rides in the same pipeline as the reads
//! (Redis runs one connection's commands in order), so an attempt is two round
//! trips: WATCH+reads, then MULTI..EXEC.
//!
//! Why retries can stay bounded without turning buyers away: only a successful
//! purchase (or a restock) writes the watched keys, so a buyer is aborted at most
//! once per unit someone else bought. With `max_retries` at or above the stock,
//! no buyer gives up while stock remains. Binding an unbound sale to
//! `optimistic` writes the watched meta hash too, so a buyer who finds the sale
//! unbound binds it before watching (not a retry).
//!
//! With an Idempotency-Key, its record is watched and read with the rest,
//! and written inside the `MULTI` ([`super::key_record`]): a purchase with
//! the same key that commits first aborts this one, whose retry finds the
//! key bought.
//!
//! A restock writes the watched keys as well: the transaction aborts, and the
//! retry sees a new generation. The purchase was made for the sale it first
//! read, so it ends there with `SaleRestarted` instead of buying in the new
//! sale. `RACE_WINDOW_MS` sleeps between the read and the `MULTI`.

use std::time::Duration;

use async_trait::async_trait;

use super::{
    Attempt, Outcome, Purchase, Snapshot, SnapshotReplies, Strategy, StrategyError, StrategyKind,
};
use crate::infra::redis_conn::{PooledConn, RedisPool};
use crate::strategy::key_record::Bought;

pub struct Optimistic {
    pool: RedisPool,
    max_retries: u32,
    /// Lab knob: sleep between the read and the transaction.
    race_window: Duration,
}

impl Optimistic {
    pub fn new(pool: RedisPool, max_retries: u32, race_window: Duration) -> Self {
        Self {
            pool,
            max_retries,
            race_window,
        }
    }

    async fn attempt(
        &self,
        conn: &mut PooledConn,
        purchase: &Purchase,
    ) -> Result<Attempt, StrategyError> {
        let keys = &purchase.keys;
        let mut retries = 0;
        let mut sale = None;
        loop {
            let mut read = redis::pipe();
            read.cmd("WATCH")
                .arg(keys.stock())
                .arg(keys.buyers())
                .arg(keys.meta());
            if let Some(keyed) = &purchase.keyed {
                // A commit of the key elsewhere aborts our transaction.
                read.arg(&keyed.record);
            }
            read.ignore();
            Snapshot::read(&mut read, purchase);
            purchase.add_key_read(&mut read);
            let (snapshot, bought) = if purchase.keyed.is_some() {
                let (meta, held, stock, bought): (_, _, _, redis::Value) =
                    read.query_async(conn).await?;
                (Snapshot::from_replies((meta, held, stock)), bought)
            } else {
                let replies: SnapshotReplies = read.query_async(conn).await?;
                (Snapshot::from_replies(replies), redis::Value::Nil)
            };
            if !matches!(bought, redis::Value::Nil) {
                conn.unwatch(keys.meta()).await?;
                let bought = Bought::from_reply(&bought).map_err(StrategyError::Protocol)?;
                return Ok(Attempt::new(Outcome::KeyBought(bought)).with_retries(retries));
            }
            if snapshot.limit.is_some() && snapshot.bound.is_none() {
                // Bind outside the watch: binding writes the watched meta
                // hash, which would abort our own transaction.
                conn.unwatch(keys.meta()).await?;
                Snapshot::fetch(conn, purchase).await?;
                continue;
            }
            let rejection = match sale {
                Some(generation) if generation != snapshot.generation => {
                    Some(Outcome::SaleRestarted)
                }
                _ => snapshot.rejection(purchase.strategy),
            };
            if let Some(rejection) = rejection {
                conn.unwatch(keys.meta()).await?;
                return Ok(Attempt::new(rejection).with_retries(retries));
            }
            sale = Some(snapshot.generation);
            if !self.race_window.is_zero() {
                tokio::time::sleep(self.race_window).await;
            }

            let mut write = redis::pipe();
            write.atomic().cmd("DECR").arg(keys.stock());
            purchase.add_buyer_and_order(&mut write, snapshot.generation);
            purchase.add_key_commit(&mut write);
            purchase.committing_in_steps();
            let committed: Option<(i64,)> = write.query_async(conn).await?;
            if committed.is_none() {
                purchase.not_committed();
            }
            match committed {
                Some((remaining,)) => {
                    return Ok(Attempt::new(Outcome::Purchased { remaining }).with_retries(retries));
                }
                None if retries < self.max_retries => {
                    retries += 1;
                    // Let the winner's task and the other losers run before we
                    // re-read; sleeping a whole timer tick (1 ms) would cost
                    // more than the retry itself.
                    tokio::task::yield_now().await;
                }
                None => {
                    return Ok(Attempt::new(Outcome::Contended {
                        detail: format!(
                            "transaction aborted {} times by concurrent buyers",
                            retries + 1
                        ),
                    })
                    .with_retries(retries));
                }
            }
        }
    }
}

#[async_trait]
impl Strategy for Optimistic {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Optimistic
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let mut checkout = Checkout(Some(self.pool.get().await?));
        let result = self.attempt(checkout.conn(), purchase).await;
        if result.is_ok() {
            checkout.give_back();
        }
        result
    }
}

/// A pooled connection that goes back to the pool only when an attempt ended
/// cleanly. After an error, or when the request was cancelled mid-attempt, it
/// may still hold a WATCH or be broken, so it is discarded rather than handed
/// to the next buyer.
struct Checkout(Option<PooledConn>);

impl Checkout {
    fn conn(&mut self) -> &mut PooledConn {
        // Only `give_back` and `drop` empty the slot, and both consume or end
        // the checkout, so the connection is always here while in use.
        self.0
            .as_mut()
            .expect("connection present until given back")
    }

    fn give_back(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.discard();
        }
    }
}
