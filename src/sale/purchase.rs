//! The purchase use-case, apart from HTTP: pick the strategy, mint the order
//! id, attempt the purchase under the strategy's guard, count the outcome
//! once (stats and metrics, through one [`Recorder`]), with
//! `REDIS_WAIT_REPLICAS` wait for the replicas to confirm it, and, with an
//! `Idempotency-Key`, take effect at most once per key
//! ([`crate::sale::idempotency`]: the strategy's commit step checks and
//! writes the key's record).
//!
//! # An answer for every outcome
//! The strategy marks its purchase just before it sends the step that
//! commits ([`Purchase::committing`]). An error after that which carries no
//! answer (a timeout, a connection dropped mid-reply), any error of a step
//! of several commands (the lock's write and release, a `MULTI`: one can
//! commit and the next fail), or a purchase still running when its share of
//! the request's time is spent, leaves the outcome unknown to the strategy.
//! The order id was minted before the write, so the purchase then looks for
//! it (the key's record, SQL, the item's order log) within what is left of
//! the request's time: found, it is a 201. Not found after an error reply,
//! nothing was bought (503 `unavailable`); not found after no answer, or
//! not readable, a 503 `outcome_unknown` carrying the order id, which
//! `GET /api/orders/{id}` answers later (and a repeat with the same
//! Idempotency-Key resolves: replayed, or bought exactly once). An error
//! before the commit step was sent means nothing was bought: `unavailable`.
//! The purchase's whole time is counted from the request's arrival and ends
//! a tenth before `REQUEST_TIMEOUT_MS`, whose own 503 would say nothing was
//! bought.
//!
//! The handler in `http::purchase` only reads the request into an item, a
//! user and a strategy name, calls [`Purchases`], and turns the result or the
//! [`PurchaseError`] into a response.
//!
//! One concern: the path of one purchase, from the minted id to its answer,
//! including the look-up after a lost answer; the look-up itself
//! (`orders::lookup`) and the key's record (`sale::idempotency`) live apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::domain::{ItemId, UserId};
use crate::infra::redis_conn::RedisPool;
use crate::infra::replica_wait::ReplicaWait;
use crate::keys::ItemKeys;
use crate::orders::lease::{IdMinter, MintError};
use crate::orders::lookup::OrderLookup;
use crate::orders::snowflake::OrderId;
use crate::outcome::Code;
use crate::sale::idempotency::{Claim, Idempotency, IdempotencyKey};
use crate::sale::metrics::Metrics;
use crate::sale::stats::Stats;
use crate::strategy::key_record::{Bought, KeyedPurchase};
use crate::strategy::{
    Attempt, Committing, Decides, Outcome, Purchase, Registry, Strategy, StrategyError,
    StrategyKind,
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
    /// Redis or the database could not answer the strategy, before its
    /// commit step was sent: nothing was bought.
    #[error("the purchase could not be attempted")]
    Strategy(#[from] StrategyError),
    /// The commit step was sent, and whether it ran could not be learnt
    /// in time: order `order_id` may exist.
    #[error("order {order_id} of `{item}` may or may not have been taken")]
    OutcomeUnknown { item: ItemId, order_id: OrderId },
    /// The purchase ran out of its time before it sent its commit step:
    /// nothing was bought.
    #[error("the purchase of `{0}` ran out of time before it was made")]
    TimedOut(ItemId),
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
            .record_purchase(kind, attempt.outcome.code(), took);
    }

    /// A purchase its replicas did not confirm in time.
    fn unconfirmed(&self, item: &ItemId, kind: StrategyKind) {
        self.stats.record_unconfirmed(item, kind);
        self.metrics.record_unconfirmed(kind);
    }

    /// An attempt that could not be made (Redis or the database down).
    fn error(&self, item: &ItemId, kind: StrategyKind, took: Duration) {
        self.stats.record_error(item, kind);
        self.metrics.record_purchase(kind, Code::Unavailable, took);
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
    /// Where a purchase whose answer was lost looks for its order.
    lookup: OrderLookup,
    /// How long after its request arrived a purchase must have answered:
    /// inside `REQUEST_TIMEOUT_MS` by [`DEADLINE_MARGIN`], so that the
    /// purchase answers itself instead of the request timeout's 503
    /// (which says nothing was bought).
    deadline: Duration,
    /// The last part of it, kept for the look-up after a lost answer.
    resolve_time: Duration,
}

/// What is left of the request's time after the purchase's deadline: its
/// replica `WAIT` (`REDIS_WAIT_TIMEOUT_MS`, below the Redis timeout) and
/// the response.
const DEADLINE_MARGIN: u32 = 10;

/// What [`Purchases`] is built from, beside the strategies.
pub struct PurchaseWiring {
    pub ids: Arc<IdMinter>,
    pub idempotency: Idempotency,
    pub recorder: Recorder,
    pub pool: RedisPool,
    pub replicas: ReplicaWait,
    pub lookup: OrderLookup,
    pub request_timeout: Duration,
}

impl Purchases {
    pub fn new(
        strategies: Arc<Registry>,
        default_strategy: StrategyKind,
        wiring: PurchaseWiring,
    ) -> Self {
        // A quarter of the request's time is kept for the look-up; the
        // strategy's own waits (lock, queue, Redis timeout) are shorter by
        // default, so it rarely comes to that.
        let deadline = wiring.request_timeout * (DEADLINE_MARGIN - 1) / DEADLINE_MARGIN;
        let resolve_time = wiring.request_timeout / 4;
        Self {
            strategies,
            default_strategy,
            ids: wiring.ids,
            idempotency: wiring.idempotency,
            recorder: wiring.recorder,
            pool: wiring.pool,
            replicas: wiring.replicas,
            lookup: wiring.lookup,
            deadline,
            resolve_time,
        }
    }

    /// Where orders are looked for by id: the purchases' own look-up, which
    /// `GET /api/orders/{order_id}` answers with too.
    pub fn lookup(&self) -> &OrderLookup {
        &self.lookup
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
        match self.take(item, user, strategy, started, None).await? {
            Took::Bought(taken) => self.confirm(taken, false).await,
            Took::KeyBought(_) => Err(PurchaseError::Internal(anyhow::anyhow!(
                "a purchase without an Idempotency-Key found a key's record"
            ))),
        }
    }

    /// The purchase itself, not yet confirmed by any replica. Counted here
    /// unless it went through: a purchase is counted once confirmed (or
    /// not), so its latency includes the wait for the replicas. A key that
    /// bought already is not counted: nothing was attempted for it.
    async fn take(
        &self,
        item: ItemId,
        user: UserId,
        strategy: Arc<dyn Strategy>,
        started: Instant,
        keyed: Option<KeyedPurchase>,
    ) -> Result<Took, PurchaseError> {
        let kind = strategy.kind();
        let order_id = self.ids.next().map_err(PurchaseError::Ids)?;
        let mut purchase = Purchase::new(item, user, order_id, kind);
        purchase.keyed = keyed;
        // Measured from the request's arrival: the claim and the id took
        // some of its time already.
        let deadline = started + self.deadline;
        let attempt_until = deadline.checked_sub(self.resolve_time).unwrap_or(deadline);
        let tried =
            tokio::time::timeout_at(attempt_until.into(), strategy.purchase(&purchase)).await;
        let committing = purchase.commit_state();
        let attempt = match tried {
            Ok(Ok(attempt)) => attempt,
            Ok(Err(err))
                if committing == Committing::No
                    || (committing == Committing::Atomically && !err.may_have_run()) =>
            {
                self.recorder.error(&purchase.item, kind, started.elapsed());
                return Err(err.into());
            }
            Err(_) if committing == Committing::No => {
                self.recorder.error(&purchase.item, kind, started.elapsed());
                return Err(PurchaseError::TimedOut(purchase.item));
            }
            // An error with no answer, or even an error reply to a step of
            // several commands (the lock's write and release, a `MULTI`),
            // which can commit and fail on the next.
            Ok(Err(err)) => {
                tracing::warn!(order_id = %order_id, error = ?err, "a purchase's commit step failed; looking for its order");
                let answered = !err.may_have_run();
                match self.resolve(&purchase, deadline, answered).await {
                    Ok(attempt) => attempt,
                    Err(Unresolved::NotBought) => {
                        self.recorder.error(&purchase.item, kind, started.elapsed());
                        return Err(err.into());
                    }
                    Err(Unresolved::Unknown) => return Err(self.unknown(&purchase, kind, started)),
                }
            }
            Err(_) => {
                tracing::warn!(order_id = %order_id, "a purchase ran out of time after its commit step was sent; looking for its order");
                match self.resolve(&purchase, deadline, false).await {
                    Ok(attempt) => attempt,
                    Err(_) => return Err(self.unknown(&purchase, kind, started)),
                }
            }
        };
        let attempt = match (&attempt.outcome, &purchase.keyed) {
            // A refusal read before the commit step's own check of the key
            // (the snapshot of a read-check-write strategy): a key that
            // bought is answered with that purchase, not with the refusal.
            (
                Outcome::SoldOut | Outcome::LimitReached { .. } | Outcome::SaleRestarted,
                Some(keyed),
            ) => match self.idempotency.bought(keyed).await {
                Ok(Some(bought)) => Attempt::new(Outcome::KeyBought(bought)),
                _ => attempt,
            },
            _ => attempt,
        };
        if !matches!(
            attempt.outcome,
            Outcome::Purchased { .. } | Outcome::KeyBought(_)
        ) {
            self.recorder
                .attempt(&purchase.item, kind, &attempt, started.elapsed());
        }
        let Purchase {
            item, user, keys, ..
        } = purchase;
        match attempt.outcome {
            Outcome::Purchased { remaining } => Ok(Took::Bought(Taken {
                marker: keys.replicated().to_owned(),
                purchased: Purchased {
                    order_id,
                    item_id: item,
                    user_id: user,
                    strategy: kind,
                    remaining,
                },
                attempt,
                started,
            })),
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
            Outcome::KeyBought(bought) => Ok(Took::KeyBought(bought)),
        }
    }

    /// What became of a purchase whose commit step got no answer (or an
    /// error reply), looked for until `deadline`: its key's record first
    /// (written with the purchase, so it is the answer for a keyed purchase
    /// made by a Redis strategy), then SQL and the item's order log. Not
    /// found is [`Unresolved::NotBought`] only when the step `answered`
    /// (its error reply came after it ran to the end); otherwise a write
    /// held up on its way may still land: [`Unresolved::Unknown`].
    async fn resolve(
        &self,
        purchase: &Purchase,
        deadline: Instant,
        answered: bool,
    ) -> Result<Attempt, Unresolved> {
        let found = tokio::time::timeout_at(deadline.into(), async {
            if let Some(keyed) = &purchase.keyed
                && let Some(bought) = self.idempotency.bought(keyed).await?
            {
                return Ok::<_, anyhow::Error>(Some(match bought.order_id {
                    Some(id) if id == purchase.order_id => Outcome::Purchased {
                        remaining: bought.remaining,
                    },
                    _ => Outcome::KeyBought(bought),
                }));
            }
            if self
                .lookup
                .find(&purchase.item, purchase.order_id)
                .await?
                .is_none()
            {
                return Ok(None);
            }
            // The stock when the answer was recovered: the log does not
            // keep what the purchase left.
            let stock: Option<i64> = redis::cmd("GET")
                .arg(purchase.keys.stock())
                .query_async(&mut self.lookup.redis().clone())
                .await?;
            Ok(Some(Outcome::Purchased {
                remaining: stock.unwrap_or(0),
            }))
        })
        .await;
        match found {
            Ok(Ok(Some(outcome))) => {
                tracing::info!(order_id = %purchase.order_id, outcome = %outcome.code(), "found what became of a purchase whose answer was lost");
                Ok(Attempt::new(outcome))
            }
            Ok(Ok(None)) if answered => Err(Unresolved::NotBought),
            Ok(Ok(None)) => {
                tracing::warn!(order_id = %purchase.order_id, "a purchase whose answer was lost is not found (yet)");
                Err(Unresolved::Unknown)
            }
            Ok(Err(err)) => {
                tracing::warn!(order_id = %purchase.order_id, error = format!("{err:#}"), "cannot look for a purchase whose answer was lost");
                Err(Unresolved::Unknown)
            }
            Err(_) => {
                tracing::warn!(order_id = %purchase.order_id, "the look-up for a purchase whose answer was lost ran out of time");
                Err(Unresolved::Unknown)
            }
        }
    }

    /// `OutcomeUnknown`, counted as an error.
    fn unknown(&self, purchase: &Purchase, kind: StrategyKind, started: Instant) -> PurchaseError {
        self.recorder.error(&purchase.item, kind, started.elapsed());
        PurchaseError::OutcomeUnknown {
            item: purchase.item.clone(),
            order_id: purchase.order_id,
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

    /// [`Purchases::buy`] at most once per `key`
    /// ([`crate::sale::idempotency`]): a repeat with the same user and
    /// strategy gets the purchase the key made replayed, a repeat with
    /// another body is refused. Only a purchase is recorded (by the
    /// strategy's commit step); a refusal changed nothing and may simply be
    /// asked again.
    pub async fn buy_once(
        &self,
        key: IdempotencyKey,
        item: ItemId,
        user: UserId,
        strategy: Arc<dyn Strategy>,
        started: Instant,
    ) -> Result<Receipt, PurchaseError> {
        let keys = ItemKeys::new(&item);
        let kind = strategy.kind();
        let keyed = self.idempotency.keyed(&keys, key, &user, kind);
        let claim = self
            .idempotency
            .begin(&keys, &keyed)
            .await
            .map_err(PurchaseError::Idempotency)?;
        match claim {
            Claim::Missing => Err(PurchaseError::ItemNotFound(item)),
            Claim::Reused => Err(PurchaseError::IdempotencyKeyReused),
            Claim::InFlight => Err(PurchaseError::IdempotencyInFlight),
            Claim::Done(bought) => self.replay(&item, &keys, &user, kind, &bought).await,
            Claim::New => {
                let took = self
                    .take(
                        item.clone(),
                        user.clone(),
                        strategy,
                        started,
                        Some(keyed.clone()),
                    )
                    .await;
                let bought = match took {
                    Ok(Took::Bought(taken)) => {
                        // One `WAIT` covers the purchase and its record.
                        return self.confirm(taken, true).await.map(Receipt::New);
                    }
                    Ok(Took::KeyBought(bought)) => bought,
                    Err(err) => {
                        // Nothing bought, or nobody knows: either way the
                        // next request with the key may try, and its commit
                        // step decides.
                        if let Err(release) = self.idempotency.release(&keyed).await {
                            tracing::warn!(%release, "cannot release an Idempotency-Key claim; it expires by itself");
                        }
                        return Err(err);
                    }
                };
                if bought.fingerprint != keyed.fingerprint {
                    return Err(PurchaseError::IdempotencyKeyReused);
                }
                self.replay(&item, &keys, &user, kind, &bought).await
            }
        }
    }
}

impl Purchases {
    /// A key's purchase, replayed. Replayed as 201 only once the replicas
    /// hold it (and its record): the first request may have been answered
    /// `unconfirmed`, and the replicas may still lag. The record is about
    /// `item` (the claim matched it), so that is the master asked.
    async fn replay(
        &self,
        item: &ItemId,
        keys: &ItemKeys,
        user: &UserId,
        kind: StrategyKind,
        bought: &Bought,
    ) -> Result<Receipt, PurchaseError> {
        let body = replay_body(bought, item, user, kind).map_err(|msg| {
            PurchaseError::Internal(anyhow::anyhow!("a record of `{item}`: {msg}"))
        })?;
        if self.replicas.confirmed(&self.pool, keys.replicated()).await {
            return Ok(Receipt::Replayed {
                status: CREATED,
                body,
            });
        }
        match serde_json::from_str::<Purchased>(&body) {
            Ok(purchased) => Err(PurchaseError::Unconfirmed(purchased)),
            Err(err) => Err(PurchaseError::Internal(anyhow::anyhow!(
                "an Idempotency-Key record of `{item}` is no purchase: {err}"
            ))),
        }
    }
}

/// The 201 a key's record replays, for a request whose fingerprint matched
/// (so its user and strategy are the buyer's).
fn replay_body(
    bought: &Bought,
    item: &ItemId,
    user: &UserId,
    strategy: StrategyKind,
) -> Result<String, String> {
    if let Some(body) = &bought.legacy_body {
        return Ok(body.clone());
    }
    let order_id = bought
        .order_id
        .ok_or("an Idempotency-Key record holds no order")?;
    serde_json::to_string(&Purchased {
        order_id,
        item_id: item.clone(),
        user_id: user.clone(),
        strategy,
        remaining: bought.remaining,
    })
    .map_err(|err| format!("cannot encode a replayed purchase: {err}"))
}

/// Why [`Purchases::resolve`] found no purchase.
enum Unresolved {
    /// Its commit step answered, and it is not there: nothing was bought.
    NotBought,
    /// It may still land, or the stores could not be read.
    Unknown,
}

/// What a purchase attempt came to, when it was not a refusal.
enum Took {
    Bought(Taken),
    /// Its Idempotency-Key had bought already: nothing attempted.
    KeyBought(Bought),
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
