//! The order lifecycle of a sale with a payment window: a purchase reserves
//! a unit (`reserved`, by every strategy's commit step: `reserve.lua`); the
//! buyer pays (`paid`) or cancels (`cancelled`), or the deadline passes and
//! the server expires it (`expired`). Cancelled and expired orders give
//! their unit back to the sale and their buyer's allowance back.
//!
//! Every move is `lifecycle.lua`, one script on the item's keys, so the
//! moves of one order are serialised by Redis whatever instance sends them:
//! each order leaves `reserved` once, and a unit comes back at most once.
//! The deadline is Redis's clock, read by the scripts: instances whose
//! clocks disagree (or jump) agree on whether an order is due.
//!
//! How returns stay exact under each strategy: `lua`, `lua-batch` and
//! `optimistic` need nothing (a script is atomic; a return writes keys
//! `optimistic` watches, so its transaction aborts and retries). The
//! read-check-write strategies (`lock`, `lock-unfenced`, `redlock`) store an
//! absolute stock they computed under their guard, which a return does not
//! take: their write adds the returns counted since their read
//! ([`crate::strategy::StockWrite::Set`]). `naive` does not, and loses them.
//! `sql` keeps its stock in SQL, which a return here cannot reach: the
//! persister gives the unit back there when it applies the order's move,
//! once ([`crate::orders::db::Db::apply_moves`]).
//!
//! A sale without a window (the default) sells final orders: nothing is
//! reserved, and pay and cancel find its orders already paid.

use redis::Script;

use crate::domain::{ItemId, UserId};
use crate::infra::redis_conn::RedisConn;
use crate::keys::ItemKeys;
pub use crate::orders::moves::OrderState;
use crate::orders::moves::settled_state;
use crate::orders::snowflake::OrderId;

/// The meta hash field holding the sale's payment window (ms); absent: none.
pub const PAYMENT_WINDOW_MS: &str = "payment_window_ms";
/// The meta hash field counting the current sale's paid orders.
pub const PAID: &str = "paid";
/// The meta hash field counting the units the current sale got back.
pub const RETURNED: &str = "returned";

/// Longest payment window a sale may have: a day.
pub const MAX_PAYMENT_WINDOW_MS: u64 = 86_400_000;

/// What a buyer asks of a reserved order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pay,
    Cancel,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pay => "pay",
            Self::Cancel => "cancel",
        }
    }

    /// The state this action moves an order to.
    pub fn target(self) -> OrderState {
        match self {
            Self::Pay => OrderState::Paid,
            Self::Cancel => OrderState::Cancelled,
        }
    }
}

/// What a pay or cancel came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Moved now.
    Moved(OrderState),
    /// Moved earlier by this same action: a retry, answered the same.
    Again(OrderState),
    /// The order had ended otherwise (or expired just now): refused.
    Ended(OrderState),
    /// No order of this id was reserved in this item.
    Unknown,
    /// The order is another user's.
    NotBuyer,
}

/// One expiry sweep of an item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub orders: u64,
    /// How late the most overdue of them expired, after its deadline (ms).
    pub lag_max_ms: u64,
    /// More due orders wait than the sweep took.
    pub more: bool,
}

/// Why a lifecycle step failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Protocol(String),
}

/// Sends the lifecycle's moves.
#[derive(Clone)]
pub struct Lifecycle {
    redis: RedisConn,
    script: Script,
}

impl Lifecycle {
    pub fn new(redis: RedisConn) -> Self {
        Self {
            redis,
            script: Script::new(concat!(
                include_str!("../strategy/reserve.lua"),
                include_str!("lifecycle.lua")
            )),
        }
    }

    fn invoke(&self, keys: &ItemKeys) -> redis::ScriptInvocation<'_> {
        let mut call = self.script.prepare_invoke();
        call.key(keys.stock())
            .key(keys.meta())
            .key(keys.buyers())
            .key(keys.reserved())
            .key(keys.deadlines())
            .key(keys.settled())
            .key(keys.moves());
        call
    }

    /// `user` pays or cancels order `order_id` of `item`.
    pub async fn settle(
        &self,
        item: &ItemId,
        order_id: OrderId,
        user: &UserId,
        action: Action,
    ) -> Result<Settled, LifecycleError> {
        let keys = ItemKeys::new(item);
        let mut call = self.invoke(&keys);
        call.arg(action.as_str()).arg(order_id.0).arg(user.as_str());
        let (code, state): (i64, String) = call.invoke_async(&mut self.redis.clone()).await?;
        let state = || OrderState::parse(&state).map_err(LifecycleError::Protocol);
        Ok(match code {
            0 => Settled::Moved(state()?),
            1 => Settled::Again(state()?),
            2 => Settled::Ended(state()?),
            3 => Settled::Unknown,
            4 => Settled::NotBuyer,
            other => {
                return Err(LifecycleError::Protocol(format!(
                    "lifecycle.lua answered code {other}"
                )));
            }
        })
    }

    /// Expires at most `max` of `item`'s orders whose deadline has passed.
    pub async fn expire_due(&self, item: &ItemId, max: u32) -> Result<Expired, LifecycleError> {
        let keys = ItemKeys::new(item);
        let mut call = self.invoke(&keys);
        call.arg("expire").arg(max);
        let (orders, lag_max_ms, more): (u64, u64, u8) =
            call.invoke_async(&mut self.redis.clone()).await?;
        Ok(Expired {
            orders,
            lag_max_ms,
            more: more == 1,
        })
    }

    /// Where order `order_id` of `item` stands in Redis: reserved, or ended
    /// (with its buyer); `None` when Redis holds no lifecycle record of it
    /// (an order of a sale without a window, or no such order).
    pub async fn state(
        &self,
        item: &ItemId,
        order_id: OrderId,
    ) -> Result<Option<OrderState>, LifecycleError> {
        let keys = ItemKeys::new(item);
        let (reserved, ended): (bool, Option<String>) = redis::pipe()
            .cmd("HEXISTS")
            .arg(keys.reserved())
            .arg(order_id.0)
            .cmd("HGET")
            .arg(keys.settled())
            .arg(order_id.0)
            .query_async(&mut self.redis.clone())
            .await?;
        if reserved {
            return Ok(Some(OrderState::Reserved));
        }
        ended
            .map(|value| settled_state(&value).map_err(LifecycleError::Protocol))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts cannot import the field names: each one that reads or
    /// writes a lifecycle field names it as the constants here do.
    #[test]
    fn the_scripts_name_the_lifecycle_fields_as_here() {
        let quoted = |field: &str| format!("'{field}'");
        let scripts = [
            (
                "purchase.lua",
                include_str!("../strategy/purchase.lua"),
                &[PAYMENT_WINDOW_MS][..],
            ),
            (
                "purchase_batch.lua",
                include_str!("../strategy/purchase_batch.lua"),
                &[PAYMENT_WINDOW_MS],
            ),
            (
                "write.lua",
                include_str!("../strategy/write.lua"),
                &[PAYMENT_WINDOW_MS, RETURNED],
            ),
            (
                "reserve_alone.lua",
                include_str!("../strategy/reserve_alone.lua"),
                &[PAYMENT_WINDOW_MS],
            ),
            (
                "snapshot.lua",
                include_str!("../strategy/snapshot.lua"),
                &[RETURNED],
            ),
            (
                "restock.lua",
                include_str!("restock.lua"),
                &[PAYMENT_WINDOW_MS, PAID, RETURNED],
            ),
            (
                "lifecycle.lua",
                include_str!("lifecycle.lua"),
                &[PAID, RETURNED],
            ),
        ];
        for (name, script, fields) in scripts {
            for field in fields {
                assert!(
                    script.contains(&quoted(field)),
                    "{name} does not name '{field}'"
                );
            }
        }
        // The states the scripts write, as the API and SQL name them.
        let ended = [OrderState::Paid, OrderState::Cancelled, OrderState::Expired];
        for state in ended {
            assert!(include_str!("lifecycle.lua").contains(&quoted(state.as_str())));
        }
    }
}
