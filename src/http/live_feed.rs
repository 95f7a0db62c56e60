//! The live feed behind the status page: one task builds a snapshot of every
//! sale twice a second and publishes it on a `watch` channel; `GET /api/stats`
//! returns the latest and `GET /api/stats/stream` sends each new one as a
//! Server-Sent Event.
//!
//! Per item and strategy a snapshot carries the item view (truths and
//! counters) plus what only a running window can say: requests/s (from the
//! change in `attempts`), latency p50/p99 over the last few seconds (from the
//! histograms the purchase path fills, taken each tick), and a short history
//! of requests/s for the page's charts. Building it costs the purchase path
//! nothing but the histogram record.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::ItemId;
use crate::sale::ItemView;
use crate::state::AppState;
use crate::strategy::StrategyKind;

/// Twice a second, as the page promises.
pub const TICK: Duration = Duration::from_millis(500);
/// Latency percentiles cover this many ticks (3 s).
const LATENCY_TICKS: usize = 6;
/// Requests/s history kept for the charts: 60 ticks, 30 s.
const HISTORY_TICKS: usize = 60;

/// Live figures of one strategy on one item.
#[derive(Debug, Clone, Serialize)]
struct LiveFigures {
    requests_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Requests/s per tick, oldest first.
    history: Vec<f64>,
}

#[derive(Default)]
struct Window {
    /// (when, attempts) at each tick, for the rate.
    attempts: VecDeque<(Instant, u64)>,
    latencies: VecDeque<Histogram<u32>>,
    history: VecDeque<f64>,
    /// The tick that last showed this window.
    seen: Option<Instant>,
}

/// Spawns the broadcaster. It stops when `state.closing` says so.
pub fn spawn(state: AppState, publish: watch::Sender<Arc<str>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut windows: HashMap<(ItemId, StrategyKind), Window> = HashMap::new();
        let mut closing = state.closing.subscribe();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = closing.wait_for(|c| *c) => break,
            }
            let snapshot = build(&state, &mut windows).await;
            publish.send_replace(snapshot.to_string().into());
        }
    })
}

async fn build(state: &AppState, windows: &mut HashMap<(ItemId, StrategyKind), Window>) -> Value {
    let now = Instant::now();
    for (item, kind, histogram) in state.stats.take_latencies() {
        let window = windows.entry((item, kind)).or_default();
        window.latencies.push_back(histogram);
        while window.latencies.len() > LATENCY_TICKS {
            window.latencies.pop_front();
        }
    }
    let (items, error) = match state.sales.list(&state.stats).await {
        Ok(items) => (items, None),
        Err(err) => {
            tracing::debug!(error = %err, "live snapshot without items");
            (Vec::new(), Some("redis or the database is unavailable"))
        }
    };
    let items: Vec<Value> = items
        .into_iter()
        .map(|view| item_json(view, now, windows))
        .collect();
    // Windows only for what this tick showed: items restocked (their
    // counters start over) or gone leave nothing behind.
    windows.retain(|_, window| window.seen == Some(now));
    json!({
        "at_ms": crate::orders::db::now_ms(),
        "items": items,
        "error": error,
        "persister": state.persister.as_ref().map(|p| p.report()),
        // How late (ms) this instance's last expiry call that expired
        // orders (one item, at most 256) took its most overdue; null before
        // any.
        "expiry_lag_ms": state.metrics.last_expiry_lag_ms(),
        "race": state.race.status(),
        "faults": state.faults.status(),
    })
}

fn item_json(
    view: ItemView,
    now: Instant,
    windows: &mut HashMap<(ItemId, StrategyKind), Window>,
) -> Value {
    let mut live = serde_json::Map::new();
    for (kind, counters) in &view.strategies {
        let window = windows.entry((view.item_id.clone(), *kind)).or_default();
        window.seen = Some(now);
        if window.attempts.is_empty() {
            // First sight of this strategy on this item: it had made no
            // attempts a tick ago, so its first burst counts in the rate.
            window.attempts.push_back((now - TICK, 0));
        }
        window.attempts.push_back((now, counters.attempts));
        while window.attempts.len() > LATENCY_TICKS + 1 {
            window.attempts.pop_front();
        }
        // Over the last two ticks: responsive, yet not one tick's jitter.
        let recent = window.attempts.len().saturating_sub(3);
        let rate = match (window.attempts.get(recent), window.attempts.back()) {
            (Some((t0, a0)), Some((t1, a1))) if t1 > t0 => {
                a1.saturating_sub(*a0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        };
        window.history.push_back(rate);
        while window.history.len() > HISTORY_TICKS {
            window.history.pop_front();
        }
        let mut merged: Option<Histogram<u32>> = None;
        for h in &window.latencies {
            match &mut merged {
                Some(m) => {
                    let _ = m.add(h);
                }
                None => merged = Some(h.clone()),
            }
        }
        let quantile = |q: f64| {
            merged
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        let figures = LiveFigures {
            requests_per_s: rate,
            p50_ms: quantile(0.50),
            p99_ms: quantile(0.99),
            history: window.history.iter().copied().collect(),
        };
        live.insert(
            kind.to_string(),
            serde_json::to_value(figures).unwrap_or(Value::Null),
        );
    }
    let mut value = serde_json::to_value(&view).unwrap_or(Value::Null);
    value["live"] = Value::Object(live);
    value
}
