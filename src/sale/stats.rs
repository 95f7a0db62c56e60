//! Per-item, per-strategy request counters: what each strategy answered.
//!
//! These are one source of truth about a sale; the order log and the stock
//! counter in Redis are the others, read independently by [`crate::sale`], so
//! a strategy that lies in its answers still shows up in `sold`, `oversold` and
//! `drift`. Counters are in-process atomics: counting costs no Redis round trip,
//! which matters when the strategies are being raced. They count this
//! instance's requests since the item's last restock.
//!
//! Memory is bounded whatever clients send: a purchase for an item that does
//! not exist allocates nothing here (only the global metrics count it), an
//! error is counted only for an item already tracked, and at most
//! [`MAX_TRACKED_ITEMS`] items are tracked at once; requests for items past
//! that are still served, just not counted per item (`untracked`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::domain::ItemId;
use crate::outcome::Code;
use crate::strategy::{Attempt, Outcome, StrategyKind};

/// Declares [`Counters`] and [`CounterSnapshot`]: the effort counters
/// written here, then one counter per outcome with a `count` column in the
/// outcome catalogue ([`crate::outcome`]), named by it.
macro_rules! counters {
    (@fields [$($variant:ident $field:ident $code:literal $doc:literal)*]) => {
        #[derive(Debug, Default)]
        struct Counters {
            attempts: AtomicU64,
            retries: AtomicU64,
            lock_expired: AtomicU64,
            fenced: AtomicU64,
            refused_with_stock: AtomicU64,
            $($field: AtomicU64,)*
        }

        /// A point-in-time copy of one strategy's counters on one item.
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize,
            utoipa::ToSchema,
        )]
        pub struct CounterSnapshot {
            pub attempts: u64,
            pub retries: u64,
            pub lock_expired: u64,
            /// Stale writes refused by the fencing token.
            pub fenced: u64,
            /// Refusals that were no answer about the stock (`contention`,
            /// errors) before this instance saw the sale empty (a
            /// `sold_out`, or a purchase that took the last unit): buyers
            /// turned away while units remained.
            pub refused_with_stock: u64,
            $(
                #[doc = concat!("Answered `", $code, "`: ", $doc)]
                /// (Read as 0 from a server that does not count it.)
                #[serde(default)]
                pub $field: u64,
            )*
        }

        impl Counters {
            fn snapshot(&self) -> CounterSnapshot {
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                CounterSnapshot {
                    attempts: get(&self.attempts),
                    retries: get(&self.retries),
                    lock_expired: get(&self.lock_expired),
                    fenced: get(&self.fenced),
                    refused_with_stock: get(&self.refused_with_stock),
                    $($field: get(&self.$field),)*
                }
            }

            /// The counter an outcome is counted in, if the catalogue
            /// gives it one.
            fn of(&self, code: Code) -> Option<&AtomicU64> {
                match code {
                    $(Code::$variant => Some(&self.$field),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
    (@fields [$($done:tt)*] $variant:ident = $code:literal, $status:ident, lua $lua:tt,
        count _, label $label:tt, $doc:literal; $($rest:tt)*) => {
        counters!(@fields [$($done)*] $($rest)*);
    };
    (@fields [$($done:tt)*] $variant:ident = $code:literal, $status:ident, lua $lua:tt,
        count $field:ident, label $label:tt, $doc:literal; $($rest:tt)*) => {
        counters!(@fields [$($done)* $variant $field $code $doc] $($rest)*);
    };
    ($($line:tt)*) => {
        counters!(@fields [] $($line)*);
    };
}

crate::outcome::table!(counters);

/// Latencies recorded since the live feed last took them.
type Latencies = Mutex<Option<Histogram<u32>>>;

#[derive(Debug)]
struct ItemCounters {
    counters: [Counters; StrategyKind::ALL.len()],
    latencies: [Latencies; StrategyKind::ALL.len()],
    /// Set once any strategy saw the sale empty; refusals before that were
    /// refusals while units remained.
    seen_empty: AtomicBool,
    /// The restock these counters started at, if this instance did it:
    /// purchases that began earlier belong to the sale before.
    restocked_at: Option<Instant>,
}

impl Default for ItemCounters {
    fn default() -> Self {
        Self {
            counters: Default::default(),
            latencies: Default::default(),
            seen_empty: AtomicBool::new(false),
            restocked_at: None,
        }
    }
}

impl ItemCounters {
    fn refused(&self, c: &Counters) {
        if !self.seen_empty.load(Ordering::Relaxed) {
            c.refused_with_stock.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// 1 µs to 60 s at 2 significant digits: enough for p50/p99 on a page.
fn latency_histogram() -> Histogram<u32> {
    // Constant bounds that satisfy the constructor's rules: cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Items tracked at most: each costs about 2 KiB of counters (plus a latency
/// histogram of about 14 KiB per strategy used, for one live-feed tick), so
/// the map stays under about 20 MiB of counters whatever the traffic.
pub const MAX_TRACKED_ITEMS: usize = 10_000;

/// All counters of this instance.
#[derive(Debug, Default)]
pub struct Stats {
    items: RwLock<HashMap<ItemId, Arc<ItemCounters>>>,
    /// Requests not counted per item because the map was full.
    untracked: AtomicU64,
}

impl Stats {
    fn existing(&self, item: &ItemId) -> Option<Arc<ItemCounters>> {
        // A poisoned lock means a panic while holding it; the map itself is
        // still consistent (inserts are single operations), so keep going.
        self.items
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(item)
            .cloned()
    }

    /// The item's counters, created if there is room.
    fn item(&self, item: &ItemId) -> Option<Arc<ItemCounters>> {
        if let Some(found) = self.existing(item) {
            return Some(found);
        }
        let mut items = self.items.write().unwrap_or_else(|e| e.into_inner());
        if items.len() >= MAX_TRACKED_ITEMS && !items.contains_key(item) {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Arc::clone(items.entry(item.clone()).or_default()))
    }

    /// How many items are tracked now.
    pub fn tracked_items(&self) -> usize {
        self.items.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Requests not counted per item because [`MAX_TRACKED_ITEMS`] were
    /// tracked already.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Counts one attempt that came to an outcome, and how long it took.
    /// An item that does not exist is not tracked.
    pub fn record(&self, item: &ItemId, kind: StrategyKind, attempt: &Attempt, took: Duration) {
        if matches!(
            attempt.outcome,
            Outcome::ItemNotFound | Outcome::KeyBought(_)
        ) {
            return;
        }
        let Some(counters) = self.item(item) else {
            return;
        };
        let c = &counters.counters[kind.index()];
        counters.latencies[kind.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(latency_histogram)
            .saturating_record(took.as_micros() as u64);
        c.attempts.fetch_add(1, Ordering::Relaxed);
        c.retries
            .fetch_add(u64::from(attempt.retries), Ordering::Relaxed);
        if attempt.lock_expired {
            c.lock_expired.fetch_add(1, Ordering::Relaxed);
        }
        if attempt.fenced {
            c.fenced.fetch_add(1, Ordering::Relaxed);
        }
        // A purchase that began before these counters (before the restock
        // that reset them) may have seen the previous sale empty: it says
        // nothing about this one.
        let this_sale = counters.restocked_at.is_none_or(|restocked| {
            Instant::now()
                .checked_sub(took)
                .is_some_and(|began| began >= restocked)
        });
        match attempt.outcome {
            Outcome::SoldOut if this_sale => counters.seen_empty.store(true, Ordering::Relaxed),
            Outcome::Purchased { remaining } if remaining <= 0 && this_sale => {
                counters.seen_empty.store(true, Ordering::Relaxed)
            }
            Outcome::Contended { .. } => counters.refused(c),
            _ => {}
        }
        if let Some(counter) = c.of(attempt.outcome.code()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one attempt that failed (Redis unreachable and the like), for
    /// an item already tracked: a failed request cannot say whether its item
    /// exists, so it allocates nothing.
    pub fn record_error(&self, item: &ItemId, kind: StrategyKind) {
        let Some(counters) = self.existing(item) else {
            return;
        };
        let c = &counters.counters[kind.index()];
        c.attempts.fetch_add(1, Ordering::Relaxed);
        c.errors.fetch_add(1, Ordering::Relaxed);
        counters.refused(c);
    }

    /// Counts a purchase (already recorded) that its replicas did not
    /// confirm in time.
    pub fn record_unconfirmed(&self, item: &ItemId, kind: StrategyKind) {
        if let Some(counters) = self.existing(item) {
            counters.counters[kind.index()]
                .unconfirmed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets an item's counters: its sale starts over now.
    pub fn reset(&self, item: &ItemId) {
        let mut items = self.items.write().unwrap_or_else(|e| e.into_inner());
        items.remove(item);
        if items.len() < MAX_TRACKED_ITEMS {
            items.insert(
                item.clone(),
                Arc::new(ItemCounters {
                    restocked_at: Some(Instant::now()),
                    ..ItemCounters::default()
                }),
            );
        }
    }

    /// The counters of every strategy that has seen an attempt on `item`.
    pub fn snapshot(&self, item: &ItemId) -> BTreeMap<StrategyKind, CounterSnapshot> {
        let Some(counters) = self
            .items
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(item)
            .cloned()
        else {
            return BTreeMap::new();
        };
        StrategyKind::ALL
            .into_iter()
            .map(|kind| (kind, counters.counters[kind.index()].snapshot()))
            .filter(|(_, snap)| snap.attempts > 0)
            .collect()
    }
}

impl Stats {
    /// Takes the latencies recorded since the last call, per item and strategy.
    pub fn take_latencies(&self) -> Vec<(ItemId, StrategyKind, Histogram<u32>)> {
        let items: Vec<(ItemId, Arc<ItemCounters>)> = self
            .items
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, c)| (id.clone(), Arc::clone(c)))
            .collect();
        let mut taken = Vec::new();
        for (item, counters) in items {
            for kind in StrategyKind::ALL {
                let slot = &counters.latencies[kind.index()];
                if let Some(h) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    taken.push((item.clone(), kind, h));
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_count_as_with_stock_only_until_the_sale_is_seen_empty() {
        let stats = Stats::default();
        let item = ItemId::parse("a").unwrap();
        let contended = Attempt::new(Outcome::Contended {
            detail: "busy".into(),
        });
        let ms = Duration::from_millis(1);
        stats.record(&item, StrategyKind::Lock, &contended, ms);
        stats.record_error(&item, StrategyKind::Lock);
        let last = Attempt::new(Outcome::Purchased { remaining: 0 });
        stats.record(&item, StrategyKind::Lock, &last, ms);
        stats.record(&item, StrategyKind::Lock, &contended, ms);
        stats.record_error(&item, StrategyKind::Lock);
        let lock = stats.snapshot(&item)[&StrategyKind::Lock];
        assert_eq!((lock.contention, lock.errors), (2, 2));
        assert_eq!(lock.refused_with_stock, 2);
        stats.reset(&item);
        // A sold_out of the previous sale, answered after the restock: the
        // purchase began before the new sale's counters existed.
        std::thread::sleep(Duration::from_millis(5));
        let stale = Attempt::new(Outcome::SoldOut);
        stats.record(&item, StrategyKind::Lock, &contended, ms);
        stats.record(&item, StrategyKind::Lock, &stale, Duration::from_secs(1));
        stats.record(&item, StrategyKind::Lock, &contended, ms);
        assert_eq!(
            stats.snapshot(&item)[&StrategyKind::Lock].refused_with_stock,
            2,
            "a restock starts counting again, and a stale sold_out does not end it"
        );
    }

    #[test]
    fn outcomes_land_in_their_own_counter_and_reset_clears_them() {
        let stats = Stats::default();
        let item = ItemId::parse("a").unwrap();
        stats.record(
            &item,
            StrategyKind::Lock,
            &Attempt::new(Outcome::Purchased { remaining: 1 }).with_retries(3),
            Duration::from_millis(2),
        );
        stats.record(
            &item,
            StrategyKind::Lock,
            &Attempt::new(Outcome::SoldOut),
            Duration::from_millis(4),
        );
        stats.record_error(&item, StrategyKind::Lua);
        stats.record(
            &ItemId::parse("nowhere").unwrap(),
            StrategyKind::Lock,
            &Attempt::new(Outcome::ItemNotFound),
            Duration::from_millis(1),
        );
        stats.record_error(&ItemId::parse("never-seen").unwrap(), StrategyKind::Lua);
        assert_eq!(stats.tracked_items(), 1, "no entry for a missing item");
        let snap = stats.snapshot(&item);
        let lock = snap[&StrategyKind::Lock];
        assert_eq!(
            (lock.attempts, lock.purchased, lock.sold_out, lock.retries),
            (2, 1, 1, 3)
        );
        assert_eq!(snap[&StrategyKind::Lua].errors, 1);
        assert!(
            !snap.contains_key(&StrategyKind::Naive),
            "unused strategies are left out"
        );
        let taken = stats.take_latencies();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].2.len(), 2);
        assert!(
            stats.take_latencies().is_empty(),
            "taking empties the window"
        );
        stats.reset(&item);
        assert!(stats.snapshot(&item).is_empty());
    }
}
