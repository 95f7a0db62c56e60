//! The strategy catalogue: one line per strategy, and everything else derives
//! from it: [`StrategyKind`] (its variants, [`StrategyKind::ALL`], names and
//! parsing), each strategy's one-line guard description, and how it is built
//! ([`Registry::build`]). The HTTP catalogue (`GET /api/strategies`), the
//! status page's checkboxes, the bench's default list and the tests' matrix
//! all read [`StrategyKind::ALL`].
//!
//! Adding a strategy: write its file in `src/strategy/`, then add its line
//! to the [`catalogue!`] call below.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::infra::redis_conn::{RedisConn, RedisPool};

use super::{Strategy, gate, lock, lock_unfenced, lua, lua_batch, naive, optimistic, redlock, sql};
use crate::config::Config;
use crate::orders::db::Db;

/// What strategies are built from.
pub struct Wiring<'a> {
    /// The main Redis, multiplexed.
    pub redis: RedisConn,
    /// Dedicated connections, for `WATCH` (`optimistic`).
    pub pool: RedisPool,
    pub db: Db,
    pub config: &'a Config,
}

impl Wiring<'_> {
    fn race_window(&self) -> Duration {
        Duration::from_millis(self.config.lab.race_window_ms)
    }

    fn optimistic(&self) -> Arc<dyn Strategy> {
        Arc::new(optimistic::Optimistic::new(
            self.pool.clone(),
            self.config.locks.optimistic_max_retries,
            self.race_window(),
        ))
    }

    fn lock(&self) -> Arc<dyn Strategy> {
        Arc::new(lock::Lock::new(
            self.redis.clone(),
            self.config.locks.lock_ttl(),
            self.config.locks.lock_wait(),
            self.race_window(),
            self.config.locks.lock_watchdog,
        ))
    }

    fn gated(&self, kind: StrategyKind, inner: Arc<dyn Strategy>) -> Arc<dyn Strategy> {
        Arc::new(gate::Gated::new(kind, inner, self.config.locks.lock_wait()))
    }

    fn redlock(&self) -> anyhow::Result<Arc<dyn Strategy>> {
        Ok(Arc::new(redlock::Redlock::new(
            self.redis.clone(),
            &self.config.locks.redlock_urls,
            self.config.locks.lock_ttl(),
            self.config.locks.lock_wait(),
            self.race_window(),
        )?))
    }
}

/// Where a strategy decides whether a purchase goes through: what a test
/// that attacks it must aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decides {
    /// In this process, between a read of Redis and a write to it: a
    /// restock or another buyer can land in between.
    BetweenReadAndWrite,
    /// In one atomic Redis script.
    InOneScript,
    /// In an SQL transaction.
    InSql,
}

/// How a strategy is built.
type Build = fn(&Wiring) -> anyhow::Result<Arc<dyn Strategy>>;

/// Declares [`StrategyKind`] and its catalogue from one table: variant,
/// name, guard, whether the guard keeps buyers apart, where it decides
/// ([`Decides`]), and how to build it from a [`Wiring`].
macro_rules! catalogue {
    ($($variant:ident = $name:literal, $guard:literal, $guarded:literal, $decides:ident,
        $build:expr;)+) => {
        /// A strategy's name, as requests spell it.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(into = "&'static str", try_from = "String")]
        pub enum StrategyKind {
            $($variant,)+
        }

        impl StrategyKind {
            /// Every strategy, in the catalogue's order.
            pub const ALL: [StrategyKind; [$($name),+].len()] = [$(Self::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// What keeps two buyers apart, in a line: the catalogue's
            /// description (`GET /api/strategies`, the status page).
            pub fn guard(self) -> &'static str {
                match self {
                    $(Self::$variant => $guard,)+
                }
            }

            /// Whether the strategy keeps concurrent buyers apart (only the
            /// control group does not).
            pub fn guarded(self) -> bool {
                match self {
                    $(Self::$variant => $guarded,)+
                }
            }

            pub fn decides(self) -> Decides {
                match self {
                    $(Self::$variant => Decides::$decides,)+
                }
            }

            fn build(self, wiring: &Wiring) -> anyhow::Result<Arc<dyn Strategy>> {
                let build: Build = match self {
                    $(Self::$variant => $build,)+
                };
                build(wiring)
            }
        }
    };
}

catalogue! {
    Naive = "naive", "nothing: read, check, write (the control group; oversells)",
        false, BetweenReadAndWrite, |w| Ok(Arc::new(naive::Naive::new(w.redis.clone(), w.race_window())));
    Optimistic = "optimistic", "WATCH/MULTI/EXEC on a dedicated connection, bounded retries",
        true, BetweenReadAndWrite, |w| Ok(w.optimistic());
    OptimisticGated = "optimistic-gated", "optimistic behind an in-process FIFO gate per item",
        true, BetweenReadAndWrite, |w| Ok(w.gated(StrategyKind::OptimisticGated, w.optimistic()));
    Lock = "lock", "a SET NX PX token lock with a fencing token around read-check-write",
        true, BetweenReadAndWrite, |w| Ok(w.lock());
    LockGated = "lock-gated", "lock behind an in-process FIFO gate per item",
        true, BetweenReadAndWrite, |w| Ok(w.gated(StrategyKind::LockGated, w.lock()));
    LockUnfenced = "lock-unfenced", "a SET NX PX lock around read-check-write, with no fencing token (the control group for fencing: oversells when a holder outlives its lock)",
        true, BetweenReadAndWrite, |w| Ok(Arc::new(lock_unfenced::LockUnfenced::new(
            w.redis.clone(),
            w.config.locks.lock_ttl(),
            w.config.locks.lock_wait(),
            w.race_window(),
        )));
    Lua = "lua", "one atomic Lua script",
        true, InOneScript, |w| Ok(Arc::new(lua::Lua::new(w.redis.clone())));
    LuaBatch = "lua-batch", "one atomic Lua script per batch of an item's queued purchases",
        true, InOneScript, |w| Ok(Arc::new(lua_batch::LuaBatch::new(w.redis.clone(), w.config.locks.lua_batch_max, w.config.locks.lock_wait())));
    Redlock = "redlock", "a quorum lock over several Redis nodes around read-check-write",
        true, BetweenReadAndWrite, |w| w.redlock();
    Sql = "sql", "a database transaction with a conditional UPDATE",
        true, InSql, |w| Ok(Arc::new(sql::Sql::new(
            w.db.clone(),
            w.redis.clone(),
            w.config.locks.sql_for_update,
            w.race_window(),
        )));
}

impl From<StrategyKind> for &'static str {
    fn from(kind: StrategyKind) -> Self {
        kind.as_str()
    }
}

impl TryFrom<String> for StrategyKind {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        raw.parse()
    }
}

/// In the OpenAPI document: a string, one of the catalogue's names.
impl utoipa::PartialSchema for StrategyKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(StrategyKind::ALL.map(StrategyKind::as_str)))
            .description(Some(
                "A concurrency-control strategy (see GET /api/strategies).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for StrategyKind {}

/// The strategies this instance serves, by name.
#[derive(Clone, Default)]
pub struct Registry {
    strategies: BTreeMap<StrategyKind, Arc<dyn Strategy>>,
}

impl Registry {
    /// Every strategy of the catalogue, built from `wiring`.
    pub fn build(wiring: &Wiring) -> anyhow::Result<Self> {
        let mut registry = Self::default();
        for kind in StrategyKind::ALL {
            let strategy = kind.build(wiring)?;
            anyhow::ensure!(
                strategy.kind() == kind,
                "the catalogue builds `{}` for `{kind}`",
                strategy.kind()
            );
            registry.strategies.insert(kind, strategy);
        }
        Ok(registry)
    }

    /// The strategy named `raw`, or a message listing the valid names.
    pub fn get(&self, raw: &str) -> Result<Arc<dyn Strategy>, String> {
        let kind: StrategyKind = raw.parse()?;
        self.by_kind(kind).ok_or_else(|| {
            format!(
                "strategy `{raw}` is not enabled here; enabled strategies are: {}",
                self.names().join(", ")
            )
        })
    }

    /// The strategy of `kind`, if this instance serves it.
    pub fn by_kind(&self, kind: StrategyKind) -> Option<Arc<dyn Strategy>> {
        self.strategies.get(&kind).cloned()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.strategies.keys().map(|k| k.as_str()).collect()
    }
}
