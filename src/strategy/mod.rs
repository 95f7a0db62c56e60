//! The concurrency-control strategies: the subject of this lab.
//!
//! Each strategy is one file behind the [`Strategy`] trait and one line of
//! the catalogue (`catalogue.rs`: name, guard, construction), and is picked
//! per request by name from the [`Registry`]. All of them do the same thing to the
//! same keys (see [`crate::keys`]): check the item exists, check the user's
//! limit, check the stock, then decrement the stock, count the unit against the
//! user, and append the order to the item's order log. They differ only in what
//! keeps two buyers from interleaving:
//!
//! The catalogue names each with its guard; the files:
//! [`naive`] (the control group: it oversells), [`optimistic`], [`lock`],
//! [`lock_unfenced`] (`lock` without its fencing token: the control group
//! for fencing),
//! [`lua`], [`lua_batch`] (`lua` coalesced per item), [`redlock`], [`sql`],
//! and the in-process [`gate`] in front of `lock` and `optimistic`.
//!
//! Check order is the same everywhere: item exists, then the sale's strategy
//! binding, then the user's limit, then the stock; so the same request gets the
//! same answer from every strategy.
//!
//! # One strategy per sale
//! A guard only excludes buyers who use it, so a sale is bound to one strategy:
//! the one its restock named, or else the one its first purchase names
//! (`snapshot.lua`, `purchase.lua`; one atomic `HSET` in a script, so of two
//! first purchases naming different strategies exactly one wins, on any
//! instance). A purchase naming another strategy is refused before it writes
//! ([`Outcome::StrategyMismatch`]).
//!
//! # An Idempotency-Key is decided where the purchase commits
//! A purchase with a key carries its record ([`key_record`]); every
//! strategy's committing step (the script, `write.lua`, the `MULTI`, the
//! SQL transaction) first checks it and refuses to buy again for a key
//! that bought ([`Outcome::KeyBought`]), and writes it with the purchase.
//! Just before sending that step a strategy marks its purchase
//! ([`Purchase::committing`]), so an answer lost after it is looked for
//! instead of reported as "nothing bought".
//!
//! # A restock fences every guard
//! Every write that follows a read (`naive`, `lock`, `redlock`, the `sql`
//! mirror) goes through `write.lua`, which refuses it if the sale's generation
//! is no longer the one the writer read ([`Outcome::SaleRestarted`]): nothing
//! decided in one sale lands in the next. `optimistic` watches the sale's meta
//! hash, so a restock aborts its transaction, and its retry notices the new
//! generation; `lua` decides and writes in one step.

mod catalogue;
pub mod gate;
pub mod key_record;
pub mod lock;
pub mod lock_unfenced;
pub mod lua;
pub mod lua_batch;
pub mod naive;
pub mod optimistic;
pub mod redlock;
mod snapshot;
pub mod sql;

pub(crate) use snapshot::{Snapshot, SnapshotReplies};

/// `write.lua`: the generation-checked (and optionally fenced) write.
const WRITE_LUA: &str = concat!(
    include_str!("key_record.lua"),
    include_str!("reserve.lua"),
    include_str!("write.lua")
);

/// `reserve_alone.lua`: the reservation inside `optimistic`'s `MULTI`
/// (`EVAL`: a `MULTI` cannot retry a `NOSCRIPT`).
const RESERVE_ALONE_LUA: &str = concat!(
    include_str!("reserve.lua"),
    include_str!("reserve_alone.lua")
);

/// The same script for calls on their own: `EVALSHA` sends a 40-byte hash
/// instead of the script, and loads the script on `NOSCRIPT`. Inside a
/// pipeline a `NOSCRIPT` could not be retried, so pipelines send `EVAL`.
static WRITE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(WRITE_LUA));

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;

use std::sync::atomic::{AtomicU8, Ordering};

use crate::domain::{ItemId, UserId};
use crate::keys::ItemKeys;
use crate::orders::snowflake::OrderId;
use crate::outcome::Code;
use key_record::{Bought, KeyedPurchase};

pub use catalogue::{Decides, Registry, StrategyKind, Wiring};

impl StrategyKind {
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

impl StrategyKind {
    /// The strategies a command line names (each trimmed), or every one in
    /// the catalogue's order when it names none.
    pub fn named_or_all(names: &[String]) -> Result<Vec<Self>, String> {
        if names.is_empty() {
            return Ok(Self::ALL.to_vec());
        }
        names.iter().map(|name| name.trim().parse()).collect()
    }
}

/// One purchase to attempt. The order id is minted before the attempt so that
/// retries inside a strategy append the same order, and so that a purchase
/// whose answer is lost can be looked for.
#[derive(Debug)]
pub struct Purchase {
    pub item: ItemId,
    pub keys: ItemKeys,
    pub user: UserId,
    pub order_id: OrderId,
    pub strategy: StrategyKind,
    /// With an `Idempotency-Key`: the record the commit step checks and
    /// writes ([`crate::sale::idempotency`]).
    pub keyed: Option<KeyedPurchase>,
    /// Set by the strategy just before it sends the step that commits (and
    /// cleared when that step answered that it did not): after this, an
    /// error without an answer, or a purchase cut short, may have bought.
    committing: AtomicU8,
}

/// [`Purchase::committing`]'s states.
const NOT_COMMITTING: u8 = 0;
/// One script or transaction commit: an error reply means it wrote nothing.
const COMMITTING_ATOMICALLY: u8 = 1;
/// Several commands (a pipeline, a `MULTI`): one can commit and the next
/// fail, so even an error reply leaves the outcome to be looked up.
const COMMITTING_IN_STEPS: u8 = 2;

/// What a purchase's commit step may have done, as the strategy marked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committing {
    /// Not sent (or answered that it did not commit).
    No,
    /// One atomic step was sent: an error reply means nothing was written.
    Atomically,
    /// Several commands were sent: any error may follow a commit.
    InSteps,
}

impl Purchase {
    pub fn new(item: ItemId, user: UserId, order_id: OrderId, strategy: StrategyKind) -> Self {
        Self {
            keys: ItemKeys::new(&item),
            item,
            user,
            order_id,
            strategy,
            keyed: None,
            committing: AtomicU8::new(NOT_COMMITTING),
        }
    }

    /// The commit step, one atomic script or transaction commit, is about
    /// to be sent: from here on its outcome may be unknown.
    pub fn committing(&self) {
        self.committing
            .store(COMMITTING_ATOMICALLY, Ordering::Release);
    }

    /// The commit step, several commands of which one may commit and a
    /// later one fail, is about to be sent.
    pub fn committing_in_steps(&self) {
        self.committing
            .store(COMMITTING_IN_STEPS, Ordering::Release);
    }

    /// The commit step answered that it did not commit (an aborted
    /// `MULTI`, retried): nothing is in flight any more.
    pub fn not_committed(&self) {
        self.committing.store(NOT_COMMITTING, Ordering::Release);
    }

    /// What the commit step may have done without its answer reaching us.
    pub fn commit_state(&self) -> Committing {
        match self.committing.load(Ordering::Acquire) {
            NOT_COMMITTING => Committing::No,
            COMMITTING_ATOMICALLY => Committing::Atomically,
            _ => Committing::InSteps,
        }
    }

    /// Adds the buyer count and the order append to a `MULTI` (`optimistic`,
    /// whose `WATCH` is what keeps the write in the sale it read).
    /// With a payment window, the order is reserved in the same `MULTI`
    /// (`reserve_alone.lua`).
    pub fn add_buyer_and_order(&self, pipe: &mut redis::Pipeline, generation: u64) {
        let [(field, line)] = self.order_fields(generation);
        pipe.cmd("HINCRBY")
            .arg(self.keys.buyers())
            .arg(self.user.as_str())
            .arg(1)
            .ignore()
            .cmd("XADD")
            .arg(self.keys.orders())
            .arg("*")
            .arg(field)
            .arg(&line)
            .ignore()
            .cmd("EVAL")
            .arg(RESERVE_ALONE_LUA)
            .arg(3)
            .arg(self.keys.meta())
            .arg(self.keys.reserved())
            .arg(self.keys.deadlines())
            .arg(line)
            .ignore();
    }

    /// Adds `write.lua` to `pipe`: the write of a purchase decided in sale
    /// `generation`, refused if the sale has been restocked since, and, with a
    /// fencing token, if a newer lock holder exists. Its reply reads with
    /// [`Written::from_reply`].
    pub fn add_guarded_write(
        &self,
        pipe: &mut redis::Pipeline,
        generation: u64,
        fence: Option<i64>,
        stock: StockWrite,
    ) {
        pipe.cmd("EVAL")
            .arg(WRITE_LUA)
            .arg(if self.keyed.is_some() { 8 } else { 7 })
            .arg(self.keys.stock())
            .arg(self.keys.meta())
            .arg(self.keys.buyers())
            .arg(self.keys.orders())
            .arg(self.keys.fence())
            .arg(self.keys.reserved())
            .arg(self.keys.deadlines());
        if let Some(keyed) = &self.keyed {
            pipe.arg(&keyed.record);
        }
        pipe.arg(self.guarded_write_args(generation, fence, stock));
    }

    /// The unguarded tail of a read-check-write: after the lab's race window,
    /// store the stock `snapshot` read less one, whatever happened since
    /// (`write.lua` without a token: only a restock or the key's record
    /// refuses it). `naive` runs it with no guard, `lock-unfenced` under a
    /// lock that may have expired: the lost update both exist to show.
    /// Units returned since the read are kept ([`StockWrite::Set`]) unless
    /// `returns` is [`Returns::Lost`] (`naive`).
    pub(crate) async fn write_as_read(
        &self,
        redis: &mut impl redis::aio::ConnectionLike,
        snapshot: &Snapshot,
        race_window: std::time::Duration,
        returns: Returns,
    ) -> Result<Outcome, StrategyError> {
        if !race_window.is_zero() {
            tokio::time::sleep(race_window).await;
        }
        let remaining = snapshot.stock - 1;
        let written = self
            .guarded_write(
                redis,
                snapshot.generation,
                StockWrite::Set {
                    remaining,
                    returned: match returns {
                        Returns::Kept => Some(snapshot.returned),
                        Returns::Lost => None,
                    },
                },
            )
            .await?;
        Ok(written
            .refusal()
            .unwrap_or(Outcome::Purchased { remaining }))
    }

    /// `write.lua` on its own (`EVALSHA`): what [`Self::add_guarded_write`]
    /// adds to a pipeline.
    pub async fn guarded_write(
        &self,
        redis: &mut impl redis::aio::ConnectionLike,
        generation: u64,
        stock: StockWrite,
    ) -> Result<Written, StrategyError> {
        let mut call = WRITE_SCRIPT.prepare_invoke();
        call.key(self.keys.stock())
            .key(self.keys.meta())
            .key(self.keys.buyers())
            .key(self.keys.orders())
            .key(self.keys.fence())
            .key(self.keys.reserved())
            .key(self.keys.deadlines());
        if let Some(keyed) = &self.keyed {
            call.key(&keyed.record);
        }
        self.committing();
        let reply: redis::Value = call
            .arg(self.guarded_write_args(generation, None, stock))
            .invoke_async(redis)
            .await?;
        Written::from_reply(&reply)?.unfenced()
    }

    fn guarded_write_args(
        &self,
        generation: u64,
        fence: Option<i64>,
        stock: StockWrite,
    ) -> Vec<String> {
        let (value, returned) = match stock {
            StockWrite::Set {
                remaining,
                returned,
            } => (
                remaining.to_string(),
                returned.map(|n| n.to_string()).unwrap_or_default(),
            ),
            StockWrite::Decrement => (String::new(), String::new()),
        };
        let mut args = vec![
            generation.to_string(),
            fence.map(|f| f.to_string()).unwrap_or_default(),
            value,
            returned,
            self.user.to_string(),
        ];
        let [(name, value)] = self.order_fields(generation);
        args.push(name.to_owned());
        args.push(value);
        if let Some(keyed) = &self.keyed {
            args.push(self.order_id.to_string());
            args.push(keyed.fingerprint.clone());
            args.push(keyed.ttl_ms.to_string());
        }
        args
    }

    /// Adds the read of the key's record to an `optimistic` pipeline
    /// (`idem_bought`'s reply); nothing without a key.
    pub fn add_key_read(&self, pipe: &mut redis::Pipeline) {
        if let Some(keyed) = &self.keyed {
            pipe.cmd("EVAL")
                .arg(key_record::READ_LUA)
                .arg(1)
                .arg(&keyed.record);
        }
    }

    /// Adds the record's commit to a `MULTI` that decremented the stock.
    pub fn add_key_commit(&self, pipe: &mut redis::Pipeline) {
        if let Some(keyed) = &self.keyed {
            pipe.cmd("EVAL")
                .arg(key_record::COMMIT_LUA)
                .arg(2)
                .arg(&keyed.record)
                .arg(self.keys.stock())
                .arg(self.order_id.to_string())
                .arg(&keyed.fingerprint)
                .arg(keyed.ttl_ms)
                .ignore();
        }
    }

    /// The fields of the order-log entry for a sale of `generation`
    /// ([`crate::orders::order_log`]).
    pub fn order_fields(&self, generation: u64) -> [(&'static str, String); 1] {
        crate::orders::order_log::fields(
            self.order_id,
            &self.user,
            self.strategy.as_str(),
            generation,
        )
    }
}

/// How `write.lua` changes the stock.
#[derive(Debug, Clone, Copy)]
pub enum StockWrite {
    /// Store the value the writer computed under its guard, `remaining`,
    /// plus the units returned (cancelled or expired orders) since it read
    /// the sale's `returned` count alongside the stock. No guard of a
    /// read-check-write strategy keeps a return out, so without this a
    /// return between the read and the write would be overwritten.
    /// `returned: None` stores `remaining` as it is (`naive`).
    Set {
        remaining: i64,
        returned: Option<u64>,
    },
    /// Decrement (the `sql` mirror: SQL already decided).
    Decrement,
}

/// Whether an unguarded write keeps the units returned since its read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returns {
    Kept,
    /// `naive`: the value as read, returns and all overwritten.
    Lost,
}

/// What `write.lua` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// A newer lock holder's fencing token exists.
    Fenced,
    /// The sale was restocked after the writer read it.
    SaleRestarted,
    /// The purchase's Idempotency-Key bought already: nothing written.
    KeyBought(Bought),
}

impl Written {
    pub fn from_reply(reply: &redis::Value) -> Result<Self, StrategyError> {
        if let redis::Value::Array(_) = reply {
            return Bought::from_reply(reply)
                .map(Self::KeyBought)
                .map_err(StrategyError::Protocol);
        }
        let code: i64 = redis::from_redis_value_ref(reply).map_err(|err| {
            StrategyError::Protocol(format!("write.lua returned {reply:?}: {err}"))
        })?;
        match code {
            1 => Ok(Self::Yes),
            0 => Ok(Self::Fenced),
            -1 => Ok(Self::SaleRestarted),
            other => Err(StrategyError::Protocol(format!(
                "write.lua returned {other}"
            ))),
        }
    }

    /// The outcome of a purchase whose write this was, if it did not buy
    /// for a reason every writer treats alike.
    pub fn refusal(&self) -> Option<Outcome> {
        match self {
            Self::SaleRestarted => Some(Outcome::SaleRestarted),
            Self::KeyBought(bought) => Some(Outcome::KeyBought(bought.clone())),
            Self::Yes | Self::Fenced => None,
        }
    }

    /// For writers that hold no fencing token: `Fenced` cannot happen.
    pub fn unfenced(self) -> Result<Self, StrategyError> {
        match self {
            Self::Fenced => Err(StrategyError::Protocol(
                "write.lua fenced a write that carried no token".into(),
            )),
            other => Ok(other),
        }
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
    /// The sale is bound to another strategy (named here). Nothing written.
    StrategyMismatch {
        bound: String,
    },
    /// The item was restocked while this purchase was in flight; its write
    /// was refused, so it bought nothing in either sale.
    SaleRestarted,
    /// The strategy gave up while stock may remain (lock wait or retries
    /// exhausted). Counted: it feeds `undersold`.
    Contended {
        detail: String,
    },
    /// The purchase's Idempotency-Key bought already (its record, checked
    /// by the commit step): nothing written; the earlier purchase is
    /// replayed.
    KeyBought(Bought),
}

impl Outcome {
    /// Its line of the outcome catalogue.
    pub fn code(&self) -> Code {
        match self {
            Self::Purchased { .. } => Code::Purchased,
            Self::SoldOut => Code::SoldOut,
            Self::LimitReached { .. } => Code::LimitReached,
            Self::ItemNotFound => Code::ItemNotFound,
            Self::StrategyMismatch { .. } => Code::StrategyMismatch,
            Self::SaleRestarted => Code::SaleRestarted,
            Self::Contended { .. } => Code::Contention,
            Self::KeyBought(_) => Code::Replayed,
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
    Pool(#[from] crate::infra::redis_conn::PoolError),
    #[error("database query failed")]
    Database(#[from] sqlx::Error),
    #[error("redis replied with unexpected data: {0}")]
    Protocol(String),
}

impl StrategyError {
    /// Whether the request may have reached its server and run there
    /// without its answer reaching us: a timeout, a connection dropped
    /// mid-reply, a reply we could not read. A refused connection, an
    /// empty pool and an error reply all mean the command is not running
    /// any more (whether it wrote, a look-up then tells).
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::Redis(err) => err.is_io_error() && !err.is_connection_refusal(),
            Self::Pool(_) => false,
            Self::Database(err) => matches!(
                err,
                sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
            ),
            Self::Protocol(_) => true,
        }
    }
}

/// A concurrency-control strategy.
#[async_trait]
pub trait Strategy: Send + Sync {
    fn kind(&self) -> StrategyKind;

    /// Attempts one purchase. A rejected attempt (any outcome but `Purchased`)
    /// must leave every key as it found it.
    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError>;
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
                "naive, optimistic, optimistic-gated, lock, lock-gated, lock-unfenced, lua, lua-batch, redlock, sql"
            ),
            "{err}"
        );
    }

    #[test]
    fn write_replies_map_to_what_happened() {
        let int = redis::Value::Int;
        assert_eq!(Written::from_reply(&int(1)).unwrap(), Written::Yes);
        assert_eq!(Written::from_reply(&int(0)).unwrap(), Written::Fenced);
        assert_eq!(
            Written::from_reply(&int(-1)).unwrap(),
            Written::SaleRestarted
        );
        assert!(Written::from_reply(&int(7)).is_err());
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let bought =
            redis::Value::Array(vec![bulk("u\u{1f}lock"), bulk("42"), bulk("3"), bulk("")]);
        assert!(matches!(
            Written::from_reply(&bought).unwrap(),
            Written::KeyBought(b) if b.remaining == 3 && b.order_id.is_some()
        ));
    }
}
