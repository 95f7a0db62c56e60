//! The concurrency-control strategies: the subject of this lab.
//!
//! Each strategy is one file behind the [`Strategy`] trait and is picked per
//! request by name from the [`Registry`]. All of them do the same thing to the
//! same keys (see [`crate::keys`]): check the item exists, check the user's
//! limit, check the stock, then decrement the stock, count the unit against the
//! user, and append the order to the item's order log. They differ only in what
//! keeps two buyers from interleaving:
//!
//! | name | guard |
//! |---|---|
//! | [`naive`] | nothing: read, check, write (the control group; oversells) |
//! | [`optimistic`] | WATCH/MULTI/EXEC on a dedicated connection, bounded retries |
//! | [`lock`] | a `SET NX PX` token lock around read-check-write |
//! | [`lua`] | one atomic script |
//! | [`redlock`] | a quorum lock over several Redis nodes around read-check-write |
//! | [`sql`] | a database transaction with a conditional `UPDATE` |
//! | `lock-gated`, `optimistic-gated` | the same behind an in-process [`gate`] |
//!
//! Check order is the same everywhere: item exists, then the user's limit, then
//! the stock; so the same request gets the same answer from every strategy.

pub mod gate;
pub mod lock;
pub mod lua;
pub mod naive;
pub mod optimistic;
pub mod redlock;
pub mod sql;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{ItemId, UserId};
use crate::keys::ItemKeys;
use crate::snowflake::OrderId;

/// A strategy's name, as requests spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "&'static str")]
pub enum StrategyKind {
    Naive,
    Optimistic,
    OptimisticGated,
    Lock,
    LockGated,
    Lua,
    Redlock,
    Sql,
}

impl From<StrategyKind> for &'static str {
    fn from(kind: StrategyKind) -> Self {
        kind.as_str()
    }
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 8] = [
        Self::Naive,
        Self::Optimistic,
        Self::OptimisticGated,
        Self::Lock,
        Self::LockGated,
        Self::Lua,
        Self::Redlock,
        Self::Sql,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Optimistic => "optimistic",
            Self::OptimisticGated => "optimistic-gated",
            Self::Lock => "lock",
            Self::LockGated => "lock-gated",
            Self::Lua => "lua",
            Self::Redlock => "redlock",
            Self::Sql => "sql",
        }
    }

    /// Dense index, for per-strategy counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StrategyKind {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == raw)
            .ok_or_else(|| {
                format!(
                    "unknown strategy `{raw}`; valid strategies are: {}",
                    Self::names()
                )
            })
    }
}

/// One purchase to attempt. The order id is minted before the attempt so that
/// retries inside a strategy append the same order.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub item: ItemId,
    pub keys: ItemKeys,
    pub user: UserId,
    pub order_id: OrderId,
    pub strategy: StrategyKind,
}

impl Purchase {
    pub fn new(item: ItemId, user: UserId, order_id: OrderId, strategy: StrategyKind) -> Self {
        Self {
            keys: ItemKeys::new(&item),
            item,
            user,
            order_id,
            strategy,
        }
    }

    /// Adds the part of a sale's write every Redis-side strategy shares:
    /// count the unit against the user, append the order to the order log.
    /// Each strategy adds its own stock operation (a plain `SET` of the value
    /// it computed, or `DECR`) and decides whether the pipeline is atomic.
    pub fn add_buyer_and_order(&self, pipe: &mut redis::Pipeline, generation: u64) {
        pipe.cmd("HINCRBY")
            .arg(&self.keys.buyers)
            .arg(self.user.as_str())
            .arg(1)
            .ignore()
            .cmd("XADD")
            .arg(&self.keys.orders)
            .arg("*")
            .arg(&self.order_fields(generation))
            .ignore();
    }

    /// The fields of the order-log entry (`XADD ... * <fields>`) for a sale
    /// of `generation`. The creation time is the id's own timestamp, so the two
    /// can never disagree. The persister reads these back (`crate::persister`).
    pub fn order_fields(&self, generation: u64) -> [(&'static str, String); 5] {
        [
            ("order_id", self.order_id.to_string()),
            ("user_id", self.user.to_string()),
            ("strategy", self.strategy.to_string()),
            ("created_ms", self.order_id.parts().unix_ms.to_string()),
            ("generation", generation.to_string()),
        ]
    }
}

/// What a purchase attempt came to. Errors (Redis unreachable) are not outcomes:
/// they are the `Err` side of [`Strategy::purchase`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Bought: the order is in the order log.
    Purchased {
        remaining: i64,
    },
    SoldOut,
    LimitReached {
        limit: u64,
    },
    ItemNotFound,
    /// The strategy gave up while stock may remain (lock wait or retries
    /// exhausted). Counted: it feeds `undersold`.
    Contended {
        detail: String,
    },
}

impl Outcome {
    /// A short stable name, for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Purchased { .. } => "purchased",
            Self::SoldOut => "sold_out",
            Self::LimitReached { .. } => "limit_reached",
            Self::ItemNotFound => "item_not_found",
            Self::Contended { .. } => "contention",
        }
    }
}

/// An outcome plus the effort it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub outcome: Outcome,
    /// Optimistic: aborted transactions retried. Lock: failed acquisitions
    /// (waits).
    pub retries: u32,
    /// Lock: the lock had expired before release, so the critical section ran
    /// partly unprotected. Never silently ignored: counted and logged.
    pub lock_expired: bool,
    /// Lock: the write was refused because a newer holder had taken the lock
    /// (fencing token superseded). Counted.
    pub fenced: bool,
}

impl Attempt {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            retries: 0,
            lock_expired: false,
            fenced: false,
        }
    }

    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }
}

/// Why an attempt could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("no pooled redis connection")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("database query failed")]
    Database(#[from] sqlx::Error),
    #[error("redis replied with unexpected data: {0}")]
    Protocol(String),
}

/// A concurrency-control strategy.
#[async_trait]
pub trait Strategy: Send + Sync {
    fn kind(&self) -> StrategyKind;

    /// Attempts one purchase. A rejected attempt (any outcome but `Purchased`)
    /// must leave every key as it found it.
    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError>;
}

/// The strategies this instance serves, by name.
#[derive(Clone, Default)]
pub struct Registry {
    strategies: BTreeMap<StrategyKind, Arc<dyn Strategy>>,
}

impl Registry {
    pub fn register(&mut self, strategy: Arc<dyn Strategy>) {
        self.strategies.insert(strategy.kind(), strategy);
    }

    /// The strategy named `raw`, or a message listing the valid names.
    pub fn get(&self, raw: &str) -> Result<Arc<dyn Strategy>, String> {
        let kind: StrategyKind = raw.parse()?;
        self.strategies.get(&kind).cloned().ok_or_else(|| {
            format!(
                "strategy `{raw}` is not enabled here; enabled strategies are: {}",
                self.names().join(", ")
            )
        })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.strategies.keys().map(|k| k.as_str()).collect()
    }
}

/// The state every strategy reads before deciding: `HMGET meta per_user_limit
/// generation`, `HGET buyers <user>`, `GET stock`, as one pipeline's replies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub limit: Option<u64>,
    pub generation: u64,
    pub held: u64,
    pub stock: i64,
}

/// Replies to [`Snapshot::read`], in order.
pub(crate) type SnapshotReplies = ((Option<u64>, Option<u64>), Option<u64>, Option<i64>);

impl Snapshot {
    /// Adds the three reads to `pipe`, in the order `from_replies` expects.
    pub fn read(pipe: &mut redis::Pipeline, purchase: &Purchase) {
        pipe.cmd("HMGET")
            .arg(&purchase.keys.meta)
            .arg(&["per_user_limit", "generation"])
            .cmd("HGET")
            .arg(&purchase.keys.buyers)
            .arg(purchase.user.as_str())
            .cmd("GET")
            .arg(&purchase.keys.stock);
    }

    pub fn from_replies(((limit, generation), held, stock): SnapshotReplies) -> Self {
        Self {
            limit,
            generation: generation.unwrap_or(0),
            held: held.unwrap_or(0),
            stock: stock.unwrap_or(0),
        }
    }

    /// The rejection this snapshot calls for, if any.
    pub fn rejection(&self) -> Option<Outcome> {
        match self.limit {
            None => Some(Outcome::ItemNotFound),
            Some(limit) if self.held >= limit => Some(Outcome::LimitReached { limit }),
            Some(_) if self.stock <= 0 => Some(Outcome::SoldOut),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.as_str().parse::<StrategyKind>(), Ok(kind));
        }
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let err = "fast".parse::<StrategyKind>().unwrap_err();
        assert!(
            err.contains(
                "naive, optimistic, optimistic-gated, lock, lock-gated, lua, redlock, sql"
            ),
            "{err}"
        );
    }

    #[test]
    fn snapshot_checks_existence_then_limit_then_stock() {
        let snap = |limit, held, stock| {
            Snapshot::from_replies(((limit, Some(1)), Some(held), Some(stock)))
        };
        assert_eq!(snap(None, 0, 5).rejection(), Some(Outcome::ItemNotFound));
        assert_eq!(
            snap(Some(1), 1, 0).rejection(),
            Some(Outcome::LimitReached { limit: 1 })
        );
        assert_eq!(snap(Some(2), 1, 0).rejection(), Some(Outcome::SoldOut));
        assert_eq!(snap(Some(2), 1, 3).rejection(), None);
    }
}
