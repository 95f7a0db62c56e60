//! The in-process gate: a per-item async mutex in front of another strategy, so
//! only one task per instance competes for the item in Redis at a time.
//!
//! Without it, every in-flight buyer of a hot item hammers Redis: `lock`
//! waiters poll the lock with backoff (and the unlucky ones wait long:
//! backoff is not a queue), `optimistic` buyers abort each other's
//! transactions. Behind the gate the others wait in a FIFO queue in memory, so
//! the Redis-level guard only arbitrates between instances. Correctness still
//! comes from the wrapped strategy: the gate only changes who tries when.
//! Offered as separate strategy names (`lock-gated`, `optimistic-gated`) so the
//! same run can report a strategy with and without it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Attempt, Outcome, Purchase, Strategy, StrategyError, StrategyKind};
use crate::domain::ItemId;

pub struct Gated {
    kind: StrategyKind,
    inner: Arc<dyn Strategy>,
    /// How long a buyer may queue at the gate before `Contended`.
    wait: Duration,
    gates: Mutex<HashMap<ItemId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Gated {
    pub fn new(kind: StrategyKind, inner: Arc<dyn Strategy>, wait: Duration) -> Self {
        Self {
            kind,
            inner,
            wait,
            gates: Mutex::default(),
        }
    }

    fn gate(&self, item: &ItemId) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map is still a consistent map (single inserts only).
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(gates.entry(item.clone()).or_default())
    }
}

#[async_trait]
impl Strategy for Gated {
    fn kind(&self) -> StrategyKind {
        self.kind
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let gate = self.gate(&purchase.item);
        // tokio's Mutex is fair (FIFO), which is the point: no unlucky buyer.
        let Ok(_turn) = tokio::time::timeout(self.wait, gate.lock()).await else {
            return Ok(Attempt::new(Outcome::Contended {
                detail: format!("in-process gate not reached within {:?}", self.wait),
            }));
        };
        self.inner.purchase(purchase).await
    }
}
