//! `lua`: the whole purchase as one `EVALSHA` (`purchase.lua`). Redis runs a
//! script to completion before any other command, so check, limit, decrement
//! and order append are one atomic step: no retries, no waiting, one round trip.
//!
//! The script is loaded once; `redis::Script` sends `EVALSHA` and, on a
//! `NOSCRIPT` reply (a restarted or flushed Redis), loads it and retries.

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{Attempt, Outcome, Purchase, Strategy, StrategyError, StrategyKind};

pub struct Lua {
    redis: ConnectionManager,
    script: Script,
}

impl Lua {
    pub fn new(redis: ConnectionManager) -> Self {
        Self {
            redis,
            script: Script::new(include_str!("purchase.lua")),
        }
    }
}

#[async_trait]
impl Strategy for Lua {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Lua
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let keys = &purchase.keys;
        let (code, value): (i64, i64) = self
            .script
            .key(&keys.stock)
            .key(&keys.meta)
            .key(&keys.buyers)
            .key(&keys.orders)
            .arg(purchase.user.as_str())
            .arg(purchase.order_id.0)
            .arg(purchase.strategy.as_str())
            .arg(purchase.order_id.parts().unix_ms)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let outcome = match code {
            0 => Outcome::Purchased { remaining: value },
            1 => Outcome::SoldOut,
            2 => Outcome::LimitReached {
                limit: value.max(0) as u64,
            },
            3 => Outcome::ItemNotFound,
            other => {
                return Err(StrategyError::Protocol(format!(
                    "purchase.lua returned code {other}"
                )));
            }
        };
        Ok(Attempt::new(outcome))
    }
}
