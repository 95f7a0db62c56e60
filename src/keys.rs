//! The Redis key schema, designed for a Redis Cluster: no command, script or
//! `MULTI` transaction of this service names two keys of different slots. Every key
//! of an item carries the item in one hash tag, `seckill:{ITEM}:...`, so all
//! of an item's keys share a slot; a worker number's lease and horizon share
//! one too; the keys that span items (the index, the legacy archive set) are
//! only ever used one at a time. Nothing outside `seckill:` (or `{seckill:`,
//! a hash tag around a `seckill:` key) is ever touched. `tests/api/cluster.rs`
//! runs the whole service on a cluster to hold this.

use crate::domain::ItemId;

/// Everything this service writes starts with this.
pub const PREFIX: &str = "seckill";

/// Set of item ids, for `GET /api/items`.
pub fn items_index() -> String {
    format!("{PREFIX}:items")
}

/// Set of order logs set aside by restocks, written by versions before the
/// per-item [`ItemKeys::archives`] set. Still read, so an upgrade finds the
/// archives an older version left; never written.
pub fn legacy_order_archives() -> String {
    format!("{PREFIX}:order-archives")
}

/// A `SCAN`/`KEYS` pattern matching every key of every item whose id starts
/// with `id_prefix`.
pub fn items_pattern(id_prefix: &str) -> String {
    format!("{PREFIX}:{{{id_prefix}*")
}

/// Snowflake worker lease for worker number `n`.
pub fn worker_lease(n: u16) -> String {
    format!("{PREFIX}:worker:{n}")
}

/// How far ids were minted with worker number `n` (Unix ms). No TTL: it
/// outlives the lease, for the number's next holder (see [`crate::orders::lease`]).
/// Its hash tag is the whole lease key, so the two share a cluster slot and
/// one script can take the lease and read the horizon.
pub fn worker_horizon(n: u16) -> String {
    format!("{{{}}}:horizon", worker_lease(n))
}

/// Where versions before [`worker_horizon`] kept it: in another slot than
/// the lease. Read after taking a number and raised beside the new key (by
/// one-key commands), so instances of both versions, side by side during an
/// upgrade on one Redis, see each other's horizons.
pub fn legacy_worker_horizon(n: u16) -> String {
    format!("{}:horizon", worker_lease(n))
}

/// The keys of one item.
#[derive(Debug, Clone)]
pub struct ItemKeys {
    /// Remaining units (string integer).
    pub stock: String,
    /// Hash: `initial_stock`, `per_user_limit`, `generation` (bumped by each restock).
    pub meta: String,
    /// Hash: user id → units held in this sale.
    pub buyers: String,
    /// Stream: one entry per order of the current sale (the order log).
    pub orders: String,
    /// The `lock` strategy's mutex (holds the owner's random token).
    pub lock: String,
    /// Fencing-token counter: INCR at each `lock` acquisition.
    pub fence: String,
    /// The `redlock` strategy's lock, on each of its nodes.
    pub redlock: String,
    /// Set of this item's order logs set aside by restocks (see
    /// [`ItemKeys::new_archive`]), until the persister has them all.
    pub archives: String,
    /// Stream of order-log entries the persister could not store because SQL
    /// holds a different order under the same id: kept, never acknowledged
    /// away.
    pub dead_letters: String,
    /// A counter written just before each `WAIT` for replicas
    /// (`REDIS_WAIT_REPLICAS`): the write the `WAIT` counts, on the
    /// item's master.
    pub replicated: String,
    /// `seckill:{ITEM}`, for keys named per use (idempotency records).
    base: String,
}

impl ItemKeys {
    /// Built for every purchase, so by concatenation: `format!` for these
    /// eleven strings was about 8,800 instructions a purchase (callgrind),
    /// a twentieth of the server's whole cost of one.
    pub fn new(item: &ItemId) -> Self {
        let base = [PREFIX, ":{", item.as_str(), "}"].concat();
        let key = |suffix: &str| [base.as_str(), suffix].concat();
        Self {
            stock: key(":stock"),
            meta: key(":meta"),
            buyers: key(":buyers"),
            orders: key(":orders"),
            lock: key(":lock"),
            fence: key(":fence"),
            redlock: key(":lock:redlock"),
            archives: key(":archives"),
            dead_letters: key(":dead-letters"),
            replicated: key(":replicated"),
            base,
        }
    }

    /// The record of one `Idempotency-Key` (hex-encoded) used on this item.
    pub fn idempotency(&self, encoded_key: &str) -> String {
        format!("{}:idem:{encoded_key}", self.base)
    }

    /// A `SCAN`/`KEYS` pattern matching every key of this item.
    pub fn pattern(&self) -> String {
        format!("{}:*", self.base)
    }

    /// A pattern matching the item's order log and every archived one.
    pub fn order_logs_pattern(&self) -> String {
        format!("{}*", self.orders)
    }

    /// A pattern matching the order logs restocks set aside
    /// ([`ItemKeys::new_archive`]).
    pub fn archive_pattern(&self) -> String {
        format!("{}:archived:*", self.orders)
    }

    /// A fresh name for the order log a restock sets aside. It keeps the
    /// item's hash tag, so it stays in the item's slot.
    pub fn new_archive(&self) -> String {
        format!("{}:archived:{}", self.orders, uuid::Uuid::new_v4().simple())
    }
}

/// The item a key of [`ItemKeys`] belongs to (`seckill:{ITEM}:...` →
/// `ITEM`): the other direction, for code that finds keys by listing them
/// (the persister's order logs and archives).
pub fn item_of(key: &str) -> Option<ItemId> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix(":{")?;
    let (item, _) = rest.split_once('}')?;
    ItemId::parse(item).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_key_reads_back_to_its_item() {
        let item = ItemId::parse("ip17").unwrap();
        let keys = ItemKeys::new(&item);
        for key in [
            &keys.orders,
            &keys.new_archive(),
            &keys.dead_letters,
            &keys.redlock,
        ] {
            assert_eq!(item_of(key), Some(item.clone()), "{key}");
        }
        assert_eq!(item_of("other:{ip17}:orders"), None);
        assert_eq!(item_of(&worker_lease(3)), None);
    }

    /// Every key of an item shares its hash tag (one cluster slot); and the
    /// names are stored data: a Redis restarted on an earlier version's
    /// files must be found under the same keys.
    #[test]
    fn item_keys_share_one_hash_tag_and_keep_their_names() {
        let keys = ItemKeys::new(&ItemId::parse("ip17").unwrap());
        let names = [
            &keys.stock,
            &keys.meta,
            &keys.buyers,
            &keys.orders,
            &keys.lock,
            &keys.fence,
            &keys.redlock,
            &keys.archives,
            &keys.dead_letters,
            &keys.replicated,
        ]
        .map(|key| key.strip_prefix("seckill:{ip17}:").unwrap_or(key));
        assert_eq!(
            names,
            [
                "stock",
                "meta",
                "buyers",
                "orders",
                "lock",
                "fence",
                "lock:redlock",
                "archives",
                "dead-letters",
                "replicated"
            ]
        );
        assert_eq!(keys.idempotency("6162"), "seckill:{ip17}:idem:6162");
        assert!(
            keys.new_archive()
                .starts_with("seckill:{ip17}:orders:archived:")
        );
    }
}
