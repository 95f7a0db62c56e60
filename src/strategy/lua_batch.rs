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
//! short for the others. A Redis error fails the whole batch, a 503 for each
//! buyer in it; the script checks its keys' types before its first write, so
//! an error never leaves a batch half-written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;

use super::{Attempt, Outcome, Purchase, Strategy, StrategyError, StrategyKind};
use crate::domain::ItemId;
use crate::keys::ItemKeys;

/// One queued purchase and where its outcome goes.
struct Waiter {
    purchase: Purchase,
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
type Queues = Arc<Mutex<HashMap<ItemId, Vec<Waiter>>>>;

pub struct LuaBatch {
    redis: ConnectionManager,
    script: Arc<Script>,
    max: usize,
    queues: Queues,
}

impl LuaBatch {
    /// `max`: purchases per script call, at least 1.
    pub fn new(redis: ConnectionManager, max: usize) -> Self {
        Self {
            redis,
            script: Arc::new(Script::new(include_str!("purchase_batch.lua"))),
            max: max.max(1),
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
        let (reply, outcome) = oneshot::channel();
        let waiter = Waiter {
            purchase: purchase.clone(),
            reply,
        };
        let first = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            match queues.get_mut(&purchase.item) {
                Some(queued) => {
                    queued.push(waiter);
                    false
                }
                None => {
                    queues.insert(purchase.item.clone(), vec![waiter]);
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
        match outcome.await {
            Ok(Ok(outcome)) => Ok(Attempt::new(outcome)),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(StrategyError::Protocol(
                "the batch ended without an answer for this purchase".into(),
            )),
        }
    }
}

/// Sends the item's queued purchases, a batch per call, until none is left;
/// then the item leaves the map, and the next buyer starts a new flusher.
async fn flush(
    mut redis: ConnectionManager,
    script: Arc<Script>,
    queues: Queues,
    item: ItemId,
    keys: ItemKeys,
    max: usize,
) {
    loop {
        let batch: Vec<Waiter> = {
            let mut queues = queues.lock().unwrap_or_else(|e| e.into_inner());
            let Some(queued) = queues.get_mut(&item) else {
                return;
            };
            if queued.is_empty() {
                queues.remove(&item);
                return;
            }
            let take = queued.len().min(max);
            queued.drain(..take).collect()
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

/// One `EVALSHA` for the whole batch: its outcomes, in its order.
async fn run(
    redis: &mut ConnectionManager,
    script: &Script,
    keys: &ItemKeys,
    batch: &[Waiter],
) -> Result<Vec<Outcome>, BatchError> {
    let mut call = script.prepare_invoke();
    call.key(&keys.stock)
        .key(&keys.meta)
        .key(&keys.buyers)
        .key(&keys.orders)
        .arg(StrategyKind::LuaBatch.as_str());
    for waiter in batch {
        let purchase = &waiter.purchase;
        call.arg(purchase.user.as_str())
            .arg(purchase.order_id.0)
            .arg(purchase.order_id.parts().unix_ms);
    }
    let replies: Vec<(i64, redis::Value)> =
        call.invoke_async(redis).await.map_err(BatchError::Redis)?;
    if replies.len() != batch.len() {
        return Err(BatchError::Protocol(format!(
            "purchase_batch.lua answered {} purchases of {}",
            replies.len(),
            batch.len()
        )));
    }
    replies
        .into_iter()
        .map(|(code, value)| {
            super::lua::outcome(code, &value).map_err(|err| BatchError::Protocol(err.to_string()))
        })
        .collect()
}
