//! `lua-batch`: `lua`, coalesced. While a call to Redis is in flight for an
//! item, the purchases of it that arrive queue in this process; the next call
//! takes them all (up to `LUA_BATCH_MAX`) in one `EVALSHA` of
//! `purchase_batch.lua`, which runs each purchase in arrival order with
//! `lua`'s checks in `lua`'s order (item, binding, per-user limit, stock), so
//! each buyer gets its own outcome. A buyer who finds the item idle is sent
//! at once, alone: batching costs latency only when Redis is busy anyway.
//!
//! One script call carries many purchases, so the round trip, the command
//! parsing and the script set-up are paid once per batch, in Redis and here.
//!
//! The batch runs in a task of its own: a buyer who leaves does not cut it
//! short for the others. A Redis error fails the whole batch, and each buyer
//! in it gets that error; the script checks its keys' types and values
//! before its first write, so an error reply never leaves a batch
//! half-written. An error that may come after the script ran (a timeout) is
//! the purchase layer's to resolve, buyer by buyer: every buyer taken into a
//! batch is marked as committing, one never taken is never sent.
//!
//! A purchase with an Idempotency-Key passes its record as a key of the
//! script, which checks and writes it with the purchase
//! ([`super::key_record`]): two purchases with one key in one batch buy once.
//!
//! Queueing is bounded in time (`LOCK_WAIT_MS`, as the gates' queues are): a
//! buyer still queued when it runs out leaves with 503 `contention`, and the
//! flusher skips it, so it bought nothing; one already taken into a batch
//! waits for that batch's answer (bounded by the Redis timeout), so a buyer
//! is never told "nothing bought" about a purchase that happened.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::infra::redis_conn::RedisConn;
use async_trait::async_trait;
use redis::Script;
use tokio::sync::oneshot;

use super::{Attempt, Outcome, Purchase, Strategy, StrategyError, StrategyKind};
use crate::domain::{ItemId, UserId};
use crate::keys::ItemKeys;
use crate::orders::order_log;
use crate::orders::snowflake::OrderId;
use crate::strategy::key_record::KeyedPurchase;

/// Where a queued purchase stands; the flusher and the buyer race for it.
const QUEUED: u8 = 0;
/// Taken into a batch: its outcome comes from that batch.
const TAKEN: u8 = 1;
/// Its buyer stopped waiting before any batch took it: it is never sent.
const ABANDONED: u8 = 2;

/// One queued purchase (what the script needs of it) and where its outcome
/// goes.
struct Waiter {
    user: UserId,
    order_id: OrderId,
    keyed: Option<KeyedPurchase>,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<Result<Outcome, BatchError>>,
}

/// Why a whole batch failed; every buyer in it gets a copy.
#[derive(Debug, Clone)]
enum BatchError {
    Redis(redis::RedisError),
    Protocol(String),
}

impl From<BatchError> for StrategyError {
    fn from(err: BatchError) -> Self {
        match err {
            BatchError::Redis(err) => StrategyError::Redis(err),
            BatchError::Protocol(msg) => StrategyError::Protocol(msg),
        }
    }
}

/// Items with a batch running, and the purchases queued behind it. An item
/// is here only while its flusher runs, so the map holds the items being
/// bought right now.
type Queues = Arc<Mutex<HashMap<ItemId, VecDeque<Waiter>>>>;

/// Most purchases per script call (`LUA_BATCH_MAX`'s bound, checked with
/// the other settings).
pub use crate::config::MAX_LUA_BATCH as MAX_BATCH;

pub struct LuaBatch {
    redis: RedisConn,
    script: Arc<Script>,
    max: usize,
    /// How long a purchase may stay queued before it gives up.
    wait: Duration,
    queues: Queues,
}

impl LuaBatch {
    /// `max`: purchases per script call, 1 to [`MAX_BATCH`].
    pub fn new(redis: RedisConn, max: usize, wait: Duration) -> Self {
        Self {
            redis,
            script: Arc::new(Script::new(concat!(
                include_str!("integer.lua"),
                include_str!("key_record.lua"),
                include_str!("reserve.lua"),
                include_str!("purchase_batch.lua")
            ))),
            max: max.clamp(1, MAX_BATCH),
            wait,
            queues: Arc::default(),
        }
    }
}

#[async_trait]
impl Strategy for LuaBatch {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LuaBatch
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let (reply, mut outcome) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let waiter = Waiter {
            user: purchase.user.clone(),
            order_id: purchase.order_id,
            keyed: purchase.keyed.clone(),
            state: Arc::clone(&state),
            reply,
        };
        // However this purchase ends (cut short by its request's deadline
        // included), one taken into a batch may have bought; one never
        // taken is never sent.
        let _queued = Queued {
            state: &state,
            purchase,
        };
        let first = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            match queues.get_mut(&purchase.item) {
                Some(queued) => {
                    queued.push_back(waiter);
                    false
                }
                None => {
                    queues.insert(purchase.item.clone(), VecDeque::from([waiter]));
                    true
                }
            }
        };
        if first {
            tokio::spawn(flush(
                self.redis.clone(),
                Arc::clone(&self.script),
                Arc::clone(&self.queues),
                purchase.item.clone(),
                purchase.keys.clone(),
                self.max,
            ));
        }
        let answer = match tokio::time::timeout(self.wait, &mut outcome).await {
            Ok(answer) => answer,
            Err(_) => {
                let abandoned = state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if abandoned {
                    return Ok(Attempt::new(Outcome::Contended {
                        detail: format!("queued for a batch longer than {:?}", self.wait),
                    }));
                }
                // A batch has it: its answer decides.
                outcome.await
            }
        };
        match answer {
            Ok(Ok(outcome)) => Ok(Attempt::new(outcome)),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(StrategyError::Protocol(
                "the batch ended without an answer for this purchase".into(),
            )),
        }
    }
}

/// A queued purchase's stake in its batch: when it ends, it either leaves
/// the queue (never sent) or marks its purchase as committing (sent).
struct Queued<'a> {
    state: &'a AtomicU8,
    purchase: &'a Purchase,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        // Still queued: it leaves, never sent. Taken: a batch sent it.
        // Abandoned already (the buyer's own wait ran out): nothing sent.
        let taken =
            self.state
                .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                == Err(TAKEN);
        if taken {
            self.purchase.committing();
        }
    }
}

/// Sends the item's queued purchases, a batch per call, until none is left;
/// then the item leaves the map, and the next buyer starts a new flusher.
async fn flush(
    mut redis: RedisConn,
    script: Arc<Script>,
    queues: Queues,
    item: ItemId,
    keys: ItemKeys,
    max: usize,
) {
    // However this task ends (a panic included), the item leaves the map:
    // its queued buyers get an error instead of waiting on a task that is
    // gone, and the next buyer starts a new flusher.
    let mut leave = Leave {
        queues: Arc::clone(&queues),
        item: item.clone(),
        armed: true,
    };
    loop {
        let batch: Vec<Waiter> = {
            let mut queues = queues.lock().unwrap_or_else(|e| e.into_inner());
            let Some(queued) = queues.get_mut(&item) else {
                leave.armed = false;
                return;
            };
            let mut batch = Vec::new();
            while batch.len() < max
                && let Some(waiter) = queued.pop_front()
            {
                let taken = waiter
                    .state
                    .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if taken {
                    batch.push(waiter);
                }
            }
            if batch.is_empty() {
                // Under the lock: a buyer arriving after this starts a new
                // flusher, whose entry `leave` must not remove.
                queues.remove(&item);
                leave.armed = false;
                return;
            }
            batch
        };
        match run(&mut redis, &script, &keys, &batch).await {
            Ok(outcomes) => {
                for (waiter, outcome) in batch.into_iter().zip(outcomes) {
                    // A buyer who left has no one to tell; its purchase stands.
                    let _ = waiter.reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                tracing::warn!(%item, size = batch.len(), error = ?err, "lua-batch call failed; every buyer in it gets a 503");
                for waiter in batch {
                    let _ = waiter.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Removes an item's queue when its flusher ends abnormally (a panic, or
/// the runtime dropping the task); a normal end removes it under the lock
/// itself and disarms this.
struct Leave {
    queues: Queues,
    item: ItemId,
    armed: bool,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if self.armed {
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.item);
        }
    }
}

/// One `EVALSHA` for the whole batch: its outcomes, in its order.
async fn run(
    redis: &mut RedisConn,
    script: &Script,
    keys: &ItemKeys,
    batch: &[Waiter],
) -> Result<Vec<Outcome>, BatchError> {
    let mut call = script.prepare_invoke();
    let record_ttl_ms = batch
        .iter()
        .find_map(|w| w.keyed.as_ref())
        .map_or(0, |keyed| keyed.ttl_ms);
    call.key(keys.stock())
        .key(keys.meta())
        .key(keys.buyers())
        .key(keys.orders())
        .key(keys.reserved())
        .key(keys.deadlines())
        .arg(StrategyKind::LuaBatch.as_str())
        .arg(record_ttl_ms);
    for waiter in batch {
        call.arg(waiter.user.as_str()).arg(order_log::head(
            waiter.order_id,
            &waiter.user,
            StrategyKind::LuaBatch.as_str(),
        ));
        match &waiter.keyed {
            Some(keyed) => {
                call.key(&keyed.record)
                    .arg(waiter.order_id.to_string())
                    .arg(&keyed.fingerprint);
            }
            None => {
                call.arg("").arg("");
            }
        }
    }
    // Flat: a code and a value per purchase.
    let replies: Vec<redis::Value> = call.invoke_async(redis).await.map_err(BatchError::Redis)?;
    if replies.len() != 2 * batch.len() {
        return Err(BatchError::Protocol(format!(
            "purchase_batch.lua answered {} values for {} purchases",
            replies.len(),
            batch.len()
        )));
    }
    replies
        .chunks_exact(2)
        // Each chunk holds exactly two values: indexing it cannot panic.
        .map(|pair| {
            let code = redis::from_redis_value_ref(&pair[0]).map_err(|err| {
                BatchError::Protocol(format!("purchase_batch.lua answered a bad code: {err}"))
            })?;
            super::lua::outcome(code, &pair[1]).map_err(|err| BatchError::Protocol(err.to_string()))
        })
        .collect()
}
