//! Reading the order logs through the consumer group: new entries (waiting
//! on the log of the sale in progress when all are quiet), this consumer's
//! own pending ones, and those taken over from a consumer gone idle
//! (`XAUTOCLAIM`); what is read is handed to [`Worker::persist`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use redis::streams::StreamAutoClaimReply;

use super::{GROUP, PersisterStatus, Worker, log_replaced};
use crate::infra::redis_conn;
use crate::keys::{self, ItemKeys};
use crate::orders::order_log::{Entry, ReadReply};

impl Worker {
    /// Reads `streams` from `from` (`>`: new entries; `0`: this consumer's
    /// pending ones), each order log on its own `XREADGROUP` (one command
    /// naming several logs would span cluster slots), all in one round trip,
    /// persisting what they return. When nothing came and `block` is set, it
    /// waits on the log that last had entries, the sale in progress, so its
    /// orders are picked up at once; the others are looked at again next step
    /// (at most [`PersisterConfig::block`] later).
    ///
    /// [`PersisterConfig::block`]: super::PersisterConfig::block
    pub(super) async fn read_group(
        &mut self,
        streams: &[String],
        from: &str,
        block: bool,
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        // Each log on its own (on a cluster they sit in different slots),
        // with its own reply: one log replaced since we grouped it must not
        // hold up the others.
        let replies: Vec<redis::RedisResult<ReadReply>> = redis_conn::each(
            &self.redis,
            streams
                .iter()
                .map(|stream| self.xreadgroup(stream, from, None)),
        )
        .await;
        let mut handled = self.persist_replies(replies, status).await?;
        if handled == 0 && block && from == ">" {
            let hot = self
                .hot
                .as_ref()
                .filter(|hot| streams.contains(hot))
                .or(streams.first())
                .cloned();
            if let Some(hot) = hot {
                let wait = self.xreadgroup(&hot, from, Some(self.config.block));
                let reply = wait.query_async(&mut self.redis).await;
                handled = self.persist_replies(vec![reply], status).await?;
            }
        }
        Ok(handled)
    }

    /// `XREADGROUP` of one order log, blocking for `block` if given.
    fn xreadgroup(&self, stream: &str, from: &str, block: Option<Duration>) -> redis::Cmd {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.entries_per_read(stream));
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        read.arg("STREAMS").arg(stream).arg(from);
        read
    }

    /// Persists the entries of `XREADGROUP` replies; remembers the last log
    /// that had any as the one to wait on. A log replaced since we grouped
    /// it ([`log_replaced`]) counts as work, so a drain looks again, with fresh
    /// groups, instead of stopping there; any other error fails the step,
    /// after the other logs' entries are stored.
    async fn persist_replies(
        &mut self,
        replies: Vec<redis::RedisResult<ReadReply>>,
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        let mut handled = 0;
        let mut failed = None;
        for reply in replies {
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) if log_replaced(&err) => {
                    self.grouped.clear();
                    handled += 1;
                    continue;
                }
                Err(err) => {
                    failed.get_or_insert(err);
                    continue;
                }
            };
            for (key, entries) in reply.0 {
                if entries.is_empty() {
                    continue;
                }
                // As many as asked for: more may be waiting, read again at
                // once (the count asked is the one made before this read
                // updates the log's orders per entry).
                if entries.len() >= self.entries_per_read(&key) {
                    self.read_full = true;
                }
                let orders = self.persist(&key, &entries, status).await?;
                handled += orders;
                self.orders_per_entry
                    .insert(key.clone(), orders.div_ceil(entries.len()).max(1));
                // Only a live log gets more orders: an archived one being
                // caught up is no sale in progress.
                let live =
                    keys::item_of(&key).is_some_and(|item| ItemKeys::new(&item).orders() == key);
                if live {
                    self.hot = Some(key);
                }
            }
        }
        match failed {
            Some(err) => Err(err).context("XREADGROUP failed"),
            None => Ok(handled),
        }
    }

    /// Takes over entries pending longer than `claim_idle` (their consumer
    /// died or is stuck) and persists them.
    pub(super) async fn reclaim(
        &mut self,
        streams: &[String],
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        let mut total = 0;
        for key in streams {
            let mut cursor = "0-0".to_owned();
            loop {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(key)
                    .arg(GROUP)
                    .arg(&self.config.consumer)
                    .arg(self.config.claim_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(self.entries_per_read(key))
                    .query_async(&mut self.redis)
                    .await
                    .with_context(|| format!("XAUTOCLAIM {key}"))?;
                if !reply.claimed.is_empty() {
                    tracing::info!(stream = %key, entries = reply.claimed.len(), "reclaimed idle order-log entries");
                    status
                        .reclaimed
                        .fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
                    let claimed: Vec<Entry> = reply.claimed.into_iter().map(Entry::from).collect();
                    total += self.persist(key, &claimed, status).await?;
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
        Ok(total)
    }
}
