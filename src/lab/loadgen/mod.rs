//! The load generator: races strategies against a running seckill and reads
//! back the server's truths. Used by `seckill bench` and by the status page's
//! race control.
//!
//! Each of `concurrency` workers holds one keep-alive HTTP/1.1 connection.
//! In the closed loop (like wrk) a worker sends its next request as soon as
//! the last answered, so the request rate is what the server sustains at that
//! concurrency, and a slow answer delays the next send: the latencies then
//! hide the queueing (coordinated omission). In the open loop (`rate`, like
//! wrk2 or oha `-q`) requests start on a schedule and wait for a free
//! connection; latency is recorded both from the scheduled start (corrected)
//! and from the actual send, and late and dropped sends are counted.
//! Latencies go into per-worker HDR histograms, merged at the end, so
//! recording costs no shared lock.
//!
//! Buyers: `users` distinct user ids, each buying until refused by the limit.
//! A buyer turned away with 503 `contention` is queued to try again, as a real
//! buyer would: demand stays at least the stock, so units left unsold while
//! buyers were refused show as `undersold`, not as an artefact of the load.
//!
//! Every figure is measured on the same machine as the server (and Redis):
//! the generator's own CPU use is part of the picture, so compare strategies by
//! their ratio to the HTTP ceiling (`/healthz`) measured in the same run.
//!
//! Five parts: `model` (the plan and the results), `client` (one
//! keep-alive HTTP connection, reading the server's answers into the
//! server's own serde types), `workload` (the buyers and the ceiling
//! run), `verify` (reading back the truths of each sale) and `history`
//! (checking every request of a run against the sale's specification).

mod client;
pub mod history;
mod model;
mod verify;
mod workload;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use client::{create_item, item_view, probe};
pub use model::*;
pub use workload::{LIFECYCLE_WAIT, Load, measure_ceiling, race, run_sale};

/// How often progress is reported.
const TICK: Duration = Duration::from_millis(200);

/// Spawned tasks that end with the future owning them: a race cancelled
/// mid-run (its task aborted) must not leave its buyers sending.
struct Owned<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Owned<T> {
    async fn join_all(mut self) -> Result<Vec<T>, tokio::task::JoinError> {
        let mut outcomes = Vec::with_capacity(self.0.len());
        for handle in &mut self.0 {
            outcomes.push(handle.await?);
        }
        Ok(outcomes)
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// 1 µs to 60 s at 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's rules
    // (low ≥ 1, high ≥ 2·low, sigfig ≤ 5), so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, from: Instant, to: Instant) {
    histogram.saturating_record(to.saturating_duration_since(from).as_micros() as u64);
}
