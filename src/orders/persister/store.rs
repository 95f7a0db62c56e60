//! Storing a batch of entries: one SQL transaction, then one
//! acknowledgement; an entry that is no order, or whose id SQL holds with
//! another order (told from a harmless redelivery here), goes to the dead
//! letters instead.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::Context;

use super::dead_letters::{NewLetter, dead_letter_fields, unreadable_fields};
use super::{GROUP, PersisterStatus, Worker};
use crate::domain::ItemId;
use crate::keys::{self, ItemKeys};
use crate::orders::db::OrderRecord;
use crate::orders::moves::{MOVE, Move, OrderState, settled_state};
use crate::orders::order_log::{self, Entry};
use crate::orders::snowflake::OrderId;

impl Worker {
    /// Inserts the entries' orders, then acknowledges the entries. Those
    /// it cannot store (unreadable, or a conflicting id) go to the item's
    /// dead-letter stream instead, each with its own acknowledgement.
    /// Returns the orders it read, and the entries it could not read.
    pub(super) async fn persist(
        &mut self,
        key: &str,
        entries: &[Entry],
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        // Only our own logs are listed, so a key that names no item is a
        // bug: its entries are kept as dead letters, never stored under a
        // made-up item.
        let item = keys::item_of(key);
        if let Some(item) = &item
            && ItemKeys::new(item).moves() == key
        {
            return self.persist_moves(key, item, entries, status).await;
        }
        let mut orders = Vec::with_capacity(entries.len());
        // The entry each order came from, by index in `orders`.
        let mut from = Vec::with_capacity(entries.len());
        let mut letters = Vec::new();
        for entry in entries {
            let parsed = item
                .as_ref()
                .ok_or_else(|| format!("the order log's key `{key}` names no item"))
                .and_then(|item| order_log::parse(item, entry, &mut orders));
            match parsed {
                Ok(()) => from.resize(orders.len(), entry),
                // Only this service writes these streams: an entry it cannot
                // read is a bug, logged loudly and kept, not a reason to
                // stall the log.
                Err(err) => {
                    tracing::error!(stream = %key, id = %entry.id, %err, "unreadable order-log entry moved to the dead-letter stream");
                    letters.push(NewLetter {
                        entry_id: entry.id.as_str(),
                        letters: vec![unreadable_fields(key, entry, &err)],
                        conflict: false,
                    });
                }
            }
        }
        // A lua-batch entry holds up to LUA_BATCH_MAX orders: a read's
        // entries are stored in transactions of at most `batch` orders, so
        // none holds the database's write lock for a read's worth of them,
        // and a redelivery reads back at most that many. All are committed
        // before the one acknowledgement (a crash between two is a
        // redelivery, harmless).
        let run_len = self.config.batch.max(1);
        let states = match &item {
            Some(item) => self.lifecycle_states(item, &orders).await?,
            None => HashMap::new(),
        };
        let mut inserted = 0;
        let mut found = Vec::new();
        for (run, chunk) in orders.chunks(run_len).enumerate() {
            let written = self
                .db
                .insert_orders(chunk, &states)
                .await
                .context("cannot insert orders")?;
            inserted += written;
            let offset = run * run_len;
            found.extend(
                self.conflicts(chunk, written)
                    .await?
                    .into_iter()
                    .map(|(index, stored)| (offset + index, stored)),
            );
        }
        // A batch's entry holds several orders: each conflicting one is a
        // letter, all kept with the entry's one acknowledgement.
        let mut conflicting: Vec<NewLetter> = Vec::new();
        for (index, stored) in found {
            let (entry, order) = (from[index], &orders[index]);
            tracing::error!(
                stream = %key,
                entry = %entry.id,
                log_order = ?order,
                sql_order = ?stored,
                "order id conflict: SQL holds a different order under this id; entry moved to the dead-letter stream"
            );
            let letter = dead_letter_fields(key, &entry.id, order, &stored);
            match conflicting.last_mut() {
                Some(last) if last.entry_id == entry.id => last.letters.push(letter),
                _ => conflicting.push(NewLetter {
                    entry_id: entry.id.as_str(),
                    letters: vec![letter],
                    conflict: true,
                }),
            }
        }
        let unreadable = letters.len();
        letters.extend(conflicting);

        let handled = self
            .keep_dead_letters(key, item.as_ref(), letters, status)
            .await?;
        let ids: Vec<&str> = entries
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| !handled.contains(id))
            .collect();
        if !ids.is_empty() {
            let _: u64 = redis::cmd("XACK")
                .arg(key)
                .arg(GROUP)
                .arg(&ids)
                .query_async(&mut self.redis)
                .await
                .with_context(|| format!("XACK {key}"))?;
        }
        status.persisted.fetch_add(inserted, Ordering::Relaxed);
        status.batches.fetch_add(1, Ordering::Relaxed);
        Ok(orders.len() + unreadable)
    }

    /// Where each of `orders` stands in Redis now, for those of a sale
    /// with a payment window: reserved, or already ended (its move may
    /// come later, or have come first and be held). Their rows are inserted
    /// so. One `EXISTS` for a sale without a window, the common case.
    async fn lifecycle_states(
        &mut self,
        item: &ItemId,
        orders: &[OrderRecord],
    ) -> anyhow::Result<HashMap<OrderId, OrderState>> {
        let keys = ItemKeys::new(item);
        let any: u8 = redis::cmd("EXISTS")
            .arg(keys.reserved())
            .arg(keys.settled())
            .query_async(&mut self.redis)
            .await
            .context("EXISTS reserved settled")?;
        if any == 0 || orders.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for key in [keys.reserved(), keys.settled()] {
            pipe.cmd("HMGET").arg(key);
            for order in orders {
                pipe.arg(order.order_id.0);
            }
        }
        let (reserved, settled): (Vec<Option<redis::Value>>, Vec<Option<String>>) = pipe
            .query_async(&mut self.redis)
            .await
            .context("HMGET reserved, settled")?;
        let mut states = HashMap::new();
        for ((order, reserved), settled) in orders.iter().zip(reserved).zip(settled) {
            let state = match (reserved, settled) {
                (Some(_), _) => Some(OrderState::Reserved),
                (None, Some(ended)) => settled_state(&ended).ok(),
                (None, None) => None,
            };
            if let Some(state) = state {
                states.insert(order.order_id, state);
            }
        }
        Ok(states)
    }

    /// Applies a moves stream's entries ([`crate::orders::moves`]) to SQL,
    /// then acknowledges them, but for the moves whose order SQL does not
    /// hold yet: those stay pending, held, and this consumer reads its
    /// pending entries again next step, until their orders arrive. An entry
    /// that is no move goes to the dead letters.
    async fn persist_moves(
        &mut self,
        key: &str,
        item: &ItemId,
        entries: &[Entry],
        status: &PersisterStatus,
    ) -> anyhow::Result<usize> {
        let mut moves = Vec::with_capacity(entries.len());
        let mut from = Vec::with_capacity(entries.len());
        let mut letters = Vec::new();
        for entry in entries {
            match entry
                .text(MOVE)
                .ok_or_else(|| format!("missing field `{MOVE}`"))
                .and_then(Move::parse)
            {
                Ok(one) => {
                    moves.push(one);
                    from.push(entry.id.as_str());
                }
                Err(err) => {
                    tracing::error!(stream = %key, id = %entry.id, %err, "unreadable move moved to the dead-letter stream");
                    letters.push(NewLetter {
                        entry_id: entry.id.as_str(),
                        letters: vec![unreadable_fields(key, entry, &err)],
                        conflict: false,
                    });
                }
            }
        }
        let held = self
            .db
            .apply_moves(item, &moves, self.config.stock_in_sql)
            .await
            .context("cannot apply order moves")?;
        let held: HashSet<&str> = moves
            .iter()
            .zip(&from)
            .filter(|(one, _)| held.contains(one))
            .map(|(_, id)| *id)
            .collect();
        if !held.is_empty() {
            self.own_pending_due = true;
            status
                .moves_held
                .fetch_add(held.len() as u64, Ordering::Relaxed);
        }
        let unreadable = letters.len();
        let handled = self
            .keep_dead_letters(key, Some(item), letters, status)
            .await?;
        let ids: Vec<&str> = entries
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| !handled.contains(id) && !held.contains(id))
            .collect();
        if !ids.is_empty() {
            // Applied: nobody reads them again, and the order's state is in
            // SQL and in the item's `settled` hash.
            // One transaction: an entry acknowledged but left in the
            // stream by a crash between the two would stay there for good.
            let _: () = redis::pipe()
                .atomic()
                .cmd("XACK")
                .arg(key)
                .arg(GROUP)
                .arg(&ids)
                .ignore()
                .cmd("XDEL")
                .arg(key)
                .arg(&ids)
                .ignore()
                .query_async(&mut self.redis)
                .await
                .with_context(|| format!("XACK {key}"))?;
        }
        let applied = moves.len() - held.len();
        status.moves.fetch_add(applied as u64, Ordering::Relaxed);
        Ok(applied + unreadable)
    }

    /// The orders whose id SQL holds with different fields, by index in
    /// `orders`, with the stored row, once an insert wrote `inserted` of
    /// them. All written: none. Otherwise every order is read back, since the
    /// insert does not say which it skipped: one stored as it is here was
    /// written now or is a redelivery (a crash between commit and
    /// acknowledgement), harmless either way.
    pub(super) async fn conflicts(
        &self,
        orders: &[OrderRecord],
        inserted: u64,
    ) -> anyhow::Result<Vec<(usize, OrderRecord)>> {
        if inserted == orders.len() as u64 {
            return Ok(Vec::new());
        }
        let ids: Vec<OrderId> = orders.iter().map(|order| order.order_id).collect();
        let stored: HashMap<OrderId, OrderRecord> = self
            .db
            .orders_by_id(&ids)
            .await
            .context("cannot read back orders not inserted")?
            .into_iter()
            .map(|row| (row.order_id, row))
            .collect();
        let mut conflicts = Vec::new();
        for (i, order) in orders.iter().enumerate() {
            match stored.get(&order.order_id) {
                Some(row) if row == order => {}
                Some(row) => conflicts.push((i, row.clone())),
                // Written or skipped, yet not there: only a concurrent
                // delete could do that, and nothing deletes orders. Refuse
                // to acknowledge.
                None => anyhow::bail!(
                    "order {} was neither inserted nor found in SQL",
                    order.order_id
                ),
            }
        }
        Ok(conflicts)
    }
}
