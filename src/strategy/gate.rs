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
//!
//! A gate lives only while someone holds or waits for it: the last one out
//! removes it, so the map holds the items being bought right now, not every
//! id a client ever sent.

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

    /// Drops `gate`, and its map entry if nobody else holds or waits for it.
    /// Under the map lock no new holder can appear: `gate()` clones under it.
    fn release(&self, item: &ItemId, gate: &Arc<tokio::sync::Mutex<()>>) {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and this buyer's.
        if Arc::strong_count(gate) == 2 {
            gates.remove(item);
        }
    }

    /// How many items have a gate now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.gates.lock().unwrap_or_else(|e| e.into_inner()).len()
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
        // Released on every way out, a cancelled request's included (a
        // client that leaves drops this future at its next await).
        let held = Held {
            gated: self,
            item: &purchase.item,
            gate: self.gate(&purchase.item),
        };
        // tokio's Mutex is fair (FIFO), which is the point: no unlucky buyer.
        let Ok(_turn) = tokio::time::timeout(self.wait, held.gate.lock()).await else {
            return Ok(Attempt::new(Outcome::Contended {
                detail: format!("in-process gate not reached within {:?}", self.wait),
            }));
        };
        self.inner.purchase(purchase).await
    }
}

/// A buyer's hold on a gate; dropping it lets the gate go when unused.
struct Held<'a> {
    gated: &'a Gated,
    item: &'a ItemId,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gated.release(self.item, &self.gate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;
    use crate::orders::snowflake::OrderId;

    /// A gated purchase of the junk item number `n`.
    fn junk(n: usize) -> Purchase {
        Purchase::new(
            ItemId::parse(&format!("junk{n}")).unwrap(),
            UserId::parse("u").unwrap(),
            OrderId(1),
            StrategyKind::LockGated,
        )
    }

    /// Answers at once, like a strategy on an item that does not exist.
    struct Nothing;

    #[async_trait]
    impl Strategy for Nothing {
        fn kind(&self) -> StrategyKind {
            StrategyKind::Lock
        }

        async fn purchase(&self, _: &Purchase) -> Result<Attempt, StrategyError> {
            tokio::task::yield_now().await;
            Ok(Attempt::new(Outcome::ItemNotFound))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gates_of_finished_purchases_are_removed() {
        let gated = Arc::new(Gated::new(
            StrategyKind::LockGated,
            Arc::new(Nothing),
            Duration::from_secs(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..2_000 {
            let gated = Arc::clone(&gated);
            tasks.spawn(async move {
                let purchase = junk(i % 300);
                gated.purchase(&purchase).await.unwrap();
            });
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(gated.len(), 0, "no gate left behind");
    }

    /// Never answers: a buyer whose client left mid-purchase.
    struct Forever;

    #[async_trait]
    impl Strategy for Forever {
        fn kind(&self) -> StrategyKind {
            StrategyKind::Lock
        }

        async fn purchase(&self, _: &Purchase) -> Result<Attempt, StrategyError> {
            std::future::pending().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gates_of_cancelled_purchases_are_removed() {
        let gated = Arc::new(Gated::new(
            StrategyKind::LockGated,
            Arc::new(Forever),
            Duration::from_secs(60),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let gated = Arc::clone(&gated);
            tasks.spawn(async move {
                let purchase = junk(i % 50);
                let _ = gated.purchase(&purchase).await;
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gated.len(), 50, "one gate per item in use");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        assert_eq!(gated.len(), 0, "cancelled buyers leave no gate behind");
    }
}
