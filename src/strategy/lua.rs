//! `lua`: the whole purchase as one `EVALSHA` (`purchase.lua`). Redis runs a
//! script to completion before any other command, so check, limit, decrement
//! and order append are one atomic step: no retries, no waiting, one round trip.
//!
//! The script is loaded once; `redis::Script` sends `EVALSHA` and, on a
//! `NOSCRIPT` reply (a restarted or flushed Redis), loads it and retries.

use crate::infra::redis_conn::RedisConn;
use crate::orders::order_log;
use async_trait::async_trait;
use redis::Script;

use super::{Attempt, Outcome, Purchase, Strategy, StrategyError, StrategyKind};
use crate::outcome::Code;
use crate::strategy::key_record::Bought;

pub struct Lua {
    redis: RedisConn,
    script: Script,
}

impl Lua {
    pub fn new(redis: RedisConn) -> Self {
        Self {
            redis,
            script: Script::new(concat!(
                include_str!("integer.lua"),
                include_str!("key_record.lua"),
                include_str!("reserve.lua"),
                include_str!("purchase.lua")
            )),
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
        let mut call = self.script.prepare_invoke();
        call.key(keys.stock())
            .key(keys.meta())
            .key(keys.buyers())
            .key(keys.orders())
            .key(keys.reserved())
            .key(keys.deadlines())
            .arg(purchase.user.as_str())
            .arg(order_log::head(
                purchase.order_id,
                &purchase.user,
                purchase.strategy.as_str(),
            ))
            .arg(purchase.strategy.as_str());
        if let Some(keyed) = &purchase.keyed {
            call.key(&keyed.record)
                .arg(purchase.order_id.to_string())
                .arg(&keyed.fingerprint)
                .arg(keyed.ttl_ms);
        }
        purchase.committing();
        let (code, value): (i64, redis::Value) = call.invoke_async(&mut self.redis.clone()).await?;
        Ok(Attempt::new(outcome(code, &value)?))
    }
}

/// The `{code, value}` reply of `purchase.lua`, or one purchase's code and
/// value in `purchase_batch.lua`'s flat reply (the same codes).
pub(super) fn outcome(code: i64, value: &redis::Value) -> Result<Outcome, StrategyError> {
    let parse_error = |err: redis::ParsingError| {
        StrategyError::Protocol(format!(
            "purchase script returned an unreadable value: {err}"
        ))
    };
    let number = || -> Result<i64, StrategyError> {
        redis::from_redis_value_ref(value).map_err(parse_error)
    };
    let unknown = || StrategyError::Protocol(format!("purchase script returned code {code}"));
    Ok(match Code::from_lua(code).ok_or_else(unknown)? {
        Code::Purchased => Outcome::Purchased {
            remaining: number()?,
        },
        Code::SoldOut => Outcome::SoldOut,
        Code::LimitReached => Outcome::LimitReached {
            limit: number()?.max(0) as u64,
        },
        Code::ItemNotFound => Outcome::ItemNotFound,
        Code::StrategyMismatch => Outcome::StrategyMismatch {
            bound: redis::from_redis_value_ref(value).map_err(parse_error)?,
        },
        Code::Replayed => {
            Outcome::KeyBought(Bought::from_reply(value).map_err(StrategyError::Protocol)?)
        }
        // Codes the catalogue gives no script code.
        Code::SaleRestarted
        | Code::IdempotencyInFlight
        | Code::IdempotencyKeyReused
        | Code::Contention
        | Code::Unconfirmed
        | Code::OutcomeUnknown
        | Code::Unavailable => return Err(unknown()),
    })
}
