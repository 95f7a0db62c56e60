//! `naive`: read the stock, check it, write stock − 1. No guard at all.
//!
//! Two buyers who read the same stock both pass the check and both write the
//! same new value: both get an order, the stock falls by one. That lost update
//! is the oversell this lab exists to show; `drift` on the item view exposes it
//! even when the stock counter looks fine. The optional race window (a sleep
//! between read and write, `RACE_WINDOW_MS`) makes it show at any load,
//! which is also how the tests make it deterministic.
//!
//! Its write goes through `write.lua` like every read-check-write strategy's:
//! that does not make naive safe (the write still stores a value computed from
//! a stale read), it only keeps naive's damage inside its own sale when the
//! item is restocked mid-purchase.
//!
//! In a sale with a payment window it also loses returns: a unit cancelled
//! or expired between its read and its write is overwritten by the value it
//! read ([`Returns::Lost`]), which `drift` shows as well.

use std::time::Duration;

use crate::infra::redis_conn::RedisConn;
use async_trait::async_trait;

use super::{Attempt, Purchase, Returns, Snapshot, Strategy, StrategyError, StrategyKind};

pub struct Naive {
    redis: RedisConn,
    race_window: Duration,
}

impl Naive {
    pub fn new(redis: RedisConn, race_window: Duration) -> Self {
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
        let snapshot = Snapshot::fetch(&mut redis, purchase).await?;
        if let Some(rejection) = snapshot.rejection(purchase.strategy) {
            return Ok(Attempt::new(rejection));
        }

        // The value computed from the read, whatever happened since: the lost
        // update this strategy exists to show.
        let outcome = purchase
            .write_as_read(&mut redis, &snapshot, self.race_window, Returns::Lost)
            .await?;
        Ok(Attempt::new(outcome))
    }
}
