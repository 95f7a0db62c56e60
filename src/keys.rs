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

/// Set of the ids of items that were ever restocked with a payment window:
/// the items the expiry sweeps ([`crate::sale::expiry`]). Never shrinks: an
/// item restocked without a window may still hold reserved orders of an
/// earlier sale.
pub fn windowed_items() -> String {
    format!("{PREFIX}:windowed-items")
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

/// The keys of one item, held in one string: built for every purchase, so
/// one allocation instead of one per key. Eleven `format!`ed strings were
/// about 8,800 instructions a purchase (callgrind); eleven concatenated
/// ones, 1,700 more than this one string (`lua-batch`, 80,235 → 78,547).
#[derive(Debug, Clone)]
pub struct ItemKeys {
    /// `seckill:{ITEM}`, then each key whole, one after another.
    text: String,
    /// Key `i` is `text[bounds[i]..bounds[i + 1]]` (an item id is at most
    /// [`crate::domain::MAX_ID_LEN`] long, so `text` stays far below
    /// `u16::MAX`).
    bounds: [u16; SUFFIXES.len() + 1],
    /// The length of `seckill:{ITEM}`.
    base: usize,
}

/// The item's keys, by suffix, in [`ItemKeys`]' accessor order. Stored
/// data: a Redis restarted on an earlier version's files must be found
/// under the same names.
const SUFFIXES: [&str; 14] = [
    ":stock",
    ":meta",
    ":buyers",
    ":orders",
    ":lock",
    ":fence",
    ":lock:redlock",
    ":archives",
    ":dead-letters",
    ":replicated",
    ":reserved",
    ":deadlines",
    ":settled",
    ":moves",
];

impl ItemKeys {
    pub fn new(item: &ItemId) -> Self {
        let base = PREFIX.len() + 2 + item.as_str().len() + 1;
        let suffixes: usize = SUFFIXES.iter().map(|s| s.len()).sum();
        let mut text = String::with_capacity(base * (SUFFIXES.len() + 1) + suffixes);
        for part in [PREFIX, ":{", item.as_str(), "}"] {
            text.push_str(part);
        }
        let mut bounds = [0u16; SUFFIXES.len() + 1];
        bounds[0] = base as u16;
        for (i, suffix) in SUFFIXES.iter().enumerate() {
            text.extend_from_within(..base);
            text.push_str(suffix);
            bounds[i + 1] = text.len() as u16;
        }
        Self { text, bounds, base }
    }

    fn key(&self, i: usize) -> &str {
        &self.text[usize::from(self.bounds[i])..usize::from(self.bounds[i + 1])]
    }

    /// Remaining units (string integer).
    pub fn stock(&self) -> &str {
        self.key(0)
    }

    /// Hash: `initial_stock`, `per_user_limit`, `generation` (bumped by each
    /// restock), `strategy` (the binding), `extra_orders` and
    /// `extra_orders_generation` ([`crate::orders::order_log::EXTRA_ORDERS`]).
    pub fn meta(&self) -> &str {
        self.key(1)
    }

    /// Hash: user id → units held in this sale.
    pub fn buyers(&self) -> &str {
        self.key(2)
    }

    /// Stream: the current sale's orders, an entry each, or one entry for a
    /// `lua-batch` call's several (the order log).
    pub fn orders(&self) -> &str {
        self.key(3)
    }

    /// The `lock` strategy's mutex (holds the owner's token).
    pub fn lock(&self) -> &str {
        self.key(4)
    }

    /// Fencing-token counter: INCR at each `lock` acquisition.
    pub fn fence(&self) -> &str {
        self.key(5)
    }

    /// The `redlock` strategy's lock, on each of its nodes.
    pub fn redlock(&self) -> &str {
        self.key(6)
    }

    /// Set of this item's order logs set aside by restocks (see
    /// [`ItemKeys::new_archive`]), until the persister has them all.
    pub fn archives(&self) -> &str {
        self.key(7)
    }

    /// Stream of order-log entries the persister could not store because
    /// SQL holds a different order under the same id: kept, never
    /// acknowledged away.
    pub fn dead_letters(&self) -> &str {
        self.key(8)
    }

    /// A counter written just before each `WAIT` for replicas
    /// (`REDIS_WAIT_REPLICAS`): the write the `WAIT` counts, on the item's
    /// master.
    pub fn replicated(&self) -> &str {
        self.key(9)
    }

    /// Hash: order id → its order-log line, for each order reserved and
    /// not yet paid, cancelled or expired ([`crate::sale::lifecycle`]).
    pub fn reserved(&self) -> &str {
        self.key(10)
    }

    /// Sorted set: each reserved order's id, scored by its payment deadline
    /// (Unix ms, Redis's clock): what the expiry finds due orders in.
    pub fn deadlines(&self) -> &str {
        self.key(11)
    }

    /// Hash: order id → `<state> <user> <generation>` for each order that
    /// left `reserved` (paid, cancelled, expired): what a repeated or late
    /// pay or cancel is answered from.
    pub fn settled(&self) -> &str {
        self.key(12)
    }

    /// Stream: each order's move out of `reserved` (pay, cancel, expiry),
    /// for the persister to apply to SQL ([`crate::orders::moves`]).
    pub fn moves(&self) -> &str {
        self.key(13)
    }

    /// `seckill:{ITEM}`, for keys named per use (idempotency records).
    fn base(&self) -> &str {
        &self.text[..self.base]
    }

    /// The record of one `Idempotency-Key` (hex-encoded) used on this item.
    pub fn idempotency(&self, encoded_key: &str) -> String {
        format!("{}:idem:{encoded_key}", self.base())
    }

    /// A `SCAN`/`KEYS` pattern matching every key of this item.
    pub fn pattern(&self) -> String {
        format!("{}:*", self.base())
    }

    /// A pattern matching the item's order log and every archived one.
    pub fn order_logs_pattern(&self) -> String {
        format!("{}*", self.orders())
    }

    /// A pattern matching the order logs restocks set aside
    /// ([`ItemKeys::new_archive`]).
    pub fn archive_pattern(&self) -> String {
        format!("{}:archived:*", self.orders())
    }

    /// A fresh name for the order log a restock sets aside. It keeps the
    /// item's hash tag, so it stays in the item's slot.
    pub fn new_archive(&self) -> String {
        format!(
            "{}:archived:{}",
            self.orders(),
            uuid::Uuid::new_v4().simple()
        )
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
        let archive = keys.new_archive();
        for key in [keys.orders(), &archive, keys.dead_letters(), keys.redlock()] {
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
            keys.stock(),
            keys.meta(),
            keys.buyers(),
            keys.orders(),
            keys.lock(),
            keys.fence(),
            keys.redlock(),
            keys.archives(),
            keys.dead_letters(),
            keys.replicated(),
            keys.reserved(),
            keys.deadlines(),
            keys.settled(),
            keys.moves(),
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
                "replicated",
                "reserved",
                "deadlines",
                "settled",
                "moves"
            ]
        );
        assert_eq!(keys.idempotency("6162"), "seckill:{ip17}:idem:6162");
        assert!(
            keys.new_archive()
                .starts_with("seckill:{ip17}:orders:archived:")
        );
        // The longest id an item may have: every key still whole.
        let longest = "x".repeat(crate::domain::MAX_ID_LEN);
        let keys = ItemKeys::new(&ItemId::parse(&longest).unwrap());
        assert_eq!(keys.stock(), format!("seckill:{{{longest}}}:stock"));
        assert_eq!(
            keys.replicated(),
            format!("seckill:{{{longest}}}:replicated")
        );
    }
}
