//! Which streams the persister reads: every item's current order log, the
//! logs restocks set aside (the legacy archive set and each item's), and
//! every item's moves stream (the order lifecycle's), each once its
//! consumer group is made or found.

use anyhow::Context;

use super::{GROUP, Worker};
use crate::domain::ItemId;
use crate::infra::redis_conn;
use crate::keys::{self, ItemKeys};

impl Worker {
    /// The streams to read (those with a group) and the archived logs.
    pub(super) async fn discover(
        &mut self,
    ) -> anyhow::Result<(Vec<String>, Vec<String>, Vec<ItemId>)> {
        // One command per set: the index, the legacy archive set and each
        // item's archive set sit in different slots of a cluster.
        let smembers = |key: String| {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(key);
            cmd
        };
        let [items, legacy]: [redis::RedisResult<Vec<String>>; 2] = redis_conn::each(
            &self.redis,
            [
                smembers(keys::items_index()),
                smembers(keys::legacy_order_archives()),
            ],
        )
        .await
        .try_into()
        .map_err(|_| anyhow::anyhow!("two replies expected"))?;
        let ids: Vec<ItemId> = items
            .context("cannot list order logs")?
            .iter()
            .filter_map(|id| ItemId::parse(id).ok())
            .collect();
        let items: Vec<ItemKeys> = ids.iter().map(ItemKeys::new).collect();
        let mut archives = legacy.context("cannot list order logs")?;
        let per_item: Vec<redis::RedisResult<Vec<String>>> = redis_conn::each(
            &self.redis,
            items
                .iter()
                .map(|keys| smembers(keys.archives().to_owned())),
        )
        .await;
        for listed in per_item {
            archives.extend(listed.context("cannot list archived order logs")?);
        }
        let mut streams = Vec::with_capacity(2 * items.len() + archives.len());
        // The moves streams last: a move is read after the order logs of
        // the same step, so an order bought and paid between two steps is
        // inserted before its move is applied, not held for a step.
        let candidates = items
            .iter()
            .map(|keys| keys.orders().to_owned())
            .chain(archives.iter().cloned())
            .chain(items.iter().map(|keys| keys.moves().to_owned()));
        for key in candidates {
            if self.grouped.contains(&key) || self.create_group(&key).await? {
                self.grouped.insert(key.clone());
                streams.push(key);
            }
        }
        Ok((streams, archives, ids))
    }

    /// Creates the group at the start of the stream. False when the stream
    /// does not exist yet (no order so far): nothing to read, and creating the
    /// key ourselves would change an item that saw no purchase.
    async fn create_group(&mut self, key: &str) -> anyhow::Result<bool> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .query_async(&mut self.redis)
            .await;
        match created {
            Ok(()) => Ok(true),
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(true),
            Err(err) if err.to_string().contains("requires the key to exist") => Ok(false),
            Err(err) => Err(err).with_context(|| format!("XGROUP CREATE {key}")),
        }
    }
}
