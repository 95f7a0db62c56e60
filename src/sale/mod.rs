//! Items and their sales: create or restock (`PUT`), and the item view with the
//! truths of a sale, each from its own source:
//!
//! - `stock`: the stock counter the strategies decrement;
//! - `sold`: orders in the item's order log (a stream), one per 201: its
//!   entries, plus the orders a `lua-batch` entry holds past its first
//!   ([`order_log::EXTRA_ORDERS`]);
//! - `returned`: units that came back to the sale (cancelled or expired
//!   orders, [`lifecycle`]); `paid`: orders paid; `reserved` = sold − paid −
//!   returned, orders holding a unit until their deadline. In a sale without
//!   a payment window every order is paid when bought, and nothing returns;
//! - the invariant: stock + reserved + paid = initial_stock, so units out
//!   (sold − returned) never exceed the initial stock;
//! - `oversold` = max(0, sold − returned − initial_stock);
//! - `drift` = (initial_stock − stock) − (sold − returned): zero when every
//!   sale moved the counter down by exactly one and every return up by one;
//!   negative when updates were lost (`naive`), which hides oversell from the
//!   counter alone; positive when returns were lost (`naive` again);
//! - `undersold` = buyers turned away (`contention`, errors) before this
//!   instance saw the sale empty, at most the initial stock: units asked for
//!   while they sat on the shelf. Counted at each refusal, so a sale that
//!   later sold out still shows them;
//! - `persisted`: orders of this sale in SQL; `lag` = sold − persisted, what
//!   the persister has yet to move. Negative when SQL holds more orders of the
//!   sale than its order log (an `sql` order whose mirror failed, or orders
//!   that never went through the log): shown, never clamped to zero;
//! - `strategy`: the strategy the sale is bound to (`None` until its first
//!   purchase, unless the restock named one);
//! - per-strategy counters from [`crate::sale::stats`].
//!
//! A restock runs in one SQL write transaction: it updates the item's row
//! (the `sql` strategy's stock; the row lock keeps `sql` purchases out), runs
//! the Redis script that starts the new sale, then commits. If Redis fails the
//! transaction rolls back; if the commit fails after Redis restocked, the
//! request is a 503 and the admin repeats it; repeating is harmless.

pub mod expiry;
pub mod idempotency;
pub mod lifecycle;
pub mod metrics;
pub mod purchase;
pub mod stats;

use std::collections::BTreeMap;

use crate::infra::redis_conn::RedisConn;
use redis::Script;
use serde::Serialize;

use crate::domain::ItemId;
use crate::keys::{self, ItemKeys};
use crate::orders::db::Db;
use crate::orders::order_log;
use crate::sale::stats::{CounterSnapshot, Stats};
use crate::strategy::StrategyKind;

/// Largest stock one item may hold: far above any real flash sale, far below
/// where counters could overflow.
pub const MAX_STOCK: u64 = 1_000_000_000;
/// Largest per-user limit.
pub const MAX_PER_USER_LIMIT: u64 = 1_000_000;

/// What `PUT /api/items/{item}` sets.
#[derive(Debug, Clone, Copy)]
pub struct ItemSettings {
    pub stock: u64,
    pub per_user_limit: u64,
    /// The strategy the new sale is bound to; `None` leaves it to the first
    /// purchase.
    pub strategy: Option<StrategyKind>,
    /// How long a buyer has to pay (ms); 0: orders are final when bought
    /// ([`lifecycle`]).
    pub payment_window_ms: u64,
}

/// Result of a restock.
#[derive(Debug, Clone, Copy)]
pub struct Restocked {
    pub generation: u64,
    pub created: bool,
}

/// The item view of `GET /api/items/{item}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ItemView {
    pub item_id: ItemId,
    pub initial_stock: u64,
    /// Remaining units, as the stock counter says.
    pub stock: i64,
    pub per_user_limit: u64,
    /// Sale number: bumped by every restock.
    pub generation: u64,
    /// The strategy this sale is bound to; purchases naming another get 409
    /// `strategy_mismatch`. `None` until the first purchase binds it.
    #[schema(value_type = Option<StrategyKind>)]
    pub strategy: Option<String>,
    /// Orders in the sale's order log, one per 201.
    pub sold: u64,
    /// How long a buyer has to pay (ms); 0: orders are final when bought.
    #[serde(default)]
    pub payment_window_ms: u64,
    /// Orders holding a unit until they are paid or their deadline passes.
    #[serde(default)]
    pub reserved: u64,
    /// Orders paid (every order, in a sale without a payment window).
    #[serde(default)]
    pub paid: u64,
    /// Units that came back: orders cancelled or expired.
    #[serde(default)]
    pub returned: u64,
    /// Units out beyond the initial stock: max(0, sold − returned − initial).
    pub oversold: u64,
    /// (initial − stock) − (sold − returned): 0 when the counter moved with
    /// every order and every return.
    pub drift: i64,
    /// Buyers turned away (`contention`, errors) before the sale was seen
    /// empty, at most the initial stock.
    pub undersold: u64,
    /// Orders of this sale in SQL.
    pub persisted: u64,
    /// sold − persisted: orders in the order log not yet in SQL when
    /// positive; orders in SQL that the log lacks when negative.
    pub lag: i64,
    /// Purchases this instance answered 503 `unconfirmed`: fewer than
    /// `REDIS_WAIT_REPLICAS` replicas held them in time (sold, and in
    /// `sold` while they last). Read as 0 from a server that predates it.
    #[serde(default)]
    pub unconfirmed: u64,
    /// Per-strategy counters, by strategy name.
    #[schema(value_type = BTreeMap<StrategyKind, CounterSnapshot>)]
    pub strategies: BTreeMap<StrategyKind, CounterSnapshot>,
}

/// Replies to the view's transaction: `HMGET meta initial_stock
/// per_user_limit generation strategy extra_orders extra_orders_generation
/// payment_window_ms paid returned`, `GET stock`, `XLEN orders`.
type ViewReplies = (
    (
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
    ),
    Option<i64>,
    u64,
);

/// Item administration and views.
#[derive(Clone)]
pub struct Sales {
    redis: RedisConn,
    db: Db,
    restock: Script,
}

/// Whether Redis answered, but not with what an item's keys should hold: a
/// key of another type, or a value that does not parse. (Not Redis being
/// unreachable, busy or loading.)
fn unreadable(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
        || matches!(
            err.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        )
        // A pipeline reports the failed command's error inside its own.
        || err.to_string().contains("WRONGTYPE")
}

/// Why a sale operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("database query failed")]
    Database(#[from] sqlx::Error),
}

impl Sales {
    pub fn new(redis: RedisConn, db: Db) -> Self {
        Self {
            redis,
            db,
            restock: Script::new(include_str!("restock.lua")),
        }
    }

    /// Creates or restocks `item` and resets its sale (buyers, lock, order log,
    /// counters, strategy binding). The previous order log is kept under a new
    /// name, registered for the persister.
    pub async fn restock(
        &self,
        item: &ItemId,
        settings: ItemSettings,
        stats: &Stats,
    ) -> Result<Restocked, SaleError> {
        let keys = ItemKeys::new(item);
        let mut redis = self.redis.clone();
        // Listed first: an index entry for an item whose restock then failed
        // is skipped by the listing; an item missing from the index would be
        // missed by the persister.
        let _: () = redis::cmd("SADD")
            .arg(keys::items_index())
            .arg(item.as_str())
            .query_async(&mut redis)
            .await?;
        if settings.payment_window_ms > 0 {
            // Listed before the sale starts, like the index: the expiry
            // sweeps only listed items.
            let _: () = redis::cmd("SADD")
                .arg(keys::windowed_items())
                .arg(item.as_str())
                .query_async(&mut redis)
                .await?;
        }
        let mut tx = self.db.begin_write().await?;
        let floor =
            Db::restock_item(&mut tx, item, settings.stock, settings.per_user_limit).await?;
        let (generation, created, _archived): (u64, u8, u8) = self
            .restock
            .key(keys.stock())
            .key(keys.meta())
            .key(keys.buyers())
            .key(keys.orders())
            .key(keys.lock())
            .key(keys.new_archive())
            .key(keys.archives())
            .arg(settings.stock)
            .arg(settings.per_user_limit)
            .arg(floor)
            .arg(settings.strategy.map_or("", StrategyKind::as_str))
            .arg(settings.payment_window_ms)
            .invoke_async(&mut redis)
            .await?;
        if generation != floor {
            Db::set_item_generation(&mut tx, item, generation).await?;
        }
        tx.commit().await?;
        stats.reset(item);
        Ok(Restocked {
            generation,
            created: created == 1,
        })
    }

    /// The item view, or `None` if the item does not exist.
    pub async fn view(&self, item: &ItemId, stats: &Stats) -> Result<Option<ItemView>, SaleError> {
        let keys = ItemKeys::new(item);
        // One transaction (the keys share a slot): `sold` adds two reads, and a
        // batch between them would show it short for a moment.
        let (
            (initial, limit, generation, strategy, extra, extra_of, window, paid, returned),
            stock,
            entries,
        ): ViewReplies = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(keys.meta())
            .arg(&[
                "initial_stock",
                "per_user_limit",
                "generation",
                "strategy",
                order_log::EXTRA_ORDERS,
                order_log::EXTRA_ORDERS_GENERATION,
                lifecycle::PAYMENT_WINDOW_MS,
                lifecycle::PAID,
                lifecycle::RETURNED,
            ])
            .cmd("GET")
            .arg(keys.stock())
            .cmd("XLEN")
            .arg(keys.orders())
            .query_async(&mut self.redis.clone())
            .await?;
        let (Some(initial_stock), Some(per_user_limit)) = (initial, limit) else {
            return Ok(None);
        };
        let stock = stock.unwrap_or(0);
        let generation = generation.unwrap_or(0);
        // The log's entries, and the orders a batch's entry holds past its
        // first (order_log::ORDERS), if counted for this sale.
        let extra = extra.filter(|_| extra_of == Some(generation));
        let sold = entries + extra.unwrap_or(0);
        let payment_window_ms = window.unwrap_or(0);
        let returned = returned.unwrap_or(0);
        // Without a window every order is paid when bought; with one, the
        // orders neither paid nor returned are the ones still reserved.
        let (reserved, paid) = if payment_window_ms == 0 {
            (0, sold.saturating_sub(returned))
        } else {
            let paid = paid.unwrap_or(0);
            (sold.saturating_sub(paid + returned), paid)
        };
        let out = sold as i64 - returned as i64;
        let persisted = self.db.count_orders(item, generation).await?;
        let strategies = stats.snapshot(item);
        let refused: u64 = strategies.values().map(|c| c.refused_with_stock).sum();
        let unconfirmed = strategies.values().map(|c| c.unconfirmed).sum();
        Ok(Some(ItemView {
            item_id: item.clone(),
            initial_stock,
            stock,
            per_user_limit,
            generation,
            strategy,
            sold,
            payment_window_ms,
            reserved,
            paid,
            returned,
            oversold: out.saturating_sub(initial_stock as i64).max(0) as u64,
            drift: (initial_stock as i64 - stock) - out,
            undersold: refused.min(initial_stock),
            persisted,
            lag: sold as i64 - persisted as i64,
            unconfirmed,
            strategies,
        }))
    }

    /// Every item, by id.
    pub async fn list(&self, stats: &Stats) -> Result<Vec<ItemView>, SaleError> {
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::items_index())
            .query_async(&mut self.redis.clone())
            .await?;
        ids.sort();
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            // The index only ever receives validated ids; skip anything else
            // that found its way in rather than fail the whole listing.
            let Ok(item) = ItemId::parse(&id) else {
                continue;
            };
            match self.view(&item, stats).await {
                Ok(Some(view)) => views.push(view),
                Ok(None) => {}
                // One item whose keys Redis refuses to read as their types
                // (written by hand, or by a bug) must not hide every other
                // item: it is left out, and said so. Redis or the database
                // being unreachable still fails the listing.
                Err(SaleError::Redis(err)) if unreadable(&err) => {
                    tracing::error!(item = %item, %err, "item left out of the listing: its Redis keys cannot be read");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(views)
    }
}
