//! `naive`: read the stock, check it, write stock − 1. No guard at all.
//!
//! Two buyers who read the same stock both pass the check and both write the
//! same new value: both get an order, the stock falls by one. That lost update
//! is the oversell this lab exists to show; `drift` on the item view exposes it
//! even when the stock counter looks fine. The optional race window (a sleep
//! between read and write, `RACE_WINDOW_MS`) makes it show at any load,
//! which is also how the tests make it deterministic.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{Attempt, Outcome, Purchase, Snapshot, Strategy, StrategyError, StrategyKind};

pub struct Naive {
    redis: ConnectionManager,
    race_window: Duration,
}

impl Naive {
    pub fn new(redis: ConnectionManager, race_window: Duration) -> Self {
        Self { redis, race_window }
    }
}

#[async_trait]
impl Strategy for Naive {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Naive
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let mut redis = self.redis.clone();
        let mut read = redis::pipe();
        Snapshot::read(&mut read, purchase);
        let snapshot = Snapshot::from_replies(read.query_async(&mut redis).await?);
        if let Some(rejection) = snapshot.rejection() {
            return Ok(Attempt::new(rejection));
        }

        if !self.race_window.is_zero() {
            tokio::time::sleep(self.race_window).await;
        }

        // Deliberately a plain pipeline, not MULTI: nothing here is atomic.
        let remaining = snapshot.stock - 1;
        let mut write = redis::pipe();
        write
            .cmd("SET")
            .arg(&purchase.keys.stock)
            .arg(remaining)
            .ignore();
        purchase.add_buyer_and_order(&mut write, snapshot.generation);
        write.exec_async(&mut redis).await?;
        Ok(Attempt::new(Outcome::Purchased { remaining }))
    }
}
