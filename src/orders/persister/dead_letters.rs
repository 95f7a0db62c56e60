//! Dead letters: what the persister cannot store is acknowledged and kept
//! in the item's dead-letter stream, in one step (`dead_letter.lua`), never
//! dropped. The letter's format is written and read here: an unreadable
//! entry's raw fields, a conflict's two rows, and the one-field order an
//! earlier version kept as unreadable (which [`super::rescue`] stores).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::Context;
use redis::Script;

use super::{GROUP, PersisterStatus, Worker};
use crate::domain::ItemId;
use crate::keys::ItemKeys;
use crate::orders::db::OrderRecord;
use crate::orders::order_log::{self, Entry};

/// Acknowledges one entry and keeps it as a dead letter (its header says how).
const DEAD_LETTER_LUA: &str = include_str!("dead_letter.lua");

/// A dead letter's field saying why it is one.
const REASON: &str = "reason";
/// How the reason of an entry that is not an order begins.
const UNREADABLE: &str = "unreadable";
/// A dead letter's fields naming the log and the entry it came from.
const STREAM: &str = "stream";
const ENTRY_ID: &str = "entry_id";

/// The dead-letter field keeping an unreadable entry's field `name`.
fn raw_field(name: &str) -> String {
    format!("raw_{name}")
}

/// An order-log entry to keep as dead letters: one, or for a batch's entry
/// one per conflicting order.
pub(super) struct NewLetter<'a> {
    /// Its id in the order log.
    pub(super) entry_id: &'a str,
    /// Each letter's fields.
    pub(super) letters: Vec<Vec<(String, String)>>,
    /// Conflicts, else an unreadable entry: the counter they go to.
    pub(super) conflict: bool,
}

impl Worker {
    /// Acknowledges each of `letters` (entries of `key`) by keeping it in
    /// `item`'s dead-letter stream, counted as a conflict or as unreadable.
    /// Returns the ids handled, which the batch's acknowledgement leaves out.
    pub(super) async fn keep_dead_letters<'a>(
        &mut self,
        key: &str,
        item: Option<&ItemId>,
        letters: Vec<NewLetter<'a>>,
        status: &PersisterStatus,
    ) -> anyhow::Result<HashSet<&'a str>> {
        let mut handled = HashSet::new();
        if !letters.is_empty() {
            // No item, no dead-letter stream: the entries stay pending in
            // their log (kept, retried, logged) until someone looks.
            let dead_letters = item
                .map(|item| ItemKeys::new(item).dead_letters().to_owned())
                .ok_or_else(|| {
                    anyhow::anyhow!("no dead-letter stream for {key}: it names no item")
                })?;
            let script = Script::new(DEAD_LETTER_LUA);
            for NewLetter {
                entry_id: id,
                letters,
                conflict,
            } in letters
            {
                let mut call = script.key(key);
                call.key(&dead_letters).arg(GROUP).arg(id);
                for fields in &letters {
                    call.arg(fields.len() * 2).arg(fields);
                }
                let kept: i64 = call
                    .invoke_async(&mut self.redis)
                    .await
                    .with_context(|| format!("cannot move {id} of {key} to the dead letters"))?;
                let counter = if conflict {
                    &status.conflicts
                } else {
                    &status.unreadable
                };
                counter.fetch_add(kept.max(0) as u64, Ordering::Relaxed);
                handled.insert(id);
            }
        }
        Ok(handled)
    }
}

/// The orders in a dead letter exactly as an earlier version keeps an entry
/// it cannot read, a one-field [`order_log::ORDER`] or [`order_log::ORDERS`]
/// entry (its reason, the log, the entry id, the raw field, nothing else),
/// if that field holds orders. Anything else, such as this version's own
/// unreadable letters, is none of the rescue's business.
pub(super) fn earlier_versions_orders(
    item: &ItemId,
    fields: &[(Vec<u8>, Vec<u8>)],
) -> Option<Vec<OrderRecord>> {
    let reason = format!(
        "{UNREADABLE}: missing field `{}`",
        order_log::legacy::ORDER_ID
    );
    let raw_fields = [order_log::ORDER, order_log::ORDERS].map(raw_field);
    let mut found = HashMap::new();
    for (name, value) in fields {
        let name = std::str::from_utf8(name).ok()?;
        let value = std::str::from_utf8(value).ok()?;
        let expected =
            [REASON, STREAM, ENTRY_ID].contains(&name) || raw_fields.iter().any(|f| f == name);
        if !expected || found.insert(name, value).is_some() {
            return None;
        }
    }
    if found.len() != 4 || found.get(REASON) != Some(&reason.as_str()) {
        return None;
    }
    let (field, raw) = [order_log::ORDER, order_log::ORDERS]
        .into_iter()
        .zip(&raw_fields)
        .find_map(|(field, raw)| Some((field, *found.get(raw.as_str())?)))?;
    let mut orders = Vec::new();
    order_log::parse_field(item, field, raw, &mut orders).ok()?;
    Some(orders)
}

/// A dead letter for an entry that is not an order: its raw fields.
pub(super) fn unreadable_fields(stream: &str, entry: &Entry, err: &str) -> Vec<(String, String)> {
    let mut fields = vec![
        (REASON.to_owned(), format!("{UNREADABLE}: {err}")),
        (STREAM.to_owned(), stream.to_owned()),
        (ENTRY_ID.to_owned(), entry.id.clone()),
    ];
    let mut raw: Vec<&(String, redis::Value)> = entry.fields.iter().collect();
    raw.sort_by_key(|(name, _)| name);
    for (name, value) in raw {
        let text =
            redis::from_redis_value_ref::<String>(value).unwrap_or_else(|_| format!("{value:?}"));
        fields.push((raw_field(name), text));
    }
    fields
}

/// A dead letter: the log's entry, where it came from, and the row SQL holds.
pub(super) fn dead_letter_fields(
    stream: &str,
    entry_id: &str,
    order: &OrderRecord,
    stored: &OrderRecord,
) -> Vec<(String, String)> {
    [
        (REASON, "order id held in SQL by a different order".into()),
        (STREAM, stream.to_owned()),
        (ENTRY_ID, entry_id.to_owned()),
        ("order_id", order.order_id.to_string()),
        ("user_id", order.user_id.clone()),
        ("strategy", order.strategy.clone()),
        ("generation", order.generation.to_string()),
        ("created_ms", order.created_at.to_string()),
        ("sql_item_id", stored.item_id.clone()),
        ("sql_user_id", stored.user_id.clone()),
        ("sql_strategy", stored.strategy.clone()),
        ("sql_generation", stored.generation.to_string()),
        ("sql_created_ms", stored.created_at.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}
