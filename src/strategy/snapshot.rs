//! What a read-check-write strategy reads before it decides (the sale's
//! limit, generation and strategy binding, the buyer's units, the stock),
//! and the one order of checks every strategy applies to it
//! ([`Snapshot::rejection`]).

use super::{Outcome, Purchase, StrategyError, StrategyKind};

/// `snapshot.lua`: the reads a read-check-write strategy decides on, and the
/// sale's strategy binding. Called on its own, by `EVALSHA` (a 40-byte hash
/// instead of the script; loaded again on `NOSCRIPT`).
static SNAPSHOT_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("snapshot.lua")));

/// The state a read-check-write strategy decides on.
///
/// Two ways to read it: [`Snapshot::read`], plain reads in a pipeline, for
/// buyers who only need to know whether to leave early (a lock waiter); and
/// [`Snapshot::fetch`], `snapshot.lua`, which also binds an unbound sale to
/// the purchase's strategy, for a buyer about to write. Waiters re-read on
/// every round, so their read must stay cheap: running the script there (Lua,
/// hundreds of times per unit sold) starved the lock holder on two cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub limit: Option<u64>,
    pub generation: u64,
    /// The strategy the sale is bound to; `None`: unbound (a plain read).
    pub bound: Option<String>,
    pub held: u64,
    pub stock: i64,
    /// Units returned to this sale (cancelled or expired orders) as of the
    /// read: [`super::StockWrite::Set`] keeps those that come after it.
    pub returned: u64,
    /// The sale has a payment window: its orders are reserved.
    pub windowed: bool,
}

/// Replies to [`Snapshot::read`]: `HMGET meta per_user_limit generation
/// strategy returned payment_window_ms`, `HGET buyers <user>`, `GET stock`.
pub(crate) type SnapshotReplies = (
    (
        Option<u64>,
        Option<u64>,
        Option<String>,
        Option<u64>,
        Option<u64>,
    ),
    Option<u64>,
    Option<i64>,
);

/// Reply to `snapshot.lua`.
type ScriptReply = (
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<u64>,
    Option<i64>,
    Option<u64>,
    Option<u64>,
);

impl Snapshot {
    /// Adds the plain reads to `pipe`; the replies read with `from_replies`.
    /// No binding: see [`Snapshot::bound_for`]. A writer that keeps the
    /// returns since its read ([`super::StockWrite::Set`]) must send them in
    /// a transaction (`pipe.atomic()`), so the stock and `returned` are one
    /// instant's.
    pub fn read(pipe: &mut redis::Pipeline, purchase: &Purchase) {
        pipe.cmd("HMGET")
            .arg(purchase.keys.meta())
            .arg(&[
                "per_user_limit",
                "generation",
                "strategy",
                "returned",
                "payment_window_ms",
            ])
            .cmd("HGET")
            .arg(purchase.keys.buyers())
            .arg(purchase.user.as_str())
            .cmd("GET")
            .arg(purchase.keys.stock());
    }

    pub fn from_replies(
        ((limit, generation, bound, returned, window), held, stock): SnapshotReplies,
    ) -> Self {
        Self {
            limit,
            generation: generation.unwrap_or(0),
            bound,
            held: held.unwrap_or(0),
            stock: stock.unwrap_or(0),
            returned: returned.unwrap_or(0),
            windowed: window.is_some_and(|ms| ms > 0),
        }
    }

    /// Reads and binds an unbound sale to the purchase's strategy
    /// (`snapshot.lua`, `EVALSHA`): the read of a buyer about to write.
    pub async fn fetch(
        redis: &mut impl redis::aio::ConnectionLike,
        purchase: &Purchase,
    ) -> Result<Self, StrategyError> {
        let (limit, generation, bound, held, stock, returned, window): ScriptReply =
            SNAPSHOT_SCRIPT
                .key(purchase.keys.meta())
                .key(purchase.keys.buyers())
                .key(purchase.keys.stock())
                .arg(purchase.user.as_str())
                .arg(purchase.strategy.as_str())
                .invoke_async(redis)
                .await?;
        Ok(Self::from_replies((
            (limit, generation, bound, returned, window),
            held,
            stock,
        )))
    }

    /// This snapshot if its sale is bound, else a fresh one that binds it: a
    /// plain read that found the sale unbound must bind before writing.
    pub async fn bound_for(
        self,
        redis: &mut impl redis::aio::ConnectionLike,
        purchase: &Purchase,
    ) -> Result<Self, StrategyError> {
        if self.limit.is_none() || self.bound.is_some() {
            return Ok(self);
        }
        Self::fetch(redis, purchase).await
    }

    /// The rejection this snapshot calls for, if any, for a purchase naming
    /// `strategy`.
    pub fn rejection(&self, strategy: StrategyKind) -> Option<Outcome> {
        match (self.limit, &self.bound) {
            (None, _) => Some(Outcome::ItemNotFound),
            // Unbound (a plain read) is no mismatch: the writer binds first.
            (Some(_), Some(bound)) if bound != strategy.as_str() => {
                Some(Outcome::StrategyMismatch {
                    bound: bound.clone(),
                })
            }
            (Some(limit), _) if self.held >= limit => Some(Outcome::LimitReached { limit }),
            (Some(_), _) if self.stock <= 0 => Some(Outcome::SoldOut),
            (Some(_), _) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_checks_existence_then_binding_then_limit_then_stock() {
        let snap = |limit, bound: &str, held, stock| {
            Snapshot::from_replies((
                (limit, Some(1), Some(bound.to_owned()), None, None),
                Some(held),
                Some(stock),
            ))
        };
        let lua = StrategyKind::Lua;
        assert_eq!(
            snap(None, "lua", 0, 5).rejection(lua),
            Some(Outcome::ItemNotFound)
        );
        assert_eq!(
            snap(Some(1), "naive", 1, 0).rejection(lua),
            Some(Outcome::StrategyMismatch {
                bound: "naive".into()
            })
        );
        assert_eq!(
            snap(Some(1), "lua", 1, 0).rejection(lua),
            Some(Outcome::LimitReached { limit: 1 })
        );
        assert_eq!(
            snap(Some(2), "lua", 1, 0).rejection(lua),
            Some(Outcome::SoldOut)
        );
        assert_eq!(snap(Some(2), "lua", 1, 3).rejection(lua), None);
    }
}
