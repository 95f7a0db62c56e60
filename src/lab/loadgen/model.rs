//! What a race is asked to do and what it reports: the plan, the per-strategy
//! results and the progress events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::history::HistoryCheck;
use crate::infra::redis_conn::RedisTarget;
use crate::lab::cpu::Pids;
use crate::sale::stats::CounterSnapshot;
use crate::strategy::StrategyKind;

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub admin_token: Option<String>,
    /// The server's Redis (or Redis Cluster), if reachable from here:
    /// enables the order-log check.
    pub redis: Option<RedisTarget>,
    /// The server's and Redis's processes, when they run on this machine:
    /// enables the CPU-per-request figures.
    pub pids: Pids,
}

impl Target {
    /// From `http://host:port` (plain HTTP only).
    pub async fn from_url(
        url: &str,
        admin_token: Option<String>,
        redis: Option<RedisTarget>,
    ) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must be http://host:port (no TLS): `{url}`");
        };
        let host = rest.trim_end_matches('/').to_owned();
        let addr = tokio::net::lookup_host(&host)
            .await
            .with_context(|| format!("cannot resolve `{host}`"))?
            .next()
            .with_context(|| format!("`{host}` resolves to no address"))?;
        Ok(Self {
            addr,
            host,
            admin_token,
            redis,
            pids: Pids::default(),
        })
    }
}

/// What to race.
#[derive(Debug, Clone, Serialize)]
pub struct RacePlan {
    pub strategies: Vec<StrategyKind>,
    pub stock: u64,
    pub per_user_limit: u64,
    /// Distinct buyers per strategy.
    pub users: u64,
    pub concurrency: usize,
    /// Upper bound per strategy; with `until_sold_out` the run usually ends
    /// earlier.
    #[serde(with = "millis")]
    pub duration: Duration,
    pub until_sold_out: bool,
    /// Buyers come back for more (picked at random) instead of each buying once.
    pub repeat_buyers: bool,
    /// How long to measure `/healthz`.
    #[serde(with = "millis")]
    pub ceiling_duration: Duration,
    /// Prefix of the fresh items, one per strategy.
    pub item_prefix: String,
    /// Open loop: requests start on this schedule, whatever the answers
    /// (`None`: the closed loop, each connection sending its next request
    /// when the last is answered).
    pub rate: Option<Rate>,
    /// Runs per strategy, interleaved (every strategy once, then again).
    pub runs: u32,
    /// A sale with a payment window: some buyers pay, the rest let their
    /// orders expire (`None`: orders are final when bought).
    pub payments: Option<Payments>,
}

/// The order lifecycle in a race: each sale is restocked with `window`, and
/// a buyer whose purchase is answered 201 pays at once with probability
/// `pay_ratio` (decided by a hash of the order id); the others' orders
/// expire and their units go back on sale.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Payments {
    #[serde(with = "millis")]
    pub window: Duration,
    pub pay_ratio: f64,
}

impl Payments {
    pub fn new(window: Duration, pay_ratio: f64) -> anyhow::Result<Self> {
        if !(0.0..=1.0).contains(&pay_ratio) {
            bail!("--pay-ratio must be between 0 and 1, not {pay_ratio}");
        }
        let most = Duration::from_millis(crate::sale::lifecycle::MAX_PAYMENT_WINDOW_MS);
        if window.is_zero() || window > most {
            bail!("--payment-window must be above 0 and at most a day, not {window:?}");
        }
        Ok(Self { window, pay_ratio })
    }

    /// Whether the buyer of `order` pays.
    pub fn pays(&self, order: crate::orders::snowflake::OrderId) -> bool {
        // Mixed first (splitmix64's finaliser): the id's low decimal digits
        // follow its millisecond, so ids of one millisecond would mostly
        // decide alike.
        let mut z = order.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z % 10_000) as f64) < self.pay_ratio * 10_000.0
    }
}

/// An open-loop schedule: `per_s` requests a second, or a linear ramp from
/// `ramp_from_per_s` to `per_s` over the run's duration.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    pub per_s: f64,
    pub ramp_from_per_s: Option<f64>,
}

impl Rate {
    /// A schedule that can run: positive, finite rates.
    pub fn new(per_s: f64, ramp_from_per_s: Option<f64>) -> anyhow::Result<Self> {
        if !(per_s.is_finite() && per_s > 0.0) {
            bail!("--rate must be a positive number of requests a second, not {per_s}");
        }
        if let Some(from) = ramp_from_per_s
            && !(from.is_finite() && from >= 0.0)
        {
            bail!("--ramp-from must be zero or a positive rate, not {from}");
        }
        Ok(Self {
            per_s,
            ramp_from_per_s,
        })
    }

    /// When request `n` (from 0) is due, from the start of a run of
    /// `duration`; `None` once that is past the end. With a ramp the rate
    /// at `t` is `from + (to - from) t / D`, so `n` requests are due by the
    /// `t` where `from t + (to - from) t² / 2D = n`.
    pub fn due(&self, n: u64, duration: Duration) -> Option<Duration> {
        let n = n as f64;
        let d = duration.as_secs_f64();
        let from = self.ramp_from_per_s.unwrap_or(self.per_s);
        let a = (self.per_s - from) / (2.0 * d.max(f64::MIN_POSITIVE));
        let discriminant = from * from + 4.0 * a * n;
        if discriminant < 0.0 {
            return None;
        }
        // The smaller root of a t² + from t - n = 0, written so that it
        // stays exact when a is tiny (and is n / from when a is zero).
        let t = if n == 0.0 {
            0.0
        } else {
            2.0 * n / (from + discriminant.sqrt())
        };
        (t.is_finite() && t < d).then(|| Duration::from_secs_f64(t))
    }
}

/// A buyer's user id on the wire: `b` and the buyer's number.
pub(super) fn buyer_name(user: u64) -> String {
    format!("b{user}")
}

/// The buyer's number back from a stored order's user id.
pub(super) fn buyer_number(name: &str) -> Option<u64> {
    name.strip_prefix('b')?.parse().ok()
}

mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub(super) fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Responses by meaning.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StatusCounts {
    pub created_201: u64,
    pub sold_out_409: u64,
    pub limit_reached_409: u64,
    pub contention_503: u64,
    pub unavailable_503: u64,
    /// 503 `outcome_unknown`: may have bought; the history check treats
    /// them as unclear.
    pub outcome_unknown_503: u64,
    pub other: u64,
    /// Connection-level failures (no HTTP response).
    pub transport_errors: u64,
}

impl StatusCounts {
    pub(super) fn add(&mut self, other: &StatusCounts) {
        self.created_201 += other.created_201;
        self.sold_out_409 += other.sold_out_409;
        self.limit_reached_409 += other.limit_reached_409;
        self.contention_503 += other.contention_503;
        self.unavailable_503 += other.unavailable_503;
        self.outcome_unknown_503 += other.outcome_unknown_503;
        self.other += other.other;
        self.transport_errors += other.transport_errors;
    }

    pub fn total(&self) -> u64 {
        self.created_201
            + self.sold_out_409
            + self.limit_reached_409
            + self.contention_503
            + self.unavailable_503
            + self.outcome_unknown_503
            + self.other
            + self.transport_errors
    }
}

/// An open-loop request sent later than this after its scheduled start is
/// counted late (the timer itself is good to about 1 ms).
pub const LATE_AFTER: Duration = Duration::from_millis(2);

/// `/healthz` at the race's concurrency: the HTTP ceiling (all zero when
/// not measured, as in the fault lab).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceiling {
    pub requests: u64,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub latency: Latency,
}

/// One strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    pub strategy: StrategyKind,
    /// Which run of the strategy (from 1).
    pub run: u32,
    /// `/healthz` measured just before this run.
    pub ceiling: Ceiling,
    pub item: String,
    pub elapsed_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub successes_per_s: f64,
    /// requests/s as a fraction of the `/healthz` requests/s of the same run.
    pub ceiling_ratio: f64,
    /// From each request's actual send to its answer.
    pub latency: Latency,
    /// Open loop: from each request's scheduled start to its answer, so the
    /// time a request waited for a free connection counts (no coordinated
    /// omission). `None` in the closed loop, where the two are the same.
    pub latency_corrected: Option<Latency>,
    /// Open loop: requests sent more than [`LATE_AFTER`] after their
    /// scheduled start (no free connection in time).
    pub late: u64,
    /// Open loop: requests the schedule started (`None`: closed loop).
    pub scheduled: Option<u64>,
    /// Open loop: scheduled requests never sent, because a whole second of
    /// the schedule was already waiting, or because the run ended while they
    /// waited (their wait until then is in the corrected latency).
    pub dropped: u64,
    pub statuses: StatusCounts,
    /// Server-side retries (optimistic aborts, lock waits) per success.
    pub retries_per_success: f64,
    /// From the start to the first `sold_out`; `None` if never sold out.
    pub time_to_sell_out_s: Option<f64>,
    pub sold: u64,
    /// Units that came back to the sale (cancelled or expired orders), as
    /// the server counts them; 0 without a payment window.
    #[serde(default)]
    pub returned: u64,
    pub oversold: u64,
    pub drift: i64,
    pub undersold: u64,
    pub persisted: u64,
    /// The server no longer knew the item when the run ended (its Redis
    /// restarted empty): the figures above it are zero, and only SQL and
    /// the answers are left to check.
    pub vanished: bool,
    /// 201 order ids missing from the item's order log (`None`: Redis not reachable from here).
    /// From the history check, as is `lost_in_sql`.
    pub lost_in_log: Option<u64>,
    /// 201 order ids missing from SQL once the persister caught up (`None`: it did not in time).
    pub lost_in_sql: Option<u64>,
    /// The server's own counters for this strategy on this item.
    pub server_counters: Option<CounterSnapshot>,
    /// Server CPU per request, from the start of the load until the
    /// persister had every order in SQL, or until the load ended without a
    /// persister (`None`: the server is not a process on this machine, or
    /// SQL never caught up).
    pub server_cpu_us_per_request: Option<f64>,
    /// Redis CPU per request, over the same span.
    pub redis_cpu_us_per_request: Option<f64>,
    /// From the end of the load until the persister had every order in SQL
    /// (`None`: not within the wait, or no persister).
    pub settle_s: Option<f64>,
    /// Every request checked against the sale's specification.
    pub history: HistoryCheck,
}

/// A whole race.
#[derive(Debug, Clone, Serialize)]
pub struct RaceReport {
    pub plan: RacePlan,
    /// Every run of every strategy, in the order they ran.
    pub results: Vec<StrategyResult>,
    /// Per strategy, the median and the range of every figure over its runs.
    pub summary: Vec<StrategySummary>,
}

impl RaceReport {
    pub fn new(plan: RacePlan, results: Vec<StrategyResult>) -> Self {
        let summary = plan
            .strategies
            .iter()
            .filter_map(|&strategy| {
                let runs: Vec<&StrategyResult> =
                    results.iter().filter(|r| r.strategy == strategy).collect();
                StrategySummary::of(strategy, &runs)
            })
            .collect();
        Self {
            plan,
            results,
            summary,
        }
    }

    /// The ceilings measured before every run, as median and range.
    pub fn ceiling_spread(&self) -> Option<Spread> {
        Spread::of(self.results.iter().map(|r| r.ceiling.requests_per_s))
    }
}

/// The median of a figure over runs, and its smallest and largest value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` when no run has the figure.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }
}

/// Reads one figure off a run; `None` when the run does not have it.
type ReadFigure = fn(&StrategyResult) -> Option<f64>;

/// Every figure of a strategy's runs, as median and range.
#[derive(Debug, Clone, Serialize)]
pub struct StrategySummary {
    pub strategy: StrategyKind,
    pub runs: u32,
    /// Runs whose history was linearizable.
    pub linearizable_runs: u32,
    /// By figure name, as in the per-run results.
    pub figures: BTreeMap<&'static str, Spread>,
}

impl StrategySummary {
    /// The names of the summarised figures, and how to read each off a run.
    const FIGURES: &'static [(&'static str, ReadFigure)] = &[
        ("requests_per_s", |r| Some(r.requests_per_s)),
        ("successes_per_s", |r| Some(r.successes_per_s)),
        ("ceiling_requests_per_s", |r| Some(r.ceiling.requests_per_s)),
        ("ceiling_ratio", |r| Some(r.ceiling_ratio)),
        ("p50_ms", |r| Some(r.latency.p50_ms)),
        ("p90_ms", |r| Some(r.latency.p90_ms)),
        ("p99_ms", |r| Some(r.latency.p99_ms)),
        ("max_ms", |r| Some(r.latency.max_ms)),
        ("p50_corrected_ms", |r| {
            r.latency_corrected.map(|l| l.p50_ms)
        }),
        ("p99_corrected_ms", |r| {
            r.latency_corrected.map(|l| l.p99_ms)
        }),
        ("late", |r| Some(r.late as f64)),
        ("dropped", |r| Some(r.dropped as f64)),
        ("retries_per_success", |r| Some(r.retries_per_success)),
        ("time_to_sell_out_s", |r| r.time_to_sell_out_s),
        ("oversold", |r| Some(r.oversold as f64)),
        ("drift", |r| Some(r.drift as f64)),
        ("undersold", |r| Some(r.undersold as f64)),
        ("refused_with_stock", |r| {
            Some(r.history.refused_with_stock as f64)
        }),
        ("phantom_sold_out", |r| {
            Some(r.history.phantom_sold_out as f64)
        }),
        ("ghost_orders", |r| Some(r.history.ghost_orders as f64)),
        ("lost_in_log", |r| r.lost_in_log.map(|n| n as f64)),
        ("lost_in_sql", |r| r.lost_in_sql.map(|n| n as f64)),
        ("server_cpu_us_per_request", |r| r.server_cpu_us_per_request),
        ("redis_cpu_us_per_request", |r| r.redis_cpu_us_per_request),
        ("settle_s", |r| r.settle_s),
    ];

    fn of(strategy: StrategyKind, runs: &[&StrategyResult]) -> Option<Self> {
        if runs.is_empty() {
            return None;
        }
        let figures = Self::FIGURES
            .iter()
            .filter_map(|(name, read)| {
                Some((*name, Spread::of(runs.iter().filter_map(|r| read(r)))?))
            })
            .collect();
        Some(Self {
            strategy,
            runs: runs.len() as u32,
            linearizable_runs: runs.iter().filter(|r| r.history.linearizable).count() as u32,
            figures,
        })
    }

    /// A figure's spread; `None` when no run had it.
    pub fn get(&self, figure: &str) -> Option<Spread> {
        self.figures.get(figure).copied()
    }

    /// Whether `figure` is one the summary knows (readers name figures by
    /// string: a test holds their names to this list).
    pub fn knows(figure: &str) -> bool {
        Self::FIGURES.iter().any(|(name, _)| *name == figure)
    }
}

/// What a race says while it runs.
#[derive(Debug, Clone)]
pub enum Progress {
    Ceiling {
        requests: u64,
        elapsed_s: f64,
    },
    Started {
        strategy: StrategyKind,
        item: String,
    },
    Running {
        strategy: StrategyKind,
        requests: u64,
        purchased: u64,
        elapsed_s: f64,
    },
    Verifying {
        strategy: StrategyKind,
    },
    Finished(Box<StrategyResult>),
}

/// Receives progress; must be cheap (called from the ticker, 5 times a second).
pub type Observer = Arc<dyn Fn(Progress) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_rate_is_evenly_spaced_and_ends_with_the_run() {
        let rate = Rate::new(1000.0, None).unwrap();
        let d = Duration::from_secs(1);
        assert_eq!(rate.due(0, d), Some(Duration::ZERO));
        assert_eq!(rate.due(500, d), Some(Duration::from_millis(500)));
        assert_eq!(rate.due(1000, d), None);
    }

    #[test]
    fn a_ramp_sends_what_its_average_rate_says() {
        // 0 to 2000/s over 1 s: 1000 requests, half of them in the last 0.29 s.
        let rate = Rate::new(2000.0, Some(0.0)).unwrap();
        let d = Duration::from_secs(1);
        let sent = (0..5000).take_while(|&n| rate.due(n, d).is_some()).count();
        assert!((999..=1000).contains(&sent), "{sent}");
        let half = rate.due(500, d).unwrap().as_secs_f64();
        assert!(
            (half - std::f64::consts::FRAC_1_SQRT_2).abs() < 0.001,
            "{half}"
        );
        // Down from 2000/s to 0: the same count, front-loaded.
        let down = Rate::new(1.0, Some(2000.0)).unwrap();
        let sent = (0..5000).take_while(|&n| down.due(n, d).is_some()).count();
        assert!((999..=1001).contains(&sent), "{sent}");
    }

    #[test]
    fn a_spread_is_the_median_and_the_range() {
        let spread = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((spread.median, spread.min, spread.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of([f64::NAN]), None);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn rates_that_cannot_run_are_refused() {
        assert!(Rate::new(0.0, None).is_err());
        assert!(Rate::new(f64::NAN, None).is_err());
        assert!(Rate::new(10.0, Some(-1.0)).is_err());
    }
}
