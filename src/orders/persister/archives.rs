//! Clean-up of the logs restocks set aside: an archive fully persisted
//! (nothing pending, nothing unread) is deleted and forgotten, so restocks
//! do not grow Redis forever.

use anyhow::Context;

use super::{GROUP, Worker};
use crate::keys::{self, ItemKeys};

impl Worker {
    /// Deletes archived logs that are fully persisted (nothing pending, nothing
    /// unread), so restocks do not grow Redis forever.
    pub(super) async fn collect_archives(&mut self, archives: &[String]) -> anyhow::Result<()> {
        for key in archives {
            let groups: redis::RedisResult<Vec<std::collections::HashMap<String, redis::Value>>> =
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(key)
                    .query_async(&mut self.redis)
                    .await;
            let done = match groups {
                Ok(groups) => groups.iter().any(|g| {
                    let field = |name: &str| {
                        g.get(name)
                            .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                    };
                    g.get("name")
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .as_deref()
                        == Some(GROUP)
                        && field("pending") == Some(0)
                        && field("lag") == Some(0)
                }),
                // The archive key is gone already. Only that: any other
                // error must not lead to deleting an archive.
                Err(err) if err.to_string().contains("no such key") => true,
                Err(err) => return Err(err).context("XINFO GROUPS"),
            };
            if done {
                // The archive and its item's set share a slot; the legacy
                // set is elsewhere on a cluster, so it is told on its own.
                let mut forget = redis::pipe();
                forget.cmd("DEL").arg(key).ignore();
                if let Some(item) = keys::item_of(key) {
                    forget
                        .cmd("SREM")
                        .arg(ItemKeys::new(&item).archives())
                        .arg(key)
                        .ignore();
                }
                let _: () = forget
                    .query_async(&mut self.redis)
                    .await
                    .context("cannot delete a persisted archive")?;
                let _: () = redis::cmd("SREM")
                    .arg(keys::legacy_order_archives())
                    .arg(key)
                    .query_async(&mut self.redis)
                    .await
                    .context("cannot delete a persisted archive")?;
                self.grouped.remove(key);
            }
        }
        Ok(())
    }
}
