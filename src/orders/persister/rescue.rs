//! The rescue: orders an instance of an earlier version could not read
//! (the one-field entry) and kept as unreadable dead letters are stored,
//! then taken out of the letters, so a mixed deployment during an upgrade
//! loses no order to SQL.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use std::collections::HashMap;

use anyhow::Context;

use super::dead_letters::earlier_versions_orders;
use super::{PersisterStatus, Worker, record};
use crate::domain::ItemId;
use crate::infra::redis_conn;
use crate::keys::ItemKeys;

/// A dead letter as `XRANGE` gives it: its id and its fields, as bytes (one
/// that is no text must not fail the others' reading).
type Letter = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Letters per dead-letter stream and rescue pass.
const RESCUE_PAGE: usize = 1000;

impl Worker {
    /// Orders that an instance of an earlier version, beside this one on
    /// the same Redis, could not read (it knows only the five-field entry,
    /// see [`order_log`]) and kept as unreadable dead letters: their raw
    /// [`order_log::ORDER`] field is an order after all. Each is stored, then
    /// taken out of the dead letters; one whose id SQL holds with other
    /// fields stays there, counted and logged as a conflict. Each pass reads
    /// each item's letters after the last one it looked at, a page at a
    /// time. Never fails the step: what it cannot read is logged, counted in
    /// `rescue_errors`, and left.
    ///
    /// [`order_log`]: crate::orders::order_log
    /// [`order_log::ORDER`]: crate::orders::order_log::ORDER
    pub(super) async fn rescue(&mut self, items: &[ItemId], status: &PersisterStatus) -> usize {
        let letters: Vec<String> = items
            .iter()
            .map(|i| ItemKeys::new(i).dead_letters().to_owned())
            .collect();
        let reads: Vec<redis::RedisResult<Vec<Letter>>> = redis_conn::each(
            &self.redis,
            letters.iter().map(|key| {
                let from = self
                    .rescued_up_to
                    .get(key)
                    .map_or_else(|| "-".to_owned(), |id| format!("({id}"));
                let mut read = redis::cmd("XRANGE");
                read.arg(key)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(RESCUE_PAGE);
                read
            }),
        )
        .await;
        let mut rescued = 0;
        for ((item, key), read) in items.iter().zip(&letters).zip(reads) {
            let done = match read {
                Ok(page) => self.rescue_page(item, key, page, status).await,
                Err(err) => Err(anyhow::Error::new(err).context(format!("XRANGE {key}"))),
            };
            match done {
                Ok(n) => rescued += n,
                Err(err) => {
                    // Not the step's failure (the new orders still flow),
                    // but orders may be stuck in these letters: the report
                    // must show it, not only the log.
                    let message = format!(
                        "cannot look through {item}'s dead letters for orders an earlier version kept: {err:#}"
                    );
                    tracing::warn!(%item, error = %message, "rescue failed");
                    record(&status.rescue_errors, &status.last_rescue_error, message);
                }
            }
        }
        status.rescued.fetch_add(rescued as u64, Ordering::Relaxed);
        rescued
    }

    /// One page of `key`'s letters: stores the orders among them, deletes
    /// their letters, and moves the cursor past the page.
    async fn rescue_page(
        &mut self,
        item: &ItemId,
        key: &str,
        page: Vec<Letter>,
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        let Some(last) = page.last().map(|(id, _)| id.clone()) else {
            return Ok(0);
        };
        // The letter each order came from, by index in `orders`; and each
        // letter with its count of orders (a batch's entry holds several).
        let mut ids = Vec::new();
        let mut orders = Vec::new();
        let mut letters = Vec::new();
        for (id, fields) in &page {
            if let Some(found) = earlier_versions_orders(item, fields) {
                ids.extend(std::iter::repeat_n(id.as_str(), found.len()));
                letters.push((id.as_str(), found.len()));
                orders.extend(found);
            }
        }
        let mut rescued = 0;
        if !orders.is_empty() {
            let inserted = self
                .db
                .insert_orders(&orders, &HashMap::new())
                .await
                .context("cannot insert rescued orders")?;
            let conflicts = self.conflicts(&orders, inserted).await?;
            // A letter with one conflicting order stays whole.
            let conflicting: HashSet<&str> = conflicts.iter().map(|(i, _)| ids[*i]).collect();
            for (index, stored) in &conflicts {
                tracing::error!(
                    stream = %key,
                    letter = ids[*index],
                    log_order = ?orders[*index],
                    sql_order = ?stored,
                    "order id conflict in a dead letter an earlier version kept: SQL holds a different order under this id; the letter stays"
                );
            }
            status
                .conflicts
                .fetch_add(conflicts.len() as u64, Ordering::Relaxed);
            status.persisted.fetch_add(inserted, Ordering::Relaxed);
            let stored: Vec<(&str, usize)> = letters
                .into_iter()
                .filter(|(id, _)| !conflicting.contains(id))
                .collect();
            if !stored.is_empty() {
                // Counted by what this call deleted: another instance
                // rescuing the same letters counts the rest. One XDEL a
                // letter, to count its orders (a path of upgrades only).
                for (id, held) in stored {
                    let deleted: redis::RedisResult<u64> = redis::cmd("XDEL")
                        .arg(key)
                        .arg(id)
                        .query_async(&mut self.redis)
                        .await;
                    match deleted {
                        Ok(1) => rescued += held,
                        Ok(_) => {}
                        // Those deleted so far count; the rest stay, and
                        // are stored again (a no-op) next pass.
                        Err(err) => {
                            status.rescued.fetch_add(rescued as u64, Ordering::Relaxed);
                            return Err(anyhow::Error::new(err).context(format!("XDEL {key} {id}")));
                        }
                    }
                }
                tracing::warn!(
                    %item,
                    rescued,
                    "stored orders an earlier version's persister had kept as unreadable dead letters"
                );
            }
        }
        self.rescued_up_to.insert(key.to_owned(), last);
        Ok(rescued)
    }
}
