//! Prometheus metrics (`GET /metrics`), with `prometheus-client`: an explicit
//! registry per app rather than a process-global recorder, so every app a test
//! starts has its own.
//!
//! Purchases are counted and timed as they happen; the per-item gauges
//! (stock, sold, oversold, drift, undersold, persister lag) are read from the
//! item views at scrape time, so they are never stale and cost the purchase
//! path nothing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::orders::persister::PersisterReport;
use crate::outcome::Code;
use crate::sale::ItemView;
use crate::strategy::StrategyKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurchaseLabels {
    strategy: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StrategyLabels {
    strategy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ItemLabels {
    item: String,
}

type ItemGauge = Family<ItemLabels, Gauge<i64, AtomicI64>>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s in doublings: a Redis round trip to a lock wait budget.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The app's metrics.
pub struct Metrics {
    registry: Registry,
    purchases: Family<PurchaseLabels, Counter>,
    unconfirmed: Family<StrategyLabels, Counter>,
    latency: Family<StrategyLabels, Histogram, fn() -> Histogram>,
    stock: ItemGauge,
    sold: ItemGauge,
    oversold: ItemGauge,
    drift: ItemGauge,
    undersold: ItemGauge,
    lag: ItemGauge,
    persisted_total: Gauge<i64, AtomicI64>,
    conflicts_total: Gauge<i64, AtomicI64>,
    unreadable_total: Gauge<i64, AtomicI64>,
    tracked_items: Gauge<i64, AtomicI64>,
    untracked: Gauge<i64, AtomicI64>,
    reserved: ItemGauge,
    paid: ItemGauge,
    returned: ItemGauge,
    expired: Counter,
    expiry_lag: Histogram,
    /// How late the most overdue order of the last expiry call that
    /// expired any was (ms): the status page's figure.
    last_expiry_lag_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("seckill");
        let purchases = Family::<PurchaseLabels, Counter>::default();
        registry.register(
            "purchases",
            "Purchase requests by strategy and outcome",
            purchases.clone(),
        );
        let unconfirmed = Family::<StrategyLabels, Counter>::default();
        registry.register(
            "purchases_unconfirmed",
            "Purchases (also counted as purchased) answered 503 unconfirmed: fewer than REDIS_WAIT_REPLICAS replicas confirmed them in time",
            unconfirmed.clone(),
        );
        let latency: Family<StrategyLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "purchase_duration_seconds",
            "Time to answer a purchase, by strategy",
            latency.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let family = ItemGauge::default();
            registry.register(name, help, family.clone());
            family
        };
        let stock = gauge("item_stock", "Units left, as the stock counter says");
        let sold = gauge("item_sold", "Orders in the item's order log");
        let oversold = gauge("item_oversold", "max(0, sold - returned - initial stock)");
        let drift = gauge(
            "item_drift",
            "(initial - stock) - (sold - returned): lost updates or returns",
        );
        let undersold = gauge("item_undersold", "Units left while buyers were refused");
        let reserved = gauge(
            "item_reserved",
            "Orders holding a unit until paid, cancelled or expired",
        );
        let paid = gauge("item_paid", "Orders paid");
        let returned = gauge(
            "item_returned",
            "Units back on sale from cancelled or expired orders",
        );
        let lag = gauge(
            "persister_lag",
            "Orders of the item in its order log not yet in SQL (negative: in SQL, not in the log)",
        );
        let persisted_total = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "persister_inserted",
            "Rows this instance's persister inserted into SQL",
            persisted_total.clone(),
        );
        let conflicts_total = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "persister_conflicts",
            "Order-log entries whose id SQL holds with different fields: kept in the item's dead-letter stream",
            conflicts_total.clone(),
        );
        let unreadable_total = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "persister_unreadable",
            "Order-log entries that are not orders: kept in the item's dead-letter stream",
            unreadable_total.clone(),
        );
        let tracked_items = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "tracked_items",
            "Items with per-item counters in this instance (bounded)",
            tracked_items.clone(),
        );
        let untracked = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "untracked_requests",
            "Requests not counted per item because the per-item map was full",
            untracked.clone(),
        );
        let expired = Counter::default();
        registry.register(
            "orders_expired",
            "Reserved orders this instance's sweeps expired (their deadline passed unpaid; not those a late pay or cancel expired)",
            expired.clone(),
        );
        let expiry_lag = latency_histogram();
        registry.register(
            "expiry_lag_seconds",
            "Per expiry call that expired orders: how long after its deadline the most overdue of them expired",
            expiry_lag.clone(),
        );
        Self {
            registry,
            reserved,
            paid,
            returned,
            expired,
            expiry_lag,
            last_expiry_lag_ms: AtomicU64::new(0),
            purchases,
            unconfirmed,
            latency,
            stock,
            sold,
            oversold,
            drift,
            undersold,
            lag,
            persisted_total,
            conflicts_total,
            unreadable_total,
            tracked_items,
            untracked,
        }
    }

    /// Counts (under the outcome's catalogue label, if it has one) and
    /// times one purchase request.
    pub fn record_purchase(&self, strategy: StrategyKind, outcome: Code, took: Duration) {
        let strategy = strategy.as_str();
        if let Some(outcome) = outcome.label() {
            self.purchases
                .get_or_create(&PurchaseLabels { strategy, outcome })
                .inc();
        }
        self.latency
            .get_or_create(&StrategyLabels { strategy })
            .observe(took.as_secs_f64());
    }

    /// Counts a purchase its replicas did not confirm in time.
    pub fn record_unconfirmed(&self, strategy: StrategyKind) {
        self.unconfirmed
            .get_or_create(&StrategyLabels {
                strategy: strategy.as_str(),
            })
            .inc();
    }

    /// Counts one expiry call's orders and how late they expired.
    pub fn record_expired(&self, expired: &crate::sale::lifecycle::Expired) {
        if expired.orders == 0 {
            return;
        }
        self.expired.inc_by(expired.orders);
        self.expiry_lag.observe(expired.lag_max_ms as f64 / 1000.0);
        self.last_expiry_lag_ms
            .store(expired.lag_max_ms.saturating_add(1), Ordering::Relaxed);
    }

    /// How late the last expired orders were (ms; `None` before any).
    pub fn last_expiry_lag_ms(&self) -> Option<u64> {
        let lag = self.last_expiry_lag_ms.load(Ordering::Relaxed);
        // Stored plus one, so that 0 stays "none yet".
        lag.checked_sub(1)
    }

    /// Prometheus text for the current state of `items`.
    pub fn render(
        &self,
        items: &[ItemView],
        persister: Option<&PersisterReport>,
        stats: &crate::sale::stats::Stats,
    ) -> String {
        self.tracked_items.set(stats.tracked_items() as i64);
        self.untracked.set(stats.untracked() as i64);
        for view in items {
            let labels = ItemLabels {
                item: view.item_id.to_string(),
            };
            let set = |family: &ItemGauge, value: i64| {
                family.get_or_create(&labels).set(value);
            };
            set(&self.stock, view.stock);
            set(&self.sold, view.sold as i64);
            set(&self.oversold, view.oversold as i64);
            set(&self.drift, view.drift);
            set(&self.undersold, view.undersold as i64);
            set(&self.lag, view.lag);
            set(&self.reserved, view.reserved as i64);
            set(&self.paid, view.paid as i64);
            set(&self.returned, view.returned as i64);
        }
        if let Some(report) = persister {
            self.persisted_total.set(report.persisted as i64);
            self.conflicts_total.set(report.conflicts as i64);
            self.unreadable_total.set(report.unreadable as i64);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
