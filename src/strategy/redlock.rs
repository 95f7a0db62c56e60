//! `redlock`: the Redlock algorithm over N independent Redis nodes
//! (`REDLOCK_URLS`; by default the main Redis, or the main Redis Cluster,
//! alone: N = 1), as published:
//! `SET key token NX PX ttl` on every node at once, each bounded by a short
//! per-node timeout; the lock is held if a quorum (N/2 + 1) said yes and time
//! remains, validity = ttl − elapsed − drift (1% of the ttl + 2 ms); otherwise
//! it is released on every node (compare-and-delete, as in [`super::lock`]).
//! The stock stays on the main Redis and is read, checked and written under
//! the lock exactly as in `lock`.
//!
//! Implemented here rather than with the `rslock` crate (which fits this
//! `redis` version): rslock reconnects to a dead node while holding that
//! node's mutex and has no per-node timeout, so with one node killed under
//! 400 concurrent buyers every acquisition queued behind the dead node until
//! its TTL ran out, and buyers were refused although a quorum was up.
//!
//! Each acquisition is one try; between tries this strategy backs off with
//! jitter up to `LOCK_WAIT_MS`, and leaves at once when the main Redis says
//! the item is sold out or the user is at the limit. With a majority of nodes
//! down no quorum is possible: buyers are refused (503), never let through.
//! The write goes through `write.lua`, which checks the sale's generation
//! atomically with the order append, so a holder whose item was restocked
//! meanwhile writes nothing (409 `sale_restarted`). Validity is checked before
//! the write: a holder whose validity ran out writes nothing (503
//! `contention`, counted as `lock_expired`). Validity found spent only after
//! the write is counted as `lock_expired` too. `RACE_WINDOW_MS` holds the lock
//! between read and write, as in `lock`.
//!
//! Its caveats (clock drift, failover without fsync, pauses longer than the
//! TTL, and why a fencing token is the real fix) are in docs/strategies.md,
//! "Redlock's caveats".

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::infra::redis_conn::RedisConn;

use super::{
    Attempt, Outcome, Purchase, Snapshot, StockWrite, Strategy, StrategyError, StrategyKind,
};
use crate::infra::token_lock::{self, Backoff};

/// Clock drift allowance: 1% of the TTL plus 2 ms, as the algorithm states.
fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

pub struct Redlock {
    /// The main Redis, where the stock lives.
    redis: RedisConn,
    /// The lock nodes. Lazy: a node that is down at start-up is just one "no".
    nodes: Vec<RedisConn>,
    /// How long one node may take to answer: a dead or slow node must cost a
    /// round little more than a live one, not the whole TTL.
    node_timeout: Duration,
    ttl: Duration,
    wait: Duration,
    /// Lab knob: sleep between read and write while holding the lock.
    race_window: Duration,
}

impl Redlock {
    /// Lock nodes from `node_urls`; none: the main Redis is the one node.
    pub fn new(
        redis: RedisConn,
        node_urls: &[String],
        ttl: Duration,
        wait: Duration,
        race_window: Duration,
    ) -> anyhow::Result<Self> {
        let node_timeout = (ttl / 10).clamp(Duration::from_millis(5), Duration::from_millis(50));
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(node_timeout))
            .set_connection_timeout(Some(node_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let mut nodes = node_urls
            .iter()
            .map(|url| {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| anyhow::anyhow!("REDLOCK_URLS: `{url}`: {e}"))?;
                Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
                    client,
                    config.clone(),
                )?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if nodes.is_empty() {
            nodes.push(redis.clone());
        }
        Ok(Self {
            redis,
            nodes,
            node_timeout,
            ttl,
            wait,
            race_window,
        })
    }

    fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// One Redlock round: the validity left if a quorum granted the lock.
    ///
    /// The round ends as soon as its outcome is certain (a quorum said yes, or
    /// too many said no), so a dead node costs nothing while a quorum answers;
    /// the release still goes to every node.
    async fn try_acquire(&self, key: &str, token: &str) -> Option<Duration> {
        let started = Instant::now();
        let mut answers: FuturesUnordered<_> = self
            .nodes
            .iter()
            .map(|node| {
                let mut node = node.clone();
                async move {
                    let take = token_lock::try_take(&mut node, key, token, self.ttl);
                    matches!(
                        tokio::time::timeout(self.node_timeout, take).await,
                        Ok(Ok(true))
                    )
                }
            })
            .collect();
        let (mut granted, mut refused) = (0, 0);
        let refusals_that_sink_it = self.nodes.len() - self.quorum() + 1;
        while let Some(yes) = answers.next().await {
            if yes {
                granted += 1;
            } else {
                refused += 1;
            }
            if granted >= self.quorum() || refused >= refusals_that_sink_it {
                break;
            }
        }
        drop(answers);
        let validity = self
            .ttl
            .checked_sub(started.elapsed() + drift(self.ttl))
            .filter(|v| !v.is_zero());
        match validity {
            Some(validity) if granted >= self.quorum() => Some(validity),
            _ => {
                self.release(key, token).await;
                None
            }
        }
    }

    /// Compare-and-delete on every node, reachable or not.
    async fn release(&self, key: &str, token: &str) {
        join_all(self.nodes.iter().map(|node| {
            let mut node = node.clone();
            async move {
                let unlock = token_lock::unlock(&mut node, key, token);
                let _ = tokio::time::timeout(self.node_timeout, unlock).await;
            }
        }))
        .await;
    }

    /// The holder's read: binds an unbound sale.
    async fn snapshot(&self, purchase: &Purchase) -> Result<Snapshot, StrategyError> {
        Snapshot::fetch(&mut self.redis.clone(), purchase).await
    }

    /// A waiter's read, to leave early: plain reads, no script.
    async fn peek(&self, purchase: &Purchase) -> Result<Snapshot, StrategyError> {
        let mut read = redis::pipe();
        Snapshot::read(&mut read, purchase);
        Ok(Snapshot::from_replies(
            read.query_async(&mut self.redis.clone()).await?,
        ))
    }
}

#[async_trait]
impl Strategy for Redlock {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Redlock
    }

    async fn purchase(&self, purchase: &Purchase) -> Result<Attempt, StrategyError> {
        let resource = purchase.keys.redlock();
        let token = token_lock::new_token();
        let mut backoff = Backoff::new(self.wait);
        let (validity, acquired_at) = loop {
            let round = Instant::now();
            if let Some(validity) = self.try_acquire(resource, &token).await {
                break (validity, round);
            }
            if let Some(rejection) = self.peek(purchase).await?.rejection(purchase.strategy) {
                return Ok(Attempt::new(rejection).with_retries(backoff.waits()));
            }
            if !backoff.wait().await {
                return Ok(Attempt::new(Outcome::Contended {
                    detail: format!(
                        "no Redlock quorum of {} of {} nodes within {:?}",
                        self.quorum(),
                        self.nodes.len(),
                        self.wait
                    ),
                })
                .with_retries(backoff.waits()));
            }
        };

        let section = async {
            let snapshot = self.snapshot(purchase).await?;
            if let Some(rejection) = snapshot.rejection(purchase.strategy) {
                return Ok::<_, StrategyError>(rejection);
            }
            if !self.race_window.is_zero() {
                tokio::time::sleep(self.race_window).await;
            }
            if acquired_at.elapsed() >= validity {
                return Ok(Outcome::Contended {
                    detail: "the Redlock validity ran out before the write; nothing was bought"
                        .into(),
                });
            }
            let remaining = snapshot.stock - 1;
            let written = purchase
                .guarded_write(
                    &mut self.redis.clone(),
                    snapshot.generation,
                    StockWrite::Set {
                        remaining,
                        returned: Some(snapshot.returned),
                    },
                )
                .await?;
            Ok(written
                .refusal()
                .unwrap_or(Outcome::Purchased { remaining }))
        };
        let outcome = section.await;
        let lock_expired = acquired_at.elapsed() >= validity;
        self.release(resource, &token).await;
        if lock_expired {
            tracing::warn!(
                item = %purchase.item,
                validity_ms = validity.as_millis() as u64,
                "Redlock validity ran out inside the critical section"
            );
        }
        Ok(Attempt {
            outcome: outcome?,
            retries: backoff.waits(),
            lock_expired,
            fenced: false,
        })
    }
}
