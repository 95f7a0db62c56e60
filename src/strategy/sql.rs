//! `sql`: the database baseline that flash-sale write-ups call "pessimistic and
//! slow". The stock lives in the `items` table; one transaction does:
//!
//! 1. `UPDATE items SET stock = stock - 1 WHERE item_id = $1 AND stock > 0
//!    RETURNING ...`: the conditional update is the guard, the row lock it
//!    takes serialises buyers of one item;
//! 2. the per-user limit: an upsert on `sql_buyers`, whose primary key
//!    (item, sale, user) serialises one user's concurrent requests and whose
//!    `WHERE units < limit` refuses the unit past the limit;
//! 3. the order insert ([`Db::insert_order_in`], the one orders `INSERT`).
//!
//! Before the transaction the purchase reads the sale's strategy binding in
//! Redis (`snapshot.lua`, binding an unbound sale to `sql`): the `sql` stock
//! is a second copy of the units, so selling from it beside a Redis strategy
//! would sell every unit twice.
//!
//! With an Idempotency-Key, the transaction first looks for the key's row
//! in `idempotency_keys` (a key that bought answers with that purchase),
//! and writes it beside the order: the key commits with its order or not at
//! all. A concurrent purchase with the same key finds the row once it waits
//! past the first's row lock (Postgres: the insert's conflict; SQLite:
//! `BEGIN IMMEDIATE` orders them).
//!
//! Any rejection rolls the whole transaction back. On SQLite the transaction
//! starts with `BEGIN IMMEDIATE`, taking the write lock up front so buyers
//! queue on SQLite's busy timeout instead of failing on a read-to-write
//! upgrade. On Postgres, `SQL_FOR_UPDATE=true` reads the row with `SELECT ...
//! FOR UPDATE` first and decrements unconditionally, to show what the explicit
//! row lock costs.
//!
//! The order is in SQL when the transaction commits. It is then mirrored into
//! Redis (stock, buyers, order log) by `write.lua`, so the item view and the
//! status page read every strategy's sale the same way. A failed mirror loses
//! nothing (the order is in SQL and the buyer gets the 201); it is logged, and
//! shows as `persisted` above `sold`. In a sale with a payment window the
//! row is stored `reserved` and the mirror reserves it in Redis; a mirror
//! refused (restocked since, or the key bought in Redis) makes the row final
//! (`paid`), since nothing will pay, cancel or expire it; a mirror whose
//! answer was lost leaves it reserved (it may have written).
//!
//! Restocks and purchases are ordered by the item's row lock: a restock
//! updates the row and runs its Redis script inside one SQL transaction (see
//! [`crate::sale`]), so a purchase's transaction sees either the old sale
//! (and commits before the restock starts) or the new one. The mirror checks
//! the generation in Redis: the order of a purchase that committed in the old
//! sale just before the restock is not mirrored into the new sale; it stays in
//! SQL under the old sale's generation, a real order with its 201.
//! The transaction also checks that the row's generation is the sale whose
//! binding the purchase read; a restock in between ends it with
//! `SaleRestarted`, so a purchase never sells `sql` units in a sale bound to
//! another strategy. `RACE_WINDOW_MS` sleeps twice: between the binding check
//! and the transaction, and inside the transaction, holding the row lock.

use std::time::Duration;

use crate::infra::redis_conn::RedisConn;
use async_trait::async_trait;
use sqlx::{Any, Transaction};

use super::{
    Attempt, Outcome, Purchase, Snapshot, StockWrite, Strategy, StrategyError, StrategyKind,
    Written,
};
use crate::orders::db::{Backend, Db, KeyRecord, OrderRecord};
use crate::orders::moves::OrderState;
use crate::strategy::key_record::{Bought, KeyedPurchase};

pub struct Sql {
    db: Db,
    redis: RedisConn,
    for_update: bool,
    /// Lab knob: sleep inside the transaction, holding the row lock.
    race_window: Duration,
}

impl Sql {
    /// `for_update` only applies on Postgres (SQLite has no row locks).
    pub fn new(db: Db, redis: RedisConn, for_update: bool, race_window: Duration) -> Self {
        let for_update = for_update && db.backend() == Backend::Postgres;
        Self {
            db,
            redis,
            for_update,
            race_window,
        }
    }

    /// Runs the transaction for the sale numbered `sale` (whose binding the
    /// purchase checked); `Ok(Err(outcome))` is a rejection (rolled back).
    /// `windowed`: the sale has a payment window, and the order's row is
    /// stored `reserved`.
    async fn transact(
        &self,
        purchase: &Purchase,
        sale: u64,
        windowed: bool,
    ) -> Result<Result<(i64, u64), Outcome>, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let item = purchase.item.as_str();
        if let Some(bought) = key_bought(&mut tx, purchase).await? {
            tx.rollback().await?;
            return Ok(Err(Outcome::KeyBought(bought)));
        }
        let decremented: Option<(i64, i64, i64)> = if self.for_update {
            let row: Option<(i64, i64, i64)> = sqlx::query_as(
                "SELECT stock, per_user_limit, generation FROM items WHERE item_id = $1 FOR UPDATE",
            )
            .bind(item)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some((stock, limit, generation)) if stock > 0 => {
                    sqlx::query("UPDATE items SET stock = stock - 1 WHERE item_id = $1")
                        .bind(item)
                        .execute(&mut *tx)
                        .await?;
                    Some((stock - 1, limit, generation))
                }
                _ => None,
            }
        } else {
            sqlx::query_as(
                "UPDATE items SET stock = stock - 1 WHERE item_id = $1 AND stock > 0
                 RETURNING stock, per_user_limit, generation",
            )
            .bind(item)
            .fetch_optional(&mut *tx)
            .await?
        };
        let Some((remaining, limit, generation)) = decremented else {
            // A purchase with the same key may have committed while this
            // one waited for the row: a new statement sees it.
            let outcome = match key_bought(&mut tx, purchase).await? {
                Some(bought) => Outcome::KeyBought(bought),
                None => classify_refusal(&mut tx, purchase).await?,
            };
            tx.rollback().await?;
            return Ok(Err(outcome));
        };
        if generation.max(0) as u64 != sale {
            // Restocked between the binding check and this row lock: the new
            // sale may be bound to another strategy, whose units these are.
            tx.rollback().await?;
            return Ok(Err(Outcome::SaleRestarted));
        }
        if !self.race_window.is_zero() {
            tokio::time::sleep(self.race_window).await;
        }

        let counted = sqlx::query(
            "INSERT INTO sql_buyers (item_id, generation, user_id, units) VALUES ($1, $2, $3, 1)
             ON CONFLICT (item_id, generation, user_id)
             DO UPDATE SET units = sql_buyers.units + 1 WHERE sql_buyers.units < $4",
        )
        .bind(item)
        .bind(generation)
        .bind(purchase.user.as_str())
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if counted == 0 {
            // As on the stock's refusal: a purchase with this key may have
            // committed while this one waited (Postgres reads each
            // statement afresh).
            let outcome = match key_bought(&mut tx, purchase).await? {
                Some(bought) => Outcome::KeyBought(bought),
                None => Outcome::LimitReached {
                    limit: limit.max(0) as u64,
                },
            };
            tx.rollback().await?;
            return Ok(Err(outcome));
        }

        let order = OrderRecord {
            order_id: purchase.order_id,
            item_id: item.to_owned(),
            user_id: purchase.user.to_string(),
            strategy: purchase.strategy.to_string(),
            generation,
            created_at: purchase.order_id.parts().unix_ms as i64,
        };
        if let Some(keyed) = &purchase.keyed {
            let record = KeyRecord {
                fingerprint: keyed.fingerprint.clone(),
                order_id: purchase.order_id,
                remaining,
            };
            let since = key_record_since(keyed);
            if !Db::record_key_in(&mut tx, item, keyed.key.as_str(), &record, since).await? {
                let bought = key_bought(&mut tx, purchase).await?;
                tx.rollback().await?;
                return match bought {
                    Some(bought) => Ok(Err(Outcome::KeyBought(bought))),
                    // Held by a record that expired meanwhile: as a
                    // conflict, asked again.
                    None => Ok(Err(Outcome::Contended {
                        detail: "the Idempotency-Key's record changed under this purchase".into(),
                    })),
                };
            }
        }
        let state = if windowed {
            OrderState::Reserved
        } else {
            OrderState::Paid
        };
        self.db.insert_order_in(&mut tx, &order, state).await?;
        purchase.committing();
        tx.commit().await?;
        Ok(Ok((remaining, generation.max(0) as u64)))
    }

    /// Copies a committed sale into Redis. Best effort: see the module doc.
    /// `windowed`: the order's row was stored `reserved`; a mirror that
    /// certainly wrote nothing leaves no reservation in Redis to pay, cancel
    /// or expire, so the row is made final (`paid`) instead.
    async fn mirror(&self, purchase: &Purchase, generation: u64, windowed: bool) {
        let mirrored = purchase
            .guarded_write(&mut self.redis.clone(), generation, StockWrite::Decrement)
            .await;
        if windowed && matches!(mirrored, Ok(ref written) if *written != Written::Yes) {
            let now = crate::orders::db::now_ms();
            if let Err(err) = self.db.finalize_order(purchase.order_id, now).await {
                tracing::warn!(
                    item = %purchase.item,
                    order_id = %purchase.order_id,
                    %err,
                    "sql order not mirrored, and not made final in SQL: it stays reserved there"
                );
            }
        }
        match mirrored {
            Ok(Written::Yes) => {}
            Ok(Written::KeyBought(bought)) => tracing::warn!(
                item = %purchase.item,
                order_id = %purchase.order_id,
                redis_order = ?bought.order_id,
                "sql order committed, but Redis holds another purchase for its Idempotency-Key; kept in SQL, not mirrored"
            ),
            Ok(_) => tracing::warn!(
                item = %purchase.item,
                order_id = %purchase.order_id,
                generation,
                "sql order committed in a sale that was restocked since; kept in SQL, not mirrored into the new sale"
            ),
            Err(err) => tracing::warn!(
                item = %purchase.item,
                order_id = %purchase.order_id,
                %err,
                "sql order committed but not mirrored to Redis; it is safe in SQL"
            ),
        }
    }
}

/// The oldest `created_at` of a key record that still counts: one older
/// would have expired in Redis (`IDEMPOTENCY_TTL_S`).
fn key_record_since(keyed: &KeyedPurchase) -> i64 {
    crate::orders::db::now_ms().saturating_sub(keyed.ttl_ms as i64)
}

/// The purchase's key, if it bought already in SQL (read inside `tx`).
async fn key_bought(
    tx: &mut Transaction<'static, Any>,
    purchase: &Purchase,
) -> Result<Option<Bought>, sqlx::Error> {
    let Some(keyed) = &purchase.keyed else {
        return Ok(None);
    };
    let record = Db::key_bought_in(
        tx,
        purchase.item.as_str(),
        keyed.key.as_str(),
        key_record_since(keyed),
    )
    .await?;
    Ok(record.map(|record| Bought {
        fingerprint: record.fingerprint,
        order_id: Some(record.order_id),
        remaining: record.remaining,
        legacy_body: None,
    }))
}

/// Why the conditional update found no row: no item, the user's limit (checked
/// first, like every strategy), or no stock.
async fn classify_refusal(
    tx: &mut Transaction<'static, Any>,
    purchase: &Purchase,
) -> Result<Outcome, sqlx::Error> {
    let item = purchase.item.as_str();
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT per_user_limit, generation FROM items WHERE item_id = $1")
            .bind(item)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((limit, generation)) = row else {
        return Ok(Outcome::ItemNotFound);
    };
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT units FROM sql_buyers WHERE item_id = $1 AND generation = $2 AND user_id = $3",
    )
    .bind(item)
    .bind(generation)
    .bind(purchase.user.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(if held.unwrap_or(0) >= limit {
        Outcome::LimitReached {
            limit: limit.max(0) as u64,
        }
    } else {
        Outcome::SoldOut
    })
}

#[async_trait]
impl Strategy for Sql {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Sql
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let binding = Snapshot::fetch(&mut self.redis.clone(), purchase).await?;
        if let Some(refusal @ (Outcome::ItemNotFound | Outcome::StrategyMismatch { .. })) =
            binding.rejection(purchase.strategy)
        {
            return Ok(Attempt::new(refusal));
        }
        if !self.race_window.is_zero() {
            tokio::time::sleep(self.race_window).await;
        }
        match self
            .transact(purchase, binding.generation, binding.windowed)
            .await?
        {
            Ok((remaining, generation)) => {
                self.mirror(purchase, generation, binding.windowed).await;
                Ok(Attempt::new(Outcome::Purchased { remaining }))
            }
            Err(rejection) => Ok(Attempt::new(rejection)),
        }
    }
}
