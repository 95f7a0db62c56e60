//! Where an order is, by its id: in SQL, or still in its item's order log
//! (the current one, or one a restock set aside, until the persister has
//! it). This is how a purchase whose answer was lost learns whether it
//! bought ([`crate::sale::purchase`]), and what `GET /api/orders/{order_id}`
//! answers.

use std::time::Duration;

use crate::domain::ItemId;
use crate::infra::redis_conn::RedisConn;
use crate::keys::ItemKeys;
use crate::orders::db::{Db, OrderRecord};
use crate::orders::order_log::{self, Found};
use crate::orders::snowflake::OrderId;

/// Where an order was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// Persisted.
    Sql,
    /// Taken, not yet persisted: in the item's order log.
    OrderLog,
}

/// Why a lookup could not say.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the database cannot be read")]
    Database(#[from] sqlx::Error),
    #[error("redis cannot be read")]
    Redis(#[from] redis::RedisError),
    /// More orders stand around this order's time than one lookup reads.
    #[error("too many orders were taken around this order's time to search the log")]
    TooMany,
}

/// Finds orders by id.
#[derive(Clone)]
pub struct OrderLookup {
    redis: RedisConn,
    db: Db,
    /// How long after minting its id a purchase may still append its order
    /// (`REQUEST_TIMEOUT_MS`): the window a log is searched in.
    late: Duration,
}

impl OrderLookup {
    pub fn new(redis: RedisConn, db: Db, late: Duration) -> Self {
        Self { redis, db, late }
    }

    /// The Redis it reads.
    pub fn redis(&self) -> &RedisConn {
        &self.redis
    }

    /// The order `order_id` of `item`: `None` when neither SQL nor any of
    /// the item's order logs holds it now (a write still in flight may yet
    /// land: see the purchase's `outcome_unknown`).
    pub async fn find(
        &self,
        item: &ItemId,
        order_id: OrderId,
    ) -> Result<Option<(OrderRecord, Place)>, LookupError> {
        if let Some(order) = self.db.orders_by_id(&[order_id]).await?.pop() {
            return Ok(Some((order, Place::Sql)));
        }
        let keys = ItemKeys::new(item);
        let mut redis = self.redis.clone();
        let archives: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.archives())
            .query_async(&mut redis)
            .await?;
        let mut too_many = false;
        for log in std::iter::once(keys.orders()).chain(archives.iter().map(String::as_str)) {
            match order_log::find(&mut redis, item, log, order_id, self.late).await? {
                Found::Order(order) => return Ok(Some((order, Place::OrderLog))),
                Found::Absent => {}
                Found::TooMany => too_many = true,
            }
        }
        // The persister may have moved it to SQL while the logs were read.
        if let Some(order) = self.db.orders_by_id(&[order_id]).await?.pop() {
            return Ok(Some((order, Place::Sql)));
        }
        if too_many {
            return Err(LookupError::TooMany);
        }
        Ok(None)
    }
}
