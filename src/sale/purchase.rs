//! The purchase use-case, apart from HTTP: pick the strategy, mint the order
//! id, attempt the purchase under the strategy's guard, count the outcome
//! once (stats and metrics, through one [`Recorder`]), with
//! `REDIS_WAIT_REPLICAS` wait for the replicas to confirm it, and, with an
//! `Idempotency-Key`, take effect at most once per key.
//!
//! The handler in `http::purchase` only reads the request into an item, a
//! user and a strategy name, calls [`Purchases`], and turns the result or the
//! [`PurchaseError`] into a response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::domain::{ItemId, UserId};
use crate::infra::redis_conn::{RedisPool, ReplicaWait};
use crate::keys::ItemKeys;
use crate::orders::lease::{IdMinter, MintError};
use crate::orders::snowflake::OrderId;
use crate::sale::idempotency::{Claim, Idempotency, IdempotencyKey};
use crate::sale::metrics::Metrics;
use crate::sale::stats::Stats;
use crate::strategy::{
    Attempt, Decides, Outcome, Purchase, Registry, Strategy, StrategyError, StrategyKind,
};

/// A purchase that went through: the body of the 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Purchased {
    pub order_id: OrderId,
    pub item_id: ItemId,
    pub user_id: UserId,
    pub strategy: StrategyKind,
    /// Units left after this purchase, as the strategy saw them.
    pub remaining: i64,
}

/// Why a purchase bought nothing.
#[derive(Debug, thiserror::Error)]
pub enum PurchaseError {
    /// The request names a strategy that does not exist or is not served.
    #[error("{0}")]
    UnknownStrategy(String),
    #[error("item `{0}` does not exist")]
    ItemNotFound(ItemId),
    #[error("item `{0}` is sold out")]
    SoldOut(ItemId),
    #[error("user `{user}` holds the limit of {limit} of `{item}`")]
    LimitReached {
        item: ItemId,
        user: UserId,
        limit: u64,
    },
    #[error("the sale of `{item}` is bound to `{bound}`, not `{requested}`")]
    StrategyMismatch {
        item: ItemId,
        requested: StrategyKind,
        bound: String,
    },
    #[error("`{0}` was restocked while the purchase was in flight")]
    SaleRestarted(ItemId),
    /// The strategy gave up while stock may remain; trying again may succeed.
    #[error("too much contention on `{item}`: {detail}")]
    Contended { item: ItemId, detail: String },
    /// The Idempotency-Key was used before for another purchase.
    #[error("the Idempotency-Key was used for another purchase")]
    IdempotencyKeyReused,
    /// A purchase with this Idempotency-Key is still running.
    #[error("a purchase with this Idempotency-Key is in progress")]
    IdempotencyInFlight,
    /// Bought, but fewer than `REDIS_WAIT_REPLICAS` replicas confirmed the
    /// write in time: the order stands unless a failover loses it.
    #[error("order {} of `{}` is not confirmed by the replicas", .0.order_id, .0.item_id)]
    Unconfirmed(Purchased),
    /// No worker lease, so no order id can be minted.
    #[error("no order id can be minted")]
    Ids(#[source] MintError),
    /// Redis or the database could not answer the strategy.
    #[error("the purchase could not be attempted")]
    Strategy(#[from] StrategyError),
    /// Redis could not answer for the Idempotency-Key record.
    #[error("the Idempotency-Key record could not be read")]
    Idempotency(#[source] redis::RedisError),
    /// A bug: a default strategy missing, a task that panicked.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// What a purchase with an `Idempotency-Key` answers.
#[derive(Debug)]
pub enum Receipt {
    /// This request bought.
    New(Purchased),
    /// An earlier request with the same key bought: its recorded status and
    /// JSON body, replayed as they were.
    Replayed { status: u16, body: String },
}

/// Counts every purchase attempt once, in both places that show it: the
/// per-item [`Stats`] (status page, item view) and the Prometheus
/// [`Metrics`].
pub struct Recorder {
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
}

impl Recorder {
    pub fn new(stats: Arc<Stats>, metrics: Arc<Metrics>) -> Self {
        Self { stats, metrics }
    }

    /// An attempt that came to an outcome.
    fn attempt(&self, item: &ItemId, kind: StrategyKind, attempt: &Attempt, took: Duration) {
        self.stats.record(item, kind, attempt, took);
        self.metrics
            .record_purchase(kind, attempt.outcome.label(), took);
    }

    /// A purchase its replicas did not confirm in time.
    fn unconfirmed(&self, item: &ItemId, kind: StrategyKind) {
        self.stats.record_unconfirmed(item, kind);
        self.metrics.record_unconfirmed(kind);
    }

    /// An attempt that could not be made (Redis or the database down).
    fn error(&self, item: &ItemId, kind: StrategyKind, took: Duration) {
        self.stats.record_error(item, kind);
        self.metrics.record_purchase(kind, "error", took);
    }
}

/// The purchase use-case and what it needs.
pub struct Purchases {
    strategies: Arc<Registry>,
    default_strategy: StrategyKind,
    ids: Arc<IdMinter>,
    idempotency: Idempotency,
    recorder: Recorder,
    /// Connections to ask for replicas on (`WAIT` blocks its connection).
    pool: RedisPool,
    replicas: ReplicaWait,
}

impl Purchases {
    pub fn new(
        strategies: Arc<Registry>,
        default_strategy: StrategyKind,
        ids: Arc<IdMinter>,
        idempotency: Idempotency,
        recorder: Recorder,
        pool: RedisPool,
        replicas: ReplicaWait,
    ) -> Self {
        Self {
            strategies,
            default_strategy,
            ids,
            idempotency,
            recorder,
            pool,
            replicas,
        }
    }

    /// The strategy named `name`, or the default one.
    pub fn strategy(&self, name: Option<&str>) -> Result<Arc<dyn Strategy>, PurchaseError> {
        match name {
            Some(name) => self
                .strategies
                .get(name)
                .map_err(PurchaseError::UnknownStrategy),
            // By kind: no name to format and parse again on every request
            // that names none.
            None => self
                .strategies
                .by_kind(self.default_strategy)
                .ok_or_else(|| {
                    PurchaseError::Internal(anyhow::anyhow!(
                        "default strategy `{}` missing from the registry",
                        self.default_strategy
                    ))
                }),
        }
    }

    /// One purchase of `item` by `user` under `strategy`, counted, and
    /// confirmed by the replicas ([`Purchases::confirm`]). `started` is
    /// when the request arrived, for the latency it is counted with.
    pub async fn buy(
        &self,
        item: ItemId,
        user: UserId,
        strategy: Arc<dyn Strategy>,
        started: Instant,
    ) -> Result<Purchased, PurchaseError> {
        let taken = self.take(item, user, strategy, started).await?;
        self.confirm(taken, false).await
    }

    /// The purchase itself, not yet confirmed by any replica. Counted here
    /// unless it went through: a purchase is counted once confirmed (or
    /// not), so its latency includes the wait for the replicas.
    async fn take(
        &self,
        item: ItemId,
        user: UserId,
        strategy: Arc<dyn Strategy>,
        started: Instant,
    ) -> Result<Taken, PurchaseError> {
        let kind = strategy.kind();
        let order_id = self.ids.next().map_err(PurchaseError::Ids)?;
        let purchase = Purchase::new(item, user, order_id, kind);
        let attempt = match strategy.purchase(&purchase).await {
            Ok(attempt) => attempt,
            Err(err) => {
                self.recorder.error(&purchase.item, kind, started.elapsed());
                return Err(err.into());
            }
        };
        if !matches!(attempt.outcome, Outcome::Purchased { .. }) {
            self.recorder
                .attempt(&purchase.item, kind, &attempt, started.elapsed());
        }
        let Purchase {
            item, user, keys, ..
        } = purchase;
        match attempt.outcome {
            Outcome::Purchased { remaining } => Ok(Taken {
                marker: keys.replicated,
                purchased: Purchased {
                    order_id,
                    item_id: item,
                    user_id: user,
                    strategy: kind,
                    remaining,
                },
                attempt,
                started,
            }),
            Outcome::SoldOut => Err(PurchaseError::SoldOut(item)),
            Outcome::LimitReached { limit } => {
                Err(PurchaseError::LimitReached { item, user, limit })
            }
            Outcome::ItemNotFound => Err(PurchaseError::ItemNotFound(item)),
            Outcome::StrategyMismatch { bound } => Err(PurchaseError::StrategyMismatch {
                item,
                requested: kind,
                bound,
            }),
            Outcome::SaleRestarted => Err(PurchaseError::SaleRestarted(item)),
            Outcome::Contended { detail } => Err(PurchaseError::Contended { item, detail }),
        }
    }

    /// The purchase, once `REDIS_WAIT_REPLICAS` replicas hold everything
    /// its item's master took so far; else `Unconfirmed`. Counted either
    /// way. A `sql` order is committed to SQL, not held by Redis: it waits
    /// for no replica, unless an Idempotency-Key record of it (in Redis)
    /// must outlive a failover too (`recorded`).
    async fn confirm(&self, taken: Taken, recorded: bool) -> Result<Purchased, PurchaseError> {
        let Taken {
            purchased,
            marker,
            attempt,
            started,
        } = taken;
        let (item, kind) = (&purchased.item_id, purchased.strategy);
        let in_sql = kind.decides() == Decides::InSql && !recorded;
        let confirmed = in_sql || self.replicas.confirmed(&self.pool, &marker).await;
        self.recorder
            .attempt(item, kind, &attempt, started.elapsed());
        if confirmed {
            return Ok(purchased);
        }
        self.recorder.unconfirmed(item, kind);
        Err(PurchaseError::Unconfirmed(purchased))
    }

    /// [`Purchases::buy`] at most once per `key` ([`crate::sale::idempotency`]):
    /// a repeat with the same user and strategy gets the first purchase's
    /// answer replayed; only a purchase is recorded, a refusal changed
    /// nothing and may simply be asked again.
    pub async fn buy_once(
        self: &Arc<Self>,
        key: IdempotencyKey,
        item: ItemId,
        user: UserId,
        strategy: Arc<dyn Strategy>,
        started: Instant,
    ) -> Result<Receipt, PurchaseError> {
        let keys = ItemKeys::new(&item);
        let fingerprint = format!("{user}\u{1f}{}", strategy.kind());
        let claim = self
            .idempotency
            .begin(&keys, &key, &fingerprint)
            .await
            .map_err(PurchaseError::Idempotency)?;
        match claim {
            Claim::Missing => Err(PurchaseError::ItemNotFound(item)),
            Claim::Reused => Err(PurchaseError::IdempotencyKeyReused),
            Claim::InFlight => Err(PurchaseError::IdempotencyInFlight),
            Claim::Done { status, body } => self.replay(&item, &keys, status, body).await,
            Claim::New => {
                // A task of its own: a client that leaves or the request
                // timeout must not cut the sequence between the purchase
                // and its record.
                let this = Arc::clone(self);
                let sequence = tokio::spawn(async move {
                    let result = this.take(item, user, strategy, started).await;
                    let body = match &result {
                        Ok(taken) => serde_json::to_string(&taken.purchased).ok(),
                        Err(_) => None,
                    };
                    let record = body.as_deref().map(|body| (CREATED, body));
                    if let Err(err) = this.idempotency.finish(&keys, &key, record).await {
                        tracing::warn!(%err, "cannot record the outcome for an Idempotency-Key; its claim expires by itself");
                    }
                    // Confirmed after the record: one `WAIT` covers both, so
                    // a 201 here means a failover keeps the record too.
                    match result {
                        Ok(taken) => this.confirm(taken, record.is_some()).await,
                        Err(err) => Err(err),
                    }
                });
                let purchased = sequence.await.map_err(|err| {
                    PurchaseError::Internal(anyhow::anyhow!("purchase task failed: {err}"))
                })??;
                Ok(Receipt::New(purchased))
            }
        }
    }
}

impl Purchases {
    /// A recorded answer, replayed. A purchase is replayed as 201 only once
    /// the replicas hold it (and its record): the first request may have
    /// been answered `unconfirmed`, and the replicas may still lag. The
    /// record is about `item` (the claim matched it), so that is the master
    /// asked, whatever the body says.
    async fn replay(
        &self,
        item: &ItemId,
        keys: &ItemKeys,
        status: u16,
        body: String,
    ) -> Result<Receipt, PurchaseError> {
        if status != CREATED || self.replicas.confirmed(&self.pool, &keys.replicated).await {
            return Ok(Receipt::Replayed { status, body });
        }
        match serde_json::from_str::<Purchased>(&body) {
            Ok(purchased) => Err(PurchaseError::Unconfirmed(purchased)),
            Err(err) => Err(PurchaseError::Internal(anyhow::anyhow!(
                "an Idempotency-Key record of `{item}` is no purchase: {err}"
            ))),
        }
    }
}

/// A purchase that went through, not yet counted: what it bought, how,
/// and when its request arrived.
struct Taken {
    purchased: Purchased,
    /// The item's replication marker, taken from the keys the purchase
    /// already built (not built again for every purchase).
    marker: String,
    attempt: Attempt,
    started: Instant,
}

/// The status a recorded purchase is replayed with.
const CREATED: u16 = 201;
